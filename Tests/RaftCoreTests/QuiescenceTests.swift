import XCTest

@testable import RaftCore

/// Quiescence (`Raft.quiesce`): an idle group stops ticking and heartbeating, anything that
/// needs it wakes it, and a follower whose leader's node died elects another.
final class QuiescenceTests: XCTestCase {
  private static let quietTicks = 3

  /// Three voters, 1 leading, one command committed everywhere.
  private func activeCluster() -> TestCluster {
    var cluster = TestCluster(voters: [1, 2, 3]) { $0.quiesceAfterTicks = Self.quietTicks }
    cluster.elect(1)
    _ = try! cluster[1].propose([7])
    cluster.stabilize()
    return cluster
  }

  private func quiesced() -> TestCluster {
    var cluster = activeCluster()
    cluster.tick(Self.quietTicks)
    XCTAssertTrue(cluster[1].quiesce(unreachable: { _ in false }))
    cluster.stabilize()
    for id: ReplicaID in [1, 2, 3] { XCTAssertTrue(cluster[id].isQuiesced, "replica \(id) quiesced") }
    return cluster
  }

  func testIdleLeaderQuiescesAfterTheQuietPeriodAndTheGroupFallsSilent() {
    var cluster = activeCluster()
    cluster.tick(Self.quietTicks - 1)
    XCTAssertFalse(cluster[1].quiesce(unreachable: { _ in false }), "the quiet period has not passed")
    cluster.tick(1)
    XCTAssertTrue(cluster[1].quiesce(unreachable: { _ in false }))
    cluster.flush()
    XCTAssertEqual(cluster.inFlight.map(\.kind), [.quiesce, .quiesce])
    XCTAssertEqual(cluster.inFlight.map(\.commit), [2, 2], "the commit index travels with it (no-op and command)")
    cluster.stabilize()
    let term = cluster[1].term
    for id: ReplicaID in [1, 2, 3] {
      XCTAssertTrue(cluster[id].isQuiesced, "replica \(id)")
      XCTAssertEqual(cluster[id].committed, 2, "replica \(id)")
    }
    // Twenty election timeouts of a host's ticks: nothing is sent, nobody campaigns.
    for _ in 0..<200 {
      cluster.tick(1)
      XCTAssertTrue(cluster.inFlight.isEmpty)
    }
    XCTAssertEqual(cluster.leaders, [1])
    XCTAssertEqual([1, 2, 3].map { cluster[$0].term }, [term, term, term])
  }

  func testQuiescenceIsOffByDefaultAndNeedsALeader() {
    var cluster = TestCluster(voters: [1, 2, 3])
    cluster.elect(1)
    cluster.tick(50)
    XCTAssertFalse(cluster[1].quiesce(unreachable: { _ in false }), "quiesceAfterTicks 0: never")
    var quiet = activeCluster()
    quiet.tick(Self.quietTicks)
    XCTAssertFalse(quiet[2].quiesce(unreachable: { _ in false }), "a follower does not quiesce on its own")
  }

  func testProposalReadAndTransferWakeTheGroup() throws {
    var cluster = quiesced()
    _ = try cluster[1].propose([8])
    XCTAssertFalse(cluster[1].isQuiesced)
    cluster.stabilize()
    for id: ReplicaID in [1, 2, 3] {
      XCTAssertFalse(cluster[id].isQuiesced, "the append woke replica \(id)")
      XCTAssertEqual(cluster[id].committed, 3, "replica \(id)")
    }

    var reading = quiesced()
    try reading[1].readIndex(context: 42)
    reading.stabilize()
    XCTAssertEqual(reading.readStates[1]?.map(\.context), [42], "the read round's heartbeats woke the followers")

    var transferring = quiesced()
    try transferring[1].transferLeadership(to: 2)
    transferring.stabilize()
    XCTAssertEqual(transferring.leaders, [2])
  }

  func testLaggingFollowerKeepsTheLeaderAwakeUnlessItsNodeIsDown() throws {
    var cluster = activeCluster()
    cluster.isolate(3)
    _ = try cluster[1].propose([8])
    cluster.stabilize()
    cluster.tick(Self.quietTicks)
    XCTAssertFalse(cluster[1].quiesce(unreachable: { _ in false }), "replica 3 lacks index 3")
    XCTAssertTrue(cluster[1].quiesce(unreachable: { $0 == 3 }), "replica 3's node is down: it is not waited for")
    // 3 comes back before the quiesce reaches it: it does not hold the leader's last entry, so it
    // answers with a rejection, which wakes the leader, which catches it up.
    cluster.heal()
    cluster.stabilize()
    XCTAssertFalse(cluster[1].isQuiesced)
    XCTAssertFalse(cluster[3].isQuiesced)
    XCTAssertEqual(cluster[3].committed, 3)
    XCTAssertEqual(cluster[3].lastIndex, 3)
  }

  func testNoQuiescenceWithoutAReachableQuorum() {
    var cluster = activeCluster()
    cluster.tick(Self.quietTicks)
    XCTAssertFalse(cluster[1].quiesce(unreachable: { $0 != 1 }), "the leader keeps ticking, so CheckQuorum can depose it")
  }

