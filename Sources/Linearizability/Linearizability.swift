// A linearizability checker for recorded client histories (Wing & Gong's search with Porcupine's
// memoization of (linearized set, state)), and the key-value model the simulator checks with.
// A history is checked one key at a time: a register's history is linearizable exactly when each
// key's is (linearizability is local), and small partitions keep the search small.

/// A sequential specification: what each operation may do from a state.
public protocol LinearizabilityModel {
  associatedtype State: Hashable
  associatedtype Input
  associatedtype Output
  static var initialState: State { get }
  /// The state after `input` returned `output` in `state`, or nil when that cannot happen. A nil
  /// `output` is an unknown outcome (no answer, or `indeterminate`): any outcome is allowed.
  static func step(_ state: State, _ input: Input, _ output: Output?) -> State?
}

/// One operation of a history: called at `call`, returned at `returned` (nil: it never returned,
/// or its outcome is unknown — it may take effect at any point after its call, or never).
public struct HistoryOperation<Input, Output> {
  public var client: Int
  public var input: Input
  public var output: Output?
  public var call: UInt64
  public var returned: UInt64?

  public init(client: Int, input: Input, output: Output?, call: UInt64, returned: UInt64?) {
    precondition(returned.map { $0 >= call } ?? true, "an operation returns after its call")
    precondition(returned != nil || output == nil, "an unknown outcome has no output")
    self.client = client
    self.input = input
    self.output = output
    self.call = call
    self.returned = returned
  }
}

public enum LinearizabilityVerdict: Equatable {
  case linearizable
  case notLinearizable
  /// The search passed `statesMax` or `visitedBytesMax` without an answer: neither proven nor
  /// refuted.
  case undecided
}

public enum LinearizabilityChecker {
  /// Whether `operations` can be ordered so that each takes effect at one instant between its
  /// call and its return, in an order the model accepts.
  public static func check<Model: LinearizabilityModel>(
    _ model: Model.Type, _ operations: [HistoryOperation<Model.Input, Model.Output>], statesMax: Int = 2_000_000,
    visitedBytesMax: Int = 512 << 20
  ) -> LinearizabilityVerdict {
    precondition(statesMax >= 1 && visitedBytesMax >= 1, "positive search bounds")
    let count = operations.count
    if count == 0 { return .linearizable }
    // Events in time order; at equal times calls go first, so operations that meet at one
    // instant count as concurrent (the permissive reading).
    var events: [LinearizationEvent] = []
    events.reserveCapacity(2 * count)
    for (position, operation) in operations.enumerated() {
      events.append(LinearizationEvent(operation: position, isCall: true, time: operation.call))
      events.append(LinearizationEvent(operation: position, isCall: false, time: operation.returned ?? UInt64.max))
    }
    events.sort { left, right in
      if left.time != right.time { return left.time < right.time }
      if left.isCall != right.isCall { return left.isCall }
      return left.operation < right.operation
    }
    // A doubly linked list over the events (index `events.count` is the end), and where each
    // operation's call and return sit in it.
    let end = events.count
    var next = Array(1...end)
    var previous = Array(-1..<(end - 1))
    var head = 0
    var callAt = Array(repeating: 0, count: count)
    var returnAt = Array(repeating: 0, count: count)
    for (position, event) in events.enumerated() {
      if event.isCall { callAt[event.operation] = position } else { returnAt[event.operation] = position }
    }
    func unlink(_ position: Int) {
      if previous[position] >= 0 { next[previous[position]] = next[position] } else { head = next[position] }
      if next[position] < end { previous[next[position]] = previous[position] }
    }
    func relink(_ position: Int) {
      if previous[position] >= 0 { next[previous[position]] = position } else { head = position }
      if next[position] < end { previous[next[position]] = position }
    }
    var linearized = Array(repeating: UInt64(0), count: (count + 63) / 64)
    var visited: Set<LinearizationVisit<Model.State>> = []
    var stack: [(operation: Int, state: Model.State)] = []
    var state = Model.initialState
    var cursor = head
    var explored = 0
    while head < end {
      explored += 1
      if explored > statesMax { return .undecided }
      guard cursor < end else { return .notLinearizable }
      let event = events[cursor]
      if event.isCall {
        let operation = operations[event.operation]
        if let after = Model.step(state, operation.input, operation.output) {
          var marked = linearized
          marked[event.operation / 64] |= 1 << UInt64(event.operation % 64)
          // Every remembered point holds a bitset of the whole history: long histories (split
          // them, e.g. by rotating keys) would need quadratic memory, so the search gives up first.
          guard visited.count * (marked.count * 8 + 64) <= visitedBytesMax else { return .undecided }
          if visited.insert(LinearizationVisit(linearized: marked, state: after)).inserted {
            stack.append((event.operation, state))
            state = after
            linearized = marked
            unlink(callAt[event.operation])
            unlink(returnAt[event.operation])
            cursor = head
            continue
          }
        }
        cursor = next[cursor]
      } else {
        // An operation returned before any order placed it: undo the latest choice.
        guard let (operation, before) = stack.popLast() else { return .notLinearizable }
        state = before
        linearized[operation / 64] &= ~(1 << UInt64(operation % 64))
        relink(returnAt[operation])
        relink(callAt[operation])
        cursor = next[callAt[operation]]
      }
    }
    return .linearizable
  }
}

