import Glibc
import Platform
import WriteAheadLog
import XCTest

/// Crashes and failing disks: what survives, what is refused.
final class CrashTests: WALTestCase {
  /// Frame end offsets of the records (not the sync markers) in a segment file, read
  /// independently of the log.
  private func frameEnds(_ path: String) throws -> [UInt64] {
    try Disk.frames(path).filter { $0.kind != syncMarkerKind }.map { UInt64($0.end) }
  }

  /// Random workloads (batches, syncs, rolls), then a crash that loses any part of what was not
  /// synced, sometimes leaving garbage or a half-created next segment. After reopening, the log
  /// holds every synced record and exactly the records whose frames survived whole, in order; and
  /// it takes appends that survive another reopen.
  func testRandomCrashKeepsSyncedRecordsAndAPrefixOfTheRest() throws {
    var random = RecordMaker(seed: 2024)
    for trial in 0..<40 {
      let trialDirectory = directory + "/trial-\(trial)"
      let options = WALOptions(segmentBytesMax: 200 + random.nextRandom() % 800)
      let (appended, syncedCount, lastPath) = try randomWorkloadThenCrash(
        directory: trialDirectory, options: options, &random, batchesExtraMax: 25, recordsPerBatchMax: 6, groups: 3,
        payloadBytesMax: 150)
      let index = UInt64(appended.count)
      let ends = try frameEnds(lastPath)
      let recordsBeforeLast = appended.count - ends.count
      // Sealed segments were fsynced when they were sealed.
      let durableInLast = max(0, syncedCount - recordsBeforeLast)
      let durableOffset = durableInLast == 0 ? UInt64(segmentHeaderBytes) : ends[durableInLast - 1]
      let size = try FileSystem.fileSize(lastPath)
      let cut = durableOffset + random.nextRandom() % (size - durableOffset + 1)
      try Disk.truncate(lastPath, to: cut)
      switch random.nextRandom() % 4 {
      case 0:
        let garbage = random.payload(bytes: Int(1 + random.nextRandom() % 300))
        try Disk.write(lastPath, try Disk.read(lastPath) + garbage)
      case 1:
        try Disk.write(lastPath, try Disk.read(lastPath) + [UInt8](repeating: 0, count: 4096))
      case 2:
        try Disk.write(lastPath.replacingSuffix("log", with: "next.log.tmp"), [0x43, 0x41])
      default:
        break
      }
      let survivors = recordsBeforeLast + ends.filter { $0 <= cut }.count
      XCTAssertGreaterThanOrEqual(survivors, syncedCount, "trial \(trial)")

      let more = random.entry(group: 1, index: index + 1, payloadBytes: 20)
      do {
        let log = try WriteAheadLog(directory: trialDirectory, options: options)
        XCTAssertEqual(try replayAll(log), Array(appended.prefix(survivors)), "trial \(trial)")
        try log.append([more])
        try log.close()
      }
      let log = try WriteAheadLog(directory: trialDirectory, options: options)
      XCTAssertNil(log.recovery.truncatedFile, "trial \(trial)")
      XCTAssertEqual(
        try replayAll(log), Array(appended.prefix(survivors)) + [more], "trial \(trial)")
      try log.close()
      try FileSystem.removeTree(trialDirectory)
    }
  }

  /// A write that fails midway (here: the file size limit, EFBIG, after a partial write) makes the
  /// log refuse further work; reopening cuts the partial frame and keeps everything before it.
  func testFailedWriteMakesLogUnusableAndReopeningRecovers() throws {
    signal(SIGXFSZ, SIG_IGN)
    var maker = RecordMaker(seed: 51)
    let kept = (1...3).map { maker.entry(group: 1, index: UInt64($0), payloadBytes: 100) }
    let log = try open()
    try log.append(kept)
    try log.sync()
    let size = try FileSystem.fileSize(segmentPath(1))

    var saved = rlimit()
    XCTAssertEqual(getrlimit(fileSizeResource, &saved), 0)
    var limited = saved
    limited.rlim_cur = rlim_t(size + 50)
    XCTAssertEqual(setrlimit(fileSizeResource, &limited), 0)
    let failedAppend = Result {
      try log.append((4...8).map { maker.entry(group: 1, index: UInt64($0), payloadBytes: 100) })
    }
    XCTAssertEqual(setrlimit(fileSizeResource, &saved), 0)

    XCTAssertThrowsError(try failedAppend.get()) { error in
      guard case .io(let systemError) = error as? WALError else { return XCTFail("\(error)") }
      XCTAssertEqual(systemError.errno, EFBIG)
    }
    XCTAssertThrowsError(try log.append([maker.entry(group: 1, index: 9, payloadBytes: 1)])) {
      error in
      guard case .unusable = error as? WALError else { return XCTFail("\(error)") }
    }
    XCTAssertThrowsError(try log.sync())
    try log.close()
    XCTAssertEqual(try FileSystem.fileSize(segmentPath(1)), size + 50, "the partial write")

    // The partial write began with the sync marker for the earlier sync, which it kept whole.
    let reopened = try open()
    XCTAssertEqual(reopened.recovery.truncatedOffset, size + UInt64(syncMarkerFrameBytes))
    XCTAssertEqual(reopened.recovery.truncatedBytes, 50 - UInt64(syncMarkerFrameBytes))
    XCTAssertEqual(try replayAll(reopened), kept)
    try reopened.close()
  }

  /// A segment damaged while the log is open is caught by replay's own checks.
  func testReplayChecksFramesAgain() throws {
    let log = try open()
    try log.append([WALRecord(kind: .entry, group: 1, index: 1, term: 1, payload: [1, 2, 3])])
    try log.append([WALRecord(kind: .entry, group: 1, index: 2, term: 1, payload: [4, 5, 6])])
    try log.sync()
    try Disk.flipBit(segmentPath(1), at: segmentHeaderBytes + 33)
    assertCorrupt(file: segmentPath(1), offset: UInt64(segmentHeaderBytes)) {
      try log.replay { _ in }
    }
    try log.close()
  }
}

private let fileSizeResource = __rlimit_resource_t(RLIMIT_FSIZE.rawValue)

extension String {
  fileprivate func replacingSuffix(_ suffix: String, with replacement: String) -> String {
    precondition(hasSuffix(suffix))
    return String(dropLast(suffix.count)) + replacement
  }
}
