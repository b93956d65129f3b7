import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// The loop: one turn executes every group's Ready in the order the contract asks, batched
// across groups (one WAL append and fsync, one batch per destination).

extension RaftConsensus {
  // MARK: The loop

  /// Everything one turn collects to do after its fsync.
  struct Turn {
    /// The clock when the turn started, and whether it ticked.
    let now: UInt64
    var ticked = false
    init(now: UInt64) { self.now = now }
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
    /// Committed entries applied this turn, over all groups.
    var entriesApplied = 0
    /// Snapshot files written this turn (received from a leader): segments may be released.
    var snapshotsWritten = 0
    var snapshotsInstalled = 0
    /// Chunks of streamed snapshots for the early batches, and the streams they finished.
    var snapshotChunks: [ReplicaID: [SnapshotChunk]] = [:]
    var snapshotStreamsFinished: [SnapshotStreams.Key] = []
    var snapshotChunksReceived = 0
    var snapshotChunksSent = 0
    var quiescences = 0
    var wakesLeaderLost = 0
    /// Groups quiesced after this turn's tick (nil: no tick).
    var groupsQuiesced: Int?
  }

  /// What the loop keeps from one turn to the next. Loop only.
  struct LoopState {
    /// Nil while the data directory is out of space: the loop then runs no group and reopens the
    /// log at `nextStorageAttemptNanoseconds` (`runTurnWithoutStorage`).
    var wal: WriteAheadLog?
    /// When the next tick is due, on `clock`.
    var nextTickNanoseconds: UInt64
    /// While out of space: when the loop next checks for room and reopens the log, on `clock`.
    var nextStorageAttemptNanoseconds = UInt64.max
    /// A group still has a Ready after the last turn (more committed entries than one Ready
    /// applies): the next turn must not wait.
    var moreReady = false
  }

  /// What a turn takes from the inbox.
  struct Work {
    var items: [InboxItem]
    var stopping: Bool
    /// Stale reads whose deadline passed.
    var expired: [StaleReadWaiter]
  }

  /// The loop thread: waits for work (or the next tick), runs a turn, again, until stopped or
  /// the storage fails. All the logic is in `runTurn`; this only waits.
  func runLoop() {
    while true {
      let work = takeWork(wait: true)
      if !runTurn(work) { break }
    }
    shutDown(loop!.wal)
  }

