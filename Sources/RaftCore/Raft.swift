// One Raft group's replica as a pure state machine (Raft paper; Ongaro's thesis for PreVote,
// CheckQuorum, ReadIndex, leader transfer and joint consensus). No I/O, no clock, no randomness of
// its own: time is `tick()`, input is `step(_:)`/`propose(_:)`, output is `ready()`.

public struct Raft: Sendable {
  public let config: RaftConfig
  public var id: ReplicaID { config.id }
  public private(set) var term: Term = 0
  public private(set) var vote: ReplicaID = 0
  public private(set) var role: Role = .follower
  public private(set) var leader: ReplicaID = 0
  /// The membership in force: the latest applied configuration change (or snapshot/bootstrap).
  public private(set) var membership: ConfigState

  var log: RaftLog
  var progress: [ReplicaID: ReplicaProgress] = [:]
  var votes: [ReplicaID: Bool] = [:]
  var outbox: [Message] = []
  /// Entry bytes of each `outbox` message, kept beside it so merging appends stays linear.
  var outboxEntriesBytes: [Int] = []
  var readStates: [ReadState] = []
  var electionElapsed = 0
  var heartbeatElapsed = 0
  var randomizedElectionTimeout = 0
  var random: any RandomNumberGenerator & Sendable
  /// Leader: target of an ongoing leadership transfer, or 0.
  public private(set) var leadTransferee: ReplicaID = 0
  /// Leader: index of the latest configuration change proposed; no other until it is applied.
  var pendingConfigIndex: LogIndex = 0
  /// The latest configuration-change entry already reflected in `membership`.
  var configAppliedIndex: LogIndex = 0
  /// Leader: payload bytes appended in this term and not yet committed.
  var uncommittedBytes = 0
  /// Leader: ReadIndex rounds awaiting a heartbeat quorum, oldest first.
  var pendingReads: [PendingRead] = []
  /// Leader: reads that arrived before the leader committed an entry of its term.
  var readsAwaitingTermCommit: [UInt64] = []
  var readRound: UInt64 = 0
  var lastReadyHardState: HardState
  /// The role and leader the host last saw in a Ready. A change of either alone (a CheckQuorum
  /// step-down, a leader learned from a heartbeat) makes a Ready, so the host answers the reads
  /// and writes waiting on the old role at once, not at some later Ready (etcd's SoftState).
  /// Follower: a TimeoutNow from this leader that arrived while a committed configuration change
  /// was unapplied, with the ticks since. The election starts once the change is applied (in
  /// `advance`), unless the term or leader changes or half an election timeout passes first
  /// (the leader abandons the transfer after a whole one). 0: none.
  var timeoutNowDeferredFrom: ReplicaID = 0
  var timeoutNowDeferredTicks = 0
  var lastReadyRole: Role = .follower
  var lastReadyLeader: ReplicaID = 0
  var awaitingAdvance = false
  /// Quiescence (CockroachDB's quiescent ranges, TiKV's hibernate regions): an idle group's
  /// replicas stop ticking, so it sends no heartbeats and costs nothing. The leader quiesces
  /// (`quiesce`) when nothing is in flight and tells every replica (a `quiesce` message);
  /// a follower whose log holds the leader's last entry quiesces too. While quiesced the host
  /// does not tick the replica, and the lease it holds is its leader's node being live (node
  /// liveness, the host's); the host wakes it (`wake`) when that node dies. Any message that
  /// needs an answer beyond what a quiesced replica gives, any proposal, read or transfer wakes it.
  public private(set) var isQuiesced = false
  /// Leader: ticks since the last proposal, read or transfer (`RaftConfig.quiesceAfterTicks`).
  var ticksSinceActivity = 0

  struct PendingRead {
    var round: UInt64
    var context: UInt64
    var index: LogIndex
    var acks: Set<ReplicaID>
  }

  public init(
    config: RaftConfig, random: some RandomNumberGenerator & Sendable, restored: RestoredState
  ) throws(RaftConfigError) {
    try config.validate()
    self.config = config
    self.random = random
    log = RaftLog(snapshot: restored.snapshot, entries: restored.entries, commit: restored.hardState.commit)
    membership = restored.snapshot?.config ?? restored.bootstrapConfig
    configAppliedIndex = log.snapshotIndex
    term = max(restored.hardState.term, log.lastTerm)
    vote = restored.hardState.term == term ? restored.hardState.vote : 0
    lastReadyHardState = restored.hardState
    // Committed configuration changes take effect now: they will be applied, and campaigning
    // with an older membership could elect a leader without a real quorum.
    var index = log.firstIndex
    while index <= log.committed, let entry = log.entry(at: index) {
      if entry.kind == .configChange { applyConfigChange(entry) }
      index += 1
    }
    becomeFollower(term: term, leader: 0)
  }

  // MARK: - Inspection

  public var committed: LogIndex { log.committed }
  public var applied: LogIndex { log.applied }
  public var firstIndex: LogIndex { log.firstIndex }
  public var lastIndex: LogIndex { log.lastIndex }
  /// Bytes of the entries the log holds (after the snapshot), headers included.
  public var logBytes: Int { log.entriesBytes }
  public var lastTerm: Term { log.lastTerm }
  public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
  public func term(at index: LogIndex) -> Term? { log.term(at: index) }
  public func entry(at index: LogIndex) -> Entry? { log.entry(at: index) }
  public var latestSnapshot: Snapshot? { log.snapshot }
  /// Whether this replica may campaign (etcd's promotable): only a voter of the membership in
  /// force, and not while a snapshot from the leader waits to be installed (its membership is
  /// about to replace ours). Learners, replicas removed from the group and replicas that joined
  /// but have not yet applied their own addition never campaign: a non-member counts the votes
  /// of a membership it is not part of, and with an empty or stale membership could elect
  /// itself. A removed replica still votes, so a group whose old leader removed itself can
  /// elect one of the remaining voters.
  var isPromotable: Bool {
    membership.isVoter(id) && log.pendingSnapshot == nil
  }

