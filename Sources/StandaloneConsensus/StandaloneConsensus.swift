import Consensus
import Logging
import Platform
import WriteAheadLog

/// Limits and knobs of the standalone protocol, each with its reason.
public struct StandaloneOptions: Sendable {
  /// Writes waiting for the commit thread. Past it a write is answered `overloaded` instead of
  /// queueing without bound (memory) or waiting without bound (latency).
  public var pendingWritesMax = 16_384
  /// Bytes of commands waiting for the commit thread: with values up to megabytes, a count alone
  /// would let the queue hold gigabytes.
  public var pendingWriteBytesMax = 256 << 20
  /// Group creations, deletions and snapshots waiting for the commit thread (each costs fsyncs).
  public var pendingControlMax = 64
  /// Writes one commit-thread turn takes into one WAL append and one fsync. Bounds the turn's
  /// latency and the batch's memory; large enough that 64+ concurrent writers share an fsync.
  public var batchWritesMax = 4_096
  /// A group is snapshotted after this many entries since its last snapshot, so the log can be
  /// released and restart replay stays short.
  public var snapshotEntriesThreshold: UInt64 = 100_000
  /// Group commit: after the first write of a turn, while more writes keep arriving (at least one
  /// per `groupCommitQuietMicros`), the commit thread waits up to this long for them, so one fsync
  /// covers more writes. A lone writer never waits: a turn waits only after a turn with concurrent
  /// writes. 0 disables the wait (fsync as soon as a write is queued).
  public var groupCommitWindowMicros: UInt64 = 500
  /// The gap in arrivals that ends the group-commit wait early.
  public var groupCommitQuietMicros: UInt64 = 100
  /// Writes queued at which the group-commit wait ends at once.
  public var groupCommitWritesTarget = 64
  /// Stale reads waiting for `minIndex` to be applied, across all groups.
  public var readWaitersMax = 4_096
  /// While the data directory is full (`WALError.isOutOfSpace`), how often the commit thread
  /// checks whether space returned (`SpaceProbe`) and reopens the log. Shorter resumes sooner;
  /// each attempt writes and deletes `outOfSpaceProbeBytes`.
  public var outOfSpaceRetryMs: UInt64 = 1_000
  /// The room a probe must find before the log is reopened: enough for several batches of
  /// writes, so that a disk with a few bytes free does not reopen only to fail again.
  public var outOfSpaceProbeBytes = 1 << 20
  public var wal = WALOptions()

  public init() {}

  /// Reads the options a properties file or flag may set (unknown names are ignored).
  public init(options: [String: String]) throws(ConsensusError) {
    self.init()
    func number(_ name: String, _ range: ClosedRange<UInt64>) throws(ConsensusError) -> UInt64? {
      try protocolOption(options, name, range)
    }
    if let value = try number("pendingWritesMax", 1...1_000_000) { pendingWritesMax = Int(value) }
    if let value = try number("batchWritesMax", 1...100_000) { batchWritesMax = Int(value) }
    if let value = try number("pendingWriteBytesMax", 1 << 20...1 << 40) { pendingWriteBytesMax = Int(value) }
    if let value = try number("pendingControlMax", 1...100_000) { pendingControlMax = Int(value) }
    if let value = try number("snapshotEntriesThreshold", 1...UInt64(UInt32.max)) { snapshotEntriesThreshold = value }
    if let value = try number("walSegmentBytes", 1 << 16...1 << 34) { wal.segmentBytesMax = value }
    if let value = try number("groupCommitWindowMicros", 0...100_000) { groupCommitWindowMicros = value }
    if let value = try number("groupCommitQuietMicros", 1...100_000) { groupCommitQuietMicros = value }
    if let value = try number("groupCommitWritesTarget", 1...100_000) { groupCommitWritesTarget = Int(value) }
    if let value = try number("outOfSpaceRetryMs", 10...600_000) { outOfSpaceRetryMs = value }
    if let value = try number("outOfSpaceProbeBytes", 4_096...1 << 30) { outOfSpaceProbeBytes = Int(value) }
  }
}

/// One replica per group, no protocol (IoTDB's StandAloneConsensus). A write is appended to the
/// WAL, fsynced — every write waiting at that moment shares the fsync (group commit) — applied,
/// then answered. Reads are answered from the applied state, which already holds every
/// acknowledged write, so every read is linearizable.
///
/// A full data directory (ENOSPC, EDQUOT on a write: `WALError.isOutOfSpace`) passes: the writes
/// of the batch that met it are answered `timeout(indeterminate: true)` (complete records of it may
/// be in the file), the log is abandoned, and every later write or group operation is refused
/// with `outOfSpace` until the commit thread, every `outOfSpaceRetryMs`, finds room
/// (`SpaceProbe`) and recovers the log and the groups from disk exactly as a start does. Reads go
/// on from the applied state meanwhile: it holds only what was synced. Any other storage failure
/// stops the engine's writes until restart.
///
/// Threads: one commit thread owns the WAL and runs every mutation in arrival order; callers on any
/// thread only enqueue. The engine's `state` lock guards the group table and the queues; each
/// group's own lock guards its state machine and indexes, taken by the commit thread to apply and
/// snapshot and by readers to query, so a long snapshot of one group holds up only that group.
/// Lock order: `state` before a group's lock, never the reverse.
// @unchecked Sendable: every mutable field below is guarded by `state`; the WAL is confined to
// the commit thread.
public final class StandaloneConsensus: ConsensusEngine, @unchecked Sendable {
  public static let name = "standalone"
  public let protocolName = StandaloneConsensus.name
  public let localPeer: Peer

