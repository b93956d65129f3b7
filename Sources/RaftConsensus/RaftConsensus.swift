import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

/// The multi-Raft host (IoTDB's RatisConsensus, on our own core): every group of the node, one
/// loop thread, one write-ahead log, one transport.
///
/// One loop turn: take the inbox (proposals, reads, inbound batches, group operations) → tick every
/// group when the tick interval passed → step → collect each group's `Ready` → append every
/// group's entries and hard state to the WAL and fsync ONCE (not at all when every Ready only
/// moved its commit index: `Ready.mustSync`) → send the batches that wait for it → apply
/// committed entries and answer the writes and reads waiting on them → `advance`.
///
/// A turn sends two batches per destination: the Ready's `messages` (a leader's appends and
/// heartbeats) before its fsync, so followers persist in parallel with the leader, and
/// `messagesAfterPersist` (votes, acknowledgements) after it, as the Ready contract requires.
///
/// Heartbeats are coalesced per node pair: every group ticks in the same turn, so with a heartbeat
/// every tick (`heartbeatTicks` 1, what `caucus` configures) all leaders' heartbeats to a node
/// share that turn's batch, which carries them as one coalesced section (`CoalescedHeartbeat`);
/// the responses come back the same way.
///
/// Forwarded writes (etcd's MsgProp): a write that reaches a follower is handed to the leader in
/// the follower's early batch (in its batch after the fsync when the turn's Readies sync anyway,
/// beside its acknowledgements; or later, while the leader still owes answers:
/// `forwardsUnansweredBy`); the leader proposes it and answers the index and term (or why not) in
/// its own early batch of that turn; the follower answers the client once it applies that index.
/// Log Matching makes the answer exact: the entry applied there is the write exactly when its
/// term is the one the leader named. What does not fit one batch (`WireLimits.batchBytesTarget`,
/// and the per-batch counts) goes in further batches of the same turn (`MessageBatch.packed`).
///
/// Snapshots larger than `snapshotInlineBytesMax` stream in chunks (`SnapshotStreams`), a tick's
/// budget per destination at a time, and the receiver assembles them before its core sees them.
///
/// Membership changes (`addPeer`, `removePeer`, `changePeer`) run at the leader as a sequence of
/// configuration-change entries (`MembershipChange`), each waited for until applied; their
/// context carries the endpoints of the replicas they add, which every replica learns when it
/// applies them; snapshots carry every endpoint their group knew (the changes they replace took
/// their contexts with them), which a replica learns when it installs one. A replica that joins
/// an existing group (`joinPeer`) starts from the group's bootstrap voters, not an empty
/// membership (see `RaftStorage`).
///
/// Not yet: lease reads (served as ReadIndex reads).
///
/// Threads: callers on any thread only enqueue (under `state`) or read a group's published view
/// and state machine (under the group's lock). The loop thread owns the WAL and every `Raft`.
/// Lock order: `state` before a group's lock, never the reverse. Nothing calls a completion or the
/// transport while holding a lock.
// @unchecked Sendable: every mutable field below is guarded by `state`, except those marked
// "loop only", which only the loop thread touches (after `start` hands them over).
public final class RaftConsensus: ConsensusEngine, @unchecked Sendable {
  public static let name = "raft"
  public let protocolName = RaftConsensus.name
  public let localPeer: Peer

  private let directory: String
  private let registry: StateMachineRegistry
  private let options: RaftConsensusOptions
  private let transport: any RaftTransport
  private let logger: Logger
  private let tickNanoseconds: UInt64

  private let state = ConditionLock()
  // Guarded by `state`.
  private var phase = Phase.created
  private var groups: [GroupID: RaftGroup] = [:]
  private var inbox: [InboxItem] = []
  /// The inbox holds an item that must not wait for the next tick (the loop was signalled).
  private var inboxUrgent = false
  /// The loop's `forwardsUnansweredBy` as of its last turn: a forwarded write for one of these
  /// leaders would only be held, so it does not wake the loop (the answers will).
  private var forwardLeadersOwingAnswers: Set<ReplicaID> = []
  private var inboundBatchesQueued = 0
  private var writesOutstanding = 0
  private var writeBytesOutstanding = 0
  private var controlQueued = 0
  private var readsOutstanding = 0
  private var staleReadWaiters: [StaleReadWaiter] = []
  /// Forwards the transport says never arrived. Apart from the inbox because they must not wake
  /// the loop: they go out again with the next turn's work (or tick), so an unreachable leader
  /// cannot make the loop spin. At most one entry per batch sent.
  private var undeliveredForwards: [(node: ReplicaID, forwards: ArraySlice<ForwardedProposal>)] = []
  private var failure: String?
  private var metrics = Metrics()
  private var loopThread: OSThread?

  // Loop only (`start` sets them before the loop thread starts).
  private var live: [GroupID: RaftGroup] = [:]
  private var nextReadContext: UInt64 = 0
  private var nextForwardRequestID: UInt64 = 0
  /// Forwarded writes waiting in any group (sent, appended, or unsent): every one is answered
  /// exactly once, which `answerForward` and `shutDown` check.
  private var forwardsWaiting = 0
  /// Leader nodes that were sent our writes and have not answered any since (nor lost the batch),
  /// with the ticks passed since: further writes for them wait for this node's next batch to
  /// them after a sync, or for their answers, so writes travel in few batches (Nagle's rule),
  /// at most `forwardHoldTicksMax` ticks. The answers come with the appends our sync
  /// acknowledges, so the wait is about one round trip.
  private var forwardsUnansweredBy: [ReplicaID: Int] = [:]
  /// Ticks passed with commit-only records unsynced in the WAL (`unsyncedRecordsTicksMax`).
  private var ticksWithUnsyncedRecords = 0
  /// Groups with `forwardsUnsent`: sent again at the next turn.
  private var groupsWithUnsentForwards: Set<GroupID> = []
  /// A leader's answers to forwards whose batch the transport dropped: sent again at the next
  /// turn, at most `WireLimits.forwardsPerBatchMax` per node (past it the follower times out).
  private var forwardAnswersUnsent: [ReplicaID: [ForwardedProposal]] = [:]
  private var seed: UInt64 = 0
  /// Heartbeat responses that confirm only liveness (no ReadIndex round), held per destination
  /// and group (a later one replaces an earlier one) until the next batch to that node leaves,
  /// or the next tick at the latest (`RaftConsensusOptions.holdHeartbeatResponses`). Bounded by
  /// destinations × groups.
  private var heldHeartbeatResponses: [ReplicaID: [UInt64: Message]] = [:]
  /// The WAL's segment count after the last round of snapshots forced by `walSegmentsSoftMax`.
  private var segmentsAfterForcedSnapshots = 0
  /// Snapshots streamed to followers and being assembled from leaders (finding 5 of issue 9).
  private var snapshotStreams: SnapshotStreams

  private enum Phase { case created, running, stopping, stopped }

  private enum InboxItem {
    /// `forward`: hand the write to the leader when this node does not lead the group.
    case propose(GroupID, [UInt8], forward: Bool, ConsensusCompletion<WriteResult>)
    case read(GroupID, LinearizableRead)
    case batch(MessageBatch)
    /// The transport says these forwards, sent to the node, never reached it.
    case undelivered(ReplicaID, ArraySlice<ForwardedProposal>)
    /// `bootstrapVoters`: the peers for a new group; the group's for a replica that joins it.
    case create(GroupID, [Peer], bootstrapVoters: [ReplicaID], ConsensusCompletion<Void>)
    case delete(GroupID, ConsensusCompletion<Void>)
    case snapshot(GroupID, ConsensusCompletion<SnapshotInfo>)
    case transfer(GroupID, NodeID, ConsensusCompletion<Void>)
    case membership(GroupID, MembershipRequest, ConsensusCompletion<Void>)
  }

  private struct StaleReadWaiter: Sendable {
    let group: GroupID
    let query: [UInt8]
    let minIndex: UInt64
    let deadline: UInt64
    let completion: ConsensusCompletion<ReadResult>
  }

  struct Metrics {
    var loopTurns: UInt64 = 0
    var walSyncTurns: UInt64 = 0
    /// Sum over syncing turns of the groups that had records in that sync.
    var groupsPersisted: UInt64 = 0
    var groupsPerSyncMax: UInt64 = 0
    var entriesPersisted: UInt64 = 0
    var batchesSent: UInt64 = 0
    var messagesSent: UInt64 = 0
    var heartbeatsCoalesced: UInt64 = 0
    var batchesReceived: UInt64 = 0
    var batchesRejected: UInt64 = 0
    var batchesDroppedOverloaded: UInt64 = 0
    var writesCommitted: UInt64 = 0
    var forwards = ForwardCounts()
    var snapshotsTaken: UInt64 = 0
    var snapshotsInstalled: UInt64 = 0
    var snapshotChunksSent: UInt64 = 0
    var snapshotChunksReceived: UInt64 = 0
    var wal = WALStatistics()
  }

  /// Forwarded writes, as a follower that sends them and as a leader that receives them.
  struct ForwardCounts {
    var sent: UInt64 = 0
    var accepted: UInt64 = 0
    var refused: UInt64 = 0
    var proposedForPeers: UInt64 = 0
    var refusedForPeers: UInt64 = 0
    /// Forwarded writes of this node whose batch never arrived (sent again).
    var undelivered: UInt64 = 0
    /// Times a forwarded write of this node was held for a later batch (`forwardsUnansweredBy`).
    var held: UInt64 = 0

    static func += (total: inout ForwardCounts, turn: ForwardCounts) {
      total.sent += turn.sent
      total.accepted += turn.accepted
      total.refused += turn.refused
      total.proposedForPeers += turn.proposedForPeers
      total.refusedForPeers += turn.refusedForPeers
      total.undelivered += turn.undelivered
      total.held += turn.held
    }
  }

  public init(
    config: ConsensusConfig, options: RaftConsensusOptions = RaftConsensusOptions(), transport: any RaftTransport,
    logger: Logger? = nil
  ) {
    self.localPeer = config.localPeer
    self.directory = config.dataDirectory
    self.registry = config.registry
    self.options = options
    self.transport = transport
    self.tickNanoseconds = options.tickIntervalMs * 1_000_000
    self.snapshotStreams = SnapshotStreams(chunkBytes: options.snapshotChunkBytes)
    var logger = logger ?? Logger(label: "caucus.raft")
    logger[metadataKey: "node"] = "\(config.localPeer.node)"
    self.logger = logger
  }

  /// The factory entry for this protocol, with IoTDB's Ratis class name as an alias. The
  /// transport comes from the wiring: one per node.
  public static func register(
    in factory: inout ConsensusFactory, transport: any RaftTransport, logger: Logger? = nil
  ) {
    factory.register(name, aliases: [IoTDBProtocolClassNames.ratis]) { config in
      RaftConsensus(
        config: config, options: try RaftConsensusOptions(options: config.options), transport: transport,
        logger: logger)
    }
  }

  // MARK: Lifecycle

  public func start() throws {
    state.withLock { precondition(phase == .created, "start() is called once") }
    try options.validate()
    let wal: WriteAheadLog
    let recovered: [GroupID: RaftStorage.RecoveredGroup]
    do {
      wal = try WriteAheadLog(directory: directory + "/wal", options: options.wal)
      recovered = try RaftStorage.recover(wal)
    } catch {
      logger.error("storage recovery failed", metadata: ["directory": "\(directory)", "error": "\(error)"])
      throw error
    }
    seed = options.seed ?? MonotonicClock.nowNanoseconds()
    var restored: [GroupID: RaftGroup] = [:]
    for (id, group) in recovered {
      precondition(group.peers != nil, "recovery refuses groups without a creation record")
      let state = RestoredState(
        hardState: group.hardState, snapshot: group.snapshot, entries: group.entries,
        bootstrapConfig: ConfigState(voters: group.bootstrapVoters))
      restored[id] = try makeGroup(
        id, peers: try RaftStorage.endpoints(of: group, id: id), bootstrapVoters: group.bootstrapVoters, restored: state)
    }
    live = restored
    let statistics = wal.statistics
    state.withLock {
      groups = restored
      metrics.wal = statistics
      phase = .running
    }
    transport.setReceiver { [weak self] bytes in self?.receive(bytes) }
    logger.info(
      "raft engine started",
      metadata: [
        "groups": "\(restored.keys.sorted().map(\.description))", "directory": "\(directory)",
        "entries": "\(recovered.values.reduce(0) { $0 + $1.entries.count })",
      ])
    let walBox = UncheckedSendableBox(wal)
    let thread = OSThread(name: "caucus-raft") { [self] in runLoop(walBox.value) }
    state.withLock { loopThread = thread }
  }