  public var status: RaftStatus {
    var result: [ReplicaID: (match: LogIndex, next: LogIndex, state: ProgressState)] = [:]
    if role == .leader {
      for (replica, entry) in progress { result[replica] = (entry.match, entry.next, entry.state) }
    }
    return RaftStatus(
      id: id, role: role, term: term, vote: vote, leader: leader, committed: log.committed,
      applied: log.applied, firstIndex: log.firstIndex, lastIndex: log.lastIndex, config: membership,
      leadTransferee: leadTransferee, progress: result)
  }

  // MARK: - Role transitions

  mutating func becomeFollower(term newTerm: Term, leader newLeader: ReplicaID) {
    precondition(newTerm >= term, "term must not go backwards: \(newTerm) < \(term)")
    reset(term: newTerm)
    role = .follower
    leader = newLeader
  }

  mutating func becomePreCandidate() {
    precondition(role != .leader, "leader → pre-candidate is not a legal transition")
    // A pre-election changes neither term nor vote (thesis §9.6).
    role = .preCandidate
    votes = [:]
    leader = 0
  }

  mutating func becomeCandidate() {
    precondition(role != .leader, "leader → candidate is not a legal transition")
    reset(term: term + 1)
    vote = id
    role = .candidate
  }

  mutating func becomeLeader() {
    precondition(role == .candidate, "only a candidate becomes leader, not a \(role)")
    reset(term: term)
    role = .leader
    leader = id
    // We know our own log; every other replica is probed from our last index (Raft paper §5.3).
    progress[id]?.becomeReplicate()
    // No configuration change before the no-op commits (thesis §4.1 fix): pending up to here.
    pendingConfigIndex = log.lastIndex + 1
    // A no-op of the new term, so earlier entries commit through it (Raft paper §5.4.2, §8).
    appendEntries([Entry(term: term, index: 0)])
  }

  private mutating func reset(term newTerm: Term) {
    if term != newTerm {
      term = newTerm
      vote = 0
    }
    leader = 0
    electionElapsed = 0
    heartbeatElapsed = 0
    // A new role or term ends a quiescence (a `quiesce` of a newer leader starts another).
    isQuiesced = false
    ticksSinceActivity = 0
    resetRandomizedElectionTimeout()
    votes = [:]
    leadTransferee = 0
    timeoutNowDeferredFrom = 0
    uncommittedBytes = 0
    pendingReads = []
    readsAwaitingTermCommit = []
    resetProgress()
  }

  private mutating func resetProgress() {
    var fresh: [ReplicaID: ReplicaProgress] = [:]
    for replica in membership.allReplicas {
      var entry = progress[replica]
        ?? ReplicaProgress(
          next: log.lastIndex + 1, maxInflightMessages: config.maxInflightMessages,
          maxInflightBytes: config.maxInflightBytes, isLearner: false)
      entry.next = log.lastIndex + 1
      entry.match = replica == id ? log.stableIndex : 0
      entry.state = .probe
      entry.probeSent = false
      entry.pendingSnapshot = 0
      entry.recentActive = replica == id
      entry.inflights.reset()
      entry.isLearner = !membership.isVoter(replica)
      fresh[replica] = entry
    }
    progress = fresh
  }

  private mutating func resetRandomizedElectionTimeout() {
    randomizedElectionTimeout = config.electionTicks + Int(random.next() % UInt64(config.electionTicks))
  }

  // MARK: - Time

  /// Advances logical time by one tick.
  public mutating func tick() {
    precondition(!awaitingAdvance, "tick between ready() and advance()")
    precondition(!isQuiesced, "a quiesced replica is not ticked: wake it first")
    if role == .leader {
      tickLeader()
    } else {
      tickElection()
    }
  }

  private mutating func tickElection() {
    electionElapsed += 1
    if timeoutNowDeferredFrom != 0 {
      timeoutNowDeferredTicks += 1
      // Well inside the leader's own deadline (it abandons a transfer after an election timeout).
      if timeoutNowDeferredTicks >= max(1, config.electionTicks / 2) { timeoutNowDeferredFrom = 0 }
    }
    if isPromotable && electionElapsed >= randomizedElectionTimeout {
      electionElapsed = 0
      campaignIfAllowed()
    }
  }

  private mutating func tickLeader() {
    heartbeatElapsed += 1
    electionElapsed += 1
    ticksSinceActivity += 1
    if electionElapsed >= config.electionTicks {
      electionElapsed = 0
      if config.checkQuorum {
        // Thesis §6.2: without a quorum heard from in an election timeout, step down.
        let quorum = Quorum(membership)
        let active = quorum.isActive { replica in replica == id || progress[replica]?.recentActive == true }
        for replica in Array(progress.keys) where replica != id { progress[replica]!.recentActive = false }
        if !active {
          becomeFollower(term: term, leader: 0)
          return
        }
      }
      // A transfer that did not finish within an election timeout is abandoned (thesis §3.10).
      leadTransferee = 0
    }
    if !membership.isVoter(id) && leadTransferee == 0 { handOverLeadership() }
    if membership.isJoint && pendingConfigIndex <= log.applied {
      // The automatic leave-joint could not be proposed when the joint config applied; retry.
      if let index = try? proposeEntry(
        Entry(term: 0, index: 0, kind: .configChange, data: WireCodec.encode(ConfigChange.leaveJoint)))
      {
        pendingConfigIndex = index
      }
    }
    if heartbeatElapsed >= config.heartbeatTicks {
      heartbeatElapsed = 0
      broadcastHeartbeat(context: 0)
    }
  }

  // MARK: - Elections

  /// Starts an election now, as if the election timeout had fired.
  public mutating func campaign() {
    precondition(!awaitingAdvance, "campaign between ready() and advance()")
    if isQuiesced { unquiesce() }
    campaignIfAllowed()
  }

  private mutating func campaignIfAllowed() {
    guard role != .leader, isPromotable else { return }
    // Committed but unapplied configuration changes: the membership is about to change.
    if hasUnappliedConfigChange { return }
    startElection(preVote: config.preVote, transfer: false)
  }

