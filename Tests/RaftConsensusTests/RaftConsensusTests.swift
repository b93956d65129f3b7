import Consensus
import Foundation
import KeyValueStore
import Platform
import RaftConsensus
import RaftCore
import XCTest

/// Several `RaftConsensus` engines in one process over an `InMemoryNetwork`, each with its own
/// data directory, so nodes can be partitioned, stopped and restarted.
final class TestCluster {
  let network = InMemoryNetwork()
  /// Every node, members first, then the spares.
  let peers: [Peer]
  /// The nodes `createGroup` makes a group over; the spares run but host nothing until they join.
  let members: [Peer]
  let directories: [String]
  var engines: [RaftConsensus?]
  let options: RaftConsensusOptions

  init(nodes: Int, spares: Int = 0, configure: (inout RaftConsensusOptions) -> Void = { _ in }) throws {
    let total = nodes + spares
    peers = (1...total).map { Peer(node: NodeID(UInt64($0)), endpoint: Endpoint(host: "127.0.0.1", port: UInt16(41_000 + $0))) }
    members = Array(peers.prefix(nodes))
    let base = NSTemporaryDirectory() + "caucus-raft-\(UUID().uuidString.prefix(8))"
    directories = (1...total).map { base + "/node-\($0)" }
    engines = Array(repeating: nil, count: total)
    var options = RaftConsensusOptions()
    options.tickIntervalMs = 10
    options.electionTicks = 10
    options.heartbeatTicks = 1
    options.proposalTimeoutMs = 5_000
    configure(&options)
    self.options = options
    for node in 0..<total { try start(node) }
  }

  deinit {
    for engine in engines { engine?.stop() }
    if let first = directories.first {
      try? FileManager.default.removeItem(atPath: (first as NSString).deletingLastPathComponent)
    }
  }

  /// Starts (or restarts) node `index` (0-based) from its data directory.
  func start(_ index: Int) throws {
    precondition(engines[index] == nil, "node \(index + 1) is running")
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    var options = self.options
    options.seed = UInt64(index + 1) &* 7_919
    let engine = RaftConsensus(
      config: ConsensusConfig(localPeer: peers[index], dataDirectory: directories[index], registry: registry),
      options: options, transport: network.transport(for: peers[index].node))
    try engine.start()
    engines[index] = engine
  }

  func stop(_ index: Int) {
    engines[index]?.stop()
    engines[index] = nil
  }

  func engine(_ index: Int) -> RaftConsensus { engines[index]! }

  var running: [RaftConsensus] { engines.compactMap { $0 } }

  func createGroup(_ group: GroupID) throws {
    for engine in engines.prefix(members.count).compactMap({ $0 }) {
      try waitForCompletion { engine.createPeer(group, peers: self.members, completion: $0) }.get()
    }
  }

  /// The index of the node every running node that hosts `group` (outside `excluding`) agrees
  /// leads it, once exactly one of them claims it.
  func waitForLeader(
    _ group: GroupID, excluding: Set<Int> = [], timeout: TimeInterval = 10, file: StaticString = #filePath,
    line: UInt = #line
  ) -> Int? {
    var found: Int?
    let agreed = eventually(timeout: timeout) {
      let candidates = (0..<self.engines.count).filter {
        !excluding.contains($0) && self.engines[$0]?.status(group) != nil
      }
      let leaders = candidates.filter { self.engines[$0]!.isLeader(group) }
      guard leaders.count == 1 else { return false }
      let leader = self.peers[leaders[0]]
      guard candidates.allSatisfy({ self.engines[$0]!.leader(group) == leader }) else { return false }
      found = leaders[0]
      return true
    }
    if !agreed { XCTFail("no single agreed leader of \(group) within \(timeout) s", file: file, line: line) }
    return found
  }
}

extension TestCluster {
  /// Writes through whichever node leads `group`, retrying while leadership moves (a stalled
  /// machine can cost a leader its lease): for tests about what happens to acknowledged writes.
  func writeToLeader(
    _ group: GroupID, _ key: String, _ value: String, excluding: Set<Int> = [], timeout: TimeInterval = 10
  ) throws -> WriteResult {
    try retryingOnLeaderChange(timeout: timeout) { leader in
      try write(self.engine(leader), group, key, value).get()
    } leader: {
      self.waitForLeader(group, excluding: excluding)
    }
  }

  /// A linearizable read through whichever node leads `group`, retrying while leadership moves.
  func readFromLeader(
    _ group: GroupID, _ key: String, excluding: Set<Int> = [], timeout: TimeInterval = 10
  ) throws -> String? {
    try retryingOnLeaderChange(timeout: timeout) { leader in try read(self.engine(leader), group, key) } leader: {
      self.waitForLeader(group, excluding: excluding)
    }
  }

  private func retryingOnLeaderChange<Value>(
    timeout: TimeInterval, _ body: (Int) throws -> Value, leader: () -> Int?
  ) throws -> Value {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
      guard let found = leader() else { throw ConsensusError.timeout(indeterminate: false) }
      do {
        return try body(found)
      } catch let error as ConsensusError {
        guard Date() < deadline else { throw error }
        switch error {
        case .notLeader, .noLeader, .timeout: continue
        default: throw error
        }
      }
    }
  }
}

