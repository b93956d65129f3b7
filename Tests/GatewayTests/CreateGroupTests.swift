import Consensus
import Foundation
@testable import Directory
@testable import Gateway
import HTTPServer
import KeyValueStore
import Logging
import Platform
import StandaloneConsensus
import XCTest

/// Sends one request to `gateway` and waits for its answer.
private func send(_ gateway: Gateway, _ method: String, _ target: String, _ body: String = "") -> HTTPResponse {
  waitForCompletion { done in
    gateway.handle(
      HTTPRequest(method: method, target: target, headers: [], body: Array(body.utf8)), responder: HTTPResponder { done($0) })
  }
}

private func json(_ response: HTTPResponse) -> [String: Any] {
  ((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]) ?? [:]
}


/// Issue 11: `POST /v1/groups` retried after a timeout is answered as the first attempt was. On
/// a single node (no directory) and on a one-node directory (a standalone engine hosting
/// `PartitionRegion-0`, so the directory's reads and writes are this engine's).
final class CreateGroupRetryTests: XCTestCase {
  private var dataDirectory = ""
  private var engine: StandaloneConsensus!
  private let local = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))

  override func setUpWithError() throws {
    dataDirectory = NSTemporaryDirectory() + "caucus-create-\(UUID().uuidString.prefix(8))"
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    engine = StandaloneConsensus(config: ConsensusConfig(localPeer: local, dataDirectory: dataDirectory, registry: registry))
    try engine.start()
  }

  override func tearDown() {
    engine.stop()
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }

  private func makeGateway(directory: ClusterDirectory? = nil) -> Gateway {
    Gateway(
      engine: engine,
      configuration: GatewayConfiguration(
        clientURL: "http://127.0.0.1:6667", dataDirectory: dataDirectory, version: "test", members: [local],
        directory: directory))
  }

  private func makeDirectory() throws -> ClusterDirectory {
    try waitForCompletion { self.engine.createPeer(ClusterDirectory.group, peers: [self.local], completion: $0) }.get()
    return ClusterDirectory(
      engine: engine, transport: nil, members: [local],
      localNode: DirectoryNode(id: local.node, clientURL: "http://127.0.0.1:6667", consensusEndpoint: local.endpoint),
      logger: Logger(label: "test.directory"))
  }

  /// The two answers are the same creation's: 201, the Location, the group and its peers.
  private func assertSameCreation(_ first: HTTPResponse, _ second: HTTPResponse, file: StaticString = #filePath, line: UInt = #line) {
    for response in [first, second] {
      XCTAssertEqual(response.status, 201, String(decoding: response.body, as: UTF8.self), file: file, line: line)
      XCTAssertEqual(response.header("Location"), "/v1/groups/DataRegion-3", file: file, line: line)
    }
    XCTAssertEqual(json(first)["id"] as? String, json(second)["id"] as? String, file: file, line: line)
    let peers = { (response: HTTPResponse) in (json(response)["peers"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int } }
    XCTAssertEqual(peers(first), [1], file: file, line: line)
    XCTAssertEqual(peers(second), peers(first), file: file, line: line)
  }

  func testOnASingleNodeACreateRetriedWithTheSamePeersIs201AndOtherPeersAre409() throws {
    let gateway = makeGateway()
    defer { gateway.stop() }
    let first = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3"}"#)
    let written = send(gateway, "PUT", "/v1/groups/DataRegion-3/kv/k", "v")
    XCTAssertEqual(written.status, 200)
    let second = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3"}"#)
    assertSameCreation(first, second)
    // The same peer list spelled out (by id, then in full) is the same request.
    assertSameCreation(first, send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[1]}"#))
    assertSameCreation(
      first, send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[{"id":1,"endpoint":"127.0.0.1:40010"}]}"#))
    XCTAssertEqual(String(decoding: send(gateway, "GET", "/v1/groups/DataRegion-3/kv/k?raw=true").body, as: UTF8.self), "v")

    // Another peer list (here: another endpoint for node 1) is not this group.
    let other = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[{"id":1,"endpoint":"127.0.0.1:40999"}]}"#)
    XCTAssertEqual(other.status, 409)
    XCTAssertEqual(json(other)["error"] as? String, "group_already_exists")
    // The node-local route still tells "created" from "had one" (the leader's join path needs it).
    let local = send(gateway, "POST", "/v1/node/groups", #"{"id":"DataRegion-3","peers":[1]}"#)
    XCTAssertEqual(local.status, 409)
    XCTAssertEqual(json(local)["error"] as? String, "group_already_exists")
    XCTAssertEqual(engine.allGroupIDs().filter { $0 == GroupID(.dataRegion, 3) }.count, 1)
  }

  func testWithADirectoryACreateRetriedWithTheSamePeersIs201AndOtherPeersAre409() throws {
    let directory = try makeDirectory()
    let gateway = makeGateway(directory: directory)
    defer { gateway.stop() }
    let first = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[1]}"#)
    let recorded = try XCTUnwrap(try waitForCompletion { directory.recordRevision(GroupID(.dataRegion, 3), $0) }.get())
    let second = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[1]}"#)
    assertSameCreation(first, second)
    let renewed = try XCTUnwrap(try waitForCompletion { directory.recordRevision(GroupID(.dataRegion, 3), $0) }.get())
    XCTAssertGreaterThan(renewed, recorded, "the retry made the record its own")

    let other = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[{"id":1,"endpoint":"127.0.0.1:40999"}]}"#)
    XCTAssertEqual(other.status, 409)
    XCTAssertEqual(json(other)["error"] as? String, "group_already_exists")
  }

  /// Issue 13, point 5e: a standalone group has one replica (IoTDB's rule), so two peers are
  /// `400 illegal_peer_num` before anything else: no directory lookup of the node ids (which
  /// answered that node 2 is unknown), no record of the placement, no replica.
  func testAStandaloneGroupWithTwoPeersIsIllegalPeerNumBeforeTheDirectory() throws {
    let directory = try makeDirectory()
    let gateway = makeGateway(directory: directory)
    defer { gateway.stop() }
    let bodies = [
      #"{"id":"DataRegion-4","peers":[1,2]}"#,
      #"{"id":"DataRegion-4","peers":[{"id":1,"endpoint":"127.0.0.1:40010"},{"id":2,"endpoint":"127.0.0.1:40011"}]}"#,
    ]
    for (target, body) in [("/v1/groups", bodies[0]), ("/v1/groups", bodies[1]), ("/v1/node/groups", bodies[1])] {
      let refused = send(gateway, "POST", target, body)
      XCTAssertEqual(refused.status, 400, "\(target) \(body)")
      XCTAssertEqual(json(refused)["error"] as? String, "illegal_peer_num", String(decoding: refused.body, as: UTF8.self))
      XCTAssertNil(
        try waitForCompletion { directory.recordedGroup(GroupID(.dataRegion, 4), $0) }.get(), "\(target) \(body): no record")
      XCTAssertNil(engine.status(GroupID(.dataRegion, 4)))
    }
  }

  /// What a DELETE that failed on some peer leaves: its mark on the record, and maybe replicas.
  /// A creation of the id is refused, says to finish the DELETE, and creates nothing.
  func testACreationOverARecordMarkedByAnUnfinishedDeleteIsRefusedAndCreatesNothing() throws {
    let directory = try makeDirectory()
    let gateway = makeGateway(directory: directory)
    defer { gateway.stop() }
    let marked = DirectoryGroup(id: GroupID(.dataRegion, 3), peers: [local], deleting: true)
    try waitForCompletion { directory.record(marked, $0) }.get()
    let refused = send(gateway, "POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[1]}"#)
    XCTAssertEqual(refused.status, 409)
    XCTAssertEqual(json(refused)["error"] as? String, "group_already_exists")
    let message = try XCTUnwrap(json(refused)["message"] as? String)
    XCTAssertTrue(message.contains("DELETE /v1/groups/DataRegion-3"), message)
    XCTAssertNil(engine.status(GroupID(.dataRegion, 3)), "no replica was created")
  }
}

