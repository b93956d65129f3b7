import Foundation
import Glibc
import Platform
import XCTest

/// Locating a group from a node that does not host it, on three real `caucus serve` processes
/// (regression tests for "A node that does not host a group no longer answers 404 …" and the
/// commit after it). Node 3 hosts no replica of `DataRegion-7` (peers 1 and 2), so every request
/// to it there asks the other members for the leader. `404 group_not_found` says the group exists
/// nowhere; while it may exist (its hosts do not answer, or have no leader) the answer is the
/// retryable `503 no_leader`, after the bounded no-leader wait (2 s by default).
final class LocateTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []
  /// Node 3 (index 2): a member that hosts no replica of `group`.
  private let asking = 2
  private let group = "DataRegion-7"

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "locate")
    for node in nodes { try node.start() }
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
  }

  override func tearDown() { removeNodes(nodes, directories) }

  /// Before 22e41ec: node 1 hosts the group with no leader; once the no-leader wait ran out
  /// node 3 stopped looking and answered `404 group_not_found`.
  func testAGroupThatLostItsQuorumAnswers503NoLeaderNot404ThroughANodeNotHostingIt() throws {
    try createGroupOnNodes1And2()
    XCTAssertEqual(nodes[1].stop(), 0)
    // CheckQuorum: node 1 steps down within an election timeout and knows no leader.
    waitUntil("node 1 to host \(group) with no leader", seconds: 10) {
      guard let reply = try? HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/\(group)?forward=none"),
        reply.status == 200
      else { return false }
      return reply.json["leader"] is NSNull
    }
    assertNoLeaderThroughNode3()
  }

  /// Before b91b2c8: every member that could host the group was dead, the look called that
  /// "nowhere", and node 3 answered `404 group_not_found` at once.
  func testAGroupWhoseHostsAreAllDeadAnswers503NoLeaderNot404ThroughANodeNotHostingIt() throws {
    try createGroupOnNodes1And2()
    XCTAssertEqual(nodes[1].stop(), 0)
    XCTAssertEqual(nodes[0].stop(), 0)
    assertNoLeaderThroughNode3()
  }

  /// Control: with every member answering "not hosted", the group exists nowhere, through any node.
  func testAGroupHostedNowhereAnswers404GroupNotFoundThroughEveryNode() throws {
    try createGroupOnNodes1And2()
    for node in nodes {
      let client = try HTTPClient(port: node.port)
      for reply in [
        try client.request("GET", "/v1/groups/DataRegion-99/kv/x"),
        try client.request("PUT", "/v1/groups/DataRegion-99/kv/x", text: "nowhere"),
      ] {
        XCTAssertEqual(reply.status, 404, "node \(reply.headers["x-caucus-node"] ?? "?"): \(reply.text)")
        XCTAssertEqual(reply.json["error"] as? String, "group_not_found", reply.text)
        XCTAssertEqual(reply.json["group"] as? String, "DataRegion-99", reply.text)
      }
    }
  }

  // MARK: Helpers

  /// Creates `group` on nodes 1 and 2, writes `k` through node 1 and reads it through node 3,
  /// which finds the leader by locating it.
  private func createGroupOnNodes1And2(file: StaticString = #filePath, line: UInt = #line) throws {
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"\#(group)","peers":[1,2]}"#)
    XCTAssertEqual(created.status, 201, created.text, file: file, line: line)
    waitUntil("\(group) to elect and take a write through node 1", seconds: 20, file: file, line: line) {
      (try? HTTPClient(port: nodes[0].port).request("PUT", "/v1/groups/\(group)/kv/k", text: "seven").status) == 200
    }
    let hostedHere = try HTTPClient(port: nodes[asking].port).request("GET", "/v1/groups")
    let ids = (hostedHere.json["groups"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
    XCTAssertFalse(ids.contains(group), "node 3 hosts no replica: \(hostedHere.text)", file: file, line: line)
    let read = try HTTPClient(port: nodes[asking].port).request("GET", "/v1/groups/\(group)/kv/k?raw=true")
    XCTAssertEqual(read.status, 200, read.text, file: file, line: line)
    XCTAssertEqual(read.text, "seven", "node 3 located the leader", file: file, line: line)
  }

  /// Writes and reads `group` through node 3, all at once (each waits out the no-leader wait):
  /// every one answers `503 no_leader`. Several, because the old code's answer depended on
  /// whether the wait ran out during a look (503) or between looks (404).
  private func assertNoLeaderThroughNode3(file: StaticString = #filePath, line: UInt = #line) {
    let requests: [(method: String, target: String)] = [
      ("PUT", "/v1/groups/\(group)/kv/x"), ("PUT", "/v1/groups/\(group)/kv/y"),
      ("GET", "/v1/groups/\(group)/kv/k"), ("GET", "/v1/groups/\(group)/kv/x"),
    ]
    let port = nodes[asking].port
    let replies = Locked<[Int: Result<HTTPReply, any Error>]>([:])
    DispatchQueue.concurrentPerform(iterations: requests.count) { index in
      let (method, target) = requests[index]
      let reply = Result { try HTTPClient(port: port).request(method, target, text: method == "PUT" ? "lost" : "") }
      replies.withLock { $0[index] = reply }
    }
    for (index, request) in requests.enumerated() {
      switch replies.withLock({ $0[index] }) {
      case .success(let reply)?: assertNoLeader(reply, "\(request.method) \(request.target)", file: file, line: line)
      case .failure(let error)?: XCTFail("\(request.method) \(request.target): \(error)", file: file, line: line)
      case nil: XCTFail("\(request.method) \(request.target): no reply", file: file, line: line)
      }
    }
  }

  private func assertNoLeader(_ reply: HTTPReply, _ request: String, file: StaticString, line: UInt) {
    XCTAssertEqual(reply.status, 503, "\(request): \(reply.text)", file: file, line: line)
    XCTAssertEqual(reply.json["error"] as? String, "no_leader", "\(request): \(reply.text)", file: file, line: line)
    XCTAssertEqual(reply.json["group"] as? String, group, "\(request): \(reply.text)", file: file, line: line)
    XCTAssertEqual(reply.headers["retry-after"], "1", "\(request): retryable: \(reply.headers)", file: file, line: line)
  }
}