  private var hasUnappliedConfigChange: Bool {
    var index = max(log.applied, configAppliedIndex) + 1
    while index <= log.committed {
      if log.entry(at: index)?.kind == .configChange { return true }
      index += 1
    }
    return false
  }

  private mutating func startElection(preVote: Bool, transfer: Bool) {
    let kind: MessageKind
    let electionTerm: Term
    if preVote {
      becomePreCandidate()
      kind = .preVote
      electionTerm = term + 1
    } else {
      becomeCandidate()
      kind = .vote
      electionTerm = term
    }
    votes[id] = true
    if tallyVotes() == .won {
      // A one-voter group.
      if preVote { startElection(preVote: false, transfer: transfer) } else { becomeLeader() }
      return
    }
    for replica in membership.allReplicas where replica != id && membership.isVoter(replica) {
      send(
        Message(
          kind: kind, from: id, to: replica, term: electionTerm, logTerm: log.lastTerm,
          index: log.lastIndex, context: transfer ? 1 : 0))
    }
  }

  private func tallyVotes() -> Quorum.VoteResult { Quorum(membership).voteResult(votes) }

  // MARK: - Input

  /// Steps one message received from another replica of this group.
  public mutating func step(_ message: Message) {
    precondition(!awaitingAdvance, "step between ready() and advance()")
    guard message.to == id, message.from != id, message.from != 0 else { return }
    if isQuiesced && !keepsQuiescence(message) {
      unquiesce()
      // Our leader campaigns: it restarted and leads no more. Quiesced, we had no election
      // timeout of its silence to let pass, so its lease ends here.
      if (message.kind == .vote || message.kind == .preVote) && message.from == leader && role == .follower {
        forgetLeader()
      }
    }
    if message.term > term {
      if message.kind == .vote || message.kind == .preVote {
        // Thesis §4.2.3: within an election timeout of hearing from a leader, ignore votes (unless
        // the leader itself asked for this election by leader transfer), so a removed or
        // partitioned replica cannot depose a working leader by bumping terms. A quiesced
        // replica's lease is its leader's node being live (the host wakes it otherwise).
        let inLease = leader != 0 && (isQuiesced || electionElapsed < config.electionTicks)
        if inLease && message.context != 1 { return }
      }
      switch message.kind {
      case .preVote:
        break  // A pre-vote never changes our term.
      case .preVoteResponse where !message.reject:
        break  // Granted pre-votes carry the future term.
      default:
        let fromLeader = [MessageKind.append, .heartbeat, .snapshot, .quiesce].contains(message.kind)
        becomeFollower(term: message.term, leader: fromLeader ? message.from : 0)
      }
    } else if message.term < term {
      if message.kind == .append || message.kind == .heartbeat || message.kind == .quiesce {
        // Tell a stale leader about the newer term (Raft paper Figure 2: reply with currentTerm),
        // so it steps down even when the votes of this term were ignored by a lease.
        send(Message(kind: .appendResponse, from: id, to: message.from, term: term))
      } else if message.kind == .preVote {
        send(Message(kind: .preVoteResponse, from: id, to: message.from, term: term, reject: true))
      }
      return
    }

    if (message.kind == .voteResponse || message.kind == .preVoteResponse) && message.reject && message.commit > 0 {
      maybeLearnCommit(index: message.commit, term: message.logTerm)
    }
    switch message.kind {
    case .vote, .preVote:
      handleVote(message)
    default:
      switch role {
      case .leader: stepLeader(message)
      case .candidate, .preCandidate: stepCandidate(message)
      case .follower: stepFollower(message)
      }
    }
  }

  private mutating func handleVote(_ message: Message) {
    let canVote =
      vote == message.from || (vote == 0 && leader == 0)
      || (message.kind == .preVote && message.term > term)
    let logOK =
      config.plantedBug == .voteWithoutLogCheck
      || log.isUpToDate(lastIndex: message.index, lastTerm: message.logTerm)
    let responseKind: MessageKind = message.kind == .vote ? .voteResponse : .preVoteResponse
    if canVote && logOK {
      // Raft paper §5.2, §5.4.1: grant; a pre-vote answers with the term it was asked about.
      send(Message(kind: responseKind, from: id, to: message.from, term: message.term))
      if message.kind == .vote {
        electionElapsed = 0
        vote = message.from
      }
    } else {
      // A refusal shares what this replica knows committed, up to the candidate's last index:
      // see `maybeLearnCommit`.
      let shared = min(log.committed, message.index)
      send(
        Message(
          kind: responseKind, from: id, to: message.from, term: term, logTerm: log.term(at: shared) ?? 0,
          index: 0, commit: log.term(at: shared) == nil ? 0 : shared, reject: true))
    }
  }

  /// A refused vote told us that the entry at `index` with `term` is committed. Commitment is a
  /// fact about the group, not about who reports it: if our log holds that very entry, Log
  /// Matching makes our prefix through it the committed one, so we may commit it too. This is
  /// what lets a group whose only up-to-date replica may no longer campaign make progress: a
  /// replica removed by a change it applied (it holds entries the remaining voters lack, and
  /// refuses their votes), while they have not learned the change committed and still count
  /// its vote. Once they commit and apply the change, they elect among themselves (the same
  /// deadlock is known in other Raft libraries: a removed leader with the newest log).
  private mutating func maybeLearnCommit(index: LogIndex, term: Term) {
    guard role != .leader, index > log.committed, index <= log.lastIndex, log.matchTerm(index, term) else { return }
    log.commit(to: index)
  }

  private mutating func stepFollower(_ message: Message) {
    switch message.kind {
    case .append:
      electionElapsed = 0
      leader = message.from
      handleAppend(message)
    case .heartbeat:
      electionElapsed = 0
      leader = message.from
      handleHeartbeat(message)
    case .quiesce:
      electionElapsed = 0
      leader = message.from
      handleQuiesce(message)
    case .snapshot:
      electionElapsed = 0
      leader = message.from
      handleSnapshot(message)
    case .timeoutNow:
      // Thesis §3.10: the leader asks us to start an election at once, skipping PreVote. Not
      // with a committed configuration change still unapplied, exactly as for a campaign of our
      // own (etcd's hup): the membership we would count votes in is about to change.
      // The host steps a whole batch before it applies anything, so the commit of a change and
      // the leader's TimeoutNow often arrive together: defer the election until it is applied.
      guard isPromotable else { return }
      // Only this term's leader sends TimeoutNow: a replica that just restarted learns it here.
      leader = message.from
      if hasUnappliedConfigChange {
        timeoutNowDeferredFrom = message.from
        timeoutNowDeferredTicks = 0
        return
      }
      startElection(preVote: false, transfer: true)
    default:
      break
    }
  }

