import Consensus
import KeyValueStore
import Platform
import RaftConsensus
import RaftCore
import XCTest

func forwardedWrite(
  _ engine: RaftConsensus, _ group: GroupID, _ key: String, _ value: String
) -> Result<WriteResult, ConsensusError> {
  waitForCompletion { engine.write(group, command: putCommand(key, value), forwarding: .toLeader, completion: $0) }
}

/// The revision a put was answered with, from the state machine's response.
func putRevision(_ written: WriteResult) throws -> UInt64? {
  guard case .applied(let results) = try KVCodec.decodeWriteOutcome(written.response), case .put(let revision)? = results.first
  else { return nil }
  return revision
}

/// Stands in for one node of a cluster (whose engine is stopped) on the in-memory network: sends
/// hand-made batches and collects the forwards sent to it, to see a leader's side of forwarding.
final class StandInNode: Sendable {
  let node: NodeID
  let transport: InMemoryTransport
  let received = Locked<[ForwardedProposal]>([])

  init(replacing index: Int, of cluster: TestCluster) {
    cluster.stop(index)
    node = cluster.peers[index].node
    transport = cluster.network.transport(for: node)
    transport.setReceiver { [received] bytes in
      guard let batch = try? WireCodec.decodeBatch(bytes) else { return XCTFail("undecodable batch") }
      received.withLock { $0 += batch.forwards }
    }
  }

  func send(_ forwards: [ForwardedProposal], to peer: Peer) {
    let batch = MessageBatch(fromNode: node.rawValue, toNode: peer.node.rawValue, messages: [], forwards: forwards)
    transport.send(batch: WireCodec.encode(batch), to: peer.node, endpoint: peer.endpoint)
  }

  /// The answers received to `requestIDs`, once all have come.
  func answers(to requestIDs: Set<UInt64>, timeout: TimeInterval = 5) -> [UInt64: ForwardedProposal.Body] {
    var found: [UInt64: ForwardedProposal.Body] = [:]
    _ = eventually(timeout: timeout) {
      found = received.withLock { forwards in
        Dictionary(
          forwards.filter { requestIDs.contains($0.requestID) }.map { ($0.requestID, $0.body) },
          uniquingKeysWith: { first, _ in first })
      }
      return found.count == requestIDs.count
    }
    XCTAssertEqual(Set(found.keys), requestIDs, "every forward is answered")
    return found
  }
}

/// Writes that reach a follower are handed to the leader inside the raft batches and answered by
/// the follower once it applied them (etcd's MsgProp; Raft paper §8: clients may contact any server).
final class ForwardingTests: XCTestCase {
  private let group = GroupID(.dataRegion, 1)