  public func stop() {
    let thread: OSThread? = state.withLock {
      guard phase == .running else { return nil }
      phase = .stopping
      state.broadcast()
      return loopThread
    }
    guard let thread else { return }
    transport.setReceiver(nil)
    thread.join()
    state.withLock { phase = .stopped }
  }

  public var isReady: Bool { state.withLock { phase == .running && failure == nil } }

  private func makeGroup(
    _ id: GroupID, peers: [Peer], bootstrapVoters: [ReplicaID], restored: RestoredState
  ) throws -> RaftGroup {
    guard let machine = registry.makeStateMachine(for: id) else {
      throw ConsensusError.storage("no state machine is registered for group type \(id.type)")
    }
    var random = SplitMix64(seed: seed ^ (localPeer.node.rawValue &* 0x9E37_79B9_7F4A_7C15) ^ id.packed)
    _ = random.next()
    let raft = try Raft(config: options.raftConfig(node: localPeer.node), random: random, restored: restored)
    let replica = RaftGroup(id: id, peers: peers, bootstrapVoters: bootstrapVoters, stateMachine: machine, raft: raft)
    if let snapshot = restored.snapshot {
      // The payload's endpoints are already among `peers` (`RaftStorage.endpoints(of:)`).
      try machine.restore(snapshot: try RaftStorage.decodeSnapshotPayload(snapshot.data, group: id).machine)
      replica.appliedIndex = snapshot.index
      replica.durableSnapshotIndex = snapshot.index
      replica.nextSnapshotAttemptIndex = snapshot.index
    }
    return replica
  }

  // MARK: Data plane

  public func write(_ group: GroupID, command: [UInt8], completion: @escaping ConsensusCompletion<WriteResult>) {
    submit(group, command, forward: false, completion)
  }

  /// With `.toLeader`, a follower that knows the leader hands the write to it inside its next
  /// batch and answers once it has applied the write itself (see the type's comment).
  public func write(
    _ group: GroupID, command: [UInt8], forwarding: WriteForwarding,
    completion: @escaping ConsensusCompletion<WriteResult>
  ) {
    submit(group, command, forward: forwarding == .toLeader, completion)
  }

  private func submit(
    _ group: GroupID, _ command: [UInt8], forward: Bool, _ completion: @escaping ConsensusCompletion<WriteResult>
  ) {
    let refusal: ConsensusError? = state.withLock {
      if let failure { return .storage(failure) }
      guard phase == .running else { return .shuttingDown }
      guard let replica = groups[group] else { return .groupNotFound(group) }
      guard !command.isEmpty else { return .invalidRequest("the command is empty") }
      // Fast answer from the published view; the loop checks again against the core.
      let view = replica.lock.withLock { replica.view }
      if view.role != .leader && !(forward && view.leader != 0) { return replica.leaderError(leader: view.leader) }
      // A forwarded write waits here as a local one does: it counts against the same limits.
      guard writesOutstanding < options.pendingWritesMax,
        writeBytesOutstanding + command.count <= options.pendingWriteBytesMax
      else { return .overloaded(retryAfterMs: 100) }
      writesOutstanding += 1
      writeBytesOutstanding += command.count
      let held = forward && view.role != .leader && forwardLeadersOwingAnswers.contains(view.leader)
      enqueue(.propose(group, command, forward: forward, completion), urgent: !held)
      return nil
    }
    if let refusal { completion(.failure(refusal)) }
  }

  public func read(
    _ group: GroupID, query: [UInt8], options readOptions: ReadOptions,
    completion: @escaping ConsensusCompletion<ReadResult>
  ) {
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(readOptions.waitMs) * 1_000_000
    let outcome: Result<ReadResult, ConsensusError>? = state.withLock {
      guard phase == .running else { return .failure(.shuttingDown) }
      // After a storage failure the loop is gone: stale reads still see the applied state.
      if let failure, readOptions.consistency != .stale { return .failure(.storage(failure)) }
      guard let replica = groups[group] else { return .failure(.groupNotFound(group)) }
      switch readOptions.consistency {
      case .linearizable, .lease:
        // Lease reads are served as linearizable ones (ReadIndex) until leases are implemented.
        let view = replica.lock.withLock { replica.view }
        if view.role != .leader { return .failure(replica.leaderError(leader: view.leader)) }
        guard readsOutstanding < options.readWaitersMax else { return .failure(.overloaded(retryAfterMs: 100)) }
        readsOutstanding += 1
        enqueue(.read(group, LinearizableRead(query: query, deadline: deadline, completion: completion)))
        return nil
      case .stale:
        if let answer = replica.lock.withLock({ replica.answer(query, ifAppliedAtLeast: readOptions.minIndex) }) {
          return .success(answer)
        }
        if let failure { return .failure(.storage(failure)) }  // nothing will apply more
        guard readsOutstanding < options.readWaitersMax else { return .failure(.overloaded(retryAfterMs: 100)) }
        readsOutstanding += 1
        staleReadWaiters.append(
          StaleReadWaiter(
            group: group, query: query, minIndex: readOptions.minIndex, deadline: deadline, completion: completion))
        state.broadcast()
        return nil
      }
    }
    if let outcome { completion(outcome) }
  }

  /// Must hold `state`.
  /// Must hold `state`. An item that is not `urgent` waits for the loop's next turn (at the latest
  /// the next tick) instead of waking it.
  private func enqueue(_ item: InboxItem, urgent: Bool = true) {
    inbox.append(item)
    if urgent && !inboxUrgent {
      inboxUrgent = true
      state.signal()
    }
  }

  /// The transport's receiver: decodes, checks and queues one inbound batch.
  private func receive(_ bytes: [UInt8]) {
    let batch: MessageBatch
    do {
      batch = try WireCodec.decodeBatch(bytes)
    } catch {
      state.withLock { metrics.batchesRejected += 1 }
      logger.warning("rejected an inbound batch", metadata: ["bytes": "\(bytes.count)", "error": "\(error)"])
      return
    }
    guard batch.toNode == localPeer.node.rawValue, batch.fromNode != 0 else {
      state.withLock { metrics.batchesRejected += 1 }
      logger.warning(
        "rejected an inbound batch addressed to another node",
        metadata: ["from": "\(batch.fromNode)", "to": "\(batch.toNode)"])
      return
    }
    state.withLock {
      guard phase == .running, failure == nil else { return }
      guard inboundBatchesQueued < options.inboundBatchesMax else {
        metrics.batchesDroppedOverloaded += 1
        return
      }
      inboundBatchesQueued += 1
      metrics.batchesReceived += 1
      // Heartbeats that only confirm liveness (no ReadIndex round) can wait for the next tick:
      // an idle node then wakes once per tick, not once per peer batch as well.
      let livenessOnly =
        batch.messages.isEmpty && batch.forwards.isEmpty && batch.snapshotChunks.isEmpty
        && batch.heartbeats.allSatisfy { $0.context == 0 }
      enqueue(.batch(batch), urgent: !livenessOnly)
    }
  }

  // MARK: Management

  public func createPeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {
    if let refusal = creationRefusal(group, peers) { return completion(.failure(refusal)) }
    let voters = peers.map(\.node.rawValue)
    enqueueControl(.create(group, peers, bootstrapVoters: voters, completion)) { completion(.failure($0)) }
  }

  /// A replica that waits for the leader: it is not among `bootstrapVoters`, so it never
  /// campaigns; the leader's log (or snapshot) brings it the group's membership history.
  public func joinPeer(
    _ group: GroupID, peers: [Peer], bootstrapVoters: [NodeID], completion: @escaping ConsensusCompletion<Void>
  ) {
    if let refusal = creationRefusal(group, peers) { return completion(.failure(refusal)) }
    guard !bootstrapVoters.isEmpty, bootstrapVoters.count <= RaftStorage.peersMax,
      Set(bootstrapVoters).count == bootstrapVoters.count
    else {
      return completion(
        .failure(.illegalPeerNumber(count: bootstrapVoters.count, reason: "bootstrap voters: 1 to \(RaftStorage.peersMax) distinct nodes")))
    }
    guard !bootstrapVoters.contains(localPeer.node) else {
      return completion(
        .failure(.invalidRequest("this node (\(localPeer.node)) is a bootstrap voter of \(group); it cannot join it")))
    }
    let voters = bootstrapVoters.map(\.rawValue)
    enqueueControl(.create(group, peers, bootstrapVoters: voters, completion)) { completion(.failure($0)) }
  }

  /// Why `peers` cannot describe a replica of `group` on this node, if they cannot.
  private func creationRefusal(_ group: GroupID, _ peers: [Peer]) -> ConsensusError? {
    guard !peers.isEmpty else {
      return .illegalPeerNumber(count: 0, reason: "a raft group needs at least one peer")
    }
    guard Set(peers.map(\.node)).count == peers.count else {
      return .illegalPeerNumber(count: peers.count, reason: "a node appears twice in the peer list")
    }
    guard peers.contains(where: { $0.node == localPeer.node }) else {
      return .illegalPeerNumber(count: peers.count, reason: "this node (\(localPeer.node)) is not in the peer list")
    }
    guard peers.count <= RaftStorage.peersMax else {
      return .illegalPeerNumber(count: peers.count, reason: "at most \(RaftStorage.peersMax) peers")
    }
    guard registry.makeStateMachine(for: group) != nil else {
      return .invalidRequest("no state machine is registered for group type \(group.type)")
    }
    return nil
  }

  public func deletePeer(_ group: GroupID, completion: @escaping ConsensusCompletion<Void>) {
    enqueueControl(.delete(group, completion)) { completion(.failure($0)) }
  }

  /// At the leader: adds `peer` as a learner, waits until it caught up with the commit index of
  /// that moment, promotes it to voter, and completes once that is applied. A learner already
  /// (an earlier attempt that lost its leader or its deadline) resumes at the catch-up. The new
  /// node must host a replica first (`joinPeer`).
  public func addPeer(_ group: GroupID, peer: Peer, completion: @escaping ConsensusCompletion<Void>) {
    enqueueControl(.membership(group, .add(peer), completion)) { completion(.failure($0)) }
  }

  /// At the leader: removes `node` (voter or learner) and completes once that is applied. A
  /// leader that removes itself hands leadership over (the core does).
  public func removePeer(_ group: GroupID, node: NodeID, completion: @escaping ConsensusCompletion<Void>) {
    enqueueControl(.membership(group, .remove(node), completion)) { completion(.failure($0)) }
  }

  /// At the leader: makes `peers` the voters in one change — through a joint configuration when
  /// more than one voter changes (thesis §4.3) — and completes once the change and the leave of
  /// the joint configuration are applied. New members need a replica first (`joinPeer`).
  public func changePeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {
    guard !peers.isEmpty, Set(peers.map(\.node)).count == peers.count else {
      return completion(
        .failure(.illegalPeerNumber(count: peers.count, reason: "the new peer list must name at least one node, each once")))
    }
    guard peers.count <= ConfigChange.stepsMax else {
      return completion(.failure(.illegalPeerNumber(count: peers.count, reason: "at most \(ConfigChange.stepsMax) peers")))
    }
    enqueueControl(.membership(group, .change(peers), completion)) { completion(.failure($0)) }
  }

  /// Asks this node's replica, which must lead `group`, to hand leadership to `node` (thesis
  /// §3.10). Completes once this node sees `node` lead, or `timeout(indeterminate: true)`.
  public func transferLeader(_ group: GroupID, to node: NodeID, completion: @escaping ConsensusCompletion<Void>) {
    enqueueControl(.transfer(group, node, completion)) { completion(.failure($0)) }
  }

