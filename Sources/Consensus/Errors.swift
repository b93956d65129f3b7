/// Operating errors of the consensus layer; they mirror IoTDB's consensus exceptions. Each is
/// answered to the caller (the Gateway maps them to HTTP statuses), never a crash.
public enum ConsensusError: Error, Equatable, Sendable, CustomStringConvertible {
  case groupAlreadyExists(GroupID)
  case groupNotFound(GroupID)
  /// The peer list does not fit the protocol (standalone: exactly one, and it must be this node).
  case illegalPeerNumber(count: Int, reason: String)
  case peerAlreadyInGroup(NodeID, GroupID)
  case peerNotInGroup(NodeID, GroupID)
  case notLeader(GroupID, leader: Peer?)
  case noLeader(GroupID)
  /// A bounded queue is full; retry after the hint.
  case overloaded(retryAfterMs: UInt32)
  /// The deadline passed. `indeterminate` when a write may or may not have been applied.
  case timeout(indeterminate: Bool)
  /// The protocol does not offer this operation (standalone membership changes).
  case notSupported(String)
  /// The engine is stopping or stopped.
  case shuttingDown
  /// Storage failed (disk full, I/O error). The write was not acknowledged.
  case storage(String)
  /// The command or query was rejected before reaching the state machine.
  case invalidRequest(String)

  public var description: String {
    switch self {
    case .groupAlreadyExists(let group): return "group \(group) already exists"
    case .groupNotFound(let group): return "group \(group) not found on this node"
    case .illegalPeerNumber(let count, let reason): return "illegal peer number \(count): \(reason)"
    case .peerAlreadyInGroup(let node, let group): return "node \(node) is already a peer of \(group)"
    case .peerNotInGroup(let node, let group): return "node \(node) is not a peer of \(group)"
    case .notLeader(let group, let leader):
      return "this node is not the leader of \(group)" + (leader.map { "; the leader is node \($0.node)" } ?? "")
    case .noLeader(let group): return "group \(group) has no leader at the moment"
    case .overloaded(let retryAfterMs): return "the node is overloaded; retry after \(retryAfterMs) ms"
    case .timeout(let indeterminate):
      return indeterminate
        ? "the deadline passed before the outcome was known; the write may or may not have been applied"
        : "the deadline passed"
    case .notSupported(let what): return what
    case .shuttingDown: return "the node is shutting down"
    case .storage(let what): return "storage failure: \(what)"
    case .invalidRequest(let what): return what
    }
  }
}

/// A completion called exactly once, from any thread.
public typealias ConsensusCompletion<Value> = @Sendable (Result<Value, ConsensusError>) -> Void
