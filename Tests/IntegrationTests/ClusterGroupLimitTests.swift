import Foundation
import Glibc
import XCTest

/// Issue 11: three real `caucus serve` processes, node 3 with `raft.groupsMax=3`. A creation past
/// a peer's limit is refused with `409 group_limit_reached` naming the node and the limit (not a
/// storage failure to retry); what the other peers created stays, and the same request, retried
/// once node 3 has room, creates the rest.
final class ClusterGroupLimitTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "group-limit")
    let properties = temporaryDirectory("group-limit-properties")
    directories.append(properties)
    let path = properties + "/caucus.properties"
    try "raft.groupsMax=3\n".write(toFile: path, atomically: true, encoding: .utf8)
    nodes[2].extraArguments += ["--config", path]
    for node in nodes { try node.start() }
  }

  override func tearDown() { removeNodes(nodes, directories) }

  private func request(_ index: Int, _ method: String, _ target: String, _ body: String = "") throws -> HTTPReply {
    try HTTPClient(port: nodes[index].port).request(method, target, text: body)
  }

  /// Whether node `index` hosts a replica of `group`.
  private func hosts(_ index: Int, _ group: String) throws -> Bool {
    try request(index, "GET", "/v1/groups/\(group)?forward=none").status == 200
  }

  private func assertLimitReached(_ reply: HTTPReply, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(reply.status, 409, reply.text, file: file, line: line)
    XCTAssertEqual(reply.json["error"] as? String, "group_limit_reached", reply.text, file: file, line: line)
    XCTAssertEqual(reply.json["node"] as? Int, 3, reply.text, file: file, line: line)
    XCTAssertEqual(reply.json["limit"] as? Int, 3, reply.text, file: file, line: line)
    let message = reply.json["message"] as? String ?? ""
    XCTAssertTrue(message.contains("node 3 hosts 3 groups") && message.contains("raft.groupsMax = 3"), message, file: file, line: line)
  }

  func testACreationPastAPeersLimitIs409GroupLimitReachedAndARetryOnceItHasRoomCreatesTheRest() throws {
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    // Node 3 hosts DataRegion-0 and the directory; a third group fills it.
    let filler = try request(2, "POST", "/v1/groups", #"{"id":"SchemaRegion-1","peers":[3]}"#)
    XCTAssertEqual(filler.status, 201, filler.text)
    XCTAssertEqual(try request(2, "GET", "/v1/node").json["groupCount"] as? Int, 3)

    // The node-local route says so itself.
    let local = try request(2, "POST", "/v1/node/groups", #"{"id":"SchemaRegion-2","peers":[3]}"#)
    assertLimitReached(local)
    XCTAssertFalse(try hosts(2, "SchemaRegion-2"))

    // Through node 1: nodes 1 and 2 create their replicas, node 3 refuses; the answer is node
    // 3's refusal, passed on, and says what is left and how to finish.
    let refused = try request(0, "POST", "/v1/groups", #"{"id":"DataRegion-5","peers":[1,2,3]}"#)
    assertLimitReached(refused)
    XCTAssertNil(refused.headers["retry-after"], "not a failure that passes by itself")
    let message = refused.json["message"] as? String ?? ""
    XCTAssertTrue(message.contains("replicas on node(s) 1, 2"), message)
    XCTAssertTrue(message.contains("the same request, retried once node 3 can host the group, creates the rest"), message)
    XCTAssertEqual(refused.json["group"] as? String, "DataRegion-5")
    XCTAssertTrue(try hosts(0, "DataRegion-5"))
    XCTAssertTrue(try hosts(1, "DataRegion-5"))
    XCTAssertFalse(try hosts(2, "DataRegion-5"))
    XCTAssertEqual(try request(0, "GET", "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-5").status, 200, "the placement stays recorded")
    XCTAssertEqual(try request(2, "GET", "/v1/node").json["groupCount"] as? Int, 3, "node 3 created nothing")

    // Through node 3 itself (its own engine refuses): the same answer.
    assertLimitReached(try request(2, "POST", "/v1/groups", #"{"id":"DataRegion-5","peers":[1,2,3]}"#))
    XCTAssertFalse(try hosts(2, "DataRegion-5"))

    // Room on node 3, and the same request again: node 3 gets its replica, the others had theirs.
    let deleted = try request(0, "DELETE", "/v1/groups/SchemaRegion-1")
    XCTAssertEqual(deleted.status, 200, deleted.text)
    let retried = try request(0, "POST", "/v1/groups", #"{"id":"DataRegion-5","peers":[1,2,3]}"#)
    XCTAssertEqual(retried.status, 201, retried.text)
    XCTAssertEqual(retried.headers["location"], "/v1/groups/DataRegion-5")
    for index in 0..<3 { XCTAssertTrue(try hosts(index, "DataRegion-5"), "node \(index + 1)") }
    waitUntil("DataRegion-5 to take a write through node 3") {
      (try? self.request(2, "PUT", "/v1/groups/DataRegion-5/kv/k", "five").status) == 200
    }
    XCTAssertEqual(try request(1, "GET", "/v1/groups/DataRegion-5/kv/k?raw=true").text, "five")
    // Full again: the retry of a creation it hosts is still 201, a new one is refused.
    XCTAssertEqual(try request(2, "POST", "/v1/groups", #"{"id":"DataRegion-5","peers":[1,2,3]}"#).status, 201)
    assertLimitReached(try request(1, "POST", "/v1/groups", #"{"id":"SchemaRegion-2","peers":[3]}"#))
  }

  /// addPeer onto a node at its limit: the joiner's refusal is the answer, and nothing changes.
  func testAddingAPeerThatIsAtItsLimitIsRefusedWithItsCodeAndChangesNothing() throws {
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    XCTAssertEqual(try request(2, "POST", "/v1/groups", #"{"id":"SchemaRegion-1","peers":[3]}"#).status, 201)
    XCTAssertEqual(try request(0, "POST", "/v1/groups", #"{"id":"DataRegion-6","peers":[1,2]}"#).status, 201)
    var added: HTTPReply?
    waitUntil("DataRegion-6 to have a leader that answers the change") {
      added = try? self.request(0, "POST", "/v1/groups/DataRegion-6/peers", #"{"id":3}"#)
      return added.map { $0.status != 503 } ?? false
    }
    let reply = try XCTUnwrap(added)
    assertLimitReached(reply)
    XCTAssertTrue((reply.json["message"] as? String ?? "").contains("membership of DataRegion-6 was not changed"), reply.text)
    let status = try request(0, "GET", "/v1/groups/DataRegion-6")
    XCTAssertEqual((status.json["peers"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int }, [1, 2], status.text)
  }
}