  /// One turn of the host, in the order the Ready contract asks (`Ready`), for every group at
  /// once. Returns false when the engine must stop (asked to, or its storage failed).
  func runTurn(_ work: Work) -> Bool {
    for waiter in work.expired { waiter.completion(.failure(.timeout(indeterminate: false))) }
    if work.stopping { return false }
    guard let wal = loop!.wal else { return runTurnWithoutStorage(work) }
    var turn = Turn(now: clock.nowNanoseconds())
    // 1. Time: at most one tick per turn, even after a stall (ticks measure time between turns).
    //    Quiesced groups are not ticked; idle leaders quiesce (before their tick, so that their
    //    last heartbeat round is not still being answered); groups whose leader's node died wake.
    if turn.now >= loop!.nextTickNanoseconds {
      turn.ticked = true
      loop!.nextTickNanoseconds = turn.now + tickNanoseconds
      ticksRun += 1
      // The batches this turn takes arrived before now: heard first, so that a turn after a stall
      // of this loop (a slow fsync) does not take its peers' queued batches for silence.
      for case .batch(let batch) in work.items { liveness.heard(batch.fromNode, at: turn.now) }
      checkLiveness(&turn)
      var ticked = 0
      for replica in live.awake where !replica.inspect({ $0.isQuiesced }) {
        if options.quiesceAfterTicks > 0, replica.inspect({ $0.role == .leader }),
          replica.inspect({ [liveness] in $0.quiesce(unreachable: liveness.isDead) })
        {
          turn.quiescences += 1
          continue
        }
        replica.raft.tick()
        ticked += 1
      }
      turn.groupsQuiesced = live.count - ticked
    }
    // 2. Input: writes that waited first (in arrival order), then the inbox, then writes whose
    //    batch this turn learned was lost; then deadlines.
    resendUnsentForwards(&turn)
    for item in work.items { handle(item, &turn, wal) }
    resendUnsentForwards(&turn)
    // The groups this turn concerns: the awake ones and those the input reached.
    let visited = live.takeTurnGroups()
    if turn.ticked { expireDeadlines(visited, now: turn.now, &turn) }
    // 3. Every Ready, in group order.
    var readies: [(RaftGroup, Ready)] = []
    for replica in visited where replica.inspect({ $0.hasReady }) { readies.append((replica, replica.raft.ready())) }
    // 4. Send what may leave before the fsync: a leader's appends and heartbeats (followers
    //    persist while the leader does), streamed snapshot chunks, and our forwarded writes
    //    unless they ride after the fsync.
    var plan = planEarlySends(readies, wal: wal, &turn)
    let sentEarly = send(plan.early, forwards: plan.forwardsNow, chunks: turn.snapshotChunks, &turn)
    // 5. Persist every group's records in one append; fsync once if any must sync.
    do {
      try persist(readies, &turn, wal)
      if !turn.records.isEmpty {
        try wal.append(turn.records)
        Failpoints.walAfterAppendBeforeFsync.pass()
      }
      if turn.synced {
        try wal.sync()
        ticksWithUnsyncedRecords = 0
      }
    } catch let error as WALError where error.isOutOfSpace {
      enterOutOfSpace("appending to the log failed", error, &turn, wal)
      return true
    } catch {
      failStorage("appending to the log failed: \(error)", &turn)
      return false
    }
    if turn.synced { Failpoints.raftAfterFsyncBeforeSend.pass() }
    for action in turn.onDurable { action(.success(())) }
    if let readyObserver {
      for (replica, ready) in readies {
        replica.inspect { readyObserver.persisted(replica.id, ready: ready, raft: $0, synced: turn.synced) }
      }
    }
    // 6. Send what promised durability: votes and acknowledgements (and forwards riding along).
    let sentAfter = sendAfterPersist(readies, forwards: plan.forwardsAfterSync, &turn)
    plan.forwardsAfterSync = [:]
    // 7. Apply, answer what waited for it, advance.
    for (replica, ready) in readies { applyAndAdvance(replica, ready, &turn) }
    // Every answer of the turn waits in `turn.answers` until step 8.
    if turn.entriesApplied > 0 { Failpoints.applyAfterApplyBeforeAnswer.pass() }
    reportStreamedSnapshots(&turn)
    // 8. Publish views and counters, then answer every caller of the turn.
    // A quiesced group's core does not change without a Ready: only the others' views can be stale.
    if turn.ticked {
      for replica in visited where !replica.inspect({ $0.isQuiesced }) { replica.refreshView() }
      for (replica, _) in readies where replica.inspect({ $0.isQuiesced }) { replica.refreshView() }
    } else {
      for (replica, _) in readies { replica.refreshView() }
    }
    // The step that quiesced a group, or woke it, may leave no Ready: its view must say so anyway.
    for replica in visited where replica.inspect({ $0.isQuiesced }) != replica.viewQuiesced { replica.refreshView() }
    finishTurn(&turn, wal: wal, sent: sentEarly + sentAfter)
    for answer in turn.answers { answer() }
    // 9. Snapshots due, and the release of the log they cover.
    do {
      try snapshotDueGroups(visited, wal, releasing: turn.snapshotsWritten)
    } catch let error as WALError where error.isOutOfSpace {
      var failed = Turn(now: turn.now)
      enterOutOfSpace("restating records before releasing log segments failed", error, &failed, wal)
      return true
    } catch {
      var failed = Turn(now: turn.now)
      failStorage("releasing log segments failed: \(error)", &failed)
      return false
    }
    loop!.moreReady = visited.contains { $0.inspect { $0.hasReady } }
    // Awake for the next turn: what still ticks, waits, or has more to apply.
    live.keepAwake(visited.filter { replica in replica.inspect { !$0.isQuiesced || $0.hasReady } || !replica.pending.isEmpty })
    return true
  }

