import Consensus
import Foundation
import RaftConsensus
import XCTest

/// Quiescence on real engines: idle groups fall silent (only the per-node liveness pings go on),
/// anything wakes them, and a leader's node that falls silent or restarts is replaced.
final class QuiescenceHostTests: XCTestCase {
  private let groups = (1...4).map { GroupID(.dataRegion, UInt32($0)) }

  /// Three nodes, every group with a leader and one write, then every group quiesced everywhere.
  private func quiescedCluster() throws -> TestCluster {
    let cluster = try TestCluster(nodes: 3)
    for group in groups {
      try cluster.createGroup(group)
      _ = try cluster.writeToLeader(group, "k", "v")
    }
    let allQuiesced = eventually(timeout: 10) {
      cluster.running.allSatisfy { metric($0, "caucus_raft_groups_quiesced") == Double(self.groups.count) }
    }
    XCTAssertTrue(allQuiesced, "every group quiesced on every node")
    return cluster
  }

  /// Waits until every running node's loop has ticked `ticks` more times (turns include ticks).
  private func waitForTicks(_ cluster: TestCluster, _ ticks: Double) {
    let before = metricTotals(cluster, "caucus_raft_loop_turns_total")[0]
    XCTAssertTrue(eventually(timeout: 10) {
      metricTotals(cluster, "caucus_raft_loop_turns_total")[0] >= before + ticks * Double(cluster.running.count)
    })
  }

  func testIdleGroupsStopHeartbeatingAndOnlyNodePingsRemain() throws {
    let cluster = try quiescedCluster()
    let names = ["caucus_raft_messages_sent_total", "caucus_raft_heartbeats_coalesced_total", "caucus_raft_batches_sent_total"]
    let before = metricTotals(cluster, names[0], names[1], names[2])
    let terms = groups.map { cluster.engine(0).status($0)!.term }
    waitForTicks(cluster, 30)
    let after = metricTotals(cluster, names[0], names[1], names[2])
    XCTAssertEqual(after[0], before[0], "no Raft message was sent")
    XCTAssertEqual(after[1], before[1], "no heartbeat was sent")
    XCTAssertGreaterThan(after[2], before[2], "the liveness pings go on")
    XCTAssertEqual(groups.map { cluster.engine(0).status($0)!.term }, terms, "no election")
    for engine in cluster.running {
      XCTAssertEqual(metric(engine, "caucus_raft_peer_nodes"), 2)
      XCTAssertEqual(metric(engine, "caucus_raft_peer_nodes_dead"), 0)
    }
  }

  func testWritesAndReadsWakeAQuiescedGroup() throws {
    let cluster = try quiescedCluster()
    let group = groups[2]
    let written = try cluster.writeToLeader(group, "color", "green")
    XCTAssertEqual(try cluster.readFromLeader(group, "color"), "green")
    for node in 0..<3 {
      let value = try read(
        cluster.engine(node), group, "color", ReadOptions(consistency: .stale, minIndex: written.index, waitMs: 5_000))
      XCTAssertEqual(value, "green", "node \(node + 1) applied it")
    }
    XCTAssertTrue(eventually(timeout: 10) {
      cluster.running.allSatisfy { metric($0, "caucus_raft_groups_quiesced") == Double(self.groups.count) }
    }, "the group quiesces again")
  }

  func testQuiescedGroupsOfASilentNodeElectNewLeaders() throws {
    let cluster = try quiescedCluster()
    let group = groups[0]
    let oldLeader = try XCTUnwrap(cluster.waitForLeader(group))
    let led = groups.filter { cluster.engine(oldLeader).isLeader($0) }
    cluster.network.isolate(cluster.peers[oldLeader].node)
    for group in led {
      let newLeader = try XCTUnwrap(cluster.waitForLeader(group, excluding: [oldLeader], timeout: 5))
      XCTAssertNotEqual(newLeader, oldLeader)
      _ = try cluster.writeToLeader(group, "after", "1", excluding: [oldLeader])
    }
    let woken = cluster.running.enumerated().filter { $0.offset != oldLeader }.map {
      metric($0.element, "caucus_raft_wakes_leader_lost_total")
    }
    XCTAssertGreaterThanOrEqual(woken.reduce(0, +), Double(led.count), "each led group was woken on some follower")
    XCTAssertEqual(metric(cluster.engine((oldLeader + 1) % 3), "caucus_raft_peer_nodes_dead"), 1)
  }

  /// A leader's node restarts faster than the liveness timeout: its followers never saw it die,
  /// yet the restarted replica's campaign (or the heartbeats of a leader it elects) must not be
  /// refused for ever by followers quiesced under its old lease.
  func testLeaderRestartedWithinTheLivenessTimeoutIsReplacedOrReelected() throws {
    let cluster = try quiescedCluster()
    let group = groups[1]
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    cluster.stop(leader)
    try cluster.start(leader)
    XCTAssertNotNil(cluster.waitForLeader(group, timeout: 10))
    _ = try cluster.writeToLeader(group, "after-restart", "1")
    XCTAssertEqual(try cluster.readFromLeader(group, "after-restart"), "1")
  }
}
