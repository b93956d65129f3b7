import Consensus
import Foundation
import Platform
import RaftConsensus
import RaftCore
import Synchronization
import XCTest

/// Membership changes through the host: a node joins (`joinPeer`, then `addPeer` at the leader),
/// members leave (`removePeer`), several change at once (`changePeer`, joint consensus).
final class MembershipChangeTests: XCTestCase {
  private let group = GroupID(.dataRegion, 7)

  /// The membership a node reports: (node, learner) pairs, ordered by node.
  private func membership(_ engine: RaftConsensus) -> [(UInt64, Bool)] {
    (engine.status(group)?.peers ?? []).map { ($0.peer.node.rawValue, $0.learner) }
  }

  private func voters(_ engine: RaftConsensus) -> [UInt64] {
    (engine.status(group)?.peers ?? []).filter { !$0.learner }.map(\.peer.node.rawValue)
  }

  /// Creates the joining replica on spare `index` with the group's current members' endpoints.
  private func join(_ cluster: TestCluster, _ index: Int, bootstrapVoters: [NodeID]) throws {
    let peers = cluster.members + [cluster.peers[index]]
    try waitForCompletion {
      cluster.engine(index).joinPeer(self.group, peers: peers, bootstrapVoters: bootstrapVoters, completion: $0)
    }.get()
  }

  /// Runs a membership change at whichever node leads, again when leadership moved meanwhile
  /// (with a 10 ms tick, a loaded machine may cost a leader its term). `retried` is true from
  /// the second attempt on. `joining`: nodes that host the group but may not know its leader yet.
  private func atLeader(
    _ cluster: TestCluster, joining: Set<Int> = [], timeout: TimeInterval = 30,
    _ body: (RaftConsensus, _ retried: Bool) -> Result<Void, ConsensusError>
  ) throws {
    let deadline = Date().addingTimeInterval(timeout)
    var retried = false
    while true {
      let leader = try XCTUnwrap(cluster.waitForLeader(group, excluding: joining))
      switch body(cluster.engine(leader), retried) {
      case .success: return
      case .failure(let error):
        switch error {
        case .notLeader, .noLeader:
          guard Date() < deadline else { throw error }
          retried = true
        default: throw error
        }
      }
    }
  }

  private func addPeer(_ cluster: TestCluster, _ index: Int) throws {
    try atLeader(cluster, joining: [index]) { engine, retried in
      let result = waitForCompletion { engine.addPeer(self.group, peer: cluster.peers[index], completion: $0) }
      // A retry after the promotion applied finds it a voter.
      if retried, case .failure(.peerAlreadyInGroup) = result { return .success(()) }
      return result
    }
  }

  func testAddedPeerBecomesAVoterServesItsDataAndKeepsItAcrossARestart() throws {
    let cluster = try TestCluster(nodes: 3, spares: 1)
    try cluster.createGroup(group)
    XCTAssertNotNil(cluster.waitForLeader(group))
    let before = try cluster.writeToLeader(group, "before", "1")
    try join(cluster, 3, bootstrapVoters: cluster.members.map(\.node))
    XCTAssertEqual(voters(cluster.engine(3)), [1, 2, 3], "the joiner starts from the bootstrap voters")
    try addPeer(cluster, 3)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    XCTAssertEqual(membership(cluster.engine(leader)).map(\.0), [1, 2, 3, 4])
    XCTAssertEqual(membership(cluster.engine(leader)).map(\.1), [false, false, false, false], "no learner left")
    XCTAssertEqual(
      try read(cluster.engine(3), group, "before", ReadOptions(consistency: .stale, minIndex: before.index, waitMs: 5_000)),
      "1", "the new peer has the data written before it joined")
    let after = try cluster.writeToLeader(group, "after", "2")
    XCTAssertEqual(
      try read(cluster.engine(3), group, "after", ReadOptions(consistency: .stale, minIndex: after.index, waitMs: 5_000)), "2")
    XCTAssertTrue(eventually(timeout: 10) { self.voters(cluster.engine(3)) == [1, 2, 3, 4] })

    cluster.stop(3)
    try cluster.start(3)
    let restarted = try XCTUnwrap(cluster.engine(3).status(group))
    XCTAssertEqual(restarted.peers.map(\.peer), cluster.peers, "endpoints recovered from the creation record and the log")
    XCTAssertEqual(restarted.bootstrapVoters.map(\.rawValue), [1, 2, 3])
    XCTAssertTrue(eventually(timeout: 10) { self.voters(cluster.engine(3)) == [1, 2, 3, 4] }, "membership recovered")
    let third = try cluster.writeToLeader(group, "third", "3")
    XCTAssertEqual(
      try read(cluster.engine(3), group, "third", ReadOptions(consistency: .stale, minIndex: third.index, waitMs: 5_000)), "3")
  }

