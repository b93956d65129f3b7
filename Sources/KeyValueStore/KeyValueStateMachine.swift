import Checksum
import Consensus

/// The built-in replicated state machine: an ordered key-value store with revisions,
/// compare-and-set, atomic batches and idempotent retries.
///
/// Commands, outcomes, queries and results travel as `KVCodec` bytes. The state is deterministic:
/// the same commands at the same indexes give the same state and the same snapshot bytes on every
/// replica (no randomness, no clocks, no hash-order iteration).
///
/// Not thread-safe: the engine calls one state machine from one thread at a time.
public final class KeyValueStateMachine: StateMachine {
  struct StoredValue {
    var value: KVBytes
    /// The index of the entry that last put the key.
    var revision: UInt64
  }

  private var entries = OrderedBytesMap<StoredValue>()
  /// What `entries` take in a snapshot (`entrySnapshotBytes` each), kept as they change, so a
  /// snapshot's size is known before it is built (`snapshotByteCount`).
  private var entriesSnapshotBytes = 0
  private var idempotency: IdempotencyTable
  private var history: ChangeHistory

  /// The index of the last `apply` (0 before the first), restored from snapshots.
  /// Invariant: every stored revision is ≤ `lastAppliedIndex`.
  public private(set) var lastAppliedIndex: UInt64 = 0

  /// - Parameters:
  ///   - idempotencyEntriesMax: how many idempotency keys are remembered (oldest forgotten first).
  ///     Part of the replicated behaviour: every replica of a group must use the same value.
  ///   - historyEntriesMax, historyBytesMax: bounds of the in-memory change history behind
  ///     `changes(after:prefix:limit:)` (not replicated, not in snapshots; 0 disables it).
  public init(
    idempotencyEntriesMax: Int = KVLimits.idempotencyEntriesDefault,
    historyEntriesMax: Int = KVLimits.historyEntriesDefault,
    historyBytesMax: Int = KVLimits.historyBytesDefault
  ) {
    idempotency = IdempotencyTable(entriesMax: idempotencyEntriesMax)
    history = ChangeHistory(entriesMax: historyEntriesMax, bytesMax: historyBytesMax)
  }

  /// The number of keys.
  public var count: Int { entries.count }

  /// The number of idempotency keys remembered.
  public var idempotencyEntryCount: Int { idempotency.count }

  // MARK: StateMachine

  /// Applies one encoded `KVCommand` and returns the encoded `KVWriteOutcome`:
  /// - undecodable bytes or a broken limit → `.rejected(reason)`, nothing changes;
  /// - an idempotency key already remembered for the same operations → `.replayed` with the first
///   outcome and its index; for other operations → `.rejected`; nothing changes;
  /// - a failed precondition (all are checked against the state before the batch, before anything
  ///   is applied) → `.preconditionFailed` for the first failing operation, nothing changes;
  /// - otherwise every operation is applied in order (puts take revision `index`) → `.applied`.
  /// Applied and precondition-failed outcomes are remembered under the command's idempotency key;
  /// rejected ones are not (their key could not be read).
  ///
  /// `index` must exceed `lastAppliedIndex` (the engine applies each entry once, in log order).
  public func apply(index: UInt64, command: [UInt8]) -> [UInt8] {
    precondition(
      index > lastAppliedIndex,
      "apply at index \(index), but index \(lastAppliedIndex) is already applied")
    lastAppliedIndex = index
    let decoded: KVCommand
    do {
      decoded = try KVCodec.decodeCommand(command)
    } catch {
      return KVCodec.encode(KVWriteOutcome.rejected("invalid command: \(error)"))
    }
    let digest = decoded.idempotencyKey == nil ? 0 : KVCodec.digest(of: decoded.operations)
    if let key = decoded.idempotencyKey, let remembered = idempotency.outcome(for: key) {
      // A retry of the same operations gets the first answer; other operations reusing the key
      // are refused (and not remembered), never answered with another command's result.
      if case .replayed(_, let rememberedDigest, _)? = try? KVCodec.decodeWriteOutcome(remembered),
        rememberedDigest == digest
      {
        return remembered
      }
      return KVCodec.encode(KVWriteOutcome.rejected(
        "the Idempotency-Key was first used for a different request; use a new key for a new request"))
    }
    let outcome = execute(index: index, operations: decoded.operations)
    if let key = decoded.idempotencyKey {
      // Remembered as the answer a retry gets: the first outcome and the index it was applied at.
      idempotency.remember(
        key, outcome: KVCodec.encode(.replayed(originalIndex: index, commandDigest: digest, outcome: outcome)))
    }
    return KVCodec.encode(outcome)
  }

