import Platform
import WriteAheadLog
import XCTest

/// Power loss after unsynced appends (issue 9, finding 7). The Raft host appends a commit-only turn
/// without an fsync; if the power fails before a later turn syncs, the bytes written after the last
/// fsync may be lost in any pattern the page cache allows: the file grew but reads back zeros, or a
/// later page reached the disk and an earlier one did not, leaving a hole of zeros or garbage
/// followed by valid frames. Recovery keeps every synced record and cuts the unsynced tail whatever
/// it looks like; damage before the last point proven synced still refuses start.
final class PowerLossTests: WALTestCase {
  private let pageBytes = 4096

  /// What a crashed log left in its last segment.
  private struct Crash {
    var records: [WALRecord]
    /// How many of `records` were synced.
    var syncedCount: Int
    /// The last segment, its frames as written (before any damage), where the synced frames end
    /// in it, and its size.
    var path: String
    var frames: [(start: Int, end: Int, kind: UInt8)]
    var syncedEnd: Int
    var size: Int
  }

  /// 40 records synced in two turns, then 90 in three turns appended without a sync (the host's
  /// commit-only turns), then the process dies without closing the log: the unsynced part spans
  /// several pages.
  private func crashAfterUnsyncedTurns(_ options: WALOptions = .init()) throws -> Crash {
    var maker = RecordMaker(seed: 97)
    var index: UInt64 = 0
    func turn(_ count: Int) -> [WALRecord] {
      (0..<count).map { _ in
        index += 1
        return maker.entry(group: 1 + index % 3, index: index, payloadBytes: 100)
      }
    }
    var records: [WALRecord] = []
    var syncedCount = 0
    do {
      let log = try open(options)
      for _ in 0..<2 {
        let synced = turn(20)
        try log.append(synced)
        try log.sync()
        records += synced
        syncedCount = records.count
      }
      for _ in 0..<3 {
        let unsynced = turn(30)
        try log.append(unsynced)
        records += unsynced
      }
      XCTAssertTrue(log.hasUnsyncedRecords)
      // The crash: the log is dropped without close, so nothing after the second sync is synced.
    }
    let path = directory + "/" + (try segmentNames().last!)
    let frames = try Disk.frames(path)
    let recordFrames = frames.filter { $0.kind != syncMarkerKind }
    let recordsBeforeLast = records.count - recordFrames.count
    let syncedInLast = syncedCount - recordsBeforeLast
    let syncedEnd =
      syncedInLast > 0 ? recordFrames[syncedInLast - 1].end : segmentHeaderBytes
    return Crash(
      records: records, syncedCount: syncedCount, path: path, frames: frames, syncedEnd: syncedEnd,
      size: Int(try FileSystem.fileSize(path)))
  }

  /// Where recovery must cut after the bytes from `firstDamaged` on changed: at the frame (record
  /// or marker) holding that byte. Returns that offset and how many records come before it.
  private func expectedCut(_ crash: Crash, firstDamaged: Int) -> (offset: Int, kept: Int) {
    let frames = crash.frames
    let damaged = frames.first { $0.end > firstDamaged }!
    let keptInLast = frames.filter { $0.end <= damaged.start && $0.kind != syncMarkerKind }.count
    let recordsBeforeLast = crash.records.count - frames.filter { $0.kind != syncMarkerKind }.count
    return (damaged.start, recordsBeforeLast + keptInLast)
  }

