import Checksum
import Consensus

/// A backup of one group's key-value state: what `GET /v1/groups/{group}/snapshot` answers and
/// `caucus backup` writes, and what `caucus restore` reads. A format of our own, apart from the
/// state machine's snapshot format (which it carries as its payload), so that a file can say what
/// it is, where it came from and whether it arrived whole before anything is done with it.
///
/// Format, version 1. Integers are fixed-width big-endian:
///
///     magic      8 bytes  "CAUCUSBK"
///     version    u16      1
///     group      u16 length (1...groupBytesMax), UTF-8 group id ("DataRegion-1")
///     index      u64      the applied index the state is exactly at
///     kind       u8 length (1...kindBytesMax), ASCII state machine kind ("kv")
///     payload    u64 length (0...payloadBytesMax), the state machine's snapshot bytes
///     checksum   u32      CRC-32C of every byte before it
///
/// Decoding checks the magic, the version, every length against its limit and the bytes that
/// remain, the checksum, and that nothing follows; it throws `KVBackupError`. The payload itself is
/// checked by `entries()` (the state machine's own snapshot checks).
public struct KVBackup: Sendable, Equatable {
  public static let magic: [UInt8] = Array("CAUCUSBK".utf8)
  public static let formatVersion: UInt16 = 1
  /// The only state machine kind so far: `KeyValueStateMachine`.
  public static let keyValueKind = "kv"
  /// Longest group id field: `PartitionRegion-4294967295` is 26 bytes.
  public static let groupBytesMax = 64
  /// Longest kind field.
  public static let kindBytesMax = 32
  /// Largest payload decoded: 4 GiB, far past what a node exports (`GatewayLimits` bounds it),
  /// so that a forged length cannot make a reader trust an impossible size.
  public static let payloadBytesMax: UInt64 = 1 << 32
  /// Bytes of a backup around its payload, without the variable-length group and kind.
  static let frameBytesMin = 8 + 2 + 2 + 8 + 1 + 8 + 4

  public var group: GroupID
  /// The applied index of the group the state is exactly at (the read's `X-Caucus-Index`).
  public var index: UInt64
  /// The state machine kind: `kv`.
  public var kind: String
  /// The state machine's snapshot bytes (`KeyValueStateMachine.takeSnapshot()`).
  public var payload: [UInt8]

  public init(group: GroupID, index: UInt64, kind: String = KVBackup.keyValueKind, payload: [UInt8]) {
    precondition(!kind.isEmpty && kind.utf8.count <= Self.kindBytesMax, "a kind of 1...\(Self.kindBytesMax) bytes")
    precondition(UInt64(payload.count) <= Self.payloadBytesMax, "a payload of at most \(Self.payloadBytesMax) bytes")
    self.group = group
    self.index = index
    self.kind = kind
    self.payload = payload
  }

  /// Bytes a backup of `group` takes around its payload: what an export's size limit leaves for
  /// the state machine's snapshot is that limit less this.
  public static func frameBytes(group: GroupID, kind: String = KVBackup.keyValueKind) -> Int {
    frameBytesMin + group.description.utf8.count + kind.utf8.count
  }

  /// The file name a backup is offered under: `DataRegion-1-42.caucus-backup`.
  public var fileName: String { Self.fileName(group: group, index: index) }

  public static func fileName(group: GroupID, index: UInt64) -> String { "\(group)-\(index).caucus-backup" }

  // MARK: Encoding

