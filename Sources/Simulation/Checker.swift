import RaftCore

/// Raft's safety properties (Raft paper Figure 3), checked incrementally as replicas produce
/// their Readies, plus monotonicity of term, commit and applied, and read safety.
struct Checker {
  struct EntryKey: Hashable {
    var group: UInt64
    var index: LogIndex
    var term: Term
  }
  struct ReplicaKey: Hashable {
    var node: Int
    var group: UInt64
  }

  /// Election Safety: at most one leader per term, per group.
  private var leaders: [UInt64: [Term: Int]] = [:]
  /// Log Matching: every (index, term) ever persisted anywhere names one entry and one predecessor term.
  private var entryIdentity: [EntryKey: (digest: UInt64, previousTerm: Term?)] = [:]
  /// Committed entries: index → term, per group, as learned from any replica's commit index.
  private(set) var committedTerms: [UInt64: [LogIndex: Term]] = [:]
  private(set) var maxCommitted: [UInt64: LogIndex] = [:]
  /// State Machine Safety: the state digest after applying each index, per group.
  private var stateDigests: [UInt64: [LogIndex: UInt64]] = [:]
  /// Leader Append-Only: per replica, the (term, lastIndex) while it leads.
  private var leaderLogs: [ReplicaKey: (term: Term, lastIndex: LogIndex)] = [:]
  /// Commit index checked so far per replica.
  private var commitChecked: [ReplicaKey: LogIndex] = [:]
  /// Monotonic term/commit/applied within one lifetime of a replica.
  private var lifetime: [ReplicaKey: (term: Term, commit: LogIndex, applied: LogIndex)] = [:]
  /// Durable hard state per replica: term and commit never go back on disk, nor does a vote change.
  private var durable: [ReplicaKey: HardState] = [:]

  private(set) var leadersElected = 0
  private(set) var entriesCommitted = 0

  mutating func restarted(node: Int, group: UInt64, raft: Raft) {
    let key = ReplicaKey(node: node, group: group)
    lifetime[key] = (raft.term, raft.committed, raft.applied)
    commitChecked[key] = min(commitChecked[key] ?? 0, raft.committed)
    leaderLogs[key] = nil
  }

  /// Checks one Ready just produced by `raft` (before `advance`).
  mutating func check(ready: Ready, node: Int, group: UInt64, raft: Raft) -> Violation? {
    let key = ReplicaKey(node: node, group: group)
    // Monotonic term and commit within a lifetime.
    let previous = lifetime[key] ?? (0, 0, 0)
    if raft.term < previous.term {
      return Violation(property: "Monotonic Term", detail: "n\(node) g\(group) term \(previous.term) → \(raft.term)")
    }
    if raft.committed < previous.commit {
      return Violation(
        property: "Monotonic Commit", detail: "n\(node) g\(group) commit \(previous.commit) → \(raft.committed)")
    }
    lifetime[key] = (raft.term, raft.committed, previous.applied)

    // Election Safety (§5.2) and Leader Completeness (§5.4) on each new leadership.
    if ready.role == .leader {
      if let existing = leaders[group]?[ready.term], existing != node {
        return Violation(
          property: "Election Safety",
          detail: "g\(group) term \(ready.term) has two leaders: n\(existing) and n\(node)")
      }
      if leaders[group]?[ready.term] == nil {
        leaders[group, default: [:]][ready.term] = node
        leadersElected += 1
        if let failure = checkLeaderCompleteness(node: node, group: group, raft: raft) { return failure }
      }
      // Leader Append-Only (§5.3): a leader never overwrites or deletes its entries.
      if let record = leaderLogs[key], record.term == ready.term {
        if let first = ready.entries.first, first.index != record.lastIndex + 1 {
          return Violation(
            property: "Leader Append-Only",
            detail: "n\(node) g\(group) term \(ready.term) rewrote its log from \(first.index), last was \(record.lastIndex)")
        }
        if raft.lastIndex < record.lastIndex {
          return Violation(
            property: "Leader Append-Only",
            detail: "n\(node) g\(group) term \(ready.term) log shrank \(record.lastIndex) → \(raft.lastIndex)")
        }
      }
      leaderLogs[key] = (ready.term, raft.lastIndex)
    } else {
      leaderLogs[key] = nil
    }

    // Log Matching (§5.3): same index and term ⇒ same entry and same predecessor.
    for entry in ready.entries {
      let identity = EntryKey(group: group, index: entry.index, term: entry.term)
      let digest = Digest.of(entry)
      let previousTerm = entry.index > 1 ? raft.term(at: entry.index - 1) : 0
      if let known = entryIdentity[identity] {
        if known.digest != digest {
          return Violation(
            property: "Log Matching",
            detail: "g\(group) entry \(entry.index)/\(entry.term) at n\(node) differs from an earlier copy")
        }
        if let a = known.previousTerm, let b = previousTerm, a != b {
          return Violation(
            property: "Log Matching",
            detail: "g\(group) entry \(entry.index)/\(entry.term) at n\(node) follows term \(b), elsewhere \(a)")
        }
        if known.previousTerm == nil, previousTerm != nil {
          entryIdentity[identity] = (digest, previousTerm)
        }
      } else {
        entryIdentity[identity] = (digest, previousTerm)
      }
    }

    // Durable hard state: the disk's term and commit never go back; a vote is never changed.
    if let hard = ready.hardState {
      if let old = durable[key] {
        if hard.term < old.term {
          return Violation(property: "Monotonic Term", detail: "n\(node) g\(group) persisted term \(old.term) → \(hard.term)")
        }
        if hard.term == old.term && old.vote != 0 && hard.vote != old.vote {
          return Violation(
            property: "Election Safety",
            detail: "n\(node) g\(group) changed its vote in term \(hard.term): n\(old.vote) → n\(hard.vote)")
        }
        if hard.commit < old.commit {
          return Violation(
            property: "Monotonic Commit", detail: "n\(node) g\(group) persisted commit \(old.commit) → \(hard.commit)")
        }
      }
    }

    // Committed entries agree everywhere (State Machine Safety at the log level).
    let checkedUpTo = commitChecked[key] ?? 0
    if raft.committed > checkedUpTo {
      var index = checkedUpTo + 1
      while index <= raft.committed {
        if let term = raft.term(at: index) {
          if let known = committedTerms[group]?[index] {
            if known != term {
              return Violation(
                property: "State Machine Safety",
                detail: "g\(group) index \(index) committed with term \(known) elsewhere, \(term) at n\(node)")
            }
          } else {
            committedTerms[group, default: [:]][index] = term
            entriesCommitted += 1
            if index > maxCommitted[group] ?? 0 { maxCommitted[group] = index }
          }
        }
        index += 1
      }
      commitChecked[key] = raft.committed
    }
    return nil
  }

