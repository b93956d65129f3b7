import XCTest

@testable import RaftCore

/// Issue 9 finding 5: the sender keeps every batch within what a receiver accepts, and a snapshot
/// too large to travel inline streams in chunks.
final class BatchPackingAndSnapshotChunkTests: XCTestCase {
  private func snapshotMessage(bytes: Int, seed: UInt8 = 1) -> Message {
    let data = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    return Message(
      kind: .snapshot, from: 1, to: 2, term: 7,
      snapshot: Snapshot(index: 40, term: 6, config: ConfigState(voters: [1, 2, 3], learners: [4]), data: data))
  }

  func testEncodedBytesMatchesTheEncoding() {
    let messages = [
      Message(kind: .heartbeat, from: 1, to: 2, term: 3, commit: 4, context: 9),
      Message(
        kind: .append, from: 1, to: 2, term: 3, logTerm: 2, index: 5,
        entries: [Entry(term: 3, index: 6, data: [1, 2, 3]), Entry(term: 3, index: 7, kind: .configChange, data: [])],
        commit: 5),
      Message(kind: .appendResponse, from: 2, to: 1, term: 3, index: 5, reject: true, rejectHint: 4),
      snapshotMessage(bytes: 100),
    ]
    for message in messages {
      XCTAssertEqual(WireCodec.encodedBytes(message), WireCodec.encode(message).count, "\(message.kind)")
    }
  }

  /// Many groups' appends in one turn: no batch passes the target, nothing is lost or reordered.
  func testPackedBatchesStayUnderTheTargetAndKeepEveryItemInOrder() throws {
    let big = [UInt8](repeating: 7, count: 300 << 10)
    let items = (0..<200).map { group in
      GroupMessage(
        group: UInt64(group),
        message: Message(
          kind: .append, from: 1, to: 2, term: 3, logTerm: 3, index: 10, entries: [Entry(term: 3, index: 11, data: big)],
          commit: 10))
    }
    let heartbeats = (0..<50).map { group in
      GroupMessage(group: UInt64(1_000 + group), message: Message(kind: .heartbeat, from: 1, to: 2, term: 3, commit: 1))
    }
    let forwards = (0..<10).map { ForwardedProposal(group: 5, requestID: UInt64($0), body: .proposal(data: big)) }
    let target = 4 << 20
    let batches = MessageBatch.packed(
      fromNode: 1, toNode: 2, messages: heartbeats + items, forwards: forwards, bytesTarget: target)
    XCTAssertGreaterThan(batches.count, 10)
    for batch in batches {
      let bytes = WireCodec.encode(batch)
      XCTAssertLessThanOrEqual(bytes.count, target)
      XCTAssertEqual(try WireCodec.decodeBatch(bytes), batch)
    }
    XCTAssertEqual(batches[0].heartbeats.count, 50, "heartbeats coalesce into the first batch")
    XCTAssertEqual(batches.flatMap(\.messages), items)
    XCTAssertEqual(batches.flatMap(\.forwards), forwards)
  }

  /// An item larger than the target still goes, alone; an empty turn sends nothing.
  func testAnItemLargerThanTheTargetTravelsAloneAndNothingMakesNoBatch() {
    let huge = GroupMessage(
      group: 1,
      message: Message(
        kind: .append, from: 1, to: 2, term: 1, index: 0, entries: [Entry(term: 1, index: 1, data: [UInt8](repeating: 1, count: 2_000))]))
    let small = GroupMessage(group: 2, message: Message(kind: .appendResponse, from: 1, to: 2, term: 1, index: 3, reject: true))
    let batches = MessageBatch.packed(fromNode: 1, toNode: 2, messages: [small, huge, small], bytesTarget: 1_000)
    XCTAssertEqual(batches.map(\.messages.count), [1, 1, 1])
    XCTAssertEqual(MessageBatch.packed(fromNode: 1, toNode: 2, messages: []), [])
  }