  private mutating func stepCandidate(_ message: Message) {
    switch message.kind {
    case .append, .heartbeat, .snapshot, .quiesce:
      // A leader of our term exists (Raft paper §5.2).
      becomeFollower(term: message.term, leader: message.from)
      stepFollower(message)
    case .voteResponse where role == .candidate, .preVoteResponse where role == .preCandidate:
      votes[message.from] = !message.reject
      switch tallyVotes() {
      case .won:
        if role == .preCandidate {
          startElection(preVote: false, transfer: message.context == 1)
        } else {
          becomeLeader()
        }
      case .lost:
        becomeFollower(term: term, leader: 0)
      case .pending:
        break
      }
    default:
      break
    }
  }

  private mutating func stepLeader(_ message: Message) {
    guard progress[message.from] != nil else { return }
    progress[message.from]!.recentActive = true
    switch message.kind {
    case .appendResponse:
      handleAppendResponse(message)
    case .heartbeatResponse:
      progress[message.from]!.probeSent = false
      if progress[message.from]!.state == .replicate && progress[message.from]!.inflights.isFull {
        // Appends that filled the window may all have been lost. After a few heartbeat rounds
        // without an acknowledgement (sooner would race appends still in flight), probe with an
        // empty append at `next - 1`: an acknowledgement frees the window, a rejection finds the gap.
        progress[message.from]!.stalledHeartbeats += 1
        if progress[message.from]!.stalledHeartbeats >= config.stalledHeartbeatsBeforeProbe {
          progress[message.from]!.stalledHeartbeats = 0
          sendEmptyAppend(to: message.from)
        }
      } else if progress[message.from]!.match < log.lastIndex {
        sendAppend(to: message.from)
      }
      if message.context != 0 { acknowledgeRead(round: message.context, from: message.from) }
    default:
      break
    }
  }

  // MARK: - Replication, follower side

  private mutating func handleAppend(_ incoming: Message) {
    var message = incoming
    if message.index < log.committed {
      // Our entries through the commit index are the leader's too (Leader Completeness): take
      // only what follows it. A folded append may start below it and still bring new entries.
      let known = Int(log.committed - message.index)
      guard message.entries.count > known, let committedTerm = log.term(at: log.committed) else {
        send(Message(kind: .appendResponse, from: id, to: message.from, term: term, index: log.committed))
        return
      }
      message.entries.removeFirst(known)
      message.index = log.committed
      message.logTerm = committedTerm
    }
    if let lastNew = log.maybeAppend(
      index: message.index, logTerm: message.logTerm, commit: message.commit, incoming: message.entries)
    {
      send(Message(kind: .appendResponse, from: id, to: message.from, term: term, index: lastNew))
      return
    }
    // Reject, with a hint for fast back-off (thesis §3.5): the last index whose term is at most
    // the leader's term at `message.index`.
    let hint = log.findConflictByTerm(min(message.index, log.lastIndex), message.logTerm)
    send(
      Message(
        kind: .appendResponse, from: id, to: message.from, term: term, logTerm: log.term(at: hint) ?? 0,
        index: message.index, reject: true, rejectHint: hint))
  }

  private mutating func handleHeartbeat(_ message: Message) {
    // The leader sends min(match, commit), so this never commits an entry we do not share.
    log.commit(to: min(message.commit, log.lastIndex))
    send(Message(kind: .heartbeatResponse, from: id, to: message.from, term: term, context: message.context))
  }

  /// The leader quiesces: with its last entry in our log (Log Matching: our log through it is
  /// the leader's), we take its commit index and stop ticking. Otherwise we are not caught up
  /// (the leader thought we were): a rejection wakes it and makes it probe, as an append would.
  private mutating func handleQuiesce(_ message: Message) {
    guard log.matchTerm(message.index, message.logTerm), log.pendingSnapshot == nil else {
      if isQuiesced { unquiesce() }
      let hint = log.findConflictByTerm(min(message.index, log.lastIndex), message.logTerm)
      send(
        Message(
          kind: .appendResponse, from: id, to: message.from, term: term, logTerm: log.term(at: hint) ?? 0,
          index: message.index, reject: true, rejectHint: hint))
      return
    }
    // A leader quiesces with its commit index within its log; a message that says otherwise is
    // corrupt (hostile input is dropped, never trusted or crashed on).
    guard message.commit <= message.index else { return }
    log.commit(to: max(log.committed, message.commit))
    timeoutNowDeferredFrom = 0
    isQuiesced = true
  }

  private mutating func handleSnapshot(_ message: Message) {
    guard let snapshot = message.snapshot else { return }
    if restore(snapshot) {
      send(Message(kind: .appendResponse, from: id, to: message.from, term: term, index: log.lastIndex))
    } else {
      send(Message(kind: .appendResponse, from: id, to: message.from, term: term, index: log.committed))
    }
  }

  /// Raft paper §7: install a leader's snapshot unless our log already covers it.
  private mutating func restore(_ snapshot: Snapshot) -> Bool {
    if snapshot.index <= log.committed { return false }
    if log.pendingSnapshot != nil { return false }
    if log.matchTerm(snapshot.index, snapshot.term) {
      // We have the snapshot's last entry: it is committed, fast-forward instead.
      log.commit(to: snapshot.index)
      return false
    }
    log.restore(snapshot)
    membership = snapshot.config
    configAppliedIndex = snapshot.index
    resetProgress()
    return true
  }

  // MARK: - Replication, leader side