  /// The split-brain case: the leader never compacted, so the joiner replays the log from index
  /// 1. Started from the bootstrap voters it reproduces the membership history exactly; started
  /// from an empty membership it would refuse `addLearner 4` and then make itself the sole voter.
  func testJoinerReplayingTheLogFromIndexOneNeverLeadsAndEndsWithTheLeadersMembership() throws {
    let cluster = try TestCluster(nodes: 3, spares: 1)
    try cluster.createGroup(group)
    XCTAssertNotNil(cluster.waitForLeader(group))
    for number in 0..<5 { _ = try cluster.writeToLeader(group, "k\(number)", "v") }
    try join(cluster, 3, bootstrapVoters: cluster.members.map(\.node))
    let joiner = cluster.engine(3)
    XCTAssertEqual(joiner.status(group)?.snapshotIndex, 0)
    // Watch the joiner all through the change: it must never claim the group.
    let watching = Atomic<Bool>(true)
    let ledAsLearner = Atomic<Bool>(false)
    let ledEver = Atomic<Bool>(false)
    let group = self.group
    let watcher = OSThread(name: "watch-joiner") {
      while watching.load(ordering: .acquiring) {
        if let status = joiner.status(group), status.role == .leader {
          ledEver.store(true, ordering: .releasing)
          if status.peers.contains(where: { $0.peer.node == NodeID(4) && $0.learner }) {
            ledAsLearner.store(true, ordering: .releasing)
          }
        }
        usleep(500)
      }
    }
    try addPeer(cluster, 3)
    watching.store(false, ordering: .releasing)
    watcher.join()
    XCTAssertFalse(ledAsLearner.load(ordering: .acquiring), "the joiner led while a learner")
    XCTAssertFalse(ledEver.load(ordering: .acquiring), "nobody campaigned: the joiner had no reason to lead")
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    XCTAssertNotEqual(leader, 3)
    XCTAssertTrue(
      eventually(timeout: 10) {
        self.membership(joiner).map(\.0) == self.membership(cluster.engine(leader)).map(\.0)
          && self.membership(joiner).map(\.1) == self.membership(cluster.engine(leader)).map(\.1)
      }, "joiner \(membership(joiner)) vs leader \(membership(cluster.engine(leader)))")
    XCTAssertEqual(voters(joiner), [1, 2, 3, 4])
  }

  /// A joiner behind a compacted log gets a snapshot, which carries the membership.
  func testJoinerBehindACompactedLogInstallsTheSnapshotAndItsMembership() throws {
    let cluster = try TestCluster(nodes: 3, spares: 1) { $0.snapshotEntriesThreshold = 4 }
    try cluster.createGroup(group)
    XCTAssertNotNil(cluster.waitForLeader(group))
    var last = WriteResult(index: 0, response: [])
    for number in 0..<12 { last = try cluster.writeToLeader(group, "k\(number)", "v\(number)") }
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    XCTAssertTrue(eventually(timeout: 10) { (cluster.engine(leader).status(self.group)?.snapshotIndex ?? 0) > 1 })
    try join(cluster, 3, bootstrapVoters: cluster.members.map(\.node))
    try addPeer(cluster, 3)
    XCTAssertEqual(
      try read(cluster.engine(3), group, "k0", ReadOptions(consistency: .stale, minIndex: last.index, waitMs: 5_000)), "v0")
    XCTAssertTrue(eventually(timeout: 10) { self.voters(cluster.engine(3)) == [1, 2, 3, 4] })
  }

