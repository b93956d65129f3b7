import Platform
import WriteAheadLog
import XCTest

/// Round trips, torn tails and corruption: what `init` keeps, cuts and refuses.
final class RecoveryTests: WALTestCase {
  /// 40 entries of 2 groups with a segment limit of ~4 records: several segments, all replayed in
  /// order after reopening, each segment within its limit.
  func testRoundTripAcrossSeveralSegments() throws {
    let options = WALOptions(segmentBytesMax: 600)
    var maker = RecordMaker(seed: 1)
    var written: [WALRecord] = []
    let log = try open(options)
    for batch in 0..<10 {
      var records: [WALRecord] = []
      for item in 0..<4 {
        let index = UInt64(batch * 2 + item / 2 + 1)
        records.append(
          maker.entry(
            group: UInt64(item % 2 + 1), index: index, term: 3, payloadBytes: 80 + item * 10))
      }
      if batch == 5 {
        records.append(
          WALRecord(kind: .hardState, group: 1, index: 0, term: 4, payload: [4, 0, 7]))
      }
      try log.append(records)
      try log.sync()
      written += records
    }
    XCTAssertEqual(try replayAll(log), written, "replay while open")
    let segments = log.statistics.segments
    XCTAssertGreaterThanOrEqual(segments, 5)
    try log.close()

    XCTAssertEqual(try segmentNames().count, segments)
    for name in try segmentNames() {
      XCTAssertLessThanOrEqual(try FileSystem.fileSize(directory + "/" + name), 600, name)
    }
    let reopened = try open(options)
    XCTAssertEqual(reopened.recovery.segmentsFound, segments)
    XCTAssertEqual(reopened.recovery.recordsFound, UInt64(written.count))
    XCTAssertNil(reopened.recovery.truncatedFile)
    XCTAssertEqual(try replayAll(reopened), written)
    // Appending after reopening continues the last segment and survives another reopen.
    let more = maker.entry(group: 1, index: 21, payloadBytes: 5)
    try reopened.append([more])
    try reopened.close()
    XCTAssertEqual(try reopenAndReplay(options), written + [more])
  }

  func testEmptyLogReplaysNothingAndEmptyPayloadsRoundTrip() throws {
    let log = try open()
    XCTAssertEqual(try replayAll(log), [])
    let records = [
      WALRecord(kind: .groupCreated, group: 9, index: 0, term: 0),
      WALRecord(
        kind: .groupDeleted, group: 9, index: UInt64.max, term: UInt64.max, payload: [0xFF]),
    ]
    try log.append(records)
    try log.append([])
    try log.close()
    XCTAssertEqual(try reopenAndReplay(), records)
  }

  /// A record larger than the segment limit goes alone into a fresh segment.
  func testRecordLargerThanSegmentLimitGetsItsOwnSegment() throws {
    let options = WALOptions(segmentBytesMax: 200, recordBytesMax: 10_000)
    var maker = RecordMaker(seed: 2)
    let records = [
      maker.entry(group: 1, index: 1, payloadBytes: 10),
      maker.entry(group: 1, index: 2, payloadBytes: 1000),
      maker.entry(group: 1, index: 3, payloadBytes: 10),
    ]
    let log = try open(options)
    try log.append(records)
    XCTAssertEqual(log.statistics.segments, 3)
    try log.close()
    XCTAssertEqual(try reopenAndReplay(options), records)
  }

  /// Cut the file at every byte offset inside the last record: reopening keeps every earlier
  /// record, truncates the rest, and the log takes appends that survive another reopen.
  func testTornTailAtEveryByteOffsetOfTheLastRecord() throws {
    // Two full segments (3 records each), then 3 records in the last one.
    try checkTornTailAtEveryByteOffset(recordCount: 9)
  }

  /// The same when the torn record is the only one of the last segment: a cut can leave just
  /// the segment header.
  func testTornTailAtEveryByteOffsetOfALastSegmentsOnlyRecord() throws {
    try checkTornTailAtEveryByteOffset(recordCount: 7)
  }