  /// Answers encoded `[KVQuery]` with encoded `[KVQueryResult]`, one result per query, in order.
  /// A request that does not decode is answered with an empty result list (`encode(results: [])`),
  /// so a result count different from the query count means the request was refused.
  public func query(_ request: [UInt8]) -> [UInt8] {
    guard let queries = try? KVCodec.decodeQueries(request) else {
      return KVCodec.encode(results: [])
    }
    return KVCodec.encode(results: queries.map(answer))
  }

  // MARK: Typed reads

  /// Answers one query against the current state.
  public func answer(_ query: KVQuery) -> KVQueryResult {
    switch query {
    case .get(let key):
      return .get(get(key))
    case .list(let prefix, let after, let limit):
      let page = list(prefix: prefix, after: after, limit: limit)
      return .list(items: page.items, more: page.more)
    case .changes(let after, let prefix, let limit):
      let found = changes(after: after, prefix: prefix, limit: limit)
      return .changes(events: found.events, compactedBefore: found.compactedBefore)
    case .snapshot(let bytesMax):
      let bytes = UInt64(snapshotByteCount)
      guard bytes <= bytesMax else { return .snapshotTooLarge(bytes: bytes) }
      return .snapshot(takeSnapshot())
    }
  }

  public func get(_ key: KVBytes) -> KVEntry? {
    entries.value(for: key).map { KVEntry(key: key, value: $0.value, revision: $0.revision) }
  }

  /// Keys starting with `prefix` and strictly greater than `after` (when given), ascending by
  /// unsigned byte, at most `limit` (clamped to `0...KVLimits.listLimitMax`) and at most
  /// `KVLimits.listPageBytesMax` bytes of keys and values (one item always fits); `more` says
  /// whether further matching keys exist.
  public func list(prefix: KVBytes, after: KVBytes?, limit: Int) -> (items: [KVEntry], more: Bool) {
    let limit = max(0, min(limit, KVLimits.listLimitMax))
    var items: [KVEntry] = []
    var more = false
    var pageBytes = 0
    // Start at whichever is later: the prefix itself (inclusive) or `after` (exclusive).
    let start: KVBytes
    let strictlyAfter: Bool
    if let after, compareBytes(after, prefix) >= 0 {
      start = after
      strictlyAfter = true
    } else {
      start = prefix
      strictlyAfter = false
    }
    entries.scan(from: start, strictlyAfter: strictlyAfter) { key, stored in
      // Keys with the prefix are contiguous: the first one without it ends the range.
      guard hasBytePrefix(key, prefix) else { return false }
      // A page ends at `limit` items or, after at least one item, at `listPageBytesMax`.
      guard items.count < limit, items.isEmpty || pageBytes + key.count + stored.value.count <= KVLimits.listPageBytesMax else {
        more = true
        return false
      }
      pageBytes += key.count + stored.value.count
      items.append(KVEntry(key: key, value: stored.value, revision: stored.revision))
      return true
    }
    assert(items.count <= limit)
    return (items, more)
  }

  // MARK: Change history

  /// Changes with index > `index` to keys starting with `prefix`, oldest first: at most `limit`
  /// events, except that the events of one index are never split (so the caller can resume from the
  /// last event's index). `compactedBefore` is non-nil when changes after `index` are no longer
  /// retained: it is the oldest index from which the history is complete (resume with
  /// `after: compactedBefore - 1`, after re-reading the state). The history is per replica, in
  /// memory only, and starts empty after a restore.
  public func changes(after index: UInt64, prefix: KVBytes, limit: Int)
    -> (events: [KVChangeEvent], compactedBefore: UInt64?)
  {
    history.changes(after: index, prefix: prefix, limit: limit)
  }

