import Consensus

/// Keys and values are raw bytes; keys order lexicographically by unsigned byte.
public typealias KVBytes = [UInt8]

/// A condition on a key's current revision, checked when the command is applied.
public enum KVPrecondition: Sendable, Equatable, Hashable {
  case none
  /// The key must exist with exactly this revision (`If-Match: "<rev>"`, `ifRevision`).
  case revisionEquals(UInt64)
  /// The key must not exist (`If-None-Match: *`, `ifRevision: 0`).
  case absent
}

public enum KVOperation: Sendable, Equatable {
  case put(key: KVBytes, value: KVBytes, precondition: KVPrecondition)
  case delete(key: KVBytes, precondition: KVPrecondition)
}

/// One write: a batch of operations applied atomically as one log entry. All preconditions are
/// checked before any operation is applied; one failure fails the whole batch.
public struct KVCommand: Sendable, Equatable {
  public var operations: [KVOperation]
  /// A client-chosen id: a retried command with the same id is applied at most once and answered
  /// with the first outcome (remembered in a bounded table that survives snapshots).
  public var idempotencyKey: String?

  public init(operations: [KVOperation], idempotencyKey: String? = nil) {
    self.operations = operations
    self.idempotencyKey = idempotencyKey
  }
}

public enum KVOperationResult: Sendable, Equatable {
  /// The new revision of the key (the entry's index).
  case put(revision: UInt64)
  /// Whether a key existed and was removed.
  case delete(deleted: Bool)
}

public enum KVWriteOutcome: Sendable, Equatable {
  case applied([KVOperationResult])
  /// Operation `operationIndex` failed its precondition; `currentRevision` is nil when the key is absent.
  case preconditionFailed(operationIndex: Int, key: KVBytes, currentRevision: UInt64?)
  /// The command bytes could not be decoded or break a limit; nothing was applied.
  case rejected(String)
  /// The command's idempotency key was already used by the same operations: nothing was applied
  /// now, and `outcome` is what the first command got when it was applied at `originalIndex`.
  /// `commandDigest` identifies those operations (`KVCodec.digest(of:)`), so that a different
  /// command reusing the key is refused instead of answered with another command's result.
  indirect case replayed(originalIndex: UInt64, commandDigest: UInt64, outcome: KVWriteOutcome)
}

public struct KVEntry: Sendable, Equatable {
  public var key: KVBytes
  public var value: KVBytes
  /// The index of the entry that last changed the key.
  public var revision: UInt64

  public init(key: KVBytes, value: KVBytes, revision: UInt64) {
    self.key = key
    self.value = value
    self.revision = revision
  }
}

public enum KVQuery: Sendable, Equatable {
  case get(key: KVBytes)
  /// Keys starting with `prefix`, strictly after `after` (when given), in order, at most `limit`.
  case list(prefix: KVBytes, after: KVBytes?, limit: Int)
  /// Recent changes with index > `after` to keys starting with `prefix` (what a watch reports).
  case changes(after: UInt64, prefix: KVBytes, limit: Int)
  /// The state machine's whole snapshot (`takeSnapshot()`): a backup of the group exactly at the
  /// index the read observed, since the engine runs a query between two applies.
  /// When the snapshot would be larger than `bytesMax`, it is not built: the answer is
  /// `snapshotTooLarge` with its size (known without building it, `snapshotByteCount`).
  case snapshot(bytesMax: UInt64)
}

public enum KVQueryResult: Sendable, Equatable {
  case get(KVEntry?)
  case list(items: [KVEntry], more: Bool)
  /// `compactedBefore` is set when changes after the asked index are no longer retained.
  case changes(events: [KVChangeEvent], compactedBefore: UInt64?)
  /// The snapshot bytes (`KeyValueStateMachine.takeSnapshot()` format).
  case snapshot(KVBytes)
  /// The snapshot was not built: it would be `bytes` long, over the query's `bytesMax`.
  case snapshotTooLarge(bytes: UInt64)
}

/// Limits the state machine enforces on every command it decodes.
public enum KVLimits {
  public static let keyBytesMax = 4096
  public static let operationsPerCommandMax = 1024
  public static let queriesPerReadMax = 1024
  public static let listLimitMax = 10_000
  /// Key and value bytes one listing page carries at most (past its first item): bounds the memory
  /// and the time one read holds the group, whatever the values' sizes.
  public static let listPageBytesMax = 4 << 20
  public static let idempotencyKeyBytesMax = 256
  /// Default size of the idempotency table (oldest ids are forgotten first).
  public static let idempotencyEntriesDefault = 100_000
  /// Default bounds of the in-memory change history behind watches (per group, per replica):
  /// enough for a dashboard that polls every few seconds at thousands of writes per second,
  /// while a group of large values cannot hold more than `historyBytesDefault` of them.
  public static let historyEntriesDefault = 10_000
  public static let historyBytesDefault = 16 << 20
}
