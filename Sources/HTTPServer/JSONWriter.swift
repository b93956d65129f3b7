/// The one JSON writer of the project: the server's own error answers and every gateway response.
/// Members are written in the order given (stable output for clients and tests); strings are
/// escaped per RFC 8259 (quote, backslash, control characters and DEL).
private let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

/// Builds a JSON document into bytes.
public struct JSONWriter {
  public private(set) var bytes: [UInt8] = []
  private var needsComma = false

  public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

  private mutating func separate() {
    if needsComma { bytes.append(UInt8(ascii: ",")) }
    needsComma = false
  }

  public mutating func beginObject() { separate(); bytes.append(UInt8(ascii: "{")) }
  public mutating func endObject() { bytes.append(UInt8(ascii: "}")); needsComma = true }
  public mutating func beginArray() { separate(); bytes.append(UInt8(ascii: "[")) }
  public mutating func endArray() { bytes.append(UInt8(ascii: "]")); needsComma = true }

  /// Writes `"name":` — follow with exactly one value.
  public mutating func key(_ name: String) {
    separate()
    appendString(name)
    bytes.append(UInt8(ascii: ":"))
  }

  public mutating func string(_ text: String) { separate(); appendString(text); needsComma = true }
  /// A string given as UTF-8 bytes (concrete, so other modules' calls are not generic dispatch).
  public mutating func string(utf8 text: [UInt8]) { separate(); appendEscaped(text); needsComma = true }
  public mutating func number(_ value: UInt64) { separate(); bytes.append(contentsOf: String(value).utf8); needsComma = true }
  public mutating func number(_ value: Int) { separate(); bytes.append(contentsOf: String(value).utf8); needsComma = true }
  public mutating func number(_ value: Double) {
    separate()
    bytes.append(contentsOf: (value.isFinite ? String(value) : "null").utf8)
    needsComma = true
  }
  public mutating func bool(_ value: Bool) { separate(); bytes.append(contentsOf: (value ? "true" : "false").utf8); needsComma = true }
  public mutating func null() { separate(); bytes.append(contentsOf: "null".utf8); needsComma = true }

  public mutating func member(_ name: String, _ value: String) { key(name); string(value) }
  public mutating func member(_ name: String, _ value: UInt64) { key(name); number(value) }
  public mutating func member(_ name: String, _ value: Int) { key(name); number(value) }
  public mutating func member(_ name: String, _ value: Bool) { key(name); bool(value) }

  private mutating func appendString(_ text: String) { appendEscaped(text.utf8) }

  private mutating func appendEscaped(_ utf8: some Sequence<UInt8>) {
    bytes.append(UInt8(ascii: "\""))
    for byte in utf8 {
      switch byte {
      case UInt8(ascii: "\""): bytes.append(0x5C); bytes.append(byte)
      case UInt8(ascii: "\\"): bytes.append(0x5C); bytes.append(byte)
      case 0x0A: bytes.append(0x5C); bytes.append(UInt8(ascii: "n"))
      case 0x0D: bytes.append(0x5C); bytes.append(UInt8(ascii: "r"))
      case 0x09: bytes.append(0x5C); bytes.append(UInt8(ascii: "t"))
      case 0x08: bytes.append(0x5C); bytes.append(UInt8(ascii: "b"))
      case 0x0C: bytes.append(0x5C); bytes.append(UInt8(ascii: "f"))
      case 0x00..<0x20, 0x7F:
        bytes.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]])
      default: bytes.append(byte)
      }
    }
    bytes.append(UInt8(ascii: "\""))
  }
}