  private mutating func appendEntries(_ newEntries: [Entry]) {
    var entries = newEntries
    var index = log.lastIndex
    for position in entries.indices {
      index += 1
      entries[position].term = term
      entries[position].index = index
      uncommittedBytes += entries[position].data.count
    }
    log.append(entries)
    // Our own match advances only once the host confirms the entries durable (advance).
    broadcastAppend()
  }

  private mutating func broadcastAppend() {
    for replica in membership.allReplicas where replica != id { sendAppend(to: replica) }
  }

  private mutating func broadcastHeartbeat(context: UInt64) {
    for replica in membership.allReplicas where replica != id {
      let match = progress[replica]?.match ?? 0
      send(
        Message(
          kind: .heartbeat, from: id, to: replica, term: term, commit: min(match, log.committed),
          context: context))
    }
  }

  /// Sends the next append (or snapshot) to `replica` unless its flow is paused. Says whether
  /// anything was sent.
  @discardableResult
  private mutating func sendAppend(to replica: ReplicaID, allowEmpty: Bool = true) -> Bool {
    guard var entry = progress[replica], !entry.isPaused else { return false }
    defer { progress[replica] = entry }
    let previous = entry.next - 1
    guard let previousTerm = log.term(at: previous),
      let batch = log.entries(from: entry.next, maxBytes: config.maxEntriesBytesPerMessage)
    else {
      // The follower needs compacted entries: send the snapshot (Raft paper §7).
      guard let snapshot = log.snapshot else { return false }
      entry.becomeSnapshot(snapshot.index)
      send(Message(kind: .snapshot, from: id, to: replica, term: term, snapshot: snapshot))
      return true
    }
    if batch.isEmpty && !allowEmpty { return false }
    send(
      Message(
        kind: .append, from: id, to: replica, term: term, logTerm: previousTerm, index: previous,
        entries: batch, commit: log.committed))
    if let last = batch.last {
      switch entry.state {
      case .replicate:
        entry.next = last.index + 1
        entry.inflights.add(lastIndex: last.index, bytes: batch.reduce(0) { $0 + $1.sizeBytes })
      case .probe:
        entry.probeSent = true
      case .snapshot:
        preconditionFailure("sending an append to a replica in snapshot state")
      }
    } else if entry.state == .probe {
      entry.probeSent = true
    }
    return true
  }

  private mutating func sendEmptyAppend(to replica: ReplicaID) {
    guard let entry = progress[replica] else { return }
    guard let previousTerm = log.term(at: entry.next - 1) else {
      // Compacted meanwhile: fall back to probing, which sends the snapshot.
      progress[replica]!.becomeProbe()
      sendAppend(to: replica)
      return
    }
    send(
      Message(
        kind: .append, from: id, to: replica, term: term, logTerm: previousTerm, index: entry.next - 1,
        commit: log.committed))
  }

  private mutating func handleAppendResponse(_ message: Message) {
    let from = message.from
    if message.reject {
      var nextProbe = message.rejectHint
      if message.logTerm > 0 {
        // Skip every entry of ours whose term is above the follower's term at the hint.
        nextProbe = log.findConflictByTerm(message.rejectHint, message.logTerm)
      }
      if progress[from]!.maybeDecrease(rejected: message.index, matchHint: nextProbe) {
        if progress[from]!.state == .replicate { progress[from]!.becomeProbe() }
        sendAppend(to: from)
      }
      return
    }
    // A follower of this term cannot hold entries beyond ours: such an acknowledgement is
    // corrupt, and accepting it would make match exceed the log.
    guard message.index <= log.lastIndex else { return }
    let wasPaused = progress[from]!.isPaused
    guard progress[from]!.maybeUpdate(message.index) else {
      if wasPaused && !progress[from]!.isPaused { sendAppend(to: from, allowEmpty: false) }
      return
    }
    switch progress[from]!.state {
    case .probe:
      progress[from]!.becomeReplicate()
    case .snapshot where progress[from]!.match + 1 >= log.firstIndex:
      progress[from]!.becomeProbe()
      progress[from]!.becomeReplicate()
    case .replicate:
      progress[from]!.inflights.free(through: message.index)
    default:
      break
    }
    if maybeCommit() {
      broadcastAppend()
    } else {
      while sendAppend(to: from, allowEmpty: false) {}
    }
    if from == leadTransferee && progress[from]!.match == log.lastIndex {
      send(Message(kind: .timeoutNow, from: id, to: from, term: term))
    }
  }

  /// Raft paper §5.3–§5.4.2: advance the commit index to what a quorum has, but only through an
  /// entry of the current term (Figure 8). Says whether it advanced.
  private mutating func maybeCommit() -> Bool {
    let quorumIndex = Quorum(membership).committedIndex { replica in progress[replica]?.match ?? 0 }
    guard quorumIndex > log.committed, quorumIndex <= log.lastIndex else { return false }
    if config.plantedBug != .commitPreviousTerm {
      guard log.term(at: quorumIndex) == term else { return false }
    }
    var released = 0
    var index = log.committed + 1
    while index <= quorumIndex {
      released += log.entry(at: index)?.data.count ?? 0
      index += 1
    }
    uncommittedBytes = max(0, uncommittedBytes - released)
    log.commit(to: quorumIndex)
    if log.term(at: log.committed) == term && !readsAwaitingTermCommit.isEmpty {
      let waiting = readsAwaitingTermCommit
      readsAwaitingTermCommit = []
      for context in waiting { startRead(context: context) }
    }
    return true
  }

  // MARK: - Proposals

  /// Appends a command to the leader's log. Returns the index it will have if it commits.
  @discardableResult
  public mutating func propose(_ command: [UInt8]) throws(ProposalError) -> LogIndex {
    try proposeEntry(Entry(term: 0, index: 0, kind: .normal, data: command))
  }