  /// Regression: a member that was down while node 4 was added, and then caught up by
  /// installing a snapshot that covers the change, never learned node 4's endpoint (snapshots
  /// carried none, and the change's context was compacted away): its status showed node 4 with
  /// an empty endpoint, and leading, it could not replicate to node 4.
  func testMemberCatchingUpBySnapshotLearnsTheEndpointsOfMembersAddedMeanwhile() throws {
    let cluster = try TestCluster(nodes: 3, spares: 1)
    try cluster.createGroup(group)
    let first = try XCTUnwrap(cluster.waitForLeader(group))
    let lagging = (first + 1) % 3
    cluster.stop(lagging)
    try join(cluster, 3, bootstrapVoters: cluster.members.map(\.node))
    try addPeer(cluster, 3)
    var last = WriteResult(index: 0, response: [])
    for number in 0..<5 { last = try cluster.writeToLeader(group, "k\(number)", "v\(number)", excluding: [lagging]) }
    // Every running member compacts past the change, so whichever leads must send a snapshot.
    for node in 0..<4 where node != lagging {
      _ = try read(cluster.engine(node), group, "k4", ReadOptions(consistency: .stale, minIndex: last.index, waitMs: 5_000))
      let info = try waitForCompletion { cluster.engine(node).triggerSnapshot(self.group, completion: $0) }.get()
      XCTAssertGreaterThanOrEqual(info.index, last.index, "node \(node + 1)")
    }
    try cluster.start(lagging)
    let restarted = cluster.engine(lagging)
    XCTAssertEqual(
      try read(restarted, group, "k4", ReadOptions(consistency: .stale, minIndex: last.index, waitMs: 5_000)), "v4")
    XCTAssertGreaterThanOrEqual(metric(restarted, "caucus_raft_snapshots_installed_total"), 1, "caught up by snapshot")
    XCTAssertTrue(eventually(timeout: 10) { self.voters(restarted) == [1, 2, 3, 4] })
    let statusPeers = try XCTUnwrap(restarted.status(group)).peers.map(\.peer)
    XCTAssertEqual(statusPeers, cluster.peers, "every member with its real endpoint")

    // Leading, it replicates to node 4 (which it knows only from the snapshot).
    var written: WriteResult?
    for _ in 0..<5 where written == nil {
      let leader = try XCTUnwrap(cluster.waitForLeader(group))
      if leader != lagging {
        let outcome = waitForCompletion {
          cluster.engine(leader).transferLeader(self.group, to: cluster.peers[lagging].node, completion: $0)
        }
        // Leadership moved on its own before the request reached the leader: try again.
        guard case .success = outcome else { continue }
      }
      guard cluster.waitForLeader(group) == lagging else { continue }
      written = try? write(restarted, group, "led-by", "\(lagging + 1)").get()
    }
    let index = try XCTUnwrap(written, "a write led by node \(lagging + 1)").index
    XCTAssertEqual(
      try read(cluster.engine(3), group, "led-by", ReadOptions(consistency: .stale, minIndex: index, waitMs: 5_000)),
      "\(lagging + 1)")
    cluster.stop(lagging)
    try cluster.start(lagging)
    XCTAssertEqual(
      try XCTUnwrap(cluster.engine(lagging).status(group)).peers.map(\.peer), cluster.peers,
      "endpoints recovered from the installed snapshot")
  }

