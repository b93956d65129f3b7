import XCTest

@testable import RaftCore

final class ElectionTests: XCTestCase {
  /// Raft paper §5.2: a follower that hears nothing campaigns after a randomized election timeout
  /// drawn from [electionTicks, 2 × electionTicks).
  func testFollowerCampaignsAfterRandomizedTimeout_Section5_2() {
    for seed in 1...20 as ClosedRange<UInt64> {
      var config = RaftConfig(id: 1)
      config.preVote = false
      var raft = try! Raft(
        config: config, random: SplitMix64(seed: seed), restored: RestoredState(bootstrapConfig: ConfigState(voters: [1, 2, 3])))
      var ticks = 0
      while raft.role == .follower && ticks < 100 {
        raft.tick()
        ticks += 1
      }
      XCTAssertEqual(raft.role, .candidate)
      XCTAssertGreaterThanOrEqual(ticks, config.electionTicks)
      XCTAssertLessThan(ticks, 2 * config.electionTicks)
      XCTAssertEqual(raft.term, 1)
      XCTAssertEqual(raft.vote, 1, "a candidate votes for itself")
    }
  }

  /// Raft paper §5.2: different seeds give different timeouts, which is what breaks split votes.
  func testTimeoutsDependOnTheInjectedGenerator_Section5_2() {
    var timeouts = Set<Int>()
    for seed in 1...30 as ClosedRange<UInt64> {
      var raft = makeRaft(id: 1, voters: [1, 2, 3]) { $0.preVote = false }
      raft = try! Raft(
        config: raft.config, random: SplitMix64(seed: seed),
        restored: RestoredState(bootstrapConfig: ConfigState(voters: [1, 2, 3])))
      var ticks = 0
      while raft.role == .follower { raft.tick(); ticks += 1 }
      timeouts.insert(ticks)
    }
    XCTAssertGreaterThan(timeouts.count, 3)
  }

