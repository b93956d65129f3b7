import HTTPServer
import Platform

/// A small JSON reader and writer for the gateway. Requests are bounded (the HTTP layer caps the
/// body size; `JSONParser.depthMax` caps nesting), so parsing cannot be driven into deep recursion
/// or unbounded allocation. Responses are written by hand in a fixed key order, which keeps the hot
/// path free of reflection and the output stable for tests and clients.
public enum JSONValue: Equatable, Sendable {
  case null
  case bool(Bool)
  case number(Double)
  case string(String)
  case array([JSONValue])
  case object([(String, JSONValue)])

  public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
    switch (lhs, rhs) {
    case (.null, .null): return true
    case (.bool(let a), .bool(let b)): return a == b
    case (.number(let a), .number(let b)): return a == b
    case (.string(let a), .string(let b)): return a == b
    case (.array(let a), .array(let b)): return a == b
    case (.object(let a), .object(let b)):
      return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    default: return false
    }
  }

  public subscript(key: String) -> JSONValue? {
    guard case .object(let members) = self else { return nil }
    return members.first(where: { $0.0 == key })?.1
  }

  public var stringValue: String? {
    if case .string(let text) = self { return text }
    return nil
  }

  /// An integer in 0...2^53 written without fraction or exponent surprises.
  public var unsignedIntegerValue: UInt64? {
    guard case .number(let number) = self, number >= 0, number <= 9_007_199_254_740_992,
      number.rounded(.towardZero) == number
    else { return nil }
    return UInt64(number)
  }

  public var arrayValue: [JSONValue]? {
    if case .array(let items) = self { return items }
    return nil
  }

  public var isObject: Bool {
    if case .object = self { return true }
    return false
  }
}

public struct JSONParseError: Error, Equatable, Sendable, CustomStringConvertible {
  public let offset: Int
  public let reason: String
  public var description: String { "\(reason) at byte \(offset)" }
}

public struct JSONParser {
  /// Nesting deeper than this is refused: bodies come from untrusted clients.
  public static let depthMax = 32

  private let bytes: [UInt8]
  private var position = 0

  private init(_ bytes: [UInt8]) { self.bytes = bytes }