  private func checkTornTailAtEveryByteOffset(recordCount: Int) throws {
    let options = WALOptions(segmentBytesMax: 400)
    var maker = RecordMaker(seed: 3)
    let records = (1...recordCount).map {
      maker.entry(group: 7, index: UInt64($0), payloadBytes: 60)
    }
    let appendedLater = maker.entry(group: 7, index: 100, payloadBytes: 17)
    let lastFrameBytes = UInt64(records.last!.frameBytes)
    var lastSegment = ""
    var lastEnd: UInt64 = 0
    let pristine = directory + "/pristine"

    do {
      let log = try WriteAheadLog(directory: pristine, options: options)
      for record in records { try log.append([record]) }
      try log.close()
      let names = try FileSystem.listDirectory(pristine).filter { $0.hasPrefix("wal-") }.sorted()
      XCTAssertEqual(names.count, 3)
      lastSegment = names.last!
      // close() ended the segment with the marker of its sync; a cut in the last record takes it.
      let frames = try Disk.frames(pristine + "/" + lastSegment)
      XCTAssertEqual(frames.last?.kind, syncMarkerKind)
      lastEnd = UInt64(frames.last!.start)
    }
    let lastStart = lastEnd - lastFrameBytes
    for cut in lastStart..<lastEnd {
      let trial = directory + "/trial-\(cut)"
      try FileSystem.makeDirectories(trial)
      for name in try FileSystem.listDirectory(pristine) where name.hasPrefix("wal-") {
        try Disk.write(trial + "/" + name, try Disk.read(pristine + "/" + name))
      }
      try Disk.truncate(trial + "/" + lastSegment, to: cut)

      let log = try WriteAheadLog(directory: trial, options: options)
      if cut == lastStart {
        XCTAssertNil(log.recovery.truncatedFile, "cut \(cut): a clean end is not torn")
      } else {
        XCTAssertEqual(log.recovery.truncatedFile, trial + "/" + lastSegment, "cut \(cut)")
        XCTAssertEqual(log.recovery.truncatedOffset, lastStart, "cut \(cut)")
        XCTAssertEqual(log.recovery.truncatedBytes, cut - lastStart, "cut \(cut)")
      }
      XCTAssertEqual(try FileSystem.fileSize(trial + "/" + lastSegment), lastStart, "cut \(cut)")
      XCTAssertEqual(try replayAll(log), Array(records.dropLast()), "cut \(cut)")
      try log.append([appendedLater])
      try log.close()

      let reopened = try WriteAheadLog(directory: trial, options: options)
      XCTAssertNil(reopened.recovery.truncatedFile, "cut \(cut): second reopen finds a clean log")
      XCTAssertEqual(
        try replayAll(reopened), Array(records.dropLast()) + [appendedLater], "cut \(cut)")
      try reopened.close()
      try FileSystem.removeTree(trial)
    }
  }

  /// Several whole records lost from the end (a partial batch write) and a zero-filled tail.
  func testZeroFilledTailIsTorn() throws {
    var maker = RecordMaker(seed: 4)
    let records = (1...3).map { maker.entry(group: 1, index: UInt64($0), payloadBytes: 30) }
    let log = try open()
    try log.append(records)
    try log.close()
    let path = segmentPath(1)
    let size = try FileSystem.fileSize(path)
    let file = try File.open(path, mode: .readWrite)
    try file.write(all: [UInt8](repeating: 0, count: 4096), at: size)
    try file.close()
    let reopened = try open()
    XCTAssertEqual(reopened.recovery.truncatedOffset, size)
    XCTAssertEqual(reopened.recovery.truncatedBytes, 4096)
    XCTAssertEqual(try replayAll(reopened), records)
    try reopened.close()
  }

  /// Flipping any single byte of a record that is followed by valid records refuses start,
  /// naming the file and the damaged record's offset.
  func testFlippedBitBeforeTheTailRefusesStartWithFileAndOffset() throws {
    var maker = RecordMaker(seed: 5)
    let records = (1...5).map { maker.entry(group: 2, index: UInt64($0), payloadBytes: 40) }
    let log = try open()
    try log.append(records)
    try log.close()
    let path = segmentPath(1)
    let original = try Disk.read(path)
    let damagedStart = segmentHeaderBytes + 2 * records[0].frameBytes
    for offset in damagedStart..<(damagedStart + records[2].frameBytes) {
      var damaged = original
      damaged[offset] ^= 0x10
      try Disk.write(path, damaged)
      assertCorrupt(file: path, offset: UInt64(damagedStart)) { _ = try self.open() }
    }
    // The refusal changed nothing: the original log opens cleanly.
    try Disk.write(path, original)
    XCTAssertEqual(try reopenAndReplay(), records)
  }

