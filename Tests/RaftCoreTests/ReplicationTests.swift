import XCTest

@testable import RaftCore

final class ReplicationTests: XCTestCase {
  /// Raft paper §8 / §5.4.2: a new leader appends a no-op of its term, which commits.
  func testLeaderAppendsNoOpOnElection_Section8() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    XCTAssertEqual(cluster[1].lastIndex, 1)
    XCTAssertEqual(cluster[1].entry(at: 1), Entry(term: 1, index: 1))
    XCTAssertEqual(cluster[1].committed, 1)
    XCTAssertEqual(cluster.applied[2]?.map(\.index), [1])
  }

  /// Raft paper §5.3: proposals replicate and commit on a majority, and every replica applies them.
  func testProposalReplicatesAndCommits_Section5_3() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    let index = try cluster[1].propose([42])
    cluster.stabilize()
    for id: ReplicaID in [1, 2, 3] {
      XCTAssertEqual(cluster[id].committed, index)
      XCTAssertEqual(cluster.applied[id]?.last?.data, [42])
    }
  }

  /// Raft paper §5.3: a follower refuses to append when its log lacks the previous entry, and the
  /// leader then backs off until the logs match.
  func testFollowerRejectsMissingPrevious_Section5_3() {
    var raft = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 1), entries: entries([1]))
    raft.step(Message(kind: .append, from: 1, to: 2, term: 2, logTerm: 2, index: 5, entries: [], commit: 0))
    let response = drain(&raft).messagesAfterPersist.first!
    XCTAssertEqual(response.kind, .appendResponse)
    XCTAssertTrue(response.reject)
    XCTAssertEqual(response.rejectHint, 1, "the follower hints at its last index")
    XCTAssertEqual(response.logTerm, 1)
  }

  /// Raft paper §5.3: conflicting entries after the match point are replaced by the leader's.
  func testConflictingSuffixIsReplaced_Section5_3() {
    var raft = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 2), entries: entries([1, 2, 2]))
    let incoming = [Entry(term: 3, index: 2, data: [9]), Entry(term: 3, index: 3, data: [8])]
    raft.step(Message(kind: .append, from: 1, to: 2, term: 3, logTerm: 1, index: 1, entries: incoming, commit: 3))
    let ready = drain(&raft)
    XCTAssertEqual(ready.entries, incoming, "the host is told to overwrite from index 2")
    XCTAssertEqual(raft.term(at: 2), 3)
    XCTAssertEqual(raft.committed, 3)
  }

  /// Raft paper §5.4.2, Figure 8: a leader never commits an entry of an earlier term by counting
  /// replicas; it commits it only through an entry of its own term.
  func testOldTermEntryNotCommittedByCounting_Figure8() {
    // Leader 1 in term 3 with an entry from term 2 at index 2; its own no-op lost on the way.
    var leader = makeRaft(id: 1, voters: [1, 2, 3], hardState: HardState(term: 2, vote: 1), entries: entries([1, 2]))
    leader.campaign()  // pre-vote
    leader.step(Message(kind: .preVoteResponse, from: 2, to: 1, term: 3))
    leader.step(Message(kind: .voteResponse, from: 2, to: 1, term: 3))
    XCTAssertEqual(leader.role, .leader)
    XCTAssertEqual(leader.term, 3)
    drain(&leader)
    // Follower 2 acknowledges index 2 (the term-2 entry) but not the no-op at 3.
    leader.step(Message(kind: .appendResponse, from: 2, to: 1, term: 3, index: 2))
    drain(&leader)
    XCTAssertEqual(leader.committed, 0, "index 2 is on a majority but is from term 2: not committed")
    leader.step(Message(kind: .appendResponse, from: 2, to: 1, term: 3, index: 3))
    drain(&leader)
    XCTAssertEqual(leader.committed, 3, "the term-3 no-op commits, and index 2 with it")
  }

  /// The planted Figure 8 bug does commit by counting: the simulator must catch it (see
  /// SimulationTests), and this shows the switch really changes the rule.
  func testPlantedBugCommitsOldTermEntry_Figure8() {
    var leader = makeRaft(id: 1, voters: [1, 2, 3], hardState: HardState(term: 2, vote: 1), entries: entries([1, 2])) {
      $0.plantedBug = .commitPreviousTerm
    }
    leader.campaign()
    leader.step(Message(kind: .preVoteResponse, from: 2, to: 1, term: 3))
    leader.step(Message(kind: .voteResponse, from: 2, to: 1, term: 3))
    drain(&leader)
    leader.step(Message(kind: .appendResponse, from: 2, to: 1, term: 3, index: 2))
    drain(&leader)
    XCTAssertEqual(leader.committed, 2)
  }

  /// Thesis §3.5: rejection hints let the leader skip a whole divergent term in one round trip.
  func testFastBackOffSkipsConflictingTerm_Thesis3_5() {
    // Follower has 50 entries of term 2 that the leader (term 3) never had.
    var follower = makeRaft(
      id: 2, voters: [1, 2, 3], hardState: HardState(term: 2), entries: entries([1] + Array(repeating: 2, count: 50)))
    var leader = makeRaft(id: 1, voters: [1, 2, 3], hardState: HardState(term: 3), entries: entries([1, 3, 3]))
    leader.campaign()
    leader.step(Message(kind: .preVoteResponse, from: 3, to: 1, term: 4))
    leader.step(Message(kind: .voteResponse, from: 3, to: 1, term: 4))
    XCTAssertEqual(leader.role, .leader)
    var roundTrips = 0
    // The Ready that made it leader changed the term: its appends wait for the fsync.
    let elected = drain(&leader)
    var messages = (elected.messages + elected.messagesAfterPersist).filter { $0.to == 2 && $0.kind == .append }
    while !messages.isEmpty && roundTrips < 20 {
      roundTrips += 1
      for message in messages { follower.step(message) }
      let responses = drain(&follower).messagesAfterPersist
      for response in responses { leader.step(response) }
      messages = drain(&leader).messages.filter { $0.to == 2 && $0.kind == .append }
      if follower.lastIndex == leader.lastIndex && follower.term(at: follower.lastIndex) == 4 { break }
    }
    XCTAssertLessThanOrEqual(roundTrips, 4, "one probe, one hinted back-off, then the entries")
    XCTAssertEqual(follower.lastIndex, 4)
    XCTAssertEqual(follower.term(at: 2), 3)
  }

  /// Flow control (thesis §10.2.2): at most `maxInflightMessages` appends in flight per follower.
  func testInflightWindowBoundsPipelining_Thesis10_2_2() throws {
    var cluster = TestCluster(voters: [1, 2, 3]) {
      $0.maxInflightMessages = 2
      $0.maxEntriesBytesPerMessage = 1
    }
    cluster.elect(1)
    for value in 0..<10 { try cluster[1].propose([UInt8(value)]) }
    cluster.flush()
    let toTwo = cluster.inFlight.filter { $0.to == 2 && $0.kind == .append && !$0.entries.isEmpty }
    XCTAssertEqual(toTwo.count, 2, "the window holds two appends")
    XCTAssertTrue(toTwo.allSatisfy { $0.entries.count == 1 }, "one entry per message at a 1-byte limit")
    cluster.stabilize()
    XCTAssertEqual(cluster[2].lastIndex, 11, "acknowledgements reopen the window until all arrive")
  }

  /// Proposals taken in one step sequence leave as one append per follower (not one per entry),
  /// each within `maxEntriesBytesPerMessage`, and replicate as before.
  func testAppendsOfOneReadyMergePerFollower() throws {
    var cluster = TestCluster(voters: [1, 2, 3]) { $0.maxEntriesBytesPerMessage = 3 * (Entry.headerBytes + 1) }
    cluster.elect(1)
    for value in 0..<5 { try cluster[1].propose([UInt8(value)]) }
    cluster.flush()
    for follower: ReplicaID in [2, 3] {
      let appends = cluster.inFlight.filter { $0.to == follower && $0.kind == .append }
      XCTAssertEqual(appends.map(\.entries.count), [3, 2], "five entries in two messages at a three-entry limit")
      XCTAssertEqual(appends.flatMap(\.entries).map(\.index), Array(2...6), "contiguous, in order")
      XCTAssertEqual(appends.last?.index, 4, "the second continues where the first ends")
    }
    cluster.stabilize()
    for id: ReplicaID in [1, 2, 3] { XCTAssertEqual(cluster.applied[id]?.map(\.index), Array(1...6)) }
  }

  /// A follower stepping several appends before its Ready answers once, with the highest index;
  /// a rejection is never folded into an acceptance.
  func testAcknowledgementsOfOneReadyMerge() {
    var raft = makeRaft(id: 2, voters: [1, 2, 3], hardState: HardState(term: 1), entries: entries([1]))
    for index: LogIndex in 1...3 {
      raft.step(
        Message(
          kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: index,
          entries: [Entry(term: 1, index: index + 1, data: [UInt8(index)])], commit: 1))
    }
    let responses = drain(&raft).messagesAfterPersist
    XCTAssertEqual(responses.count, 1)
    XCTAssertEqual(responses.first?.index, 4)
    XCTAssertEqual(responses.first?.reject, false)
    // A gap is rejected; the acceptance after it stays a separate message.
    raft.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 9, entries: [], commit: 1))
    raft.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 4, entries: [], commit: 1))
    XCTAssertEqual(drain(&raft).messagesAfterPersist.map(\.reject), [true, false])
  }

  /// etcd's MustSync: a Ready whose only durable change is the commit index (volatile state in
  /// Raft, Figure 2) need not be fsynced; entries, a new term or a vote must be.
  func testOnlyACommitIndexChangeNeedsNoSync() throws {
    var follower = makeRaft(id: 2, voters: [1, 2, 3])
    follower.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 0, index: 0, entries: entries([1]), commit: 0))
    let appended = drain(&follower)
    XCTAssertTrue(appended.mustSync, "new entries and a new term")
    XCTAssertEqual(appended.messagesAfterPersist.first?.kind, .appendResponse)
    follower.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 1, entries: [], commit: 1))
    let committed = drain(&follower)
    XCTAssertEqual(committed.hardState?.commit, 1)
    XCTAssertFalse(committed.mustSync, "only the commit index moved")
    XCTAssertEqual(committed.committedEntries.map(\.index), [1], "and it is applied without waiting for a sync")
    // A transfer's vote (context 1) is granted although the leader was heard from just now.
    follower.step(Message(kind: .vote, from: 3, to: 2, term: 2, logTerm: 1, index: 1, context: 1))
    let voted = drain(&follower)
    XCTAssertEqual(voted.hardState?.vote, 3)
    XCTAssertTrue(voted.mustSync, "a vote must be durable before it is sent")
  }

  /// An append that starts below the follower's commit index (as a folded one may) still brings
  /// the entries after it: those through the commit index are the follower's already.
  func testAppendStartingBelowTheCommitIndexAppendsWhatFollowsIt() {
    var follower = makeRaft(
      id: 2, voters: [1, 2, 3], hardState: HardState(term: 1, commit: 3), entries: entries([1, 1, 1]))
    let incoming = (2...5).map { Entry(term: 1, index: LogIndex($0), data: [UInt8($0 - 1)]) }
    follower.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 1, entries: incoming, commit: 5))
    let ready = drain(&follower)
    XCTAssertEqual(ready.entries.map(\.index), [4, 5], "only what follows the commit index is new")
    XCTAssertEqual(ready.messagesAfterPersist.map(\.index), [5])
    XCTAssertEqual(follower.committed, 5)
    // Nothing past the commit index: acknowledged at it, as before.
    follower.step(Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 1, entries: Array(incoming.prefix(1)), commit: 5))
    XCTAssertEqual(drain(&follower).messagesAfterPersist.map(\.index), [5])
  }

  /// Flow control in bytes: a byte-limited window pauses replication the same way.
  func testInflightBytesBoundPipelining() throws {
    var cluster = TestCluster(voters: [1, 2]) {
      $0.maxInflightBytes = 100
      $0.maxEntriesBytesPerMessage = 60
    }
    cluster.elect(1)
    for _ in 0..<10 { try cluster[1].propose(Array(repeating: 7, count: 30)) }
    cluster.flush()
    let bytes = cluster.inFlight.filter { $0.to == 2 && $0.kind == .append }.flatMap(\.entries).reduce(0) {
      $0 + $1.sizeBytes
    }
    XCTAssertLessThanOrEqual(bytes, 100 + 60, "at most one message beyond the byte window")
    cluster.stabilize()
    XCTAssertEqual(cluster[2].lastIndex, 11)
  }

  /// `maxUncommittedEntriesBytes`: a leader without its quorum stops accepting proposals.
  func testUncommittedBytesLimitRefusesProposals() throws {
    var cluster = TestCluster(voters: [1, 2, 3]) { $0.maxUncommittedEntriesBytes = 100 }
    cluster.elect(1)
    cluster.isolate(1)
    try cluster[1].propose(Array(repeating: 1, count: 60))
    XCTAssertThrowsError(try cluster[1].propose(Array(repeating: 1, count: 60))) { error in
      XCTAssertEqual(error as? ProposalError, .uncommittedBytesExceeded(limit: 100))
    }
  }

  /// Proposals at a follower are refused with the leader's id, for the host to forward.
  func testFollowerRefusesProposalNamingLeader() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    XCTAssertThrowsError(try cluster[2].propose([1])) { error in
      XCTAssertEqual(error as? ProposalError, .notLeader(leader: 1))
    }
  }

  /// The Ready contract: entries and hard state to persist, a leader's appends may go early,
  /// acknowledgements only after persistence, committed entries once committed.
  func testReadyContractSeparatesEarlyAndLateMessages() throws {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    try cluster[1].propose([5])
    var leader = cluster[1]
    let ready = leader.ready()
    XCTAssertEqual(ready.entries.map(\.data), [[5]])
    XCTAssertTrue(ready.messages.allSatisfy { $0.kind == .append })
    XCTAssertTrue(ready.messagesAfterPersist.isEmpty)
    leader.advance(ready)
    var follower = cluster[2]
    for message in ready.messages where message.to == 2 { follower.step(message) }
    let followerReady = follower.ready()
    XCTAssertEqual(followerReady.entries.map(\.data), [[5]])
    XCTAssertTrue(followerReady.messages.isEmpty)
    XCTAssertEqual(followerReady.messagesAfterPersist.map(\.kind), [.appendResponse])
    follower.advance(followerReady)
  }

  /// A restarted replica rebuilds its state from what it persisted (Raft paper Figure 2).
  func testRestartFromPersistedState_Figure2() {
    var raft = makeRaft(id: 1, voters: [1, 2, 3], hardState: HardState(term: 4, vote: 2, commit: 2), entries: entries([1, 2, 4]))
    XCTAssertEqual(raft.term, 4)
    XCTAssertEqual(raft.vote, 2)
    XCTAssertEqual(raft.committed, 2)
    XCTAssertEqual(raft.applied, 0)
    let ready = drain(&raft)
    XCTAssertEqual(ready.committedEntries.map(\.index), [1, 2], "committed entries are applied again")
    XCTAssertNil(ready.hardState, "nothing changed since the restart")
  }
}

final class HostileInputTests: XCTestCase {
  /// An acknowledgement beyond the leader's log (corrupt or hostile) is ignored, not trusted.
  func testAcknowledgementBeyondLastIndexIsIgnored() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster[1].step(Message(kind: .appendResponse, from: 2, to: 1, term: 1, index: LogIndex.max))
    cluster.stabilize()
    XCTAssertEqual(cluster[1].status.progress[2]?.match, 1)
    XCTAssertEqual(cluster[1].committed, 1)
  }

  /// Decoded garbage that happens to parse never reaches a state the core cannot handle: stale
  /// terms, unknown replicas and messages addressed elsewhere are dropped.
  func testMessagesForOthersOrFromStrangersAreDropped() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster[1].step(Message(kind: .appendResponse, from: 9, to: 1, term: 1, index: 1))
    cluster[1].step(Message(kind: .append, from: 2, to: 7, term: 9))
    cluster.stabilize()
    XCTAssertEqual(cluster.leaders, [1])
    XCTAssertEqual(cluster[1].term, 1)
  }
}