  /// Proposes a membership change (thesis §4): one voter at a time directly, more through a
  /// joint configuration that the leader leaves on its own once it is applied.
  @discardableResult
  public mutating func proposeConfigChange(_ change: ConfigChange) throws(ProposalError) -> LogIndex {
    guard role == .leader else { throw .notLeader(leader: leader) }
    if pendingConfigIndex > log.applied { throw .configChangePending(index: pendingConfigIndex) }
    guard change.context.count <= ConfigChange.contextBytesMax else {
      throw .configChangeInvalid("a context of \(change.context.count) bytes exceeds \(ConfigChange.contextBytesMax)")
    }
    do {
      _ = try membership.applying(change)
    } catch {
      switch error { case .invalid(let reason): throw .configChangeInvalid(reason) }
    }
    let index = try proposeEntry(Entry(term: 0, index: 0, kind: .configChange, data: WireCodec.encode(change)))
    pendingConfigIndex = index
    return index
  }

  private mutating func proposeEntry(_ entry: Entry) throws(ProposalError) -> LogIndex {
    precondition(!awaitingAdvance, "propose between ready() and advance()")
    guard role == .leader else { throw .notLeader(leader: leader) }
    if isQuiesced { unquiesce() }
    ticksSinceActivity = 0
    if leadTransferee != 0 { throw .transferInProgress(to: leadTransferee) }
    guard entry.data.count <= config.maxCommandBytes else {
      throw .commandTooLarge(bytes: entry.data.count, limit: config.maxCommandBytes)
    }
    if uncommittedBytes > 0 && uncommittedBytes + entry.data.count > config.maxUncommittedEntriesBytes {
      throw .uncommittedBytesExceeded(limit: config.maxUncommittedEntriesBytes)
    }
    appendEntries([entry])
    return log.lastIndex
  }

  // MARK: - ReadIndex (thesis §6.4)

  /// Asks for a linearizable read point. When confirmed, a `ReadState` with `context` appears in
  /// a later Ready. If leadership is lost first, the read is dropped silently: retry it.
  public mutating func readIndex(context: UInt64) throws(ProposalError) {
    precondition(!awaitingAdvance, "readIndex between ready() and advance()")
    guard role == .leader else { throw .notLeader(leader: leader) }
    if isQuiesced { unquiesce() }
    ticksSinceActivity = 0
    guard pendingReads.count + readsAwaitingTermCommit.count < config.maxPendingReads else {
      throw .tooManyPendingReads(limit: config.maxPendingReads)
    }
    // Until an entry of this term commits, the leader's commit index may lag (thesis §6.4 step 1).
    if log.term(at: log.committed) != term {
      readsAwaitingTermCommit.append(context)
      return
    }
    startRead(context: context)
  }

  private mutating func startRead(context: UInt64) {
    let quorum = Quorum(membership)
    if quorum.isActive({ $0 == id }) {
      readStates.append(ReadState(index: log.committed, context: context))
      return
    }
    readRound += 1
    pendingReads.append(PendingRead(round: readRound, context: context, index: log.committed, acks: [id]))
    broadcastHeartbeat(context: readRound)
  }

  private mutating func acknowledgeRead(round: UInt64, from replica: ReplicaID) {
    // An answer to round r proves leadership after every earlier round was recorded, too.
    for position in pendingReads.indices where pendingReads[position].round <= round {
      pendingReads[position].acks.insert(replica)
    }
    let quorum = Quorum(membership)
    while let first = pendingReads.first, quorum.isActive({ first.acks.contains($0) }) {
      readStates.append(ReadState(index: first.index, context: first.context))
      pendingReads.removeFirst()
    }
  }

  // MARK: - Leader transfer (thesis §3.10)

  public mutating func transferLeadership(to target: ReplicaID) throws(ProposalError) {
    precondition(!awaitingAdvance, "transferLeadership between ready() and advance()")
    guard role == .leader else { throw .notLeader(leader: leader) }
    if isQuiesced { unquiesce() }
    ticksSinceActivity = 0
    guard target != id, membership.isVoter(target), progress[target] != nil else {
      throw .configChangeInvalid("transfer target \(target) is not another voter")
    }
    if leadTransferee == target { return }
    leadTransferee = target
    electionElapsed = 0
    if progress[target]!.match == log.lastIndex {
      send(Message(kind: .timeoutNow, from: id, to: target, term: term))
    } else {
      sendAppend(to: target)
    }
  }

  /// A leader that is no longer a voter transfers leadership to the voter with the longest log.
  private mutating func handOverLeadership() {
    precondition(role == .leader, "only a leader hands over leadership")
    var best: (replica: ReplicaID, match: LogIndex)? = nil
    for replica in membership.voters + membership.votersOutgoing where replica != id {
      let match = progress[replica]?.match ?? 0
      if best == nil || match > best!.match || (match == best!.match && replica < best!.replica) {
        best = (replica, match)
      }
    }
    guard let target = best?.replica else { return }
    try? transferLeadership(to: target)
  }

  // MARK: - Quiescence

  /// Leader: quiesces the group if it may — `quiesceAfterTicks` passed without a proposal, read
  /// or transfer; everything is committed, applied and durable here; no transfer, read round or
  /// configuration change is under way; and every replica not `unreachable` (the host's node
  /// liveness) holds the whole log, while a quorum of voters is reachable (otherwise the leader
  /// keeps ticking, so that CheckQuorum can depose it). Sends every replica a `quiesce` message
  /// and says whether it quiesced.
  public mutating func quiesce(unreachable: (ReplicaID) -> Bool) -> Bool {
    precondition(!awaitingAdvance, "quiesce between ready() and advance()")
    guard config.quiesceAfterTicks > 0, !isQuiesced, role == .leader, ticksSinceActivity >= config.quiesceAfterTicks,
      leadTransferee == 0, pendingReads.isEmpty, readsAwaitingTermCommit.isEmpty, readStates.isEmpty,
      outbox.isEmpty, hardState == lastReadyHardState, log.pendingSnapshot == nil,
      log.stableIndex >= log.lastIndex, log.committed == log.lastIndex, log.applied == log.committed,
      membership.isVoter(id), !membership.isJoint, pendingConfigIndex <= log.applied
    else { return false }
    let others = membership.allReplicas.filter { $0 != id }
    for replica in others where !unreachable(replica) {
      guard let entry = progress[replica], entry.match == log.lastIndex, entry.state != .snapshot else { return false }
    }
    guard Quorum(membership).isActive({ $0 == id || !unreachable($0) }) else { return false }
    for replica in others {
      send(
        Message(
          kind: .quiesce, from: id, to: replica, term: term, logTerm: log.lastTerm, index: log.lastIndex,
          commit: log.committed))
    }
    isQuiesced = true
    return true
  }