  /// Damage in the last record of a sealed (non-last) segment is corruption, not a torn tail.
  func testDamageInSealedSegmentRefusesStart() throws {
    let options = WALOptions(segmentBytesMax: 300)
    var maker = RecordMaker(seed: 6)
    let log = try open(options)
    for index in 1...10 {
      try log.append([maker.entry(group: 1, index: UInt64(index), payloadBytes: 50)])
    }
    try log.close()
    XCTAssertGreaterThanOrEqual(try segmentNames().count, 3)
    let path = segmentPath(1)
    let size = try FileSystem.fileSize(path)
    try Disk.flipBit(path, at: Int(size) - 1)
    assertCorrupt(file: path, offset: size - 83) { _ = try self.open(options) }

    // A sealed segment cut short is refused too.
    try Disk.flipBit(path, at: Int(size) - 1)
    try Disk.truncate(path, to: size - 1)
    assertCorrupt(file: path, offset: size - 83) { _ = try self.open(options) }
  }

  /// A flipped bit in the very last bytes of the last record, appended but not synced before a
  /// crash: nothing after it proves it synced, so it is a torn tail, and the record is cut.
  func testFlippedBitAtEndOfLastRecordIsTornTail() throws {
    var maker = RecordMaker(seed: 7)
    let records = (1...4).map { maker.entry(group: 3, index: UInt64($0), payloadBytes: 64) }
    do {
      let log = try open()
      try log.append(records)
      // The crash: dropped without close.
    }
    let path = segmentPath(1)
    let size = try FileSystem.fileSize(path)
    try Disk.flipBit(path, at: Int(size) - 1, bit: 6)
    let reopened = try open()
    XCTAssertEqual(reopened.recovery.truncatedFile, path)
    XCTAssertEqual(reopened.recovery.truncatedOffset, size - UInt64(records[3].frameBytes))
    XCTAssertTrue(reopened.recovery.truncationReason?.contains("CRC mismatch") ?? false)
    XCTAssertEqual(try replayAll(reopened), Array(records.prefix(3)))
    try reopened.close()
  }

  func testWrongMagicIsRefused() throws {
    let log = try open()
    try log.append([WALRecord(kind: .entry, group: 1, index: 1, term: 1)])
    try log.close()
    try Disk.flipBit(segmentPath(1), at: 0)
    XCTAssertThrowsError(try open()) { error in
      XCTAssertEqual(error as? WALError, .badMagic(file: segmentPath(1)))
      XCTAssertTrue("\(error)".contains(segmentPath(1)))
    }
  }

  func testUnknownVersionIsRefused() throws {
    let log = try open()
    try log.close()
    var bytes = try Disk.read(segmentPath(1))
    for version: UInt8 in [0, 3] {
      bytes[8] = version
      try Disk.write(segmentPath(1), bytes)
      XCTAssertThrowsError(try open()) { error in
        XCTAssertEqual(
          error as? WALError, .badVersion(file: segmentPath(1), found: UInt16(version)))
      }
    }
  }

  func testSegmentHeaderNamingAnotherSequenceIsRefused() throws {
    try open().close()
    try FileSystem.rename(segmentPath(1), to: segmentPath(5))
    assertCorrupt(file: segmentPath(5), offset: 16) { _ = try self.open() }
  }

  /// A missing segment in the middle is a gap in the log, never skipped.
  func testMissingMiddleSegmentRefusesStart() throws {
    let options = WALOptions(segmentBytesMax: 200)
    let log = try open(options)
    for index in 1...6 {
      try log.append([
        WALRecord(
          kind: .entry, group: 1, index: UInt64(index), term: 1,
          payload: [UInt8](repeating: 1, count: 100))
      ])
    }
    try log.close()
    XCTAssertGreaterThanOrEqual(try segmentNames().count, 3)
    try FileSystem.unlink(segmentPath(2))
    assertCorrupt(file: segmentPath(2), offset: 0) { _ = try self.open(options) }
  }

