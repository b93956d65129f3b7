// The host contract: what the core asks the host to do, in order.

/// Everything the host must do after stepping the core, collected in one value.
///
/// The host executes a `Ready` in this order, then calls `Raft.advance(_:)` with it:
/// 1. `messages` may be sent at once, even before anything below is durable: they are a
///    leader's appends, heartbeats, snapshots and TimeoutNow. A leader only counts its own log
///    toward a commit quorum after `advance` confirms it durable (thesis §10.2.1). A Ready that
///    changes the term or vote has none here: everything it sends waits for step 2, so no
///    message of a term leaves before the term is durable (a one-voter leader elected and
///    appending in one Ready could otherwise reuse the term after a crash).
/// 2. Persist, and fsync, in one atomic step: `snapshot` (if any), then `entries` (truncate the
///    stored log at `entries.first.index`, then append), then `hardState` (if non-nil). When
///    `mustSync` is false the write need not be fsynced before going on (etcd's MustSync): only
///    the commit index changed, which Raft keeps as volatile state (paper Figure 2) — a crash that
///    loses it costs nothing, the leader tells it again.
/// 3. Only after step 2 is durable, send `messagesAfterPersist`: votes and acknowledgements
///    promise that what they acknowledge survives a crash (Raft paper Figure 2).
/// 4. Install `snapshot` into the state machine (if any), then apply `committedEntries` in order.
///    They are committed: every replica applies the same entries at the same indexes.
/// 5. Serve the reads in `readStates` once the state machine has applied their `index`.
/// 6. Call `advance(ready)`. Stepping the core between `ready()` and `advance` is forbidden.
public struct Ready: Equatable, Sendable {
  /// Soft state, always present: not persisted. A change of `role` or `leader` alone makes a
  /// Ready, so the host learns of a step-down at once.
  public var role: Role
  public var leader: ReplicaID
  public var term: Term
  /// Persist when non-nil (it changed since the last Ready).
  public var hardState: HardState?
  /// Whether step 2 must be durable before steps 3–5: new entries, a snapshot, or a new term or
  /// vote. False when only the commit index moved.
  public var mustSync: Bool
  /// Persist: new or overwritten log entries, contiguous.
  public var entries: [Entry]
  /// Persist and install: a snapshot received from the leader; it replaces the whole log.
  public var snapshot: Snapshot?
  /// Send right away (step 1).
  public var messages: [Message]
  /// Send only after the persistence of step 2 (step 3).
  public var messagesAfterPersist: [Message]
  /// Apply in order (step 4).
  public var committedEntries: [Entry]
  /// Linearizable read points (step 5).
  public var readStates: [ReadState]

  public var isEmpty: Bool {
    hardState == nil && entries.isEmpty && snapshot == nil && messages.isEmpty
      && messagesAfterPersist.isEmpty && committedEntries.isEmpty && readStates.isEmpty
  }
}

/// What the host persisted, handed back to build a `Raft` after a restart (or at first start).
public struct RestoredState: Sendable {
  public var hardState: HardState
  public var snapshot: Snapshot?
  /// Persisted entries after the snapshot, contiguous.
  public var entries: [Entry]
  /// The bootstrap membership, used when there is no snapshot. Replicas that join later start
  /// with an empty one and learn theirs from the leader's log or snapshot.
  public var bootstrapConfig: ConfigState

  public init(
    hardState: HardState = HardState(), snapshot: Snapshot? = nil, entries: [Entry] = [],
    bootstrapConfig: ConfigState
  ) {
    self.hardState = hardState
    self.snapshot = snapshot
    self.entries = entries
    self.bootstrapConfig = bootstrapConfig
  }
}

public enum ProposalError: Error, Equatable, Sendable, CustomStringConvertible {
  /// Only the leader accepts this; `leader` is the known leader or 0.
  case notLeader(leader: ReplicaID)
  /// A leadership transfer is in progress; proposals wait for it to end (thesis §3.10).
  case transferInProgress(to: ReplicaID)
  /// `maxUncommittedEntriesBytes` would be exceeded.
  case uncommittedBytesExceeded(limit: Int)
  /// `maxCommandBytes` is exceeded.
  case commandTooLarge(bytes: Int, limit: Int)
  /// A configuration change is still unapplied (thesis §4.1: one change at a time), or the
  /// leader has not yet committed an entry of its term (§4.1's fix for single-server changes).
  case configChangePending(index: LogIndex)
  case configChangeInvalid(String)
  /// `maxPendingReads` is exceeded.
  case tooManyPendingReads(limit: Int)

  public var description: String {
    switch self {
    case .notLeader(let leader): return "not the leader (leader is \(leader == 0 ? "unknown" : String(leader)))"
    case .transferInProgress(let to): return "leadership transfer to \(to) in progress"
    case .uncommittedBytesExceeded(let limit): return "uncommitted entries exceed \(limit) bytes"
    case .commandTooLarge(let bytes, let limit): return "command of \(bytes) bytes exceeds \(limit)"
    case .configChangePending(let index): return "configuration change at \(index) not applied yet"
    case .configChangeInvalid(let reason): return "invalid configuration change: \(reason)"
    case .tooManyPendingReads(let limit): return "more than \(limit) reads pending"
    }
  }
}

/// A point-in-time description of a replica, for hosts, tests and the simulator's checker.
public struct RaftStatus: Sendable {
  public var id: ReplicaID
  public var role: Role
  public var term: Term
  public var vote: ReplicaID
  public var leader: ReplicaID
  public var committed: LogIndex
  public var applied: LogIndex
  public var firstIndex: LogIndex
  public var lastIndex: LogIndex
  public var config: ConfigState
  public var leadTransferee: ReplicaID
  /// Leader only: each replica's (match, next, state).
  public var progress: [ReplicaID: (match: LogIndex, next: LogIndex, state: ProgressState)]
}