  /// Reopens: the tail from `cut` is truncated, the first `kept` records (every synced one among
  /// them) replay, and the log takes appends that survive another reopen.
  private func assertUnsyncedTailCut(
    _ crash: Crash, at cut: Int, keeping kept: Int, _ options: WALOptions = .init(),
    line: UInt = #line
  ) throws {
    XCTAssertGreaterThanOrEqual(kept, crash.syncedCount, "every synced record", line: line)
    XCTAssertGreaterThanOrEqual(cut, crash.syncedEnd, "cut after the synced frames", line: line)
    let more = WALRecord(kind: .entry, group: 9, index: 1, term: 2, payload: [1, 2, 3])
    do {
      let log = try open(options)
      XCTAssertEqual(log.recovery.truncatedFile, crash.path, line: line)
      XCTAssertEqual(log.recovery.truncatedOffset, UInt64(cut), line: line)
      XCTAssertEqual(log.recovery.truncatedBytes, UInt64(crash.size - cut), line: line)
      XCTAssertEqual(try FileSystem.fileSize(crash.path), UInt64(cut), line: line)
      XCTAssertEqual(try replayAll(log), Array(crash.records.prefix(kept)), line: line)
      try log.append([more])
      try log.close()
    }
    let log = try open(options)
    XCTAssertNil(log.recovery.truncatedFile, "the second reopen finds a clean log", line: line)
    XCTAssertEqual(try replayAll(log), Array(crash.records.prefix(kept)) + [more], line: line)
    try log.close()
  }

  /// (a) A page of the unsynced part lost (zeros), the pages after it on disk with valid frames.
  func testZeroedPageFollowedByValidFramesIsCutAsUnsyncedTail() throws {
    let crash = try crashAfterUnsyncedTurns()
    let hole = 2 * pageBytes
    XCTAssertGreaterThan(hole, crash.syncedEnd + syncMarkerFrameBytes, "hole after the synced part")
    XCTAssertGreaterThan(crash.size, hole + 2 * pageBytes, "valid frames after the hole")
    try Disk.overwrite(crash.path, at: hole, with: [UInt8](repeating: 0, count: pageBytes))
    let (cut, kept) = expectedCut(crash, firstDamaged: hole)
    try assertUnsyncedTailCut(crash, at: cut, keeping: kept)
  }

  /// (a) Everything after the last sync lost but the last frame, which reached the disk: the hole
  /// starts right at the end of the synced frames.
  func testZeroedUnsyncedPartFollowedByAValidFrameIsCutAtTheSyncedEnd() throws {
    let crash = try crashAfterUnsyncedTurns()
    let lastFrame = crash.frames.last!
    try Disk.overwrite(
      crash.path, at: crash.syncedEnd,
      with: [UInt8](repeating: 0, count: lastFrame.start - crash.syncedEnd))
    try assertUnsyncedTailCut(crash, at: crash.syncedEnd, keeping: crash.syncedCount)
  }

  /// (b) The file's length reached the disk, none of the unsynced data did.
  func testUnsyncedPartZeroedWithTheLengthKeptIsCut() throws {
    let crash = try crashAfterUnsyncedTurns()
    try Disk.overwrite(
      crash.path, at: crash.syncedEnd,
      with: [UInt8](repeating: 0, count: crash.size - crash.syncedEnd))
    try assertUnsyncedTailCut(crash, at: crash.syncedEnd, keeping: crash.syncedCount)
  }

  /// (c) Garbage (stale blocks) in the middle of the unsynced part, valid frames after it.
  func testGarbageInTheMiddleOfTheUnsyncedPartIsCut() throws {
    let crash = try crashAfterUnsyncedTurns()
    var maker = RecordMaker(seed: 5)
    let garbageStart = (crash.syncedEnd + crash.size) / 2
    let garbage = maker.payload(bytes: 700)
    try Disk.overwrite(crash.path, at: garbageStart, with: garbage)
    let (cut, kept) = expectedCut(crash, firstDamaged: garbageStart)
    XCTAssertGreaterThan(kept, crash.syncedCount, "some unsynced records reached the disk whole")
    try assertUnsyncedTailCut(crash, at: cut, keeping: kept)
  }

