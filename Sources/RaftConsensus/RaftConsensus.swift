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
/// A full data directory (ENOSPC, EDQUOT on a write: `WALError.isOutOfSpace`) passes, without a
/// restart: the loop answers what waits (writes and membership changes in flight
/// `timeout(indeterminate: true)`: their entries may have reached followers, or the file, before
/// the append failed), abandons the log and every group's core, and refuses writes, group
/// operations and linearizable reads with `outOfSpace` while stale reads go on from the last
/// applied state. Every `outOfSpaceRetryMs` it checks for room (`SpaceProbe`) and, once there is
/// some, recovers the log and every group from disk exactly as a start does (`recoverStorage`):
/// Raft's safety then rests on what the disk holds, as after any restart, never on the memory
/// of the incarnation that failed. Any other storage failure stops the engine until restart.
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

  let directory: String
  let registry: StateMachineRegistry
  let options: RaftConsensusOptions
  let transport: any RaftTransport
  let logger: Logger
  let tickNanoseconds: UInt64
  let clock: any NanosecondClock
  let fileStore: any FileStore

  let state = ConditionLock()
  // Guarded by `state`.
  var phase = Phase.created
  var groups: [GroupID: RaftGroup] = [:]
  var inbox: [InboxItem] = []
  /// The inbox holds an item that must not wait for the next tick (the loop was signalled).
  var inboxUrgent = false
  /// The loop's `forwardsUnansweredBy` as of its last turn: a forwarded write for one of these
  /// leaders would only be held, so it does not wake the loop (the answers will).
  var forwardLeadersOwingAnswers: Set<ReplicaID> = []
  var inboundBatchesQueued = 0
  var writesOutstanding = 0
  var writeBytesOutstanding = 0
  var controlQueued = 0
  var readsOutstanding = 0
  var staleReadWaiters: [StaleReadWaiter] = []
  /// Forwards the transport says never arrived. Apart from the inbox because they must not wake
  /// the loop: they go out again with the next turn's work (or tick), so an unreachable leader
  /// cannot make the loop spin. At most one entry per batch sent.
  var undeliveredForwards: [(node: ReplicaID, forwards: ArraySlice<ForwardedProposal>)] = []
  var failure: String?
  /// Why the data directory is out of space, while it is (`outOfSpace` refusals meanwhile).
  var outOfSpace: String?
  var metrics = Metrics()
  var loopThread: OSThread?

  // Loop only (`start` sets them before the loop thread starts).
  var live = LiveGroups()
  /// The loop's state between turns (nil before `start`).
  var loop: LoopState?
  /// The simulator's checker (set before `start`; loop only after).
  package var readyObserver: (any ReadyObserver)?
  var nextReadContext: UInt64 = 0
  var nextForwardRequestID: UInt64 = 0
  /// Forwarded proposals this node answered as a leader, per sender: duplicates get the first answer.
  var forwardWindow = ForwardWindow(perNodeMax: 16_384)
  /// Forwarded writes waiting in any group (sent, appended, or unsent): every one is answered
  /// exactly once, which `answerForward` and `shutDown` check.
  var forwardsWaiting = 0
  /// Leader nodes that were sent our writes and have not answered any since (nor lost the batch),
  /// with the ticks passed since: further writes for them wait for this node's next batch to
  /// them after a sync, or for their answers, so writes travel in few batches (Nagle's rule),
  /// at most `forwardHoldTicksMax` ticks. The answers come with the appends our sync
  /// acknowledges, so the wait is about one round trip.
  var forwardsUnansweredBy: [ReplicaID: Int] = [:]
  /// Ticks passed with commit-only records unsynced in the WAL (`unsyncedRecordsTicksMax`).
  var ticksWithUnsyncedRecords = 0
  /// Groups with `forwardsUnsent`: sent again at the next turn.
  var groupsWithUnsentForwards: Set<GroupID> = []
  /// A leader's answers to forwards whose batch the transport dropped: sent again at the next
  /// turn, at most `WireLimits.forwardsPerBatchMax` per node (past it the follower times out).
  var forwardAnswersUnsent: [ReplicaID: [ForwardedProposal]] = [:]
  var seed: UInt64 = 0
  /// Heartbeat responses that confirm only liveness (no ReadIndex round), held per destination
  /// and group (a later one replaces an earlier one) until the next batch to that node leaves,
  /// or the next tick at the latest (`RaftConsensusOptions.holdHeartbeatResponses`). Bounded by
  /// destinations × groups.
  var heldHeartbeatResponses: [ReplicaID: [UInt64: Message]] = [:]
  /// The WAL's segment count after the last round of snapshots forced by `walSegmentsSoftMax`.
  var segmentsAfterForcedSnapshots = 0
  /// The groups a forced round has still to snapshot (`forcedSnapshotsPerTurnMax` a turn), and
  /// the segment count it began at; nil between rounds.
  var forcedSnapshotQueue: ArraySlice<GroupID>?
  var forcedRoundStartSegments = 0
  /// Snapshots streamed to followers and being assembled from leaders (finding 5 of issue 9).
  var snapshotStreams: SnapshotStreams
  /// Which peer nodes were heard from lately: the failure detector of quiesced groups.
  var liveness: NodeLiveness
  /// `liveness.lastHeard` as of the last tick, for readers on other threads: a peer's
  /// `lastContactMs` in a group's status.
  let peerNodesLastHeard = Locked<[ReplicaID: UInt64]>([:])
  /// Every node this node shares a group with, and its consensus endpoint: where the liveness
  /// pings go (`refreshLivenessPeers`, `addLivenessPeers`).
  var livenessPeers: [ReplicaID: Peer] = [:]
  var livenessPeersRefreshedTick: UInt64 = 0
  /// A node not among `livenessPeers` sent a batch: refresh them at the next tick.
  var livenessPeersStale = false
  /// Ticks this loop ran (`livenessPeers`' refresh schedule).
  var ticksRun: UInt64 = 0

  enum Phase { case created, running, stopping, stopped }

  enum InboxItem {
    /// `forward`: hand the write to the leader when this node does not lead the group.
    case propose(GroupID, [UInt8], forward: Bool, ConsensusCompletion<WriteResult>)
    case read(GroupID, LinearizableRead)
    case batch(MessageBatch)
    /// The transport says these forwards, sent to the node, never reached it.
    case undelivered(ReplicaID, ArraySlice<ForwardedProposal>)
    /// `bootstrapVoters`: the peers for a new group; the group's for a replica that joins it.
    case create(GroupID, [Peer], bootstrapVoters: [ReplicaID], ConsensusCompletion<Void>)
    case delete(GroupID, ifLogEndsBy: LogPosition?, ConsensusCompletion<Void>)
    case snapshot(GroupID, ConsensusCompletion<SnapshotInfo>)
    case transfer(GroupID, NodeID, ConsensusCompletion<Void>)
    case membership(GroupID, MembershipRequest, ConsensusCompletion<Void>)
  }

  struct StaleReadWaiter: Sendable {
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
    /// Groups quiesced here as a leader, groups woken because their leader's node died, and the
    /// quiesced and peer-node counts as of the last tick.
    var quiescences: UInt64 = 0
    var wakesLeaderLost: UInt64 = 0
    var groupsQuiesced: UInt64 = 0
    var peerNodes: UInt64 = 0
    var peerNodesDead: UInt64 = 0
    var wal = WALStatistics()
    var outOfSpace = OutOfSpaceStatistics()
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

  /// `clock` times ticks and deadlines: the system's monotonic clock for a node, a virtual one
  /// in the simulator. `fileStore` holds the write-ahead log: the node's file system, or the
  /// simulator's disk.
  public init(
    config: ConsensusConfig, options: RaftConsensusOptions = RaftConsensusOptions(), transport: any RaftTransport,
    logger: Logger? = nil, clock: any NanosecondClock = SystemClock(), fileStore: any FileStore = PosixFileStore()
  ) {
    self.clock = clock
    self.fileStore = fileStore
    self.localPeer = config.localPeer
    self.directory = config.dataDirectory
    self.registry = config.registry
    self.options = options
    self.transport = transport
    self.tickNanoseconds = options.tickIntervalMs * 1_000_000
    self.snapshotStreams = SnapshotStreams(chunkBytes: options.snapshotChunkBytes)
    self.liveness = NodeLiveness(
      timeoutNanoseconds: UInt64(options.nodeLivenessTimeoutTicks) * options.tickIntervalMs * 1_000_000)
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

  /// Recovers every group from the log and starts the loop thread.
  public func start() throws {
    try open()
    let thread = OSThread(name: "caucus-raft") { [self] in runLoop() }
    state.withLock { loopThread = thread }
  }

  /// Recovers every group from the log and takes work, but runs no loop thread: the caller runs
  /// every turn (`runDrivenTurn`) — the deterministic simulator drives the production host so.
  package func startDriven() throws { try open() }

  /// Runs one turn with what the inbox holds, without waiting. False once the engine stopped
  /// (asked to, or its storage failed; everything waiting has been answered then).
  package func runDrivenTurn() -> Bool {
    precondition(loopThread == nil && loop != nil, "a driven engine, started")
    if runTurn(takeWork(wait: false)) { return true }
    shutDown(loop!.wal)
    return false
  }

  /// Whether a turn now would do anything: urgent input, a group with more to apply, a tick or
  /// a stale read's deadline due at `now`.
  package func hasDrivenWork(now: UInt64) -> Bool {
    guard let loop else { return false }
    if loop.moreReady || now >= loop.nextTickNanoseconds { return true }
    return state.withLock {
      inboxUrgent || !undeliveredForwards.isEmpty || phase != .running
        || staleReadWaiters.contains { $0.deadline <= now }
    }
  }

  /// When the next tick of a driven engine is due, on its clock.
  package var nextTickNanoseconds: UInt64 { loop?.nextTickNanoseconds ?? UInt64.max }

  /// Stops a driven engine as `stop` does a threaded one: refuses new work, answers everything
  /// waiting, syncs and closes the log.
  package func stopDriven() {
    precondition(loopThread == nil, "a driven engine")
    let running: Bool = state.withLock {
      guard phase == .running else { return false }
      phase = .stopping
      return true
    }
    guard running, let loop else { return }
    transport.setReceiver(nil)
    shutDown(loop.wal)
    state.withLock { phase = .stopped }
  }

  /// Where this incarnation's forwarded-write request ids start. A leader's window of answers
  /// (`ForwardWindow`) answers a request id it remembers with its first answer, so no two
  /// incarnations of a node may share a base. A real node (no fixed seed) draws it from the
  /// system's random source. It used to mix the clock into a seed that was itself the clock, read
  /// a moment before: the two readings cancelled out, the base was nearly constant, and `caucus
  /// torture` caught a restarted node whose new compare-and-set was answered with the result of
  /// an old write the leader remembered under the same id. A fixed seed (the simulator) takes
  /// its variation from the clock, which moves between incarnations there.
  static func forwardRequestIDBase(seed: UInt64?, clockNanoseconds: UInt64) -> UInt64 {
    let entropy = seed.map { $0 ^ clockNanoseconds } ?? UInt64.random(in: .min ... .max)
    var requestIDs = SplitMix64(seed: entropy ^ 0x5EED_F0D0_F0D0_5EED)
    // The high 31 bits tell incarnations apart; the low 32 count this one's requests.
    return requestIDs.next() & 0x7FFF_FFFF_0000_0000
  }

  /// Recovery: opens the log, rebuilds every group, and takes work from then on.
  private func open() throws {
    state.withLock { precondition(phase == .created, "start() is called once") }
    try options.validate()
    seed = options.seed ?? UInt64.random(in: .min ... .max)
    nextForwardRequestID = Self.forwardRequestIDBase(seed: options.seed, clockNanoseconds: clock.nowNanoseconds())
    let wal: WriteAheadLog
    let restored: [GroupID: RaftGroup]
    let entries: Int
    do {
      (wal, restored, entries) = try recoverStorage()
    } catch {
      logger.error("storage recovery failed", metadata: ["directory": "\(directory)", "error": "\(error)"])
      throw error
    }
    install(wal, restored)
    state.withLock { phase = .running }
    transport.setReceiver { [weak self] bytes in self?.receive(bytes) }
    logger.info(
      "raft engine started",
      metadata: [
        "groups": "\(restored.keys.sorted().map(\.description))", "directory": "\(directory)", "entries": "\(entries)",
      ])
  }

  /// Opens the log and rebuilds every group from it, as a start does: at start, and again once
  /// space returned to a full data directory. Returns the log, the groups and the entries
  /// recovered. A log that fails here is abandoned (its lock released) before the error is thrown.
  func recoverStorage() throws -> (WriteAheadLog, [GroupID: RaftGroup], entries: Int) {
    let wal = try WriteAheadLog(directory: directory + "/wal", options: options.wal, fileStore: fileStore)
    do {
      let recovered = try RaftStorage.recover(wal)
      // Valid records after the last proven sync are kept, but a killed process may have left
      // them in the page cache only: make them durable before this node votes or acknowledges
      // on the strength of them (a power loss later must not take back what it promised).
      try wal.syncRecoveredRecords()
      // Finish installs a crash interrupted: their markers, before anything follows them.
      let markers = recovered.keys.sorted().filter { recovered[$0]!.snapshotMarkerMissing }.map {
        RaftStorage.snapshotMarkerRecord(group: $0, recovered[$0]!)
      }
      if !markers.isEmpty {
        try wal.append(markers)
        try wal.sync()
        logger.notice("wrote the markers of snapshot installs a crash interrupted", metadata: ["groups": "\(markers.count)"])
      }
      var restored: [GroupID: RaftGroup] = [:]
      for id in recovered.keys.sorted() {
        let group = recovered[id]!
        precondition(group.peers != nil, "recovery refuses groups without a creation record")
        let state = RestoredState(
          hardState: group.hardState, snapshot: group.snapshot, entries: group.entries,
          bootstrapConfig: ConfigState(voters: group.bootstrapVoters))
        restored[id] = try makeGroup(
          id, peers: try RaftStorage.endpoints(of: group, id: id), bootstrapVoters: group.bootstrapVoters, restored: state)
      }
      return (wal, restored, recovered.values.reduce(0) { $0 + $1.entries.count })
    } catch {
      wal.abandon()
      throw error
    }
  }

  /// Hands recovered storage and groups to the loop (loop only, or before it starts) and
  /// publishes the groups to callers.
  func install(_ wal: WriteAheadLog, _ restored: [GroupID: RaftGroup]) {
    precondition(live.isEmpty, "groups are installed into an empty host")
    for id in restored.keys.sorted() { live.insert(restored[id]!) }
    refreshLivenessPeers()
    loop = LoopState(wal: wal, nextTickNanoseconds: clock.nowNanoseconds() + tickNanoseconds)
    let statistics = wal.statistics
    state.withLock {
      groups = restored
      metrics.wal = statistics
    }
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

  public var isReady: Bool { state.withLock { phase == .running && failure == nil && outOfSpace == nil } }

  public var storageCondition: StorageCondition {
    state.withLock { StorageCondition(failure: failure, outOfSpace: outOfSpace, directory: directory) }
  }

  /// Must hold `state`. What refuses writes, group operations and linearizable reads, if
  /// anything does.
  var storageRefusal: ConsensusError? {
    if let failure { return .storage(failure) }
    if outOfSpace != nil { return .outOfSpace(directory: directory, retryAfterMs: UInt32(options.outOfSpaceRetryMs)) }
    return nil
  }

  func makeGroup(
    _ id: GroupID, peers: [Peer], bootstrapVoters: [ReplicaID], restored: RestoredState
  ) throws -> RaftGroup {
    guard let machine = registry.makeStateMachine(for: id) else {
      throw ConsensusError.storage("no state machine is registered for group type \(id.type)")
    }
    var random = SplitMix64(seed: seed ^ (localPeer.node.rawValue &* 0x9E37_79B9_7F4A_7C15) ^ id.packed)
    _ = random.next()
    let raft = try Raft(config: options.raftConfig(node: localPeer.node), random: random, restored: restored)
    let replica = RaftGroup(id: id, peers: peers, bootstrapVoters: bootstrapVoters, stateMachine: machine, raft: raft)
    readyObserver?.groupStarted(id, raft: raft)
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

  func submit(
    _ group: GroupID, _ command: [UInt8], forward: Bool, _ completion: @escaping ConsensusCompletion<WriteResult>
  ) {
    let refusal: ConsensusError? = state.withLock {
      if let refusal = storageRefusal { return refusal }
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
    let deadline = clock.nowNanoseconds() + UInt64(readOptions.waitMs) * 1_000_000
    let outcome: Result<ReadResult, ConsensusError>? = state.withLock {
      guard phase == .running else { return .failure(.shuttingDown) }
      // After a storage failure the loop is gone, and while the data directory is out of space
      // it runs no group: stale reads still see the applied state.
      if let refusal = storageRefusal, readOptions.consistency != .stale { return .failure(refusal) }
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
  func enqueue(_ item: InboxItem, urgent: Bool = true) {
    inbox.append(item)
    if urgent && !inboxUrgent {
      inboxUrgent = true
      state.signal()
    }
  }

  /// The transport's receiver: decodes, checks and queues one inbound batch.
  func receive(_ bytes: [UInt8]) {
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
      guard phase == .running, failure == nil, outOfSpace == nil else { return }
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
  func creationRefusal(_ group: GroupID, _ peers: [Peer]) -> ConsensusError? {
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

  public func deletePeer(_ group: GroupID, ifLogEndsBy: LogPosition?, completion: @escaping ConsensusCompletion<Void>) {
    enqueueControl(.delete(group, ifLogEndsBy: ifLogEndsBy, completion)) { completion(.failure($0)) }
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

  func enqueueControl(_ item: InboxItem, refuse: (ConsensusError) -> Void) {
    let refusal: ConsensusError? = state.withLock {
      if let refusal = storageRefusal { return refusal }
      guard phase == .running else { return .shuttingDown }
      guard controlQueued < options.pendingControlMax else { return .overloaded(retryAfterMs: 100) }
      controlQueued += 1
      enqueue(item)
      return nil
    }
    if let refusal { refuse(refusal) }
  }

  // MARK: Queries

  func published(_ group: GroupID) -> (RaftGroup, GroupView)? {
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
    let lastHeard = peerNodesLastHeard.withLock { $0 }
    let now = clock.nowNanoseconds()
    let peers = view.membership.allReplicas.map { replicaID -> PeerStatus in
      let peer = replica.peer(replicaID) ?? Peer(node: NodeID(replicaID), endpoint: Endpoint(host: "", port: 0))
      let learner = !view.membership.isVoter(replicaID)
      if replicaID == localPeer.node.rawValue {
        return PeerStatus(
          peer: peer, learner: learner, matchIndex: view.lastIndex, nextIndex: view.lastIndex + 1, lag: 0,
          lastContactMs: 0)
      }
      // Node-level contact: every node hears from each node it shares a group with at least
      // once a tick (liveness pings), so this is how long the peer's node has been silent.
      let lastContactMs = lastHeard[replicaID].map { now > $0 ? (now - $0) / 1_000_000 : 0 }
      guard let progress = view.progress[replicaID] else {
        return PeerStatus(
          peer: peer, learner: learner, matchIndex: 0, nextIndex: 0, lag: 0, lastContactMs: lastContactMs, state: .probe)
      }
      let state: PeerReplicationState
      switch progress.state {
      case .probe: state = .probe
      case .replicate: state = .replicate
      case .snapshot: state = .snapshot
      }
      return PeerStatus(
        peer: peer, learner: learner, matchIndex: progress.match, nextIndex: progress.next,
        lag: view.lastIndex > progress.match ? view.lastIndex - progress.match : 0, lastContactMs: lastContactMs,
        state: state)
    }
    return GroupStatus(
      id: group, protocolName: protocolName, role: role, leader: replica.peer(view.leader), term: view.term,
      commitIndex: view.commitIndex, appliedIndex: applied, snapshotIndex: view.firstIndex - 1,
      logEntries: view.lastIndex - (view.firstIndex - 1), logBytes: UInt64(view.logBytes), peers: peers,
      bootstrapVoters: replica.bootstrapVoters.map(NodeID.init), quiesced: view.quiesced)
  }

}

/// Moves a non-Sendable value into the one thread that will own it from then on.
struct UncheckedSendableBox<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}
