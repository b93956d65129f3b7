import XCTest

@testable import RaftCore

final class ReadIndexTests: XCTestCase {
  /// Thesis §6.4: a read index is the commit index, confirmed by a heartbeat quorum.
  func testReadIndexConfirmedByHeartbeatQuorum_Thesis6_4() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    try cluster[1].propose([1])
    cluster.stabilize()
    try cluster[1].readIndex(context: 99)
    cluster.flush()
    XCTAssertEqual(cluster.readStates[1, default: []], [], "not before the heartbeat round")
    XCTAssertTrue(cluster.inFlight.contains { $0.kind == .heartbeat && $0.context != 0 })
    cluster.stabilize()
    XCTAssertEqual(cluster.readStates[1], [ReadState(index: 2, context: 99)])
  }

  /// Thesis §6.4: a leader cut off from its quorum never confirms a read.
  func testPartitionedLeaderNeverConfirmsRead_Thesis6_4() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(1)
    try cluster[1].readIndex(context: 5)
    cluster.stabilize()
    XCTAssertEqual(cluster.readStates[1, default: []], [])
  }

  /// Thesis §6.4 step 1: a new leader serves reads only after committing an entry of its term.
  func testReadWaitsForCommitInTerm_Thesis6_4() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.replicas[1]!.campaign()
    cluster.stabilize { $0.kind != .appendResponse }  // the no-op never commits
    XCTAssertEqual(cluster[1].role, .leader)
    XCTAssertEqual(cluster[1].committed, 0)
    try cluster[1].readIndex(context: 8)
    cluster.stabilize { $0.kind != .appendResponse }
    XCTAssertEqual(cluster.readStates[1, default: []], [])
    cluster.tick(1)  // heartbeats trigger appends; now acknowledgements flow
    XCTAssertEqual(cluster[1].committed, 1)
    XCTAssertEqual(cluster.readStates[1], [ReadState(index: 1, context: 8)])
  }

  func testFollowerRefusesReadIndex() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    XCTAssertThrowsError(try cluster[2].readIndex(context: 1))
  }
}

final class LeaderTransferTests: XCTestCase {
  /// Thesis §3.10: the leader catches the target up, then sends TimeoutNow; the target wins.
  func testTransferToUpToDateFollower_Thesis3_10() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    try cluster[1].transferLeadership(to: 3)
    cluster.stabilize()
    XCTAssertEqual(cluster.leaders, [3])
    XCTAssertEqual(cluster[3].term, 2)
  }

  /// Thesis §3.10: a lagging target is caught up first.
  func testTransferCatchesUpLaggingTarget_Thesis3_10() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.cut = [[1, 3]]
    for value in 0..<5 { try cluster[1].propose([UInt8(value)]) }
    cluster.stabilize()
    XCTAssertLessThan(cluster[3].lastIndex, cluster[1].lastIndex)
    cluster.heal()
    try cluster[1].transferLeadership(to: 3)
    XCTAssertThrowsError(try cluster[1].propose([9]), "proposals wait during a transfer")
    cluster.stabilize()
    XCTAssertEqual(cluster.leaders, [3])
    XCTAssertEqual(cluster[3].lastIndex, 7, "five commands, two no-ops")
  }

  /// Thesis §3.10: a transfer that does not finish within an election timeout is abandoned.
  func testTransferToUnreachableTargetIsAbandoned_Thesis3_10() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.cut = [[1, 3], [3, 1]]
    try cluster[1].transferLeadership(to: 3)
    XCTAssertEqual(cluster[1].leadTransferee, 3)
    cluster.tick(cluster[1].config.electionTicks, only: [1])
    XCTAssertEqual(cluster[1].leadTransferee, 0)
    XCTAssertNoThrow(try cluster[1].propose([1]))
  }
}