  /// Durable Term (Raft paper Figure 2: "persistent state … updated on stable storage before
  /// responding to RPCs"): a message leaves only once the term it carries is durable at its
  /// sender, or the sender could, after a crash, act in that term again as if it never had. Pre-
  /// votes and granted pre-vote answers carry the term of an election not yet held: exempt.
  func sent(_ message: Message, node: Int, group: UInt64, durableTerm: Term) -> Violation? {
    if message.kind == .preVote || message.kind == .preVoteResponse { return nil }
    guard message.term <= durableTerm else {
      return Violation(
        property: "Durable Term",
        detail: "n\(node) g\(group) sent \(message.kind) of term \(message.term) to n\(message.to) with term \(durableTerm) durable")
    }
    return nil
  }

  /// Records the hard state the replica just made durable.
  mutating func persisted(node: Int, group: UInt64, hardState: HardState) {
    durable[ReplicaKey(node: node, group: group)] = hardState
  }

  /// Leader Completeness (§5.4): a leader of term T holds every entry committed in a term < T.
  private func checkLeaderCompleteness(node: Int, group: UInt64, raft: Raft) -> Violation? {
    guard let committed = committedTerms[group], var index = maxCommitted[group] else { return nil }
    while index > 0 {
      if let term = committed[index], term < raft.term {
        if index < raft.firstIndex - 1 { return nil }  // compacted: covered by its snapshot
        guard let own = raft.term(at: index) else {
          return Violation(
            property: "Leader Completeness",
            detail: "n\(node) g\(group) leads term \(raft.term) without committed entry \(index)/\(term) (last \(raft.lastIndex))")
        }
        if own != term {
          return Violation(
            property: "Leader Completeness",
            detail: "n\(node) g\(group) leads term \(raft.term) with \(index)/\(own), but \(index)/\(term) was committed")
        }
        return nil
      }
      index -= 1
    }
    return nil
  }

  /// State Machine Safety (§5.4.3): every replica reaches the same state after the same index.
  mutating func applied(node: Int, group: UInt64, index: LogIndex, stateDigest: UInt64) -> Violation? {
    let key = ReplicaKey(node: node, group: group)
    if let record = lifetime[key] {
      if index < record.applied {
        return Violation(
          property: "Monotonic Applied", detail: "n\(node) g\(group) applied \(record.applied) → \(index)")
      }
      lifetime[key]!.applied = index
    }
    if let known = stateDigests[group]?[index] {
      if known != stateDigest {
        return Violation(
          property: "State Machine Safety",
          detail: "n\(node) g\(group) state after index \(index) differs from another replica's")
      }
    } else {
      stateDigests[group, default: [:]][index] = stateDigest
    }
    return nil
  }

  func stateDigest(group: UInt64, index: LogIndex) -> UInt64? { stateDigests[group]?[index] }
}