  private let directory: String
  private let registry: StateMachineRegistry
  private let options: StandaloneOptions
  private let logger: Logger
  private let state = ConditionLock()
  // Everything below is guarded by `state`.
  private var groups: [GroupID: GroupReplica] = [:]
  private var queue: [Work] = []
  private var queuedWrites = 0
  private var queuedWriteBytes = 0
  private var queuedControl = 0
  private var phase = Phase.created
  private var readWaiters: [ReadWaiter] = []
  private var failure: String?
  /// Why the data directory is out of space, while it is (writes are refused meanwhile).
  private var outOfSpace: String?
  private var outOfSpaceStatistics = OutOfSpaceStatistics()
  private var walStatistics = WALStatistics()
  private var writesCommitted: UInt64 = 0
  private var batchesCommitted: UInt64 = 0
  private var commitThread: OSThread?
  /// Writes in the commit thread's previous turn; only the commit thread touches it.
  private var lastBatchWrites = 0

  private enum Phase { case created, running, stopping, stopped }

  public init(config: ConsensusConfig, options: StandaloneOptions = StandaloneOptions(), logger: Logger? = nil) {
    self.localPeer = config.localPeer
    self.directory = config.dataDirectory
    self.registry = config.registry
    self.options = options
    var logger = logger ?? Logger(label: "caucus.standalone")
    logger[metadataKey: "node"] = "\(config.localPeer.node)"
    self.logger = logger
  }

  /// The factory entry for this protocol, with IoTDB's class names as aliases.
  public static func register(in factory: inout ConsensusFactory, logger: Logger? = nil) {
    factory.register(
      name, aliases: [IoTDBProtocolClassNames.standalone, IoTDBProtocolClassNames.simple]
    ) { config in
      StandaloneConsensus(config: config, options: try StandaloneOptions(options: config.options), logger: logger)
    }
  }

  // MARK: Lifecycle

  public func start() throws {
    state.withLock { precondition(phase == .created, "start() is called once") }
    let wal: WriteAheadLog
    let recovered: [GroupID: GroupReplica]
    do {
      (wal, recovered) = try openStorage()
    } catch {
      logger.error("storage recovery failed", metadata: ["directory": "\(directory)", "error": "\(error)"])
      throw error
    }
    let statistics = wal.statistics
    state.withLock {
      groups = recovered
      walStatistics = statistics
      phase = .running
    }
    logger.info(
      "standalone engine started",
      metadata: ["groups": "\(recovered.keys.sorted().map(\.description))", "directory": "\(directory)"])
    let walBox = UncheckedSendableBox(wal)
    commitThread = OSThread(name: "caucus-commit") { [self] in
      commitLoop(walBox.value)
    }
  }

  public func stop() {
    let thread: OSThread? = state.withLock {
      guard phase == .running else { return nil }
      phase = .stopping
      state.broadcast()
      return commitThread
    }
    thread?.join()
    let waiters: [ReadWaiter] = state.withLock {
      phase = .stopped
      defer { readWaiters.removeAll() }
      return readWaiters
    }
    for waiter in waiters { waiter.completion(.failure(.shuttingDown)) }
  }

  public var isReady: Bool { state.withLock { phase == .running && failure == nil && outOfSpace == nil } }

  public var storageCondition: StorageCondition {
    state.withLock { StorageCondition(failure: failure, outOfSpace: outOfSpace, directory: directory) }
  }

  /// Must hold `state`. What refuses new writes and group operations, if anything does.
  private var storageRefusal: ConsensusError? {
    if let failure { return .storage(failure) }
    if outOfSpace != nil { return .outOfSpace(directory: directory, retryAfterMs: UInt32(options.outOfSpaceRetryMs)) }
    return nil
  }

  // MARK: Recovery

  /// Opens the log and rebuilds every group from it: at start, and again after the data
  /// directory ran out of space. A log that fails here is abandoned (its lock released).
  private func openStorage() throws -> (WriteAheadLog, [GroupID: GroupReplica]) {
    let wal = try WriteAheadLog(directory: directory + "/wal", options: options.wal)
    do {
      let recovered = try recover(wal)
      // What recovery kept that no sync proved (the batch that met a full disk may have left
      // records in the page cache) becomes durable before any of it is served.
      try wal.syncRecoveredRecords()
      return (wal, recovered)
    } catch {
      wal.abandon()
      throw error
    }
  }

