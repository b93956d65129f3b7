import Platform
import WriteAheadLog
import XCTest

final class StatisticsTests: WALTestCase {
  func testCountsAppendsAndSyncs() throws {
    let log = try open()
    XCTAssertEqual(log.statistics.segments, 1)
    var maker = RecordMaker(seed: 31)
    var bytes = 0
    for batch in 1...3 {
      let records = (0..<batch).map {
        maker.entry(group: 1, index: UInt64($0), payloadBytes: 10 * batch)
      }
      bytes += records.reduce(0) { $0 + $1.frameBytes }
      try log.append(records)
      try log.sync()
    }
    try log.sync()  // nothing appended since the last sync: no fdatasync, not counted
    // The second and third appends each start with a sync marker for the sync before them.
    bytes += 2 * syncMarkerFrameBytes
    let statistics = log.statistics
    XCTAssertEqual(statistics.recordsAppended, 6)
    XCTAssertEqual(statistics.bytesAppended, UInt64(bytes))
    XCTAssertEqual(statistics.syncs, 3)
    XCTAssertGreaterThan(statistics.syncNanosecondsTotal, 0)
    XCTAssertEqual(
      statistics.syncLatencyBuckets.count, WALStatistics.syncLatencyBucketBoundsSeconds.count + 1)
    XCTAssertEqual(statistics.syncLatencyBuckets.last, 3)
    for (lower, upper) in zip(
      statistics.syncLatencyBuckets, statistics.syncLatencyBuckets.dropFirst())
    {
      XCTAssertLessThanOrEqual(lower, upper, "cumulative buckets")
    }
    XCTAssertEqual(try FileSystem.fileSize(segmentPath(1)), UInt64(segmentHeaderBytes + bytes))
    try log.close()
  }

  func testRollSyncsTheSealedSegment() throws {
    let log = try open(WALOptions(segmentBytesMax: 100))
    try log.append([
      WALRecord(
        kind: .entry, group: 1, index: 1, term: 1, payload: [UInt8](repeating: 0, count: 30))
    ])
    XCTAssertEqual(log.statistics.syncs, 0)
    try log.append([
      WALRecord(
        kind: .entry, group: 1, index: 2, term: 1, payload: [UInt8](repeating: 0, count: 30))
    ])
    XCTAssertEqual(log.statistics.segments, 2)
    XCTAssertEqual(log.statistics.syncs, 1, "the sealed segment was fsynced")
    try log.close()
  }

  /// The engine's pattern: batches of 64 records of ~100 bytes, one sync per batch. Prints the
  /// figures (debug build: append cost is much lower in release), checks the data.
  func testBatchedAppendSyncPattern() throws {
    let log = try open()
    var maker = RecordMaker(seed: 41)
    let batches = 100
    let batch = (0..<64).map {
      maker.entry(group: UInt64($0 % 8), index: UInt64($0), payloadBytes: 100)
    }
    var appendNanoseconds: UInt64 = 0
    var syncLatencies: [UInt64] = []
    let start = MonotonicClock.nowNanoseconds()
    for _ in 0..<batches {
      let appendStart = MonotonicClock.nowNanoseconds()
      try log.append(batch)
      let syncStart = MonotonicClock.nowNanoseconds()
      try log.sync()
      let end = MonotonicClock.nowNanoseconds()
      appendNanoseconds += syncStart - appendStart
      syncLatencies.append(end - syncStart)
    }
    let elapsed = Double(MonotonicClock.nowNanoseconds() - start) / 1e9
    syncLatencies.sort()
    let records = batches * batch.count
    print(
      "WAL batch pattern: \(batches) × 64 × 100 B: \(Int(Double(records) / elapsed)) records/s, "
        + "\(Int(Double(batches) / elapsed)) syncs/s, append \(appendNanoseconds / UInt64(batches) / 1000) µs/batch, "
        + "fdatasync p50 \(syncLatencies[batches / 2] / 1000) µs p99 \(syncLatencies[batches * 99 / 100] / 1000) µs"
    )
    XCTAssertEqual(log.statistics.recordsAppended, UInt64(records))
    XCTAssertEqual(log.statistics.syncs, UInt64(batches))
    try log.close()
    var count = 0
    let reopened = try open()
    try reopened.replay { record in
      XCTAssertEqual(record, batch[count % batch.count])
      count += 1
    }
    XCTAssertEqual(count, records)
    try reopened.close()
  }
}