  /// Raft paper §5.2: a candidate with votes from a majority becomes leader; the others follow.
  func testCandidateWithMajorityBecomesLeader_Section5_2() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    XCTAssertEqual(cluster.leaders, [1])
    XCTAssertEqual(cluster[2].leader, 1)
    XCTAssertEqual(cluster[3].leader, 1)
    XCTAssertEqual(cluster[1].term, 1)
  }

  /// Raft paper §5.2: a minority cannot elect a leader.
  func testMinorityCannotElect_Section5_2() {
    var cluster = TestCluster(voters: [1, 2, 3, 4, 5]) { $0.preVote = false }
    cluster.cut = [[1, 3], [1, 4], [1, 5], [3, 1], [4, 1], [5, 1]]
    cluster.elect(1)
    XCTAssertEqual(cluster[1].role, .candidate)
  }

  /// Raft paper §5.2: each server votes for at most one candidate per term, and the vote is in
  /// the hard state that must be persisted before the response is sent.
  func testOneVotePerTermAndVoteIsPersistedFirst_Section5_2() {
    var raft = makeRaft(id: 1, voters: [1, 2, 3])
    raft.step(Message(kind: .vote, from: 2, to: 1, term: 1))
    let ready = drain(&raft)
    XCTAssertEqual(ready.hardState?.vote, 2)
    XCTAssertEqual(ready.hardState?.term, 1)
    XCTAssertTrue(ready.messages.isEmpty, "a vote must not leave before it is durable")
    XCTAssertEqual(ready.messagesAfterPersist.map(\.kind), [.voteResponse])
    XCTAssertEqual(ready.messagesAfterPersist.first?.reject, false)
    raft.step(Message(kind: .vote, from: 3, to: 1, term: 1))
    let second = drain(&raft)
    XCTAssertEqual(second.messagesAfterPersist.first?.reject, true, "a second candidate in the same term is refused")
  }

  /// Raft paper §5.4.1: a vote is refused to a candidate whose log is less up-to-date.
  func testVoteRefusedToStaleLog_Section5_4_1() {
    var raft = makeRaft(id: 1, voters: [1, 2, 3], hardState: HardState(term: 2), entries: entries([1, 2]))
    raft.step(Message(kind: .vote, from: 2, to: 1, term: 3, logTerm: 1, index: 5))
    XCTAssertEqual(drain(&raft).messagesAfterPersist.first?.reject, true, "lower last term loses")
    raft.step(Message(kind: .vote, from: 3, to: 1, term: 3, logTerm: 2, index: 1))
    XCTAssertEqual(drain(&raft).messagesAfterPersist.first?.reject, true, "same term, shorter log loses")
    raft.step(Message(kind: .vote, from: 3, to: 1, term: 4, logTerm: 2, index: 2))
    XCTAssertEqual(drain(&raft).messagesAfterPersist.first?.reject, false, "as up-to-date wins")
  }

  /// Raft paper §5.1: a server that sees a higher term adopts it and becomes a follower.
  func testHigherTermTurnsLeaderIntoFollower_Section5_1() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster[1].step(Message(kind: .append, from: 2, to: 1, term: 5, logTerm: 0, index: 0))
    XCTAssertEqual(cluster[1].role, .follower)
    XCTAssertEqual(cluster[1].term, 5)
    XCTAssertEqual(cluster[1].leader, 2)
  }

  /// Thesis §9.6: a partitioned replica with PreVote does not inflate its term, so it cannot
  /// disrupt the group when it rejoins.
  func testPreVoteKeepsTermWhilePartitioned_Thesis9_6() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(3)
    for _ in 0..<100 {
      cluster[3].tick()
      cluster.stabilize()
    }
    XCTAssertEqual(cluster[3].term, 1, "pre-elections never won, so the term did not move")
    cluster.heal()
    cluster.tick(3)
    XCTAssertEqual(cluster.leaders, [1], "the rejoining replica did not depose the leader")
    XCTAssertEqual(cluster[1].term, 1)
  }

  /// Thesis §9.6: without PreVote, the same partition inflates the term.
  func testWithoutPreVoteTermInflates_Thesis9_6() {
    var cluster = TestCluster(voters: [1, 2, 3]) { $0.preVote = false }
    cluster.elect(1)
    cluster.isolate(3)
    for _ in 0..<100 {
      cluster[3].tick()
      cluster.stabilize()
    }
    XCTAssertGreaterThan(cluster[3].term, 3)
  }

  /// Thesis §6.2 (CheckQuorum): a leader that does not hear from a quorum within an election
  /// timeout steps down.
  func testCheckQuorumLeaderStepsDown_Thesis6_2() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.isolate(1)
    for _ in 0..<(2 * cluster[1].config.electionTicks + 1) {
      cluster[1].tick()
      cluster.stabilize()
    }
    XCTAssertEqual(cluster[1].role, .follower)
  }

  /// Thesis §6.2: with a quorum active, the leader stays.
  func testCheckQuorumLeaderStaysWithQuorum_Thesis6_2() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.tick(50)
    XCTAssertEqual(cluster.leaders, [1])
    XCTAssertEqual(cluster[1].term, 1)
  }

  /// Thesis §4.2.3: within an election timeout of hearing from the leader, votes are ignored.
  func testVotesIgnoredWhileLeaderIsLive_Thesis4_2_3() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster[2].step(Message(kind: .vote, from: 3, to: 2, term: 7, logTerm: 1, index: 100))
    XCTAssertEqual(cluster[2].term, 1, "the disruptive vote was ignored")
    XCTAssertEqual(cluster[2].leader, 1)
  }

  /// A single-voter group elects itself at once and commits its no-op after persisting.
  func testSingleVoterElectsItself() {
    var raft = makeRaft(id: 1, voters: [1])
    raft.campaign()
    XCTAssertEqual(raft.role, .leader)
    drain(&raft)
    XCTAssertEqual(raft.committed, 1, "the no-op commits once durable")
  }
}