  /// Rebuilds every live group from its snapshot and the log. Relies on the WAL's rules: a group's
  /// snapshot file exists from its creation until its deletion, and segments are released only as
  /// a prefix, so an entry older than a group's latest `groupCreated` record belongs to an earlier
  /// incarnation and is skipped.
  private func recover(_ wal: WriteAheadLog) throws -> [GroupID: GroupReplica] {
    var lifecycle: [UInt64: (ordinal: Int, created: Bool)] = [:]
    var ordinal = 0
    try wal.replay { record in
      ordinal += 1
      switch record.kind {
      case .groupCreated: lifecycle[record.group] = (ordinal, true)
      case .groupDeleted: lifecycle[record.group] = (ordinal, false)
      default: break
      }
    }
    var live: [UInt64: Int] = [:]  // group → ordinal after which its entries count
    for group in try wal.snapshotGroups() {
      if let last = lifecycle[group], !last.created {
        try wal.deleteSnapshot(group: group)  // deleted, crashed before the unlink
        continue
      }
      live[group] = lifecycle[group]?.ordinal ?? 0
    }
    for (group, last) in lifecycle where last.created { live[group] = last.ordinal }

    var replicas: [GroupID: GroupReplica] = [:]
    for (packed, _) in live {
      guard let id = GroupID(packed: packed) else {
        throw ConsensusError.storage("the log names an unknown group \(packed)")
      }
      guard let machine = registry.makeStateMachine(for: id) else {
        throw ConsensusError.storage("no state machine is registered for group type \(id.type)")
      }
      let replica = GroupReplica(id: id, stateMachine: machine)
      if let snapshot = try wal.loadSnapshot(group: packed) {
        try machine.restore(snapshot: snapshot.data)
        replica.appliedIndex = snapshot.index
        replica.snapshotIndex = snapshot.index
      }
      replicas[id] = replica
    }
    ordinal = 0
    var replayed = 0
    try wal.replay { record in
      ordinal += 1
      guard record.kind == .entry, let start = live[record.group], ordinal > start,
        let id = GroupID(packed: record.group), let replica = replicas[id], record.index > replica.appliedIndex
      else { return }
      guard record.index == replica.appliedIndex + 1 else {
        throw ConsensusError.storage(
          "group \(id): log entry \(record.index) follows applied index \(replica.appliedIndex); entries are missing")
      }
      _ = replica.stateMachine.apply(index: record.index, command: record.payload)
      replica.appliedIndex = record.index
      replica.logEntries += 1
      replica.logBytes += UInt64(record.payload.count)
      replayed += 1
    }
    // A group whose creation record survived but whose first snapshot was not written (a crash in
    // between) gets one now: its snapshot file, not the record, keeps it alive once the log segment
    // holding the record is released.
    let snapshotted = Set(try wal.snapshotGroups())
    for (id, replica) in replicas where !snapshotted.contains(id.packed) {
      try wal.writeSnapshot(
        WALSnapshot(group: id.packed, index: replica.appliedIndex, term: 1, data: replica.stateMachine.takeSnapshot()))
      replica.snapshotIndex = replica.appliedIndex
      logger.notice("wrote the missing snapshot of a group", metadata: ["group": "\(id)", "index": "\(replica.appliedIndex)"])
    }
    logger.info("log replayed", metadata: ["entries": "\(replayed)", "groups": "\(replicas.count)"])
    return replicas
  }

  // MARK: Data plane

  public func write(_ group: GroupID, command: [UInt8], completion: @escaping ConsensusCompletion<WriteResult>) {
    let refusal: ConsensusError? = state.withLock {
      if let refusal = storageRefusal { return refusal }
      guard phase == .running else { return .shuttingDown }
      guard groups[group] != nil else { return .groupNotFound(group) }
      guard WALRecord.fixedBytes + command.count <= Int(options.wal.recordBytesMax) else {
        return .invalidRequest(
          "the command is \(command.count) bytes; the log takes records up to \(options.wal.recordBytesMax) bytes")
      }
      guard queuedWrites < options.pendingWritesMax, queuedWriteBytes + command.count <= options.pendingWriteBytesMax else {
        return .overloaded(retryAfterMs: 100)
      }
      queue.append(.write(group, command, completion))
      queuedWrites += 1
      queuedWriteBytes += command.count
      if queue.count == 1 || queuedWrites == options.groupCommitWritesTarget { state.signal() }
      return nil
    }
    if let refusal { completion(.failure(refusal)) }
  }