  /// Captures the group's state machine at its applied index, compacts the log up to it, writes
  /// the snapshot file, and releases the WAL segments every group's snapshot covers.
  public func triggerSnapshot(_ group: GroupID, completion: @escaping ConsensusCompletion<SnapshotInfo>) {
    enqueueControl(.snapshot(group, completion)) { completion(.failure($0)) }
  }

  private func enqueueControl(_ item: InboxItem, refuse: (ConsensusError) -> Void) {
    let refusal: ConsensusError? = state.withLock {
      if let failure { return .storage(failure) }
      guard phase == .running else { return .shuttingDown }
      guard controlQueued < options.pendingControlMax else { return .overloaded(retryAfterMs: 100) }
      controlQueued += 1
      enqueue(item)
      return nil
    }
    if let refusal { refuse(refusal) }
  }

  // MARK: Queries

  private func published(_ group: GroupID) -> (RaftGroup, GroupView)? {
    guard let replica = state.withLock({ groups[group] }) else { return nil }
    return (replica, replica.lock.withLock { replica.view })
  }

  public func isLeader(_ group: GroupID) -> Bool { published(group)?.1.role == .leader }

  public func leader(_ group: GroupID) -> Peer? {
    guard let found = published(group) else { return nil }
    return found.0.peer(found.1.leader)
  }

  public func allGroupIDs() -> [GroupID] { state.withLock { groups.keys.sorted() } }

  public func status(_ group: GroupID) -> GroupStatus? {
    guard let replica = state.withLock({ groups[group] }) else { return nil }
    let (view, applied) = replica.lock.withLock { (replica.view, replica.appliedIndex) }
    let role: GroupRole
    switch view.role {
    case .leader: role = .leader
    case .follower: role = .follower
    case .candidate, .preCandidate: role = .candidate
    }
    // The membership in force, with each member's endpoint (an unknown one shows empty; it
    // should not happen: changes carry the endpoints of the members they add, and snapshots the
    // endpoints their group knew — except a snapshot written by a build before snapshots did).
    let peers = view.membership.allReplicas.map { replicaID -> PeerStatus in
      let peer = replica.peer(replicaID) ?? Peer(node: NodeID(replicaID), endpoint: Endpoint(host: "", port: 0))
      let learner = !view.membership.isVoter(replicaID)
      if replicaID == localPeer.node.rawValue {
        return PeerStatus(
          peer: peer, learner: learner, matchIndex: view.lastIndex, nextIndex: view.lastIndex + 1, lag: 0,
          lastContactMs: nil)
      }
      guard let progress = view.progress[replicaID] else {
        return PeerStatus(peer: peer, learner: learner, matchIndex: 0, nextIndex: 0, lag: 0, state: .probe)
      }
      let state: PeerReplicationState
      switch progress.state {
      case .probe: state = .probe
      case .replicate: state = .replicate
      case .snapshot: state = .snapshot
      }
      return PeerStatus(
        peer: peer, learner: learner, matchIndex: progress.match, nextIndex: progress.next,
        lag: view.lastIndex > progress.match ? view.lastIndex - progress.match : 0, state: state)
    }
    return GroupStatus(
      id: group, protocolName: protocolName, role: role, leader: replica.peer(view.leader), term: view.term,
      commitIndex: view.commitIndex, appliedIndex: applied, snapshotIndex: view.firstIndex - 1,
      logEntries: view.lastIndex - (view.firstIndex - 1), logBytes: 0, peers: peers,
      bootstrapVoters: replica.bootstrapVoters.map(NodeID.init))
  }

  public func prometheusMetrics() -> String {
    let (metrics, views) = state.withLock {
      (self.metrics, groups.map { id, replica in (id, replica.lock.withLock { (replica.view, replica.appliedIndex) }) })
    }
    var text = ""
    func counter(_ name: String, _ help: String, _ value: UInt64, type: String = "counter") {
      text += Prometheus.metric(name, help: help, value, type: type)
    }
    text += metrics.wal.prometheusText()
    counter("caucus_raft_loop_turns_total", "Turns of the raft host loop.", metrics.loopTurns)
    counter(
      "caucus_raft_wal_sync_turns_total", "Loop turns that appended to the write-ahead log and synced it once.",
      metrics.walSyncTurns)
    counter(
      "caucus_raft_groups_persisted_total", "Sum over syncing loop turns of the groups whose records that sync covered.",
      metrics.groupsPersisted)
    counter(
      "caucus_raft_groups_per_sync_max", "Most groups covered by one write-ahead log sync.", metrics.groupsPerSyncMax,
      type: "gauge")
    counter("caucus_raft_entries_persisted_total", "Raft log entries written to the write-ahead log.", metrics.entriesPersisted)
    counter("caucus_raft_batches_sent_total", "Message batches handed to the transport.", metrics.batchesSent)
    counter(
      "caucus_raft_messages_sent_total", "Raft messages in those batches (a coalesced heartbeat section counts as one).",
      metrics.messagesSent)
    counter(
      "caucus_raft_heartbeats_coalesced_total",
      "Heartbeats and heartbeat responses of single groups carried in coalesced sections (one per node pair per batch).",
      metrics.heartbeatsCoalesced)
    counter("caucus_raft_batches_received_total", "Inbound message batches queued for the loop.", metrics.batchesReceived)
    counter("caucus_raft_batches_rejected_total", "Inbound batches that failed to decode or were misaddressed.", metrics.batchesRejected)
    counter(
      "caucus_raft_batches_dropped_total", "Inbound batches dropped because the inbox was full.",
      metrics.batchesDroppedOverloaded)
    counter("caucus_writes_committed_total", "Writes committed, applied and answered.", metrics.writesCommitted)
    counter(
      "caucus_raft_forwards_sent_total", "Writes this node handed to their group's leader inside a batch.",
      metrics.forwards.sent)
    counter(
      "caucus_raft_forwards_accepted_total", "Forwarded writes of this node that the leader appended to its log.",
      metrics.forwards.accepted)
    counter(
      "caucus_raft_forwards_refused_total", "Forwarded writes of this node that the leader refused.",
      metrics.forwards.refused)
    counter(
      "caucus_raft_forwards_undelivered_total",
      "Forwarded writes of this node whose batch the transport reports never arrived; they are sent again.",
      metrics.forwards.undelivered)
    counter(
      "caucus_raft_forwards_held_total",
      "Times a forwarded write of this node waited a turn for a batch to its leader to share (an answer due from that leader).",
      metrics.forwards.held)
    counter(
      "caucus_raft_forwards_proposed_for_peers_total", "Writes other nodes forwarded to this node that it proposed.",
      metrics.forwards.proposedForPeers)
    counter(
      "caucus_raft_forwards_refused_for_peers_total", "Writes other nodes forwarded to this node that it refused.",
      metrics.forwards.refusedForPeers)
    counter("caucus_raft_snapshots_taken_total", "Snapshots taken of local state machines.", metrics.snapshotsTaken)
    counter("caucus_raft_snapshots_installed_total", "Snapshots received from leaders and installed.", metrics.snapshotsInstalled)
    counter(
      "caucus_raft_snapshot_chunks_sent_total", "Chunks of snapshots too large to send inline, sent to followers.",
      metrics.snapshotChunksSent)
    counter(
      "caucus_raft_snapshot_chunks_received_total", "Chunks of streamed snapshots received from leaders.",
      metrics.snapshotChunksReceived)
    counter("caucus_wal_segments_released_total", "Write-ahead log segments released after snapshots.", metrics.wal.segmentsReleased)
    let sorted = views.sorted { $0.0 < $1.0 }
    text += "# HELP caucus_group_is_leader Whether this node leads the group.\n# TYPE caucus_group_is_leader gauge\n"
    for (group, (view, _)) in sorted { text += "caucus_group_is_leader{group=\"\(group)\"} \(view.role == .leader ? 1 : 0)\n" }
    text += "# HELP caucus_group_term The group's current term.\n# TYPE caucus_group_term gauge\n"
    for (group, (view, _)) in sorted { text += "caucus_group_term{group=\"\(group)\"} \(view.term)\n" }
    text += "# HELP caucus_group_commit_index The group's commit index.\n# TYPE caucus_group_commit_index gauge\n"
    for (group, (view, _)) in sorted { text += "caucus_group_commit_index{group=\"\(group)\"} \(view.commitIndex)\n" }
    text += "# HELP caucus_group_applied_index The last log index applied, per group.\n"
    text += "# TYPE caucus_group_applied_index gauge\n"
    for (group, (_, applied)) in sorted { text += "caucus_group_applied_index{group=\"\(group)\"} \(applied)\n" }
    return text
  }

  // MARK: The loop

  /// Everything one turn collects to do after its fsync.
  private struct Turn {
    var records: [WALRecord] = []
    /// Whether the turn fsyncs its records (they may only move commit indexes: `Ready.mustSync`).
    var synced = false
    var groupsWithRecords: Set<GroupID> = []
    var entries = 0
    var outgoing: [ReplicaID: [GroupMessage]] = [:]
    /// Forwarded writes and the answers to them, sent in the early batch.
    var forwards: [ReplicaID: [ForwardedProposal]] = [:]
    /// What this turn may still propose for other nodes' forwards: the pending-write limits
    /// left when the first one came. Nil until then.
    var forwardCapacity: (writes: Int, bytes: Int)?
    var forwardCounts = ForwardCounts()
    /// Called once the turn's records are durable (success) or failed to be (failure).
    var onDurable: [(Result<Void, ConsensusError>) -> Void] = []
    var answers: [@Sendable () -> Void] = []
    var writesAnswered = 0
    var writeBytesAnswered = 0
    var readsAnswered = 0
    var writesCommitted = 0
    /// Snapshot files written this turn (received from a leader): segments may be released.
    var snapshotsWritten = 0
    var snapshotsInstalled = 0
    /// Chunks of streamed snapshots for the early batches, and the streams they finished.
    var snapshotChunks: [ReplicaID: [SnapshotChunk]] = [:]
    var snapshotStreamsFinished: [SnapshotStreams.Key] = []
    var snapshotChunksReceived = 0
    var snapshotChunksSent = 0
  }