  /// The host wakes a quiesced replica: with `leaderLost`, a follower whose leader's node is no
  /// longer live forgets that leader and campaigns within one more election timeout (the node's
  /// silence already lasted about one).
  public mutating func wake(leaderLost: Bool) {
    precondition(!awaitingAdvance, "wake between ready() and advance()")
    guard isQuiesced else { return }
    unquiesce()
    if leaderLost && role == .follower { forgetLeader() }
  }

  /// A follower's leader is gone: no lease holds any more, and we campaign within one more
  /// election timeout (the silence that told us already lasted about one).
  private mutating func forgetLeader() {
    precondition(role == .follower, "only a follower forgets its leader")
    leader = 0
    electionElapsed = config.electionTicks
  }

  /// Ticks resume. A leader gets a fresh CheckQuorum window (its followers answer only once its
  /// heartbeats resume) and heartbeats at its next tick; a follower a fresh election timeout.
  private mutating func unquiesce() {
    precondition(isQuiesced, "only a quiesced replica wakes")
    isQuiesced = false
    electionElapsed = 0
    ticksSinceActivity = 0
    if role == .leader {
      heartbeatElapsed = config.heartbeatTicks - 1
      for replica in Array(progress.keys) where replica != id { progress[replica]!.recentActive = true }
    }
  }

  /// Whether a quiesced replica takes `message` without waking: what trails a quiescence (the
  /// heartbeat responses and acknowledgements of the last round before it, a heartbeat of its
  /// leader's) and votes its lease ignores. A vote reaching a quiesced *leader* wakes it: the
  /// candidate is one of its replicas that lost track of it (a lost `quiesce`, a restart), and
  /// only heartbeats bring it back.
  private func keepsQuiescence(_ message: Message) -> Bool {
    switch message.kind {
    case .quiesce:
      return true
    case .vote, .preVote:
      return message.term < term
        || (message.term > term && message.context != 1 && leader != 0 && role != .leader && message.from != leader)
    case .heartbeatResponse:
      return role == .leader && message.term == term && message.context == 0
        && progress[message.from]?.match == log.lastIndex
    case .appendResponse:
      return role == .leader && message.term == term && !message.reject
        && (progress[message.from].map { message.index <= $0.match } ?? false)
    case .heartbeat:
      return role == .follower && message.term == term && message.from == leader && message.context == 0
    default:
      return message.term < term
    }
  }

  // MARK: - Snapshots

  /// The host captured its state machine, as `data`, at the applied index: drops the entries it
  /// covers (log compaction, Raft paper §7) and returns the snapshot to persist. Returns nil when
  /// there is nothing to compact, or while the membership runs ahead of the applied index (just
  /// after a restart), because the snapshot must carry the membership as of its own index.
  public mutating func compact(data: [UInt8]) -> Snapshot? {
    precondition(!awaitingAdvance, "compact between ready() and advance()")
    guard log.applied > log.snapshotIndex, configAppliedIndex <= log.applied, log.pendingSnapshot == nil,
      let appliedTerm = log.term(at: log.applied)
    else { return nil }
    let snapshot = Snapshot(index: log.applied, term: appliedTerm, config: membership, data: data)
    log.compact(snapshot)
    return snapshot
  }

  /// The host reports whether a snapshot sent to `replica` arrived (Raft paper §7).
  public mutating func reportSnapshot(to replica: ReplicaID, failed: Bool) {
    precondition(!awaitingAdvance, "reportSnapshot between ready() and advance()")
    guard role == .leader, var entry = progress[replica], entry.state == .snapshot else { return }
    if failed { entry.pendingSnapshot = 0 }
    entry.becomeProbe()
    // Wait for the next heartbeat response before probing again.
    entry.probeSent = true
    progress[replica] = entry
  }

  // MARK: - Membership

  /// Applies a committed configuration-change entry to `membership`.
  private mutating func applyConfigChange(_ entry: Entry) {
    precondition(entry.kind == .configChange, "not a configuration change")
    guard entry.index > configAppliedIndex else { return }
    configAppliedIndex = entry.index
    let change: ConfigChange
    do {
      change = try WireCodec.decodeConfigChange(entry.data)
    } catch {
      preconditionFailure("committed configuration change at \(entry.index) does not decode: \(error)")
    }
    // The leader validated it against the same membership, so refusal means a no-op here
    // (e.g. an automatic leave-joint racing with a snapshot).
    guard let next = try? membership.applying(change) else { return }
    membership = next
    var added: [ReplicaID] = []
    for replica in membership.allReplicas where progress[replica] == nil {
      progress[replica] = ReplicaProgress(
        next: log.lastIndex + 1, maxInflightMessages: config.maxInflightMessages,
        maxInflightBytes: config.maxInflightBytes, isLearner: false)
      added.append(replica)
    }
    for replica in Array(progress.keys) {
      if !membership.allReplicas.contains(replica) {
        progress[replica] = nil
      } else {
        progress[replica]!.isLearner = !membership.isVoter(replica)
      }
    }
    if role == .leader {
      if !membership.isVoter(id) {
        // Removed (thesis §4.2.2): keep replicating without counting ourselves, and hand the
        // leadership to the most up-to-date voter. Stepping down at once could strand the group:
        // the others may not know yet that the change committed, and may still need our vote.
        handOverLeadership()
      }
      if membership.isJoint && pendingConfigIndex <= entry.index {
        // Leave the joint configuration automatically (thesis §4.3).
        let index = try? proposeEntry(
          Entry(term: 0, index: 0, kind: .configChange, data: WireCodec.encode(ConfigChange.leaveJoint)))
        if let index { pendingConfigIndex = index }
      }
      // New replicas start catching up now rather than at the next heartbeat.
      for replica in added where replica != id { sendAppend(to: replica) }
      // The new config may change the quorum.
      if maybeCommit() { broadcastAppend() }
    }
  }