  /// A CRC-valid marker in the unsynced part that was not written where it lies (a stale block
  /// holding a copy) proves nothing: the tail is still cut, not refused.
  func testSyncMarkerCopiedElsewhereProvesNothing() throws {
    let crash = try crashAfterUnsyncedTurns()
    let marker = crash.frames.first { $0.start == crash.syncedEnd }!
    XCTAssertEqual(marker.kind, syncMarkerKind, "the last sync's marker starts the unsynced part")
    let markerBytes = Array(try Disk.read(crash.path)[marker.start..<marker.end])
    let hole = 2 * pageBytes
    var page = [UInt8](repeating: 0, count: pageBytes)
    page.replaceSubrange(100..<(100 + markerBytes.count), with: markerBytes)
    try Disk.overwrite(crash.path, at: hole, with: page)
    let (cut, kept) = expectedCut(crash, firstDamaged: hole)
    try assertUnsyncedTailCut(crash, at: cut, keeping: kept)
  }

  /// (d) Damage in a synced record is not an unsynced tail: start is refused naming the file and
  /// the record's offset, in the first synced turn and in the last one, with or without a hole in
  /// the unsynced part after it. The refusal changes nothing on disk.
  func testDamageBeforeTheLastSyncStillRefusesStartWithFileAndOffset() throws {
    let crash = try crashAfterUnsyncedTurns()
    let original = try Disk.read(crash.path)
    let recordFrames = crash.frames.filter { $0.kind != syncMarkerKind }
    for synced in [3, 39] {
      let frame = recordFrames[synced]
      XCTAssertLessThanOrEqual(frame.end, crash.syncedEnd)
      for withHole in [false, true] {
        var damaged = original
        damaged[frame.start + 40] ^= 0x04
        if withHole {
          let hole = 3 * pageBytes
          damaged.replaceSubrange(
            hole..<(hole + pageBytes), with: [UInt8](repeating: 0, count: pageBytes))
        }
        try Disk.write(crash.path, damaged)
        assertCorrupt(file: crash.path, offset: UInt64(frame.start)) { _ = try self.open() }
      }
    }
    XCTAssertEqual(try Disk.read(crash.path).count, original.count, "nothing truncated")
    try Disk.write(crash.path, original)
    XCTAssertEqual(try reopenAndReplay(), crash.records, "the undamaged log keeps every record")
  }

  /// A roll seals (fsyncs) the full segment and starts the next one, whose header was synced when
  /// it was created: the unsynced part of the last segment starts after that header. The page after
  /// the header was lost, a later page of the same segment reached the disk.
  func testUnsyncedTailOfASegmentStartedByARollIsCut() throws {
    let options = WALOptions(segmentBytesMax: 6000)
    let crash = try crashAfterUnsyncedTurns(options)
    XCTAssertGreaterThanOrEqual(try segmentNames().count, 3)
    XCTAssertEqual(crash.syncedEnd, segmentHeaderBytes, "every synced record in a sealed segment")
    XCTAssertGreaterThan(crash.size, pageBytes + 200, "frames in the second page")
    try Disk.overwrite(
      crash.path, at: segmentHeaderBytes,
      with: [UInt8](repeating: 0, count: pageBytes - segmentHeaderBytes))
    let (cut, kept) = expectedCut(crash, firstDamaged: segmentHeaderBytes)
    XCTAssertEqual(cut, segmentHeaderBytes)
    try assertUnsyncedTailCut(crash, at: cut, keeping: kept, options)
  }

