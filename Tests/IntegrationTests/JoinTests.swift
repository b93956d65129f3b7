import Foundation
import Glibc
import XCTest

/// The cluster directory (`PartitionRegion-0`) and `--join`: three `--cluster` members and a
/// fourth node joining through node 2, all real processes on loopback. One cluster for the whole
/// story, to keep the run short.
final class JoinTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "join")
    for node in nodes { try node.start() }
  }

  override func tearDown() { removeNodes(nodes, directories) }

  /// A node that joins through `member`'s consensus endpoint, with its own data directory.
  private func joiningNode(id: Int, through member: NodeProcess) -> NodeProcess {
    let directory = temporaryDirectory("join-\(id)")
    directories.append(directory)
    let node = NodeProcess(dataDirectory: directory)
    node.extraArguments = ["--node-id", String(id), "--join", "127.0.0.1:\(member.consensusPort)"] + fastRaftTimings
    nodes.append(node)
    return node
  }

  private func get(_ node: NodeProcess, _ target: String) -> HTTPReply? {
    try? HTTPClient(port: node.port).request("GET", target)
  }

  /// A node bound to the wildcard address (a container's 0.0.0.0) joins under the endpoint it
  /// advertises; without one, it refuses to start rather than record 0.0.0.0 in the directory.
  func testAJoinOnAWildcardAddressNeedsAnAdvertisedEndpointAndIsRecordedUnderIt() throws {
    let refused = joiningNode(id: 5, through: nodes[0])
    refused.extraArguments += ["--consensus-address", "0.0.0.0"]
    let (status, output) = try runCommand(
      try Paths.binary("caucus"),
      ["serve", "--rpc-port", String(refused.port), "--consensus-port", String(refused.consensusPort), "--data-dir",
        refused.dataDirectory] + refused.extraArguments)
    XCTAssertEqual(status, 64, output)
    XCTAssertTrue(output.contains("--advertise-consensus-endpoint"), output)

    let fifth = joiningNode(id: 5, through: nodes[0])
    fifth.extraArguments += [
      "--consensus-address", "0.0.0.0", "--advertise-consensus-endpoint", "127.0.0.1:\(fifth.consensusPort)",
    ]
    try fifth.start()
    var listed: [[String: Any]] = []
    waitUntil("node 1 to list node 5, reachable, at its advertised endpoint") {
      listed = get(nodes[0], "/v1/cluster")?.json["nodes"] as? [[String: Any]] ?? []
      return listed.contains { $0["id"] as? Int == 5 && $0["reachable"] as? Bool == true }
    }
    XCTAssertEqual(
      listed.first { $0["id"] as? Int == 5 }?["consensusEndpoint"] as? String, "127.0.0.1:\(fifth.consensusPort)")
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-9","peers":[1,2,5]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    waitUntil("a write to DataRegion-9 (node 5 among its voters) through node 5") {
      (try? HTTPClient(port: fifth.port).request("PUT", "/v1/groups/DataRegion-9/kv/k", text: "nine"))?.status == 200
    }
  }

  func testAJoinedNodeIsInTheDirectoryHostsAGroupCreatedElsewhereAndServesItAfterARestart() throws {
    let fourth = joiningNode(id: 4, through: nodes[1])
    try fourth.start()

    // Node 1 lists the joined node with its addresses, from the directory.
    var listed: [[String: Any]] = []
    waitUntil("GET /v1/cluster on node 1 to list four reachable nodes") {
      listed = get(nodes[0], "/v1/cluster")?.json["nodes"] as? [[String: Any]] ?? []
      return listed.count == 4 && listed.allSatisfy { $0["reachable"] as? Bool == true }
    }
    XCTAssertEqual(listed.compactMap { $0["id"] as? Int }, [1, 2, 3, 4])
    XCTAssertEqual(listed.last?["clientURL"] as? String, "http://127.0.0.1:\(fourth.port)")
    XCTAssertEqual(listed.last?["consensusEndpoint"] as? String, "127.0.0.1:\(fourth.consensusPort)")

    // The directory is readable like any group.
    let record = try XCTUnwrap(get(nodes[0], "/v1/groups/PartitionRegion-0/kv/nodes/4"))
    XCTAssertEqual(record.status, 200, record.text)
    let value = try XCTUnwrap((record.json["value"] as? String)?.data(using: .utf8))
    let node = try XCTUnwrap(try JSONSerialization.jsonObject(with: value) as? [String: Any])
    XCTAssertEqual(node["id"] as? Int, 4)
    XCTAssertEqual(node["clientURL"] as? String, "http://127.0.0.1:\(fourth.port)")
    XCTAssertEqual(node["consensusEndpoint"] as? String, "127.0.0.1:\(fourth.consensusPort)")
    waitUntil("the members to record the default group (in the background)") {
      get(nodes[2], "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-0")?.status == 200
    }

    // A group including the joined node, created through node 1, which does not host it.
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-7","peers":[2,3,4]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    XCTAssertEqual(get(fourth, "/v1/groups/DataRegion-7?forward=none")?.status, 200, "node 4 hosts a replica")
    XCTAssertEqual(get(nodes[0], "/v1/groups/DataRegion-7?forward=none")?.status, 421, "node 1 hosts none but routes")
    let placement = try XCTUnwrap(get(nodes[0], "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-7?raw=true"))
    XCTAssertEqual(placement.status, 200, placement.text)
    XCTAssertEqual((placement.json["peers"] as? [[String: Any]])?.compactMap { $0["id"] as? Int }, [2, 3, 4])

    var written: HTTPReply?
    waitUntil("a write to DataRegion-7 through node 1") {
      written = try? HTTPClient(port: nodes[0].port).request("PUT", "/v1/groups/DataRegion-7/kv/k", text: "seven")
      return written?.status == 200
    }
    XCTAssertNotNil(written?.headers["x-caucus-forwarded-by"], "node 1 relayed it")
    XCTAssertEqual(get(fourth, "/v1/groups/DataRegion-7/kv/k?raw=true")?.text, "seven")

    // A group on the joined node alone: only the directory knows where it lives (asking the
    // --cluster members, as before the directory, finds nothing).
    let alone = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"SchemaRegion-4","peers":[4]}"#)
    XCTAssertEqual(alone.status, 201, alone.text)
    var routed = 0
    waitUntil("a write to SchemaRegion-4 through node 3, routed by the directory") {
      routed = (try? HTTPClient(port: nodes[2].port).request("PUT", "/v1/groups/SchemaRegion-4/kv/s", text: "four").status) ?? 0
      return routed == 200
    }
    XCTAssertEqual(get(fourth, "/v1/groups/SchemaRegion-4/kv/s?raw=true")?.text, "four")
    let everywhere = get(nodes[1], "/v1/groups?scope=cluster")?.json["groups"] as? [[String: Any]] ?? []
    XCTAssertEqual(
      everywhere.compactMap { $0["id"] as? String }, ["DataRegion-0", "DataRegion-7", "SchemaRegion-4", "PartitionRegion-0"])

    // Restarted with the same flags, node 4 re-registers and still serves DataRegion-7.
    fourth.kill(SIGKILL)
    try fourth.start()
    var read = ""
    waitUntil("the restarted node 4 to serve DataRegion-7") {
      read = get(fourth, "/v1/groups/DataRegion-7/kv/k?raw=true")?.text ?? ""
      return read == "seven"
    }
    XCTAssertEqual(read, "seven")
    waitUntil("a write to DataRegion-7 through the restarted node 4") {
      (try? HTTPClient(port: fourth.port).request("PUT", "/v1/groups/DataRegion-7/kv/after", text: "restart").status) == 200
    }

    // Deleted through node 1, which finds the peers in the record and removes it.
    let deleted = try HTTPClient(port: nodes[0].port).request("DELETE", "/v1/groups/DataRegion-7")
    XCTAssertEqual(deleted.status, 200, deleted.text)
    XCTAssertEqual(get(fourth, "/v1/groups/DataRegion-7?forward=none")?.status, 404)
    XCTAssertEqual(get(nodes[0], "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-7")?.status, 404, "the record is gone")

    // With node 4 down, the cluster-wide listing still names its group, from the directory.
    fourth.kill(SIGKILL)
    let listing = get(nodes[0], "/v1/groups?scope=cluster")?.json["groups"] as? [[String: Any]] ?? []
    let unanswered = try XCTUnwrap(listing.first { $0["id"] as? String == "SchemaRegion-4" }, "\(listing)")
    XCTAssertEqual(unanswered["role"] as? String, "unknown")
    XCTAssertEqual((unanswered["peers"] as? [[String: Any]])?.compactMap { $0["id"] as? Int }, [4])

    // Deleted through its only peer, the group's record goes too (at once, or in the background
    // if node 4 has not re-registered and learned the directory's members yet).
    try fourth.start()
    // Until node 4 has re-registered it cannot reach the directory, and a DELETE then changes
    // nothing and says to retry (503): it must read the record it will remove first.
    var gone: HTTPReply?
    waitUntil("node 4 to delete SchemaRegion-4") {
      gone = try? HTTPClient(port: fourth.port).request("DELETE", "/v1/groups/SchemaRegion-4")
      if gone?.status == 503 { XCTAssertEqual(get(fourth, "/v1/groups/SchemaRegion-4?forward=none")?.status, 200, "nothing deleted") }
      return gone?.status == 200
    }
    XCTAssertEqual(gone?.status, 200, gone?.text ?? "")
    waitUntil("the record of SchemaRegion-4 to be removed") {
      get(nodes[0], "/v1/groups/PartitionRegion-0/kv/groups/SchemaRegion-4")?.status == 404
    }
  }

  func testANodeJoiningWithAMembersIdIsRefusedAndStops() throws {
    let impostor = joiningNode(id: 2, through: nodes[0])
    let process = try impostor.launch()
    waitUntil("the refused node to exit") { !process.isRunning }
    XCTAssertEqual(process.terminationStatus, 1)
    XCTAssertTrue(impostor.log().contains("already registered"), impostor.log())
    XCTAssertEqual(get(nodes[0], "/v1/cluster")?.json["nodes"].map { ($0 as? [[String: Any]] ?? []).count }, 3)
  }
}