  /// What step 4 of a turn sends before the fsync, and the forwards that wait for it.
  struct EarlySends {
    var early: [ReplicaID: [GroupMessage]] = [:]
    var forwardsNow: [ReplicaID: [ForwardedProposal]] = [:]
    var forwardsAfterSync: [ReplicaID: [ForwardedProposal]] = [:]
  }

  /// Step 4's plan: the Readies' early messages (a snapshot larger than the inline limit starts
  /// a stream instead), the streams' chunks due, held heartbeat responses, whether the turn
  /// syncs, and where this turn's forwarded writes go.
  func planEarlySends(_ readies: [(RaftGroup, Ready)], wal: WriteAheadLog, _ turn: inout Turn) -> EarlySends {
    var plan = EarlySends()
    var streamStarted = false
    for (replica, ready) in readies {
      for message in ready.messages {
        if streams(message) {
          snapshotStreams.start(message, group: replica.id.packed)
          streamStarted = true
          continue
        }
        plan.early[message.to, default: []].append(GroupMessage(group: replica.id.packed, message: message))
      }
    }
    // Streamed snapshots send a tick's share of their chunks per tick (and at once when one
    // starts), beside the early batch.
    if turn.ticked {
      let dropped = snapshotStreams.tick(idleTicksMax: options.snapshotAssemblyIdleTicksMax)
      if dropped > 0 { logger.notice("dropped idle snapshot assemblies", metadata: ["count": "\(dropped)"]) }
    }
    if turn.ticked || streamStarted {
      let (chunks, finished) = snapshotStreams.takeChunks(bytesPerDestination: options.snapshotStreamBytesPerTick) {
        key, term in
        guard let id = GroupID(packed: key.group), let replica = live[id] else { return false }
        return replica.raft.role == .leader && replica.raft.term == term
      }
      turn.snapshotChunks = chunks
      turn.snapshotStreamsFinished = finished
    }
    // Held heartbeat responses ride with this turn's batches; at a tick every one leaves.
    releaseHeldHeartbeatResponses(into: &plan.early, all: turn.ticked)
    // At a tick every peer node gets a batch, empty if need be: node liveness (`NodeLiveness`).
    if turn.ticked {
      for node in livenessPeers.keys where plan.early[node] == nil { plan.early[node] = [] }
    }
    // Group creations and deletions (records already in the turn) and Readies with entries, a
    // snapshot or a new term or vote need the fsync; a commit index alone does not (`mustSync`).
    let readiesSync = !turn.records.isEmpty || readies.contains { $0.1.mustSync }
    // Commit-only records left unsynced get an fsync after `unsyncedRecordsTicksMax` ticks.
    if turn.ticked && wal.hasUnsyncedRecords { ticksWithUnsyncedRecords += 1 }
    turn.synced = readiesSync || ticksWithUnsyncedRecords >= options.unsyncedRecordsTicksMax
    // Our writes for other leaders ride with this turn's acknowledgements when its Readies sync
    // anyway: one batch instead of two, and the leader takes both in one turn (one fsync there
    // instead of two). Otherwise they leave now, unless their leader still owes us answers
    // (`forwardsUnansweredBy`): then they wait for that answer or our next acknowledgement.
    // A leader's answers to forwards stay with its appends, in the early batch.
    if turn.ticked {
      forwardsUnansweredBy = forwardsUnansweredBy.mapValues { $0 + 1 }.filter { $0.value < options.forwardHoldTicksMax }
    }
    (plan.forwardsNow, plan.forwardsAfterSync) = Self.splitProposals(turn.forwards)
    if !readiesSync {
      for node in plan.forwardsAfterSync.keys.sorted() {
        let proposals = plan.forwardsAfterSync.removeValue(forKey: node)!
        if forwardsUnansweredBy[node] != nil {
          hold(proposals, for: node, &turn)
        } else {
          plan.forwardsNow[node, default: []].append(contentsOf: proposals)
        }
      }
    }
    for (node, forwards) in plan.forwardsNow where forwards.contains(where: \.isProposal) {
      forwardsUnansweredBy[node] = forwardsUnansweredBy[node] ?? 0
    }
    for node in plan.forwardsAfterSync.keys { forwardsUnansweredBy[node] = forwardsUnansweredBy[node] ?? 0 }
    return plan
  }