  func testAForwardedWriteCommitsIsAnsweredWithItsIndexAndIsReadableOnTheLeader() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    let written = try forwardedWrite(cluster.engine(follower), group, "colour", "green").get()
    XCTAssertEqual(try putRevision(written), written.index, "the follower's own apply outcome: a put at the write's index")
    let result = try waitForCompletion {
      cluster.engine(leader).read(group, query: getQuery("colour"), options: ReadOptions(), completion: $0)
    }.get()
    guard case .get(let entry?) = try KVCodec.decodeQueryResults(result.response).first else {
      return XCTFail("the leader does not have the forwarded write")
    }
    XCTAssertEqual(String(decoding: entry.value, as: UTF8.self), "green")
    XCTAssertEqual(entry.revision, written.index, "the leader applied it at the index the follower answered")
    XCTAssertEqual(metric(cluster.engine(follower), "caucus_raft_forwards_sent_total"), 1)
    XCTAssertEqual(metric(cluster.engine(follower), "caucus_raft_forwards_accepted_total"), 1)
    XCTAssertEqual(metric(cluster.engine(leader), "caucus_raft_forwards_proposed_for_peers_total"), 1)
    // At the leader, a forwarding write is an ordinary one.
    XCTAssertNoThrow(try forwardedWrite(cluster.engine(leader), group, "colour", "blue").get())
    XCTAssertEqual(metric(cluster.engine(leader), "caucus_raft_forwards_sent_total"), 0)
    // The plain write still refuses at a follower (`?forward=redirect|none` rely on it).
    guard case .notLeader(_, let hint)? = failure(of: write(cluster.engine(follower), group, "colour", "red")) else {
      return XCTFail("a plain write at a follower answers notLeader")
    }
    XCTAssertEqual(hint, cluster.peers[leader])
  }

  func testConcurrentForwardedWritesAreEachAnsweredOnceWithDistinctIndexes() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    let count = 200
    let answers = Locked<[[Result<WriteResult, ConsensusError>]]>(Array(repeating: [], count: count))
    for number in 0..<count {
      cluster.engine(follower).write(group, command: putCommand("k\(number)", "v\(number)"), forwarding: .toLeader) {
        result in answers.withLock { $0[number].append(result) }
      }
    }
    XCTAssertTrue(eventually(timeout: 10) { answers.withLock { $0.allSatisfy { !$0.isEmpty } } }, "every write is answered")
    let indexes = try answers.withLock { $0 }.map { try XCTUnwrap($0.first).get().index }
    XCTAssertEqual(Set(indexes).count, count, "each write has its own entry")
    XCTAssertEqual(try cluster.readFromLeader(group, "k0"), "v0")
    XCTAssertEqual(try cluster.readFromLeader(group, "k\(count - 1)"), "v\(count - 1)")
    // Stopping joins the loops: a completion called twice would have been by now.
    for node in 0..<3 { cluster.stop(node) }
    XCTAssertEqual(answers.withLock { $0.map(\.count) }, Array(repeating: 1, count: count), "answered exactly once")
  }

  /// The leader appends the forwarded write but cannot commit it (three of five nodes are cut
  /// off), then is cut off itself. Whatever the new leader does with that entry, the follower's
  /// answer must match: written only if it is in the log for good, a definite error only if not.
  func testAForwardedWriteAppendedByALeaderThatIsThenCutOffIsNeverAnsweredAsWrittenUnlessCommitted() throws {
    // A long election timeout keeps the leader (which checks its quorum) in office while it appends.
    let cluster = try TestCluster(nodes: 5) { options in options.electionTicks = 30 }
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let others = (0..<5).filter { $0 != leader }
    let follower = others[0]
    for node in others.dropFirst() { cluster.network.isolate(cluster.peers[node].node) }
    let outcome = Locked<Result<WriteResult, ConsensusError>?>(nil)
    cluster.engine(follower).write(group, command: putCommand("pending", "maybe"), forwarding: .toLeader) { result in
      outcome.withLock { $0 = result }
    }
    XCTAssertTrue(
      eventually(timeout: 5) { metric(cluster.engine(follower), "caucus_raft_forwards_accepted_total") == 1 },
      "the leader appended the write")
    XCTAssertNil(outcome.withLock { $0 }, "without a quorum nothing commits, so nothing is answered")
    cluster.network.isolate(cluster.peers[leader].node)
    for node in others.dropFirst() { cluster.network.heal(cluster.peers[node].node) }
    XCTAssertTrue(eventually(timeout: 10) { outcome.withLock { $0 } != nil }, "answered once the index is decided")
    cluster.network.heal(cluster.peers[leader].node)
    _ = try cluster.writeToLeader(group, "marker", "after")
    let value = try cluster.readFromLeader(group, "pending")
    switch try XCTUnwrap(outcome.withLock { $0 }) {
    case .success:
      XCTAssertEqual(value, "maybe", "answered as written: it must be in the log")
    case .failure(.timeout(indeterminate: true)):
      break  // either way
    case .failure(let error):
      XCTAssertNil(value, "answered \(error): it must never be written")
    }
  }

  /// A batch the transport drops before it leaves certainly did not reach the leader: its writes
  /// are sent again next turn, to whoever leads then, or answered as definitely not written —
  /// never left to time out as "maybe".
  func testAWriteWhoseBatchWasDroppedBeforeItLeftIsSentAgainOrDefinitelyRefused() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    // The follower still takes the cut-off node for the leader: its batches are dropped at once,
    // until it notices the leader is gone (then it knows none, or a new one).
    cluster.network.isolate(cluster.peers[leader].node)
    let started = Date()
    let outcome = forwardedWrite(cluster.engine(follower), group, "retried", "yes")
    XCTAssertLessThan(Date().timeIntervalSince(started), 3, "not left to the proposal timeout (5 s)")
    let value = try cluster.readFromLeader(group, "retried", excluding: [leader])
    switch outcome {
    case .success: XCTAssertEqual(value, "yes")
    case .failure(let error):
      XCTAssertEqual(error, .noLeader(group), "no leader to send it to: it never left")
      XCTAssertNil(value)
    }
  }

  func testAFollowerThatKnowsNoLeaderAnswersNoLeaderWithoutForwarding() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    cluster.network.isolate(cluster.peers[follower].node)
    XCTAssertTrue(eventually(timeout: 5) { cluster.engine(follower).leader(group) == nil }, "the cut-off node forgets the leader")
    XCTAssertEqual(failure(of: forwardedWrite(cluster.engine(follower), group, "k", "v")), .noLeader(group))
    XCTAssertEqual(metric(cluster.engine(follower), "caucus_raft_forwards_sent_total"), 0)
  }

  func testANodeThatDoesNotLeadRefusesAForwardNamingTheLeaderAndTheLeaderAcceptsIt() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    let standIn = StandInNode(replacing: (leader + 2) % 3, of: cluster)
    standIn.send(
      [ForwardedProposal(group: group.packed, requestID: 1, body: .proposal(data: putCommand("via", "stand-in")))],
      to: cluster.peers[follower])
    standIn.send(
      [
        ForwardedProposal(group: group.packed, requestID: 2, body: .proposal(data: putCommand("via", "stand-in"))),
        ForwardedProposal(
          group: GroupID(.dataRegion, 99).packed, requestID: 3, body: .proposal(data: putCommand("via", "nowhere"))),
      ], to: cluster.peers[leader])
    let answers = standIn.answers(to: [1, 2, 3])
    XCTAssertEqual(answers[1], .refused(.notLeader, leaderHint: cluster.peers[leader].node.rawValue))
    XCTAssertEqual(answers[3], .refused(.groupNotFound, leaderHint: 0))
    guard case .accepted(let index, let term)? = answers[2] else { return XCTFail("the leader takes it: \(answers)") }
    XCTAssertEqual(term, cluster.engine(leader).status(group)?.term)
    XCTAssertEqual(try cluster.readFromLeader(group, "via"), "stand-in")
    let result = try waitForCompletion {
      cluster.engine(leader).read(group, query: getQuery("via"), options: ReadOptions(), completion: $0)
    }.get()
    guard case .get(let entry?) = try KVCodec.decodeQueryResults(result.response).first else { return XCTFail("absent") }
    XCTAssertEqual(entry.revision, index, "appended where the answer said")
    XCTAssertEqual(metric(cluster.engine(follower), "caucus_raft_forwards_refused_for_peers_total"), 1)
  }

  /// Found by the cluster simulator: a batch the transport delivers twice must not append its
  /// forwarded writes twice (a compare-and-set applied, then refused on its duplicate, and the
  /// follower answered "refused"). The duplicate gets the first answer; the log grows once.
  func testADuplicatedForwardIsAppendedOnceAndAnsweredTheSame() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    _ = try cluster.writeToLeader(group, "before", "x")
    let standIn = StandInNode(replacing: (leader + 1) % 3, of: cluster)
    let lastBefore = try XCTUnwrap(cluster.engine(leader).status(group)).commitIndex
    let forward = ForwardedProposal(group: group.packed, requestID: 7, body: .proposal(data: putCommand("once", "v")))
    standIn.send([forward], to: cluster.peers[leader])
    let first = standIn.answers(to: [7])[7]
    standIn.received.withLock { $0 = [] }
    standIn.send([forward], to: cluster.peers[leader])
    let second = standIn.answers(to: [7])[7]
    guard case .accepted(let index, _)? = first else { return XCTFail("the leader takes it: \(String(describing: first))") }
    XCTAssertEqual(second, first, "the duplicate is answered with the first answer")
    XCTAssertEqual(index, lastBefore + 1)
    let after = try cluster.writeToLeader(group, "after", "y")
    XCTAssertEqual(after.index, index + 1, "nothing was appended for the duplicate")
  }

  func testALeaderTakesForwardsUpToItsPendingLimitsAndRefusesTheRestOverloaded() throws {
    let cluster = try TestCluster(nodes: 3) { options in options.pendingWritesMax = 8 }
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let standIn = StandInNode(replacing: (leader + 1) % 3, of: cluster)
    let requestIDs = Set(UInt64(1)...20)
    standIn.send(
      requestIDs.sorted().map {
        ForwardedProposal(group: group.packed, requestID: $0, body: .proposal(data: putCommand("k\($0)", "v")))
      }, to: cluster.peers[leader])
    let answers = standIn.answers(to: requestIDs)
    let accepted = answers.values.filter { if case .accepted = $0 { true } else { false } }.count
    XCTAssertEqual(accepted, 8, "one turn takes what the pending-write limit leaves")
    XCTAssertEqual(answers.values.filter { $0 == .refused(.overloaded, leaderHint: 0) }.count, 12)
  }

  /// Nagle's rule for forwards: while the leader owes this node answers, further writes wait for
  /// them (or for this node's next acknowledgement) instead of leaving in a batch of their own;
  /// the answers release them, and each write is answered once.
  func testWritesForALeaderThatOwesAnswersWaitForThemThenLeave() throws {
    let cluster = try TestCluster(nodes: 3) { options in
      options.forwardHoldTicksMax = 400  // 4 s: here only the answers release them
      options.electionTicks = 100  // the follower keeps its leader while that link is paused
    }
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    let (leaderNode, followerNode) = (cluster.peers[leader].node, cluster.peers[follower].node)
    cluster.network.pause(from: leaderNode, to: followerNode)
    let outcomes = Locked<[String: [Result<WriteResult, ConsensusError>]]>([:])
    func write(_ key: String) {
      cluster.engine(follower).write(group, command: putCommand(key, "v"), forwarding: .toLeader) { result in
        outcomes.withLock { $0[key, default: []].append(result) }
      }
    }
    func proposedAtLeader() -> Double { metric(cluster.engine(leader), "caucus_raft_forwards_proposed_for_peers_total") }
    write("first")
    XCTAssertTrue(eventually(timeout: 5) { proposedAtLeader() == 1 }, "the first leaves at once")
    write("second")
    XCTAssertTrue(
      eventually(timeout: 5) { metric(cluster.engine(follower), "caucus_raft_forwards_held_total") >= 1 },
      "the second waits: the answer to the first has not come")
    XCTAssertEqual(proposedAtLeader(), 1, "the second did not leave")
    cluster.network.resume(from: leaderNode, to: followerNode)
    XCTAssertTrue(eventually(timeout: 5) { outcomes.withLock { $0.count } == 2 }, "both are answered")
    XCTAssertEqual(proposedAtLeader(), 2)
    let answers = outcomes.withLock { $0 }
    let first = try XCTUnwrap(answers["first"]?.first).get()
    let second = try XCTUnwrap(answers["second"]?.first).get()
    XCTAssertLessThan(first.index, second.index)
    XCTAssertEqual(try cluster.readFromLeader(group, "second"), "v")
    for node in 0..<3 { cluster.stop(node) }
    XCTAssertEqual(outcomes.withLock { $0.values.map(\.count) }, [1, 1], "answered exactly once")
  }

  func testForwardedWritesCountAgainstTheFollowersPendingLimitAndAreEachAnswered() throws {
    let cluster = try TestCluster(nodes: 3) { options in options.pendingWritesMax = 4 }
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    let outcomes = Locked<[Result<WriteResult, ConsensusError>]>([])
    for number in 0..<200 {
      cluster.engine(follower).write(group, command: putCommand("k\(number)", "v"), forwarding: .toLeader) { result in
        outcomes.withLock { $0.append(result) }
      }
    }
    XCTAssertTrue(eventually(timeout: 10) { outcomes.withLock { $0.count } == 200 }, "every write is answered")
    let all = outcomes.withLock { $0 }
    XCTAssertGreaterThan(all.filter { failure(of: $0) == .overloaded(retryAfterMs: 100) }.count, 0)
    let indexes = all.compactMap { try? $0.get().index }
    XCTAssertGreaterThanOrEqual(indexes.count, 4)
    XCTAssertEqual(Set(indexes).count, indexes.count)
    // The slots come back once the writes are answered.
    XCTAssertNoThrow(try forwardedWrite(cluster.engine(follower), group, "after", "burst").get())
  }
}
