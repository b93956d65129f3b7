import Consensus
import XCTest

final class IdentifierTests: XCTestCase {
  func testGroupIDParsesAndPrintsEveryType() {
    for (text, type, number) in [
      ("DataRegion-1", GroupType.dataRegion, UInt32(1)), ("SchemaRegion-3", .schemaRegion, 3),
      ("PartitionRegion-0", .partitionRegion, 0), ("DataRegion-4294967295", .dataRegion, UInt32.max),
    ] {
      let group = GroupID(text)
      XCTAssertEqual(group, GroupID(type, number), text)
      XCTAssertEqual(group?.description, text)
    }
  }

  func testGroupIDRejectsEverythingElse() {
    for text in [
      "", "DataRegion", "DataRegion-", "DataRegion--1", "DataRegion-+1", "DataRegion- 1", "DataRegion-1 ",
      "dataregion-1", "Region-1", "DataRegion-4294967296", "DataRegion-1.0", "DataRegion-0x1", "-1",
      "DataRegion-١", "DataRegion-00000000001", "DataRegion-01", "DataRegion-00",
    ] {
      XCTAssertNil(GroupID(text), "'\(text)' must not parse")
    }
  }

  func testGroupIDPackedRoundTripAndRejectsUnknownTypes() {
    for group in [GroupID(.dataRegion, 0), GroupID(.schemaRegion, 77), GroupID(.partitionRegion, .max)] {
      XCTAssertEqual(GroupID(packed: group.packed), group)
    }
    XCTAssertNil(GroupID(packed: 0))
    XCTAssertNil(GroupID(packed: UInt64(9) << 32))
    XCTAssertNil(GroupID(packed: UInt64(1) << 40 | UInt64(1) << 32))
  }

  func testGroupIDsOrderByTypeThenNumber() {
    let sorted = [GroupID(.schemaRegion, 1), GroupID(.dataRegion, 10), GroupID(.dataRegion, 2)].sorted()
    XCTAssertEqual(sorted.map(\.description), ["DataRegion-2", "DataRegion-10", "SchemaRegion-1"])
  }

  func testNodeIDAndEndpointParsing() {
    XCTAssertEqual(NodeID(parsing: "7"), NodeID(7))
    XCTAssertNil(NodeID(parsing: "0"))
    XCTAssertNil(NodeID(parsing: "-1"))
    XCTAssertNil(NodeID(parsing: "x"))
    XCTAssertEqual(Endpoint(parsing: "127.0.0.1:40010"), Endpoint(host: "127.0.0.1", port: 40010))
    XCTAssertEqual(Endpoint(parsing: "node-a:1")?.host, "node-a")
    for text in ["", ":1", "host", "host:", "host:0", "host:65536", "host:x"] {
      XCTAssertNil(Endpoint(parsing: text), text)
    }
  }

  /// Bug: any non-empty host passed (`evil/x?:1`), and hosts are put into URLs.
  func testEndpointHostsAreNamesIPv4OrBracketedIPv6Only() {
    for (text, host) in [
      ("Node-A.example.com:1", "Node-A.example.com"), ("10.0.0.4:40010", "10.0.0.4"), ("[::1]:80", "[::1]"),
      ("[2001:DB8::ff]:9", "[2001:DB8::ff]"), ("[::ffff:10.0.0.1]:7", "[::ffff:10.0.0.1]"),
      (String(repeating: "a", count: Endpoint.hostBytesMax) + ":1", String(repeating: "a", count: Endpoint.hostBytesMax)),
    ] {
      XCTAssertEqual(Endpoint(parsing: text)?.host, host, text)
    }
    for text in [
      "evil/x?:1", "a b:1", "user@host:1", "host#x:1", "ho%2Fst:1", "h_st:1", "::1:80", "[]:1", "[::1:80", "[::g]:1", "[::1]x:1",
      "ünïcode:1", "host\n:1", String(repeating: "a", count: Endpoint.hostBytesMax + 1) + ":1",
    ] {
      XCTAssertNil(Endpoint(parsing: text), text)
    }
  }
}

final class FactoryTests: XCTestCase {
  final class Unused: ConsensusEngine, @unchecked Sendable {
    let protocolName = "unused"
    let localPeer = Peer(node: NodeID(1), endpoint: Endpoint(host: "h", port: 1))
    func start() throws {}
    func stop() {}
    func write(_ group: GroupID, command: [UInt8], completion: @escaping ConsensusCompletion<WriteResult>) {}
    func read(_ group: GroupID, query: [UInt8], options: ReadOptions, completion: @escaping ConsensusCompletion<ReadResult>) {}
    func createPeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {}
    func deletePeer(_ group: GroupID, ifLogEndsBy: LogPosition?, completion: @escaping ConsensusCompletion<Void>) {}
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

  func testFactoryResolvesNamesAndAliasesAndListsAcceptedNamesForUnknownOnes() throws {
    var factory = ConsensusFactory()
    factory.register("standalone", aliases: [IoTDBProtocolClassNames.standalone]) { _ in Unused() }
    XCTAssertEqual(try factory.canonicalName("standalone"), "standalone")
    XCTAssertEqual(try factory.canonicalName(IoTDBProtocolClassNames.standalone), "standalone")
    XCTAssertThrowsError(try factory.canonicalName("paxos")) { error in
      guard case ConsensusFactoryError.unknownProtocol(let name, let accepted) = error else { return XCTFail("\(error)") }
      XCTAssertEqual(name, "paxos")
      XCTAssertEqual(accepted, ["standalone", IoTDBProtocolClassNames.standalone])
      XCTAssertTrue("\(error)".contains("accepted names: standalone"))
    }
    let config = ConsensusConfig(
      localPeer: Peer(node: NodeID(1), endpoint: Endpoint(host: "h", port: 1)), dataDirectory: "/tmp/x",
      registry: StateMachineRegistry())
    XCTAssertEqual(try factory.makeEngine(IoTDBProtocolClassNames.standalone, config: config).protocolName, "unused")
  }

  func testRegistryPicksByTypeThenDefault() {
    final class Tagged: StateMachine {
      let tag: String
      init(_ tag: String) { self.tag = tag }
      func apply(index: UInt64, command: [UInt8]) -> [UInt8] { [] }
      func query(_ request: [UInt8]) -> [UInt8] { Array(tag.utf8) }
      func takeSnapshot() -> [UInt8] { [] }
      func restore(snapshot: [UInt8]) throws {}
    }
    var registry = StateMachineRegistry()
    XCTAssertNil(registry.makeStateMachine(for: GroupID(.dataRegion, 1)))
    registry.register(.schemaRegion) { _ in Tagged("schema") }
    registry.registerDefault { _ in Tagged("default") }
    XCTAssertEqual(registry.makeStateMachine(for: GroupID(.schemaRegion, 1))?.query([]), Array("schema".utf8))
    XCTAssertEqual(registry.makeStateMachine(for: GroupID(.dataRegion, 1))?.query([]), Array("default".utf8))
  }
}
