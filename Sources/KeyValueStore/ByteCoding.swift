// Little-endian, length-prefixed byte coding shared by `KVCodec` and the snapshot format.
// Every read is bounds-checked before it touches the buffer, and every length is checked against
// both its limit and the bytes that remain before anything is allocated, so hostile input can only
// make a decoder throw.

/// Why bytes could not be decoded. Decoding never crashes and never allocates from a forged length.
public enum KVCodecError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The input ended early: `needed` more bytes were required at `offset`.
  case truncated(offset: Int, needed: Int)
  /// The leading format-version byte is not one this build understands.
  case unsupportedVersion(UInt8)
  /// A tag byte (`field` names which) has no meaning.
  case invalidTag(field: String, value: UInt8)
  /// A length or count (`field`) is outside `minimum...maximum`.
  case limitExceeded(field: String, value: UInt64, minimum: UInt64, maximum: UInt64)
  /// A string field is not valid UTF-8.
  case invalidUTF8(field: String)
  /// Bytes remain after a complete message.
  case trailingBytes(count: Int)
  /// The structure is well formed but violates an invariant (e.g. snapshot keys out of order).
  case invalidContent(String)
  /// A snapshot's checksum does not match its contents.
  case checksumMismatch(expected: UInt32, found: UInt32)

  public var description: String {
    switch self {
    case .truncated(let offset, let needed):
      return "truncated input: \(needed) more bytes needed at offset \(offset)"
    case .unsupportedVersion(let version):
      return "unsupported format version \(version)"
    case .invalidTag(let field, let value):
      return "invalid \(field) tag \(value)"
    case .limitExceeded(let field, let value, let minimum, let maximum):
      return "\(field) is \(value), expected \(minimum)...\(maximum)"
    case .invalidUTF8(let field):
      return "\(field) is not valid UTF-8"
    case .trailingBytes(let count):
      return "\(count) unexpected bytes after the end of the message"
    case .invalidContent(let reason):
      return "invalid content: \(reason)"
    case .checksumMismatch(let expected, let found):
      return "checksum mismatch: stored \(expected), computed \(found)"
    }
  }
}

/// Appends fixed-width little-endian integers and length-prefixed byte strings.
struct ByteWriter {
  private(set) var bytes: [UInt8] = []

  init(capacity: Int = 64) {
    bytes.reserveCapacity(capacity)
  }

  mutating func writeUInt8(_ value: UInt8) {
    bytes.append(value)
  }

  mutating func writeBool(_ value: Bool) {
    bytes.append(value ? 1 : 0)
  }

  mutating func writeUInt32(_ value: UInt32) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
  }

  mutating func writeUInt64(_ value: UInt64) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
  }

  /// A `UInt32` length followed by the bytes. Callers keep lengths under 4 GiB (values are capped
  /// far below that by the gateway); a longer string is a programming error.
  mutating func writeLengthPrefixed(_ value: some Collection<UInt8>) {
    precondition(value.count <= Int(UInt32.max), "byte string longer than UInt32.max")
    writeUInt32(UInt32(value.count))
    bytes.append(contentsOf: value)
  }

  mutating func writeString(_ value: String) {
    writeLengthPrefixed(value.utf8)
  }
}

/// Reads what `ByteWriter` wrote, throwing `KVCodecError` on any shortfall or limit violation.
struct ByteReader {
  let bytes: [UInt8]
  private(set) var offset: Int
  /// Reading stops here (exclusive): lets a caller parse part of a buffer without copying it.
  let end: Int

  init(_ bytes: [UInt8]) {
    self.init(bytes, range: 0..<bytes.count)
  }

  init(_ bytes: [UInt8], range: Range<Int>) {
    precondition(
      range.lowerBound >= 0 && range.upperBound <= bytes.count, "range outside the bytes")
    self.bytes = bytes
    self.offset = range.lowerBound
    self.end = range.upperBound
  }

  var remaining: Int { end - offset }

  private func require(_ count: Int) throws(KVCodecError) {
    guard count <= remaining else { throw .truncated(offset: offset, needed: count - remaining) }
  }

  mutating func readUInt8() throws(KVCodecError) -> UInt8 {
    try require(1)
    defer { offset += 1 }
    return bytes[offset]
  }

  mutating func readBool(field: String) throws(KVCodecError) -> Bool {
    switch try readUInt8() {
    case 0: return false
    case 1: return true
    case let other: throw .invalidTag(field: field, value: other)
    }
  }

  mutating func readUInt32() throws(KVCodecError) -> UInt32 {
    try require(4)
    var value: UInt32 = 0
    for shift in 0..<4 { value |= UInt32(bytes[offset + shift]) << (8 * shift) }
    offset += 4
    return value
  }

  mutating func readUInt64() throws(KVCodecError) -> UInt64 {
    try require(8)
    var value: UInt64 = 0
    for shift in 0..<8 { value |= UInt64(bytes[offset + shift]) << (8 * shift) }
    offset += 8
    return value
  }

  /// A count in `minimum...maximum`; the caller still checks items against the remaining bytes.
  mutating func readCount(field: String, minimum: Int = 0, maximum: Int) throws(KVCodecError) -> Int
  {
    let value = try readUInt32()
    guard value >= minimum, value <= maximum else {
      throw .limitExceeded(
        field: field, value: UInt64(value), minimum: UInt64(minimum), maximum: UInt64(maximum))
    }
    return Int(value)
  }

  /// A `UInt32`-length-prefixed byte string whose length lies in `minimum...maximum`. The length is
  /// checked against the limit and the remaining input before anything is allocated.
  mutating func readLengthPrefixed(
    field: String, minimum: Int = 0, maximum: Int = Int(UInt32.max)
  ) throws(KVCodecError) -> [UInt8] {
    let length = try readCount(field: field, minimum: minimum, maximum: maximum)
    try require(length)
    defer { offset += length }
    return Array(bytes[offset..<(offset + length)])
  }

  mutating func readString(field: String, minimum: Int = 0, maximum: Int) throws(KVCodecError)
    -> String
  {
    let raw = try readLengthPrefixed(field: field, minimum: minimum, maximum: maximum)
    guard let string = String(validating: raw, as: UTF8.self) else {
      throw .invalidUTF8(field: field)
    }
    return string
  }

  func expectEnd() throws(KVCodecError) {
    guard remaining == 0 else { throw .trailingBytes(count: remaining) }
  }
}

