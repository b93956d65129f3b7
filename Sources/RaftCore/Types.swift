// Wire-level and log-level value types of one Raft group. Pure values: the standard library only.

/// A replica's identity inside a group. `0` means "none" (no vote, no leader).
public typealias ReplicaID = UInt64
/// A Raft term (Raft paper §5.1). Terms only grow.
public typealias Term = UInt64
/// A position in the replicated log; the first entry has index 1, `0` is "before the log".
public typealias LogIndex = UInt64

public enum EntryKind: UInt8, Sendable, CaseIterable {
  /// An application command, or the empty no-op a new leader appends (Raft paper §8).
  case normal = 0
  /// A membership change; `data` is an encoded `ConfigChange` (thesis §4.3).
  case configChange = 1
}

/// One log entry. Its identity is `(index, term)` (Raft paper §5.3, Log Matching).
public struct Entry: Equatable, Hashable, Sendable {
  public var term: Term
  public var index: LogIndex
  public var kind: EntryKind
  public var data: [UInt8]

  public init(term: Term, index: LogIndex, kind: EntryKind = .normal, data: [UInt8] = []) {
    self.term = term
    self.index = index
    self.kind = kind
    self.data = data
  }

  /// The bytes this entry counts for against byte limits (payload plus a fixed header).
  public var sizeBytes: Int { data.count + Entry.headerBytes }
  /// term (8) + index (8) + kind (1) + data length (4), as on the wire.
  public static let headerBytes = 21
}

/// What must be durable before any vote or acknowledgement is sent (Raft paper Figure 2,
/// "persistent state on all servers"), plus the commit index so restarts do not regress it.
public struct HardState: Equatable, Hashable, Sendable {
  public var term: Term
  public var vote: ReplicaID
  public var commit: LogIndex

  public init(term: Term = 0, vote: ReplicaID = 0, commit: LogIndex = 0) {
    self.term = term
    self.vote = vote
    self.commit = commit
  }
}

/// The membership of a group: voters, the outgoing voters while in a joint configuration
/// (thesis §4.3), and learners, which receive the log but never vote or count for a quorum.
public struct ConfigState: Equatable, Hashable, Sendable, CustomStringConvertible {
  public var voters: [ReplicaID]
  /// Non-empty only in a joint configuration C_old,new: decisions need a majority of both.
  public var votersOutgoing: [ReplicaID]
  public var learners: [ReplicaID]

  public init(voters: [ReplicaID], votersOutgoing: [ReplicaID] = [], learners: [ReplicaID] = []) {
    self.voters = voters.sorted()
    self.votersOutgoing = votersOutgoing.sorted()
    self.learners = learners.sorted()
  }

  public var isJoint: Bool { !votersOutgoing.isEmpty }
  /// Every replica that receives the log, sorted, without duplicates.
  public var allReplicas: [ReplicaID] { Array(Set(voters + votersOutgoing + learners)).sorted() }
  public func isVoter(_ id: ReplicaID) -> Bool { voters.contains(id) || votersOutgoing.contains(id) }

  public var description: String {
    var text = "voters=\(voters)"
    if isJoint { text += " outgoing=\(votersOutgoing)" }
    if !learners.isEmpty { text += " learners=\(learners)" }
    return text
  }
}

/// A point-in-time image of the state machine plus the log position and membership it covers.
public struct Snapshot: Equatable, Hashable, Sendable {
  public var index: LogIndex
  public var term: Term
  public var config: ConfigState
  public var data: [UInt8]

  public init(index: LogIndex, term: Term, config: ConfigState, data: [UInt8]) {
    self.index = index
    self.term = term
    self.config = config
    self.data = data
  }
}

public enum MessageKind: UInt8, Sendable, CaseIterable {
  case append = 1
  case appendResponse = 2
  case heartbeat = 3
  case heartbeatResponse = 4
  case vote = 5
  case voteResponse = 6
  case preVote = 7
  case preVoteResponse = 8
  case snapshot = 9
  case timeoutNow = 10
  /// Leader → every replica of an idle group: nothing is in flight, stop ticking (`Raft.quiesce`).
  /// `index`/`logTerm`: the leader's last entry; `commit`: its commit index.
  case quiesce = 11

  /// Messages a leader may send before its own Ready is durable (thesis §10.2.1: the leader may
  /// write its log in parallel with replicating it, since it only counts itself once durable).
  public var maySendBeforePersist: Bool {
    switch self {
    case .append, .heartbeat, .snapshot, .timeoutNow, .quiesce: return true
    default: return false
    }
  }
}

/// One Raft message. Fields unused by a kind stay zero/empty.
public struct Message: Equatable, Sendable {
  public var kind: MessageKind
  public var from: ReplicaID
  public var to: ReplicaID
  public var term: Term
  /// append: term of the entry at `index`. vote/preVote: term of the candidate's last entry.
  /// appendResponse rejection: term of the follower's entry at `rejectHint` (fast back-off).
  public var logTerm: Term = 0
  /// append: index of the entry preceding `entries`. vote: candidate's last index.
  /// appendResponse: the follower's last matching index, or the rejected `index`.
  public var index: LogIndex = 0
  public var entries: [Entry] = []
  public var commit: LogIndex = 0
  public var reject: Bool = false
  /// appendResponse rejection: the highest index at which the follower's log may still match.
  public var rejectHint: LogIndex = 0
  /// heartbeat/heartbeatResponse: ReadIndex round id. vote: 1 = leader transfer (ignore lease).
  public var context: UInt64 = 0
  public var snapshot: Snapshot? = nil

  public init(
    kind: MessageKind, from: ReplicaID, to: ReplicaID, term: Term, logTerm: Term = 0, index: LogIndex = 0,
    entries: [Entry] = [], commit: LogIndex = 0, reject: Bool = false, rejectHint: LogIndex = 0,
    context: UInt64 = 0, snapshot: Snapshot? = nil
  ) {
    self.kind = kind
    self.from = from
    self.to = to
    self.term = term
    self.logTerm = logTerm
    self.index = index
    self.entries = entries
    self.commit = commit
    self.reject = reject
    self.rejectHint = rejectHint
    self.context = context
    self.snapshot = snapshot
  }
}

/// The role of a replica (Raft paper §5.1; PreCandidate is thesis §9.6).
public enum Role: UInt8, Sendable, CustomStringConvertible {
  case follower, preCandidate, candidate, leader
  public var description: String {
    switch self {
    case .follower: return "follower"
    case .preCandidate: return "pre-candidate"
    case .candidate: return "candidate"
    case .leader: return "leader"
    }
  }
}

/// A linearizable read point: once the replica has applied `index`, a read tagged `context`
/// may be served from its state machine (thesis §6.4).
public struct ReadState: Equatable, Sendable {
  public var index: LogIndex
  public var context: UInt64
  public init(index: LogIndex, context: UInt64) {
    self.index = index
    self.context = context
  }
}

/// A small, fast, seedable generator (SplitMix64). The core never creates randomness of its own:
/// the host injects a generator, so one seed reproduces a whole run.
public struct SplitMix64: RandomNumberGenerator, Sendable {
  private var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}