final class SnapshotTests: XCTestCase {
  /// Raft paper §7: a leader whose log was compacted sends its snapshot to a follower that
  /// needs the compacted entries; the follower restores it.
  func testLeaderSendsSnapshotForCompactedEntries_Section7() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(3)
    for value in 0..<10 { try cluster[1].propose([UInt8(value)]) }
    cluster.stabilize()
    let snapshot = try XCTUnwrap(cluster[1].compact(data: [42]))
    XCTAssertEqual(snapshot.index, 11)
    XCTAssertEqual(cluster[1].firstIndex, 12)
    cluster.heal()
    var sawSnapshot = false
    for _ in 0..<10 {
      cluster.tick(1)
      if cluster[3].latestSnapshot != nil { sawSnapshot = true }
      // The simulated transport reports delivery.
      cluster[1].reportSnapshot(to: 3, failed: false)
    }
    XCTAssertTrue(sawSnapshot)
    XCTAssertEqual(cluster[3].latestSnapshot?.data, [42])
    XCTAssertEqual(cluster[3].committed, cluster[1].committed)
    XCTAssertEqual(cluster[3].applied, cluster[1].committed)
  }

  /// Raft paper §7: a snapshot covering entries the follower already has is not installed.
  func testSnapshotCoveredByLogIsNotInstalled_Section7() {
    var raft = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 1), entries: entries([1, 1, 1]))
    let snapshot = Snapshot(index: 2, term: 1, config: ConfigState(voters: [1, 2, 3]), data: [])
    raft.step(Message(kind: .snapshot, from: 1, to: 2, term: 1, snapshot: snapshot))
    let ready = drain(&raft)
    XCTAssertNil(ready.snapshot)
    XCTAssertEqual(raft.committed, 2, "fast-forwarded instead")
    XCTAssertEqual(raft.lastIndex, 3)
  }

  /// A restart from a snapshot plus later entries resumes after the snapshot.
  func testRestartFromSnapshot_Section7() throws {
    let snapshot = Snapshot(index: 5, term: 2, config: ConfigState(voters: [1, 2, 3]), data: [7])
    var config = RaftConfig(id: 1)
    config.preVote = true
    var raft = try Raft(
      config: config, random: SplitMix64(seed: 1),
      restored: RestoredState(
        hardState: HardState(term: 2, vote: 0, commit: 6), snapshot: snapshot,
        entries: [Entry(term: 2, index: 6, data: [1])], bootstrapConfig: ConfigState(voters: [9])))
    XCTAssertEqual(raft.firstIndex, 6)
    XCTAssertEqual(raft.applied, 5)
    XCTAssertEqual(raft.membership.voters, [1, 2, 3], "membership comes from the snapshot")
    XCTAssertEqual(drain(&raft).committedEntries.map(\.index), [6])
  }

  /// A failed snapshot report returns the follower to probing.
  func testFailedSnapshotReportReturnsToProbe_Section7() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(3)
    for value in 0..<4 { try cluster[1].propose([UInt8(value)]) }
    cluster.stabilize()
    _ = cluster[1].compact(data: [])
    cluster.heal()
    cluster.inFlight = []
    cluster[1].tick()  // heartbeat
    cluster.flush()
    cluster.inFlight = cluster.inFlight.filter { $0.to == 3 }
    cluster.stabilize { $0.kind != .snapshot }  // the heartbeat answer triggers the snapshot, lost
    XCTAssertEqual(cluster[1].status.progress[3]?.state, .snapshot)
    cluster[1].reportSnapshot(to: 3, failed: true)
    XCTAssertEqual(cluster[1].status.progress[3]?.state, .probe)
  }
}

final class MembershipTests: XCTestCase {
  /// Thesis §4.1: no configuration change before the leader's no-op commits.
  func testNoChangeBeforeNoOpCommits_Thesis4_1() {
    var raft = makeRaft(id: 1, voters: [1, 2, 3])
    raft.campaign()
    raft.step(Message(kind: .preVoteResponse, from: 2, to: 1, term: 1))
    raft.step(Message(kind: .voteResponse, from: 2, to: 1, term: 1))
    XCTAssertEqual(raft.role, .leader)
    XCTAssertThrowsError(try raft.proposeConfigChange(ConfigChange([.init(.addLearner, 4)]))) { error in
      guard case .configChangePending = error as? ProposalError else { return XCTFail("\(error)") }
    }
  }

  /// Learners receive the log but never vote or count toward a commit (thesis §4.2.1).
  func testLearnerReplicatesWithoutVoting_Thesis4_2_1() throws {
    var cluster = TestCluster(voters: [1, 2, 3], learners: [4])
    cluster.elect(1)
    try cluster[1].propose([1])
    cluster.stabilize()
    XCTAssertEqual(cluster[4].committed, 2)
    cluster.tick(100, only: [4])
    XCTAssertEqual(cluster[4].role, .follower, "a learner never campaigns")
    cluster.cut = [[1, 2], [1, 3]]
    try cluster[1].propose([2])
    cluster.stabilize()
    XCTAssertEqual(cluster[1].committed, 2, "the learner's copy does not count")
  }

