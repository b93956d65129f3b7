/// The application's copy of a group's data (IoTDB's `IStateMachine`).
///
/// Contract: deterministic. The same commands applied in the same order give the same state and
/// the same snapshot bytes, on every replica. The engine calls one state machine from one thread
/// at a time (it serializes `apply`, `query`, `takeSnapshot` and `restore`), so implementations need
/// no locking of their own.
public protocol StateMachine: AnyObject {
  /// Applies the committed entry at `index` (indexes are consecutive, starting after the last
  /// snapshot) and returns the result bytes answered to the writer. A malformed command gives a
  /// deterministic error result, not a crash and not a throw.
  func apply(index: UInt64, command: [UInt8]) -> [UInt8]

  /// Answers a read against the current state. No side effects.
  func query(_ request: [UInt8]) -> [UInt8]

  /// The full state as bytes, with the index it covers included by the engine beside it.
  func takeSnapshot() -> [UInt8]

  /// Replaces the whole state with a snapshot's. Throws when the bytes are not a valid snapshot.
  func restore(snapshot: [UInt8]) throws

  /// The group's leader changed (nil: unknown). Called on the engine's thread.
  func leaderChanged(to leader: NodeID?, term: UInt64)

  /// The group's membership changed.
  func configurationChanged(peers: [Peer])
}

extension StateMachine {
  public func leaderChanged(to leader: NodeID?, term: UInt64) {}
  public func configurationChanged(peers: [Peer]) {}
}

/// Maps a group to the state machine that replicates it, by group type (IoTDB's `Registry`).
public struct StateMachineRegistry: Sendable {
  public typealias Factory = @Sendable (GroupID) -> any StateMachine
  private var factories: [GroupType: Factory] = [:]
  private var fallback: Factory?

  public init() {}

  /// The state machine for every group of `type`.
  public mutating func register(_ type: GroupType, _ factory: @escaping Factory) {
    factories[type] = factory
  }

  /// The state machine for group types with no registration of their own.
  public mutating func registerDefault(_ factory: @escaping Factory) {
    fallback = factory
  }

  /// A new, empty state machine for `group`, or nil when no factory covers its type.
  public func makeStateMachine(for group: GroupID) -> (any StateMachine)? {
    (factories[group.type] ?? fallback).map { $0(group) }
  }
}