  public func read(
    _ group: GroupID, query: [UInt8], options: ReadOptions, completion: @escaping ConsensusCompletion<ReadResult>
  ) {
    let found: Result<GroupReplica, ConsensusError> = state.withLock {
      guard phase == .running else { return .failure(.shuttingDown) }
      guard let replica = groups[group] else { return .failure(.groupNotFound(group)) }
      return .success(replica)
    }
    let replica: GroupReplica
    switch found {
    case .failure(let error): return completion(.failure(error))
    case .success(let value): replica = value
    }
    // The common case holds only the group's lock.
    if let answer = replica.lock.withLock({ replica.answer(query, ifAppliedAtLeast: options.minIndex) }) {
      return completion(.success(answer))
    }
    // Not applied yet: register a waiter under `state`, checking again there, since the commit
    // thread answers waiters under `state` after each apply.
    let outcome: Result<ReadResult, ConsensusError>? = state.withLock {
      if let answer = replica.lock.withLock({ replica.answer(query, ifAppliedAtLeast: options.minIndex) }) {
        return .success(answer)
      }
      guard readWaiters.count < self.options.readWaitersMax else { return .failure(.overloaded(retryAfterMs: 100)) }
      let deadline = MonotonicClock.nowNanoseconds() + UInt64(options.waitMs) * 1_000_000
      readWaiters.append(ReadWaiter(group: group, query: query, minIndex: options.minIndex, deadline: deadline, completion: completion))
      state.broadcast()
      return nil
    }
    if let outcome { completion(outcome) }
  }

  // MARK: Management

  /// A standalone group is its one replica, on this node.
  public var groupPeersMax: Int? { 1 }

  public func createPeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {
    guard peers.count == 1 else {
      completion(.failure(.illegalPeerNumber(count: peers.count, reason: "a standalone group has exactly one peer")))
      return
    }
    guard peers[0].node == localPeer.node else {
      completion(.failure(.illegalPeerNumber(count: 1, reason: "a standalone group's only peer is this node (\(localPeer.node))")))
      return
    }
    guard registry.makeStateMachine(for: group) != nil else {
      completion(.failure(.invalidRequest("no state machine is registered for group type \(group.type)")))
      return
    }
    enqueueControl(.create(group, completion))
  }

  public func deletePeer(_ group: GroupID, ifLogEndsBy: LogPosition?, completion: @escaping ConsensusCompletion<Void>) {
    // One replica and no membership changes: nothing is added back behind a deletion's back, so
    // the bound is checked against its log's end (its commit index; one term) here.
    if let ifLogEndsBy, let status = status(group), status.commitIndex > ifLogEndsBy.index {
      return completion(.failure(.peerAlreadyInGroup(localPeer.node, group)))
    }
    enqueueControl(.delete(group, completion))
  }

  public func addPeer(_ group: GroupID, peer: Peer, completion: @escaping ConsensusCompletion<Void>) {
    completion(membershipAnswer(group) { replica in
      peer.node == localPeer.node
        ? .peerAlreadyInGroup(peer.node, group)
        : .illegalPeerNumber(count: 2, reason: "a standalone group has exactly one peer; use the raft protocol to replicate")
    })
  }

  public func removePeer(_ group: GroupID, node: NodeID, completion: @escaping ConsensusCompletion<Void>) {
    completion(membershipAnswer(group) { _ in
      node == localPeer.node
        ? .illegalPeerNumber(count: 0, reason: "a standalone group cannot lose its only peer; delete the group instead")
        : .peerNotInGroup(node, group)
    })
  }