  private func runLoop(_ wal: WriteAheadLog) {
    var nextTick = MonotonicClock.nowNanoseconds() + tickNanoseconds
    var moreReady = false
    while true {
      let (items, stopping, expired) = takeWork(nextTick: nextTick, moreReady: moreReady)
      for waiter in expired { waiter.completion(.failure(.timeout(indeterminate: false))) }
      if stopping { break }
      var turn = Turn()
      let now = MonotonicClock.nowNanoseconds()
      let ticked = now >= nextTick
      if ticked {
        // One tick per turn even after a stall: ticks measure time between turns, not catch-up.
        nextTick = now + tickNanoseconds
        for replica in live.values { replica.raft.tick() }
      }
      // Writes that waited go first (in arrival order), then this turn's; then those whose batch
      // this turn learned was lost.
      resendUnsentForwards(&turn)
      for item in items { handle(item, &turn, wal) }
      resendUnsentForwards(&turn)
      if ticked { expireDeadlines(now: now, &turn) }
      var readies: [(RaftGroup, Ready)] = []
      for replica in live.values where replica.inspect({ $0.hasReady }) { readies.append((replica, replica.raft.ready())) }
      // A Ready's `messages` (a leader's appends and heartbeats) may leave before its own fsync,
      // so followers persist while the leader does: one batch per destination now, one after.
      var early: [ReplicaID: [GroupMessage]] = [:]
      var streamStarted = false
      for (replica, ready) in readies {
        for message in ready.messages {
          if streams(message) {
            snapshotStreams.start(message, group: replica.id.packed)
            streamStarted = true
            continue
          }
          early[message.to, default: []].append(GroupMessage(group: replica.id.packed, message: message))
        }
      }
      // Streamed snapshots send a tick's share of their chunks per tick (and at once when one
      // starts), beside the early batch.
      if ticked {
        let dropped = snapshotStreams.tick(idleTicksMax: options.snapshotAssemblyIdleTicksMax)
        if dropped > 0 { logger.notice("dropped idle snapshot assemblies", metadata: ["count": "\(dropped)"]) }
      }
      if ticked || streamStarted {
        let (chunks, finished) = snapshotStreams.takeChunks(bytesPerDestination: options.snapshotStreamBytesPerTick) {
          key, term in
          guard let id = GroupID(packed: key.group), let replica = live[id] else { return false }
          return replica.raft.role == .leader && replica.raft.term == term
        }
        turn.snapshotChunks = chunks
        turn.snapshotStreamsFinished = finished
      }
      // Held heartbeat responses ride with this turn's batches; at a tick every one leaves.
      releaseHeldHeartbeatResponses(into: &early, all: ticked)
      // Group creations and deletions (records already in the turn) and Readies with entries, a
      // snapshot or a new term or vote need the fsync; a commit index alone does not (`mustSync`).
      let readiesSync = !turn.records.isEmpty || readies.contains { $0.1.mustSync }
      // Commit-only records left unsynced get an fsync after `unsyncedRecordsTicksMax` ticks.
      if ticked && wal.hasUnsyncedRecords { ticksWithUnsyncedRecords += 1 }
      let syncs = readiesSync || ticksWithUnsyncedRecords >= options.unsyncedRecordsTicksMax
      turn.synced = syncs
      // Our writes for other leaders ride with this turn's acknowledgements when its Readies sync
      // anyway: one batch instead of two, and the leader takes both in one turn (one fsync there
      // instead of two). Otherwise they leave now, unless their leader still owes us answers
      // (`forwardsUnansweredBy`): then they wait for that answer or our next acknowledgement.
      // A leader's answers to forwards stay with its appends, in the early batch.
      if ticked {
        forwardsUnansweredBy = forwardsUnansweredBy.mapValues { $0 + 1 }.filter { $0.value < options.forwardHoldTicksMax }
      }
      var (forwardsNow, forwardsAfterSync) = Self.splitProposals(turn.forwards)
      for (node, proposals) in forwardsAfterSync where !readiesSync {
        forwardsAfterSync[node] = nil
        if forwardsUnansweredBy[node] != nil {
          hold(proposals, for: node, &turn)
        } else {
          forwardsNow[node, default: []].append(contentsOf: proposals)
        }
      }
      for (node, forwards) in forwardsNow where forwards.contains(where: \.isProposal) {
        forwardsUnansweredBy[node] = forwardsUnansweredBy[node] ?? 0
      }
      for node in forwardsAfterSync.keys { forwardsUnansweredBy[node] = forwardsUnansweredBy[node] ?? 0 }
      let sentEarly = send(early, forwards: forwardsNow, chunks: turn.snapshotChunks, &turn)
      do {
        try persist(readies, &turn, wal)
        if !turn.records.isEmpty { try wal.append(turn.records) }
        if syncs {
          try wal.sync()
          ticksWithUnsyncedRecords = 0
        }
      } catch {
        failStorage("appending to the log failed: \(error)", &turn)
        break
      }
      for action in turn.onDurable { action(.success(())) }
      for (replica, ready) in readies {
        for message in ready.messagesAfterPersist {
          if options.holdHeartbeatResponses && message.kind == .heartbeatResponse && message.context == 0 {
            heldHeartbeatResponses[message.to, default: [:]][replica.id.packed] = message
            continue
          }
          turn.outgoing[message.to, default: []].append(GroupMessage(group: replica.id.packed, message: message))
        }
      }
      releaseHeldHeartbeatResponses(into: &turn.outgoing, all: false)
      let sentAfter = send(turn.outgoing, forwards: forwardsAfterSync, chunks: [:], &turn)
      let sent = (
        batches: sentEarly.batches + sentAfter.batches, messages: sentEarly.messages + sentAfter.messages,
        heartbeats: sentEarly.heartbeats + sentAfter.heartbeats)
      for (replica, ready) in readies {
        apply(replica, ready, &turn)
        replica.raft.advance(ready)
        // The transport reports no delivery: count a snapshot as delivered; if it was lost, the
        // follower's next response shows it and the leader probes (and sends it) again.
        for message in ready.messages where message.kind == .snapshot && !streams(message) {
          replica.raft.reportSnapshot(to: message.to, failed: false)
        }
        if !replica.transfers.isEmpty { settleTransfers(replica, now: now, &turn) }
        if replica.membershipChange != nil { settleMembershipChange(replica, now: now, &turn) }
      }
      // A streamed snapshot whose last chunk left counts as delivered, as an inline one does.
      for key in turn.snapshotStreamsFinished {
        guard let id = GroupID(packed: key.group), let replica = live[id] else { continue }
        replica.raft.reportSnapshot(to: key.replica, failed: false)
      }
      let touched = ticked ? Array(live.values) : readies.map(\.0)
      for replica in touched { replica.refreshView() }
      finishTurn(&turn, wal: wal, sent: sent)
      for answer in turn.answers { answer() }
      do {
        try snapshotDueGroups(wal, releasing: turn.snapshotsWritten)
      } catch {
        var failed = Turn()
        failStorage("releasing log segments failed: \(error)", &failed)
        break
      }
      moreReady = live.values.contains { $0.inspect { $0.hasReady } }
    }
    shutDown(wal)
  }

  /// Waits for work, the next tick, or a read deadline; returns the inbox, whether to stop, and
  /// the stale reads whose deadline passed.
  private func takeWork(nextTick: UInt64, moreReady: Bool) -> ([InboxItem], Bool, [StaleReadWaiter]) {
    state.withLock {
      while !inboxUrgent && phase == .running && !moreReady {
        let earliest = staleReadWaiters.map(\.deadline).min() ?? UInt64.max
        let now = MonotonicClock.nowNanoseconds()
        if now >= nextTick || now >= earliest { break }
        state.wait(untilNanoseconds: min(nextTick, earliest))
      }
      let now = MonotonicClock.nowNanoseconds()
      var expired: [StaleReadWaiter] = []
      staleReadWaiters.removeAll { waiter in
        guard waiter.deadline <= now else { return false }
        expired.append(waiter)
        return true
      }
      readsOutstanding -= expired.count
      let items = undeliveredForwards.map { InboxItem.undelivered($0.node, $0.forwards) } + inbox
      undeliveredForwards.removeAll()
      inbox.removeAll(keepingCapacity: true)
      inboxUrgent = false
      inboundBatchesQueued = 0
      return (items, phase != .running, expired)
    }
  }

  private func handle(_ item: InboxItem, _ turn: inout Turn, _ wal: WriteAheadLog) {
    switch item {
    case .batch(let batch):
      for item in batch.allMessages {
        // Messages for a group this node does not (yet) host are dropped: the sender retries.
        guard let id = GroupID(packed: item.group), let replica = live[id] else { continue }
        guard item.message.from == batch.fromNode, item.message.to == localPeer.node.rawValue else { continue }
        replica.raft.step(item.message)
      }
      for forward in batch.forwards { handle(forward, from: batch.fromNode, &turn) }
      for chunk in batch.snapshotChunks { receive(chunk, from: batch.fromNode, &turn) }
      if batch.forwards.contains(where: { !$0.isProposal }) { forwardsUnansweredBy[batch.fromNode] = nil }
    case .undelivered(let node, let forwards):
      keepUnsent(forwards, to: node, &turn)
      forwardsUnansweredBy[node] = nil
    case .propose(let id, let command, let forward, let completion):
      guard let replica = live[id] else {
        answerWrite(&turn, bytes: command.count) { completion(.failure(.groupNotFound(id))) }
        return
      }
      let deadline = MonotonicClock.nowNanoseconds() + options.proposalTimeoutMs * 1_000_000
      if forward {
        self.forward(replica, command, deadline: deadline, completion, &turn)
      } else {
        propose(replica, command, deadline: deadline, completion, &turn)
      }
    case .read(let id, let read):
      guard let replica = live[id] else {
        answerRead(&turn) { read.completion(.failure(.groupNotFound(id))) }
        return
      }
      nextReadContext += 1
      do {
        try replica.raft.readIndex(context: nextReadContext)
        replica.readsAwaitingIndex[nextReadContext] = read
      } catch {
        let answer = proposalError(replica, error)
        answerRead(&turn) { read.completion(.failure(answer)) }
      }
    case .create(let id, let peers, let bootstrapVoters, let completion):
      state.withLock { controlQueued -= 1 }
      guard live[id] == nil else { return turn.answers.append { completion(.failure(.groupAlreadyExists(id))) } }
      guard live.count < options.groupsMax else {
        let limit = options.groupsMax
        return turn.answers.append {
          completion(.failure(.invalidRequest("this node hosts \(limit) groups, the most it may (raft.groupsMax)")))
        }
      }
      let replica: RaftGroup
      do {
        replica = try makeGroup(
          id, peers: peers, bootstrapVoters: bootstrapVoters,
          restored: RestoredState(bootstrapConfig: ConfigState(voters: bootstrapVoters)))
      } catch {
        return turn.answers.append { completion(.failure(.invalidRequest("\(error)"))) }
      }
      do {
        // A snapshot file left by an earlier incarnation whose unlink failed must not revive it.
        try wal.deleteSnapshot(group: id.packed)
      } catch {
        return turn.answers.append { completion(.failure(.storage("\(error)"))) }
      }
      live[id] = replica
      turn.records.append(RaftStorage.groupCreatedRecord(group: id, peers: peers, bootstrapVoters: bootstrapVoters))
      turn.groupsWithRecords.insert(id)
      turn.onDurable.append { [self] result in
        if case .success = result {
          state.withLock { groups[id] = replica }
          logger.info(
            "group created",
            metadata: [
              "group": "\(id)", "peers": "\(peers.map(\.description))", "bootstrapVoters": "\(bootstrapVoters)",
            ])
        }
        completion(result)
      }
    case .delete(let id, let completion):
      state.withLock { controlQueued -= 1 }
      guard let replica = live.removeValue(forKey: id) else {
        return turn.answers.append { completion(.failure(.groupNotFound(id))) }
      }
      turn.records.append(RaftStorage.groupDeletedRecord(group: id))
      turn.groupsWithRecords.insert(id)
      failAllWaiting(replica, .groupNotFound(id), &turn)
      snapshotStreams.forget(group: id.packed)
      let walBox = UncheckedSendableBox(wal)
      turn.onDurable.append { [self] result in
        guard case .success = result else { return completion(result) }
        do {
          try walBox.value.deleteSnapshot(group: id.packed)
        } catch {
          // Recovery removes snapshot files of groups that are not live.
          logger.warning("deleting a group's snapshot failed", metadata: ["group": "\(id)", "error": "\(error)"])
        }
        let orphans: [StaleReadWaiter] = state.withLock {
          groups[id] = nil
          var orphans: [StaleReadWaiter] = []
          staleReadWaiters.removeAll { waiter in
            guard waiter.group == id else { return false }
            orphans.append(waiter)
            return true
          }
          readsOutstanding -= orphans.count
          return orphans
        }
        for waiter in orphans { waiter.completion(.failure(.groupNotFound(id))) }
        logger.info("group deleted", metadata: ["group": "\(id)"])
        completion(result)
      }
    case .snapshot(let id, let completion):
      state.withLock { controlQueued -= 1 }
      guard let replica = live[id] else { return turn.answers.append { completion(.failure(.groupNotFound(id))) } }
      replica.snapshotRequests.append(completion)
    case .transfer(let id, let node, let completion):
      state.withLock { controlQueued -= 1 }
      guard let replica = live[id] else { return turn.answers.append { completion(.failure(.groupNotFound(id))) } }
      guard replica.raft.membership.allReplicas.contains(node.rawValue) else {
        return turn.answers.append { completion(.failure(.peerNotInGroup(node, id))) }
      }
      guard replica.raft.role == .leader else {
        let answer = replica.leaderError(leader: replica.raft.leader)
        return turn.answers.append { completion(.failure(answer)) }
      }
      if node == localPeer.node { return turn.answers.append { completion(.success(())) } }
      do {
        try replica.raft.transferLeadership(to: node.rawValue)
      } catch {
        let answer = proposalError(replica, error)
        return turn.answers.append { completion(.failure(answer)) }
      }
      let timeout = options.transferElectionTimeoutsMax * UInt64(options.electionTicks) * tickNanoseconds
      replica.transfers.append((node.rawValue, MonotonicClock.nowNanoseconds() + timeout, completion))
    case .membership(let id, let request, let completion):
      state.withLock { controlQueued -= 1 }
      guard let replica = live[id] else { return turn.answers.append { completion(.failure(.groupNotFound(id))) } }
      beginMembershipChange(replica, request, completion, &turn)
    }
  }

