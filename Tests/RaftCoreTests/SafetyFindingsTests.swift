import XCTest

@testable import RaftCore

/// Regression tests for the safety and liveness findings of issue 9's review of the core/host
/// seam. Each fails on the core as it was before its fix.
final class SafetyFindingsTests: XCTestCase {
  // MARK: Finding 1: no message of a term leaves before the term is durable

  /// A one-voter leader is elected and appends in one Ready. That Ready changes the term and
  /// vote, so it must send nothing before it is persisted.
  func testTermChangingReadySendsNothingBeforePersist_Finding1() throws {
    var raft = try Raft(
      config: RaftConfig(id: 1), random: SplitMix64(seed: 1),
      restored: RestoredState(bootstrapConfig: ConfigState(voters: [1], learners: [2])))
    raft.campaign()
    XCTAssertEqual(raft.role, .leader)
    try raft.propose([7])
    let ready = raft.ready()
    XCTAssertEqual(ready.hardState?.term, 1)
    XCTAssertTrue(ready.mustSync)
    XCTAssertEqual(ready.messages, [], "nothing leaves before the new term is durable")
    XCTAssertTrue(
      ready.messagesAfterPersist.contains { $0.kind == .append && $0.to == 2 && !$0.entries.isEmpty },
      "the appends to the learner wait for the fsync")
    raft.advance(ready)
    // Once the term is durable, a leader's appends go out early again (thesis §10.2.1).
    raft.step(Message(kind: .appendResponse, from: 2, to: 1, term: 1, index: 2))
    try raft.propose([8])
    let next = raft.ready()
    XCTAssertEqual(next.term, 1)
    XCTAssertTrue(next.messages.contains { $0.kind == .append && $0.to == 2 })
    raft.advance(next)
  }

  // MARK: Finding 2: an empty voter set has no quorum

  func testEmptyVoterSetNeverWinsNorCommits_Finding2() {
    let quorum = Quorum(ConfigState(voters: []))
    XCTAssertEqual(quorum.voteResult([:]), .lost)
    XCTAssertEqual(quorum.voteResult([1: true]), .lost)
    XCTAssertEqual(quorum.committedIndex { _ in 10 }, 0)
    XCTAssertFalse(quorum.isActive { _ in true })
    // The outgoing half of a joint configuration still counts; outside one it is empty and agrees.
    let joint = Quorum(ConfigState(voters: [1, 2], votersOutgoing: [1, 3]))
    XCTAssertEqual(joint.voteResult([1: true, 2: true]), .pending)
    XCTAssertEqual(joint.voteResult([1: true, 2: true, 3: true]), .won)
    XCTAssertEqual(Quorum(ConfigState(voters: [1])).voteResult([1: true]), .won)
  }

  /// A replica restored with no voters at all (a joiner before it learned anything) stays a
  /// follower however long it waits.
  func testReplicaWithoutVotersNeverLeads_Finding2() {
    var raft = try! Raft(
      config: RaftConfig(id: 1), random: SplitMix64(seed: 3), restored: RestoredState(bootstrapConfig: ConfigState(voters: [])))
    raft.campaign()
    for _ in 0..<100 {
      raft.tick()
      drain(&raft)
    }
    XCTAssertEqual(raft.role, .follower)
    XCTAssertEqual(raft.term, 0)
  }

  // MARK: Finding 3: only voters campaign (etcd's promotable rule)

  /// A joiner (created with the group's bootstrap voters, not among them) that received entries
  /// but has not applied its own addition never campaigns.
  func testJoinerBeforeItsAdditionNeverCampaigns_Finding3() {
    var joiner = makeRaft(id: 4, voters: [1, 2, 3], hardState: HardState(term: 1), entries: entries([1, 1, 1]))
    XCTAssertFalse(joiner.isPromotable)
    for _ in 0..<100 {
      joiner.tick()
      drain(&joiner)
    }
    XCTAssertEqual(joiner.role, .follower)
    XCTAssertEqual(joiner.term, 1, "not even a pre-vote round bumps anything")
  }

