/// One change to a key, as recorded in the change history (what a watch reports).
public struct KVChangeEvent: Sendable, Equatable {
  public enum Kind: Sendable, Equatable {
    case put
    case delete
  }

  /// The index of the entry that made the change; also the key's new revision for a put.
  public var index: UInt64
  public var kind: Kind
  public var key: KVBytes
  /// The new value for a put; empty for a delete.
  public var value: KVBytes

  public var revision: UInt64 { index }

  public init(index: UInt64, kind: Kind, key: KVBytes, value: KVBytes) {
    self.index = index
    self.kind = kind
    self.key = key
    self.value = value
  }
}

/// A bounded, in-memory ring of the most recent changes (per replica, not replicated, not in
/// snapshots). Bounded by `entriesMax` events and `bytesMax` bytes of keys and values; the oldest
/// events go first. It remembers from which index on it is complete, so a reader asking for older
/// changes learns that they were compacted instead of silently missing them.
struct ChangeHistory {
  let entriesMax: Int
  let bytesMax: Int
  /// `events[head...]` are live, ascending by index (several events may share one index).
  private var events: [KVChangeEvent] = []
  private var head = 0
  private var bytes = 0
  /// Every change with index ≥ this is retained.
  private(set) var completeFromIndex: UInt64 = 1

  init(entriesMax: Int, bytesMax: Int) {
    precondition(entriesMax >= 0 && bytesMax >= 0, "history bounds must not be negative")
    self.entriesMax = entriesMax
    self.bytesMax = bytesMax
  }

  var count: Int { events.count - head }

  mutating func reset(completeFrom index: UInt64) {
    events = []
    head = 0
    bytes = 0
    completeFromIndex = index
  }

  mutating func record(_ event: KVChangeEvent) {
    if let last = events.last { precondition(last.index <= event.index, "history out of order") }
    let size = Self.size(of: event)
    guard entriesMax > 0, size <= bytesMax else {
      // Not retained: the history is complete only after this index.
      events.removeAll()
      head = 0
      bytes = 0
      completeFromIndex = max(completeFromIndex, event.index + 1)
      return
    }
    events.append(event)
    bytes += size
    while count > entriesMax || bytes > bytesMax {
      let evicted = events[head]
      head += 1
      bytes -= Self.size(of: evicted)
      completeFromIndex = max(completeFromIndex, evicted.index + 1)
    }
    if head > 1024 && head * 2 > events.count {
      events.removeFirst(head)
      head = 0
    }
    assert(bytes >= 0 && count <= entriesMax)
  }

  func changes(after index: UInt64, prefix: KVBytes, limit: Int)
    -> (events: [KVChangeEvent], compactedBefore: UInt64?)
  {
    // Changes after `index` start at index + 1; all of them are here only from completeFromIndex.
    if index < UInt64.max, index + 1 < completeFromIndex {
      return ([], completeFromIndex)
    }
    // First live event with index > `index`.
    var low = head
    var high = events.count
    while low < high {
      let middle = (low + high) / 2
      if events[middle].index <= index { low = middle + 1 } else { high = middle }
    }
    let limit = max(1, limit)
    var found: [KVChangeEvent] = []
    var position = low
    while position < events.count {
      let event = events[position]
      if found.count >= limit, event.index != found[found.count - 1].index { break }
      if hasBytePrefix(event.key, prefix) { found.append(event) }
      position += 1
    }
    return (found, nil)
  }

  private static func size(of event: KVChangeEvent) -> Int {
    event.key.count + event.value.count + 32
  }
}
