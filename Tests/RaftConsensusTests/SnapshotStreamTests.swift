import RaftCore
import XCTest

@testable import RaftConsensus

/// The host's snapshot streams: pacing on the leader's side, bounded assembly on the follower's.
final class SnapshotStreamTests: XCTestCase {
  private let chunkBytes = WireLimits.snapshotChunkBytesMin

  private func snapshotMessage(to replica: ReplicaID, chunks: Int, term: Term = 5) -> Message {
    Message(
      kind: .snapshot, from: 1, to: replica, term: term,
      snapshot: Snapshot(
        index: 10, term: 4, config: ConfigState(voters: [1, 2, 3]),
        data: [UInt8](repeating: UInt8(replica), count: chunks * chunkBytes - 7)))
  }

  func testStreamsSendABudgetPerDestinationRoundRobinThenFinish() {
    var streams = SnapshotStreams(chunkBytes: chunkBytes)
    streams.start(snapshotMessage(to: 2, chunks: 3), group: 1)
    streams.start(snapshotMessage(to: 2, chunks: 3), group: 2)
    streams.start(snapshotMessage(to: 3, chunks: 1), group: 1)
    var first = streams.takeChunks(bytesPerDestination: 2 * chunkBytes) { _, _ in true }
    XCTAssertEqual(first.chunks[2]?.map(\.group), [1, 2], "one chunk per stream in turn")
    XCTAssertEqual(first.chunks[3]?.count, 1)
    XCTAssertEqual(first.finished, [SnapshotStreams.Key(group: 1, replica: 3)])
    var sent = first.chunks[2]!
    for _ in 0..<2 {
      first = streams.takeChunks(bytesPerDestination: 2 * chunkBytes) { _, _ in true }
      sent += first.chunks[2] ?? []
    }
    XCTAssertEqual(Set(first.finished), [SnapshotStreams.Key(group: 1, replica: 2), SnapshotStreams.Key(group: 2, replica: 2)])
    XCTAssertTrue(streams.outbound.isEmpty)
    XCTAssertEqual(sent.filter { $0.group == 1 }.map(\.chunkIndex), [0, 1, 2])
  }

  func testAStreamWhoseLeadershipEndedIsDropped() {
    var streams = SnapshotStreams(chunkBytes: chunkBytes)
    streams.start(snapshotMessage(to: 2, chunks: 4), group: 1)
    _ = streams.takeChunks(bytesPerDestination: chunkBytes) { _, _ in true }
    let next = streams.takeChunks(bytesPerDestination: chunkBytes) { _, term in term == 6 }
    XCTAssertTrue(next.chunks.isEmpty)
    XCTAssertTrue(next.finished.isEmpty, "a dropped stream is not reported delivered")
    XCTAssertTrue(streams.outbound.isEmpty)
  }

  func testAssembliesAreBoundedInBytesAndDroppedWhenIdle() {
    var streams = SnapshotStreams(chunkBytes: chunkBytes)
    let first = SnapshotChunk.split(snapshotMessage(to: 9, chunks: 3), group: 1, chunkBytes: chunkBytes)
    let second = SnapshotChunk.split(snapshotMessage(to: 9, chunks: 3), group: 2, chunkBytes: chunkBytes)
    let limit = 4 * chunkBytes
    XCTAssertEqual(streams.receive(first[0], bytesMax: limit), .pending)
    XCTAssertEqual(streams.receive(second[0], bytesMax: limit), .refused, "two would pass the limit")
    XCTAssertEqual(streams.receive(first[2], bytesMax: limit), .pending)
    XCTAssertEqual(streams.tick(idleTicksMax: 2), 0)
    XCTAssertEqual(streams.receive(first[1], bytesMax: limit), .complete(snapshotMessage(to: 9, chunks: 3)))
    XCTAssertEqual(streams.inboundBytes, 0)
    XCTAssertEqual(streams.receive(second[0], bytesMax: limit), .pending, "room again")
    for _ in 0..<3 { _ = streams.tick(idleTicksMax: 2) }
    XCTAssertTrue(streams.inbound.isEmpty, "idle past the limit: dropped")
    XCTAssertEqual(streams.inboundBytes, 0)
  }

  /// The leader moved on to another snapshot: the half-built one is replaced, not mixed in.
  func testAChunkOfANewerSnapshotReplacesTheAssembly() {
    var streams = SnapshotStreams(chunkBytes: chunkBytes)
    let old = SnapshotChunk.split(snapshotMessage(to: 9, chunks: 2, term: 5), group: 1, chunkBytes: chunkBytes)
    let new = SnapshotChunk.split(snapshotMessage(to: 9, chunks: 2, term: 6), group: 1, chunkBytes: chunkBytes)
    XCTAssertEqual(streams.receive(old[0], bytesMax: 1 << 30), .pending)
    XCTAssertEqual(streams.receive(new[1], bytesMax: 1 << 30), .pending)
    XCTAssertEqual(streams.receive(old[1], bytesMax: 1 << 30), .pending, "the old stream is gone; this starts it again")
    XCTAssertEqual(streams.inboundBytes, old[0].totalBytes)
  }
}

/// The leader's window of answered forwards.
final class ForwardWindowTests: XCTestCase {
  func testAnswersAreRememberedPerNodeWithinTheWindow() {
    var window = ForwardWindow(perNodeMax: 2)
    window.remember(from: 1, requestID: 10, answer: .accepted(index: 5, term: 2))
    window.remember(from: 2, requestID: 10, answer: .refused(.overloaded, leaderHint: 0))
    XCTAssertEqual(window.answer(from: 1, requestID: 10), .accepted(index: 5, term: 2))
    XCTAssertEqual(window.answer(from: 2, requestID: 10), .refused(.overloaded, leaderHint: 0))
    window.remember(from: 1, requestID: 11, answer: .accepted(index: 6, term: 2))
    window.remember(from: 1, requestID: 12, answer: .accepted(index: 7, term: 2))
    XCTAssertNil(window.answer(from: 1, requestID: 10), "the oldest leaves a full window")
    XCTAssertEqual(window.answer(from: 1, requestID: 12), .accepted(index: 7, term: 2))
    XCTAssertEqual(window.answer(from: 2, requestID: 10), .refused(.overloaded, leaderHint: 0), "per node")
  }
}
