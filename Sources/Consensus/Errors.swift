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
  /// Storage failed (I/O error, corruption): the engine refuses work until the process restarts.
  /// The write was not acknowledged.
  case storage(String)
  /// The file system of the data directory `directory` is full (ENOSPC) or over quota (EDQUOT):
  /// the request was refused before anything of it was written. Unlike `storage`, this passes:
  /// the engine tries its storage again every `retryAfterMs` and serves writes once space returns,
  /// without a restart.
  case outOfSpace(directory: String, retryAfterMs: UInt32)
  /// The command or query was rejected before reaching the state machine.
  case invalidRequest(String)
  /// Node `node` hosts `limit` groups, the most its `setting` lets it: a creation was refused
  /// before anything of it was written. It passes once groups are deleted there, or the limit is
  /// raised (a restart); a retry of the same creation is then safe.
  case groupLimitReached(node: NodeID, limit: Int, setting: String)

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
    case .outOfSpace(let directory, let retryAfterMs):
      return "the data directory \(directory) is out of space (disk full or quota exceeded), so this node "
        + "refuses writes; free space on that file system (delete files or grow it) and the node resumes "
        + "by itself within \(retryAfterMs) ms, without a restart; reads with consistency=stale still work"
    case .invalidRequest(let what): return what
    case .groupLimitReached(let node, let limit, let setting):
      return "node \(node) hosts \(limit) groups, the most it may (\(setting) = \(limit)); delete groups on it or raise "
        + "\(setting) there (a restart), then retry"
    }
  }
}

/// A completion called exactly once, from any thread.
public typealias ConsensusCompletion<Value> = @Sendable (Result<Value, ConsensusError>) -> Void

/// The state of an engine's storage, for readiness, status and metrics.
public enum StorageCondition: Sendable, Equatable {
  /// Storage works.
  case ok
  /// The data directory's file system is full (or over quota): writes are refused with
  /// `ConsensusError.outOfSpace`, and the engine retries on its own until space returns.
  /// `reason` is the failure that started it.
  case outOfSpace(directory: String, reason: String)
  /// Storage failed otherwise (I/O error, corruption): the engine refuses work until restart.
  case failed(reason: String)

  /// An engine's condition from what it recorded: a failure (fatal) wins over out of space.
  public init(failure: String?, outOfSpace: String?, directory: String) {
    if let failure {
      self = .failed(reason: failure)
    } else if let outOfSpace {
      self = .outOfSpace(directory: directory, reason: outOfSpace)
    } else {
      self = .ok
    }
  }

  /// The name used in JSON (`GET /v1/node`) and logs.
  public var name: String {
    switch self {
    case .ok: return "ok"
    case .outOfSpace: return "out_of_space"
    case .failed: return "failed"
    }
  }
}
