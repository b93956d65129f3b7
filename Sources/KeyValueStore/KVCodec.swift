/// The binary encoding of the key-value store's commands, outcomes, queries and results: what the
/// gateway proposes to consensus and what `KeyValueStateMachine` answers.
///
/// Format (version 1). Every message starts with one format-version byte (`1`). Integers are
/// fixed-width little-endian. A *bytes* field is a `u32` length followed by that many bytes; a
/// *string* is bytes holding UTF-8. An *optional* is a `u8` flag (0 absent, 1 present) followed by
/// the value when present.
///
///     command     = version, optional string idempotencyKey (1...256 bytes),
///                   u32 count (0...1024), operation*count
///     operation   = u8 tag (1 put, 2 delete), precondition, bytes key (1...4096),
///                   [put only] bytes value
///     precondition= u8 tag (0 none, 1 revisionEquals, 2 absent), [revisionEquals] u64 revision
///     outcome     = version, u8 tag:
///                   1 applied: u32 count (0...1024), result*count
///                              result = u8 tag (1 put: u64 revision | 2 delete: u8 deleted)
///                   2 preconditionFailed: u32 operationIndex, bytes key, optional u64 revision
///                   3 rejected: string reason
///                   4 replayed: u64 originalIndex, u64 commandDigest, bytes outcome (an applied or
///                               preconditionFailed outcome, never another replayed one)
///     queries     = version, u32 count (0...1024), query*count
///     query       = u8 tag: 1 get: bytes key (1...4096)
///                           2 list: bytes prefix (0...4096), optional bytes after (0...4096),
///                                   u64 limit (0...10000)
///                           3 changes: u64 after, bytes prefix (0...4096), u64 limit (0...10000)
///                           4 snapshot: u64 bytesMax
///     results     = version, u32 count (0...1024), result*count
///     result      = u8 tag: 1 get: optional entry
///                           2 list: u32 count (0...10000), entry*count, u8 more
///                           3 changes: u32 count (0...10000), change*count, optional u64 compactedBefore
///                           4 snapshot: bytes snapshot (the state machine's snapshot format)
///                           5 snapshot too large: u64 bytes (the size it would have)
///     change      = u8 kind (1 put, 2 delete), u64 index, bytes key, bytes value
///     entry       = bytes key, bytes value, u64 revision
///
/// Encoding never fails; decoding checks every length against `KVLimits` and the bytes that remain,
/// rejects unknown tags and trailing bytes, and throws `KVCodecError`.
public enum KVCodec {
  /// The format-version byte every message starts with.
  public static let formatVersion: UInt8 = 1

  // MARK: Commands

  public static func encode(_ command: KVCommand) -> [UInt8] {
    var writer = ByteWriter(capacity: 16 + command.operations.count * 32)
    writer.writeUInt8(formatVersion)
    if let key = command.idempotencyKey {
      writer.writeBool(true)
      writer.writeString(key)
    } else {
      writer.writeBool(false)
    }
    writer.writeUInt32(UInt32(clamping: command.operations.count))
    for operation in command.operations {
      switch operation {
      case .put(let key, let value, let precondition):
        writer.writeUInt8(OperationTag.put)
        write(precondition, to: &writer)
        writer.writeLengthPrefixed(key)
        writer.writeLengthPrefixed(value)
      case .delete(let key, let precondition):
        writer.writeUInt8(OperationTag.delete)
        write(precondition, to: &writer)
        writer.writeLengthPrefixed(key)
      }
    }
    return writer.bytes
  }