  /// Step 6: the Readies' `messagesAfterPersist` (heartbeat responses that only confirm
  /// liveness are held for a later batch, `holdHeartbeatResponses`) and the forwards that rode
  /// with them.
  func sendAfterPersist(
    _ readies: [(RaftGroup, Ready)], forwards: [ReplicaID: [ForwardedProposal]], _ turn: inout Turn
  ) -> SendCounts {
    for (replica, ready) in readies {
      for message in ready.messagesAfterPersist {
        // A snapshot waits for the fsync in a Ready that changed the term: over the inline
        // limit it streams from the next tick on, as one sent early does.
        if streams(message) {
          snapshotStreams.start(message, group: replica.id.packed)
          continue
        }
        if options.holdHeartbeatResponses && message.kind == .heartbeatResponse && message.context == 0 {
          heldHeartbeatResponses[message.to, default: [:]][replica.id.packed] = message
          continue
        }
        turn.outgoing[message.to, default: []].append(GroupMessage(group: replica.id.packed, message: message))
      }
    }
    releaseHeldHeartbeatResponses(into: &turn.outgoing, all: false)
    return send(turn.outgoing, forwards: forwards, chunks: [:], &turn)
  }

  /// Step 7 for one group: apply, advance, then what waited on the group's progress.
  func applyAndAdvance(_ replica: RaftGroup, _ ready: Ready, _ turn: inout Turn) {
    apply(replica, ready, &turn)
    readyObserver?.applied(replica.id, ready: ready)
    replica.raft.advance(ready)
    // The transport reports no delivery: count a snapshot as delivered; if it was lost, the
    // follower's next response shows it and the leader probes (and sends it) again.
    for message in ready.messages + ready.messagesAfterPersist where message.kind == .snapshot && !streams(message) {
      replica.raft.reportSnapshot(to: message.to, failed: false)
    }
    if !replica.pending.transfers.isEmpty { settleTransfers(replica, now: turn.now, &turn) }
    if replica.pending.membershipChange != nil { settleMembershipChange(replica, now: turn.now, &turn) }
  }

  /// A streamed snapshot whose last chunk left counts as delivered, as an inline one does.
  func reportStreamedSnapshots(_ turn: inout Turn) {
    for key in turn.snapshotStreamsFinished {
      guard let id = GroupID(packed: key.group), let replica = live[id] else { continue }
      replica.raft.reportSnapshot(to: key.replica, failed: false)
    }
  }

  /// Takes the inbox. With `wait`, first waits for urgent work, the next tick, a stale read's
  /// deadline or a stop (the loop thread); without, takes what is there (a manual driver).
  func takeWork(wait: Bool) -> Work {
    let nextTick = loop!.nextTickNanoseconds
    let moreReady = loop!.moreReady
    return state.withLock {
      while wait && !inboxUrgent && phase == .running && !moreReady {
        let earliest = staleReadWaiters.map(\.deadline).min() ?? UInt64.max
        let now = clock.nowNanoseconds()
        if now >= nextTick || now >= earliest { break }
        state.wait(untilNanoseconds: min(nextTick, earliest))
      }
      let now = clock.nowNanoseconds()
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
      return Work(items: items, stopping: phase != .running, expired: expired)
    }
  }