  public func encode() -> [UInt8] {
    let groupBytes = Array(group.description.utf8)
    let kindBytes = Array(kind.utf8)
    assert(groupBytes.count <= Self.groupBytesMax, "group ids are short")
    var bytes: [UInt8] = []
    bytes.reserveCapacity(Self.frameBytesMin + groupBytes.count + kindBytes.count + payload.count)
    bytes.append(contentsOf: Self.magic)
    Self.appendBigEndian(Self.formatVersion, to: &bytes)
    Self.appendBigEndian(UInt16(groupBytes.count), to: &bytes)
    bytes.append(contentsOf: groupBytes)
    Self.appendBigEndian(index, to: &bytes)
    bytes.append(UInt8(kindBytes.count))
    bytes.append(contentsOf: kindBytes)
    Self.appendBigEndian(UInt64(payload.count), to: &bytes)
    bytes.append(contentsOf: payload)
    Self.appendBigEndian(CRC32C.checksum(bytes), to: &bytes)
    assert(bytes.count == Self.frameBytes(group: group, kind: kind) + payload.count)
    return bytes
  }

  /// The CRC-32C a backup's bytes end with: names one backup (restore derives its idempotency
  /// keys from it). Only meaningful for bytes `decode` accepted.
  public static func checksum(ofEncoded bytes: [UInt8]) -> UInt32 {
    precondition(bytes.count >= 4, "an encoded backup ends with its checksum")
    return bytes.suffix(4).reduce(0) { $0 << 8 | UInt32($1) }
  }

  // MARK: Decoding

  public static func decode(_ bytes: [UInt8]) throws(KVBackupError) -> KVBackup {
    // The magic first, so that any other file is named as such rather than as truncated.
    guard bytes.count >= magic.count, bytes[0..<magic.count].elementsEqual(magic) else {
      throw .notABackup
    }
    var reader = BigEndianReader(bytes, from: magic.count)
    let version = try reader.readUInt16(field: "format version")
    guard version == formatVersion else { throw .unsupportedVersion(version) }
    let groupLength = Int(try reader.readUInt16(field: "group length"))
    guard (1...groupBytesMax).contains(groupLength) else {
      throw .invalidField("the group id length is \(groupLength) bytes; expected 1...\(groupBytesMax)")
    }
    let groupBytes = try reader.read(groupLength, field: "group id")
    let index = try reader.readUInt64(field: "index")
    let kindLength = Int(try reader.readUInt8(field: "kind length"))
    guard (1...kindBytesMax).contains(kindLength) else {
      throw .invalidField("the state machine kind length is \(kindLength) bytes; expected 1...\(kindBytesMax)")
    }
    let kindBytes = try reader.read(kindLength, field: "state machine kind")
    let payloadLength = try reader.readUInt64(field: "payload length")
    guard payloadLength <= payloadBytesMax else {
      throw .invalidField("the payload length is \(payloadLength) bytes; the limit is \(payloadBytesMax)")
    }
    let payloadStart = reader.offset
    // Checked against what remains before anything is copied: a forged length only throws.
    _ = try reader.read(Int(payloadLength), field: "payload")
    let checksumOffset = reader.offset
    let stored = try reader.readUInt32(field: "checksum")
    guard reader.offset == bytes.count else { throw .trailingBytes(count: bytes.count - reader.offset) }
    let computed = CRC32C.checksum(bytes, range: 0..<checksumOffset)
    guard stored == computed else { throw .checksumMismatch(stored: stored, computed: computed) }
    // Only now, with the bytes known whole, are the fields judged.
    guard let group = GroupID(utf8: groupBytes) else {
      throw .invalidField("the group id '\(String(decoding: groupBytes, as: UTF8.self))' is not one (DataRegion-1)")
    }
    guard let kind = String(validating: kindBytes, as: UTF8.self) else {
      throw .invalidField("the state machine kind is not UTF-8")
    }
    guard kind == keyValueKind else {
      throw .invalidField("the state machine kind is '\(kind)'; this build restores only '\(keyValueKind)'")
    }
    return KVBackup(
      group: group, index: index, kind: kind, payload: Array(bytes[payloadStart..<checksumOffset]))
  }