  func testRemovedMemberIsGoneFromEveryNodesStatus() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let removed = (leader + 1) % 3
    try atLeader(cluster) { engine, retried in
      let result = waitForCompletion { engine.removePeer(self.group, node: cluster.peers[removed].node, completion: $0) }
      if retried, case .failure(.peerNotInGroup) = result { return .success(()) }
      return result
    }
    let remaining = (0..<3).filter { $0 != removed }
    let expected = remaining.map { cluster.peers[$0].node.rawValue }
    for node in remaining {
      XCTAssertTrue(eventually(timeout: 10) { self.voters(cluster.engine(node)) == expected }, "node \(node + 1)")
      XCTAssertEqual(membership(cluster.engine(node)).map(\.0), expected, "node \(node + 1)")
    }
    let written = try cluster.writeToLeader(group, "after", "removal", excluding: [removed])
    XCTAssertGreaterThan(written.index, 0)
    cluster.stop(removed)  // the two left commit alone
    XCTAssertNoThrow(try cluster.writeToLeader(group, "without", "it", excluding: [removed]))
  }

  /// Replacing two of three voters at once goes through a joint configuration, which the leader
  /// leaves before answering.
  func testChangePeerReplacesTwoMembersThroughAJointConfiguration() throws {
    let cluster = try TestCluster(nodes: 3, spares: 2)
    try cluster.createGroup(group)
    XCTAssertNotNil(cluster.waitForLeader(group))
    let before = try cluster.writeToLeader(group, "before", "1")
    for spare in [3, 4] {
      let peers = cluster.members + [cluster.peers[3], cluster.peers[4]]
      try waitForCompletion {
        cluster.engine(spare).joinPeer(
          self.group, peers: peers, bootstrapVoters: cluster.members.map(\.node), completion: $0)
      }.get()
    }
    var kept = 0
    try atLeader(cluster, joining: [3, 4]) { engine, _ in
      kept = Int(engine.localPeer.node.rawValue) - 1
      let wanted = [cluster.peers[kept], cluster.peers[3], cluster.peers[4]]
      return waitForCompletion { engine.changePeer(self.group, peers: wanted, completion: $0) }
    }
    let expected = [UInt64(kept + 1), 4, 5].sorted()
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    XCTAssertEqual(membership(cluster.engine(leader)).map(\.0), expected, "final membership, not joint")
    XCTAssertEqual(voters(cluster.engine(leader)), expected)
    let written = try cluster.writeToLeader(group, "after", "2")
    for node in [3, 4] {
      XCTAssertEqual(
        try read(cluster.engine(node), group, "before", ReadOptions(consistency: .stale, minIndex: before.index, waitMs: 5_000)),
        "1")
      XCTAssertEqual(
        try read(cluster.engine(node), group, "after", ReadOptions(consistency: .stale, minIndex: written.index, waitMs: 5_000)),
        "2")
      XCTAssertTrue(eventually(timeout: 10) { self.voters(cluster.engine(node)) == expected }, "node \(node + 1)")
    }
    // The old members are out: the new ones commit without them.
    for old in 0..<3 where old != kept { cluster.stop(old) }
    XCTAssertNoThrow(try cluster.writeToLeader(group, "without", "old", excluding: Set((0..<3).filter { $0 != kept })))
  }

  func testRefusalsAnswerTheirErrors() throws {
    let cluster = try TestCluster(nodes: 3, spares: 1)
    try cluster.createGroup(group)
    // Retried when leadership moves between finding the leader and asking it.
    for _ in 0..<20 {
      let leader = try XCTUnwrap(cluster.waitForLeader(group))
      let term = cluster.engine(leader).status(group)?.term
      let follower = (leader + 1) % 3
      let engine = cluster.engine(leader)
      let existing = waitForCompletion { engine.addPeer(self.group, peer: cluster.peers[follower], completion: $0) }
      let stranger = waitForCompletion { engine.removePeer(self.group, node: NodeID(9), completion: $0) }
      let disjoint = waitForCompletion { engine.changePeer(self.group, peers: [cluster.peers[3]], completion: $0) }
      let atFollower = waitForCompletion {
        cluster.engine(follower).addPeer(self.group, peer: cluster.peers[3], completion: $0)
      }
      guard cluster.waitForLeader(group) == leader, cluster.engine(leader).status(group)?.term == term else { continue }
      XCTAssertEqual(failure(of: existing), .peerAlreadyInGroup(cluster.peers[follower].node, group))
      XCTAssertEqual(failure(of: stranger), .peerNotInGroup(NodeID(9), group))
      guard case .illegalPeerNumber = failure(of: disjoint) else { return XCTFail("\(disjoint)") }
      XCTAssertEqual(failure(of: atFollower), .notLeader(group, leader: cluster.peers[leader]))
      break
    }
    let empty = waitForCompletion { cluster.engine(0).changePeer(self.group, peers: [], completion: $0) }
    guard case .illegalPeerNumber = failure(of: empty) else { return XCTFail("\(empty)") }
    let missing = waitForCompletion { cluster.engine(0).addPeer(GroupID(.dataRegion, 99), peer: cluster.peers[3], completion: $0) }
    XCTAssertEqual(failure(of: missing), .groupNotFound(GroupID(.dataRegion, 99)))
    // A joiner cannot name itself a bootstrap voter: it would campaign over an empty log.
    let selfVoter = waitForCompletion {
      cluster.engine(3).joinPeer(self.group, peers: cluster.peers, bootstrapVoters: [NodeID(4)], completion: $0)
    }
    guard case .invalidRequest = failure(of: selfVoter) else { return XCTFail("\(selfVoter)") }
    XCTAssertNil(cluster.engine(3).status(group))
  }
}