  // MARK: - Output

  /// Queues a message, folding it into the last one queued for the same replica when one
  /// message says both: a leader appending per proposal and per commit advance would otherwise
  /// send a message per entry and per acknowledgement, and a follower answer each one.
  private mutating func send(_ message: Message) {
    let bytes = message.entries.reduce(0) { $0 + $1.sizeBytes }
    var position = outbox.endIndex
    var looked = 0
    while position > outbox.startIndex && looked < Raft.mergeLookbackMessages {
      position -= 1
      looked += 1
      guard outbox[position].to == message.to else { continue }
      let mergedBytes = outboxEntriesBytes[position] + bytes
      if mergedBytes <= config.maxEntriesBytesPerMessage, Raft.merge(message, into: &outbox[position]) {
        outboxEntriesBytes[position] = mergedBytes
        return
      }
      break
    }
    outbox.append(message)
    outboxEntriesBytes.append(bytes)
  }

  /// How far back `send` looks for the last message to the same replica: a few per replica of a
  /// group. Past it a message is simply queued on its own.
  static let mergeLookbackMessages = 16

  /// Turns `earlier` into one message equivalent to `earlier` followed by `later` (both to the
  /// same replica, nothing to that replica between them) when there is one; says whether it did.
  /// The caller bounds the bytes. In place, so a chain of merges copies no entries twice.
  /// - Appends of one term, `later` continuing where `earlier`'s entries end: one append of both
  ///   ranges with the later commit. The follower commits min(commit, last new index) either way.
  /// - Acceptances of one term: the one acknowledging the higher index. Within a term the
  ///   follower's log only grows past what it acknowledged (the leader never sends it entries
  ///   that conflict with its own), so the higher acknowledgement implies the lower.
  static func merge(_ later: Message, into earlier: inout Message) -> Bool {
    guard earlier.kind == later.kind, earlier.term == later.term, earlier.from == later.from else { return false }
    switch earlier.kind {
    case .append:
      let earlierLastIndex = earlier.index + LogIndex(earlier.entries.count)
      let earlierLastTerm = earlier.entries.last?.term ?? earlier.logTerm
      guard later.index == earlierLastIndex, later.logTerm == earlierLastTerm,
        earlier.entries.count + later.entries.count <= WireLimits.entriesPerMessageMax
      else { return false }
      earlier.entries.append(contentsOf: later.entries)
      earlier.commit = max(earlier.commit, later.commit)
      return true
    case .appendResponse:
      guard !earlier.reject, !later.reject else { return false }
      if later.index > earlier.index { earlier.index = later.index }
      return true
    default:
      return false
    }
  }

  public var hasReady: Bool {
    if hardState != lastReadyHardState { return true }
    if role != lastReadyRole || leader != lastReadyLeader { return true }
    if log.pendingSnapshot != nil || log.stableIndex < log.lastIndex { return true }
    if !outbox.isEmpty || !readStates.isEmpty { return true }
    return log.pendingSnapshot == nil && log.committed > log.applied
  }

  /// Collects what the host must do now; see `Ready` for the contract. Call `advance` next.
  public mutating func ready() -> Ready {
    precondition(!awaitingAdvance, "ready() twice without advance()")
    awaitingAdvance = true
    let current = hardState
    // A Ready that changes the term or vote sends nothing before it is durable. A leader's
    // appends may otherwise leave early (thesis §10.2.1), but not in the Ready that made it
    // leader of a new term: a one-voter group elects itself and appends in one Ready, and a
    // crash before the fsync would let it win the same term again with other entries at the
    // same indexes, which a learner that got the first ones keeps (Log Matching broken). With
    // the term durable first, a re-election takes a new term (etcd persists the self-vote the
    // same way before any message of the term leaves).
    let termOrVoteChanged = current.term != lastReadyHardState.term || current.vote != lastReadyHardState.vote
    let holdAll = termOrVoteChanged && config.plantedBug != .sendBeforeTermDurable
    var early: [Message] = []
    var late: [Message] = []
    for message in outbox {
      if message.kind.maySendBeforePersist && !holdAll { early.append(message) } else { late.append(message) }
    }
    let entries = log.unstableEntries
    let result = Ready(
      role: role, leader: leader, term: term,
      hardState: current == lastReadyHardState ? nil : current,
      mustSync: !entries.isEmpty || log.pendingSnapshot != nil || termOrVoteChanged,
      entries: entries, snapshot: log.pendingSnapshot, messages: early,
      messagesAfterPersist: late,
      committedEntries: log.nextCommittedEntries(maxBytes: config.maxCommittedBytesPerReady),
      readStates: readStates)
    outbox = []
    outboxEntriesBytes = []
    readStates = []
    lastReadyRole = role
    lastReadyLeader = leader
    return result
  }

  /// The host has executed `ready` in full.
  public mutating func advance(_ ready: Ready) {
    precondition(awaitingAdvance, "advance() without ready()")
    awaitingAdvance = false
    if let hardState = ready.hardState { lastReadyHardState = hardState }
    if let snapshot = ready.snapshot { log.snapshotInstalled(snapshot) }
    if let last = ready.entries.last { log.markStable(through: last.index, term: last.term) }
    for entry in ready.committedEntries {
      log.markApplied(entry.index)
      if entry.kind == .configChange { applyConfigChange(entry) }
    }
    if timeoutNowDeferredFrom != 0 && role == .follower && leader == timeoutNowDeferredFrom
      && !hasUnappliedConfigChange
    {
      timeoutNowDeferredFrom = 0
      if isPromotable { startElection(preVote: false, transfer: true) }
    }
    if role == .leader, progress[id] != nil {
      let durable = min(log.stableIndex, log.lastIndex)
      if progress[id]!.match < durable {
        _ = progress[id]!.maybeUpdate(durable)
        if maybeCommit() { broadcastAppend() }
      }
    }
    log.checkInvariants()
  }
}