  // MARK: Membership changes

  /// Takes `request` as the group's membership change; it is checked against the membership in
  /// force when it is proposed (`plan`), which may be later than now.
  private func beginMembershipChange(
    _ replica: RaftGroup, _ request: MembershipRequest, _ completion: @escaping ConsensusCompletion<Void>,
    _ turn: inout Turn
  ) {
    func refuse(_ error: ConsensusError) { turn.answers.append { completion(.failure(error)) } }
    guard replica.raft.role == .leader else { return refuse(replica.leaderError(leader: replica.raft.leader)) }
    // The core takes one change at a time; this one's steps would interleave with it.
    guard replica.membershipChange == nil else { return refuse(.overloaded(retryAfterMs: 1_000)) }
    let deadline = MonotonicClock.nowNanoseconds() + options.membershipChangeTimeoutMs * 1_000_000
    replica.membershipChange = MembershipChange(stage: .proposing(request), deadline: deadline, completion: completion)
    settleMembershipChange(replica, now: MonotonicClock.nowNanoseconds(), &turn)
  }

  /// What `request` takes from `membership`.
  private enum MembershipPlan {
    case propose(ConfigChange, then: MembershipChange.Next)
    /// addPeer of a node that is a learner already (an earlier attempt): catch it up, promote.
    case resumeCatchUp(ReplicaID)
    /// Nothing to change.
    case done
    case refused(ConsensusError)
  }

  private func plan(_ request: MembershipRequest, _ membership: ConfigState, group: GroupID) -> MembershipPlan {
    switch request {
    case .add(let peer):
      let node = peer.node.rawValue
      guard !membership.isVoter(node) else { return .refused(.peerAlreadyInGroup(peer.node, group)) }
      if membership.learners.contains(node) { return .resumeCatchUp(node) }
      return .propose(ConfigChange([.init(.addLearner, node)], context: RaftStorage.encodePeers([peer])), then: .catchUp(node))
    case .remove(let node):
      guard membership.allReplicas.contains(node.rawValue) else { return .refused(.peerNotInGroup(node, group)) }
      guard membership.voters != [node.rawValue] else {
        return .refused(.illegalPeerNumber(count: 0, reason: "node \(node) is the group's only voter"))
      }
      return .propose(ConfigChange([.init(.remove, node.rawValue)]), then: .finish)
    case .change(let peers):
      let wanted = Set(peers.map(\.node.rawValue))
      let current = Set(membership.voters + membership.votersOutgoing)
      guard !wanted.isDisjoint(with: current) else {
        return .refused(
          .illegalPeerNumber(
            count: peers.count, reason: "the new peers share no member with the current voters \(current.sorted())"))
      }
      let added = peers.filter { !current.contains($0.node.rawValue) }
      let removed = Set(membership.allReplicas).subtracting(wanted).sorted()
      // Wanted learners are among `added`: they become voters.
      let steps = added.map { ConfigChangeStep(.addVoter, $0.node.rawValue) } + removed.map { ConfigChangeStep(.remove, $0) }
      guard !steps.isEmpty else { return .done }
      return .propose(ConfigChange(steps, context: added.isEmpty ? [] : RaftStorage.encodePeers(added)), then: .finish)
    }
  }

  /// Moves the membership change of `replica` on as far as it can go now: to its next entry once
  /// one is applied, to the promotion once the learner caught up; answers it when it is done,
  /// when this node no longer leads, or at its deadline. Each pass moves one stage on, and there
  /// are at most three stages.
  private func settleMembershipChange(_ replica: RaftGroup, now: UInt64, _ turn: inout Turn) {
    let stagesMax = 3
    for _ in 0..<stagesMax {
      guard let change = replica.membershipChange else { return }
      func answer(_ result: Result<Void, ConsensusError>) {
        replica.membershipChange = nil
        let completion = change.completion
        turn.answers.append { completion(result) }
      }
      let leaderError = replica.leaderError(leader: replica.raft.leader)
      switch change.stage {
      case .proposing(let request):
        guard replica.raft.role == .leader else { return answer(.failure(leaderError)) }
        // Planned against the membership in force now: an earlier change may have applied while
        // this one waited.
        switch plan(request, replica.raft.membership, group: replica.id) {
        case .refused(let error): return answer(.failure(error))
        case .done: return answer(.success(()))
        case .resumeCatchUp(let learner):
          replica.membershipChange!.stage = .catchingUp(learner: learner, target: replica.raft.committed)
          continue
        case .propose(let configChange, let next):
          do {
            let index = try replica.raft.proposeConfigChange(configChange)
            replica.membershipChange!.stage = .applying(index: index, term: replica.raft.term, then: next)
            logger.info(
              "membership change proposed",
              metadata: [
                "group": "\(replica.id)", "index": "\(index)",
                "steps": "\(configChange.steps.map { "\($0.kind) \($0.replica)" })",
              ])
          } catch .configChangePending {
            // A just-elected leader first applies its own entries: wait for them, not the caller.
            if now >= change.deadline { return answer(.failure(.timeout(indeterminate: false))) }
          } catch {
            return answer(.failure(proposalError(replica, error)))
          }
          return
        }
      case .applying(let index, let term, let next):
        guard replica.raft.applied >= index else {
          // Deposed before it applied: the next leader may still commit the entry, so its
          // outcome is unknown (a retry at the new leader resumes or reports it).
          if replica.raft.role != .leader || now >= change.deadline {
            return answer(.failure(.timeout(indeterminate: true)))
          }
          return
        }
        guard let appliedTerm = replica.raft.term(at: index) else {
          // Compacted into a snapshot (installed from another leader): which entry it was is gone.
          return answer(.failure(.timeout(indeterminate: true)))
        }
        // Another leader's entry took the slot: this change was not made.
        guard appliedTerm == term else { return answer(.failure(leaderError)) }
        switch next {
        case .finish:
          // changePeer: wait for the leader to leave the joint configuration as well.
          guard replica.raft.membership.isJoint else {
            logger.info(
              "membership changed", metadata: ["group": "\(replica.id)", "membership": "\(replica.raft.membership)"])
            return answer(.success(()))
          }
          // The joint configuration is in force: the change is made, and whichever node leads
          // leaves the joint configuration on its own (the core retries that every tick).
          if replica.raft.role != .leader {
            logger.info(
              "membership changed (joint; the next leader leaves it)",
              metadata: ["group": "\(replica.id)", "membership": "\(replica.raft.membership)"])
            return answer(.success(()))
          }
          if now >= change.deadline { return answer(.failure(.timeout(indeterminate: true))) }
          return
        case .catchUp(let learner):
          replica.membershipChange!.stage = .catchingUp(learner: learner, target: replica.raft.committed)
        }
      case .catchingUp(let learner, let target):
        guard replica.raft.role == .leader else { return answer(.failure(leaderError)) }
        guard replica.raft.membership.learners.contains(learner) else {
          return answer(.failure(.invalidRequest("node \(learner) is no longer a learner of \(replica.id)")))
        }
        let match = replica.inspect { $0.status.progress[learner]?.match ?? 0 }
        guard match >= target else {
          if now >= change.deadline { return answer(.failure(.timeout(indeterminate: true))) }
          return
        }
        do {
          let context = replica.peer(learner).map { RaftStorage.encodePeers([$0]) } ?? []
          let index = try replica.raft.proposeConfigChange(ConfigChange([.init(.addVoter, learner)], context: context))
          replica.membershipChange!.stage = .applying(index: index, term: replica.raft.term, then: .finish)
          logger.info(
            "learner caught up; promoting it",
            metadata: ["group": "\(replica.id)", "node": "\(learner)", "match": "\(match)", "index": "\(index)"])
        } catch {
          // `configChangePending` cannot happen (ours was applied); a transfer in progress or a
          // full uncommitted budget may: say so and let the caller retry, which resumes here.
          return answer(.failure(proposalError(replica, error)))
        }
        return
      }
    }
  }

  /// Answers the leader transfers of `replica` that finished (this node sees the target lead) or
  /// ran out of time.
  private func settleTransfers(_ replica: RaftGroup, now: UInt64, _ turn: inout Turn) {
    let leader = replica.raft.leader
    replica.transfers.removeAll { transfer in
      let completion = transfer.completion
      if leader == transfer.target {
        turn.answers.append { completion(.success(())) }
        return true
      }
      if now >= transfer.deadline {
        turn.answers.append { completion(.failure(.timeout(indeterminate: true))) }
        return true
      }
      return false
    }
  }

  private func proposalError(_ replica: RaftGroup, _ error: ProposalError) -> ConsensusError {
    switch error {
    case .notLeader(let leader): return replica.leaderError(leader: leader)
    case .transferInProgress, .uncommittedBytesExceeded, .tooManyPendingReads: return .overloaded(retryAfterMs: 100)
    case .commandTooLarge(let bytes, let limit):
      return .invalidRequest("the command is \(bytes) bytes; a raft entry takes at most \(limit)")
    // Another change (or a new leader's first entry) must apply first: retry shortly.
    case .configChangePending: return .overloaded(retryAfterMs: 500)
    case .configChangeInvalid: return .invalidRequest(error.description)
    }
  }

  /// Proposes `command` in `replica` and waits for its index to apply; a replica that does not
  /// lead answers the core's refusal.
  private func propose(
    _ replica: RaftGroup, _ command: [UInt8], deadline: UInt64, _ completion: @escaping ConsensusCompletion<WriteResult>,
    _ turn: inout Turn
  ) {
    do {
      let index = try replica.raft.propose(command)
      if let overwritten = replica.proposals[index] {
        // Our earlier entry at this index was truncated while we were not the leader. Other
        // replicas may still hold it, and a later leader that has it could still commit it
        // (Raft paper Figure 8): its outcome is unknown, not a definite failure.
        let completion = overwritten.completion
        answerWrite(&turn, bytes: overwritten.bytes) { completion(.failure(.timeout(indeterminate: true))) }
      }
      replica.proposals[index] = Proposal(
        term: replica.raft.term, bytes: command.count, deadline: deadline, completion: completion)
    } catch {
      let answer = proposalError(replica, error)
      answerWrite(&turn, bytes: command.count) { completion(.failure(answer)) }
    }
  }

  // MARK: Forwarded writes

  /// A write at this node: handed to the leader in this turn's early batch when another node is
  /// known to lead, else proposed here (which answers `notLeader`/`noLeader` when this node does
  /// not lead either: the write never left it).
  private func forward(
    _ replica: RaftGroup, _ command: [UInt8], deadline: UInt64, _ completion: @escaping ConsensusCompletion<WriteResult>,
    _ turn: inout Turn, heldFor: ReplicaID = 0
  ) {
    // A held write whose leader is no longer known (an election started while it waited) goes
    // where it would have gone at once: that node takes it if it still leads, else says why not.
    let leader = replica.raft.leader == 0 ? heldFor : replica.raft.leader
    guard replica.raft.role != .leader, leader != localPeer.node.rawValue, replica.peer(leader) != nil else {
      return propose(replica, command, deadline: deadline, completion, &turn)
    }
    let limit = replica.raft.config.maxCommandBytes
    guard command.count <= limit else {
      // The leader would refuse it: say why here, with the same words.
      let answer = proposalError(replica, .commandTooLarge(bytes: command.count, limit: limit))
      return answerWrite(&turn, bytes: command.count) { completion(.failure(answer)) }
    }
    nextForwardRequestID += 1
    let write = ForwardedWrite(
      requestID: nextForwardRequestID, leader: leader, bytes: command.count, deadline: deadline, completion: completion)
    precondition(replica.forwardsAwaitingAcceptance[write.requestID] == nil, "request ids are unique")
    replica.forwardsAwaitingAcceptance[write.requestID] = write
    forwardsWaiting += 1
    turn.forwards[leader, default: []].append(
      ForwardedProposal(group: replica.id.packed, requestID: write.requestID, body: .proposal(data: command)))
  }

