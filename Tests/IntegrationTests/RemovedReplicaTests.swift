import Foundation
import Glibc
import XCTest

/// The replica a removed peer leaves behind, on three real `caucus serve` processes. The leader
/// that removed the peer deletes that replica with `DELETE /v1/node/groups/{group}` bounded by
/// `ifLogEndsAtIndex`/`ifLogEndsAtTerm` (the end of its log once the removal applied), again in
/// the background while the peer does not answer; a replica whose log goes further was added back
/// and is never deleted.
final class RemovedReplicaTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []
  private let group = "DataRegion-8"

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "removed-replica")
    for node in nodes { try node.start() }
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"\#(group)","peers":[1,2,3]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    waitUntil("\(group) to take a write", seconds: 20) {
      (try? HTTPClient(port: nodes[0].port).request("PUT", "/v1/groups/\(group)/kv/k", text: "v").status) == 200
    }
    waitUntil("node 3 to apply the write", seconds: 20) {
      (try? HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/\(group)/kv/k?consistency=stale").status) == 200
    }
  }

  override func tearDown() { removeNodes(nodes, directories) }

  private func hosts(_ index: Int) -> Bool {
    guard let reply = try? HTTPClient(port: nodes[index].port).request("GET", "/v1/groups") else { return true }
    return (reply.json["groups"] as? [[String: Any]] ?? []).contains { $0["id"] as? String == group }
  }

  func testAConditionalDeleteKeepsAReplicaWhoseLogGoesPastTheBound() throws {
    let client = try HTTPClient(port: nodes[2].port)
    let kept = try client.request("DELETE", "/v1/node/groups/\(group)?ifLogEndsAtIndex=1&ifLogEndsAtTerm=1")
    XCTAssertEqual(kept.status, 409, kept.text)
    XCTAssertEqual(kept.json["error"] as? String, "peer_already_in_group", kept.text)
    XCTAssertTrue(hosts(2), "the replica is still there")
    for bad in ["ifLogEndsAtIndex=5", "ifLogEndsAtTerm=5", "ifLogEndsAtIndex=soon&ifLogEndsAtTerm=1"] {
      let reply = try client.request("DELETE", "/v1/node/groups/\(group)?\(bad)")
      XCTAssertEqual(reply.status, 400, "\(bad): \(reply.text)")
      XCTAssertEqual(reply.json["error"] as? String, "bad_request", reply.text)
    }
    XCTAssertTrue(hosts(2), "the replica is still there")
    // A bound past its log (a later term): deleted.
    let deleted = try client.request("DELETE", "/v1/node/groups/\(group)?ifLogEndsAtIndex=1&ifLogEndsAtTerm=\(UInt64(1) << 40)")
    XCTAssertEqual(deleted.status, 200, deleted.text)
    XCTAssertFalse(hosts(2), "the replica is gone")
  }

  /// Node 3 is down while it is removed, so the removal cannot delete its replica; restarted, it
  /// loses the replica (the leader asks again) and becomes ready. Before, the replica stayed,
  /// knowing no leader, and node 3's `/readyz` answered 503 for good.
  func testAPeerRemovedWhileDownLosesItsReplicaOnceItIsBack() throws {
    // Node 3 must not lead the group (a leader hands over before it is removed; not the point here).
    let transfer = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups/\(group)/leader", text: #"{"id":1}"#)
    XCTAssertEqual(transfer.status, 200, transfer.text)
    XCTAssertEqual(nodes[2].stop(), 0)
    let removed = try HTTPClient(port: nodes[0].port).request("DELETE", "/v1/groups/\(group)/peers/3")
    XCTAssertEqual(removed.status, 200, removed.text)
    try nodes[2].start()
    XCTAssertTrue(hosts(2), "the replica outlived the removal (node 3 was down)")
    waitUntil("node 3 to lose its replica of \(group)", seconds: 30) { !hosts(2) }
    waitUntil("node 3 to be ready", seconds: 30) {
      (try? HTTPClient(port: nodes[2].port).request("GET", "/readyz").status) == 200
    }
    // The group goes on with its two members, and node 3 still reaches it.
    let write = try HTTPClient(port: nodes[2].port).request("PUT", "/v1/groups/\(group)/kv/k", text: "after")
    XCTAssertEqual(write.status, 200, write.text)
  }
}