  public func changePeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>) {
    completion(membershipAnswer(group) { _ in
      peers.count == 1 && peers[0].node == localPeer.node
        ? nil
        : .illegalPeerNumber(count: peers.count, reason: "a standalone group has exactly one peer, this node")
    })
  }

  public func transferLeader(_ group: GroupID, to node: NodeID, completion: @escaping ConsensusCompletion<Void>) {
    completion(membershipAnswer(group) { _ in node == localPeer.node ? nil : .peerNotInGroup(node, group) })
  }

  public func triggerSnapshot(_ group: GroupID, completion: @escaping ConsensusCompletion<SnapshotInfo>) {
    enqueueControl(.snapshot(group, completion))
  }

  /// The answer of a membership call: group not found, or what `decide` says (nil: success).
  private func membershipAnswer(
    _ group: GroupID, _ decide: (GroupReplica) -> ConsensusError?
  ) -> Result<Void, ConsensusError> {
    let replica = state.withLock { groups[group] }
    guard let replica else { return .failure(.groupNotFound(group)) }
    if let error = decide(replica) { return .failure(error) }
    return .success(())
  }

  private func enqueueControl(_ work: Work) {
    let refusal: ConsensusError? = state.withLock {
      if let refusal = storageRefusal { return refusal }
      guard phase == .running else { return .shuttingDown }
      guard queuedControl < options.pendingControlMax else { return .overloaded(retryAfterMs: 100) }
      queue.append(work)
      queuedControl += 1
      if queue.count == 1 { state.signal() }
      return nil
    }
    if let refusal { work.fail(refusal) }
  }

  // MARK: Queries

  public func isLeader(_ group: GroupID) -> Bool { state.withLock { groups[group] != nil } }

  public func leader(_ group: GroupID) -> Peer? { state.withLock { groups[group] != nil ? localPeer : nil } }

  public func allGroupIDs() -> [GroupID] { state.withLock { groups.keys.sorted() } }

  public func status(_ group: GroupID) -> GroupStatus? {
    guard let replica = state.withLock({ groups[group] }) else { return nil }
    return replica.lock.withLock {
      let applied = replica.appliedIndex
      return GroupStatus(
        id: group, protocolName: protocolName, role: .leader, leader: localPeer, term: 1, commitIndex: applied,
        appliedIndex: applied, snapshotIndex: replica.snapshotIndex, logEntries: replica.logEntries,
        logBytes: replica.logBytes,
        peers: [PeerStatus(peer: localPeer, matchIndex: applied, nextIndex: applied + 1, lag: 0, lastContactMs: 0)])
    }
  }

  /// Every group's series: for an embedding program that hosts few groups.
  public func prometheusMetrics() -> String { prometheusMetrics(groupSeriesMax: .max) }

  public func prometheusMetrics(groupSeriesMax: Int) -> String {
    let (statistics, spaceStatistics, writes, batches, applied) = state.withLock {
      (
        walStatistics, outOfSpaceStatistics, writesCommitted, batchesCommitted,
        groups.map { id, replica in (id, replica.lock.withLock { replica.appliedIndex }) }
      )
    }
    var text = statistics.prometheusText()
    text += spaceStatistics.prometheusText()
    text += Prometheus.metric("caucus_writes_committed_total", help: "Writes made durable and applied.", writes)
    text += Prometheus.metric(
      "caucus_commit_batches_total", help: "Commit-thread turns that appended and synced a batch.", batches)
    text += Prometheus.metric("caucus_groups_hosted", help: "Groups this node hosts a replica of.", UInt64(applied.count), type: "gauge")
    text += Prometheus.groupGauges(
      [("caucus_group_applied_index", "The last log index applied, per group.")],
      rows: applied.sorted(by: { $0.0 < $1.0 }).map { group, index in (group.description, [index]) },
      groupsMax: groupSeriesMax)
    return text
  }

  // MARK: The commit thread

  /// `wal` is nil while the data directory is out of space (and after a failure to reopen it):
  /// the thread then refuses work, and reopens the log every `outOfSpaceRetryMs` until it can.
  private func commitLoop(_ opened: WriteAheadLog) {
    var wal: WriteAheadLog? = opened
    var nextStorageAttempt = UInt64.max
    while true {
      let (batch, stopping, expired) = nextBatch(wakeAt: wal == nil ? nextStorageAttempt : .max)
      for waiter in expired { waiter.completion(.failure(.timeout(indeterminate: false))) }
      if wal == nil && !stopping && MonotonicClock.nowNanoseconds() >= nextStorageAttempt {
        wal = reopenAfterOutOfSpace()
        nextStorageAttempt = wal == nil ? MonotonicClock.nowNanoseconds() + options.outOfSpaceRetryMs * 1_000_000 : .max
      }
      if let open = wal {
        if !batch.isEmpty { process(batch, open) }
        if state.withLock({ outOfSpace != nil || failure != nil }) {
          // The log met a full disk (or failed): nothing more goes to it. Its lock is released
          // so that a reopened log can take it.
          open.abandon()
          wal = nil
          let passes = state.withLock { failure == nil }
          nextStorageAttempt = passes ? MonotonicClock.nowNanoseconds() + options.outOfSpaceRetryMs * 1_000_000 : .max
        }
      } else {
        let refusal = state.withLock { storageRefusal } ?? .shuttingDown
        for work in batch { work.fail(refusal) }
      }
      if stopping && batch.isEmpty { break }
    }
    do {
      try wal?.sync()
      try wal?.close()
    } catch {
      logger.error("closing the log failed", metadata: ["error": "\(error)"])
    }
    logger.info("standalone engine stopped")
  }

  /// One attempt to leave the out-of-space state: a probe for room, then the log reopened and
  /// every group rebuilt from disk as at start; the rebuilt groups replace the ones reads were
  /// served from. Nil while there is no room yet, or for good when storage failed otherwise.
  private func reopenAfterOutOfSpace() -> WriteAheadLog? {
    guard state.withLock({ failure == nil && outOfSpace != nil }) else { return nil }
    do {
      try SpaceProbe.check(directory: directory + "/wal", bytes: options.outOfSpaceProbeBytes, fileStore: PosixFileStore())
      let (wal, recovered) = try openStorage()
      let statistics = wal.statistics
      let waiters: [(ReadWaiter, ReadResult)] = state.withLock {
        groups = recovered
        walStatistics = statistics
        outOfSpace = nil
        outOfSpaceStatistics.outOfSpace = false
        outOfSpaceStatistics.recoveries += 1
        return takeSatisfiedWaiters()
      }
      for (waiter, result) in waiters { waiter.completion(.success(result)) }
      logger.notice(
        "space returned to the data directory; the log is reopened and writes are taken again",
        metadata: ["directory": "\(directory)", "groups": "\(recovered.count)"])
      return wal
    } catch let error as WALError where error.isOutOfSpace {
      logger.debug("the data directory is still out of space", metadata: ["directory": "\(directory)", "error": "\(error)"])
      return nil
    } catch {
      fail("reopening the log after the data directory ran out of space failed: \(error)")
      return nil
    }
  }

  /// Waits for work; returns up to `batchWritesMax` writes (plus control work in order) and the
  /// read waiters whose deadline passed.
  /// `wakeAt`: the clock time at which the thread has work of its own (a storage attempt).
  private func nextBatch(wakeAt: UInt64) -> ([Work], Bool, [ReadWaiter]) {
    state.withLock {
      while queue.isEmpty && phase == .running {
        let earliest = min(readWaiters.map(\.deadline).min() ?? .max, wakeAt)
        if earliest != .max {
          if !state.wait(untilNanoseconds: earliest) { break }
        } else {
          state.wait()
        }
      }
      gatherConcurrentWrites()
      let now = MonotonicClock.nowNanoseconds()
      var expired: [ReadWaiter] = []
      readWaiters.removeAll { waiter in
        guard waiter.deadline <= now else { return false }
        expired.append(waiter)
        return true
      }
      var taken = 0
      var writes = 0
      var writeBytes = 0
      while taken < queue.count && writes < options.batchWritesMax {
        if case .write(_, let command, _) = queue[taken] {
          writes += 1
          writeBytes += command.count
        }
        taken += 1
      }
      let batch = Array(queue[..<taken])
      queue.removeFirst(taken)
      queuedWrites -= writes
      queuedWriteBytes -= writeBytes
      queuedControl -= taken - writes
      assert(queuedWrites >= 0 && queuedWriteBytes >= 0 && queuedControl >= 0)
      lastBatchWrites = writes
      return (batch, phase != .running, expired)
    }
  }

  /// Must hold `state`. See `StandaloneOptions.groupCommitWindowMicros`.
  private func gatherConcurrentWrites() {
    guard lastBatchWrites > 1, queuedWrites > 0, options.groupCommitWindowMicros > 0 else { return }
    let deadline = MonotonicClock.nowNanoseconds() + options.groupCommitWindowMicros * 1_000
    while phase == .running && queuedWrites < options.groupCommitWritesTarget {
      let now = MonotonicClock.nowNanoseconds()
      guard now < deadline else { return }
      let before = queuedWrites
      state.wait(untilNanoseconds: min(deadline, now + options.groupCommitQuietMicros * 1_000))
      if queuedWrites == before { return }
    }
  }

  private func process(_ batch: [Work], _ wal: WriteAheadLog) {
    // Control work runs alone, in arrival order; writes between control items share one fsync.
    // Once the log met a full disk (or failed), the rest of the batch is refused: nothing of it
    // was written.
    var writes: [(GroupReplica, UInt64, [UInt8], ConsensusCompletion<WriteResult>)] = []
    var nextIndex: [GroupID: UInt64] = [:]
    func flushWrites() {
      guard !writes.isEmpty else { return }
      if let refusal = state.withLock({ storageRefusal }) {
        for (_, _, _, completion) in writes { completion(.failure(refusal)) }
      } else {
        commit(writes, wal)
      }
      writes.removeAll(keepingCapacity: true)
      nextIndex.removeAll(keepingCapacity: true)
    }
    for work in batch {
      switch work {
      case .write(let group, let command, let completion):
        guard let replica = state.withLock({ groups[group] }) else {
          completion(.failure(.groupNotFound(group)))
          continue
        }
        let index = (nextIndex[group] ?? replica.lock.withLock { replica.appliedIndex }) + 1
        nextIndex[group] = index
        writes.append((replica, index, command, completion))
      default:
        flushWrites()
        if let refusal = state.withLock({ storageRefusal }) {
          work.fail(refusal)
        } else {
          runControl(work, wal)
        }
      }
    }
    flushWrites()
  }

  private func commit(_ writes: [(GroupReplica, UInt64, [UInt8], ConsensusCompletion<WriteResult>)], _ wal: WriteAheadLog) {
    let records = writes.map { replica, index, command, _ in
      WALRecord(kind: .entry, group: replica.id.packed, index: index, term: 1, payload: command)
    }
    do {
      try wal.append(records)
      Failpoints.walAfterAppendBeforeFsync.pass()
      try wal.sync()
    } catch {
      // The entries may or may not be in the file (a full disk too may leave whole records of
      // the batch there, which a reopen keeps): the outcome is unknown, never a definite failure.
      let answer = outcomeUnknown(error)
      storageFailed("appending to the log failed", error)
      for (_, _, _, completion) in writes { completion(.failure(answer)) }
      return
    }
    var results: [(ConsensusCompletion<WriteResult>, WriteResult)] = []
    results.reserveCapacity(writes.count)
    var snapshotDue: [GroupReplica] = []
    for (replica, index, command, completion) in writes {
      let response: [UInt8] = replica.lock.withLock {
        precondition(replica.appliedIndex + 1 == index, "entries apply in order")
        replica.appliedIndex = index
        replica.logEntries += 1
        replica.logBytes += UInt64(command.count)
        return replica.stateMachine.apply(index: index, command: command)
      }
      results.append((completion, WriteResult(index: index, response: response)))
      let snapshotIndex = replica.lock.withLock { replica.snapshotIndex }
      if index - snapshotIndex >= options.snapshotEntriesThreshold && index >= replica.nextSnapshotAttemptIndex {
        snapshotDue.append(replica)
      }
    }
    let statistics = wal.statistics
    let waiters: [(ReadWaiter, ReadResult)] = state.withLock {
      walStatistics = statistics
      writesCommitted += UInt64(writes.count)
      batchesCommitted += 1
      return takeSatisfiedWaiters()
    }
    Failpoints.applyAfterApplyBeforeAnswer.pass()
    for (completion, result) in results { completion(.success(result)) }
    for (waiter, result) in waiters { waiter.completion(.success(result)) }
    for replica in snapshotDue {
      do { _ = try takeSnapshot(replica, wal) } catch {
        // Retry after another tenth of the threshold, not on every write.
        replica.nextSnapshotAttemptIndex = replica.lock.withLock { replica.appliedIndex } + max(1, options.snapshotEntriesThreshold / 10)
        logger.warning("automatic snapshot failed", metadata: ["group": "\(replica.id)", "error": "\(error)"])
      }
    }
  }

  /// Must hold `state`. Removes and answers the waiters whose `minIndex` is now applied.
  private func takeSatisfiedWaiters() -> [(ReadWaiter, ReadResult)] {
    guard !readWaiters.isEmpty else { return [] }
    var satisfied: [(ReadWaiter, ReadResult)] = []
    readWaiters.removeAll { waiter in
      guard let replica = groups[waiter.group] else {
        waiter.completion(.failure(.groupNotFound(waiter.group)))
        return true
      }
      guard let answer = replica.lock.withLock({ replica.answer(waiter.query, ifAppliedAtLeast: waiter.minIndex) }) else {
        return false
      }
      satisfied.append((waiter, answer))
      return true
    }
    return satisfied
  }

  private func runControl(_ work: Work, _ wal: WriteAheadLog) {
    switch work {
    case .write: preconditionFailure("writes are committed in batches")
    case .create(let group, let completion):
      guard state.withLock({ groups[group] }) == nil else {
        completion(.failure(.groupAlreadyExists(group)))
        return
      }
      guard let machine = registry.makeStateMachine(for: group) else {
        completion(.failure(.invalidRequest("no state machine is registered for group type \(group.type)")))
        return
      }
      let replica = GroupReplica(id: group, stateMachine: machine)
      do {
        try wal.append([WALRecord(kind: .groupCreated, group: group.packed, index: 0, term: 1, payload: [])])
        try wal.sync()
        try wal.writeSnapshot(WALSnapshot(group: group.packed, index: 0, term: 1, data: machine.takeSnapshot()))
      } catch {
        storageFailed("creating group \(group) failed", error)
        completion(.failure(outcomeUnknown(error)))
        return
      }
      state.withLock { groups[group] = replica }
      logger.info("group created", metadata: ["group": "\(group)"])
      completion(.success(()))
    case .delete(let group, let completion):
      guard state.withLock({ groups[group] }) != nil else {
        completion(.failure(.groupNotFound(group)))
        return
      }
      do {
        try wal.append([WALRecord(kind: .groupDeleted, group: group.packed, index: 0, term: 1, payload: [])])
        try wal.sync()
        try wal.deleteSnapshot(group: group.packed)
      } catch {
        storageFailed("deleting group \(group) failed", error)
        completion(.failure(outcomeUnknown(error)))
        return
      }
      let orphans: [ReadWaiter] = state.withLock {
        groups[group] = nil
        var orphans: [ReadWaiter] = []
        readWaiters.removeAll { waiter in
          guard waiter.group == group else { return false }
          orphans.append(waiter)
          return true
        }
        return orphans
      }
      for waiter in orphans { waiter.completion(.failure(.groupNotFound(group))) }
      releaseLog(wal)
      logger.info("group deleted", metadata: ["group": "\(group)"])
      completion(.success(()))
    case .snapshot(let group, let completion):
      guard let replica = state.withLock({ groups[group] }) else {
        completion(.failure(.groupNotFound(group)))
        return
      }
      do {
        completion(.success(try takeSnapshot(replica, wal)))
      } catch let error as WALError where error.isOutOfSpace {
        // The snapshot file is written aside and renamed: a failed one changed nothing, and the
        // log is intact, so the engine goes on (its next append finds out whether space is short).
        completion(.failure(.outOfSpace(directory: directory, retryAfterMs: UInt32(options.outOfSpaceRetryMs))))
      } catch {
        completion(.failure(.storage("\(error)")))
      }
    }
  }

  private func takeSnapshot(_ replica: GroupReplica, _ wal: WriteAheadLog) throws -> SnapshotInfo {
    let (index, data) = replica.lock.withLock { (replica.appliedIndex, replica.stateMachine.takeSnapshot()) }
    try wal.writeSnapshot(
      WALSnapshot(group: replica.id.packed, index: index, term: 1, data: data), partway: Failpoints.snapshotSave)
    replica.lock.withLock {
      replica.snapshotIndex = index
      replica.logEntries = 0
      replica.logBytes = 0
    }
    releaseLog(wal)
    logger.info("snapshot taken", metadata: ["group": "\(replica.id)", "index": "\(index)", "bytes": "\(data.count)"])
    return SnapshotInfo(index: index, term: 1, bytes: UInt64(data.count))
  }

  /// Deletes the log segments every group's snapshot covers.
  private func releaseLog(_ wal: WriteAheadLog) {
    let covered = state.withLock {
      Dictionary(uniqueKeysWithValues: groups.map { id, replica in (id.packed, replica.lock.withLock { replica.snapshotIndex }) })
    }
    do {
      let released = try wal.releaseSegments(coveredIndex: covered)
      if released > 0 { logger.info("log segments released", metadata: ["segments": "\(released)"]) }
    } catch {
      logger.warning("releasing log segments failed", metadata: ["error": "\(error)"])
    }
    let statistics = wal.statistics
    state.withLock { walStatistics = statistics }
  }

  /// The answer to work whose records met a storage failure: refused before any byte was
  /// written is a definite failure; otherwise its records may be in the log (a reopen or a
  /// restart keeps them), so its outcome is unknown.
  private func outcomeUnknown(_ error: any Error) -> ConsensusError {
    switch error as? WALError {
    case .recordTooLarge, .unusable, .closed: return .storage("\(error)")
    default: return .timeout(indeterminate: true)
    }
  }

  /// The log failed: out of space passes (`outOfSpace`: the commit thread abandons the log and
  /// reopens it once space returns); anything else refuses work until restart (`fail`).
  private func storageFailed(_ what: String, _ error: any Error) {
    guard let walError = error as? WALError, walError.isOutOfSpace else { return fail("\(what): \(error)") }
    logger.error(
      "the data directory is out of space; refusing writes until space returns",
      metadata: [
        "directory": "\(directory)", "error": "\(walError)", "retryMs": "\(options.outOfSpaceRetryMs)",
        "action": "free space on that file system (delete files or grow it); no restart is needed",
      ])
    state.withLock {
      guard failure == nil, outOfSpace == nil else { return }
      outOfSpace = "\(what): \(walError)"
      outOfSpaceStatistics.outOfSpace = true
      outOfSpaceStatistics.failures += 1
    }
  }

  /// Storage failed: refuse further work (the node reports not ready) rather than risk
  /// acknowledging writes that are not durable.
  private func fail(_ reason: String) {
    logger.critical("storage failure; refusing writes until restart", metadata: ["reason": "\(reason)"])
    state.withLock { if failure == nil { failure = reason } }
  }
}

