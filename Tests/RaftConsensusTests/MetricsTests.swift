import Consensus
import Platform
import RaftConsensus
import XCTest

/// `/metrics` of a node hosting many groups: per-node aggregates over every group, per-group
/// series for the first groups in id order only (issue 11).
final class MetricsTests: XCTestCase {
  private func roleCount(_ text: String, _ role: String) -> Double { metric(text, "caucus_raft_groups_by_role{role=\"\(role)\"}") }

  private func groupsWithSeries(_ text: String, _ family: String) -> [String] {
    text.split(separator: "\n").filter { $0.hasPrefix(family + "{") }.compactMap { line in
      line.split(separator: "\"").dropFirst().first.map(String.init)
    }
  }

  func testAggregatesCoverEveryGroupAndPerGroupSeriesOnlyTheFirstInIdOrder() throws {
    let cluster = try TestCluster(nodes: 3)
    // Id order is by type, then number: DataRegion-10 comes after DataRegion-2.
    let groups = [GroupID(.schemaRegion, 1), GroupID(.dataRegion, 10), GroupID(.dataRegion, 2), GroupID(.dataRegion, 1)]
    for group in groups { try cluster.createGroup(group) }
    for group in groups { XCTAssertNotNil(cluster.waitForLeader(group)) }
    // A group of three voters that only node 1 hosts: it can never elect a leader.
    let stranded = GroupID(.dataRegion, 7)
    try waitForCompletion { cluster.engine(0).createPeer(stranded, peers: cluster.members, completion: $0) }.get()

    var texts: [String] = []
    let settled = eventually(timeout: 10) {
      texts = cluster.running.map { $0.prometheusMetrics(groupSeriesMax: 2) }
      let leaders = texts.map { self.roleCount($0, "leader") }.reduce(0, +)
      return leaders == 4 && metric(texts[0], "caucus_raft_groups_leaderless") == 1
        && metric(texts[1], "caucus_raft_groups_leaderless") == 0 && metric(texts[2], "caucus_raft_groups_leaderless") == 0
    }
    XCTAssertTrue(settled, "every created group led once, the stranded one leaderless:\n\(texts.first ?? "")")
    for (node, text) in texts.enumerated() {
      XCTAssertEqual(Prometheus.formatProblems(text), [], "node \(node + 1)")
      let hosted = node == 0 ? 5.0 : 4.0
      XCTAssertEqual(metric(text, "caucus_groups_hosted"), hosted, "node \(node + 1)")
      XCTAssertEqual(
        roleCount(text, "leader") + roleCount(text, "follower") + roleCount(text, "candidate"), hosted,
        "node \(node + 1): every replica is a voter with one role")
      XCTAssertEqual(roleCount(text, "learner"), 0)
      XCTAssertGreaterThanOrEqual(metric(text, "caucus_raft_apply_lag_entries_sum"), metric(text, "caucus_raft_apply_lag_entries_max"))
      XCTAssertEqual(metric(text, "caucus_groups_metrics_omitted"), hosted - 2, "node \(node + 1)")
      for family in ["caucus_group_is_leader", "caucus_group_term", "caucus_group_commit_index", "caucus_group_applied_index"] {
        XCTAssertEqual(groupsWithSeries(text, family), ["DataRegion-1", "DataRegion-2"], "node \(node + 1): \(family)")
      }
    }
    let noSeries = cluster.engine(0).prometheusMetrics(groupSeriesMax: 0)
    XCTAssertEqual(Prometheus.formatProblems(noSeries), [])
    XCTAssertEqual(groupsWithSeries(noSeries, "caucus_group_term"), [])
    XCTAssertEqual(metric(noSeries, "caucus_groups_metrics_omitted"), 5)
    XCTAssertEqual(metric(noSeries, "caucus_groups_hosted"), 5, "aggregates stay")
    let every = cluster.engine(0).prometheusMetrics()
    XCTAssertEqual(
      groupsWithSeries(every, "caucus_group_term"), ["DataRegion-1", "DataRegion-2", "DataRegion-7", "DataRegion-10", "SchemaRegion-1"])
    XCTAssertEqual(metric(every, "caucus_groups_metrics_omitted"), 0)

    // A follower that stops while writes go on: its leader sees it fall behind.
    let group = GroupID(.dataRegion, 1)
    cluster.stop(2)
    for sequence in 0..<3 { _ = try cluster.writeToLeader(group, "k\(sequence)", "v", excluding: [2]) }
    let leader = try XCTUnwrap(cluster.waitForLeader(group, excluding: [2]))
    XCTAssertTrue(
      eventually(timeout: 10) { metric(cluster.engine(leader).prometheusMetrics(groupSeriesMax: 0), "caucus_raft_replication_lag_entries_max") >= 3 },
      "the leader of \(group) counts the stopped node's missing entries")
  }
}