  /// Thesis §4.1: one voter at a time takes effect directly when applied.
  func testAddLearnerThenPromote_Thesis4_1() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    var fourth = RaftConfig(id: 4)
    fourth.preVote = true
    cluster.replicas[4] = try Raft(
      config: fourth, random: SplitMix64(seed: 4), restored: RestoredState(bootstrapConfig: ConfigState(voters: [1, 2, 3])))
    cluster.elect(1)
    try cluster[1].proposeConfigChange(ConfigChange([.init(.addLearner, 4)]))
    cluster.stabilize()
    XCTAssertEqual(cluster[1].membership.learners, [4])
    XCTAssertEqual(cluster[4].membership.learners, [4])
    XCTAssertEqual(cluster[4].lastIndex, cluster[1].lastIndex)
    try cluster[1].proposeConfigChange(ConfigChange([.init(.addVoter, 4)]))
    cluster.stabilize()
    XCTAssertEqual(cluster[1].membership.voters, [1, 2, 3, 4])
  }

  /// The context travels with the change to every replica, and an oversized one is refused
  /// before anything is appended.
  func testChangeContextReachesEveryReplicaAndIsBounded() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    let before = cluster[1].lastIndex
    XCTAssertThrowsError(
      try cluster[1].proposeConfigChange(
        ConfigChange([.init(.addLearner, 4)], context: Array(repeating: 1, count: ConfigChange.contextBytesMax + 1)))
    ) { error in
      guard case .configChangeInvalid = error as? ProposalError else { return XCTFail("\(error)") }
    }
    XCTAssertEqual(cluster[1].lastIndex, before, "nothing appended")
    let index = try cluster[1].proposeConfigChange(ConfigChange([.init(.addLearner, 4)], context: [7, 7]))
    cluster.stabilize()
    for replica in [1, 2, 3] as [ReplicaID] {
      let entry = try XCTUnwrap(cluster[replica].entry(at: index))
      XCTAssertEqual(try WireCodec.decodeConfigChange(entry.data).context, [7, 7])
    }
  }

  /// Thesis §4.3: changing two voters enters a joint configuration, which the leader leaves on
  /// its own; while joint, decisions need majorities of both.
  func testJointConsensusEntersAndLeaves_Thesis4_3() throws {
    var cluster = TestCluster(voters: [1, 2, 3], learners: [4])
    cluster.elect(1)
    try cluster[1].proposeConfigChange(ConfigChange([.init(.remove, 3), .init(.addVoter, 4)]))
    cluster.flush()
    cluster.stabilize()
    XCTAssertFalse(cluster[1].membership.isJoint, "the leader left the joint configuration")
    XCTAssertEqual(cluster[1].membership.voters, [1, 2, 4])
    XCTAssertEqual(cluster[2].membership.voters, [1, 2, 4])
    XCTAssertThrowsError(try cluster[1].proposeConfigChange(ConfigChange.leaveJoint), "not joint any more")
  }

  /// Thesis §4.3: in C_old,new a majority of the new voters alone cannot commit.
  func testJointNeedsBothMajorities_Thesis4_3() {
    let quorum = Quorum(ConfigState(voters: [1, 2, 4], votersOutgoing: [1, 2, 3]))
    let acked: [ReplicaID: LogIndex] = [1: 5, 4: 5, 2: 1, 3: 1]
    XCTAssertEqual(quorum.committedIndex { acked[$0] ?? 0 }, 1, "new majority {1,4} only")
    let both: [ReplicaID: LogIndex] = [1: 5, 2: 5, 3: 1, 4: 1]
    XCTAssertEqual(quorum.committedIndex { both[$0] ?? 0 }, 5, "{1,2} is a majority of each")
  }

  /// Thesis §4.1: at most one pending change.
  func testOnlyOnePendingChange_Thesis4_1() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(1)
    try cluster[1].proposeConfigChange(ConfigChange([.init(.addLearner, 4)]))
    XCTAssertThrowsError(try cluster[1].proposeConfigChange(ConfigChange([.init(.addLearner, 5)])))
  }

  /// Thesis §4.2.2: a leader that removes itself hands leadership to a remaining voter.
  func testRemovedLeaderHandsOver_Thesis4_2_2() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    try cluster[1].proposeConfigChange(ConfigChange([.init(.remove, 1)]))
    cluster.stabilize()
    cluster.tick(3)
    XCTAssertEqual(cluster[1].role, .follower)
    XCTAssertEqual(cluster.leaders.count, 1)
    XCTAssertTrue([2, 3].contains(cluster.leaders.first!))
  }

  func testInvalidChangesAreRefused() {
    let state = ConfigState(voters: [1, 2, 3], learners: [4])
    XCTAssertThrowsError(try state.applying(ConfigChange([.init(.addLearner, 1)])), "voter to learner directly")
    XCTAssertThrowsError(try state.applying(ConfigChange([.init(.remove, 1), .init(.remove, 2), .init(.remove, 3)])))
    XCTAssertThrowsError(try state.applying(ConfigChange.leaveJoint))
    XCTAssertEqual(try state.applying(ConfigChange([.init(.addVoter, 4)])).voters, [1, 2, 3, 4])
  }
}