  public static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
    var parser = JSONParser(bytes)
    parser.skipWhitespace()
    let value = try parser.parseValue(depth: 0)
    parser.skipWhitespace()
    guard parser.position == bytes.count else { throw parser.error("unexpected data after the JSON value") }
    return value
  }

  private func error(_ reason: String) -> JSONParseError { JSONParseError(offset: position, reason: reason) }

  private mutating func skipWhitespace() {
    while position < bytes.count {
      switch bytes[position] {
      case 0x20, 0x09, 0x0A, 0x0D: position += 1
      default: return
      }
    }
  }

  private mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
    guard depth < JSONParser.depthMax else { throw error("nesting deeper than \(JSONParser.depthMax)") }
    guard position < bytes.count else { throw error("unexpected end of input") }
    switch bytes[position] {
    case UInt8(ascii: "{"): return try parseObject(depth: depth)
    case UInt8(ascii: "["): return try parseArray(depth: depth)
    case UInt8(ascii: "\""): return .string(try parseString())
    case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
    case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
    case UInt8(ascii: "n"): try expectLiteral("null"); return .null
    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
    default: throw error("unexpected character")
    }
  }

  private mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
    let count = literal.utf8CodeUnitCount
    guard position + count <= bytes.count else { throw error("unexpected end of input") }
    for offset in 0..<count where bytes[position + offset] != literal.utf8Start[offset] {
      throw error("invalid literal")
    }
    position += count
  }

  private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
    position += 1
    var members: [(String, JSONValue)] = []
    var names = Set<String>()
    skipWhitespace()
    if position < bytes.count, bytes[position] == UInt8(ascii: "}") {
      position += 1
      return .object(members)
    }
    while true {
      skipWhitespace()
      guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw error("expected a member name") }
      let name = try parseString()
      skipWhitespace()
      guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else { throw error("expected ':'") }
      position += 1
      skipWhitespace()
      let value = try parseValue(depth: depth + 1)
      guard names.insert(name).inserted else { throw error("duplicate member '\(name.prefix(100))'") }
      members.append((name, value))
      skipWhitespace()
      guard position < bytes.count else { throw error("unexpected end of input") }
      if bytes[position] == UInt8(ascii: ",") {
        position += 1
        continue
      }
      guard bytes[position] == UInt8(ascii: "}") else { throw error("expected ',' or '}'") }
      position += 1
      return .object(members)
    }
  }

  private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
    position += 1
    var items: [JSONValue] = []
    skipWhitespace()
    if position < bytes.count, bytes[position] == UInt8(ascii: "]") {
      position += 1
      return .array(items)
    }
    while true {
      skipWhitespace()
      items.append(try parseValue(depth: depth + 1))
      skipWhitespace()
      guard position < bytes.count else { throw error("unexpected end of input") }
      if bytes[position] == UInt8(ascii: ",") {
        position += 1
        continue
      }
      guard bytes[position] == UInt8(ascii: "]") else { throw error("expected ',' or ']'") }
      position += 1
      return .array(items)
    }
  }

  private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
    let start = position
    if bytes[position] == UInt8(ascii: "-") { position += 1 }
    func digits(_ parser: inout JSONParser) -> Int {
      let begin = parser.position
      while parser.position < parser.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(parser.bytes[parser.position]) {
        parser.position += 1
      }
      return parser.position - begin
    }
    let integerDigits = digits(&self)
    guard integerDigits > 0 else { throw error("invalid number") }
    if integerDigits > 1, bytes[position - integerDigits] == UInt8(ascii: "0") { throw error("leading zero in number") }
    if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
      position += 1
      guard digits(&self) > 0 else { throw error("invalid number") }
    }
    if position < bytes.count, bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E") {
      position += 1
      if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") { position += 1 }
      guard digits(&self) > 0 else { throw error("invalid number") }
    }
    let text = String(decoding: bytes[start..<position], as: UTF8.self)
    guard let number = Double(text), number.isFinite else { throw error("number out of range") }
    return .number(number)
  }

  private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
    guard position + 4 <= bytes.count else { throw error("truncated \\u escape") }
    var value: UInt32 = 0
    for _ in 0..<4 {
      guard let digit = Hex.digitValue(bytes[position]) else { throw error("invalid \\u escape") }
      value = value << 4 | UInt32(digit)
      position += 1
    }
    return value
  }

  private mutating func parseString() throws(JSONParseError) -> String {
    position += 1
    var utf8: [UInt8] = []
    while true {
      guard position < bytes.count else { throw error("unterminated string") }
      let byte = bytes[position]
      switch byte {
      case UInt8(ascii: "\""):
        position += 1
        guard let text = String(validating: utf8, as: UTF8.self) else { throw error("string is not valid UTF-8") }
        return text
      case UInt8(ascii: "\\"):
        position += 1
        guard position < bytes.count else { throw error("unterminated escape") }
        let escaped = bytes[position]
        position += 1
        switch escaped {
        case UInt8(ascii: "\""): utf8.append(0x22)
        case UInt8(ascii: "\\"): utf8.append(0x5C)
        case UInt8(ascii: "/"): utf8.append(0x2F)
        case UInt8(ascii: "b"): utf8.append(0x08)
        case UInt8(ascii: "f"): utf8.append(0x0C)
        case UInt8(ascii: "n"): utf8.append(0x0A)
        case UInt8(ascii: "r"): utf8.append(0x0D)
        case UInt8(ascii: "t"): utf8.append(0x09)
        case UInt8(ascii: "u"):
          var scalar = try parseHex4()
          if (0xD800...0xDBFF).contains(scalar) {
            guard position + 2 <= bytes.count, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u")
            else { throw error("unpaired surrogate") }
            position += 2
            let low = try parseHex4()
            guard (0xDC00...0xDFFF).contains(low) else { throw error("unpaired surrogate") }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
          } else if (0xDC00...0xDFFF).contains(scalar) {
            throw error("unpaired surrogate")
          }
          guard let unicode = Unicode.Scalar(scalar) else { throw error("invalid \\u escape") }
          utf8.append(contentsOf: String(Character(unicode)).utf8)
        default: throw error("invalid escape")
        }
      case 0x00..<0x20: throw error("control character in string")
      default:
        utf8.append(byte)
        position += 1
      }
    }
  }
}