  /// Random workloads (batches, syncs, rolls), then a power loss that zeroes or garbles a random
  /// range of what was not synced, sometimes also losing the file's end. The log keeps every synced
  /// record and exactly the records before the first damaged frame.
  func testRandomPowerLossKeepsSyncedRecordsAndCutsTheUnsyncedTail() throws {
    var random = RecordMaker(seed: 909)
    for trial in 0..<40 {
      let trialDirectory = directory + "/trial-\(trial)"
      let options = WALOptions(segmentBytesMax: 300 + random.nextRandom() % 3000)
      let (appended, syncedCount, lastPath) = try randomWorkloadThenCrash(
        directory: trialDirectory, options: options, &random, batchesExtraMax: 30, recordsPerBatchMax: 8, groups: 4,
        payloadBytesMax: 200)
      let frames = try Disk.frames(lastPath)
      let recordFrames = frames.filter { $0.kind != syncMarkerKind }
      let recordsBeforeLast = appended.count - recordFrames.count
      let syncedInLast = max(0, syncedCount - recordsBeforeLast)
      let syncedEnd =
        syncedInLast == 0 ? segmentHeaderBytes : recordFrames[syncedInLast - 1].end
      var bytes = try Disk.read(lastPath)
      let original = bytes
      guard bytes.count > syncedEnd else { continue }
      let damageStart = syncedEnd + Int(random.nextRandom() % UInt64(bytes.count - syncedEnd))
      let damageEnd = damageStart + Int(random.nextRandom() % UInt64(bytes.count - damageStart + 1))
      let garbage = random.nextRandom() % 2 == 0
      for offset in damageStart..<damageEnd {
        bytes[offset] = garbage ? UInt8(truncatingIfNeeded: random.nextRandom()) : 0
      }
      if random.nextRandom() % 4 == 0 {
        bytes.removeLast(Int(random.nextRandom() % UInt64(bytes.count - damageStart + 1)))
      }
      try Disk.write(lastPath, bytes)
      let firstChanged =
        (syncedEnd..<original.count).first { $0 >= bytes.count || bytes[$0] != original[$0] }
        ?? original.count
      let kept =
        recordsBeforeLast + recordFrames.filter { $0.end <= firstChanged }.count
      XCTAssertGreaterThanOrEqual(kept, syncedCount, "trial \(trial)")

      let more = random.entry(group: 1, index: UInt64(appended.count + 1), payloadBytes: 20)
      do {
        let log = try WriteAheadLog(directory: trialDirectory, options: options)
        XCTAssertEqual(try replayAll(log), Array(appended.prefix(kept)), "trial \(trial)")
        try log.append([more])
        try log.close()
      }
      let log = try WriteAheadLog(directory: trialDirectory, options: options)
      XCTAssertNil(log.recovery.truncatedFile, "trial \(trial)")
      XCTAssertEqual(try replayAll(log), Array(appended.prefix(kept)) + [more], "trial \(trial)")
      try log.close()
      try FileSystem.removeTree(trialDirectory)
    }
  }

  /// A segment of format version 1 (no sync markers) is still read; the log goes on in a new
  /// segment of the current version. A version 1 last segment cannot tell synced from unsynced, so
  /// damage followed by a valid frame there still refuses start.
  func testVersion1SegmentIsReadAndTheLogContinuesInANewSegment() throws {
    let records = (1...3).map {
      WALRecord(kind: .entry, group: 4, index: UInt64($0), term: 1, payload: [UInt8($0), 7])
    }
    var header = Array("CAUCUSWL".utf8) + [1, 0] + [UInt8](repeating: 0, count: 6)
    header += [1, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8)
    let frames = records.map {
      Disk.frame(
        kind: $0.kind.rawValue, group: $0.group, index: $0.index, term: $0.term,
        payload: $0.payload)
    }
    let version1 = header + frames.joined()
    var damaged = version1
    damaged[segmentHeaderBytes + 20] ^= 1
    try Disk.write(segmentPath(1), damaged)
    assertCorrupt(file: segmentPath(1), offset: UInt64(segmentHeaderBytes)) {
      _ = try self.open()
    }

    try Disk.write(segmentPath(1), version1)
    let more = WALRecord(kind: .hardState, group: 4, index: 0, term: 2, payload: [9])
    do {
      let log = try open()
      XCTAssertEqual(try replayAll(log), records)
      XCTAssertEqual(log.statistics.segments, 2)
      try log.append([more])
      try log.close()
    }
    XCTAssertEqual(try Disk.read(segmentPath(1)), version1, "the version 1 segment is unchanged")
    XCTAssertEqual(try Disk.read(segmentPath(2))[8], 2, "the new segment has version 2")
    XCTAssertEqual(try reopenAndReplay(), records + [more])
  }
}