/// A group's replica. `lock` guards everything mutable here (the engine's commit thread alone
/// writes `nextSnapshotAttemptIndex`).
final class GroupReplica {
  let id: GroupID
  let lock = ConditionLock()
  let stateMachine: any StateMachine
  var appliedIndex: UInt64 = 0
  var snapshotIndex: UInt64 = 0
  var logEntries: UInt64 = 0
  var logBytes: UInt64 = 0
  /// An automatic snapshot that failed is tried again from this index on.
  var nextSnapshotAttemptIndex: UInt64 = 0

  init(id: GroupID, stateMachine: any StateMachine) {
    self.id = id
    self.stateMachine = stateMachine
  }

  /// Must hold `lock`. The query's answer when `minIndex` is applied, else nil.
  func answer(_ query: [UInt8], ifAppliedAtLeast minIndex: UInt64) -> ReadResult? {
    guard appliedIndex >= minIndex else { return nil }
    return ReadResult(index: appliedIndex, response: stateMachine.query(query))
  }
}

private enum Work {
  case write(GroupID, [UInt8], ConsensusCompletion<WriteResult>)
  case create(GroupID, ConsensusCompletion<Void>)
  case delete(GroupID, ConsensusCompletion<Void>)
  case snapshot(GroupID, ConsensusCompletion<SnapshotInfo>)

  func fail(_ error: ConsensusError) {
    switch self {
    case .write(_, _, let completion): completion(.failure(error))
    case .create(_, let completion): completion(.failure(error))
    case .delete(_, let completion): completion(.failure(error))
    case .snapshot(_, let completion): completion(.failure(error))
    }
  }
}

private struct ReadWaiter {
  let group: GroupID
  let query: [UInt8]
  let minIndex: UInt64
  let deadline: UInt64
  let completion: ConsensusCompletion<ReadResult>
}

/// Moves a non-Sendable value into the one thread that will own it from then on.
struct UncheckedSendableBox<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}
