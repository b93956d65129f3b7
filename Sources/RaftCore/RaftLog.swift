// The in-memory log of one replica: a snapshot position followed by entries, with the commit,
// apply and durability marks. Invariant: snapshotIndex ≤ applied ≤ committed ≤ lastIndex, and
// every entry ≤ stableIndex is durable on the host's disk.

struct RaftLog {
  /// Position covered by the latest snapshot; entries start right after it.
  private(set) var snapshotIndex: LogIndex = 0
  private(set) var snapshotTerm: Term = 0
  /// The latest snapshot, kept so a leader can send it to followers that need compacted entries.
  private(set) var snapshot: Snapshot? = nil
  /// entries[i].index == snapshotIndex + 1 + i.
  private(set) var entries: [Entry] = []
  /// The sum of `entries`' `sizeBytes`, kept as they change (the group status's log size).
  private(set) var entriesBytes = 0
  private(set) var committed: LogIndex = 0
  private(set) var applied: LogIndex = 0
  /// Entries with index ≤ stableIndex are durable; later ones are in the next Ready.
  private(set) var stableIndex: LogIndex = 0
  /// A snapshot received from a leader that the host has not yet persisted and installed.
  private(set) var pendingSnapshot: Snapshot? = nil

  init() {}

  /// Rebuilds a log from what the host persisted.
  init(snapshot: Snapshot?, entries: [Entry], commit: LogIndex) {
    if let snapshot {
      snapshotIndex = snapshot.index
      snapshotTerm = snapshot.term
      self.snapshot = snapshot
    }
    var expected = snapshotIndex + 1
    for entry in entries where entry.index > snapshotIndex {
      precondition(entry.index == expected, "restored entries must be contiguous after the snapshot")
      self.entries.append(entry)
      entriesBytes += entry.sizeBytes
      expected += 1
    }
    stableIndex = lastIndex
    committed = min(max(commit, snapshotIndex), lastIndex)
    applied = snapshotIndex
    checkInvariants()
  }

  var firstIndex: LogIndex { snapshotIndex + 1 }
  var lastIndex: LogIndex { snapshotIndex + LogIndex(entries.count) }
  var lastTerm: Term { term(at: lastIndex)! }

  func checkInvariants() {
    precondition(
      snapshotIndex <= applied || pendingSnapshot != nil, "snapshotIndex \(snapshotIndex) > applied \(applied)")
    precondition(applied <= committed, "applied \(applied) > committed \(committed)")
    precondition(committed <= lastIndex, "committed \(committed) > lastIndex \(lastIndex)")
    precondition(stableIndex <= lastIndex, "stableIndex \(stableIndex) > lastIndex \(lastIndex)")
    precondition(entriesBytes >= Entry.headerBytes * entries.count, "entriesBytes \(entriesBytes) below \(entries.count) headers")
  }

  /// The term of the entry at `index`, or nil when it is compacted away or beyond the log.
  func term(at index: LogIndex) -> Term? {
    if index == snapshotIndex { return snapshotTerm }
    if index < snapshotIndex || index > lastIndex { return nil }
    return entries[Int(index - snapshotIndex - 1)].term
  }

  func entry(at index: LogIndex) -> Entry? {
    guard index > snapshotIndex, index <= lastIndex else { return nil }
    return entries[Int(index - snapshotIndex - 1)]
  }

  func matchTerm(_ index: LogIndex, _ term: Term) -> Bool { self.term(at: index) == term }

  /// Raft paper §5.4.1: a candidate's log is at least as up-to-date as ours.
  func isUpToDate(lastIndex candidateIndex: LogIndex, lastTerm candidateTerm: Term) -> Bool {
    candidateTerm > lastTerm || (candidateTerm == lastTerm && candidateIndex >= lastIndex)
  }

  /// The index of the first entry in `incoming` that is new or conflicts with ours, or 0.
  func findConflict(_ incoming: [Entry]) -> LogIndex {
    for entry in incoming where !matchTerm(entry.index, entry.term) {
      return entry.index
    }
    return 0
  }

  /// The largest index ≤ `index` whose term is ≤ `term` (fast back-off, thesis §3.5). Returns
  /// `index` unchanged when its term is unknown.
  func findConflictByTerm(_ index: LogIndex, _ term: Term) -> LogIndex {
    var index = min(index, lastIndex)
    while index > snapshotIndex, let candidate = self.term(at: index), candidate > term {
      index -= 1
    }
    return index
  }

  /// Entries in [from, lastIndex] up to `maxBytes` (at least one), or nil if `from` is compacted.
  func entries(from: LogIndex, maxBytes: Int) -> [Entry]? {
    guard from > snapshotIndex else { return nil }
    guard from <= lastIndex else { return [] }
    var result: [Entry] = []
    var bytes = 0
    var index = Int(from - snapshotIndex - 1)
    while index < entries.count {
      let entry = entries[index]
      if !result.isEmpty && bytes + entry.sizeBytes > maxBytes { break }
      bytes += entry.sizeBytes
      result.append(entry)
      index += 1
    }
    return result
  }