/// The directory's mark of an unfinished DELETE: encoded only when set, refused by a renewal,
/// and a reservation over it says so.
final class DeletionMarkTests: XCTestCase {
  private let peer = Peer(node: NodeID(2), endpoint: Endpoint(host: "h2", port: 2))

  func testAMarkedRecordRoundTripsAndAnUnmarkedOneKeepsItsShape() throws {
    let plain = DirectoryGroup(id: GroupID(.dataRegion, 7), peers: [peer])
    XCTAssertEqual(
      String(decoding: try DirectoryRecords.encode(plain), as: UTF8.self), #"{"id":"DataRegion-7","peers":[{"id":2,"endpoint":"h2:2"}]}"#)
    let marked = DirectoryGroup(id: GroupID(.dataRegion, 7), peers: [peer], deleting: true)
    let bytes = try DirectoryRecords.encode(marked)
    XCTAssertEqual(String(decoding: bytes, as: UTF8.self), #"{"id":"DataRegion-7","peers":[{"id":2,"endpoint":"h2:2"}],"deleting":true}"#)
    XCTAssertEqual(try DirectoryRecords.decodeGroup(bytes), marked)
    XCTAssertThrowsError(
      try DirectoryRecords.decodeGroup(Array(#"{"id":"DataRegion-7","peers":[{"id":2,"endpoint":"h2:2"}],"deleting":"yes"}"#.utf8)))
    XCTAssertEqual(DirectoryReservation(existing: marked, wanted: plain), .deletionUnfinished(marked))
    XCTAssertEqual(DirectoryReservation(existing: plain, wanted: plain), .recordedWithTheSamePeers)
  }

  func testADeleteMarksTheRecordWithANewRevisionThatARenewalRefusesAndItsRemovalTakes() throws {
    let dataDirectory = NSTemporaryDirectory() + "caucus-mark-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: dataDirectory) }
    let local = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    let engine = StandaloneConsensus(config: ConsensusConfig(localPeer: local, dataDirectory: dataDirectory, registry: registry))
    try engine.start()
    defer { engine.stop() }
    try waitForCompletion { engine.createPeer(ClusterDirectory.group, peers: [local], completion: $0) }.get()
    let directory = ClusterDirectory(
      engine: engine, transport: nil, members: [local],
      localNode: DirectoryNode(id: local.node, clientURL: "http://127.0.0.1:6667", consensusEndpoint: local.endpoint),
      logger: Logger(label: "test.directory"))
    let group = DirectoryGroup(id: GroupID(.dataRegion, 5), peers: [local])

    XCTAssertNil(try waitForCompletion { directory.markDeleting(group.id, $0) }.get(), "no record, nothing to mark")
    try waitForCompletion { directory.record(group, $0) }.get()
    let found = try XCTUnwrap(try waitForCompletion { directory.recordRevision(group.id, $0) }.get())
    let marked = try XCTUnwrap(try waitForCompletion { directory.markDeleting(group.id, $0) }.get())
    XCTAssertGreaterThan(marked, found)
    XCTAssertEqual(try waitForCompletion { directory.recordRevision(group.id, $0) }.get(), marked)
    XCTAssertEqual(try waitForCompletion { directory.recordedGroup(group.id, $0) }.get()?.deleting, true)
    // A creation cannot make a marked record its own, nor reserve the id.
    XCTAssertThrowsError(try waitForCompletion { directory.renewRecord(group, $0) }.get())
    let reservation = try waitForCompletion { directory.reserve(group, $0) }.get()
    XCTAssertEqual(reservation, .deletionUnfinished(DirectoryGroup(id: group.id, peers: [local], deleting: true)))
    // A DELETE retried marks it again, with a revision of its own, and removes what it marked.
    let again = try XCTUnwrap(try waitForCompletion { directory.markDeleting(group.id, $0) }.get())
    XCTAssertGreaterThan(again, marked)
    try waitForCompletion { directory.removeRecord(group.id, ifRevision: again, $0) }.get()
    XCTAssertNil(try waitForCompletion { directory.recordRevision(group.id, $0) }.get())
  }
}

/// An engine that hosts nothing and refuses every creation for its group limit.
private final class FullEngine: ConsensusEngine, @unchecked Sendable {
  let protocolName = "full"
  let localPeer = Peer(node: NodeID(7), endpoint: Endpoint(host: "127.0.0.1", port: 40017))
  let refusal = ConsensusError.groupLimitReached(node: NodeID(7), limit: 2, setting: "raft.groupsMax")

  func start() throws {}
  func stop() {}
  func write(_ group: GroupID, command: [UInt8], completion: @escaping ConsensusCompletion<WriteResult>) {
    completion(.failure(.groupNotFound(group)))
  }
  func read(_ group: GroupID, query: [UInt8], options: ReadOptions, completion: @escaping ConsensusCompletion<ReadResult>) {
    completion(.failure(.groupNotFound(group)))
  }
  func createPeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {
    completion(.failure(refusal))
  }
  func deletePeer(_ group: GroupID, ifLogEndsBy: LogPosition?, completion: @escaping ConsensusCompletion<Void>) {
    completion(.failure(.groupNotFound(group)))
  }
  func addPeer(_ group: GroupID, peer: Peer, completion: @escaping ConsensusCompletion<Void>) {}
  func removePeer(_ group: GroupID, node: NodeID, completion: @escaping ConsensusCompletion<Void>) {}
  func changePeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {}
  func transferLeader(_ group: GroupID, to node: NodeID, completion: @escaping ConsensusCompletion<Void>) {}
  func triggerSnapshot(_ group: GroupID, completion: @escaping ConsensusCompletion<SnapshotInfo>) {}
  func isLeader(_ group: GroupID) -> Bool { false }
  func leader(_ group: GroupID) -> Peer? { nil }
  func allGroupIDs() -> [GroupID] { [] }
  func status(_ group: GroupID) -> GroupStatus? { nil }
  var isReady: Bool { true }
  func prometheusMetrics() -> String { "" }
}

/// Issue 11: a node at its group limit refuses a creation with `409 group_limit_reached` naming
/// the node and the limit, on both creation routes, not with a storage failure to retry.
final class GroupLimitTests: XCTestCase {
  func testACreationPastTheGroupLimitIs409GroupLimitReachedOnBothRoutes() throws {
    let gateway = Gateway(
      engine: FullEngine(), configuration: GatewayConfiguration(clientURL: "http://127.0.0.1:6667", dataDirectory: "/d", version: "test"))
    defer { gateway.stop() }
    for (target, body) in [("/v1/groups", #"{"id":"DataRegion-3"}"#), ("/v1/node/groups", #"{"id":"DataRegion-3","peers":[7]}"#)] {
      let refused = send(gateway, "POST", target, body)
      XCTAssertEqual(refused.status, 409, target)
      let answer = json(refused)
      XCTAssertEqual(answer["error"] as? String, "group_limit_reached", target)
      XCTAssertEqual(answer["node"] as? Int, 7, target)
      XCTAssertEqual(answer["limit"] as? Int, 2, target)
      let message = try XCTUnwrap(answer["message"] as? String)
      XCTAssertTrue(message.contains("node 7") && message.contains("raft.groupsMax = 2"), message)
      XCTAssertNil(refused.header("Retry-After"), "not a failure that passes by itself")
    }
  }

  /// How the coordinator of a creation reads a peer's answer to `POST /v1/node/groups`.
  func testAPeersAnswerIsCreatedExistedARefusalToPassOnOrAFailureThatMayPass() {
    let node = NodeID(3)
    func outcome(_ status: Int, _ body: String = "") -> ReplicaCreation { ReplicaCreation(node: node, status: status, body: Array(body.utf8)) }
    XCTAssertTrue(outcome(201, "{}").isDone)
    XCTAssertTrue(outcome(409, #"{"error":"group_already_exists","message":"m"}"#).isDone)
    let limit = outcome(409, #"{"error":"group_limit_reached","message":"node 3 hosts 2 groups","node":3,"limit":2}"#)
    XCTAssertFalse(limit.isDone, "a 409 of another kind is not a replica")
    guard case .refusedByPeer(let refusing, let status, let code, let message, let context)? = limit.refusal else {
      return XCTFail("\(limit)")
    }
    XCTAssertEqual(refusing, node)
    XCTAssertEqual(status, 409)
    XCTAssertEqual(code, "group_limit_reached")
    XCTAssertEqual(message, "node 3 hosts 2 groups")
    XCTAssertEqual(context.first { $0.0 == "limit" }?.1, .number(2))
    XCTAssertNotNil(outcome(400, #"{"error":"illegal_peer_num","message":"m"}"#).refusal)
    for (status, body) in [(0, ""), (503, #"{"error":"not_ready","message":"m"}"#), (408, #"{"error":"request_timeout","message":"m"}"#), (400, "")] {
      XCTAssertNotNil(outcome(status, body).failure, "\(status) \(body)")
    }
  }
}