  /// A whole, CRC-valid record of an unknown kind at the end is not torn: refuse.
  func testUnknownRecordKindIsCorruptionEvenAtTheEnd() throws {
    try open().close()
    let path = segmentPath(1)
    try Disk.write(
      path,
      try Disk.read(path) + Disk.frame(kind: 99, group: 1, index: 1, term: 1, payload: [1, 2]))
    assertCorrupt(file: path, offset: UInt64(segmentHeaderBytes)) { _ = try self.open() }
  }

  func testRecordOverLimitIsRefusedOnAppendBeforeAnythingIsWritten() throws {
    let options = WALOptions(recordBytesMax: 100)
    let log = try open(options)
    let fits = WALRecord(
      kind: .entry, group: 1, index: 1, term: 1, payload: [UInt8](repeating: 0, count: 75))
    let tooLarge = WALRecord(
      kind: .entry, group: 1, index: 2, term: 1, payload: [UInt8](repeating: 0, count: 76))
    XCTAssertThrowsError(try log.append([fits, tooLarge])) { error in
      XCTAssertEqual(
        error as? WALError, .recordTooLarge(group: 1, index: 2, bytes: 101, limit: 100))
    }
    XCTAssertEqual(log.statistics.recordsAppended, 0)
    try log.append([fits])
    try log.close()
    XCTAssertEqual(try reopenAndReplay(options), [fits])
  }

  /// On read, a record over the limit is corruption: before the tail, and at the tail too when it
  /// is whole and CRC-valid (the limit was lowered; cutting it would lose a written record).
  func testRecordOverLimitOnReadIsCorruption() throws {
    let small = WALRecord(kind: .entry, group: 1, index: 1, term: 1, payload: [1])
    let large = WALRecord(
      kind: .entry, group: 1, index: 2, term: 1, payload: [UInt8](repeating: 2, count: 500))
    let log = try open(WALOptions(recordBytesMax: 1000))
    try log.append([small, large])
    try log.close()
    let largeOffset = UInt64(segmentHeaderBytes + small.frameBytes)
    assertCorrupt(file: segmentPath(1), offset: largeOffset) {
      _ = try self.open(WALOptions(recordBytesMax: 100))
    }

    let again = try open(WALOptions(recordBytesMax: 1000))
    try again.append([small])
    try again.close()
    assertCorrupt(file: segmentPath(1), offset: largeOffset) {
      _ = try self.open(WALOptions(recordBytesMax: 100))
    }
  }

  func testLeftoverTemporaryFilesAreRemoved() throws {
    try open().close()
    try Disk.write(segmentPath(2) + ".tmp", [1, 2, 3])
    let log = try open()
    XCTAssertEqual(log.recovery.temporaryFilesRemoved, ["wal-0000000000000002.log.tmp"])
    XCTAssertFalse(FileSystem.exists(segmentPath(2) + ".tmp"))
    try log.close()
  }

  func testSecondOpenOfSameDirectoryIsRefusedWhileFirstIsOpen() throws {
    let first = try open()
    XCTAssertThrowsError(try open()) { error in
      XCTAssertEqual(error as? WALError, .locked(directory: directory))
    }
    try first.close()
    try open().close()
  }

  func testClosedLogRefusesWork() throws {
    let log = try open()
    try log.close()
    try log.close()
    XCTAssertThrowsError(try log.append([WALRecord(kind: .entry, group: 1, index: 1, term: 1)])) {
      error in
      XCTAssertEqual(error as? WALError, .closed)
    }
    XCTAssertThrowsError(try log.sync())
    XCTAssertThrowsError(try log.replay { _ in })
  }

  func testCreatesMissingDirectoriesAndValidatesOptions() throws {
    let nested = directory + "/x/y/wal"
    try WriteAheadLog(directory: nested).close()
    XCTAssertTrue(FileSystem.exists(nested + "/wal-0000000000000001.log"))
    XCTAssertThrowsError(
      try WriteAheadLog(directory: nested, options: WALOptions(segmentBytesMax: 10)))
    XCTAssertThrowsError(
      try WriteAheadLog(directory: nested, options: WALOptions(recordBytesMax: 3)))
  }
}