  /// One forward from `node`: as the leader, a proposal to take; as a follower, the leader's
  /// answer to one of ours.
  private func handle(_ forward: ForwardedProposal, from node: ReplicaID, _ turn: inout Turn) {
    let replica = GroupID(packed: forward.group).flatMap { live[$0] }
    switch forward.body {
    case .proposal(let command):
      func answer(_ body: ForwardedProposal.Body) {
        turn.forwards[node, default: []].append(
          ForwardedProposal(group: forward.group, requestID: forward.requestID, body: body))
      }
      guard let replica else {
        turn.forwardCounts.refusedForPeers += 1
        return answer(.refused(.groupNotFound, leaderHint: 0))
      }
      // Only a member may propose (and only a member's endpoint is known to answer it).
      guard node != localPeer.node.rawValue, replica.peer(node) != nil else {
        turn.forwardCounts.refusedForPeers += 1
        return
      }
      // The entry needs no completion here, but its bytes sit in this node's log: it takes what
      // is left of the pending-write limits this turn. The core's uncommitted-bytes limit bounds
      // what all turns together append before a commit.
      if turn.forwardCapacity == nil {
        turn.forwardCapacity = state.withLock {
          (options.pendingWritesMax - writesOutstanding, options.pendingWriteBytesMax - writeBytesOutstanding)
        }
      }
      guard let capacity = turn.forwardCapacity, capacity.writes >= 1, capacity.bytes >= command.count else {
        turn.forwardCounts.refusedForPeers += 1
        return answer(.refused(.overloaded, leaderHint: 0))
      }
      do {
        let index = try replica.raft.propose(command)
        turn.forwardCapacity = (capacity.writes - 1, capacity.bytes - command.count)
        turn.forwardCounts.proposedForPeers += 1
        answer(.accepted(index: index, term: replica.raft.term))
      } catch {
        turn.forwardCounts.refusedForPeers += 1
        let (refusal, leaderHint) = forwardRefusal(proposalError(replica, error))
        answer(.refused(refusal, leaderHint: leaderHint))
      }
    case .accepted(let index, let term):
      // Unknown: answered already (deadline, group deleted) or not ours.
      guard let replica, let write = replica.forwardsAwaitingAcceptance[forward.requestID], write.leader == node else {
        return
      }
      replica.forwardsAwaitingAcceptance[forward.requestID] = nil
      turn.forwardCounts.accepted += 1
      guard index > replica.appliedIndex else {
        // Applied before the answer came (a later batch overtook this one). Log Matching tells
        // another write apart; this one's outcome is no longer at hand.
        let overwritten = replica.raft.term(at: index).map { $0 != term } ?? false
        return answerForward(write, .failure(overwritten ? .noLeader(replica.id) : .timeout(indeterminate: true)), &turn)
      }
      replica.forwardsAwaitingApply[index, default: []].append((term, write))
    case .refused(let refusal, let leaderHint):
      guard let replica, let write = replica.forwardsAwaitingAcceptance[forward.requestID], write.leader == node else {
        return
      }
      replica.forwardsAwaitingAcceptance[forward.requestID] = nil
      turn.forwardCounts.refused += 1
      let answer: ConsensusError
      switch refusal {
      case .notLeader:
        // A hint naming this node is stale news of an election: wait for the leader to show.
        answer = proposalError(replica, .notLeader(leader: leaderHint == localPeer.node.rawValue ? 0 : leaderHint))
      case .overloaded: answer = .overloaded(retryAfterMs: 100)
      case .commandTooLarge:
        answer = proposalError(replica, .commandTooLarge(bytes: write.bytes, limit: replica.raft.config.maxCommandBytes))
      // The node we took for the leader has no replica (deleted, or not created yet).
      case .groupNotFound: answer = .noLeader(replica.id)
      }
      answerForward(write, .failure(answer), &turn)
    }
  }

  /// How a leader tells a follower why it did not take its forward: `proposalError`'s answer in
  /// the wire's terms.
  private func forwardRefusal(_ error: ConsensusError) -> (ForwardRefusal, ReplicaID) {
    switch error {
    case .notLeader(_, let leader): return (.notLeader, leader?.node.rawValue ?? 0)
    case .noLeader: return (.notLeader, 0)
    case .overloaded: return (.overloaded, 0)
    case .invalidRequest: return (.commandTooLarge, 0)
    default: preconditionFailure("proposalError answers a command proposal with \(error)")
    }
  }

  /// Answers a forwarded write, taken out of whichever collection held it.
  private func answerForward(_ write: ForwardedWrite, _ result: Result<WriteResult, ConsensusError>, _ turn: inout Turn) {
    precondition(forwardsWaiting > 0, "a forwarded write is answered once")
    forwardsWaiting -= 1
    let completion = write.completion
    answerWrite(&turn, bytes: write.bytes) { completion(result) }
  }

  /// Answers the forwarded writes waiting for `index`, which `replica` just applied with `term`.
  private func settleForwards(
    _ replica: RaftGroup, index: LogIndex, term: Term, response: [UInt8], _ turn: inout Turn
  ) {
    guard let waiting = replica.forwardsAwaitingApply.removeValue(forKey: index) else { return }
    for (acceptedTerm, write) in waiting {
      if acceptedTerm == term {
        turn.writesCommitted += 1
        answerForward(write, .success(WriteResult(index: index, response: response)), &turn)
      } else {
        // Another entry holds the index for good (it is applied): this write never will be.
        answerForward(write, .failure(.noLeader(replica.id)), &turn)
      }
    }
  }

  /// Sends again, to whoever leads now, what the transport dropped last turn before it left.
  private func resendUnsentForwards(_ turn: inout Turn) {
    for (node, answers) in forwardAnswersUnsent { turn.forwards[node, default: []].append(contentsOf: answers) }
    forwardAnswersUnsent = [:]
    guard !groupsWithUnsentForwards.isEmpty else { return }
    let ids = groupsWithUnsentForwards
    groupsWithUnsentForwards = []
    for id in ids {
      guard let replica = live[id] else { continue }  // deleted: `failAllWaiting` answered them
      let unsent = replica.forwardsUnsent
      replica.forwardsUnsent = []
      let now = MonotonicClock.nowNanoseconds()
      for write in unsent {
        forwardsWaiting -= 1  // `forward` counts it again if it goes out
        guard write.deadline > now else {
          let completion = write.completion
          // It never left this node: certainly not written.
          answerWrite(&turn, bytes: write.command.count) { completion(.failure(.timeout(indeterminate: false))) }
          continue
        }
        forward(replica, write.command, deadline: write.deadline, write.completion, &turn, heldFor: write.heldFor)
      }
    }
  }

  /// The transport's word that a batch with forwards never reached `node` (any thread).
  private func undelivered(_ forwards: ArraySlice<ForwardedProposal>, to node: ReplicaID) {
    state.withLock {
      guard phase == .running, failure == nil else { return }  // stopping answers every waiter
      undeliveredForwards.append((node, forwards))
    }
  }

  /// A batch never reached `node`: keep its forwards for the next tick. Our writes go back to
  /// unsent (nothing can have reached the leader); answers to other nodes wait beside them, up
  /// to a bound.
  private func keepUnsent(_ forwards: ArraySlice<ForwardedProposal>, to node: ReplicaID, _ turn: inout Turn) {
    for forward in forwards {
      guard case .proposal(let command) = forward.body else {
        if forwardAnswersUnsent[node, default: []].count < WireLimits.forwardsPerBatchMax {
          forwardAnswersUnsent[node, default: []].append(forward)
        }
        continue
      }
      if takeBack(forward, command, heldFor: 0) { turn.forwardCounts.undelivered += 1 }
    }
  }

  /// Our writes for a leader that owes us answers: back to unsent, forwarded again next turn
  /// (to whoever leads then), so they leave with a later batch.
  private func hold(_ proposals: [ForwardedProposal], for node: ReplicaID, _ turn: inout Turn) {
    for forward in proposals {
      guard case .proposal(let command) = forward.body else { preconditionFailure("only proposals are held") }
      if takeBack(forward, command, heldFor: node) { turn.forwardCounts.held += 1 }
    }
  }

  /// Moves one of our forwarded writes that did not leave this node back to unsent. False when
  /// it is gone: its group was deleted after it was queued this turn (and answered then).
  private func takeBack(_ forward: ForwardedProposal, _ command: [UInt8], heldFor: ReplicaID) -> Bool {
    guard let id = GroupID(packed: forward.group), let replica = live[id],
      let write = replica.forwardsAwaitingAcceptance.removeValue(forKey: forward.requestID)
    else { return false }
    replica.forwardsUnsent.append(
      UnsentWrite(command: command, deadline: write.deadline, completion: write.completion, heldFor: heldFor))
    groupsWithUnsentForwards.insert(id)
    return true
  }

  private func answerWrite(_ turn: inout Turn, bytes: Int, _ answer: @escaping @Sendable () -> Void) {
    turn.writesAnswered += 1
    turn.writeBytesAnswered += bytes
    turn.answers.append(answer)
  }

  private func answerRead(_ turn: inout Turn, _ answer: @escaping @Sendable () -> Void) {
    turn.readsAnswered += 1
    turn.answers.append(answer)
  }

  /// Fails every write and read waiting in `replica` (deleted, or the engine is stopping).
  private func failAllWaiting(_ replica: RaftGroup, _ error: ConsensusError, _ turn: inout Turn) {
    for (_, proposal) in replica.proposals {
      let completion = proposal.completion
      let answer: ConsensusError = error == .shuttingDown ? .timeout(indeterminate: true) : error
      answerWrite(&turn, bytes: proposal.bytes) { completion(.failure(answer)) }
    }
    replica.proposals = [:]
    // Sent forwards may still be written by the leader, whatever happens here.
    for write in replica.forwardsAwaitingAcceptance.values {
      answerForward(write, .failure(.timeout(indeterminate: true)), &turn)
    }
    for (_, write) in replica.forwardsAwaitingApply.values.joined() {
      answerForward(write, .failure(.timeout(indeterminate: true)), &turn)
    }
    for unsent in replica.forwardsUnsent {
      forwardsWaiting -= 1
      let completion = unsent.completion
      answerWrite(&turn, bytes: unsent.command.count) { completion(.failure(error)) }
    }
    replica.forwardsAwaitingAcceptance = [:]
    replica.forwardsAwaitingApply = [:]
    replica.forwardsUnsent = []
    for read in Array(replica.readsAwaitingIndex.values) + replica.readsAwaitingApply.map(\.read) {
      answerRead(&turn) { read.completion(.failure(error)) }
    }
    replica.readsAwaitingIndex = [:]
    replica.readsAwaitingApply = []
    for completion in replica.snapshotRequests { turn.answers.append { completion(.failure(error)) } }
    replica.snapshotRequests = []
    for transfer in replica.transfers {
      let completion = transfer.completion
      turn.answers.append { completion(.failure(error)) }
    }
    replica.transfers = []
    if let change = replica.membershipChange {
      // Its entries may still commit.
      let answer: ConsensusError = error == .shuttingDown ? .timeout(indeterminate: true) : error
      let completion = change.completion
      turn.answers.append { completion(.failure(answer)) }
      replica.membershipChange = nil
    }
  }

  private func expireDeadlines(now: UInt64, _ turn: inout Turn) {
    for replica in live.values {
      for (index, proposal) in replica.proposals where proposal.deadline <= now {
        replica.proposals[index] = nil
        let completion = proposal.completion
        answerWrite(&turn, bytes: proposal.bytes) { completion(.failure(.timeout(indeterminate: true))) }
      }
      for (requestID, write) in replica.forwardsAwaitingAcceptance where write.deadline <= now {
        replica.forwardsAwaitingAcceptance[requestID] = nil
        answerForward(write, .failure(.timeout(indeterminate: true)), &turn)
      }
      for (index, waiting) in replica.forwardsAwaitingApply where waiting.contains(where: { $0.write.deadline <= now }) {
        let (expired, kept) = (waiting.filter { $0.write.deadline <= now }, waiting.filter { $0.write.deadline > now })
        replica.forwardsAwaitingApply[index] = kept.isEmpty ? nil : kept
        for (_, write) in expired { answerForward(write, .failure(.timeout(indeterminate: true)), &turn) }
      }
      for (context, read) in replica.readsAwaitingIndex where read.deadline <= now {
        replica.readsAwaitingIndex[context] = nil
        answerRead(&turn) { read.completion(.failure(.timeout(indeterminate: false))) }
      }
      if !replica.transfers.isEmpty { settleTransfers(replica, now: now, &turn) }
      // Also how a learner's catch-up is noticed: its acknowledgements need not make a Ready.
      if replica.membershipChange != nil { settleMembershipChange(replica, now: now, &turn) }
      replica.readsAwaitingApply.removeAll { waiting in
        guard waiting.read.deadline <= now else { return false }
        let read = waiting.read
        answerRead(&turn) { read.completion(.failure(.timeout(indeterminate: false))) }
        return true
      }
    }
  }

