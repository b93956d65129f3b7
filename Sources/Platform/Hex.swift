/// Hexadecimal text for bytes: digests, MACs and tokens in logs, files and headers.
public enum Hex {
  private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

  /// Two lowercase digits per byte, most significant first: `[0xAB, 0x01]` → `"ab01"`.
  public static func encode(_ bytes: some Collection<UInt8>) -> String {
    let count = bytes.count * 2
    return String(unsafeUninitializedCapacity: count) { text in
      var position = 0
      for byte in bytes {
        text[position] = digits[Int(byte >> 4)]
        text[position + 1] = digits[Int(byte & 0x0F)]
        position += 2
      }
      precondition(position == count, "the collection yielded a different number of bytes than its count")
      return position
    }
  }

  /// The bytes `encode` wrote, in either case; nil for an odd number of digits or anything that is
  /// not a hex digit (no prefix, separators or whitespace).
  public static func decode(_ text: some StringProtocol) -> [UInt8]? {
    let utf8 = text.utf8
    guard utf8.count % 2 == 0 else { return nil }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(utf8.count / 2)
    var iterator = utf8.makeIterator()
    while let highDigit = iterator.next() {
      let lowDigit = iterator.next()!  // the count is even
      guard let high = digitValue(highDigit), let low = digitValue(lowDigit) else { return nil }
      bytes.append(high << 4 | low)
    }
    precondition(bytes.count == utf8.count / 2)
    return bytes
  }

  /// The value of one ASCII hex digit (`0`–`9`, `a`–`f`, `A`–`F`); nil for any other byte.
  @inline(__always)
  public static func digitValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
  }
}