  /// Every key of the backed-up state, ascending, with its value and its revision in the source
  /// group. Throws `KVCodecError` when the payload is not a valid key-value snapshot (the state
  /// machine's own checks: its checksum, lengths, key order, revisions).
  public func entries() throws -> [KVEntry] {
    let machine = KeyValueStateMachine(historyEntriesMax: 0, historyBytesMax: 0)
    try machine.restore(snapshot: payload)
    var entries: [KVEntry] = []
    entries.reserveCapacity(machine.count)
    var after: KVBytes? = nil
    // Every page advances past at least one key: `count` pages at most.
    for _ in 0...machine.count {
      let page = machine.list(prefix: [], after: after, limit: KVLimits.listLimitMax)
      entries.append(contentsOf: page.items)
      guard page.more, let last = page.items.last else { break }
      after = last.key
    }
    precondition(entries.count == machine.count, "listed \(entries.count) of \(machine.count) keys")
    return entries
  }

  // MARK: Pieces

  private static func appendBigEndian<Integer: FixedWidthInteger>(_ value: Integer, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
  }
}

/// Why bytes are not a backup this build can use. Nothing is restored from such bytes.
public enum KVBackupError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The bytes do not start with `KVBackup.magic`: some other file.
  case notABackup
  /// A format version this build does not read.
  case unsupportedVersion(UInt16)
  /// The bytes end early: `field` needed `needed` more bytes at `offset` (a cut-off download).
  case truncated(field: String, offset: Int, needed: Int)
  /// Bytes follow the checksum.
  case trailingBytes(count: Int)
  /// The bytes changed since they were written.
  case checksumMismatch(stored: UInt32, computed: UInt32)
  /// Well framed and whole, but a field holds what it cannot (an unknown kind, a bad group id).
  case invalidField(String)

  public var description: String {
    switch self {
    case .notABackup:
      return "not a Caucus backup (it does not start with \"CAUCUSBK\")"
    case .unsupportedVersion(let version):
      return "backup format version \(version) is not supported (this build reads version \(KVBackup.formatVersion))"
    case .truncated(let field, let offset, let needed):
      return "the backup is truncated: the \(field) needs \(needed) more bytes at offset \(offset)"
    case .trailingBytes(let count):
      return "\(count) unexpected bytes follow the backup's checksum"
    case .checksumMismatch(let stored, let computed):
      return "the backup is corrupt: its CRC-32C is \(hex(stored)) but its bytes give \(hex(computed))"
    case .invalidField(let reason):
      return "the backup is not usable: \(reason)"
    }
  }

  private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
  }
}

/// Reads big-endian integers and byte runs, throwing `KVBackupError.truncated` past the end.
private struct BigEndianReader {
  let bytes: [UInt8]
  private(set) var offset: Int

  init(_ bytes: [UInt8], from offset: Int) {
    precondition(offset >= 0 && offset <= bytes.count, "offset inside the bytes")
    self.bytes = bytes
    self.offset = offset
  }

  mutating func read(_ count: Int, field: String) throws(KVBackupError) -> ArraySlice<UInt8> {
    precondition(count >= 0, "a non-negative length")
    let remaining = bytes.count - offset
    guard count <= remaining else { throw .truncated(field: field, offset: offset, needed: count - remaining) }
    defer { offset += count }
    return bytes[offset..<(offset + count)]
  }

  mutating func readUInt8(field: String) throws(KVBackupError) -> UInt8 {
    try read(1, field: field).first!
  }

  mutating func readUInt16(field: String) throws(KVBackupError) -> UInt16 { try readInteger(field: field) }
  mutating func readUInt32(field: String) throws(KVBackupError) -> UInt32 { try readInteger(field: field) }
  mutating func readUInt64(field: String) throws(KVBackupError) -> UInt64 { try readInteger(field: field) }

  private mutating func readInteger<Integer: FixedWidthInteger>(field: String) throws(KVBackupError) -> Integer {
    var value: Integer = 0
    for byte in try read(MemoryLayout<Integer>.size, field: field) { value = value << 8 | Integer(byte) }
    return value
  }
}