  /// Step 2 of the Ready contract, for every group at once: records for one append and one sync.
  /// A snapshot received from a leader is written to its file first (its own fsyncs: rare), then
  /// marked in the log so that recovery voids the entries it replaced.
  private func persist(_ readies: [(RaftGroup, Ready)], _ turn: inout Turn, _ wal: WriteAheadLog) throws {
    for (replica, ready) in readies {
      if let snapshot = ready.snapshot {
        try wal.writeSnapshot(
          WALSnapshot(
            group: replica.id.packed, index: snapshot.index, term: snapshot.term,
            data: RaftStorage.encodeSnapshot(config: snapshot.config, data: snapshot.data)))
        turn.records.append(
          RaftStorage.hardStateRecord(
            group: replica.id, ready.hardState ?? replica.raft.hardState, snapshotMarker: (snapshot.index, snapshot.term)))
        turn.snapshotsWritten += 1
      }
      for entry in ready.entries {
        turn.records.append(RaftStorage.entryRecord(group: replica.id, entry))
      }
      turn.entries += ready.entries.count
      if let hardState = ready.hardState {
        turn.records.append(RaftStorage.hardStateRecord(group: replica.id, hardState))
      }
      if !ready.entries.isEmpty || ready.hardState != nil || ready.snapshot != nil {
        turn.groupsWithRecords.insert(replica.id)
      }
    }
  }

  /// Moves the held heartbeat responses into `outgoing`: those for destinations it already has a
  /// batch for, or all of them.
  private func releaseHeldHeartbeatResponses(into outgoing: inout [ReplicaID: [GroupMessage]], all: Bool) {
    guard !heldHeartbeatResponses.isEmpty else { return }
    for (destination, held) in heldHeartbeatResponses where all || outgoing[destination] != nil {
      outgoing[destination, default: []].append(contentsOf: held.map { GroupMessage(group: $0.key, message: $0.value) })
      heldHeartbeatResponses[destination] = nil
    }
  }

  /// Hands this turn's messages, forwards and snapshot chunks for each destination to the
  /// transport, packed into as few batches as keep each under `WireLimits.batchBytesTarget`
  /// (`MessageBatch.packed`): one batch per destination in the common case. Forwards in a batch
  /// the transport dropped are kept for the next turn. Heartbeats between the two nodes travel
  /// coalesced. Returns the batches, the messages (a coalesced heartbeat section counts as one)
  /// and the heartbeats coalesced into those sections.
  private func send(
    _ outgoing: [ReplicaID: [GroupMessage]], forwards: [ReplicaID: [ForwardedProposal]],
    chunks: [ReplicaID: [SnapshotChunk]], _ turn: inout Turn
  ) -> (batches: Int, messages: Int, heartbeats: Int) {
    var batches = 0
    var messages = 0
    var heartbeats = 0
    for destination in Set(outgoing.keys).union(forwards.keys).union(chunks.keys) {
      let items = outgoing[destination] ?? []
      let destinationForwards = forwards[destination] ?? []
      let destinationChunks = chunks[destination] ?? []
      // The endpoint of a destination: any group that has it as a peer knows it.
      let groups = items.lazy.map(\.group) + destinationForwards.lazy.map(\.group) + destinationChunks.lazy.map(\.group)
      guard destination != 0,
        let peer = groups.lazy.compactMap({ GroupID(packed: $0).flatMap { self.live[$0] }?.peer(destination) }).first
          ?? live.values.lazy.compactMap({ $0.peer(destination) }).first
      else {
        keepUnsent(destinationForwards[...], to: destination, &turn)
        continue
      }
      let packed = MessageBatch.packed(
        fromNode: localPeer.node.rawValue, toNode: destination, messages: items, forwards: destinationForwards,
        snapshotChunks: destinationChunks)
      for batch in packed {
        let carried = batch.forwards[...]
        var undelivered: (@Sendable () -> Void)?
        if !carried.isEmpty { undelivered = { [weak self] in self?.undelivered(carried, to: destination) } }
        transport.send(batch: WireCodec.encode(batch), to: peer.node, endpoint: peer.endpoint, undelivered: undelivered)
        batches += 1
        messages += batch.messages.count + (batch.heartbeats.isEmpty ? 0 : 1)
        heartbeats += batch.heartbeats.count
        turn.forwardCounts.sent += UInt64(carried.lazy.filter(\.isProposal).count)
        turn.snapshotChunksSent += batch.snapshotChunks.count
      }
    }
    return (batches, messages, heartbeats)
  }

  /// Whether the core's `message` is a snapshot this host streams in chunks rather than sends
  /// inline: one larger than `snapshotInlineBytesMax`.
  private func streams(_ message: Message) -> Bool {
    guard message.kind == .snapshot, let snapshot = message.snapshot else { return false }
    return snapshot.data.count > options.snapshotInlineBytesMax
  }

  /// One chunk of a snapshot a leader streams to this node: once every chunk is in, the whole
  /// `.snapshot` message is stepped into the group's core.
  private func receive(_ chunk: SnapshotChunk, from node: ReplicaID, _ turn: inout Turn) {
    guard chunk.from == node, chunk.to == localPeer.node.rawValue, let id = GroupID(packed: chunk.group),
      let replica = live[id]
    else { return }
    turn.snapshotChunksReceived += 1
    switch snapshotStreams.receive(chunk, bytesMax: options.snapshotAssemblyBytesMax) {
    case .complete(let message):
      logger.info(
        "streamed snapshot received",
        metadata: ["group": "\(id)", "index": "\(chunk.snapshotIndex)", "bytes": "\(chunk.totalBytes)"])
      replica.raft.step(message)
    case .pending:
      break
    case .refused:
      logger.warning(
        "refused a streamed snapshot: assemblies would exceed raft.snapshotAssemblyBytesMax",
        metadata: [
          "group": "\(id)", "bytes": "\(chunk.totalBytes)", "limit": "\(options.snapshotAssemblyBytesMax)",
        ])
    }
  }

  /// This turn's forwards split into the leader's answers and our own proposals.
  private static func splitProposals(
    _ forwards: [ReplicaID: [ForwardedProposal]]
  ) -> (answers: [ReplicaID: [ForwardedProposal]], proposals: [ReplicaID: [ForwardedProposal]]) {
    var answers: [ReplicaID: [ForwardedProposal]] = [:]
    var proposals: [ReplicaID: [ForwardedProposal]] = [:]
    for (node, items) in forwards {
      for item in items {
        if item.isProposal {
          proposals[node, default: []].append(item)
        } else {
          answers[node, default: []].append(item)
        }
      }
    }
    return (answers, proposals)
  }

  /// Steps 4–5 of the Ready contract for one group: apply, answer writes, serve read indexes.
  private func apply(_ replica: RaftGroup, _ ready: Ready, _ turn: inout Turn) {
    if let snapshot = ready.snapshot {
      do {
        // The snapshot replaced the changes whose contexts carried the endpoints of the members
        // they added: learn them from it (merged: endpoints known here stay), before `advance`
        // makes the core send to those members.
        let (peers, machine) = try RaftStorage.decodeSnapshotPayload(snapshot.data, group: replica.id)
        replica.learn(peers)
        try replica.lock.withLock {
          try replica.stateMachine.restore(snapshot: machine)
          replica.appliedIndex = snapshot.index
        }
      } catch {
        // The leader built the payload with the same encoder and its snapshot passed its own
        // state machine; a refusal here is a bug, and going on would diverge from the group.
        preconditionFailure("group \(replica.id): the leader's snapshot at \(snapshot.index) does not install: \(error)")
      }
      replica.durableSnapshotIndex = snapshot.index
      replica.nextSnapshotAttemptIndex = snapshot.index
      turn.snapshotsInstalled += 1
      // Writes proposed here up to the snapshot: whether they made it is not known here.
      for (index, proposal) in replica.proposals where index <= snapshot.index {
        replica.proposals[index] = nil
        let completion = proposal.completion
        answerWrite(&turn, bytes: proposal.bytes) { completion(.failure(.timeout(indeterminate: true))) }
      }
      for (index, waiting) in replica.forwardsAwaitingApply where index <= snapshot.index {
        replica.forwardsAwaitingApply[index] = nil
        for (_, write) in waiting { answerForward(write, .failure(.timeout(indeterminate: true)), &turn) }
      }
      logger.info("snapshot installed", metadata: ["group": "\(replica.id)", "index": "\(snapshot.index)"])
    }
    if !ready.committedEntries.isEmpty {
      var responses: [(LogIndex, Term, [UInt8])] = []
      replica.lock.withLock {
        for entry in ready.committedEntries {
          precondition(entry.index == replica.appliedIndex + 1, "group \(replica.id): entries apply in order")
          replica.appliedIndex = entry.index
          // A leader's no-op (empty) and membership entries are not commands.
          guard entry.kind == .normal, !entry.data.isEmpty else {
            responses.append((entry.index, entry.term, []))
            continue
          }
          responses.append((entry.index, entry.term, replica.stateMachine.apply(index: entry.index, command: entry.data)))
        }
      }
      for entry in ready.committedEntries where entry.kind == .configChange { learnEndpoints(replica, entry) }
      for (index, term, response) in responses {
        if !replica.forwardsAwaitingApply.isEmpty {
          settleForwards(replica, index: index, term: term, response: response, &turn)
        }
        guard let proposal = replica.proposals.removeValue(forKey: index) else { continue }
        let completion = proposal.completion
        if proposal.term == term {
          turn.writesCommitted += 1
          answerWrite(&turn, bytes: proposal.bytes) { completion(.success(WriteResult(index: index, response: response))) }
        } else {
          // Another leader's entry took the slot: this write was not applied and never will be.
          let answer = replica.leaderError(leader: ready.leader)
          answerWrite(&turn, bytes: proposal.bytes) { completion(.failure(answer)) }
        }
      }
    }
    for readState in ready.readStates {
      guard let read = replica.readsAwaitingIndex.removeValue(forKey: readState.context) else { continue }
      replica.readsAwaitingApply.append((readState.index, read))
    }
    if ready.role != .leader {
      // The core drops unconfirmed reads when it loses leadership.
      let answer = replica.leaderError(leader: ready.leader)
      for read in replica.readsAwaitingIndex.values { answerRead(&turn) { read.completion(.failure(answer)) } }
      replica.readsAwaitingIndex = [:]
      // Writes proposed while leading stay unknown until a leader commits or overwrites their
      // index. That normally takes an election or two; without a quorum it never happens, so
      // they are answered `timeout(indeterminate: true)` after two election timeouts rather
      // than at the full proposal timeout.
      if !replica.proposals.isEmpty {
        let cap = MonotonicClock.nowNanoseconds() + 2 * UInt64(options.electionTicks) * tickNanoseconds
        for (index, proposal) in replica.proposals where proposal.deadline > cap {
          replica.proposals[index]!.deadline = cap
        }
      }
    }
    if !replica.readsAwaitingApply.isEmpty {
      var served: [(LinearizableRead, ReadResult)] = []
      replica.lock.withLock {
        replica.readsAwaitingApply.removeAll { waiting in
          guard let answer = replica.answer(waiting.read.query, ifAppliedAtLeast: waiting.index) else { return false }
          served.append((waiting.read, answer))
          return true
        }
      }
      for (read, answer) in served { answerRead(&turn) { read.completion(.success(answer)) } }
    }
    if ready.leader != replica.announcedLeader || ready.term != replica.announcedTerm {
      if ready.leader != replica.announcedLeader {
        logger.info(
          "leader changed",
          metadata: ["group": "\(replica.id)", "leader": "\(ready.leader)", "term": "\(ready.term)"])
      }
      replica.announcedLeader = ready.leader
      replica.announcedTerm = ready.term
      let leader = ready.leader == 0 ? nil : NodeID(ready.leader)
      replica.lock.withLock { replica.stateMachine.leaderChanged(to: leader, term: ready.term) }
    }
  }