  func handle(_ item: InboxItem, _ turn: inout Turn, _ wal: WriteAheadLog) {
    switch item {
    case .batch(let batch):
      liveness.heard(batch.fromNode, at: turn.now)
      if livenessPeers[batch.fromNode] == nil { livenessPeersStale = true }
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
      let deadline = clock.nowNanoseconds() + options.proposalTimeoutMs * 1_000_000
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
        replica.pending.readsAwaitingIndex[nextReadContext] = read
      } catch {
        let answer = proposalError(replica, error)
        answerRead(&turn) { read.completion(.failure(answer)) }
      }
    case .create(let id, let peers, let bootstrapVoters, let completion):
      state.withLock { controlQueued -= 1 }
      guard live[id] == nil else { return turn.answers.append { completion(.failure(.groupAlreadyExists(id))) } }
      guard live.count < options.groupsMax else {
        let refusal = ConsensusError.groupLimitReached(node: localPeer.node, limit: options.groupsMax, setting: "raft.groupsMax")
        return turn.answers.append { completion(.failure(refusal)) }
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
      live.insert(replica)
      addLivenessPeers(peers)
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
    case .delete(let id, let bound, let completion):
      state.withLock { controlQueued -= 1 }
      if let bound, let replica = live[id], !bound.bounds(lastIndex: replica.raft.lastIndex, lastTerm: replica.raft.lastTerm) {
        // Its log holds entries past the removal: it was added back, and keeps a member's data.
        return turn.answers.append { [localPeer] in completion(.failure(.peerAlreadyInGroup(localPeer.node, id))) }
      }
      guard let replica = live.remove(id) else {
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
      replica.pending.snapshotRequests.append(completion)
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
      replica.pending.transfers.append((node.rawValue, clock.nowNanoseconds() + timeout, completion))
    case .membership(let id, let request, let completion):
      state.withLock { controlQueued -= 1 }
      guard let replica = live[id] else { return turn.answers.append { completion(.failure(.groupNotFound(id))) } }
      beginMembershipChange(replica, request, completion, &turn)
    }
  }

  /// Step 2 of the Ready contract, for every group at once: records for one append and one sync.
  /// A snapshot received from a leader is written to its file first (its own fsyncs: rare), then
  /// marked in the log so that recovery voids the entries it replaced.
  func persist(_ readies: [(RaftGroup, Ready)], _ turn: inout Turn, _ wal: WriteAheadLog) throws {
    for (replica, ready) in readies {
      if let snapshot = ready.snapshot {
        try wal.writeSnapshot(
          WALSnapshot(
            group: replica.id.packed, index: snapshot.index, term: snapshot.term,
            data: RaftStorage.encodeSnapshot(config: snapshot.config, data: snapshot.data)))
        // The file is complete; until the marker below is in the log, recovery finishes the install.
        Failpoints.snapshotInstall.pass()
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
  func releaseHeldHeartbeatResponses(into outgoing: inout [ReplicaID: [GroupMessage]], all: Bool) {
    guard !heldHeartbeatResponses.isEmpty else { return }
    for destination in heldHeartbeatResponses.keys.sorted() where all || outgoing[destination] != nil {
      let held = heldHeartbeatResponses.removeValue(forKey: destination)!
      outgoing[destination, default: []].append(
        contentsOf: held.keys.sorted().map { GroupMessage(group: $0, message: held[$0]!) })
    }
  }


  /// Hands this turn's messages, forwards and snapshot chunks for each destination to the
  /// transport, packed into as few batches as keep each under `WireLimits.batchBytesTarget`
  /// (`MessageBatch.packed`): one batch per destination in the common case. Forwards in a batch
  /// the transport dropped are kept for the next turn. Heartbeats between the two nodes travel
  /// coalesced. Returns the batches, the messages (a coalesced heartbeat section counts as one)
  /// and the heartbeats coalesced into those sections.
  func send(
    _ outgoing: [ReplicaID: [GroupMessage]], forwards: [ReplicaID: [ForwardedProposal]],
    chunks: [ReplicaID: [SnapshotChunk]], _ turn: inout Turn
  ) -> SendCounts {
    var counts = SendCounts()
    for destination in Set(outgoing.keys).union(forwards.keys).union(chunks.keys).sorted() {
      let items = outgoing[destination] ?? []
      let destinationForwards = forwards[destination] ?? []
      let destinationChunks = chunks[destination] ?? []
      // The endpoint of a destination: any group that has it as a peer knows it.
      let groups = items.lazy.map(\.group) + destinationForwards.lazy.map(\.group) + destinationChunks.lazy.map(\.group)
      guard destination != 0,
        let peer = groups.lazy.compactMap({ GroupID(packed: $0).flatMap { self.live[$0] }?.peer(destination) }).first
          ?? livenessPeers[destination] ?? live.ordered.lazy.compactMap({ $0.peer(destination) }).first
      else {
        keepUnsent(destinationForwards[...], to: destination, &turn)
        continue
      }
      var packed = MessageBatch.packed(
        fromNode: localPeer.node.rawValue, toNode: destination, messages: items, forwards: destinationForwards,
        snapshotChunks: destinationChunks)
      // Nothing to say: an empty batch, the liveness ping.
      if packed.isEmpty { packed = [MessageBatch(fromNode: localPeer.node.rawValue, toNode: destination, messages: [])] }
      for batch in packed {
        let carried = batch.forwards[...]
        var undelivered: (@Sendable () -> Void)?
        if !carried.isEmpty { undelivered = { [weak self] in self?.undelivered(carried, to: destination) } }
        transport.send(batch: WireCodec.encode(batch), to: peer.node, endpoint: peer.endpoint, undelivered: undelivered)
        counts.batches += 1
        counts.messages += batch.messages.count + (batch.heartbeats.isEmpty ? 0 : 1)
        counts.heartbeats += batch.heartbeats.count
        turn.forwardCounts.sent += UInt64(carried.lazy.filter(\.isProposal).count)
        turn.snapshotChunksSent += batch.snapshotChunks.count
      }
    }
    return counts
  }

  /// What `send` handed to the transport: batches, messages (a coalesced heartbeat section counts
  /// as one) and the heartbeats coalesced into those sections.
  struct SendCounts {
    var batches = 0
    var messages = 0
    var heartbeats = 0
    static func + (left: SendCounts, right: SendCounts) -> SendCounts {
      SendCounts(
        batches: left.batches + right.batches, messages: left.messages + right.messages,
        heartbeats: left.heartbeats + right.heartbeats)
    }
  }

  /// Whether the core's `message` is a snapshot this host streams in chunks rather than sends
  /// inline: one larger than `snapshotInlineBytesMax`.
  func streams(_ message: Message) -> Bool {
    guard message.kind == .snapshot, let snapshot = message.snapshot else { return false }
    return snapshot.data.count > options.snapshotInlineBytesMax
  }

  /// One chunk of a snapshot a leader streams to this node: once every chunk is in, the whole
  /// `.snapshot` message is stepped into the group's core.
  func receive(_ chunk: SnapshotChunk, from node: ReplicaID, _ turn: inout Turn) {
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
  static func splitProposals(
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

  /// Publishes the turn's counters, releases its queue slots, and collects the stale reads it satisfied.
  func finishTurn(_ turn: inout Turn, wal: WriteAheadLog, sent: SendCounts) {
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
      metrics.quiescences += UInt64(turn.quiescences)
      metrics.wakesLeaderLost += UInt64(turn.wakesLeaderLost)
      if let quiesced = turn.groupsQuiesced {
        metrics.groupsQuiesced = UInt64(quiesced)
        metrics.peerNodes = UInt64(livenessPeers.count)
        metrics.peerNodesDead = UInt64(liveness.dead.count)
      }
      metrics.wal = statistics
      releaseQueueSlots(of: turn)
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

  /// Must hold `state`. Releases the limits' slots of the writes and reads the turn answered.
  func releaseQueueSlots(of turn: Turn) {
    writesOutstanding -= turn.writesAnswered
    writeBytesOutstanding -= turn.writeBytesAnswered
    readsOutstanding -= turn.readsAnswered
    precondition(writesOutstanding >= 0, "queue accounting: writes")
    precondition(writeBytesOutstanding >= 0, "queue accounting: write bytes")
    precondition(readsOutstanding >= 0, "queue accounting: reads")
  }

  // MARK: Out of space

  /// The data directory ran out of space (`WALError.isOutOfSpace`). What the turn appended may be
  /// in the file in part, and a leader's appends left before its fsync: so everything in flight
  /// (writes, group creations and deletions, membership changes) is answered
  /// `timeout(indeterminate: true)` — never a definite failure — and the rest waiting (reads,
  /// snapshot requests, transfers) `outOfSpace`. Then the log and every group's core are dropped
  /// (the published groups stay, for stale reads), and the loop refuses work until
  /// `reopenAfterOutOfSpace` recovers them from disk.
  func enterOutOfSpace(_ what: String, _ error: WALError, _ turn: inout Turn, _ wal: WriteAheadLog) {
    let refusal = ConsensusError.outOfSpace(directory: directory, retryAfterMs: UInt32(options.outOfSpaceRetryMs))
    logger.error(
      "the data directory is out of space; refusing writes until space returns",
      metadata: [
        "directory": "\(directory)", "error": "\(error)", "retryMs": "\(options.outOfSpaceRetryMs)",
        "action": "free space on that file system (delete files or grow it); no restart is needed",
      ])
    state.withLock {
      outOfSpace = "\(what): \(error)"
      metrics.outOfSpace.outOfSpace = true
      metrics.outOfSpace.failures += 1
    }
    for action in turn.onDurable { action(.failure(.timeout(indeterminate: true))) }
    turn.onDurable = []
    for replica in live.ordered {
      failAllWaiting(replica, refusal, &turn)
      replica.publishLeaderless()
    }
    precondition(forwardsWaiting == 0, "every forwarded write is answered: \(forwardsWaiting) were dropped")
    wal.abandon()
    forgetIncarnation()
    loop!.wal = nil
    loop!.moreReady = false
    loop!.nextStorageAttemptNanoseconds = clock.nowNanoseconds() + options.outOfSpaceRetryMs * 1_000_000
    state.withLock {
      releaseQueueSlots(of: turn)
      undeliveredForwards.removeAll()
      forwardLeadersOwingAnswers = []
    }
    for answer in turn.answers { answer() }
  }

  /// Drops every group's core and what the loop kept about them, as a process that exits does:
  /// a reopen starts from the disk alone. (`nextForwardRequestID` keeps counting up, so no
  /// request of the new incarnation takes an old one's id.)
  func forgetIncarnation() {
    live = LiveGroups()
    forwardWindow = ForwardWindow(perNodeMax: forwardWindow.perNodeMax)
    forwardsUnansweredBy = [:]
    ticksWithUnsyncedRecords = 0
    groupsWithUnsentForwards = []
    forwardAnswersUnsent = [:]
    heldHeartbeatResponses = [:]
    segmentsAfterForcedSnapshots = 0
    forcedSnapshotQueue = nil
    snapshotStreams = SnapshotStreams(chunkBytes: options.snapshotChunkBytes)
  }

  /// A turn while the data directory is out of space: every request is refused with
  /// `outOfSpace` (none was proposed: a definite failure), inbound batches are dropped (their
  /// senders retry), and every `outOfSpaceRetryMs` the storage is tried again.
  func runTurnWithoutStorage(_ work: Work) -> Bool {
    var turn = Turn(now: clock.nowNanoseconds())
    let refusal =
      state.withLock { storageRefusal }
      ?? .outOfSpace(directory: directory, retryAfterMs: UInt32(options.outOfSpaceRetryMs))
    for item in work.items { refuse(item, refusal, &turn) }
    if turn.now >= loop!.nextTickNanoseconds { loop!.nextTickNanoseconds = turn.now + tickNanoseconds }
    var running = true
    if turn.now >= loop!.nextStorageAttemptNanoseconds {
      running = reopenAfterOutOfSpace()
    }
    state.withLock { releaseQueueSlots(of: turn) }
    for answer in turn.answers { answer() }
    return running
  }

  /// Answers an inbox item the loop cannot serve without storage.
  func refuse(_ item: InboxItem, _ refusal: ConsensusError, _ turn: inout Turn) {
    switch item {
    case .propose(_, let command, _, let completion):
      answerWrite(&turn, bytes: command.count) { completion(.failure(refusal)) }
    case .read(_, let read):
      answerRead(&turn) { read.completion(.failure(refusal)) }
    case .create(_, _, _, let completion), .delete(_, _, let completion), .transfer(_, _, let completion),
      .membership(_, _, let completion):
      state.withLock { controlQueued -= 1 }
      turn.answers.append { completion(.failure(refusal)) }
    case .snapshot(_, let completion):
      state.withLock { controlQueued -= 1 }
      turn.answers.append { completion(.failure(refusal)) }
    case .batch, .undelivered:
      // Batches: Raft's senders retry. Undelivered forwards: their writes were answered when the
      // storage ran out of space.
      break
    }
  }

  /// One attempt to leave the out-of-space state: a probe for room, then the log and every
  /// group recovered from disk as a start does, what recovery kept made durable, and the new
  /// groups published in place of the old ones. False when storage failed otherwise (the loop
  /// stops, as on any other storage failure).
  func reopenAfterOutOfSpace() -> Bool {
    do {
      try SpaceProbe.check(directory: directory + "/wal", bytes: options.outOfSpaceProbeBytes, fileStore: fileStore)
      let (wal, restored, entries) = try recoverStorage()
      install(wal, restored)
      state.withLock {
        outOfSpace = nil
        metrics.outOfSpace.outOfSpace = false
        metrics.outOfSpace.recoveries += 1
      }
      logger.notice(
        "space returned to the data directory; storage reopened and writes are taken again",
        metadata: [
          "directory": "\(directory)", "groups": "\(restored.keys.sorted().map(\.description))",
          "entries": "\(entries)",
        ])
      return true
    } catch let error as WALError where error.isOutOfSpace {
      logger.debug("the data directory is still out of space", metadata: ["directory": "\(directory)", "error": "\(error)"])
      loop!.nextStorageAttemptNanoseconds = clock.nowNanoseconds() + options.outOfSpaceRetryMs * 1_000_000
      return true
    } catch {
      var failed = Turn(now: clock.nowNanoseconds())
      failStorage("reopening the storage after the data directory ran out of space failed: \(error)", &failed)
      return false
    }
  }

  /// The WAL failed: nothing of this turn is known durable. Refuse all further work (the node
  /// reports not ready) rather than risk acknowledging writes that are not durable.
  func failStorage(_ reason: String, _ turn: inout Turn) {
    logger.critical("storage failure; refusing work until restart", metadata: ["reason": "\(reason)"])
    state.withLock { if failure == nil { failure = reason } }
    for action in turn.onDurable { action(.failure(.storage(reason))) }
    for answer in turn.answers { answer() }
  }

  func shutDown(_ wal: WriteAheadLog?) {
    var turn = Turn(now: clock.nowNanoseconds())
    for replica in live.ordered { failAllWaiting(replica, .shuttingDown, &turn) }
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
      case .create(_, _, _, let completion), .delete(_, _, let completion), .transfer(_, _, let completion),
        .membership(_, _, let completion):
        completion(.failure(.shuttingDown))
      case .snapshot(_, let completion): completion(.failure(.shuttingDown))
      case .batch, .undelivered: break
      }
    }
    for waiter in waiters { waiter.completion(.failure(.shuttingDown)) }
    do {
      try wal?.sync()
      try wal?.close()
    } catch {
      logger.error("closing the log failed", metadata: ["error": "\(error)"])
    }
    logger.info("raft engine stopped")
  }
}
