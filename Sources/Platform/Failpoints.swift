import Glibc
import Synchronization

// Failpoints (issue 10): places in the production code where a torture harness makes a real
// `caucus serve` process die, or an I/O call fail, at an exact moment. They are armed once, at
// start, from the environment:
//
//     CAUCUS_FAILPOINTS=wal-after-append-before-fsync:crash:37,wal-fsync:eio:5
//
// A disarmed point costs an atomic load and a branch per pass; the simulator never arms them
// (it injects its faults through its own disk and network).

/// What an armed failpoint does on the pass it fires at.
public enum FailpointAction: Sendable, Equatable, CaseIterable, CustomStringConvertible {
  /// The process kills itself with SIGKILL at the point: no flush, no atexit, no unwinding —
  /// exactly `kill -9` at that instruction.
  case crash
  /// The I/O call at the point fails with EIO instead of running (I/O points only).
  case eio

  public var description: String {
    switch self {
    case .crash: return "crash"
    case .eio: return "eio"
    }
  }

  /// The action the variable names, or nil.
  public init?(name: Substring) {
    guard let action = Self.allCases.first(where: { $0.description == name }) else { return nil }
    self = action
  }
}

/// One point in the code. It fires on the `hit`-th pass after it was armed (1-based; the passes
/// before and after it go through untouched), on whichever thread makes that pass.
public final class Failpoint: Sendable, CustomStringConvertible {
  /// The name the environment variable uses.
  public let name: String
  /// The actions it may be armed with: `crash` on every point, `eio` only where an I/O call can fail.
  public let actions: [FailpointAction]
  /// Nil until armed; set once. The only thing a pass reads while the point is disarmed.
  @usableFromInline let armed = AtomicLazyReference<Arming>()
  /// Passes since the point was armed (not counted while disarmed).
  private let passes = Atomic<Int>(0)

  /// What a point was armed with. Immutable, so one atomic load hands a pass all of it.
  @usableFromInline final class Arming: Sendable {
    let action: FailpointAction
    let hit: Int
    init(action: FailpointAction, hit: Int) {
      self.action = action
      self.hit = hit
    }
  }

  public init(name: String, actions: [FailpointAction]) {
    precondition(!name.isEmpty && !name.contains(":") && !name.contains(","), "failpoint name '\(name)'")
    precondition(actions.contains(.crash), "failpoint \(name): crash is allowed on every point")
    self.name = name
    self.actions = actions
  }

  public var description: String { name }

  /// Arms the point. Once per point: a second arming is a programmer error (`Failpoints.parse`
  /// refuses a name given twice).
  public func arm(_ action: FailpointAction, hit: Int) {
    precondition(actions.contains(action), "failpoint \(name) cannot \(action)")
    precondition(hit >= 1, "failpoint \(name): hits count from 1")
    let arming = Arming(action: action, hit: hit)
    precondition(armed.storeIfNil(arming) === arming, "failpoint \(name) is armed once")
  }

  public var isArmed: Bool { armed.load() != nil }

  /// Counts one pass and says what to do: the armed action on the armed hit, nil on every other
  /// pass and whenever the point is disarmed. `pass`/`passIO` act on it; tests call it directly.
  public func countPass() -> FailpointAction? {
    guard let arming = armed.load() else { return nil }
    let count = passes.wrappingAdd(1, ordering: .relaxed).newValue
    return count == arming.hit ? arming.action : nil
  }

  /// A crash point: on its hit the process dies here. Disarmed, one atomic load and a branch
  /// (inlined into the caller).
  @inlinable
  public func pass() {
    guard _slowPath(armed.load() != nil) else { return }
    passArmed()
  }

  /// An I/O point, passed just before the call it stands for: on its hit the process dies here
  /// (crash) or the call is not made and fails as `call` would with EIO. Disarmed, one atomic
  /// load and a branch.
  @inlinable
  public func passIO(call: @autoclosure () -> String, context: @autoclosure () -> String) throws(SystemError) {
    guard _slowPath(armed.load() != nil) else { return }
    try passArmedIO(call: call(), context: context())
  }

  @usableFromInline
  func passArmed() {
    guard let action = countPass() else { return }
    // `arm` admits eio only on points that declare it, and those pass through `passIO`.
    precondition(action == .crash, "failpoint \(name) fired \(action) at a point without I/O")
    crash()
  }