  // MARK: Applying

  private func execute(index: UInt64, operations: [KVOperation]) -> KVWriteOutcome {
    for (operationIndex, operation) in operations.enumerated() {
      let key: KVBytes
      let condition: KVPrecondition
      switch operation {
      case .put(let k, _, let c): (key, condition) = (k, c)
      case .delete(let k, let c): (key, condition) = (k, c)
      }
      if condition == .none { continue }
      let current = entries.value(for: key)?.revision
      let holds: Bool
      switch condition {
      case .none: holds = true
      case .revisionEquals(let expected): holds = current == expected
      case .absent: holds = current == nil
      }
      if !holds {
        return .preconditionFailed(
          operationIndex: operationIndex, key: key, currentRevision: current)
      }
    }
    var results: [KVOperationResult] = []
    results.reserveCapacity(operations.count)
    for operation in operations {
      switch operation {
      case .put(let key, let value, _):
        let replaced = entries.updateValue(StoredValue(value: value, revision: index), for: key)
        entriesSnapshotBytes += Self.entrySnapshotBytes(key: key, value: value)
        if let replaced { entriesSnapshotBytes -= Self.entrySnapshotBytes(key: key, value: replaced.value) }
        history.record(KVChangeEvent(index: index, kind: .put, key: key, value: value))
        results.append(.put(revision: index))
      case .delete(let key, _):
        let removed = entries.removeValue(for: key)
        if let removed { entriesSnapshotBytes -= Self.entrySnapshotBytes(key: key, value: removed.value) }
        let deleted = removed != nil
        if deleted {
          history.record(KVChangeEvent(index: index, kind: .delete, key: key, value: []))
        }
        results.append(.delete(deleted: deleted))
      }
    }
    assert(results.count == operations.count)
    return .applied(results)
  }

  // MARK: Snapshots

  /// Snapshot format, version 1 (integers little-endian, bytes = `u32` length + bytes):
  ///
  ///     u8 version, u64 lastAppliedIndex,
  ///     u64 entryCount, entryCount × (bytes key, bytes value, u64 revision)   — ascending keys
  ///     u64 idempotencyCount, idempotencyCount × (bytes key, bytes outcome)   — oldest first
  ///     u32 CRC-32C of everything before it
  ///
  /// Identical histories give identical bytes.
  public func takeSnapshot() -> [UInt8] {
    var writer = ByteWriter(capacity: 64 + entries.count * 48)
    writer.writeUInt8(Self.snapshotVersion)
    writer.writeUInt64(lastAppliedIndex)
    writer.writeUInt64(UInt64(entries.count))
    var written = 0
    entries.scan { key, stored in
      writer.writeLengthPrefixed(key)
      writer.writeLengthPrefixed(stored.value)
      writer.writeUInt64(stored.revision)
      written += 1
      return true
    }
    precondition(written == entries.count, "snapshot walked \(written) of \(entries.count) keys")
    let remembered = idempotency.entriesInEvictionOrder
    writer.writeUInt64(UInt64(remembered.count))
    for (key, outcome) in remembered {
      writer.writeString(key)
      writer.writeLengthPrefixed(outcome)
    }
    var bytes = writer.bytes
    let checksum = CRC32C.checksum(bytes)
    withUnsafeBytes(of: checksum.littleEndian) { bytes.append(contentsOf: $0) }
    precondition(bytes.count == snapshotByteCount, "snapshot is \(bytes.count) bytes; its count said \(snapshotByteCount)")
    return bytes
  }

  /// The length of `takeSnapshot()`'s bytes, known without building them: version, applied
  /// index, entry count, the entries, idempotency count, the idempotency entries, checksum.
  public var snapshotByteCount: Int { 1 + 8 + 8 + entriesSnapshotBytes + 8 + idempotency.snapshotBytes + 4 }