  func testTrailingHeartbeatResponsesDoNotWakeTheLeader() {
    var cluster = activeCluster()
    cluster.tick(Self.quietTicks)
    // One more heartbeat round, whose responses are still on their way when the leader quiesces.
    cluster[1].tick()
    cluster.flush()
    let heartbeats = cluster.inFlight
    cluster.inFlight = []
    XCTAssertEqual(heartbeats.map(\.kind), [.heartbeat, .heartbeat])
    for message in heartbeats { cluster[message.to].step(message) }
    cluster.flush()
    let responses = cluster.inFlight
    cluster.inFlight = []
    XCTAssertEqual(responses.map(\.kind), [.heartbeatResponse, .heartbeatResponse])
    XCTAssertTrue(cluster[1].quiesce(unreachable: { _ in false }))
    for message in responses { cluster[1].step(message) }
    XCTAssertTrue(cluster[1].isQuiesced)
    cluster.stabilize()
    for id: ReplicaID in [1, 2, 3] { XCTAssertTrue(cluster[id].isQuiesced, "replica \(id)") }
  }

  func testQuiescedFollowerKeepsItsLeaseButAQuiescedLeaderWakesForACandidate() {
    var cluster = quiesced()
    let term = cluster[1].term
    // Replica 3 lost track of the leader (say it restarted) and campaigns.
    cluster[3].wake(leaderLost: true)
    for _ in 0..<30 where cluster[3].role == .follower { cluster[3].tick() }
    cluster.flush()
    XCTAssertEqual(Set(cluster.inFlight.map(\.kind)), [.preVote])
    cluster.stabilize()
    XCTAssertTrue(cluster[2].isQuiesced, "a quiesced follower ignores the pre-vote: its leader's node is live")
    XCTAssertFalse(cluster[1].isQuiesced, "the leader woke")
    XCTAssertEqual(cluster.leaders, [1])
    // Its next heartbeat brings replica 3 back.
    cluster.tick(1)
    XCTAssertEqual(cluster[3].role, .follower)
    XCTAssertEqual(cluster[3].leader, 1)
    XCTAssertEqual([1, 2, 3].map { cluster[$0].term }, [term, term, term])
  }

  /// A leader that restarted comes back a follower and campaigns; its quiesced followers had no
  /// election timeout of its silence to let pass, and must not hold its old lease against it.
  func testQuiescedFollowersGrantTheirOwnLeaderAPreVote() {
    let cluster = quiesced()
    let (term, lastIndex, lastTerm) = (cluster[1].term, cluster[1].lastIndex, cluster[1].lastTerm)
    var follower = cluster[2]
    follower.step(Message(kind: .preVote, from: 1, to: 2, term: term + 1, logTerm: lastTerm, index: lastIndex))
    XCTAssertFalse(follower.isQuiesced)
    XCTAssertEqual(follower.leader, 0, "its leader is gone")
    let ready = follower.ready()
    XCTAssertEqual(
      (ready.messages + ready.messagesAfterPersist).map { "\($0.kind) \($0.to) reject=\($0.reject)" },
      ["preVoteResponse 1 reject=false"])
  }

  /// The wake counts the node's silence as the election timeout that already passed: they
  /// campaign within one more (a split vote, as any election may have, costs another).
  func testFollowersWhoseLeaderDiedElectAnother() {
    var cluster = quiesced()
    let term = cluster[1].term
    cluster.isolate(1)
    cluster[2].wake(leaderLost: true)
    cluster[3].wake(leaderLost: true)
    XCTAssertEqual(cluster[2].leader, 0)
    var ticks = 0
    while cluster.leaders.filter({ $0 != 1 }).isEmpty && ticks < 4 * 10 {
      cluster.tick(1, only: [2, 3])
      ticks += 1
    }
    let newLeaders = cluster.leaders.filter { $0 != 1 }
    XCTAssertEqual(newLeaders.count, 1, "after \(ticks) ticks")
    XCTAssertGreaterThan(newLeaders.first.map { cluster[$0].term } ?? 0, term)
  }

  /// A corrupt quiesce (a commit index past the entry it names) is dropped, not trusted.
  func testAQuiesceCommittingPastItsOwnIndexIsIgnored() {
    var cluster = activeCluster()
    let (term, lastIndex, lastTerm) = (cluster[1].term, cluster[1].lastIndex, cluster[1].lastTerm)
    var follower = cluster[2]
    follower.step(
      Message(kind: .quiesce, from: 1, to: 2, term: term, logTerm: lastTerm, index: lastIndex - 1, commit: lastIndex + 5))
    XCTAssertFalse(follower.isQuiesced)
    XCTAssertLessThanOrEqual(follower.committed, lastIndex)
  }

  func testQuiesceFromAnOlderTermIsAnsweredWithTheNewTerm() {
    var cluster = activeCluster()
    cluster.tick(Self.quietTicks)
    XCTAssertTrue(cluster[1].quiesce(unreachable: { _ in false }))
    cluster.flush()
    let stale = cluster.inFlight.first { $0.to == 2 }!
    cluster.inFlight = []
    cluster.isolate(1)
    cluster[2].wake(leaderLost: true)
    cluster[3].wake(leaderLost: true)
    for _ in 0..<40 where cluster.leaders.allSatisfy({ $0 == 1 }) { cluster.tick(1, only: [2, 3]) }
    XCTAssertTrue(cluster.leaders.contains { $0 != 1 }, "2 and 3 elected a new leader")
    var receiver = cluster[2]
    receiver.step(stale)
    XCTAssertFalse(receiver.isQuiesced, "an old leader's quiesce does not quiesce a newer term")
    let ready = receiver.ready()
    XCTAssertTrue(
      (ready.messages + ready.messagesAfterPersist).contains {
        $0.kind == .appendResponse && $0.term > stale.term && $0.to == 1
      })
  }
}