extension JSONWriter {
  /// Bytes under `name` as a string when they are UTF-8, else under `name` + `Base64` in padded
  /// base64: how keys and values travel in JSON (`"key"`/`"keyBase64"`, `"value"`/`"valueBase64"`).
  public mutating func textOrBase64Member(_ name: String, _ bytes: [UInt8]) {
    if String(validating: bytes, as: UTF8.self) != nil {
      key(name)
      string(utf8: bytes)
    } else {
      key(name + "Base64")
      string(utf8: Base64.encode(bytes))
    }
  }

  /// Writes a parsed JSON value back out (relaying part of another node's answer).
  public mutating func value(_ value: JSONValue) {
    switch value {
    case .null: null()
    case .bool(let flag): bool(flag)
    case .number(let number):
      if number.rounded(.towardZero) == number, abs(number) < 9_007_199_254_740_992 {
        if number >= 0 { self.number(UInt64(number)) } else { self.number(Int(number)) }
      } else {
        self.number(number)
      }
    case .string(let text): string(text)
    case .array(let items):
      beginArray()
      for item in items { self.value(item) }
      endArray()
    case .object(let members):
      beginObject()
      for (name, member) in members {
        key(name)
        self.value(member)
      }
      endObject()
    }
  }
}

/// Standard base64 (RFC 4648 §4, with padding), for values that are not valid UTF-8.
public enum Base64 {
  private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

  public static func encode(_ input: [UInt8]) -> [UInt8] {
    var output: [UInt8] = []
    output.reserveCapacity((input.count + 2) / 3 * 4)
    var index = 0
    while index + 3 <= input.count {
      let chunk = UInt32(input[index]) << 16 | UInt32(input[index + 1]) << 8 | UInt32(input[index + 2])
      output.append(alphabet[Int(chunk >> 18 & 63)])
      output.append(alphabet[Int(chunk >> 12 & 63)])
      output.append(alphabet[Int(chunk >> 6 & 63)])
      output.append(alphabet[Int(chunk & 63)])
      index += 3
    }
    let rest = input.count - index
    if rest > 0 {
      var chunk = UInt32(input[index]) << 16
      if rest == 2 { chunk |= UInt32(input[index + 1]) << 8 }
      output.append(alphabet[Int(chunk >> 18 & 63)])
      output.append(alphabet[Int(chunk >> 12 & 63)])
      output.append(rest == 2 ? alphabet[Int(chunk >> 6 & 63)] : UInt8(ascii: "="))
      output.append(UInt8(ascii: "="))
    }
    return output
  }

  /// Nil when the text is not canonical padded base64.
  public static func decode(_ text: some Collection<UInt8>) -> [UInt8]? {
    guard text.count % 4 == 0 else { return nil }
    var output: [UInt8] = []
    output.reserveCapacity(text.count / 4 * 3)
    var quad: [UInt8] = []
    quad.reserveCapacity(4)
    var padding = 0
    var remaining = text.count
    for character in text {
      remaining -= 1
      let value: UInt8
      switch character {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = character - UInt8(ascii: "A")
      case UInt8(ascii: "a")...UInt8(ascii: "z"): value = character - UInt8(ascii: "a") + 26
      case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0") + 52
      case UInt8(ascii: "+"): value = 62
      case UInt8(ascii: "/"): value = 63
      case UInt8(ascii: "="):
        guard remaining < 2 else { return nil }
        padding += 1
        value = 0
      default: return nil
      }
      if padding > 0 && character != UInt8(ascii: "=") { return nil }
      quad.append(value)
      if quad.count == 4 {
        let chunk = UInt32(quad[0]) << 18 | UInt32(quad[1]) << 12 | UInt32(quad[2]) << 6 | UInt32(quad[3])
        output.append(UInt8(chunk >> 16 & 0xFF))
        output.append(UInt8(chunk >> 8 & 0xFF))
        output.append(UInt8(chunk & 0xFF))
        quad.removeAll(keepingCapacity: true)
      }
    }
    output.removeLast(padding)
    return output
  }
}
