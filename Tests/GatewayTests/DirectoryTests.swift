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

final class DirectoryRecordTests: XCTestCase {
  func testNodeAndGroupRecordsRoundTripInTheDocumentedShape() throws {
    let node = DirectoryNode(id: NodeID(4), clientURL: "http://10.0.0.4:6667", consensusEndpoint: Endpoint(host: "10.0.0.4", port: 40010))
    let nodeBytes = DirectoryRecords.encode(node)
    XCTAssertEqual(String(decoding: nodeBytes, as: UTF8.self), #"{"id":4,"clientURL":"http://10.0.0.4:6667","consensusEndpoint":"10.0.0.4:40010"}"#)
    XCTAssertEqual(try DirectoryRecords.decodeNode(nodeBytes), node)

    let group = DirectoryGroup(
      id: GroupID(.dataRegion, 7),
      peers: [Peer(node: NodeID(2), endpoint: Endpoint(host: "h2", port: 2)), Peer(node: NodeID(4), endpoint: Endpoint(host: "h4", port: 4))])
    let groupBytes = try DirectoryRecords.encode(group)
    XCTAssertEqual(
      String(decoding: groupBytes, as: UTF8.self),
      #"{"id":"DataRegion-7","peers":[{"id":2,"endpoint":"h2:2"},{"id":4,"endpoint":"h4:4"}]}"#)
    XCTAssertEqual(try DirectoryRecords.decodeGroup(groupBytes), group)
    XCTAssertEqual(DirectoryRecords.key(node: NodeID(4)), "nodes/4")
    XCTAssertEqual(DirectoryRecords.key(group: GroupID(.partitionRegion, 0)), "groups/PartitionRegion-0")
  }

  func testDamagedRecordsAreRefusedWithTheFieldNamed() {
    let nodes: [(String, String)] = [
      ("not json", "not JSON"),
      (#"[1]"#, "JSON object"),
      (#"{"clientURL":"http://a:1","consensusEndpoint":"a:2"}"#, "\"id\""),
      (#"{"id":0,"clientURL":"http://a:1","consensusEndpoint":"a:2"}"#, "\"id\""),
      (#"{"id":1,"consensusEndpoint":"a:2"}"#, "\"clientURL\""),
      (#"{"id":1,"clientURL":"ftp://a:1","consensusEndpoint":"a:2"}"#, "\"clientURL\""),
      (#"{"id":1,"clientURL":"http://a:1/","consensusEndpoint":"a:2"}"#, "\"clientURL\""),
      (#"{"id":1,"clientURL":"http://a b:1","consensusEndpoint":"a:2"}"#, "\"clientURL\""),
      (#"{"id":1,"clientURL":"http://a:1"}"#, "\"consensusEndpoint\""),
      (#"{"id":1,"clientURL":"http://a:1","consensusEndpoint":"a"}"#, "\"consensusEndpoint\""),
      (#"{"id":1,"clientURL":"http://a:1","consensusEndpoint":"a:0"}"#, "\"consensusEndpoint\""),
    ]
    for (text, named) in nodes {
      XCTAssertThrowsError(try DirectoryRecords.decodeNode(Array(text.utf8)), text) { error in
        XCTAssertTrue("\(error)".contains(named), "\(text): \(error)")
      }
    }
    let groups = [
      #"{"id":"Nope-1","peers":[{"id":1,"endpoint":"a:1"}]}"#,
      #"{"id":"DataRegion-1","peers":[]}"#,
      #"{"id":"DataRegion-1","peers":[{"id":1,"endpoint":"a"}]}"#,
      #"{"id":"DataRegion-1","peers":[{"id":1,"endpoint":"a:1"},{"id":1,"endpoint":"b:1"}]}"#,
    ]
    for text in groups {
      XCTAssertThrowsError(try DirectoryRecords.decodeGroup(Array(text.utf8)), text)
    }
  }
}

/// `POST /v1/cluster/nodes` against a one-node directory: a standalone engine hosting
/// PartitionRegion-0, so the directory's writes are this engine's.
final class RegisterNodeTests: XCTestCase {
  private var directoryPath = ""
  private var engine: StandaloneConsensus!
  private var gateway: Gateway!
  private var directory: ClusterDirectory!
  private let local = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))

  override func setUpWithError() throws {
    directoryPath = NSTemporaryDirectory() + "caucus-directory-\(UUID().uuidString.prefix(8))"
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    engine = StandaloneConsensus(config: ConsensusConfig(localPeer: local, dataDirectory: directoryPath, registry: registry))
    try engine.start()
    try waitForCompletion { self.engine.createPeer(ClusterDirectory.group, peers: [self.local], completion: $0) }.get()
    directory = ClusterDirectory(
      engine: engine, transport: nil, members: [local],
      localNode: DirectoryNode(id: local.node, clientURL: "http://127.0.0.1:6667", consensusEndpoint: local.endpoint),
      logger: Logger(label: "test.directory"))
    gateway = Gateway(
      engine: engine,
      configuration: GatewayConfiguration(
        clientURL: "http://127.0.0.1:6667", dataDirectory: directoryPath, version: "test", members: [local], directory: directory))
  }

  override func tearDown() {
    gateway.stop()
    engine.stop()
    try? FileManager.default.removeItem(atPath: directoryPath)
  }

  private func request(_ method: String, _ target: String, _ body: String = "") -> HTTPResponse {
    waitForCompletion { done in
      gateway.handle(
        HTTPRequest(method: method, target: target, headers: [], body: Array(body.utf8)),
        responder: HTTPResponder { done($0) })
    }
  }

  private func json(_ response: HTTPResponse) -> [String: Any] {
    ((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]) ?? [:]
  }

  /// The keys under `nodes/` in the directory.
  private func registeredKeys() -> [String] {
    let listing = json(request("GET", "/v1/groups/PartitionRegion-0/kv?prefix=nodes/&limit=1000"))
    return (listing["items"] as? [[String: Any]] ?? []).compactMap { $0["key"] as? String }
  }

  /// A DELETE removes a group record only if it still has the revision the DELETE found: a
  /// record a later creation renewed (made its own) is kept.
  func testARecordRemovalLeavesARecordRenewedSince() throws {
    let group = DirectoryGroup(id: GroupID(.dataRegion, 5), peers: [local])
    try waitForCompletion { directory.record(group, $0) }.get()
    let found = try XCTUnwrap(try waitForCompletion { directory.recordRevision(group.id, $0) }.get())
    try waitForCompletion { directory.renewRecord(group, $0) }.get()
    let renewed = try XCTUnwrap(try waitForCompletion { directory.recordRevision(group.id, $0) }.get())
    XCTAssertGreaterThan(renewed, found)
    try waitForCompletion { directory.removeRecord(group.id, ifRevision: found, $0) }.get()
    XCTAssertEqual(try waitForCompletion { directory.recordRevision(group.id, $0) }.get(), renewed, "the renewed record is kept")
    try waitForCompletion { directory.removeRecord(group.id, ifRevision: renewed, $0) }.get()
    XCTAssertNil(try waitForCompletion { directory.recordRevision(group.id, $0) }.get(), "the record it found is removed")
  }

  func testBadBodiesAreRefusedWith400AndNothingIsWritten() {
    let bodies: [(String, String)] = [
      ("", "invalid_json"),
      ("{not json", "invalid_json"),
      (#"{"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:8"}"#, "bad_request"),
      (#"{"id":5,"consensusEndpoint":"127.0.0.1:8"}"#, "bad_request"),
      (#"{"id":5,"clientURL":"http://127.0.0.1:7"}"#, "bad_request"),
      (#"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1"}"#, "bad_request"),
      (#"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:99999"}"#, "bad_request"),
      (#"{"id":5,"clientURL":"127.0.0.1:7","consensusEndpoint":"127.0.0.1:8"}"#, "bad_request"),
      (#"{"id":-5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:8"}"#, "bad_request"),
      // Hosts end up in URLs: only names, IPv4 and bracketed IPv6 literals are hosts.
      (#"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"evil/x?:8"}"#, "bad_request"),
      (#"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"a@b:8"}"#, "bad_request"),
    ]
    for (body, code) in bodies {
      let response = request("POST", "/v1/cluster/nodes", body)
      XCTAssertEqual(response.status, 400, body)
      XCTAssertEqual(json(response)["error"] as? String, code, body)
    }
    XCTAssertEqual(registeredKeys(), [], "a refused body writes nothing")
    XCTAssertEqual(request("GET", "/v1/cluster/nodes").status, 405)

    // The same route takes a well-formed body: the checks above are what refused the others.
    let accepted = request("POST", "/v1/cluster/nodes", #"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:8"}"#)
    XCTAssertEqual(accepted.status, 200, String(decoding: accepted.body, as: UTF8.self))
    XCTAssertEqual(registeredKeys(), ["nodes/5"])
  }

  func testARegistrationAnswersTheNodesAndMembersAndATakenIdIsAConflict() throws {
    let body = #"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:8"}"#
    let first = json(request("POST", "/v1/cluster/nodes", body))
    XCTAssertEqual((first["nodes"] as? [[String: Any]])?.compactMap { $0["id"] as? Int }, [5])
    XCTAssertEqual((first["members"] as? [[String: Any]])?.compactMap { $0["endpoint"] as? String }, ["127.0.0.1:40010"])
    // Registering again at the same endpoint (a restart) is fine, and may change the client URL.
    let again = request("POST", "/v1/cluster/nodes", #"{"id":5,"clientURL":"http://127.0.0.1:9","consensusEndpoint":"127.0.0.1:8"}"#)
    XCTAssertEqual(again.status, 200)
    let stored = request("GET", "/v1/groups/PartitionRegion-0/kv/nodes/5?raw=true")
    XCTAssertEqual(try DirectoryRecords.decodeNode(stored.body).clientURL, "http://127.0.0.1:9")

    let taken = request("POST", "/v1/cluster/nodes", #"{"id":5,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:10"}"#)
    XCTAssertEqual(taken.status, 409)
    XCTAssertEqual(json(taken)["error"] as? String, "node_already_exists")
    let member = request("POST", "/v1/cluster/nodes", #"{"id":1,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:10"}"#)
    XCTAssertEqual(member.status, 409, "a --cluster member's id is taken even before it registers")
    XCTAssertEqual(registeredKeys(), ["nodes/5"])
  }

  /// Registrations stop at registeredNodesMax with a 400 that says why; a registered node may
  /// still register again (a restart).
  func testRegistrationsStopAtTheNodeLimit() throws {
    let limit = ClusterDirectory.registeredNodesMax
    for id in 2...(limit + 1) {
      let body = #"{"id":\#(id),"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:\#(id)"}"#
      XCTAssertEqual(request("POST", "/v1/cluster/nodes", body).status, 200, "node \(id)")
    }
    let refused = request("POST", "/v1/cluster/nodes", #"{"id":9999,"clientURL":"http://127.0.0.1:7","consensusEndpoint":"127.0.0.1:1"}"#)
    XCTAssertEqual(refused.status, 400)
    XCTAssertTrue((json(refused)["message"] as? String ?? "").contains("the most it takes (\(limit))"), "\(json(refused))")
    XCTAssertEqual(registeredKeys().count, limit, "the refused node was not written")
    let restart = request("POST", "/v1/cluster/nodes", #"{"id":2,"clientURL":"http://127.0.0.1:9","consensusEndpoint":"127.0.0.1:2"}"#)
    XCTAssertEqual(restart.status, 200)
  }
}

/// The background write queue of the directory (`PendingDirectoryWrites`): one pending write per
/// key, latest wins, a bounded number of keys.
final class PendingDirectoryWriteTests: XCTestCase {
  private typealias Writes = PendingDirectoryWrites<DirectoryWrite>

  /// Regression: addPeer #1's record write failed and was retried; addPeer #2 wrote the new
  /// placement; the retry then wrote the old placement over it. Now the retry chain writes the
  /// latest placement of the key, and only one chain runs per key.
  func testARetryWritesTheLatestPlacementNotTheOneItStartedWith() throws {
    var writes = Writes(keysMax: 4)
    let (first, dropped) = writes.submit("groups/DataRegion-1", .put(Array("old".utf8)))
    XCTAssertNil(dropped)
    guard case .start(let chain) = first else { return XCTFail("the first write of a key starts a chain") }
    XCTAssertEqual(writes.submit("groups/DataRegion-1", .put(Array("new".utf8))).submitted, .replaced, "no second chain for the key")
    let next = try XCTUnwrap(writes.next("groups/DataRegion-1", chain: chain))
    XCTAssertEqual(next.write, .put(Array("new".utf8)))
    XCTAssertTrue(writes.written("groups/DataRegion-1", chain: chain, generation: next.generation))
    XCTAssertFalse(writes.isPending("groups/DataRegion-1"))
    XCTAssertNil(writes.next("groups/DataRegion-1", chain: chain), "a finished chain has nothing more to write")
  }

  /// A write that arrives while an older one is in flight is written after it, by the same chain.
  func testAWriteArrivingDuringATryIsWrittenNextBySameChain() throws {
    var writes = Writes(keysMax: 4)
    guard case .start(let chain) = writes.submit("groups/DataRegion-1", .put(Array("old".utf8))).submitted else { return XCTFail() }
    let inFlight = try XCTUnwrap(writes.next("groups/DataRegion-1", chain: chain))
    _ = writes.submit("groups/DataRegion-1", .put(Array("new".utf8)))
    XCTAssertFalse(writes.written("groups/DataRegion-1", chain: chain, generation: inFlight.generation), "a newer write waits")
    let again = try XCTUnwrap(writes.next("groups/DataRegion-1", chain: chain))
    XCTAssertEqual(again.write, .put(Array("new".utf8)))
    XCTAssertTrue(writes.written("groups/DataRegion-1", chain: chain, generation: again.generation))
  }

  /// Regression: a record write retried after DELETE removed the group brought the record back.
  func testARemovalSupersedesAPendingPut() throws {
    var writes = Writes(keysMax: 4)
    guard case .start(let chain) = writes.submit("groups/DataRegion-2", .put(Array("placement".utf8))).submitted else { return XCTFail() }
    XCTAssertEqual(writes.submit("groups/DataRegion-2", .delete(ifRevision: 7)).submitted, .replaced)
    XCTAssertEqual(try XCTUnwrap(writes.next("groups/DataRegion-2", chain: chain)).write, .delete(ifRevision: 7))
  }

  /// Past `keysMax` the oldest key is given up; its chain stops, and does not take over the key if
  /// it is written again (which starts a chain of its own).
  func testTheNumberOfPendingKeysIsBoundedAndTheOldestIsDropped() throws {
    var writes = Writes(keysMax: 2)
    guard case .start(let oldChain) = writes.submit("a", .delete(ifRevision: 7)).submitted else { return XCTFail() }
    _ = writes.submit("b", .delete(ifRevision: 7))
    let (submitted, dropped) = writes.submit("c", .delete(ifRevision: 7))
    XCTAssertEqual(dropped, "a")
    XCTAssertNotEqual(submitted, .replaced)
    XCTAssertEqual(writes.count, 2)
    XCTAssertNil(writes.next("a", chain: oldChain), "the dropped key's chain stops")
    let (again, droppedAgain) = writes.submit("a", .put([1]))
    XCTAssertEqual(droppedAgain, "b")
    guard case .start(let newChain) = again else { return XCTFail("a dropped key starts a new chain") }
    XCTAssertNil(writes.next("a", chain: oldChain), "the old chain never writes the key again")
    XCTAssertEqual(writes.next("a", chain: newChain)?.write, .put([1]))
    XCTAssertTrue(writes.written("a", chain: oldChain, generation: 1), "the old chain is done")
    XCTAssertTrue(writes.isPending("a"), "and the new chain's write still waits")
  }

  /// Bug: recording a group of more than groupPeersMax peers crashed the node (a precondition).
  func testAGroupRecordOfMoreThanTheMaximumPeersIsAnErrorNotACrash() {
    let peers = (1...UInt64(DirectoryRecords.groupPeersMax + 1)).map { Peer(node: NodeID($0), endpoint: Endpoint(host: "h\($0)", port: 1)) }
    XCTAssertThrowsError(try DirectoryRecords.encode(DirectoryGroup(id: GroupID(.partitionRegion, 0), peers: peers))) { error in
      XCTAssertTrue("\(error)".contains("at most \(DirectoryRecords.groupPeersMax)"), "\(error)")
    }
  }
}