final class ConfigTests: XCTestCase {
  func testDefaultsAreValid() throws {
    try RaftConfig(id: 1).validate()
  }

  func testEveryLimitIsValidated() {
    var config = RaftConfig(id: 0)
    XCTAssertThrowsError(try config.validate())
    config = RaftConfig(id: 1)
    config.electionTicks = 1
    XCTAssertThrowsError(try config.validate(), "election must exceed heartbeat")
    for mutate: (inout RaftConfig) -> Void in [
      { $0.maxInflightMessages = 0 }, { $0.maxInflightBytes = 0 }, { $0.maxEntriesBytesPerMessage = 0 },
      { $0.maxUncommittedEntriesBytes = 0 }, { $0.maxCommittedBytesPerReady = 0 }, { $0.maxPendingReads = 0 },
      { $0.maxCommandBytes = WireLimits.entryDataBytesMax + 1 }, { $0.heartbeatTicks = 0 },
      { $0.stalledHeartbeatsBeforeProbe = 0 },
    ] {
      var broken = RaftConfig(id: 1)
      mutate(&broken)
      XCTAssertThrowsError(try broken.validate())
      XCTAssertThrowsError(
        try Raft(config: broken, random: SplitMix64(seed: 1), restored: RestoredState(bootstrapConfig: ConfigState(voters: [1]))))
    }
  }

  func testOversizedCommandIsRefused() {
    var raft = makeRaft(id: 1, voters: [1]) { $0.maxCommandBytes = 4 }
    raft.campaign()
    XCTAssertThrowsError(try raft.propose([1, 2, 3, 4, 5])) { error in
      XCTAssertEqual(error as? ProposalError, .commandTooLarge(bytes: 5, limit: 4))
    }
  }
}

/// Regressions the simulator found while the core was built, pinned as direct scenarios.
final class SimulatorRegressionTests: XCTestCase {
  /// Found by seed 2: every append that filled a window of one was lost; replication stalled
  /// forever. The leader now probes after a few heartbeat rounds with a full window.
  func testFullWindowOfLostAppendsRecovers() throws {
    var cluster = TestCluster(voters: [1, 2, 3]) { $0.maxInflightMessages = 1 }
    cluster.elect(1)
    try cluster[1].propose([1])
    cluster.flush()
    cluster.inFlight.removeAll { $0.to == 2 && $0.kind == .append }  // lost
    cluster.stabilize()
    XCTAssertLessThan(cluster[2].lastIndex, cluster[1].lastIndex)
    cluster.tick(cluster[1].config.stalledHeartbeatsBeforeProbe + 2)
    XCTAssertEqual(cluster[2].lastIndex, cluster[1].lastIndex)
  }

  /// Found by seed 8: with a lease but no CheckQuorum, a replica at a higher term ignored the
  /// leader silently and the leader never learned. Stale appends are now answered with our term.
  func testStaleAppendIsAnsweredWithCurrentTerm_Figure2() {
    var raft = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 9)) {
      $0.checkQuorum = false
      $0.preVote = false
    }
    raft.step(Message(kind: .append, from: 1, to: 2, term: 3))
    let response = drain(&raft).messagesAfterPersist.first
    XCTAssertEqual(response?.kind, .appendResponse)
    XCTAssertEqual(response?.term, 9)
  }

  /// Seed 1187 once had a removed leader campaign (an earlier rule let replicas removed from
  /// the group campaign); issue 9 finding 3 replaced that rule with etcd's promotable rule. A
  /// removed replica and a learner never campaign; a removed replica still votes.
  func testRemovedReplicaAndLearnerNeverCampaign_Thesis4_2_2() {
    var removed = makeRaft(id: 3, voters: [1, 2], hardState: HardState(term: 2), entries: entries([1, 2]))
    XCTAssertFalse(removed.isPromotable)
    removed.campaign()
    XCTAssertEqual(removed.role, .follower)
    removed.step(Message(kind: .vote, from: 1, to: 3, term: 3, logTerm: 2, index: 2))
    XCTAssertEqual(drain(&removed).messagesAfterPersist.first?.reject, false, "a removed replica still votes")
    let learner = try! Raft(
      config: RaftConfig(id: 4), random: SplitMix64(seed: 1),
      restored: RestoredState(
        hardState: HardState(term: 2), entries: entries([1, 2]), bootstrapConfig: ConfigState(voters: [1, 2], learners: [4])))
    XCTAssertFalse(learner.isPromotable, "learners never campaign")
  }
}