  @usableFromInline
  func passArmedIO(call: String, context: String) throws(SystemError) {
    guard let action = countPass() else { return }
    switch action {
    case .crash:
      crash()
    case .eio:
      announce(action)
      throw SystemError(call: call, errno: EIO, context: "\(context) (failpoint \(name))")
    }
  }

  /// SIGKILL to ourselves, as `kill -9` from outside: the kernel ends every thread, and this
  /// one does not return from kill(2).
  private func crash() -> Never {
    announce(.crash)
    kill(getpid(), SIGKILL)
    preconditionFailure("failpoint \(name): the process outlived its own SIGKILL")
  }

  /// `failpoint <name> fired` on stderr, with one write(2): nothing buffered to lose, whatever
  /// happens next.
  private func announce(_ action: FailpointAction) {
    let line = Array("failpoint \(name) fired (action \(action), pid \(getpid()))\n".utf8)
    let attemptsMax = 8  // EINTR retries; a short write loses only the rest of the line
    for _ in 0..<attemptsMax {
      let written = line.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
      if written >= 0 || currentErrno() != EINTR { return }
    }
  }
}

/// One item of the environment variable: a point, its action, the pass it fires at.
public struct FailpointArming: Sendable, CustomStringConvertible {
  public let point: Failpoint
  public let action: FailpointAction
  public let hit: Int

  /// As the variable writes it: `name:action:hit`.
  public var description: String { "\(point.name):\(action):\(hit)" }
}

/// A value of `CAUCUS_FAILPOINTS` that cannot be honoured: which item, and why.
public struct FailpointConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
  public enum Reason: Equatable, Sendable {
    /// Not three `:`-separated fields (an empty item included).
    case notThreeFields
    case unknownName
    case unknownAction
    /// `eio` on a point that makes no I/O call.
    case actionNotAllowed
    /// Not a decimal integer from 1 to `Failpoints.hitMax`.
    case badHit
    case nameRepeated
    /// Longer than `Failpoints.variableBytesMax` or more items than `Failpoints.itemsMax`.
    case tooLong
  }

  public let item: String
  public let reason: Reason

  public var description: String {
    let variable = Failpoints.environmentVariable
    let explanation: String
    switch reason {
    case .notThreeFields:
      explanation = (item.isEmpty ? "an empty item; " : "") + "expected name:action:hit, for example wal-fsync:eio:3"
    case .unknownName:
      explanation = "no such failpoint; known: \(Failpoints.names.joined(separator: ", "))"
    case .unknownAction:
      explanation = "the action must be one of \(FailpointAction.allCases.map(\.description).joined(separator: ", "))"
    case .actionNotAllowed:
      let allowed = Failpoints.all.filter { $0.actions.contains(.eio) }.map(\.name)
      explanation = "eio is allowed only on I/O failpoints (\(allowed.joined(separator: ", "))); use crash"
    case .badHit:
      explanation = "the hit must be an integer from 1 to \(Failpoints.hitMax): the pass that fires, counting from 1"
    case .nameRepeated:
      explanation = "each failpoint may be armed once"
    case .tooLong:
      explanation =
        "at most \(Failpoints.itemsMax) items and \(Failpoints.variableBytesMax) bytes"
    }
    return "\(variable): '\(item)': \(explanation)"
  }
}

/// The process's failpoints, and how `CAUCUS_FAILPOINTS` arms them.
public enum Failpoints {
  public static let environmentVariable = "CAUCUS_FAILPOINTS"

  /// After a turn's records are appended to the log, before the turn's fsync (raft: every turn
  /// that appends records; standalone: every write batch).
  public static let walAfterAppendBeforeFsync = Failpoint(name: "wal-after-append-before-fsync", actions: [.crash])
  /// After a raft turn's fsync, before the messages that promised durability (votes,
  /// acknowledgements) leave: every turn that fsyncs.
  public static let raftAfterFsyncBeforeSend = Failpoint(name: "raft-after-fsync-before-send", actions: [.crash])
  /// After committed entries are applied to the state machine, before the callers waiting for
  /// them are answered: every raft turn that applies entries, every standalone write batch.
  public static let applyAfterApplyBeforeAnswer = Failpoint(name: "apply-after-apply-before-answer", actions: [.crash])
  /// While a snapshot this node took is written: after the file's header, before its data, fsync
  /// and rename.
  public static let snapshotSave = Failpoint(name: "snapshot-save", actions: [.crash])
  /// While a snapshot received from a leader is installed: after its file is written, before
  /// the log records the install.
  public static let snapshotInstall = Failpoint(name: "snapshot-install", actions: [.crash])
  /// The write-ahead log's fsync (the fdatasync that makes a turn's records durable).
  public static let walFsync = Failpoint(name: "wal-fsync", actions: [.crash, .eio])

