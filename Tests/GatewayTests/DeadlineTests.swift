import Consensus
import Foundation
@testable import Gateway
import HTTPServer
import KeyValueStore
import Platform
import XCTest

/// An engine that hosts DataRegion-0 and never completes writes or reads until told to: the
/// gateway's deadlines are what answers.
final class StalledEngine: ConsensusEngine, @unchecked Sendable {
  let protocolName = "stalled"
  let localPeer = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))
  let group = GroupID(.dataRegion, 0)
  let pendingWrites = Locked<[ConsensusCompletion<WriteResult>]>([])
  let pendingReads = Locked<[ConsensusCompletion<ReadResult>]>([])

  func start() throws {}
  func stop() {}
  func write(_ group: GroupID, command: [UInt8], completion: @escaping ConsensusCompletion<WriteResult>) {
    pendingWrites.withLock { $0.append(completion) }
  }
  func read(_ group: GroupID, query: [UInt8], options: ReadOptions, completion: @escaping ConsensusCompletion<ReadResult>) {
    pendingReads.withLock { $0.append(completion) }
  }
  func createPeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {}
  func deletePeer(_ group: GroupID, ifLogEndsBy: LogPosition?, completion: @escaping ConsensusCompletion<Void>) {}
  func addPeer(_ group: GroupID, peer: Peer, completion: @escaping ConsensusCompletion<Void>) {}
  func removePeer(_ group: GroupID, node: NodeID, completion: @escaping ConsensusCompletion<Void>) {}
  func changePeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {}
  func transferLeader(_ group: GroupID, to node: NodeID, completion: @escaping ConsensusCompletion<Void>) {}
  func triggerSnapshot(_ group: GroupID, completion: @escaping ConsensusCompletion<SnapshotInfo>) {}
  func isLeader(_ group: GroupID) -> Bool { group == self.group }
  func leader(_ group: GroupID) -> Peer? { group == self.group ? localPeer : nil }
  func allGroupIDs() -> [GroupID] { [group] }
  func status(_ group: GroupID) -> GroupStatus? {
    guard group == self.group else { return nil }
    return GroupStatus(
      id: group, protocolName: protocolName, role: .leader, leader: localPeer, term: 1, commitIndex: 7, appliedIndex: 7,
      snapshotIndex: 0, logEntries: 7, logBytes: 70, peers: [])
  }
  /// What the engine says of its storage (`InsufficientStorageTests` sets it).
  let condition = Locked<StorageCondition>(.ok)
  var isReady: Bool { condition.withLock { $0 } == .ok }
  var storageCondition: StorageCondition { condition.withLock { $0 } }
  func prometheusMetrics() -> String { "" }
}

final class DeadlineTests: XCTestCase {
  private func answer(_ gateway: Gateway, _ method: String, _ target: String, body: String = "") -> Locked<[HTTPResponse]> {
    let responses = Locked<[HTTPResponse]>([])
    gateway.handle(
      HTTPRequest(method: method, target: target, headers: [], body: Array(body.utf8)),
      responder: HTTPResponder { response in responses.withLock { $0.append(response) } })
    return responses
  }

  private func waitForAnswer(_ responses: Locked<[HTTPResponse]>, seconds: Double = 10) -> HTTPResponse? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if let first = responses.withLock({ $0.first }) { return first }
      usleep(5_000)
    }
    return nil
  }

  func testAWriteTheEngineNeverCompletesIsAnsweredIndeterminateAtItsDeadlineAndTheLateCompletionIsDropped() throws {
    let engine = StalledEngine()
    let gateway = Gateway(
      engine: engine,
      configuration: GatewayConfiguration(clientURL: "http://127.0.0.1:1", dataDirectory: "/tmp", version: "test", requestTimeoutMs: 150))
    defer {
      gateway.stop()
      // The stalled completions hold the gateway: release them so the test leaks nothing.
      engine.pendingWrites.withLock { $0.removeAll() }
      engine.pendingReads.withLock { $0.removeAll() }
    }
    let started = Date()
    let responses = answer(gateway, "PUT", "/v1/groups/DataRegion-0/kv/k", body: "v")
    let response = try XCTUnwrap(waitForAnswer(responses))
    XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.15)
    XCTAssertEqual(response.status, 504)
    let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
    XCTAssertEqual(json["error"] as? String, "timeout")
    XCTAssertEqual(json["indeterminate"] as? Bool, true)
    XCTAssertEqual(json["group"] as? String, "DataRegion-0")
    XCTAssertTrue(response.headers.contains { $0.name == "X-Caucus-Index" && $0.value == "7" })
    // The engine completes after all: nothing more is sent, nothing crashes.
    let late = engine.pendingWrites.withLock { $0 }
    XCTAssertEqual(late.count, 1)
    late[0](.success(WriteResult(index: 8, response: KVCodec.encode(KVWriteOutcome.applied([.put(revision: 8)])))))
    XCTAssertEqual(responses.withLock { $0.count }, 1)
  }

  func testAReadTheEngineNeverCompletesIsAnsweredWithADefiniteTimeout() throws {
    let engine = StalledEngine()
    let gateway = Gateway(
      engine: engine,
      configuration: GatewayConfiguration(clientURL: "http://127.0.0.1:1", dataDirectory: "/tmp", version: "test", requestTimeoutMs: 150))
    defer {
      gateway.stop()
      // The stalled completions hold the gateway: release them so the test leaks nothing.
      engine.pendingWrites.withLock { $0.removeAll() }
      engine.pendingReads.withLock { $0.removeAll() }
    }
    let response = try XCTUnwrap(waitForAnswer(answer(gateway, "GET", "/v1/groups/DataRegion-0/kv/k")))
    XCTAssertEqual(response.status, 504)
    let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
    XCTAssertEqual(json["indeterminate"] as? Bool, false)
  }

  func testAnswersInTimeAreNotTimedOutLater() throws {
    let engine = StalledEngine()
    let gateway = Gateway(
      engine: engine,
      configuration: GatewayConfiguration(clientURL: "http://127.0.0.1:1", dataDirectory: "/tmp", version: "test", requestTimeoutMs: 100))
    defer {
      gateway.stop()
      // The stalled completions hold the gateway: release them so the test leaks nothing.
      engine.pendingWrites.withLock { $0.removeAll() }
      engine.pendingReads.withLock { $0.removeAll() }
    }
    let responses = answer(gateway, "PUT", "/v1/groups/DataRegion-0/kv/k", body: "v")
    engine.pendingWrites.withLock { $0 }[0](
      .success(WriteResult(index: 8, response: KVCodec.encode(KVWriteOutcome.applied([.put(revision: 8)])))))
    XCTAssertEqual(responses.withLock { $0.first?.status }, 200)
    // Past the deadline and a sweep, still exactly one answer.
    let deadline = Date().addingTimeInterval(0.4)
    while Date() < deadline { usleep(10_000) }
    XCTAssertEqual(responses.withLock { $0.count }, 1)
  }
}
