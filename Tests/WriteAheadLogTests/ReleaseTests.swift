import Platform
import WriteAheadLog
import XCTest

/// `releaseSegments`: only a prefix of sealed segments whose entries are all covered goes.
final class ReleaseTests: WALTestCase {
  // Every record's payload is 50 bytes (frame 83); 4 records fill a segment (32 + 4 × 83 = 364).
  let options = WALOptions(segmentBytesMax: 364)

  private func record(_ kind: WALRecordKind, group: UInt64, index: UInt64) -> WALRecord {
    WALRecord(
      kind: kind, group: group, index: index, term: 1,
      payload: [UInt8](repeating: UInt8(index & 0xFF), count: 50))
  }

  /// Writes `segments` (4 records each, the last one becomes the current segment).
  private func writeSegments(_ segments: [[WALRecord]]) throws -> WriteAheadLog {
    let log = try open(options)
    for (position, records) in segments.enumerated() {
      precondition(records.count == 4)
      try log.append(records)
      XCTAssertEqual(log.statistics.segments, position + 1, "segment layout")
    }
    return log
  }

  func testReleasesOnlyTheCoveredPrefixAndNeverTheCurrentSegment() throws {
    let groupA: UInt64 = 1
    let groupB: UInt64 = 2
    let segments: [[WALRecord]] = [
      // 1: A 1-2, B 1-2, plus a hard state with a large index (other kinds never block).
      [
        record(.entry, group: groupA, index: 1), record(.entry, group: groupB, index: 1),
        record(.entry, group: groupA, index: 2), record(.hardState, group: groupB, index: 999),
      ],
      // 2: A 3-4, B 2-3
      [
        record(.entry, group: groupA, index: 3), record(.entry, group: groupB, index: 2),
        record(.entry, group: groupA, index: 4), record(.entry, group: groupB, index: 3),
      ],
      // 3: one entry of B beyond what will be covered: blocks itself and everything after.
      [
        record(.entry, group: groupA, index: 5), record(.entry, group: groupB, index: 9),
        record(.groupCreated, group: 3, index: 0), record(.entry, group: groupA, index: 6),
      ],
      // 4: covered, but after a blocked segment.
      [
        record(.entry, group: groupA, index: 7), record(.entry, group: groupA, index: 8),
        record(.entry, group: groupA, index: 9), record(.entry, group: groupA, index: 10),
      ],
      // 5: current.
      [
        record(.entry, group: groupA, index: 11), record(.entry, group: groupB, index: 10),
        record(.entry, group: groupA, index: 12), record(.entry, group: groupB, index: 11),
      ],
    ]
    let log = try writeSegments(segments)
    // Nothing covered: nothing released.
    XCTAssertEqual(try log.releaseSegments(coveredIndex: [groupA: 0, groupB: 0]), 0)
    // A covered up to 3 blocks segment 2 (A 4).
    XCTAssertEqual(try log.releaseSegments(coveredIndex: [groupA: 3, groupB: 100]), 1)
    XCTAssertFalse(FileSystem.exists(segmentPath(1)))
    XCTAssertTrue(FileSystem.exists(segmentPath(2)))
    // B covered up to 8: segment 3 (B 9) blocks, and so segment 4 stays although it is covered.
    XCTAssertEqual(try log.releaseSegments(coveredIndex: [groupA: 100, groupB: 8]), 1)
    XCTAssertEqual(
      try segmentNames(),
      (3...5).map { segmentPath($0).split(separator: "/").last.map(String.init)! })
    XCTAssertEqual(log.statistics.segments, 3)
    XCTAssertEqual(log.statistics.segmentsReleased, 2)
    try log.sync()
    try log.close()

    XCTAssertEqual(try reopenAndReplay(options), Array(segments[2...].joined()))

    // Everything covered, and B absent (deleted) counts as covered: all sealed segments go, the
    // current one stays.
    let reopened = try open(options)
    XCTAssertEqual(try reopened.releaseSegments(coveredIndex: [groupA: 1000]), 2)
    XCTAssertEqual(try segmentNames(), ["wal-0000000000000005.log"])
    XCTAssertEqual(try reopened.releaseSegments(coveredIndex: [:]), 0)
    try reopened.close()
    XCTAssertEqual(try reopenAndReplay(options), segments[4])

    // The log goes on from the surviving segment.
    let more = try open(options)
    try more.append([record(.entry, group: groupA, index: 13)])
    XCTAssertEqual(more.statistics.segments, 2)
    try more.close()
    XCTAssertEqual(
      try reopenAndReplay(options), segments[4] + [record(.entry, group: groupA, index: 13)])
  }

  /// The per-segment index is rebuilt by recovery: release decisions after a reopen are the same.
  func testReleaseAfterReopenUsesRecoveredIndex() throws {
    var segments: [[WALRecord]] = []
    for segment in 0..<3 {
      var records: [WALRecord] = []
      for item in 0..<4 {
        let index = UInt64(segment * 2 + item / 2 + 1)
        records.append(record(.entry, group: UInt64(item % 2), index: index))
      }
      segments.append(records)
    }
    try writeSegments(segments).close()
    let log = try open(options)
    XCTAssertEqual(try log.releaseSegments(coveredIndex: [0: 1, 1: 4]), 0)
    XCTAssertEqual(try log.releaseSegments(coveredIndex: [0: 4, 1: 4]), 2)
    try log.close()
  }

  /// Found by the cluster simulator (seed 332): a restatement of every group's records that
  /// fills the current segment rolls into the next; releasing "every sealed segment" then took
  /// the first part of the restatement with it. Only segments older than the one it started in go.
  func testASegmentHoldingPartOfTheRestatementIsKept() throws {
    var maker = RecordMaker(seed: 5)
    let log = try WriteAheadLog(directory: directory, options: WALOptions(segmentBytesMax: 400))
    try log.append([maker.entry(group: 1, index: 1, payloadBytes: 100)])
    try log.append([maker.entry(group: 1, index: 2, payloadBytes: 100)])
    try log.append([maker.entry(group: 1, index: 3, payloadBytes: 100)])
    try log.sync()
    let restatedFrom = log.currentSegmentSequence
    XCTAssertEqual(restatedFrom, 2, "the entries already filled segment 1")
    let restatement = (1...6).map { WALRecord(kind: .groupCreated, group: UInt64($0), index: 0, term: 0, payload: [1, 2, 3]) }
    try log.append(restatement)
    try log.sync()
    XCTAssertGreaterThan(log.currentSegmentSequence, restatedFrom, "the restatement rolled over")
    let released = try log.releaseSegments(coveredIndex: [1: 3], before: restatedFrom)
    XCTAssertEqual(released, 1, "only the segment before the restatement")
    var groupsSeen: Set<UInt64> = []
    try log.replay { record in if record.kind == .groupCreated { groupsSeen.insert(record.group) } }
    XCTAssertEqual(groupsSeen, Set(1...6), "every restated record survives")
  }
}