  /// Appends entries after `entries.first.index - 1`, truncating any conflicting suffix.
  mutating func append(_ incoming: [Entry]) {
    guard let first = incoming.first else { return }
    precondition(first.index > committed, "truncating committed entry \(first.index) ≤ \(committed)")
    precondition(first.index >= firstIndex && first.index <= lastIndex + 1, "gap before \(first.index)")
    let truncated = Int(first.index - snapshotIndex - 1)...
    entriesBytes -= entries[truncated].reduce(0) { $0 + $1.sizeBytes }
    entries.removeSubrange(truncated)
    entries.append(contentsOf: incoming)
    entriesBytes += incoming.reduce(0) { $0 + $1.sizeBytes }
    stableIndex = min(stableIndex, first.index - 1)
    checkInvariants()
  }

  /// Follower side of AppendEntries (Raft paper §5.3): returns the last new index, or nil when
  /// the entry at `index` does not have `logTerm`.
  mutating func maybeAppend(index: LogIndex, logTerm: Term, commit: LogIndex, incoming: [Entry]) -> LogIndex? {
    guard matchTerm(index, logTerm) else { return nil }
    let lastNew = index + LogIndex(incoming.count)
    let conflict = findConflict(incoming)
    if conflict != 0 {
      precondition(conflict > committed, "entry \(conflict) conflicts with committed \(committed)")
      append(Array(incoming[Int(conflict - index - 1)...]))
    }
    self.commit(to: min(commit, lastNew))
    return lastNew
  }

  mutating func commit(to index: LogIndex) {
    guard index > committed else { return }
    precondition(index <= lastIndex, "commit \(index) beyond last index \(lastIndex)")
    committed = index
    checkInvariants()
  }

  mutating func markStable(through index: LogIndex, term: Term) {
    // Only if the entry is still the one that was persisted (nothing steps between Ready and
    // advance, so this always holds; checked anyway).
    guard matchTerm(index, term), index > stableIndex else { return }
    stableIndex = index
  }

  mutating func markApplied(_ index: LogIndex) {
    precondition(index <= committed, "applying \(index) beyond committed \(committed)")
    precondition(index >= applied, "applied must not go backwards: \(index) < \(applied)")
    applied = index
    checkInvariants()
  }

  /// Committed entries the host has not applied yet, bounded by `maxBytes` (at least one).
  func nextCommittedEntries(maxBytes: Int) -> [Entry] {
    guard pendingSnapshot == nil, committed > applied else { return [] }
    var result: [Entry] = []
    var bytes = 0
    var index = applied + 1
    while index <= committed, let entry = entry(at: index) {
      if !result.isEmpty && bytes + entry.sizeBytes > maxBytes { break }
      bytes += entry.sizeBytes
      result.append(entry)
      index += 1
    }
    return result
  }

  var unstableEntries: [Entry] {
    guard stableIndex < lastIndex else { return [] }
    return Array(entries[Int(stableIndex - snapshotIndex)...])
  }

  /// Replaces the whole log with a snapshot received from the leader (Raft paper §7).
  mutating func restore(_ snapshot: Snapshot) {
    precondition(snapshot.index > committed, "restoring snapshot \(snapshot.index) ≤ committed \(committed)")
    entries = []
    entriesBytes = 0
    snapshotIndex = snapshot.index
    snapshotTerm = snapshot.term
    self.snapshot = snapshot
    pendingSnapshot = snapshot
    committed = snapshot.index
    stableIndex = snapshot.index
    // applied stays until the host installs the snapshot; the invariant is suspended for this
    // window because snapshotIndex may exceed applied; see `snapshotInstalled`.
  }

  mutating func snapshotInstalled(_ snapshot: Snapshot) {
    precondition(pendingSnapshot == snapshot, "installed snapshot is not the pending one")
    pendingSnapshot = nil
    applied = snapshot.index
    checkInvariants()
  }

  /// Drops entries ≤ snapshot.index, which the host has captured in `snapshot` (log compaction).
  mutating func compact(_ snapshot: Snapshot) {
    precondition(snapshot.index <= applied, "compacting beyond applied: \(snapshot.index) > \(applied)")
    precondition(snapshot.index > snapshotIndex, "compaction must move forward")
    precondition(term(at: snapshot.index) == snapshot.term, "snapshot term does not match the log")
    let compacted = Int(snapshot.index - snapshotIndex)
    entriesBytes -= entries[..<compacted].reduce(0) { $0 + $1.sizeBytes }
    entries.removeFirst(compacted)
    snapshotIndex = snapshot.index
    snapshotTerm = snapshot.term
    self.snapshot = snapshot
    stableIndex = max(stableIndex, snapshotIndex)
    checkInvariants()
  }
}