/// Polls `condition` until it holds or `timeout` passes; says whether it held.
func eventually(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
  let deadline = Date().addingTimeInterval(timeout)
  while Date() < deadline {
    if condition() { return true }
    usleep(2_000)
  }
  return condition()
}

func putCommand(_ key: String, _ value: String) -> [UInt8] {
  KVCodec.encode(KVCommand(operations: [.put(key: Array(key.utf8), value: Array(value.utf8), precondition: .none)]))
}

func getQuery(_ key: String) -> [UInt8] { KVCodec.encode(queries: [.get(key: Array(key.utf8))]) }

func decodeValue(_ response: [UInt8]) throws -> String? {
  let results = try KVCodec.decodeQueryResults(response)
  guard results.count == 1, case .get(let entry) = results[0] else {
    throw ConsensusError.invalidRequest("unexpected query result \(results)")
  }
  return entry.map { String(decoding: $0.value, as: UTF8.self) }
}

func write(_ engine: RaftConsensus, _ group: GroupID, _ key: String, _ value: String) -> Result<WriteResult, ConsensusError> {
  waitForCompletion { engine.write(group, command: putCommand(key, value), completion: $0) }
}

func read(
  _ engine: RaftConsensus, _ group: GroupID, _ key: String, _ options: ReadOptions = ReadOptions()
) throws -> String? {
  let result = try waitForCompletion { engine.read(group, query: getQuery(key), options: options, completion: $0) }.get()
  return try decodeValue(result.response)
}

func failure<Value>(of result: Result<Value, ConsensusError>) -> ConsensusError? {
  if case .failure(let error) = result { return error }
  return nil
}

func metric(_ engine: RaftConsensus, _ name: String) -> Double { metric(engine.prometheusMetrics(), name) }

/// Each named counter summed over the running nodes, every node's read from one snapshot.
func metricTotals(_ cluster: TestCluster, _ names: String...) -> [Double] {
  cluster.running.reduce(into: Array(repeating: 0, count: names.count)) { totals, engine in
    let text = engine.prometheusMetrics()
    for (position, name) in names.enumerated() { totals[position] += metric(text, name) }
  }
}

/// One sample from a metrics text, so several samples can come from one consistent snapshot.
func metric(_ text: String, _ name: String) -> Double {
  for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
    return Double(line.split(separator: " ")[1])!
  }
  return -1
}

final class RaftConsensusTests: XCTestCase {
  private let group = GroupID(.dataRegion, 1)