  /// More heartbeats than one batch's section takes (many ReadIndex rounds in a turn) go on in
  /// further batches: the receiver's limit holds, the sender does not crash.
  func testHeartbeatsPastOneSectionGoOnInFurtherBatches() throws {
    let heartbeats = (0..<(WireLimits.heartbeatsPerBatchMax + 3)).map { round in
      GroupMessage(group: 1, message: Message(kind: .heartbeatResponse, from: 1, to: 2, term: 3, context: UInt64(round)))
    }
    let batches = MessageBatch.packed(fromNode: 1, toNode: 2, messages: heartbeats)
    XCTAssertEqual(batches.map(\.heartbeats.count), [WireLimits.heartbeatsPerBatchMax, 3])
    XCTAssertNoThrow(try WireCodec.decodeBatch(WireCodec.encode(batches[0])))
  }

  func testPackedBatchesRespectThePerBatchCountLimits() {
    let forwards = (0..<(WireLimits.forwardsPerBatchMax + 5)).map {
      ForwardedProposal(group: 1, requestID: UInt64($0), body: .refused(.overloaded, leaderHint: 0))
    }
    let batches = MessageBatch.packed(fromNode: 1, toNode: 2, messages: [], forwards: forwards)
    XCTAssertEqual(batches.map(\.forwards.count), [WireLimits.forwardsPerBatchMax, 5])
  }

  /// Chunks survive the wire and reassemble, in any order and with duplicates, into the message.
  func testChunksReassembleInAnyOrderIntoTheSnapshotMessage() throws {
    let message = snapshotMessage(bytes: 5 * WireLimits.snapshotChunkBytesMin + 123)
    let chunks = SnapshotChunk.split(message, group: 9, chunkBytes: WireLimits.snapshotChunkBytesMin)
    XCTAssertEqual(chunks.count, 6)
    XCTAssertEqual(chunks.last?.data.count, 123)
    let batches = MessageBatch.packed(fromNode: 1, toNode: 2, messages: [], snapshotChunks: chunks, bytesTarget: 200_000)
    XCTAssertGreaterThan(batches.count, 1, "the chunks spread over batches")
    var arrived: [SnapshotChunk] = []
    for batch in batches { arrived += try WireCodec.decodeBatch(WireCodec.encode(batch)).snapshotChunks }
    XCTAssertEqual(arrived, chunks)
    var order = [3, 0, 5, 3, 1, 4, 0]
    var assembly = SnapshotAssembly(first: arrived[order[0]])
    var completed: Message?
    for position in order {
      XCTAssertNil(completed, "complete only once every chunk is in")
      completed = assembly.add(arrived[position])
    }
    XCTAssertNil(completed, "chunk 2 is still missing")
    order = [2]
    completed = assembly.add(arrived[2])
    XCTAssertEqual(completed, message)
  }

  /// A chunk whose sizes disagree is refused by the decoder, before any assembly sees it.
  func testChunksWithInconsistentSizesAreRefused() throws {
    let chunk = SnapshotChunk.split(
      snapshotMessage(bytes: 3 * WireLimits.snapshotChunkBytesMin), group: 1, chunkBytes: WireLimits.snapshotChunkBytesMin)[1]
    func refused(_ change: (inout SnapshotChunk) -> Void) -> Bool {
      var broken = chunk
      change(&broken)
      let bytes = WireCodec.encode(MessageBatch(fromNode: 1, toNode: 2, messages: [], snapshotChunks: [broken]))
      return (try? WireCodec.decodeBatch(bytes)) == nil
    }
    XCTAssertFalse(refused { _ in })
    XCTAssertTrue(refused { $0.chunkIndex = 3 }, "index past the stream")
    XCTAssertTrue(refused { $0.data.removeLast() }, "data shorter than its index needs")
    XCTAssertTrue(refused { $0.chunkBytes = 1_000 }, "chunk size under the minimum")
    XCTAssertTrue(refused { $0.totalBytes = 0 }, "an empty stream")
    XCTAssertTrue(refused { $0.from = 0 }, "replica 0")
  }
}