  /// A leader that removed itself and restarted does not campaign; the remaining voters elect
  /// one of themselves with its vote.
  func testRemovedLeaderRestartedDoesNotCampaignButVotes_Finding3() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    try cluster[1].proposeConfigChange(ConfigChange([.init(.remove, 1)]))
    cluster.stabilize()
    XCTAssertFalse(cluster[1].membership.isVoter(1))
    // Node 1 restarts from what it persisted (it applied its own removal).
    let restored = RestoredState(
      hardState: cluster[1].hardState, entries: (1...cluster[1].lastIndex).compactMap { cluster[1].entry(at: $0) },
      bootstrapConfig: ConfigState(voters: [1, 2, 3]))
    cluster.replicas[1] = try Raft(config: RaftConfig(id: 1), random: SplitMix64(seed: 9), restored: restored)
    XCTAssertFalse(cluster[1].isPromotable)
    cluster.tick(60)
    XCTAssertNotEqual(cluster[1].role, .leader)
    XCTAssertEqual(cluster.leaders.count, 1)
    XCTAssertTrue([2, 3].contains(cluster.leaders.first ?? 0))
  }

  /// Found by the simulator (seed 34, 3 nodes, 4 groups) once only voters campaigned: the
  /// replica a change removed holds entries the remaining voter lacks, so it refuses its votes,
  /// while the remaining voter does not know the change committed and still needs that vote.
  /// The refusal shares the voter's commit index; the candidate, holding that very entry,
  /// commits and applies the change, then elects itself alone.
  func testRefusedVoteSharesCommitSoRemainingVoterApplies_Finding3() {
    let removal = Entry(term: 1, index: 2, kind: .configChange, data: WireCodec.encode(ConfigChange([.init(.remove, 1)])))
    let first = Entry(term: 1, index: 1, data: [1])
    // The removed replica applied its removal and holds one more entry (of its later term).
    var removed = makeRaft(
      id: 1, voters: [1, 2], hardState: HardState(term: 2, vote: 1, commit: 2),
      entries: [first, removal, Entry(term: 2, index: 3)])
    XCTAssertEqual(removed.membership.voters, [2])
    var remaining = makeRaft(id: 2, voters: [1, 2], hardState: HardState(term: 2, commit: 1), entries: [first, removal])
    for _ in 0..<5 {
      remaining.campaign()
      for message in drainAll(&remaining) where message.to == 1 { removed.step(message) }
      for message in drainAll(&removed) where message.to == 2 { remaining.step(message) }
      drain(&remaining)
      if remaining.role == .leader { break }
    }
    XCTAssertEqual(remaining.membership.voters, [2], "the removal was learned committed and applied")
    remaining.campaign()
    drain(&remaining)
    XCTAssertEqual(remaining.role, .leader)
    XCTAssertNotEqual(removed.role, .leader)
  }

  /// A shared commit index is taken only where the log holds the very entry it names.
  func testSharedCommitNeedsMatchingEntry_Finding3() {
    var candidate = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 3), entries: entries([1, 2]))
    candidate.campaign()
    drain(&candidate)
    candidate.step(
      Message(kind: .preVoteResponse, from: 1, to: 2, term: 3, logTerm: 3, commit: 2, reject: true))
    XCTAssertEqual(candidate.committed, 0, "index 2 has term 2 here, not 3")
    candidate.step(
      Message(kind: .preVoteResponse, from: 3, to: 2, term: 3, logTerm: 2, commit: 2, reject: true))
    XCTAssertEqual(candidate.committed, 2)
  }

  private func drainAll(_ raft: inout Raft) -> [Message] {
    var messages: [Message] = []
    while raft.hasReady {
      let ready = drain(&raft)
      messages += ready.messages + ready.messagesAfterPersist
    }
    return messages
  }

  // MARK: Finding 4: TimeoutNow respects an unapplied configuration change

  func testTimeoutNowWaitsForUnappliedConfigChange_Finding4() {
    var follower = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 1), entries: entries([1]))
    let change = Entry(
      term: 1, index: 2, kind: .configChange, data: WireCodec.encode(ConfigChange([.init(.addLearner, 4)])))
    follower.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 1, entries: [change], commit: 2))
    XCTAssertEqual(follower.committed, 2)
    XCTAssertEqual(follower.applied, 0, "committed, not yet applied")
    follower.step(Message(kind: .timeoutNow, from: 1, to: 2, term: 1))
    XCTAssertEqual(follower.role, .follower, "no election while a committed change is unapplied")
    XCTAssertEqual(follower.term, 1)
    // Once applied, the deferred request starts the election (the host steps a whole batch,
    // the commit and the TimeoutNow together, before it applies anything).
    drain(&follower)
    XCTAssertEqual(follower.role, .candidate)
    XCTAssertEqual(follower.term, 2)
  }

  /// A deferred TimeoutNow lapses after an election timeout: the leader abandoned the transfer.
  func testDeferredTimeoutNowLapses_Finding4() {
    var follower = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 1), entries: entries([1]))
    let change = Entry(
      term: 1, index: 2, kind: .configChange, data: WireCodec.encode(ConfigChange([.init(.addLearner, 4)])))
    follower.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 1, entries: [change], commit: 2))
    follower.step(Message(kind: .timeoutNow, from: 1, to: 2, term: 1))
    for _ in 0..<follower.config.electionTicks { follower.tick() }
    drain(&follower)
    XCTAssertEqual(follower.role, .follower)
    XCTAssertEqual(follower.term, 1)
  }

  // MARK: Finding 6: a role change alone makes a Ready

  func testCheckQuorumStepDownAloneMakesReady_Finding6() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(1)
    var leader = cluster[1]
    var ticks = 0
    while leader.role == .leader && ticks < 10 * leader.config.electionTicks {
      leader.tick()
      ticks += 1
      if leader.role == .leader { drain(&leader) }
    }
    XCTAssertEqual(leader.role, .follower, "CheckQuorum stepped down")
    XCTAssertTrue(leader.hasReady, "the step-down alone is news to the host")
    let ready = leader.ready()
    XCTAssertEqual(ready.role, .follower)
    XCTAssertEqual(ready.leader, 0)
    leader.advance(ready)
    XCTAssertFalse(leader.hasReady, "reported once")
  }

  /// A follower that learns its leader from a heartbeat (no entries, same term) tells the host.
  func testLeaderLearnedFromHeartbeatMakesReady_Finding6() {
    var follower = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 1, vote: 1))
    drain(&follower)
    follower.step(Message(kind: .heartbeat, from: 1, to: 2, term: 1))
    let ready = follower.ready()
    XCTAssertEqual(ready.leader, 1)
    follower.advance(ready)
  }
}