  public static func decodeCommand(_ bytes: [UInt8]) throws -> KVCommand {
    var reader = ByteReader(bytes)
    try readVersion(&reader)
    var idempotencyKey: String? = nil
    if try reader.readBool(field: "idempotency key flag") {
      idempotencyKey = try reader.readString(
        field: "idempotency key length", minimum: 1, maximum: KVLimits.idempotencyKeyBytesMax)
    }
    let count = try reader.readCount(
      field: "operation count", maximum: KVLimits.operationsPerCommandMax)
    var operations: [KVOperation] = []
    operations.reserveCapacity(count)  // Bounded by operationsPerCommandMax.
    for _ in 0..<count {
      let tag = try reader.readUInt8()
      switch tag {
      case OperationTag.put:
        let precondition = try readPrecondition(&reader)
        let key = try readKey(&reader, field: "key length")
        let value = try reader.readLengthPrefixed(field: "value length")
        operations.append(.put(key: key, value: value, precondition: precondition))
      case OperationTag.delete:
        let precondition = try readPrecondition(&reader)
        let key = try readKey(&reader, field: "key length")
        operations.append(.delete(key: key, precondition: precondition))
      default:
        throw KVCodecError.invalidTag(field: "operation", value: tag)
      }
    }
    try reader.expectEnd()
    assert(operations.count == count)
    return KVCommand(operations: operations, idempotencyKey: idempotencyKey)
  }

  /// Checks a command against the limits its decoder enforces, so a caller (the gateway) can answer
  /// 400 before proposing a command the state machine would reject.
  public static func validate(_ command: KVCommand) throws {
    try checkRange(
      "operation count", command.operations.count, 0...KVLimits.operationsPerCommandMax)
    if let key = command.idempotencyKey {
      try checkRange(
        "idempotency key length", key.utf8.count, 1...KVLimits.idempotencyKeyBytesMax)
    }
    for operation in command.operations {
      switch operation {
      case .put(let key, let value, _):
        try checkRange("key length", key.count, 1...KVLimits.keyBytesMax)
        try checkRange("value length", value.count, 0...Int(UInt32.max))
      case .delete(let key, _):
        try checkRange("key length", key.count, 1...KVLimits.keyBytesMax)
      }
    }
  }

