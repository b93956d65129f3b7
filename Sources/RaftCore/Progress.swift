// What a leader knows about each follower's log (Raft paper §5.3 nextIndex/matchIndex), the
// flow-control window of in-flight appends, and the quorum arithmetic over a (joint) config.

/// The in-flight window to one follower: the last index and byte size of each unacknowledged
/// append, oldest first. Full when either the message or the byte limit is reached.
struct Inflights {
  let maxMessages: Int
  let maxBytes: Int
  private var lastIndexes: [LogIndex] = []
  private var sizes: [Int] = []
  private var head = 0
  private(set) var bytes = 0

  init(maxMessages: Int, maxBytes: Int) {
    self.maxMessages = maxMessages
    self.maxBytes = maxBytes
  }

  var count: Int { lastIndexes.count - head }
  var isFull: Bool { count >= maxMessages || bytes >= maxBytes }

  mutating func add(lastIndex: LogIndex, bytes size: Int) {
    precondition(!isFull, "adding to a full inflight window")
    if let last = lastIndexes.last, head < lastIndexes.count {
      precondition(lastIndex > last, "inflight indexes must increase")
    }
    lastIndexes.append(lastIndex)
    sizes.append(size)
    bytes += size
  }

  /// Frees every in-flight append whose last index is ≤ `index` (acknowledged).
  mutating func free(through index: LogIndex) {
    while head < lastIndexes.count && lastIndexes[head] <= index {
      bytes -= sizes[head]
      head += 1
    }
    if head == lastIndexes.count || head > 64 {
      lastIndexes.removeFirst(head)
      sizes.removeFirst(head)
      head = 0
    }
    precondition(bytes >= 0, "inflight bytes went negative")
  }

  mutating func reset() {
    lastIndexes = []
    sizes = []
    head = 0
    bytes = 0
  }
}

public enum ProgressState: UInt8, Sendable, CustomStringConvertible {
  /// One append at a time until the follower's match index is found.
  case probe
  /// Pipelined appends, bounded by the inflight window.
  case replicate
  /// A snapshot is on its way; nothing else is sent until it is reported.
  case snapshot
  public var description: String {
    switch self {
    case .probe: return "probe"
    case .replicate: return "replicate"
    case .snapshot: return "snapshot"
    }
  }
}

/// A leader's view of one replica. Invariant: match < next.
struct ReplicaProgress {
  var match: LogIndex = 0
  var next: LogIndex
  var state: ProgressState = .probe
  /// In probe state: an append was sent and not yet answered.
  var probeSent = false
  /// In snapshot state: the index of the snapshot being sent.
  var pendingSnapshot: LogIndex = 0
  /// Heard from since the last CheckQuorum round (thesis §6.2).
  var recentActive = false
  /// Replicate state: heartbeat responses received while the window stayed full.
  var stalledHeartbeats = 0
  var inflights: Inflights
  var isLearner: Bool

  init(next: LogIndex, maxInflightMessages: Int, maxInflightBytes: Int, isLearner: Bool) {
    self.next = next
    self.inflights = Inflights(maxMessages: maxInflightMessages, maxBytes: maxInflightBytes)
    self.isLearner = isLearner
  }

  var isPaused: Bool {
    switch state {
    case .probe: return probeSent
    case .replicate: return inflights.isFull
    case .snapshot: return true
    }
  }

  mutating func becomeProbe() {
    if state == .snapshot {
      let snapshotIndex = pendingSnapshot
      next = max(match + 1, snapshotIndex + 1)
    } else {
      next = match + 1
    }
    reset(to: .probe)
  }

  mutating func becomeReplicate() {
    next = match + 1
    reset(to: .replicate)
  }

  mutating func becomeSnapshot(_ index: LogIndex) {
    reset(to: .snapshot)
    pendingSnapshot = index
  }

  private mutating func reset(to newState: ProgressState) {
    state = newState
    probeSent = false
    pendingSnapshot = 0
    stalledHeartbeats = 0
    inflights.reset()
  }

  /// Records an acknowledgement of `index`; says whether match advanced.
  mutating func maybeUpdate(_ index: LogIndex) -> Bool {
    var updated = false
    if match < index {
      match = index
      updated = true
      probeSent = false
      stalledHeartbeats = 0
    }
    next = max(next, index + 1)
    precondition(match < next, "match \(match) must stay below next \(next)")
    return updated
  }

  /// Handles a rejection of the append at `rejected`; says whether it was fresh (not stale).
  mutating func maybeDecrease(rejected: LogIndex, matchHint: LogIndex) -> Bool {
    if state == .replicate {
      if rejected <= match { return false }
      next = match + 1
      return true
    }
    if next - 1 != rejected { return false }
    next = max(min(rejected, matchHint + 1), match + 1)
    probeSent = false
    precondition(match < next, "match \(match) must stay below next \(next)")
    return true
  }
}

/// Quorum arithmetic over a possibly joint configuration (thesis §4.3: a decision in C_old,new
/// needs a majority of C_old and a majority of C_new).
struct Quorum {
  var incoming: [ReplicaID]
  var outgoing: [ReplicaID]

  init(_ config: ConfigState) {
    incoming = config.voters
    outgoing = config.votersOutgoing
  }

  /// The largest index acknowledged by a majority of `voters`; an empty set agrees to anything
  /// (only ever the outgoing half outside a joint configuration: see `committedIndex`).
  private static func majorityIndex(_ voters: [ReplicaID], _ acked: (ReplicaID) -> LogIndex) -> LogIndex {
    if voters.isEmpty { return LogIndex.max }
    var indexes = voters.map(acked)
    indexes.sort(by: >)
    return indexes[voters.count / 2]
  }

  /// The largest index a quorum acknowledged. No voters at all commit nothing: an empty
  /// membership has no quorum (etcd's convention of "an empty config wins" is only safe behind
  /// its promotable rule; here the quorum itself refuses).
  func committedIndex(_ acked: (ReplicaID) -> LogIndex) -> LogIndex {
    if incoming.isEmpty { return 0 }
    return min(Quorum.majorityIndex(incoming, acked), Quorum.majorityIndex(outgoing, acked))
  }

  enum VoteResult { case pending, won, lost }

  private static func majorityResult(_ voters: [ReplicaID], _ votes: [ReplicaID: Bool]) -> VoteResult {
    if voters.isEmpty { return .won }
    var granted = 0
    var missing = 0
    for voter in voters {
      switch votes[voter] {
      case true?: granted += 1
      case false?: break
      case nil: missing += 1
      }
    }
    let majority = voters.count / 2 + 1
    if granted >= majority { return .won }
    if granted + missing >= majority { return .pending }
    return .lost
  }

  /// An election in a membership without voters is lost, never won: no quorum exists to win it.
  func voteResult(_ votes: [ReplicaID: Bool]) -> VoteResult {
    if incoming.isEmpty { return .lost }
    let first = Quorum.majorityResult(incoming, votes)
    let second = Quorum.majorityResult(outgoing, votes)
    if first == .won && second == .won { return .won }
    if first == .lost || second == .lost { return .lost }
    return .pending
  }

  func isActive(_ active: (ReplicaID) -> Bool) -> Bool {
    var votes: [ReplicaID: Bool] = [:]
    for voter in incoming + outgoing { votes[voter] = active(voter) }
    return voteResult(votes) == .won
  }
}