  /// What one key takes in a snapshot: length-prefixed key and value, and the revision.
  static func entrySnapshotBytes(key: KVBytes, value: KVBytes) -> Int { 4 + key.count + 4 + value.count + 8 }

  /// Replaces the state with a snapshot's. Throws `KVCodecError` on any corruption (checksum,
  /// truncation, limits, keys out of order, revisions past the snapshot's index, undecodable
  /// outcomes) and then leaves the current state untouched. The change history is cleared.
  /// When the snapshot remembers more idempotency keys than this machine's bound, the oldest are
  /// dropped.
  public func restore(snapshot: [UInt8]) throws {
    guard snapshot.count >= 5 else {
      throw KVCodecError.truncated(offset: snapshot.count, needed: 5 - snapshot.count)
    }
    guard snapshot[0] == Self.snapshotVersion else {
      throw KVCodecError.unsupportedVersion(snapshot[0])
    }
    let bodyEnd = snapshot.count - 4
    var stored: UInt32 = 0
    for shift in 0..<4 { stored |= UInt32(snapshot[bodyEnd + shift]) << (8 * shift) }
    let computed = CRC32C.checksum(snapshot, range: 0..<bodyEnd)
    guard stored == computed else {
      throw KVCodecError.checksumMismatch(expected: stored, found: computed)
    }

    var reader = ByteReader(snapshot, range: 1..<bodyEnd)
    let restoredIndex = try reader.readUInt64()
    // The change history starts after it (`restoredIndex + 1`): the last index is no state.
    guard restoredIndex < UInt64.max else { throw KVCodecError.invalidContent("applied index \(restoredIndex) is past the last") }
    let entryCount = try reader.readUInt64()
    guard entryCount <= UInt64(reader.remaining / KVCodec.entryBytesMin) else {
      throw KVCodecError.invalidContent("\(entryCount) entries cannot fit in the snapshot")
    }
    let restoredEntries = OrderedBytesMap<StoredValue>()
    var restoredEntriesBytes = 0
    var previousKey: KVBytes? = nil
    for _ in 0..<entryCount {
      let entry = try KVCodec.readEntry(&reader)
      if let previousKey, compareBytes(previousKey, entry.key) >= 0 {
        throw KVCodecError.invalidContent("snapshot keys are not strictly ascending")
      }
      guard entry.revision >= 1, entry.revision <= restoredIndex else {
        throw KVCodecError.invalidContent(
          "revision \(entry.revision) outside 1...\(restoredIndex)")
      }
      restoredEntries.updateValue(
        StoredValue(value: entry.value, revision: entry.revision), for: entry.key)
      restoredEntriesBytes += Self.entrySnapshotBytes(key: entry.key, value: entry.value)
      previousKey = entry.key
    }
    let idempotencyCount = try reader.readUInt64()
    guard idempotencyCount <= UInt64(reader.remaining / 10) else {
      throw KVCodecError.invalidContent("\(idempotencyCount) idempotency keys cannot fit")
    }
    var restoredIdempotency = IdempotencyTable(entriesMax: idempotency.entriesMax)
    for _ in 0..<idempotencyCount {
      let key = try reader.readString(
        field: "idempotency key length", minimum: 1, maximum: KVLimits.idempotencyKeyBytesMax)
      let outcome = try reader.readLengthPrefixed(field: "outcome length")
      _ = try KVCodec.decodeWriteOutcome(outcome)
      guard restoredIdempotency.outcome(for: key) == nil else {
        throw KVCodecError.invalidContent("idempotency key remembered twice")
      }
      restoredIdempotency.remember(key, outcome: outcome)
    }
    try reader.expectEnd()

    assert(restoredEntries.count == Int(entryCount))
    entries = restoredEntries
    entriesSnapshotBytes = restoredEntriesBytes
    idempotency = restoredIdempotency
    lastAppliedIndex = restoredIndex
    history.reset(completeFrom: restoredIndex + 1)
  }

  static let snapshotVersion: UInt8 = 1

  /// For tests: checks the ordered map's structural invariants (crashes on a violation).
  func checkInvariants() {
    entries.checkInvariants()
  }
}