  public static let all: [Failpoint] = [
    walAfterAppendBeforeFsync, raftAfterFsyncBeforeSend, applyAfterApplyBeforeAnswer, snapshotSave, snapshotInstall,
    walFsync,
  ]
  /// Every failpoint's name, what the variable accepts (a torture harness picks from these).
  public static let names: [String] = all.map(\.name)

  /// `caucus restore`, after a batch was applied (answered 2xx), before the next is sent: a
  /// restore that dies partway, for tests of `--resume`.
  public static let restoreAfterBatch = Failpoint(name: "restore-after-batch", actions: [.crash])
  /// The points of the client commands, which arm them from the same variable; kept apart from
  /// `all`, which a `caucus serve` process arms and a torture harness picks from.
  public static let clientPoints: [Failpoint] = [restoreAfterBatch]

  /// The longest value accepted: far more than every point armed once.
  public static let variableBytesMax = 4096
  /// Items at most in one value (each point once, with room for the list to grow).
  public static let itemsMax = 64
  /// The largest hit accepted: beyond any run's passes, and far from overflowing the counter.
  public static let hitMax = 1 << 48

  /// Parses a value of the variable: comma-separated `name:action:hit` items (blanks around an
  /// item are ignored; an empty or blank value arms nothing). Throws for the first bad item,
  /// never traps.
  public static func parse(_ text: String, points: [Failpoint] = all) throws(FailpointConfigurationError)
    -> [FailpointArming]
  {
    guard text.utf8.count <= variableBytesMax else {
      throw FailpointConfigurationError(item: String(text.prefix(40)) + "…", reason: .tooLong)
    }
    let trimmed = trimBlanks(Substring(text))
    if trimmed.isEmpty { return [] }
    let items = trimmed.split(separator: ",", omittingEmptySubsequences: false)
    guard items.count <= itemsMax else {
      throw FailpointConfigurationError(item: String(text.prefix(40)) + "…", reason: .tooLong)
    }
    var armings: [FailpointArming] = []
    for rawItem in items {
      let item = trimBlanks(rawItem)
      func refuse(_ reason: FailpointConfigurationError.Reason) -> FailpointConfigurationError {
        FailpointConfigurationError(item: String(item), reason: reason)
      }
      let fields = item.split(separator: ":", omittingEmptySubsequences: false)
      guard fields.count == 3 else { throw refuse(.notThreeFields) }
      guard let point = points.first(where: { $0.name == fields[0] }) else { throw refuse(.unknownName) }
      guard let action = FailpointAction(name: fields[1]) else { throw refuse(.unknownAction) }
      guard point.actions.contains(action) else { throw refuse(.actionNotAllowed) }
      // Digits only (Int takes "+3"), and no larger than `hitMax`.
      guard fields[2].utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
        let hit = Int(fields[2]), hit >= 1, hit <= hitMax
      else { throw refuse(.badHit) }
      guard !armings.contains(where: { $0.point === point }) else { throw refuse(.nameRepeated) }
      armings.append(FailpointArming(point: point, action: action, hit: hit))
    }
    precondition(armings.count == items.count, "every item armed or refused")
    return armings
  }

  /// Reads the variable, parses it and arms what it names among `points` (a client command
  /// passes `clientPoints`). Call once, at start, before the threads that pass the points run.
  /// Returns what it armed (empty when the variable is unset).
  public static func armFromEnvironment(points: [Failpoint] = all) throws(FailpointConfigurationError) -> [FailpointArming] {
    guard let value = getenv(environmentVariable) else { return [] }
    let armings = try parse(String(cString: value), points: points)
    for arming in armings { arming.point.arm(arming.action, hit: arming.hit) }
    return armings
  }

  private static func trimBlanks(_ text: Substring) -> Substring {
    let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
    guard let first = text.firstIndex(where: { !isBlank($0) }) else { return text[text.endIndex...] }
    let last = text.lastIndex(where: { !isBlank($0) })!
    return text[first...last]
  }
}
