import Foundation
import Glibc
import Platform
import XCTest

/// Three real `caucus serve --protocol raft` processes on loopback (short election timeouts).
final class ClusterTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "cluster")
    for node in nodes { try node.start() }
  }

  override func tearDown() { removeNodes(nodes, directories) }

  /// The leader of DataRegion-0 as the given nodes agree on it (index into `nodes`).
  private func leader(among candidates: [Int], seconds: Double = 20, file: StaticString = #filePath, line: UInt = #line) -> Int? {
    agreedLeader(nodes, among: candidates, seconds: seconds, file: file, line: line)
  }

  func testAWriteThroughAFollowerIsReadableThroughTheOtherFollowerAndRedirectAndNoneBehave() throws {
    let leaderIndex = try XCTUnwrap(leader(among: [0, 1, 2]))
    let followers = [0, 1, 2].filter { $0 != leaderIndex }
    let written = try HTTPClient(port: nodes[followers[0]].port).request("PUT", "/v1/groups/DataRegion-0/kv/colour", text: "green")
    XCTAssertEqual(written.status, 200, written.text)
    XCTAssertEqual(written.headers["x-caucus-forwarded-by"], String(followers[0] + 1))
    // The follower handed the write to the leader inside raft and answered once it applied it.
    XCTAssertEqual(written.headers["x-caucus-node"], String(followers[0] + 1))
    XCTAssertEqual(written.headers["x-caucus-leader"], String(leaderIndex + 1))
    XCTAssertEqual(written.headers["x-caucus-index"], (written.json["index"] as? Int).map(String.init))
    let read = try HTTPClient(port: nodes[followers[1]].port).request("GET", "/v1/groups/DataRegion-0/kv/colour?raw=true")
    XCTAssertEqual(read.status, 200)
    XCTAssertEqual(read.text, "green")
    let index = try XCTUnwrap(written.json["index"] as? Int)
    let stale = try HTTPClient(port: nodes[followers[1]].port).request(
      "GET", "/v1/groups/DataRegion-0/kv/colour?consistency=stale&minIndex=\(index)&raw=true")
    XCTAssertEqual(stale.text, "green", "a follower serves stale reads once it has applied the index")
    XCTAssertNil(stale.headers["x-caucus-forwarded-by"], "stale reads are answered locally")

    // HEAD through a follower is relayed and keeps the Content-Length of the GET's body (the
    // leader answers it without the body; it was relayed as 0).
    let (headStatus, head) = try runCommand(
      "/usr/bin/curl", ["-s", "-I", "http://127.0.0.1:\(nodes[followers[0]].port)/v1/groups/DataRegion-0/kv/colour?raw=true"])
    XCTAssertEqual(headStatus, 0, head)
    let headLines = head.lowercased().split(separator: "\r\n")
    XCTAssertTrue(headLines.contains("x-caucus-forwarded-by: \(followers[0] + 1)"), head)
    XCTAssertTrue(headLines.contains("content-length: 5"), "the length of \"green\": \(head)")

    let redirect = try HTTPClient(port: nodes[followers[0]].port).request("GET", "/v1/groups/DataRegion-0/kv/colour?forward=redirect")
    XCTAssertEqual(redirect.status, 307)
    XCTAssertEqual(
      redirect.headers["location"], "http://127.0.0.1:\(nodes[leaderIndex].port)/v1/groups/DataRegion-0/kv/colour?forward=redirect")
    let none = try HTTPClient(port: nodes[followers[0]].port).request("PUT", "/v1/groups/DataRegion-0/kv/colour?forward=none", text: "red")
    XCTAssertEqual(none.status, 421)
    XCTAssertEqual((none.json["leader"] as? [String: Any])?["id"] as? Int, leaderIndex + 1)
    XCTAssertEqual((none.json["leader"] as? [String: Any])?["url"] as? String, "http://127.0.0.1:\(nodes[leaderIndex].port)")
    // The status counts the log's bytes (it said 0 for every raft group).
    let status = try HTTPClient(port: nodes[leaderIndex].port).request("GET", "/v1/groups/DataRegion-0")
    let logEntries = try XCTUnwrap(status.json["logEntries"] as? Int, status.text)
    XCTAssertGreaterThan(logEntries, 0, status.text)
    XCTAssertGreaterThan(status.json["logBytes"] as? Int ?? 0, logEntries * 5, "at least each written value's bytes: \(status.text)")
    // Each peer's lastContactMs: 0 for the answering node, a recent contact for the live others
    // (raft left it null).
    for peer in status.json["peers"] as? [[String: Any]] ?? [] {
      let contact = try XCTUnwrap(peer["lastContactMs"] as? Int, "\(peer)")
      if peer["id"] as? Int == leaderIndex + 1 { XCTAssertEqual(contact, 0) } else { XCTAssertLessThan(contact, 5_000, "\(peer)") }
    }
    // getLeader at a follower names the leader by its client URL (it answered "" before).
    for node in [followers[0], leaderIndex] {
      let leaderInfo = try HTTPClient(port: nodes[node].port).request("GET", "/v1/groups/DataRegion-0/leader")
      XCTAssertEqual(leaderInfo.status, 200, leaderInfo.text)
      XCTAssertEqual(leaderInfo.json["id"] as? Int, leaderIndex + 1, leaderInfo.text)
      XCTAssertEqual(leaderInfo.json["url"] as? String, "http://127.0.0.1:\(nodes[leaderIndex].port)", leaderInfo.text)
      XCTAssertEqual(leaderInfo.json["local"] as? Bool, node == leaderIndex, leaderInfo.text)
    }
    let loop = try HTTPClient(port: nodes[followers[0]].port).request(
      "GET", "/v1/groups/DataRegion-0/kv/colour", headers: ["X-Caucus-Hops": "2"])
    XCTAssertEqual(loop.status, 508)
    XCTAssertEqual(loop.json["error"] as? String, "forward_loop")
    XCTAssertEqual(try HTTPClient(port: nodes[leaderIndex].port).request("GET", "/v1/groups/DataRegion-0/kv/colour?raw=true").text, "green")
    // The node-to-node traffic shows in the follower's metrics.
    let metrics = try HTTPClient(port: nodes[followers[0]].port).request("GET", "/metrics").text
    func sample(_ name: String) -> Double? {
      metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }
    XCTAssertGreaterThan(sample("caucus_transport_batches_delivered_total") ?? 0, 0, "batches to the other nodes")
    XCTAssertGreaterThan(sample("caucus_peer_client_requests_completed_total") ?? 0, 0)
    XCTAssertNotNil(sample("caucus_transport_batches_queued_total"))
  }

  /// A write retried through a follower keeps its Idempotency-Key on the way to the leader: it
  /// is applied once and the retry gets the original answer.
  /// A group's status says whether its replica is quiesced: an idle group quiesces on every
  /// replica (the followers too, whose quiescing step may leave nothing else to publish), and a
  /// write wakes it.
  func testAnIdleGroupShowsQuiescedInItsStatusAndAWriteWakesIt() throws {
    let leaderIndex = try XCTUnwrap(leader(among: [0, 1, 2]))
    func quiesced(_ node: Int) -> Bool? {
      let status = try? HTTPClient(port: nodes[node].port).request("GET", "/v1/groups/DataRegion-0?forward=none")
      return status?.json["quiesced"] as? Bool
    }
    func quiescences() -> Double {
      let metrics = (try? HTTPClient(port: nodes[leaderIndex].port).request("GET", "/metrics").text) ?? ""
      return metrics.split(separator: "\n").first { $0.hasPrefix("caucus_raft_quiescences_total ") }
        .flatMap { Double($0.split(separator: " ")[1]) } ?? -1
    }
    waitUntil("DataRegion-0 to quiesce on every replica") { (0..<3).allSatisfy { quiesced($0) == true } }
    let before = quiescences()
    XCTAssertGreaterThanOrEqual(before, 1)
    let written = try HTTPClient(port: nodes[leaderIndex].port).request("PUT", "/v1/groups/DataRegion-0/kv/wake", text: "up")
    XCTAssertEqual(written.status, 200, written.text)
    // The write woke the group: once idle again it quiesces again (one more quiescence).
    waitUntil("DataRegion-0 to quiesce again once idle") {
      quiescences() > before && (0..<3).allSatisfy { quiesced($0) == true }
    }
  }

  func testAWriteRetriedThroughAFollowerWithItsIdempotencyKeyIsAppliedOnce() throws {
    let leaderIndex = try XCTUnwrap(leader(among: [0, 1, 2]))
    let follower = try XCTUnwrap([0, 1, 2].first { $0 != leaderIndex })
    let client = try HTTPClient(port: nodes[follower].port)
    let headers = ["Idempotency-Key": "retry-\(UInt32.random(in: 1...UInt32.max))"]
    let first = try client.request("PUT", "/v1/groups/DataRegion-0/kv/once", headers: headers, body: Array("1".utf8))
    XCTAssertEqual(first.status, 200, first.text)
    let again = try client.request("PUT", "/v1/groups/DataRegion-0/kv/once", headers: headers, body: Array("1".utf8))
    XCTAssertEqual(again.status, 200, again.text)
    XCTAssertEqual(again.headers["idempotent-replayed"], "true", "the retry is answered from the first write")
    XCTAssertEqual(again.json["index"] as? Int, first.json["index"] as? Int)
    XCTAssertEqual(again.json["revision"] as? Int, first.json["revision"] as? Int, "applied once")
  }

  func testAfterTheLeaderIsKilledANewOneTakesOverAndTheRestartedNodeCatchesUp() throws {
    let first = try XCTUnwrap(leader(among: [0, 1, 2]))
    for sequence in 0..<20 {
      XCTAssertEqual(try HTTPClient(port: nodes[first].port).request("PUT", "/v1/groups/DataRegion-0/kv/before/\(sequence)", text: "\(sequence)").status, 200)
    }
    nodes[first].kill(SIGKILL)
    let survivors = [0, 1, 2].filter { $0 != first }
    let second = try XCTUnwrap(leader(among: survivors))
    XCTAssertNotEqual(second, first)
    var lastIndex = 0
    for sequence in 0..<20 {
      // Through whichever survivor: a follower forwards to the new leader.
      let reply = try HTTPClient(port: nodes[survivors[sequence % 2]].port).request(
        "PUT", "/v1/groups/DataRegion-0/kv/after/\(sequence)", text: "\(sequence)")
      XCTAssertEqual(reply.status, 200, reply.text)
      lastIndex = max(lastIndex, reply.json["index"] as? Int ?? 0)
    }
    for sequence in 0..<20 {
      XCTAssertEqual(
        try HTTPClient(port: nodes[second].port).request("GET", "/v1/groups/DataRegion-0/kv/before/\(sequence)?raw=true").text, "\(sequence)",
        "committed writes survive the leader's death")
    }
    try nodes[first].start()
    let restarted = nodes[first]
    var caughtUp = ""
    waitUntil("the restarted node to apply the writes it missed") {
      caughtUp = (try? HTTPClient(port: restarted.port).request(
        "GET", "/v1/groups/DataRegion-0/kv/after/19?consistency=stale&minIndex=\(lastIndex)&raw=true").text) ?? ""
      return caughtUp == "19"
    }
    XCTAssertEqual(caughtUp, "19")
  }

  func testGarbageOnTheConsensusPortIsRefusedAndNoNodeCrashes() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let bodies: [[UInt8]] = [
      Array("not a batch".utf8),
      Array("CAUB".utf8) + [99, 0, 0, 0, 0, 0, 0, 0],  // the batch magic with an unknown version
      Array("CAUB".utf8) + [1, 0],  // truncated header
      [UInt8](repeating: 0xFF, count: 4096),
    ]
    for node in nodes {
      for body in bodies {
        let raw = Array("POST /v1/raft/batch HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
        let reply = try HTTPClient(port: node.consensusPort).exchange(raw)
        XCTAssertLessThan(reply.status, 500, "consensus port answered \(reply.status) to garbage")
      }
      let truncated = try HTTPClient(port: node.consensusPort)
      try truncated.send(Array("POST /v1/raft/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort".utf8))
    }
    // Every node is still up and the group still takes writes.
    let leaderIndex = try XCTUnwrap(leader(among: [0, 1, 2]))
    XCTAssertEqual(try HTTPClient(port: nodes[leaderIndex].port).request("PUT", "/v1/groups/DataRegion-0/kv/still", text: "here").status, 200)
    for node in nodes { XCTAssertTrue(node.isRunning, "a node crashed on garbage:\n\(node.log().suffix(2000))") }
  }

  /// A directory record edited by hand to name another group is refused as damaged: no crash,
  /// nothing created.
  func testAGroupRecordNamingAnotherGroupIsRefusedWithoutHarm() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let endpoint = "127.0.0.1:\(nodes[0].consensusPort)"
    var planted: HTTPReply?
    waitUntil("the hand-written record to be stored") {
      planted = try? HTTPClient(port: nodes[0].port).request(
        "PUT", "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-9",
        text: #"{"id":"DataRegion-8","peers":[{"id":1,"endpoint":""# + endpoint + #""}]}"#)
      return planted?.status == 200
    }
    let created = try HTTPClient(port: nodes[1].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-9","peers":[1]}"#)
    XCTAssertTrue((400..<500).contains(created.status), "\(created.status) \(created.text)")
    XCTAssertTrue(created.text.contains("DataRegion-8"), created.text)
    for node in nodes { XCTAssertTrue(node.isRunning, "a node crashed:\n\(node.log().suffix(2000))") }
    XCTAssertEqual(try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-9?forward=none").status, 404)
  }

  /// createPeer and deletePeer for other nodes are served on the consensus port (the fan-out of
  /// `POST /v1/groups` uses it); nothing else of the client API is.
  func testGroupOperationsAreServedOnTheConsensusPort() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let consensus = try HTTPClient(port: nodes[1].consensusPort)
    let created = try consensus.request("POST", "/v1/node/groups", text: #"{"id":"SchemaRegion-4","peers":[2]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    XCTAssertEqual(try HTTPClient(port: nodes[1].port).request("GET", "/v1/groups/SchemaRegion-4?forward=none").status, 200)
    // Unlike POST /v1/groups, the node-local route tells "created" from "had one": the leader's
    // join path relies on it.
    let again = try consensus.request("POST", "/v1/node/groups", text: #"{"id":"SchemaRegion-4","peers":[2]}"#)
    XCTAssertEqual(again.status, 409, again.text)
    XCTAssertEqual(again.json["error"] as? String, "group_already_exists")
    let bad = try HTTPClient(port: nodes[1].consensusPort).request("POST", "/v1/node/groups", text: "{")
    XCTAssertEqual(bad.status, 400, bad.text)
    XCTAssertEqual(bad.json["error"] as? String, "invalid_json")
    XCTAssertEqual(try HTTPClient(port: nodes[1].consensusPort).request("GET", "/v1/groups").status, 404, "not the client API")
    let deleted = try HTTPClient(port: nodes[1].consensusPort).request("DELETE", "/v1/node/groups/SchemaRegion-4")
    XCTAssertEqual(deleted.status, 200, deleted.text)
    XCTAssertEqual(try HTTPClient(port: nodes[1].port).request("GET", "/v1/groups/SchemaRegion-4?forward=none").status, 404)
  }

  func testAGroupCreatedThroughOneNodeExistsOnEveryPeerServesWritesAndIsDeletedEverywhere() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let empty = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-7","peers":[]}"#)
    XCTAssertEqual(empty.status, 400, empty.text)
    XCTAssertEqual(empty.json["error"] as? String, "illegal_peer_num")
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-7","peers":[1,2,3]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    XCTAssertEqual(created.headers["location"], "/v1/groups/DataRegion-7")
    for node in nodes {
      XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-7?forward=none").status, 200)
    }
    var written = 0
    waitUntil("DataRegion-7 to elect and take a write through node 2") {
      written = (try? HTTPClient(port: nodes[1].port).request("PUT", "/v1/groups/DataRegion-7/kv/k", text: "seven").status) ?? 0
      return written == 200
    }
    XCTAssertEqual(try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/DataRegion-7/kv/k?raw=true").text, "seven")
    // Issue 11: the same creation again (a client retrying after a timeout), through any node and
    // in any order, is answered as the first was; nothing is created again and the data stays.
    for (through, peers) in [(0, "[1,2,3]"), (1, "[3,1,2]")] {
      let again = try HTTPClient(port: nodes[through].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-7","peers":\#(peers)}"#)
      XCTAssertEqual(again.status, 201, again.text)
      XCTAssertEqual(again.headers["location"], "/v1/groups/DataRegion-7")
      XCTAssertEqual(again.json["id"] as? String, "DataRegion-7")
      XCTAssertEqual(Set((again.json["peers"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int }), [1, 2, 3], again.text)
    }
    XCTAssertEqual(try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-7/kv/k?raw=true").text, "seven")
    waitUntil("DataRegion-7 to take a write after the retries") {
      (try? HTTPClient(port: nodes[2].port).request("PUT", "/v1/groups/DataRegion-7/kv/k2", text: "again").status) == 200
    }
    // A group on two of the three nodes.
    let pair = try HTTPClient(port: nodes[2].port).request("POST", "/v1/groups", text: #"{"id":"SchemaRegion-2","peers":[1,2]}"#)
    XCTAssertEqual(pair.status, 201, pair.text)
    XCTAssertEqual(try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/SchemaRegion-2?forward=none").status, 200)
    // Node 3 hosts no replica of SchemaRegion-2, yet routes to it: the directory names its peers.
    let hint = try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/SchemaRegion-2?forward=none")
    XCTAssertEqual(hint.status, 421, hint.text)
    var routed = 0
    waitUntil("SchemaRegion-2 to take a write through node 3, which does not host it") {
      routed = (try? HTTPClient(port: nodes[2].port).request("PUT", "/v1/groups/SchemaRegion-2/kv/s", text: "two").status) ?? 0
      return routed == 200
    }
    XCTAssertEqual(try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/SchemaRegion-2/kv/s?raw=true").text, "two")
    XCTAssertEqual(try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-99").status, 404, "hosted nowhere")
    // The cluster-wide listing shows SchemaRegion-2 even through node 3, which does not host it.
    let everywhere = try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups?scope=cluster")
    let ids = (everywhere.json["groups"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
    XCTAssertEqual(ids, ["DataRegion-0", "DataRegion-7", "SchemaRegion-2", "PartitionRegion-0"], everywhere.text)
    let hereOnly = try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups")
    XCTAssertEqual(
      (hereOnly.json["groups"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }, ["DataRegion-0", "DataRegion-7", "PartitionRegion-0"])
    let unknown = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-8","peers":[1,9]}"#)
    XCTAssertEqual(unknown.status, 400, "node 9 is in no directory")

    let deleted = try HTTPClient(port: nodes[2].port).request("DELETE", "/v1/groups/DataRegion-7")
    XCTAssertEqual(deleted.status, 200, deleted.text)
    for node in nodes {
      XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-7?forward=none").status, 404)
    }
  }

  /// Regression (review): `POST /v1/groups` over an existing group with other peers created fresh
  /// replicas on the nodes that had none (their leader's higher term would truncate the real
  /// group's log) and overwrote the directory's record. Now the record is reserved first: other
  /// peers → 409 and nothing is created; the same peers → 201 (issue 11: a retry) and nothing is
  /// created again; over a DELETE that failed on a peer → 409 until the DELETE is finished.
  func testCreatingAnExistingGroupWithOtherPeersIsRefusedAndCreatesNothing() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let recordPath = "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-3?raw=true"
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-3","peers":[1,2]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    waitUntil("DataRegion-3 to take a write") {
      (try? HTTPClient(port: nodes[0].port).request("PUT", "/v1/groups/DataRegion-3/kv/k", text: "kept").status) == 200
    }
    let record = try HTTPClient(port: nodes[0].port).request("GET", recordPath).text
    XCTAssertTrue(record.contains(#""id":"DataRegion-3""#), record)

    for (through, peers) in [(2, "[2,3]"), (1, "[1,2,3]"), (0, "[3]")] {
      let other = try HTTPClient(port: nodes[through].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-3","peers":\#(peers)}"#)
      XCTAssertEqual(other.status, 409, "peers \(peers): \(other.text)")
      XCTAssertEqual(other.json["error"] as? String, "group_already_exists")
      XCTAssertEqual(
        try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/DataRegion-3?forward=none").status, 421,
        "node 3 got no replica (it only knows where the group lives), peers \(peers)")
      XCTAssertEqual(try HTTPClient(port: nodes[1].port).request("GET", recordPath).text, record, "the record is unchanged")
    }
    // The same request again (a retry): every peer has its replica, so nothing is created; it is
    // answered as the first was, and the data is intact.
    let same = try HTTPClient(port: nodes[2].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-3","peers":[2,1]}"#)
    XCTAssertEqual(same.status, 201, same.text)
    XCTAssertEqual(try HTTPClient(port: nodes[1].port).request("GET", "/v1/groups/DataRegion-3/kv/k?raw=true").text, "kept")
    XCTAssertEqual(try HTTPClient(port: nodes[1].port).request("GET", recordPath).text, record, "renewed, not changed")
    // What a DELETE that failed on one peer leaves: the record, marked, and a replica on node 2
    // only. The same request must not put a fresh replica beside the surviving one (a quorum
    // with it, which its log would overwrite), until the DELETE is retried and finishes.
    // (Until the directory has a leader again a DELETE changes nothing and answers 503 too:
    // ask until node 1's replica is gone and node 2 is the one that did not answer.)
    nodes[1].kill(SIGKILL)
    var failed: HTTPReply?
    waitUntil("a DELETE of DataRegion-3 to fail on node 2 only") {
      failed = try? HTTPClient(port: nodes[2].port).request("DELETE", "/v1/groups/DataRegion-3")
      return failed?.status == 503 && failed?.text.contains("not deleted on node(s) 2") == true
    }
    XCTAssertNotEqual(try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-3?forward=none").status, 200)
    try nodes[1].start()
    XCTAssertEqual(try HTTPClient(port: nodes[1].port).request("GET", "/v1/groups/DataRegion-3?forward=none").status, 200)
    /// The answer of `method target` through node 3 once the directory answers (not 503).
    func settled(_ method: String, _ target: String, _ body: String = "") -> HTTPReply? {
      var reply: HTTPReply?
      waitUntil("\(method) \(target) to be answered with the directory up") {
        reply = try? HTTPClient(port: nodes[2].port).request(method, target, text: body)
        return reply.map { $0.status != 503 } ?? false
      }
      return reply
    }
    let refused = try XCTUnwrap(settled("POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[1,2]}"#))
    XCTAssertEqual(refused.status, 409, refused.text)
    XCTAssertEqual(refused.json["error"] as? String, "group_already_exists")
    XCTAssertTrue(refused.text.contains("retry DELETE /v1/groups/DataRegion-3"), refused.text)
    XCTAssertNotEqual(
      try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-3?forward=none").status, 200,
      "node 1 got no fresh replica")
    let finished = try XCTUnwrap(settled("DELETE", "/v1/groups/DataRegion-3"))
    XCTAssertEqual(finished.status, 200, finished.text)
    XCTAssertEqual(try HTTPClient(port: nodes[0].port).request("GET", recordPath).status, 404, "the record is gone")
    // Now the id is free: a creation makes a new, empty group.
    let recreated = try XCTUnwrap(settled("POST", "/v1/groups", #"{"id":"DataRegion-3","peers":[1,2]}"#))
    XCTAssertEqual(recreated.status, 201, recreated.text)
    var fresh: HTTPReply?
    waitUntil("the new DataRegion-3 to elect and answer a read") {
      fresh = try? HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-3/kv/k")
      return fresh?.status == 404 && fresh?.json["error"] as? String == "key_not_found"
    }

    // A group created node by node (no directory record, as before the directory existed): a
    // creation naming a node that hosts it is refused, and the other node gets nothing.
    for index in [0, 1] {
      let local = try HTTPClient(port: nodes[index].port).request("POST", "/v1/node/groups", text: #"{"id":"DataRegion-4","peers":[1,2]}"#)
      XCTAssertEqual(local.status, 201, local.text)
    }
    let unrecorded = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-4","peers":[2,3]}"#)
    XCTAssertEqual(unrecorded.status, 409, unrecorded.text)
    XCTAssertEqual(try HTTPClient(port: nodes[2].port).request("GET", "/v1/node").status, 200)
    XCTAssertEqual(try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups").text.contains("DataRegion-4"), false)
    XCTAssertEqual(
      try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/PartitionRegion-0/kv/groups/DataRegion-4").status, 404,
      "nothing was recorded")
  }

  /// addPeer gives the new node the data; removePeer takes the group off the removed node.
  func testAPeerAddedToAGroupServesItsDataAndARemovedOneNoLongerHostsIt() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-5","peers":[1,2]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    var written: HTTPReply?
    waitUntil("DataRegion-5 to elect and take a write") {
      written = try? HTTPClient(port: nodes[0].port).request("PUT", "/v1/groups/DataRegion-5/kv/k", text: "five")
      return written?.status == 200
    }
    let index = try XCTUnwrap(written?.json["index"] as? Int)
    // Through node 3, which does not host the group yet: the request goes to the leader.
    let added = try HTTPClient(port: nodes[2].port).request("POST", "/v1/groups/DataRegion-5/peers", text: #"{"id":3}"#)
    XCTAssertEqual(added.status, 200, added.text)
    let members = (added.json["peers"] as? [[String: Any]] ?? []).map { ($0["id"] as? Int ?? 0, $0["learner"] as? Bool ?? true) }
    XCTAssertEqual(members.map(\.0), [1, 2, 3], added.text)
    XCTAssertEqual(members.map(\.1), [false, false, false], added.text)
    XCTAssertEqual(added.json["bootstrapVoters"] as? [Int], [1, 2])
    let stale = try HTTPClient(port: nodes[2].port).request(
      "GET", "/v1/groups/DataRegion-5/kv/k?consistency=stale&minIndex=\(index)&raw=true")
    XCTAssertEqual(stale.status, 200, stale.text)
    XCTAssertEqual(stale.text, "five")
    XCTAssertNil(stale.headers["x-caucus-forwarded-by"], "node 3 answered from its own replica")
    let again = try HTTPClient(port: nodes[1].port).request("POST", "/v1/groups/DataRegion-5/peers", text: #"{"id":3}"#)
    XCTAssertEqual(again.status, 409, again.text)

    let removed = try HTTPClient(port: nodes[1].port).request("DELETE", "/v1/groups/DataRegion-5/peers/1")
    XCTAssertEqual(removed.status, 200, removed.text)
    XCTAssertEqual((removed.json["peers"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int }, [2, 3], removed.text)
    waitUntil("node 1 to drop its replica of DataRegion-5") {
      let hosted = try? HTTPClient(port: nodes[0].port).request("GET", "/v1/groups")
      let ids = (hosted?.json["groups"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
      return hosted?.status == 200 && !ids.contains("DataRegion-5")
    }
    let gone = try HTTPClient(port: nodes[1].port).request("DELETE", "/v1/groups/DataRegion-5/peers/1")
    XCTAssertEqual(gone.status, 404, gone.text)
    XCTAssertEqual(gone.json["error"] as? String, "peer_not_in_group")
    // An initial voter cannot come back: with an empty log it would still vote as one.
    let back = try HTTPClient(port: nodes[1].port).request("POST", "/v1/groups/DataRegion-5/peers", text: #"{"id":1}"#)
    XCTAssertEqual(back.status, 400, back.text)
    XCTAssertEqual(back.json["error"] as? String, "illegal_peer_num")
  }

  func testARequestDuringAnElectionWaitsForTheNewLeaderAndWithoutAQuorumAnswersNoLeader() throws {
    let first = try XCTUnwrap(leader(among: [0, 1, 2]))
    let survivors = [0, 1, 2].filter { $0 != first }
    nodes[first].kill(SIGKILL)
    // At once, while the survivors have not yet noticed: the request waits for the election.
    let during = try HTTPClient(port: nodes[survivors[0]].port).request("PUT", "/v1/groups/DataRegion-0/kv/during", text: "election")
    XCTAssertEqual(during.status, 200, during.text)
    // With two of three nodes gone there is no quorum: a bounded wait, then 503 no_leader.
    nodes[survivors[1]].kill(SIGKILL)
    var lastStatus = 0
    var reply: HTTPReply?
    waitUntil("the lone node to give up its leadership or lose its leader") {
      reply = try? HTTPClient(port: nodes[survivors[0]].port).request("PUT", "/v1/groups/DataRegion-0/kv/alone", text: "x")
      lastStatus = reply?.status ?? 0
      return lastStatus == 503
    }
    XCTAssertEqual(lastStatus, 503)
    XCTAssertEqual(reply?.json["error"] as? String, "no_leader")
    XCTAssertNotNil(reply?.headers["retry-after"])
  }

  func testTheClusterViewGathersEveryNodeAndListsAnUnreachableOne() throws {
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    let view = try HTTPClient(port: nodes[0].port).request("GET", "/v1/cluster")
    XCTAssertEqual(view.status, 200, view.text)
    let listed = try XCTUnwrap(view.json["nodes"] as? [[String: Any]])
    XCTAssertEqual(listed.compactMap { $0["id"] as? Int }, [1, 2, 3])
    XCTAssertEqual(listed.compactMap { $0["reachable"] as? Bool }, [true, true, true])
    for (index, node) in listed.enumerated() {
      XCTAssertEqual(node["clientURL"] as? String, "http://127.0.0.1:\(nodes[index].port)")
      let groups = node["groups"] as? [[String: Any]] ?? []
      XCTAssertEqual(groups.first?["id"] as? String, "DataRegion-0", "node \(index + 1) reports its groups")
    }
    nodes[2].kill(SIGKILL)
    let started = Date()
    let partial = try HTTPClient(port: nodes[0].port).request("GET", "/v1/cluster")
    XCTAssertLessThan(Date().timeIntervalSince(started), 5, "a per-node deadline bounds the gathering")
    let after = try XCTUnwrap(partial.json["nodes"] as? [[String: Any]])
    XCTAssertEqual(after.compactMap { $0["reachable"] as? Bool }, [true, true, false], "never hidden, marked unreachable")
    // The counts alone: an unreachable node's are unknown (null), not zero.
    let counts = try XCTUnwrap(try HTTPClient(port: nodes[0].port).request("GET", "/v1/cluster?groups=false").json["nodes"] as? [[String: Any]])
    XCTAssertEqual(counts.compactMap { $0["reachable"] as? Bool }, [true, true, false])
    XCTAssertEqual(counts.map { $0["groupCount"] as? Int }, [2, 2, nil], "DataRegion-0 and PartitionRegion-0 on the live nodes")
    XCTAssertTrue(counts[2]["leaderCount"] is NSNull, "\(counts)")
    XCTAssertTrue(counts.allSatisfy { $0["groups"] == nil }, "no lists")
  }

  func testAClusterRestartKeepsEveryAcknowledgedWrite() throws {
    let leaderIndex = try XCTUnwrap(leader(among: [0, 1, 2]))
    var acknowledged: [String: String] = [:]
    for sequence in 0..<30 {
      let key = "restart/\(sequence)"
      let reply = try HTTPClient(port: nodes[sequence % 3].port).request("PUT", "/v1/groups/DataRegion-0/kv/\(key)", text: "v\(sequence)")
      if reply.status == 200 { acknowledged[key] = "v\(sequence)" }
    }
    XCTAssertEqual(acknowledged.count, 30)
    _ = leaderIndex
    for node in nodes { node.kill(SIGKILL) }
    for node in nodes { try node.start() }
    _ = try XCTUnwrap(leader(among: [0, 1, 2]))
    for (offset, (key, value)) in acknowledged.enumerated() {
      let reply = try HTTPClient(port: nodes[offset % 3].port).request("GET", "/v1/groups/DataRegion-0/kv/\(key)?raw=true")
      XCTAssertEqual(reply.status, 200, "\(key): \(reply.text)")
      XCTAssertEqual(reply.text, value, key)
    }
  }
}

final class DevClusterTests: XCTestCase {
  func testDevClusterStartsAWorkingClusterAndCtrlCStopsEveryNode() throws {
    let directory = temporaryDirectory("dev-cluster")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    // Three consecutive free ports for each side.
    let base = try XCTUnwrap(freePortRange(count: 6), "six consecutive free ports")
    let consensusBase = base + 3
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try Paths.binary("caucus"))
    process.arguments = [
      "dev-cluster", "--nodes", "3", "--rpc-port", String(base), "--consensus-port", String(consensusBase), "--data-dir", directory,
      "--election-timeout-ms", "200", "--heartbeat-interval-ms", "20",
    ]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    var status = 0
    waitUntil("a write through node 2 of the dev cluster") {
      status = (try? HTTPClient(port: base + 1).request("PUT", "/v1/groups/DataRegion-0/kv/dev", text: "ok").status) ?? 0
      return status == 200
    }
    XCTAssertEqual(status, 200)
    XCTAssertEqual(try HTTPClient(port: base + 2).request("GET", "/v1/groups/DataRegion-0/kv/dev?raw=true").text, "ok")
    kill(process.processIdentifier, SIGINT)
    process.waitUntilExit()
    XCTAssertEqual(process.terminationStatus, 0)
    let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    XCTAssertTrue(printed.contains("node 3: http://127.0.0.1:\(base + 2)"), printed)
    XCTAssertTrue(printed.contains("dev-cluster: stopped"), printed)
    for port in [base, base + 1, base + 2] {
      XCTAssertThrowsError(try HTTPClient(port: port).request("GET", "/healthz"), "node on \(port) stopped")
    }
  }
}