  /// A fingerprint of a command's operations (not its idempotency key): FNV-1a, 64 bits, over
  /// their canonical encoding. Deterministic on every replica; used to tell a genuine retry from a
  /// different command that reuses an idempotency key.
  public static func digest(of operations: [KVOperation]) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in encode(KVCommand(operations: operations)) {
      hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
    }
    return hash
  }

  // MARK: Outcomes

  public static func encode(_ outcome: KVWriteOutcome) -> [UInt8] {
    var writer = ByteWriter()
    writer.writeUInt8(formatVersion)
    switch outcome {
    case .applied(let results):
      writer.writeUInt8(OutcomeTag.applied)
      writer.writeUInt32(UInt32(clamping: results.count))
      for result in results {
        switch result {
        case .put(let revision):
          writer.writeUInt8(OperationTag.put)
          writer.writeUInt64(revision)
        case .delete(let deleted):
          writer.writeUInt8(OperationTag.delete)
          writer.writeBool(deleted)
        }
      }
    case .preconditionFailed(let operationIndex, let key, let currentRevision):
      writer.writeUInt8(OutcomeTag.preconditionFailed)
      writer.writeUInt32(UInt32(clamping: operationIndex))
      writer.writeLengthPrefixed(key)
      writeOptional(currentRevision, to: &writer)
    case .rejected(let reason):
      writer.writeUInt8(OutcomeTag.rejected)
      writer.writeString(reason)
    case .replayed(let originalIndex, let commandDigest, let original):
      writer.writeUInt8(OutcomeTag.replayed)
      writer.writeUInt64(originalIndex)
      writer.writeUInt64(commandDigest)
      writer.writeLengthPrefixed(encode(original))
    }
    return writer.bytes
  }

  public static func decodeWriteOutcome(_ bytes: [UInt8]) throws -> KVWriteOutcome {
    var reader = ByteReader(bytes)
    try readVersion(&reader)
    let outcome: KVWriteOutcome
    let tag = try reader.readUInt8()
    switch tag {
    case OutcomeTag.applied:
      let count = try reader.readCount(
        field: "result count", maximum: KVLimits.operationsPerCommandMax)
      var results: [KVOperationResult] = []
      results.reserveCapacity(count)
      for _ in 0..<count {
        let resultTag = try reader.readUInt8()
        switch resultTag {
        case OperationTag.put: results.append(.put(revision: try reader.readUInt64()))
        case OperationTag.delete:
          results.append(.delete(deleted: try reader.readBool(field: "deleted flag")))
        default: throw KVCodecError.invalidTag(field: "operation result", value: resultTag)
        }
      }
      outcome = .applied(results)
    case OutcomeTag.preconditionFailed:
      let operationIndex = try reader.readCount(
        field: "operation index", maximum: KVLimits.operationsPerCommandMax - 1)
      let key = try readKey(&reader, field: "key length")
      let currentRevision: UInt64? =
        try reader.readBool(field: "revision flag") ? try reader.readUInt64() : nil
      outcome = .preconditionFailed(
        operationIndex: operationIndex, key: key, currentRevision: currentRevision)
    case OutcomeTag.rejected:
      outcome = .rejected(
        try reader.readString(field: "reason length", maximum: rejectionReasonBytesMax))
    case OutcomeTag.replayed:
      let originalIndex = try reader.readUInt64()
      let commandDigest = try reader.readUInt64()
      let original = try decodeWriteOutcome(try reader.readLengthPrefixed(field: "replayed outcome length"))
      switch original {
      case .applied, .preconditionFailed: break
      case .rejected, .replayed: throw KVCodecError.invalidContent("a replayed outcome wraps an applied or failed one")
      }
      outcome = .replayed(originalIndex: originalIndex, commandDigest: commandDigest, outcome: original)
    default:
      throw KVCodecError.invalidTag(field: "outcome", value: tag)
    }
    try reader.expectEnd()
    return outcome
  }

  // MARK: Queries

  public static func encode(queries: [KVQuery]) -> [UInt8] {
    var writer = ByteWriter()
    writer.writeUInt8(formatVersion)
    writer.writeUInt32(UInt32(clamping: queries.count))
    for query in queries {
      switch query {
      case .get(let key):
        writer.writeUInt8(QueryTag.get)
        writer.writeLengthPrefixed(key)
      case .list(let prefix, let after, let limit):
        writer.writeUInt8(QueryTag.list)
        writer.writeLengthPrefixed(prefix)
        if let after {
          writer.writeBool(true)
          writer.writeLengthPrefixed(after)
        } else {
          writer.writeBool(false)
        }
        // A negative limit becomes a huge one, which the decoder rejects rather than misreads.
        writer.writeUInt64(UInt64(bitPattern: Int64(limit)))
      case .changes(let after, let prefix, let limit):
        writer.writeUInt8(QueryTag.changes)
        writer.writeUInt64(after)
        writer.writeLengthPrefixed(prefix)
        writer.writeUInt64(UInt64(bitPattern: Int64(limit)))
      case .snapshot(let bytesMax):
        writer.writeUInt8(QueryTag.snapshot)
        writer.writeUInt64(bytesMax)
      }
    }
    return writer.bytes
  }

  public static func decodeQueries(_ bytes: [UInt8]) throws -> [KVQuery] {
    var reader = ByteReader(bytes)
    try readVersion(&reader)
    let count = try reader.readCount(field: "query count", maximum: KVLimits.queriesPerReadMax)
    var queries: [KVQuery] = []
    queries.reserveCapacity(count)
    for _ in 0..<count {
      let tag = try reader.readUInt8()
      switch tag {
      case QueryTag.get:
        queries.append(.get(key: try readKey(&reader, field: "key length")))
      case QueryTag.list:
        let prefix = try reader.readLengthPrefixed(
          field: "prefix length", maximum: KVLimits.keyBytesMax)
        var after: KVBytes? = nil
        if try reader.readBool(field: "after flag") {
          after = try reader.readLengthPrefixed(
            field: "after length", maximum: KVLimits.keyBytesMax)
        }
        let limit = try reader.readUInt64()
        guard limit <= UInt64(KVLimits.listLimitMax) else {
          throw KVCodecError.limitExceeded(
            field: "list limit", value: limit, minimum: 0, maximum: UInt64(KVLimits.listLimitMax))
        }
        queries.append(.list(prefix: prefix, after: after, limit: Int(limit)))
      case QueryTag.changes:
        let after = try reader.readUInt64()
        let prefix = try reader.readLengthPrefixed(field: "prefix length", maximum: KVLimits.keyBytesMax)
        let limit = try reader.readUInt64()
        guard limit <= UInt64(KVLimits.listLimitMax) else {
          throw KVCodecError.limitExceeded(
            field: "changes limit", value: limit, minimum: 0, maximum: UInt64(KVLimits.listLimitMax))
        }
        queries.append(.changes(after: after, prefix: prefix, limit: Int(limit)))
      case QueryTag.snapshot:
        queries.append(.snapshot(bytesMax: try reader.readUInt64()))
      default:
        throw KVCodecError.invalidTag(field: "query", value: tag)
      }
    }
    try reader.expectEnd()
    return queries
  }

  // MARK: Query results

  public static func encode(results: [KVQueryResult]) -> [UInt8] {
    var writer = ByteWriter()
    writer.writeUInt8(formatVersion)
    writer.writeUInt32(UInt32(clamping: results.count))
    for result in results {
      switch result {
      case .get(let entry):
        writer.writeUInt8(QueryTag.get)
        if let entry {
          writer.writeBool(true)
          write(entry, to: &writer)
        } else {
          writer.writeBool(false)
        }
      case .list(let items, let more):
        writer.writeUInt8(QueryTag.list)
        writer.writeUInt32(UInt32(clamping: items.count))
        for item in items { write(item, to: &writer) }
        writer.writeBool(more)
      case .changes(let events, let compactedBefore):
        writer.writeUInt8(QueryTag.changes)
        writer.writeUInt32(UInt32(clamping: events.count))
        for event in events {
          writer.writeUInt8(event.kind == .put ? ChangeTag.put : ChangeTag.delete)
          writer.writeUInt64(event.index)
          writer.writeLengthPrefixed(event.key)
          writer.writeLengthPrefixed(event.value)
        }
        if let compactedBefore {
          writer.writeBool(true)
          writer.writeUInt64(compactedBefore)
        } else {
          writer.writeBool(false)
        }
      case .snapshot(let snapshot):
        writer.writeUInt8(QueryTag.snapshot)
        writer.writeLengthPrefixed(snapshot)
      case .snapshotTooLarge(let bytes):
        writer.writeUInt8(QueryTag.snapshotTooLarge)
        writer.writeUInt64(bytes)
      }
    }
    return writer.bytes
  }

  public static func decodeQueryResults(_ bytes: [UInt8]) throws -> [KVQueryResult] {
    var reader = ByteReader(bytes)
    try readVersion(&reader)
    let count = try reader.readCount(field: "result count", maximum: KVLimits.queriesPerReadMax)
    var results: [KVQueryResult] = []
    results.reserveCapacity(count)
    for _ in 0..<count {
      let tag = try reader.readUInt8()
      switch tag {
      case QueryTag.get:
        let entry: KVEntry? =
          try reader.readBool(field: "entry flag") ? try readEntry(&reader) : nil
        results.append(.get(entry))
      case QueryTag.list:
        let itemCount = try reader.readCount(field: "item count", maximum: KVLimits.listLimitMax)
        var items: [KVEntry] = []
        items.reserveCapacity(min(itemCount, reader.remaining / entryBytesMin))
        for _ in 0..<itemCount { items.append(try readEntry(&reader)) }
        let more = try reader.readBool(field: "more flag")
        results.append(.list(items: items, more: more))
      case QueryTag.changes:
        let eventCount = try reader.readCount(field: "change count", maximum: KVLimits.listLimitMax)
        var events: [KVChangeEvent] = []
        events.reserveCapacity(min(eventCount, reader.remaining / entryBytesMin))
        for _ in 0..<eventCount {
          let kindTag = try reader.readUInt8()
          guard kindTag == ChangeTag.put || kindTag == ChangeTag.delete else {
            throw KVCodecError.invalidTag(field: "change kind", value: kindTag)
          }
          let index = try reader.readUInt64()
          let key = try readKey(&reader, field: "change key length")
          let value = try reader.readLengthPrefixed(field: "change value length", maximum: Int(UInt32.max))
          events.append(KVChangeEvent(index: index, kind: kindTag == ChangeTag.put ? .put : .delete, key: key, value: value))
        }
        let compactedBefore: UInt64? = try reader.readBool(field: "compacted flag") ? try reader.readUInt64() : nil
        results.append(.changes(events: events, compactedBefore: compactedBefore))
      case QueryTag.snapshot:
        results.append(.snapshot(try reader.readLengthPrefixed(field: "snapshot length")))
      case QueryTag.snapshotTooLarge:
        results.append(.snapshotTooLarge(bytes: try reader.readUInt64()))
      default:
        throw KVCodecError.invalidTag(field: "query result", value: tag)
      }
    }
    try reader.expectEnd()
    return results
  }

  // MARK: Pieces

  /// Longest `rejected` reason decoded; ours are one short sentence.
  static let rejectionReasonBytesMax = 4096
  /// The smallest encoded entry: two empty-ish lengths and a revision (keys are ≥ 1 byte).
  static let entryBytesMin = 4 + 1 + 4 + 8

  enum OperationTag {
    static let put: UInt8 = 1
    static let delete: UInt8 = 2
  }

  enum OutcomeTag {
    static let applied: UInt8 = 1
    static let preconditionFailed: UInt8 = 2
    static let rejected: UInt8 = 3
    static let replayed: UInt8 = 4
  }

  enum QueryTag {
    static let get: UInt8 = 1
    static let list: UInt8 = 2
    static let changes: UInt8 = 3
    static let snapshot: UInt8 = 4
    /// A result tag only.
    static let snapshotTooLarge: UInt8 = 5
  }

  enum ChangeTag {
    static let put: UInt8 = 1
    static let delete: UInt8 = 2
  }

  enum PreconditionTag {
    static let none: UInt8 = 0
    static let revisionEquals: UInt8 = 1
    static let absent: UInt8 = 2
  }

  static func readVersion(_ reader: inout ByteReader) throws(KVCodecError) {
    let version = try reader.readUInt8()
    guard version == formatVersion else { throw .unsupportedVersion(version) }
  }

  static func readKey(_ reader: inout ByteReader, field: String) throws(KVCodecError) -> KVBytes {
    try reader.readLengthPrefixed(field: field, minimum: 1, maximum: KVLimits.keyBytesMax)
  }

  static func write(_ entry: KVEntry, to writer: inout ByteWriter) {
    writer.writeLengthPrefixed(entry.key)
    writer.writeLengthPrefixed(entry.value)
    writer.writeUInt64(entry.revision)
  }

  static func readEntry(_ reader: inout ByteReader) throws(KVCodecError) -> KVEntry {
    let key = try readKey(&reader, field: "key length")
    let value = try reader.readLengthPrefixed(field: "value length")
    let revision = try reader.readUInt64()
    return KVEntry(key: key, value: value, revision: revision)
  }

  private static func write(_ precondition: KVPrecondition, to writer: inout ByteWriter) {
    switch precondition {
    case .none:
      writer.writeUInt8(PreconditionTag.none)
    case .revisionEquals(let revision):
      writer.writeUInt8(PreconditionTag.revisionEquals)
      writer.writeUInt64(revision)
    case .absent:
      writer.writeUInt8(PreconditionTag.absent)
    }
  }

  private static func readPrecondition(_ reader: inout ByteReader) throws(KVCodecError)
    -> KVPrecondition
  {
    let tag = try reader.readUInt8()
    switch tag {
    case PreconditionTag.none: return .none
    case PreconditionTag.revisionEquals: return .revisionEquals(try reader.readUInt64())
    case PreconditionTag.absent: return .absent
    default: throw .invalidTag(field: "precondition", value: tag)
    }
  }

  private static func writeOptional(_ value: UInt64?, to writer: inout ByteWriter) {
    if let value {
      writer.writeBool(true)
      writer.writeUInt64(value)
    } else {
      writer.writeBool(false)
    }
  }

  private static func checkRange(_ field: String, _ value: Int, _ range: ClosedRange<Int>)
    throws(KVCodecError)
  {
    guard range.contains(value) else {
      throw .limitExceeded(
        field: field, value: UInt64(value), minimum: UInt64(range.lowerBound),
        maximum: UInt64(range.upperBound))
    }
  }
}