  /// A membership change is applied: learn the endpoints its context carries (before `advance`
  /// makes the core send to the replicas it added).
  private func learnEndpoints(_ replica: RaftGroup, _ entry: Entry) {
    let change: ConfigChange
    do {
      change = try WireCodec.decodeConfigChange(entry.data)
    } catch {
      preconditionFailure("group \(replica.id): committed configuration change at \(entry.index) does not decode: \(error)")
    }
    if !change.context.isEmpty {
      do {
        replica.learn(try RaftStorage.decodeContextPeers(change.context, group: replica.id))
      } catch {
        // Only our hosts write contexts; a malformed one leaves the members' endpoints unknown
        // here (messages to them are not sent), which an operator must see.
        logger.error(
          "a membership change carries a malformed endpoint list",
          metadata: ["group": "\(replica.id)", "index": "\(entry.index)", "error": "\(error)"])
      }
    }
    logger.info(
      "membership change applied",
      metadata: [
        "group": "\(replica.id)", "index": "\(entry.index)",
        "steps": "\(change.isLeaveJoint ? ["leave joint"] : change.steps.map { "\($0.kind) \($0.replica)" })",
      ])
  }

  /// Publishes the turn's counters, releases its queue slots, and collects the stale reads it satisfied.
  private func finishTurn(_ turn: inout Turn, wal: WriteAheadLog, sent: (batches: Int, messages: Int, heartbeats: Int)) {
    let statistics = wal.statistics
    let synced = turn.synced
    let groupsSynced = UInt64(turn.groupsWithRecords.count)
    let owingAnswers = Set(forwardsUnansweredBy.keys)
    let satisfied: [(StaleReadWaiter, ReadResult)] = state.withLock {
      // Writes queued without waking the loop for a leader that has answered since go now.
      if !inbox.isEmpty && !forwardLeadersOwingAnswers.isSubset(of: owingAnswers) { inboxUrgent = true }
      forwardLeadersOwingAnswers = owingAnswers
      metrics.loopTurns += 1
      if synced {
        metrics.walSyncTurns += 1
        metrics.groupsPersisted += groupsSynced
        metrics.groupsPerSyncMax = max(metrics.groupsPerSyncMax, groupsSynced)
      }
      metrics.entriesPersisted += UInt64(turn.entries)
      metrics.batchesSent += UInt64(sent.batches)
      metrics.messagesSent += UInt64(sent.messages)
      metrics.heartbeatsCoalesced += UInt64(sent.heartbeats)
      metrics.writesCommitted += UInt64(turn.writesCommitted)
      metrics.forwards += turn.forwardCounts
      metrics.snapshotsInstalled += UInt64(turn.snapshotsInstalled)
      metrics.snapshotChunksSent += UInt64(turn.snapshotChunksSent)
      metrics.snapshotChunksReceived += UInt64(turn.snapshotChunksReceived)
      metrics.wal = statistics
      writesOutstanding -= turn.writesAnswered
      writeBytesOutstanding -= turn.writeBytesAnswered
      readsOutstanding -= turn.readsAnswered
      precondition(writesOutstanding >= 0 && writeBytesOutstanding >= 0 && readsOutstanding >= 0, "queue accounting")
      guard !staleReadWaiters.isEmpty else { return [] }
      var satisfied: [(StaleReadWaiter, ReadResult)] = []
      staleReadWaiters.removeAll { waiter in
        guard let replica = groups[waiter.group],
          let answer = replica.lock.withLock({ replica.answer(waiter.query, ifAppliedAtLeast: waiter.minIndex) })
        else { return false }
        satisfied.append((waiter, answer))
        return true
      }
      readsOutstanding -= satisfied.count
      return satisfied
    }
    for (waiter, answer) in satisfied { turn.answers.append { waiter.completion(.success(answer)) } }
  }

  /// The WAL failed: nothing of this turn is known durable. Refuse all further work (the node
  /// reports not ready) rather than risk acknowledging writes that are not durable.
  private func failStorage(_ reason: String, _ turn: inout Turn) {
    logger.critical("storage failure; refusing work until restart", metadata: ["reason": "\(reason)"])
    state.withLock { if failure == nil { failure = reason } }
    for action in turn.onDurable { action(.failure(.storage(reason))) }
    for answer in turn.answers { answer() }
  }

  // MARK: Snapshots and log release

  /// Snapshots the groups that asked for it or passed `snapshotEntriesThreshold`, then releases
  /// the WAL segments all snapshots cover. When the WAL holds more than `walSegmentsSoftMax`
  /// segments, every group with applied entries beyond its snapshot is snapshotted too: one quiet
  /// group would otherwise pin every segment since its last snapshot. Such a forced round runs
  /// again only after the count grew by another quarter of the limit, so a group that cannot
  /// compact (nothing applied) costs a bounded amount of work. Throws only when the WAL failed.
  private func snapshotDueGroups(_ wal: WriteAheadLog, releasing received: Int) throws {
    var written = received
    var answers: [@Sendable () -> Void] = []
    let segments = wal.statistics.segments
    let forced =
      segments > options.walSegmentsSoftMax
      && segments >= segmentsAfterForcedSnapshots + max(1, options.walSegmentsSoftMax / 4)
    for replica in live.values {
      // `firstIndex - 1` is the snapshot's index; reading the snapshot itself would copy it.
      let (applied, snapshotIndex) = replica.inspect { ($0.applied, $0.firstIndex - 1) }
      let since = applied - snapshotIndex
      let automatic = since >= options.snapshotEntriesThreshold && applied >= replica.nextSnapshotAttemptIndex
      guard automatic || !replica.snapshotRequests.isEmpty || (forced && since > 0) else { continue }
      let requests = replica.snapshotRequests
      replica.snapshotRequests = []
      let (outcome, wrote) = snapshot(replica, wal)
      if wrote {
        written += 1
      } else {
        // Nothing to compact (just after a restart the membership may run ahead of the applied
        // index) or the write failed: try again after another tenth of the threshold.
        replica.nextSnapshotAttemptIndex = applied + max(1, options.snapshotEntriesThreshold / 10)
        if case .failure(let error) = outcome {
          logger.warning("snapshot failed", metadata: ["group": "\(replica.id)", "error": "\(error)"])
        }
      }
      for completion in requests { answers.append { completion(outcome) } }
    }
    if written > 0 || forced { try releaseLog(wal) }
    if forced {
      segmentsAfterForcedSnapshots = wal.statistics.segments
      logger.notice(
        "snapshotted every group to release log segments",
        metadata: ["segmentsBefore": "\(segments)", "segmentsAfter": "\(segmentsAfterForcedSnapshots)"])
    }
    for answer in answers { answer() }
  }

  /// The endpoints a snapshot or a restated creation record keeps: the members' and this node's.
  /// Those of removed members are dropped, so what a group ever knew cannot outgrow
  /// `RaftStorage.peersMax` over many membership changes.
  private func endpointsToKeep(_ replica: RaftGroup) -> [Peer] {
    let keep = Set(replica.inspect { $0.membership.allReplicas }).union([localPeer.node.rawValue])
    return replica.knownPeers().filter { keep.contains($0.node.rawValue) }
  }

  /// Captures, compacts and writes one group's snapshot; with nothing new to capture, answers
  /// the latest snapshot. `SnapshotInfo.bytes` is the payload's size: what the file holds and a
  /// leader sends, the endpoints included.
  private func snapshot(_ replica: RaftGroup, _ wal: WriteAheadLog) -> (Result<SnapshotInfo, ConsensusError>, wrote: Bool) {
    // The endpoints go with the state: the changes that carried them are compacted away here.
    let peers = endpointsToKeep(replica)
    let machine: [UInt8] = replica.lock.withLock {
      precondition(replica.appliedIndex == replica.raft.applied, "group \(replica.id): state machine lags the core")
      return replica.stateMachine.takeSnapshot()
    }
    let data = RaftStorage.encodeSnapshotPayload(peers: peers, machine: machine)
    guard let snapshot = replica.raft.compact(data: data) else {
      guard let latest = replica.raft.latestSnapshot else {
        return (.failure(.invalidRequest("group \(replica.id) has applied nothing yet to snapshot")), false)
      }
      return (.success(SnapshotInfo(index: latest.index, term: latest.term, bytes: UInt64(latest.data.count))), false)
    }
    do {
      try wal.writeSnapshot(
        WALSnapshot(
          group: replica.id.packed, index: snapshot.index, term: snapshot.term,
          data: RaftStorage.encodeSnapshot(config: snapshot.config, data: snapshot.data)))
    } catch {
      // The log in memory is compacted, the WAL still holds the entries: nothing is lost, and
      // nothing is released until a snapshot file covers them.
      return (.failure(.storage("\(error)")), false)
    }
    replica.durableSnapshotIndex = snapshot.index
    replica.refreshView()
    state.withLock { metrics.snapshotsTaken += 1 }
    logger.info(
      "snapshot taken", metadata: ["group": "\(replica.id)", "index": "\(snapshot.index)", "bytes": "\(data.count)"])
    return (.success(SnapshotInfo(index: snapshot.index, term: snapshot.term, bytes: UInt64(data.count))), true)
  }

  /// Restates every live group's creation record and hard state in the current segment (release
  /// deletes every record kind of a released segment), syncs, and releases what snapshots cover.
  private func releaseLog(_ wal: WriteAheadLog) throws {
    var records: [WALRecord] = []
    var covered: [UInt64: UInt64] = [:]
    for replica in live.values {
      records.append(
        RaftStorage.groupCreatedRecord(group: replica.id, peers: endpointsToKeep(replica), bootstrapVoters: replica.bootstrapVoters))
      records.append(RaftStorage.hardStateRecord(group: replica.id, replica.raft.hardState))
      covered[replica.id.packed] = replica.durableSnapshotIndex
    }
    if !records.isEmpty {
      try wal.append(records)
      try wal.sync()
    }
    let released = try wal.releaseSegments(coveredIndex: covered)
    if released > 0 { logger.info("log segments released", metadata: ["segments": "\(released)"]) }
    let statistics = wal.statistics
    state.withLock { metrics.wal = statistics }
  }

  private func shutDown(_ wal: WriteAheadLog) {
    var turn = Turn()
    for replica in live.values { failAllWaiting(replica, .shuttingDown, &turn) }
    precondition(forwardsWaiting == 0, "every forwarded write is answered: \(forwardsWaiting) were dropped")
    // Entry points refuse new work from here on: `phase` is no longer running (stop) or
    // `failure` is set (storage failure; `stop` still joins this thread).
    let (items, waiters): ([InboxItem], [StaleReadWaiter]) = state.withLock {
      precondition(phase != .running || failure != nil, "the loop stops only when asked to or on failure")
      defer {
        inbox.removeAll()
        staleReadWaiters.removeAll()
      }
      return (inbox, staleReadWaiters)
    }
    for answer in turn.answers { answer() }
    for item in items {
      switch item {
      case .propose(_, _, _, let completion): completion(.failure(.shuttingDown))
      case .read(_, let read): read.completion(.failure(.shuttingDown))
      case .create(_, _, _, let completion), .delete(_, let completion), .transfer(_, _, let completion),
        .membership(_, _, let completion):
        completion(.failure(.shuttingDown))
      case .snapshot(_, let completion): completion(.failure(.shuttingDown))
      case .batch, .undelivered: break
      }
    }
    for waiter in waiters { waiter.completion(.failure(.shuttingDown)) }
    do {
      try wal.sync()
      try wal.close()
    } catch {
      logger.error("closing the log failed", metadata: ["error": "\(error)"])
    }
    logger.info("raft engine stopped")
  }
}

/// Moves a non-Sendable value into the one thread that will own it from then on.
struct UncheckedSendableBox<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}
