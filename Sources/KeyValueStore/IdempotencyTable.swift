/// Remembers the encoded outcome of recent commands by idempotency key, so a retried command is
/// answered with its first outcome instead of being applied again.
///
/// Bounded by `entriesMax`; when full, the key remembered first is forgotten first (FIFO by first
/// application; a replay does not refresh a key). The order is part of the replicated state and
/// of the snapshot, so every replica forgets the same keys at the same index.
struct IdempotencyTable {
  let entriesMax: Int
  private var outcomes: [String: [UInt8]] = [:]
  /// Keys in eviction order: `order[head...]` are live, oldest first.
  private var order: [String] = []
  private var head = 0
  /// What the remembered entries take in a snapshot (`KeyValueStateMachine.takeSnapshot`): each a
  /// length-prefixed key and a length-prefixed outcome.
  private(set) var snapshotBytes = 0

  init(entriesMax: Int) {
    precondition(entriesMax >= 0, "idempotencyEntriesMax must not be negative")
    self.entriesMax = entriesMax
  }

  var count: Int { outcomes.count }

  func outcome(for key: String) -> [UInt8]? {
    outcomes[key]
  }

  /// Remembers `outcome` under a key not yet in the table, evicting the oldest keys when full.
  mutating func remember(_ key: String, outcome: [UInt8]) {
    precondition(outcomes[key] == nil, "an idempotency key is remembered once")
    guard entriesMax > 0 else { return }
    outcomes[key] = outcome
    order.append(key)
    snapshotBytes += Self.snapshotBytes(key: key, outcome: outcome)
    while outcomes.count > entriesMax {
      let evicted = order[head]
      head += 1
      let removed = outcomes.removeValue(forKey: evicted)
      assert(removed != nil, "eviction order and table out of step")
      snapshotBytes -= Self.snapshotBytes(key: evicted, outcome: removed ?? [])
    }
    // Drop evicted slots once they are the majority, so `order` stays O(entriesMax).
    if head > 1024 && head * 2 > order.count {
      order.removeFirst(head)
      head = 0
    }
    assert(order.count - head == outcomes.count)
  }

  static func snapshotBytes(key: String, outcome: [UInt8]) -> Int { 4 + key.utf8.count + 4 + outcome.count }

  /// The remembered keys and outcomes, oldest (next to be evicted) first.
  var entriesInEvictionOrder: [(key: String, outcome: [UInt8])] {
    order[head...].map { key in (key, outcomes[key]!) }
  }
}
