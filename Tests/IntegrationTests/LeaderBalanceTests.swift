import Foundation
import Glibc
import Platform
import XCTest

/// Leader balancing (issue 11) on three real processes: groups whose leaders all sit on node 3
/// are spread over the three nodes by `POST /v1/cluster/rebalance`, or by the automatic mode.
final class LeaderBalanceTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []
  /// The directory, the default group and six more, all on the three nodes.
  private let groups = ["PartitionRegion-0", "DataRegion-0"] + (1...6).map { "DataRegion-\($0)" }

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "balance")
    for node in nodes { try node.start() }
  }

  override func tearDown() { removeNodes(nodes, directories) }

  private func request(_ node: Int, _ method: String, _ target: String, _ body: String = "") -> HTTPReply? {
    try? HTTPClient(port: nodes[node].port).request(method, target, text: body)
  }

  /// Leaders per node id as `GET /v1/cluster?groups=false` through `node` reports them; nil
  /// unless every node answered.
  private func leaderCounts(through node: Int = 0) -> [Int: Int]? {
    guard let reply = request(node, "GET", "/v1/cluster?groups=false"), reply.status == 200,
      let listed = reply.json["nodes"] as? [[String: Any]], listed.count == nodes.count
    else { return nil }
    var counts: [Int: Int] = [:]
    for entry in listed {
      guard entry["reachable"] as? Bool == true, entry["groups"] == nil, let id = entry["id"] as? Int,
        let leading = entry["leaderCount"] as? Int
      else { return nil }
      counts[id] = leading
    }
    return counts
  }

  /// Creates the six groups and moves the leadership of every group to node 3.
  private func pileLeadersOnNodeThree(file: StaticString = #filePath, line: UInt = #line) {
    for group in groups.dropFirst(2) {
      let created = request(0, "POST", "/v1/groups", #"{"id":"\#(group)","peers":[1,2,3]}"#)
      XCTAssertEqual(created?.status, 201, created?.text ?? "no answer", file: file, line: line)
    }
    for group in groups {
      waitUntil("node 3 to lead \(group)", file: file, line: line) {
        if request(2, "GET", "/v1/groups/\(group)?forward=none")?.json["role"] as? String == "leader" { return true }
        // Through node 3: the group's leader (wherever it is) hands leadership to node 3.
        _ = request(2, "POST", "/v1/groups/\(group)/leader", #"{"id":3}"#)
        return false
      }
    }
    waitUntil("every node to report node 3 leading all \(groups.count) groups", file: file, line: line) {
      leaderCounts() == [1: 0, 2: 0, 3: groups.count]
    }
  }

  private func spread(_ counts: [Int: Int]) -> Int { (counts.values.max() ?? 0) - (counts.values.min() ?? 0) }

  private func counts(_ object: Any?) -> [Int: Int] {
    Dictionary(uniqueKeysWithValues: ((object as? [String: Int]) ?? [:]).map { (Int($0.key) ?? 0, $0.value) })
  }

  func testARebalanceSpreadsLeadersPiledOnOneNodeAndBadInputChangesNothing() throws {
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    pileLeadersOnNodeThree()

    // The cluster view: counts beside the lists, or the counts alone.
    let full = try XCTUnwrap(request(0, "GET", "/v1/cluster"))
    let listed = try XCTUnwrap(full.json["nodes"] as? [[String: Any]])
    XCTAssertEqual(listed.compactMap { $0["leaderCount"] as? Int }, [0, 0, groups.count], full.text)
    XCTAssertEqual(listed.compactMap { $0["groupCount"] as? Int }, [groups.count, groups.count, groups.count])
    XCTAssertEqual(listed.map { ($0["groups"] as? [Any])?.count ?? -1 }, [groups.count, groups.count, groups.count])
    let badView = try XCTUnwrap(request(0, "GET", "/v1/cluster?groups=maybe"))
    XCTAssertEqual(badView.status, 400, badView.text)
    XCTAssertEqual(request(0, "GET", "/v1/node")?.json["leaderCount"] as? Int, 0)
    XCTAssertEqual(request(2, "GET", "/v1/node")?.json["leaderCount"] as? Int, groups.count)

    // Bad input is refused before anything is gathered or moved.
    for (method, target, body, status) in [
      ("POST", "/v1/cluster/rebalance?max=abc", "", 400), ("POST", "/v1/cluster/rebalance?max=0", "", 400),
      ("POST", "/v1/cluster/rebalance?max=101", "", 400), ("POST", "/v1/cluster/rebalance?max=-1", "", 400),
      ("POST", "/v1/cluster/rebalance?dryRun=perhaps", "", 400), ("POST", "/v1/cluster/rebalance", "{}", 400),
      ("GET", "/v1/cluster/rebalance", "", 405),
    ] {
      let reply = try XCTUnwrap(request(0, method, target, body))
      XCTAssertEqual(reply.status, status, "\(method) \(target): \(reply.text)")
      XCTAssertEqual(reply.json["error"] as? String, status == 400 ? "bad_request" : "method_not_allowed", reply.text)
    }
    let untouched = try XCTUnwrap(request(0, "GET", "/metrics")).text
    XCTAssertTrue(untouched.contains("\ncaucus_leader_balance_runs_total 0\n"), "bad input started no balance")

    // A dry run (through node 2: any node coordinates) plans and moves nothing.
    let dry = try XCTUnwrap(request(1, "POST", "/v1/cluster/rebalance?dryRun=true"))
    XCTAssertEqual(dry.status, 200, dry.text)
    XCTAssertEqual(dry.json["moved"] as? Int, 0)
    XCTAssertEqual(counts(dry.json["before"]), [1: 0, 2: 0, 3: groups.count], dry.text)
    XCTAssertLessThanOrEqual(spread(counts(dry.json["planned"])), 1, dry.text)
    XCTAssertEqual(counts(dry.json["after"]), counts(dry.json["before"]))
    let planned = (dry.json["transfers"] as? [[String: Any]]) ?? []
    // 3, 3, 2: node 3 keeps three.
    XCTAssertEqual(planned.count, groups.count - 3, dry.text)
    XCTAssertTrue(planned.allSatisfy { $0["outcome"] as? String == "planned" && $0["from"] as? Int == 3 }, dry.text)
    XCTAssertEqual(leaderCounts(), [1: 0, 2: 0, 3: groups.count], "a dry run moved nothing")

    // Two transfers at most: the answer says there is more to do.
    let bounded = try XCTUnwrap(request(0, "POST", "/v1/cluster/rebalance?max=2"))
    XCTAssertEqual(bounded.status, 200, bounded.text)
    XCTAssertEqual(bounded.json["moved"] as? Int, 2, bounded.text)
    XCTAssertEqual(bounded.json["failed"] as? Int, 0, bounded.text)
    XCTAssertEqual(bounded.json["balanced"] as? Bool, false, bounded.text)
    XCTAssertEqual(counts(bounded.json["after"])[3], groups.count - 2, bounded.text)

    // The rest.
    let rest = try XCTUnwrap(request(0, "POST", "/v1/cluster/rebalance"))
    XCTAssertEqual(rest.status, 200, rest.text)
    let moved = try XCTUnwrap(rest.json["moved"] as? Int)
    XCTAssertEqual(rest.json["failed"] as? Int, 0, rest.text)
    XCTAssertEqual(rest.json["skipped"] as? Int, 0, rest.text)
    XCTAssertEqual(rest.json["balanced"] as? Bool, true, rest.text)
    XCTAssertEqual(moved + 2, planned.count, "the two calls moved what the dry run planned: \(rest.text)")
    XCTAssertEqual(counts(rest.json["after"]), counts(rest.json["planned"]), rest.text)
    XCTAssertLessThanOrEqual(spread(counts(rest.json["after"])), 1, rest.text)
    var final: [Int: Int] = [:]
    waitUntil("every node to report leadership spread evenly") {
      final = leaderCounts() ?? [:]
      return final.values.reduce(0, +) == groups.count && spread(final) <= 1
    }
    XCTAssertLessThanOrEqual(spread(final), 1, "\(final)")

    let metrics = try XCTUnwrap(request(0, "GET", "/metrics")).text
    XCTAssertEqual(Prometheus.formatProblems(metrics), [], metrics)
    XCTAssertTrue(metrics.contains("\ncaucus_leader_balance_runs_total 2\n"), "the dry run ran on node 2: \(metrics)")
    XCTAssertTrue(metrics.contains("\ncaucus_leader_balance_transfers_total{outcome=\"moved\"} \(planned.count)\n"), metrics)
  }

  /// The automatic mode: node 1, restarted with an interval, is the node of the lowest id and
  /// balances by itself.
  func testTheLowestNodeBalancesByItselfOnItsInterval() throws {
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    pileLeadersOnNodeThree()
    nodes[0].kill(SIGKILL)
    try nodes[0].start(["--leader-balance-interval-ms", "200"])
    var final: [Int: Int] = [:]
    waitUntil("node 1 to spread leadership evenly by itself") {
      final = leaderCounts() ?? [:]
      return final.values.reduce(0, +) == groups.count && spread(final) <= 1
    }
    XCTAssertLessThanOrEqual(spread(final), 1, "\(final)")
    let metrics = try XCTUnwrap(request(0, "GET", "/metrics")).text
    let moved = metrics.split(separator: "\n").first { $0.hasPrefix("caucus_leader_balance_transfers_total{outcome=\"moved\"} ") }
    XCTAssertGreaterThanOrEqual(moved.flatMap { Int($0.split(separator: " ")[1]) } ?? 0, groups.count - 3, metrics)
    XCTAssertTrue(nodes[0].log().contains("balanced leadership") && nodes[0].log().contains("trigger=automatic"), nodes[0].log().suffix(3000).description)
    for other in [1, 2] {
      let text = try XCTUnwrap(request(other, "GET", "/metrics")).text
      XCTAssertTrue(text.contains("\ncaucus_leader_balance_runs_total 0\n"), "node \(other + 1) left it to node 1")
    }
  }
}