private struct LinearizationEvent {
  var operation: Int
  var isCall: Bool
  var time: UInt64
}

/// A point of the search already explored: which operations are linearized, and the state.
private struct LinearizationVisit<State: Hashable>: Hashable {
  var linearized: [UInt64]
  var state: State
}

/// One key of the key-value store as the simulator's clients use it. Every value written is
/// unique, so a value names the write that made it, and a compare-and-set by revision is one by
/// the value the client read with that revision.
public enum KeyValueModel: LinearizabilityModel {
  /// The key's value (nil: absent).
  public typealias State = [UInt8]?

  public enum Input: CustomStringConvertible {
    case put([UInt8])
    case get
    /// Put `new` if the key holds `expected` (nil: if it is absent).
    case compareAndSet(expected: [UInt8]?, new: [UInt8])
    case delete

    public var description: String {
      switch self {
      case .put(let value): return "put(\(KeyValueModel.show(value)))"
      case .get: return "get"
      case .compareAndSet(let expected, let new): return "cas(\(KeyValueModel.show(expected)) → \(KeyValueModel.show(new)))"
      case .delete: return "delete"
      }
    }
  }

  public enum Output: Equatable, CustomStringConvertible {
    case written
    case value([UInt8]?)
    case swapped(Bool)
    public var description: String {
      switch self {
      case .written: return "ok"
      case .value(let value): return KeyValueModel.show(value)
      case .swapped(let done): return done ? "swapped" : "refused"
      }
    }
  }

  public static var initialState: State { nil }

  public static func step(_ state: State, _ input: Input, _ output: Output?) -> State? {
    // State is itself optional (absent key): spell the outer optional out, so "illegal" can
    // never be read as "the key is absent".
    let illegal: State? = .none
    switch input {
    case .put(let value):
      guard output == nil || output == .written else { return illegal }
      return .some(.some(value))
    case .delete:
      guard output == nil || output == .written else { return illegal }
      return .some(.none)
    case .get:
      guard let output else { return .some(state) }
      guard output == .value(state) else { return illegal }
      return .some(state)
    case .compareAndSet(let expected, let new):
      let swaps = state == expected
      if let output, output != .swapped(swaps) { return illegal }
      return .some(swaps ? .some(new) : state)
    }
  }

  /// A value as reports show it: up to its padding (`|`), if any.
  static func show(_ value: [UInt8]?) -> String {
    guard let value else { return "∅" }
    return String(decoding: value.prefix { $0 != 0x7C }, as: UTF8.self)
  }
}

/// The client operations of a run, per key, as `LinearizabilityChecker` takes them.
public struct History {
  public typealias Operation = HistoryOperation<KeyValueModel.Input, KeyValueModel.Output>
  private var operations: [(key: String, operation: Operation, dropped: Bool)] = []

  public init() {}
  /// Why each dropped operation was dropped, for reports.
  public private(set) var dropReasons: [Int: String] = [:]

  /// Records a call; returns its handle.
  public mutating func start(key: String, client: Int, input: KeyValueModel.Input, call: UInt64) -> Int {
    operations.append((key, Operation(client: client, input: input, output: nil, call: call, returned: nil), false))
    return operations.count - 1
  }

  public mutating func finish(_ handle: Int, output: KeyValueModel.Output, at time: UInt64) {
    precondition(operations[handle].operation.returned == nil && !operations[handle].dropped, "finished once")
    operations[handle].operation.output = output
    operations[handle].operation.returned = time
  }

  /// The operation certainly had no effect (refused before it was proposed): not in the history.
  public mutating func discard(_ handle: Int, reason: String = "") {
    operations[handle].dropped = true
    dropReasons[handle] = reason
  }

  /// Every operation on `key`, dropped ones too, with the reason they were dropped.
  public func report(for key: String) -> [(Operation, String?)] {
    operations.enumerated().filter { $0.element.key == key }.map {
      ($0.element.operation, $0.element.dropped ? (dropReasons[$0.offset] ?? "dropped") : nil)
    }
  }

  /// The operation may or may not have taken effect: it stays with no return.
  public mutating func leaveUnknown(_ handle: Int) {}

  public var keys: [String] { Array(Set(operations.lazy.filter { !$0.dropped }.map(\.key))).sorted() }

  public func operations(for key: String) -> [Operation] {
    operations.filter { $0.key == key && !$0.dropped }.map(\.operation)
  }
}

