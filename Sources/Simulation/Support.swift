import RaftCore

/// FNV-1a, 64 bits: a deterministic digest (Swift's Hasher is seeded per process).
struct Digest {
  private(set) var value: UInt64

  init(_ start: UInt64 = 0xCBF2_9CE4_8422_2325) { value = start }

  mutating func add(_ byte: UInt8) {
    value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
  }
  mutating func add(_ number: UInt64) {
    for shift in stride(from: 0, to: 64, by: 8) { add(UInt8(truncatingIfNeeded: number >> UInt64(shift))) }
  }
  mutating func add(_ bytes: [UInt8]) {
    add(UInt64(bytes.count))
    for byte in bytes { add(byte) }
  }

  static func of(_ entry: Entry) -> UInt64 {
    var digest = Digest()
    digest.add(entry.term)
    digest.add(entry.index)
    digest.add(entry.kind.rawValue)
    digest.add(entry.data)
    return digest.value
  }
}

extension SplitMix64 {
  /// Uniform in 0..<bound (bound > 0).
  mutating func below(_ bound: Int) -> Int {
    precondition(bound > 0, "bound must be positive")
    return Int(next() % UInt64(bound))
  }
  /// True with the given probability in parts per million.
  mutating func chance(ppm: Int) -> Bool { ppm > 0 && below(1_000_000) < ppm }
  mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// A min-heap of timed events; ties break by insertion order, so runs are deterministic.
struct EventQueue<Payload> {
  private var heap: [(time: Int, sequence: Int, payload: Payload)] = []
  private var sequence = 0

  var isEmpty: Bool { heap.isEmpty }
  var count: Int { heap.count }

  mutating func push(time: Int, _ payload: Payload) {
    sequence += 1
    heap.append((time, sequence, payload))
    var child = heap.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      if less(child, parent) {
        heap.swapAt(child, parent)
        child = parent
      } else {
        break
      }
    }
  }

  /// The earliest event's time.
  var peekTime: Int? { heap.first?.time }

  mutating func pop() -> (time: Int, payload: Payload)? {
    guard !heap.isEmpty else { return nil }
    heap.swapAt(0, heap.count - 1)
    let top = heap.removeLast()
    var parent = 0
    while true {
      let left = 2 * parent + 1
      let right = left + 1
      var smallest = parent
      if left < heap.count && less(left, smallest) { smallest = left }
      if right < heap.count && less(right, smallest) { smallest = right }
      if smallest == parent { break }
      heap.swapAt(parent, smallest)
      parent = smallest
    }
    return (top.time, top.payload)
  }

  private func less(_ a: Int, _ b: Int) -> Bool {
    heap[a].time < heap[b].time || (heap[a].time == heap[b].time && heap[a].sequence < heap[b].sequence)
  }
}

/// One line of the trace, kept as values and formatted only when a violation is reported.
enum TraceEvent {
  case deliver(time: Int, from: Int, to: Int, group: UInt64, message: Message)
  case drop(time: Int, from: Int, to: Int, messages: Int, reason: String)
  case role(time: Int, node: Int, group: UInt64, role: Role, term: Term, lastIndex: LogIndex, committed: LogIndex)
  case crash(time: Int, node: Int, torn: Bool)
  case restart(time: Int, node: Int)
  case partition(time: Int, description: String)
  case propose(time: Int, node: Int, group: UInt64, index: LogIndex, what: String)
  case compact(time: Int, node: Int, group: UInt64, index: LogIndex)
  case note(time: Int, text: String)

  var text: String {
    switch self {
    case .deliver(let time, let from, let to, let group, let message):
      var text = "t=\(time) n\(from)→n\(to) g\(group) \(message.kind) term=\(message.term)"
      switch message.kind {
      case .append:
        text += " prev=\(message.index)/\(message.logTerm) entries=\(message.entries.count) commit=\(message.commit)"
      case .appendResponse:
        text += " index=\(message.index)"
        if message.reject { text += " reject hint=\(message.rejectHint)/\(message.logTerm)" }
      case .vote, .preVote:
        text += " last=\(message.index)/\(message.logTerm)"
      case .voteResponse, .preVoteResponse:
        text += message.reject ? " reject" : " granted"
      case .heartbeat, .heartbeatResponse:
        text += " commit=\(message.commit) context=\(message.context)"
      case .snapshot:
        text += " snapshot=\(message.snapshot?.index ?? 0)/\(message.snapshot?.term ?? 0)"
      case .quiesce:
        text += " last=\(message.index)/\(message.logTerm) commit=\(message.commit)"
      case .timeoutNow:
        break
      }
      return text
    case .drop(let time, let from, let to, let messages, let reason):
      return "t=\(time) drop n\(from)→n\(to) \(messages) messages (\(reason))"
    case .role(let time, let node, let group, let role, let term, let lastIndex, let committed):
      return "t=\(time) n\(node) g\(group) is \(role) term=\(term) last=\(lastIndex) commit=\(committed)"
    case .crash(let time, let node, let torn): return "t=\(time) crash n\(node)" + (torn ? " (torn write)" : "")
    case .restart(let time, let node): return "t=\(time) restart n\(node)"
    case .partition(let time, let description): return "t=\(time) network \(description)"
    case .propose(let time, let node, let group, let index, let what):
      return "t=\(time) n\(node) g\(group) propose \(what) at \(index)"
    case .compact(let time, let node, let group, let index): return "t=\(time) n\(node) g\(group) compact to \(index)"
    case .note(let time, let text): return "t=\(time) \(text)"
    }
  }
}

/// The last `capacity` trace events.
struct TraceRing {
  let capacity: Int
  private var events: [TraceEvent] = []
  private var next = 0

  init(capacity: Int) { self.capacity = capacity }

  mutating func append(_ event: TraceEvent) {
    if events.count < capacity {
      events.append(event)
    } else {
      events[next] = event
      next = (next + 1) % capacity
    }
  }

  var lines: [String] {
    (events[next...] + events[..<next]).map(\.text)
  }
}