  func testGroupOnThreeNodesElectsExactlyOneLeader() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let status = try XCTUnwrap(cluster.engine(leader).status(group))
    XCTAssertEqual(status.role, .leader)
    XCTAssertEqual(status.protocolName, "raft")
    XCTAssertEqual(status.peers.map(\.peer), cluster.peers)
    for follower in (0..<3) where follower != leader {
      XCTAssertEqual(cluster.engine(follower).status(group)?.role, .follower)
      XCTAssertEqual(cluster.engine(follower).status(group)?.term, status.term)
      XCTAssertEqual(cluster.engine(follower).allGroupIDs(), [group])
      XCTAssertTrue(cluster.engine(follower).isReady)
    }
  }

  func testWriteOnLeaderIsReadableOnBothFollowers() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    XCTAssertNotNil(cluster.waitForLeader(group))
    let written = try cluster.writeToLeader(group, "color", "blue")
    guard case .applied = try KVCodec.decodeWriteOutcome(written.response) else {
      return XCTFail("the write was not applied: \(written)")
    }
    for node in 0..<3 {
      let value = try read(
        cluster.engine(node), group, "color", ReadOptions(consistency: .stale, minIndex: written.index, waitMs: 5_000))
      XCTAssertEqual(value, "blue", "node \(node + 1)")
    }
    XCTAssertEqual(try cluster.readFromLeader(group, "color"), "blue", "linearizable read on the leader")
  }

  func testWriteOrLinearizableReadOnFollowerAnswersNotLeaderNamingTheLeader() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    // Checked in a window where leadership stayed put (a stalled disk can move it in between).
    var checked = false
    for _ in 0..<5 where !checked {
      let leader = try XCTUnwrap(cluster.waitForLeader(group))
      let term = cluster.engine(leader).status(group)?.term
      let follower = (leader + 1) % 3
      let written = write(cluster.engine(follower), group, "k", "v")
      let readError = failure(of: Result { try read(cluster.engine(follower), group, "k") }.mapError { $0 as! ConsensusError })
      guard cluster.waitForLeader(group) == leader, cluster.engine(leader).status(group)?.term == term else { continue }
      XCTAssertEqual(failure(of: written), .notLeader(group, leader: cluster.peers[leader]))
      XCTAssertEqual(readError, .notLeader(group, leader: cluster.peers[leader]))
      checked = true
    }
    XCTAssertTrue(checked, "leadership kept moving")
    XCTAssertEqual(
      write(cluster.engine(0), GroupID(.dataRegion, 99), "k", "v"), .failure(.groupNotFound(GroupID(.dataRegion, 99))))
  }

  func testPartitionedLeaderIsReplacedAndWritesResume() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let oldLeader = try XCTUnwrap(cluster.waitForLeader(group))
    let before = try write(cluster.engine(oldLeader), group, "before", "1").get()
    cluster.network.isolate(cluster.peers[oldLeader].node)
    let newLeader = try XCTUnwrap(cluster.waitForLeader(group, excluding: [oldLeader]))
    XCTAssertNotEqual(newLeader, oldLeader)
    let after = try cluster.writeToLeader(group, "after", "2", excluding: [oldLeader])
    XCTAssertGreaterThan(after.index, before.index)
    XCTAssertEqual(try cluster.readFromLeader(group, "before", excluding: [oldLeader]), "1")
    // Healed, the old leader follows the new one and catches up.
    cluster.network.heal(cluster.peers[oldLeader].node)
    let caughtUp = try read(
      cluster.engine(oldLeader), group, "after", ReadOptions(consistency: .stale, minIndex: after.index, waitMs: 5_000))
    XCTAssertEqual(caughtUp, "2")
    XCTAssertNotNil(cluster.waitForLeader(group))
  }

  /// A write pending at a leader cut off from its quorum is answered "outcome unknown" once the
  /// leader steps down and two election timeouts pass, well before the proposal timeout.
  func testAWritePendingAtALeaderThatLostItsQuorumIsAnsweredIndeterminateSoon() throws {
    let cluster = try TestCluster(nodes: 3) { $0.proposalTimeoutMs = 30_000 }
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    cluster.network.isolate(cluster.peers[leader].node)
    let started = Date()
    let outcome = Locked<Result<WriteResult, ConsensusError>?>(nil)
    cluster.engine(leader).write(group, command: putCommand("cut-off", "1")) { result in outcome.withLock { $0 = result } }
    // Election timeout 100 ms: the leader steps down (CheckQuorum) within about one, then two more.
    XCTAssertTrue(eventually(timeout: 10) { outcome.withLock { $0 } != nil }, "the write is answered")
    XCTAssertEqual(outcome.withLock { $0 }, .failure(.timeout(indeterminate: true)))
    XCTAssertLessThan(Date().timeIntervalSince(started), 10, "answered long before the 30 s proposal timeout")
  }

  func testRestartOfAllNodesKeepsEveryAcknowledgedWrite() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    var acknowledged: [String: String] = [:]
    for number in 0..<20 {
      _ = try cluster.writeToLeader(group, "key-\(number)", "value-\(number)")
      acknowledged["key-\(number)"] = "value-\(number)"
    }
    for node in 0..<3 { cluster.stop(node) }
    for node in 0..<3 { try cluster.start(node) }
    XCTAssertEqual(cluster.engine(0).allGroupIDs(), [group])
    for (key, value) in acknowledged {
      XCTAssertEqual(try cluster.readFromLeader(group, key), value, key)
    }
    // And the group keeps taking writes.
    XCTAssertNoThrow(try cluster.writeToLeader(group, "after-restart", "yes"))
  }

  func testTenGroupsOnThreeNodesAllElectAndAcceptWrites() throws {
    let cluster = try TestCluster(nodes: 3)
    let groups = (1...10).map { GroupID(.dataRegion, UInt32($0)) }
    for group in groups { try cluster.createGroup(group) }
    for group in groups {
      XCTAssertNotNil(cluster.waitForLeader(group))
      let written = try cluster.writeToLeader(group, "name", "\(group)")
      for node in 0..<3 {
        XCTAssertEqual(
          try read(cluster.engine(node), group, "name", ReadOptions(consistency: .stale, minIndex: written.index)),
          "\(group)")
      }
    }
    XCTAssertEqual(cluster.engine(2).allGroupIDs(), groups)
  }

  /// With each of two nodes leading half the groups, a node's heartbeat responses wait for its own
  /// next heartbeats to the other node: one batch per direction per interval instead of two.
  func testHeldHeartbeatResponsesRideWithTheNodesOwnHeartbeats() throws {
    func batchesPerHeartbeat(holding: Bool) throws -> Double {
      // Active groups' heartbeats: idle ones would quiesce and send none.
      let cluster = try TestCluster(nodes: 2) {
        $0.holdHeartbeatResponses = holding
        $0.quiesceAfterTicks = 0
      }
      let groups = (1...10).map { GroupID(.dataRegion, UInt32($0)) }
      for group in groups { try cluster.createGroup(group) }
      for (position, group) in groups.enumerated() {
        let wanted = position < 5 ? 0 : 1
        XCTAssertTrue(
          eventually(timeout: 10) {
            guard let leader = cluster.waitForLeader(group) else { return false }
            if leader == wanted { return true }
            _ = waitForCompletion {
              cluster.engine(leader).transferLeader(group, to: cluster.peers[wanted].node, completion: $0)
            }
            return false
          }, "node \(wanted + 1) leads \(group)")
      }
      func totals() -> (batches: Double, heartbeats: Double) {
        let sums = metricTotals(cluster, "caucus_raft_batches_sent_total", "caucus_raft_heartbeats_coalesced_total")
        return (sums[0], sums[1])
      }
      let before = totals()
      // About twenty rounds: 5 heartbeats and 5 responses each way per round.
      XCTAssertTrue(eventually(timeout: 10) { totals().heartbeats - before.heartbeats >= 400 }, "heartbeats flow")
      let after = totals()
      return (after.batches - before.batches) / (after.heartbeats - before.heartbeats)
    }
    // Per round 20 heartbeats and responses: in 2 batches when held, in 4 when sent at once.
    let held = try batchesPerHeartbeat(holding: true)
    let eager = try batchesPerHeartbeat(holding: false)
    XCTAssertLessThan(held, 0.15, "held: \(held) batches per heartbeat")
    XCTAssertGreaterThan(eager, 0.15, "sent at once: \(eager) batches per heartbeat")
  }

  /// Active groups' heartbeats (and their responses) between two nodes travel as one coalesced
  /// section per batch, not one message per group.
  func testHeartbeatsOfEveryGroupTravelCoalescedPerNodePair() throws {
    // Groups that do not quiesce: quiesced ones send no heartbeats at all (`QuiescenceHostTests`).
    let cluster = try TestCluster(nodes: 3) { $0.quiesceAfterTicks = 0 }
    let groups = (1...10).map { GroupID(.dataRegion, UInt32($0)) }
    for group in groups { try cluster.createGroup(group) }
    for group in groups { XCTAssertNotNil(cluster.waitForLeader(group)) }
    func totals() -> (messages: Double, heartbeats: Double) {
      let sums = metricTotals(cluster, "caucus_raft_messages_sent_total", "caucus_raft_heartbeats_coalesced_total")
      return (sums[0], sums[1])
    }
    let before = totals()
    // 400 heartbeats and responses: about ten heartbeat rounds of 10 groups × 2 followers × 2.
    XCTAssertTrue(eventually(timeout: 10) { totals().heartbeats - before.heartbeats >= 400 }, "heartbeats flow")
    let after = totals()
    let messages = after.messages - before.messages
    let heartbeats = after.heartbeats - before.heartbeats
    // Per round: at most 12 batches (each node to each other, heartbeats and responses) carry 40
    // heartbeats; one message per group would make `messages` at least `heartbeats`.
    XCTAssertLessThan(messages, heartbeats / 2, "\(messages) messages carried \(heartbeats) heartbeats")
  }

  func testOneWALSyncPerLoopTurnCoversEveryGroupWithRecords() throws {
    let cluster = try TestCluster(nodes: 3)
    let groups = (1...10).map { GroupID(.dataRegion, UInt32($0)) }
    for group in groups { try cluster.createGroup(group) }
    var leaders: [GroupID: Int] = [:]
    for group in groups { leaders[group] = try XCTUnwrap(cluster.waitForLeader(group)) }
    // Concurrent writes to every group: a turn persists whatever all groups have at once.
    let done = Locked((answered: 0, succeeded: 0))
    for round in 0..<20 {
      for group in groups {
        cluster.engine(leaders[group]!).write(group, command: putCommand("k\(round)", "v")) { result in
          done.withLock { state in
            state.answered += 1
            if case .success = result { state.succeeded += 1 }
          }
        }
      }
    }
    XCTAssertTrue(eventually(timeout: 10) { done.withLock { $0.answered } == 200 }, "every write is answered")
    // All of them, unless a stalled disk moved a leadership meanwhile.
    XCTAssertGreaterThan(done.withLock { $0.succeeded }, 100)
    for node in 0..<3 {
      // One snapshot: the loop keeps turning (heartbeats, commit updates) while we look.
      let engine = cluster.engine(node).prometheusMetrics()
      let fsyncs = metric(engine, "caucus_wal_fsyncs_total")
      let syncTurns = metric(engine, "caucus_raft_wal_sync_turns_total")
      let turns = metric(engine, "caucus_raft_loop_turns_total")
      XCTAssertEqual(fsyncs, syncTurns, "node \(node + 1): one fsync per syncing turn")
      XCTAssertLessThanOrEqual(syncTurns, turns)
      XCTAssertGreaterThan(
        metric(engine, "caucus_raft_groups_persisted_total"), syncTurns, "node \(node + 1): syncs are shared by groups")
      XCTAssertGreaterThan(metric(engine, "caucus_raft_groups_per_sync_max"), 1)
      XCTAssertGreaterThanOrEqual(metric(engine, "caucus_raft_entries_persisted_total"), 100)
    }
  }

  /// etcd's MustSync: in a quiet cluster one write costs each node one fsync (the entry); the
  /// commit index that follows is written without one (Raft keeps it as volatile state).
  func testACommitIndexAloneIsWrittenWithoutAnFsync() throws {
    // Unsynced commit records are otherwise synced at the next tick (10 ms here).
    let cluster = try TestCluster(nodes: 3) { $0.unsyncedRecordsTicksMax = 1_000 }
    let group = GroupID(.dataRegion, 1)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    func fsyncs() -> [Double] { (0..<3).map { metric(cluster.engine($0), "caucus_wal_fsyncs_total") } }
    func turns() -> [Double] { (0..<3).map { metric(cluster.engine($0), "caucus_raft_loop_turns_total") } }
    // At least: a stalled machine's election appends a no-op past it (the term check below then
    // measures again), and waiting for equality would wait for ever.
    func applied(_ index: UInt64) -> Bool { (0..<3).allSatisfy { (cluster.engine($0).status(group)?.appliedIndex ?? 0) >= index } }
    // A stalled machine may start an election in between (its term and vote need fsyncs): measure
    // again then, a few times at most.
    var deltas: [Double] = []
    for attempt in 1...3 {
      let term = cluster.engine(leader).status(group)?.term
      // Quiet: every node has applied what the leader committed, and published that turn.
      let commit = cluster.engine(leader).status(group)?.commitIndex ?? 0
      XCTAssertTrue(eventually(timeout: 5) { applied(commit) })
      var seen = turns()
      XCTAssertTrue(eventually(timeout: 5) { zip(turns(), seen).allSatisfy { $0 > $1 } })
      let before = fsyncs()
      guard let written = try? write(cluster.engine(leader), group, "k\(attempt)", "v").get() else { continue }
      XCTAssertTrue(eventually(timeout: 5) { applied(written.index) }, "every node applies the write")
      seen = turns()
      XCTAssertTrue(eventually(timeout: 5) { zip(turns(), seen).allSatisfy { $0 > $1 } }, "the applying turns are published")
      deltas = zip(fsyncs(), before).map { $0 - $1 }
      if cluster.engine(leader).status(group)?.term == term { break }
    }
    XCTAssertEqual(deltas, [1, 1, 1], "one fsync per node: the entry, not the commit index")
  }

  func testGarbageInboundBatchesAreRejectedWithoutHarm() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let stranger = cluster.network.transport(for: NodeID(9))
    stranger.send(batch: [1, 2, 3], to: NodeID(1), endpoint: cluster.peers[0].endpoint)
    var truncated = WireCodec.encode(MessageBatch(fromNode: 9, toNode: 1, messages: []))
    truncated.removeLast()
    stranger.send(batch: truncated, to: NodeID(1), endpoint: cluster.peers[0].endpoint)
    // Well-formed but addressed to another node.
    stranger.send(
      batch: WireCodec.encode(MessageBatch(fromNode: 9, toNode: 2, messages: [])), to: NodeID(1),
      endpoint: cluster.peers[0].endpoint)
    XCTAssertEqual(metric(cluster.engine(0), "caucus_raft_batches_rejected_total"), 3)
    XCTAssertNoThrow(try cluster.writeToLeader(group, "still", "working"))
  }

  func testDeletePeerRemovesTheReplicaAndItStaysDeletedAfterRestart() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let other = GroupID(.schemaRegion, 2)
    try cluster.createGroup(other)
    XCTAssertEqual(
      failure(of: waitForCompletion { cluster.engine(0).createPeer(self.group, peers: cluster.peers, completion: $0) }),
      .groupAlreadyExists(group))
    try waitForCompletion { cluster.engine(0).deletePeer(self.group, completion: $0) }.get()
    XCTAssertEqual(cluster.engine(0).allGroupIDs(), [other])
    XCTAssertNil(cluster.engine(0).status(group))
    cluster.stop(0)
    try cluster.start(0)
    XCTAssertEqual(cluster.engine(0).allGroupIDs(), [other])
    XCTAssertNotNil(cluster.engine(0).status(other))
    XCTAssertEqual(
      failure(of: waitForCompletion { cluster.engine(0).addPeer(self.group, peer: cluster.peers[0], completion: $0) }),
      .groupNotFound(group))
  }

  func testWritesBeyondThePendingLimitAreAnsweredOverloadedAndEveryWriteIsAnswered() throws {
    let cluster = try TestCluster(nodes: 3) { options in options.pendingWritesMax = 4 }
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let outcomes = Locked<[Result<WriteResult, ConsensusError>]>([])
    for number in 0..<200 {
      cluster.engine(leader).write(group, command: putCommand("k\(number)", "v")) { result in
        outcomes.withLock { $0.append(result) }
      }
    }
    XCTAssertTrue(eventually(timeout: 10) { outcomes.withLock { $0.count } == 200 }, "every write is answered once")
    let all = outcomes.withLock { $0 }
    let overloaded = all.filter { failure(of: $0) == .overloaded(retryAfterMs: 100) }.count
    let succeeded = all.filter { if case .success = $0 { return true } else { return false } }.count
    XCTAssertGreaterThan(overloaded, 0)
    XCTAssertGreaterThanOrEqual(succeeded, 4)
    // The slots come back: once answered, writes are accepted again.
    XCTAssertNoThrow(try cluster.writeToLeader(group, "after", "burst"))
  }

  func testRestartedFollowerRejoinsWithItsLogAndCatchesUp() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let follower = (leader + 1) % 3
    let first = try cluster.writeToLeader(group, "first", "1")
    _ = try read(cluster.engine(follower), group, "first", ReadOptions(consistency: .stale, minIndex: first.index))
    cluster.stop(follower)
    var last = first
    for number in 0..<10 { last = try cluster.writeToLeader(group, "k\(number)", "v\(number)", excluding: [follower]) }
    try cluster.start(follower)
    // Its own log comes back from the WAL before it hears from the leader.
    let status = try XCTUnwrap(cluster.engine(follower).status(group))
    XCTAssertGreaterThanOrEqual(status.logEntries, first.index)
    XCTAssertEqual(
      try read(cluster.engine(follower), group, "k9", ReadOptions(consistency: .stale, minIndex: last.index)), "v9")
    XCTAssertEqual(
      try read(cluster.engine(follower), group, "first", ReadOptions(consistency: .stale, minIndex: last.index)), "1")
  }

  func testQuietGroupsDoNotPinTheWALWhenItPassesItsSegmentLimit() throws {
    try quietGroupsDoNotPinTheWAL(forcedSnapshotsPerTurnMax: RaftConsensusOptions().forcedSnapshotsPerTurnMax)
  }

  /// One snapshot per turn: the forced round spreads over turns and still releases the log.
  func testAForcedRoundOfSnapshotsSpreadOverTurnsStillReleasesTheWAL() throws {
    try quietGroupsDoNotPinTheWAL(forcedSnapshotsPerTurnMax: 1)
  }

  private func quietGroupsDoNotPinTheWAL(forcedSnapshotsPerTurnMax: Int) throws {
    let cluster = try TestCluster(nodes: 3) { options in
      options.snapshotEntriesThreshold = 1_000_000
      options.walSegmentsSoftMax = 4
      options.wal.segmentBytesMax = 8 << 10
      options.forcedSnapshotsPerTurnMax = forcedSnapshotsPerTurnMax
    }
    let busy = group
    let quiet = (2...5).map { GroupID(.schemaRegion, UInt32($0)) }
    for group in [busy] + quiet { try cluster.createGroup(group) }
    for group in quiet { _ = try cluster.writeToLeader(group, "quiet", "\(group)") }
    let value = String(repeating: "y", count: 400)
    var last = WriteResult(index: 0, response: [])
    for number in 0..<200 { last = try cluster.writeToLeader(busy, "k\(number)", value) }
    for node in 0..<3 {
      _ = try read(cluster.engine(node), busy, "k0", ReadOptions(consistency: .stale, minIndex: last.index))
      // The loop checks after each turn; give it a turn or two after the last write.
      XCTAssertTrue(
        eventually(timeout: 5) { metric(cluster.engine(node), "caucus_wal_segments_released_total") > 0 }, "node \(node + 1)")
      XCTAssertLessThanOrEqual(metric(cluster.engine(node), "caucus_wal_segments"), 8, "node \(node + 1)")
    }
    for node in 0..<3 { cluster.stop(node) }
    for node in 0..<3 { try cluster.start(node) }
    for group in quiet { XCTAssertEqual(try cluster.readFromLeader(group, "quiet"), "\(group)") }
    XCTAssertEqual(try cluster.readFromLeader(busy, "k199"), value)
  }

  func testANodeRefusesGroupsPastItsLimit() throws {
    let cluster = try TestCluster(nodes: 1) { $0.groupsMax = 2 }
    try cluster.createGroup(GroupID(.dataRegion, 1))
    try cluster.createGroup(GroupID(.dataRegion, 2))
    let third = waitForCompletion {
      cluster.engine(0).createPeer(GroupID(.dataRegion, 3), peers: cluster.peers, completion: $0)
    }
    // A refusal of its own kind, naming the node and the limit, so the gateway can answer it as
    // one (409 group_limit_reached) instead of a bad request or a storage failure.
    guard case .failure(let error) = third else { return XCTFail("\(third)") }
    XCTAssertEqual(error, .groupLimitReached(node: cluster.peers[0].node, limit: 2, setting: "raft.groupsMax"))
    XCTAssertTrue(error.description.contains("raft.groupsMax = 2"), error.description)
    XCTAssertEqual(cluster.engine(0).allGroupIDs().count, 2)
    // A group it hosts is still answered as existing, not as past the limit.
    let again = waitForCompletion {
      cluster.engine(0).createPeer(GroupID(.dataRegion, 2), peers: cluster.peers, completion: $0)
    }
    guard case .failure(.groupAlreadyExists) = again else { return XCTFail("\(again)") }
    XCTAssertThrowsError(try RaftConsensusOptions(options: ["groupsMax": "40000"]), "above half the batch's heartbeat limit")
  }

  func testSingleReplicaGroupElectsItselfAndServesWritesAndReads() throws {
    let cluster = try TestCluster(nodes: 3)
    let solo = GroupID(.partitionRegion, 0)
    try waitForCompletion { cluster.engine(1).createPeer(solo, peers: [cluster.peers[1]], completion: $0) }.get()
    XCTAssertEqual(cluster.waitForLeader(solo, excluding: [0, 2]), 1)
    let written = try write(cluster.engine(1), solo, "solo", "yes").get()
    XCTAssertEqual(try read(cluster.engine(1), solo, "solo"), "yes")
    XCTAssertEqual(cluster.engine(1).status(solo)?.commitIndex, written.index)
    XCTAssertEqual(cluster.engine(0).allGroupIDs(), [])
    XCTAssertEqual(
      failure(of: waitForCompletion { cluster.engine(0).createPeer(solo, peers: [cluster.peers[1]], completion: $0) }),
      .illegalPeerNumber(count: 1, reason: "this node (1) is not in the peer list"))
  }

  func testTheFactoryBuildsTheRaftEngineUnderItsNameAndRatisAlias() throws {
    var factory = ConsensusFactory()
    let network = InMemoryNetwork()
    RaftConsensus.register(in: &factory, transport: network.transport(for: NodeID(1)))
    XCTAssertEqual(try factory.canonicalName(IoTDBProtocolClassNames.ratis), "raft")
    let config = ConsensusConfig(
      localPeer: Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 41_001)),
      dataDirectory: NSTemporaryDirectory() + "caucus-raft-factory", registry: StateMachineRegistry(),
      options: ["tickIntervalMs": "50", "electionTicks": "20"])
    let engine = try factory.makeEngine("raft", config: config)
    XCTAssertEqual(engine.protocolName, "raft")
    XCTAssertFalse(engine.isReady, "not started")
    var bad = config
    bad.options = ["electionTicks": "1", "heartbeatTicks": "1"]
    XCTAssertThrowsError(try factory.makeEngine("raft", config: bad))
    bad.options = ["tickIntervalMs": "zero"]
    XCTAssertThrowsError(try factory.makeEngine("raft", config: bad))
    // A write held that long would time out without ever leaving the node.
    bad.options = ["tickIntervalMs": "100", "forwardHoldTicksMax": "100", "proposalTimeoutMs": "10000"]
    XCTAssertThrowsError(try factory.makeEngine("raft", config: bad))
    bad.options = ["tickIntervalMs": "100", "forwardHoldTicksMax": "99", "proposalTimeoutMs": "10000"]
    XCTAssertNoThrow(try factory.makeEngine("raft", config: bad))
  }

  func testTransferLeaderHandsLeadershipToTheTarget() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    var transferred: Int?
    for _ in 0..<5 where transferred == nil {
      let leader = try XCTUnwrap(cluster.waitForLeader(group))
      let target = (leader + 1) % 3
      let onFollower = failure(
        of: waitForCompletion { cluster.engine(target).transferLeader(self.group, to: NodeID(1), completion: $0) })
      guard case .notLeader = onFollower else { return XCTFail("a follower refuses a transfer: \(String(describing: onFollower))") }
      let outcome = waitForCompletion {
        cluster.engine(leader).transferLeader(self.group, to: cluster.peers[target].node, completion: $0)
      }
      // Leadership moved on its own before the request reached the leader: try again.
      if case .notLeader = failure(of: outcome) { continue }
      try outcome.get()
      transferred = target
    }
    let target = try XCTUnwrap(transferred)
    XCTAssertEqual(cluster.waitForLeader(group), target)
    XCTAssertNoThrow(try cluster.writeToLeader(group, "led-by", "\(target)"))
  }

  func testSnapshotCompactsTheLogAndRestartRecoversFromSnapshotAndLog() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    var last = WriteResult(index: 0, response: [])
    for number in 0..<10 { last = try cluster.writeToLeader(group, "k\(number)", "v\(number)") }
    for node in 0..<3 {
      _ = try read(cluster.engine(node), group, "k0", ReadOptions(consistency: .stale, minIndex: last.index))
      let info = try waitForCompletion { cluster.engine(node).triggerSnapshot(self.group, completion: $0) }.get()
      XCTAssertGreaterThanOrEqual(info.index, last.index, "node \(node + 1)")
      XCTAssertEqual(cluster.engine(node).status(group)?.snapshotIndex, info.index)
    }
    for number in 10..<15 { last = try cluster.writeToLeader(group, "k\(number)", "v\(number)") }
    for node in 0..<3 { cluster.stop(node) }
    for node in 0..<3 { try cluster.start(node) }
    for number in 0..<15 { XCTAssertEqual(try cluster.readFromLeader(group, "k\(number)"), "v\(number)") }
    for node in 0..<3 {
      XCTAssertEqual(
        try read(cluster.engine(node), group, "k14", ReadOptions(consistency: .stale, minIndex: last.index)), "v14")
    }
  }

  func testLaggingFollowerCatchesUpFromTheLeadersSnapshotAndKeepsItAcrossRestart() throws {
    let cluster = try TestCluster(nodes: 3)
    try cluster.createGroup(group)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let lagging = (leader + 1) % 3
    cluster.network.isolate(cluster.peers[lagging].node)
    var last = WriteResult(index: 0, response: [])
    for number in 0..<20 { last = try cluster.writeToLeader(group, "k\(number)", "v\(number)", excluding: [lagging]) }
    // Both nodes that have the entries compact, so whichever leads must send a snapshot.
    for node in 0..<3 where node != lagging {
      _ = try read(cluster.engine(node), group, "k19", ReadOptions(consistency: .stale, minIndex: last.index))
      _ = try waitForCompletion { cluster.engine(node).triggerSnapshot(self.group, completion: $0) }.get()
    }
    cluster.network.heal(cluster.peers[lagging].node)
    XCTAssertEqual(
      try read(cluster.engine(lagging), group, "k19", ReadOptions(consistency: .stale, minIndex: last.index)), "v19")
    XCTAssertGreaterThanOrEqual(metric(cluster.engine(lagging), "caucus_raft_snapshots_installed_total"), 1)
    let after = try cluster.writeToLeader(group, "after", "snapshot")
    XCTAssertEqual(
      try read(cluster.engine(lagging), group, "after", ReadOptions(consistency: .stale, minIndex: after.index)),
      "snapshot")
    cluster.stop(lagging)
    try cluster.start(lagging)
    for key in ["k0", "k19", "after"] {
      XCTAssertNotNil(
        try read(cluster.engine(lagging), group, key, ReadOptions(consistency: .stale, minIndex: after.index)), key)
    }
  }

  /// Issue 9 finding 5: a group whose state exceeds the inline snapshot limit catches a lagging
  /// follower up through a streamed snapshot, paced over ticks, while another group on the same
  /// nodes keeps serving writes.
  func testAGroupLargerThanTheInlineLimitCatchesUpAFollowerByStreamingWhileOthersWork() throws {
    let cluster = try TestCluster(nodes: 3) { options in
      options.snapshotInlineBytesMax = 16 << 10
      options.snapshotChunkBytes = WireLimits.snapshotChunkBytesMin
      options.snapshotStreamBytesPerTick = WireLimits.snapshotChunkBytesMin
    }
    let other = GroupID(.schemaRegion, 3)
    try cluster.createGroup(group)
    try cluster.createGroup(other)
    let leader = try XCTUnwrap(cluster.waitForLeader(group))
    let lagging = (leader + 1) % 3
    cluster.network.isolate(cluster.peers[lagging].node)
    let value = String(repeating: "v", count: 40 << 10)
    var last = WriteResult(index: 0, response: [])
    for number in 0..<12 { last = try cluster.writeToLeader(group, "k\(number)", value, excluding: [lagging]) }
    for node in 0..<3 where node != lagging {
      _ = try read(cluster.engine(node), group, "k11", ReadOptions(consistency: .stale, minIndex: last.index))
      _ = try waitForCompletion { cluster.engine(node).triggerSnapshot(self.group, completion: $0) }.get()
    }
    cluster.network.heal(cluster.peers[lagging].node)
    // The other group works while the stream is under way.
    for number in 0..<5 { _ = try cluster.writeToLeader(other, "o\(number)", "x") }
    XCTAssertEqual(
      try read(cluster.engine(lagging), group, "k11", ReadOptions(consistency: .stale, minIndex: last.index)), value)
    XCTAssertGreaterThanOrEqual(metric(cluster.engine(lagging), "caucus_raft_snapshots_installed_total"), 1)
    XCTAssertGreaterThanOrEqual(
      metric(cluster.engine(lagging), "caucus_raft_snapshot_chunks_received_total"), 480_000 / 65_536,
      "a snapshot of about half a megabyte arrived in 64 KiB chunks")
    let sent = cluster.running.map { metric($0, "caucus_raft_snapshot_chunks_sent_total") }.reduce(0, +)
    XCTAssertGreaterThanOrEqual(sent, 7)
  }

  func testAutomaticSnapshotsReleaseWALSegmentsAndRestartKeepsEveryWrite() throws {
    let cluster = try TestCluster(nodes: 3) { options in
      options.snapshotEntriesThreshold = 25
      options.wal.segmentBytesMax = 8 << 10
    }
    let groups = [group, GroupID(.schemaRegion, 7)]
    for group in groups { try cluster.createGroup(group) }
    let value = String(repeating: "x", count: 300)
    var last: [GroupID: UInt64] = [:]
    for group in groups {
      for number in 0..<150 { last[group] = try cluster.writeToLeader(group, "k\(number)", value + "\(number)").index }
    }
    for node in 0..<3 {
      for group in groups {
        _ = try read(cluster.engine(node), group, "k0", ReadOptions(consistency: .stale, minIndex: last[group]!))
      }
      let engine = cluster.engine(node).prometheusMetrics()
      XCTAssertGreaterThan(metric(engine, "caucus_raft_snapshots_taken_total"), 0, "node \(node + 1)")
      XCTAssertGreaterThan(metric(engine, "caucus_wal_segments_released_total"), 0, "node \(node + 1)")
      XCTAssertLessThan(metric(engine, "caucus_wal_segments"), 15, "node \(node + 1)")
    }
    for node in 0..<3 { cluster.stop(node) }
    for node in 0..<3 { try cluster.start(node) }
    for group in groups {
      for number in [0, 75, 149] { XCTAssertEqual(try cluster.readFromLeader(group, "k\(number)"), value + "\(number)") }
    }
  }
}
