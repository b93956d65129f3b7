@testable import Gateway
import JSON
import HTTPServer
import XCTest

final class JSONTests: XCTestCase {
  private func parse(_ text: String) throws -> JSONValue { try JSONParser.parse(Array(text.utf8)) }

  func testParsesEveryKindOfValue() throws {
    let value = try parse(#" {"a": [1, -2.5, 3e2, true, false, null], "b": {"c": "d\n\u00e9\ud83d\ude00"}, "e": ""} "#)
    XCTAssertEqual(value["a"], .array([.number(1), .number(-2.5), .number(300), .bool(true), .bool(false), .null]))
    XCTAssertEqual(value["b"]?["c"], .string("d\né😀"))
    XCTAssertEqual(value["e"], .string(""))
  }

  func testRejectsMalformedDocuments() {
    for text in [
      "", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "01", "1.", "-", "1e", "tru", "nul", "\"abc",
      "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\u{01}b\"", "{\"a\":1}{", "{\"a\":1,\"a\":2}", "[1 2]", "1e999",
    ] {
      XCTAssertThrowsError(try parse(text), "'\(text)' must be refused")
    }
    XCTAssertThrowsError(try JSONParser.parse([0x22, 0xFF, 0x22]), "invalid UTF-8 in a string")
  }

  func testRefusesNestingPastTheLimit() throws {
    let deep = String(repeating: "[", count: JSONParser.depthMax + 1) + String(repeating: "]", count: JSONParser.depthMax + 1)
    XCTAssertThrowsError(try parse(deep))
    let fine = String(repeating: "[", count: JSONParser.depthMax) + String(repeating: "]", count: JSONParser.depthMax)
    XCTAssertNoThrow(try parse(fine))
  }

  func testUnsignedIntegerValueAcceptsOnlyExactNonNegativeIntegers() throws {
    XCTAssertEqual(try parse("42").unsignedIntegerValue, 42)
    XCTAssertEqual(try parse("0").unsignedIntegerValue, 0)
    XCTAssertNil(try parse("-1").unsignedIntegerValue)
    XCTAssertNil(try parse("1.5").unsignedIntegerValue)
    XCTAssertNil(try parse("1e300").unsignedIntegerValue)
    XCTAssertNil(try parse("\"1\"").unsignedIntegerValue)
  }

  func testWriterEscapesAndRoundTripsThroughTheParser() throws {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("text", "quote\" backslash\\ newline\n tab\t control\u{01} é")
    writer.member("n", UInt64.max)
    writer.key("list")
    writer.beginArray()
    writer.bool(true)
    writer.null()
    writer.endArray()
    writer.endObject()
    let parsed = try JSONParser.parse(writer.bytes)
    XCTAssertEqual(parsed["text"], .string("quote\" backslash\\ newline\n tab\t control\u{01} é"))
    XCTAssertEqual(parsed["list"], .array([.bool(true), .null]))
    XCTAssertEqual(String(decoding: writer.bytes, as: UTF8.self).contains("\"n\":18446744073709551615"), true)
  }

  func testBase64RoundTripsAndRejectsNonCanonicalInput() {
    for length in 0..<40 {
      let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 37 + 255) }
      XCTAssertEqual(Base64.decode(Base64.encode(bytes)), bytes)
    }
    XCTAssertEqual(String(decoding: Base64.encode(Array("foobar".utf8)), as: UTF8.self), "Zm9vYmFy")
    XCTAssertEqual(String(decoding: Base64.encode(Array("fo".utf8)), as: UTF8.self), "Zm8=")
    for text in ["Zm8", "Zm=8", "Z===", "Zm9v!mFy", "=Zm8"] {
      XCTAssertNil(Base64.decode(Array(text.utf8)), text)
    }
  }

  func testPercentDecoding() {
    XCTAssertEqual(percentDecode(Array("a%2Fb%00%ff".utf8)), [0x61, 0x2F, 0x62, 0x00, 0xFF])
    XCTAssertNil(percentDecode(Array("a%2".utf8)))
    XCTAssertNil(percentDecode(Array("a%zz".utf8)))
    XCTAssertEqual(percentDecode(Array("a+b".utf8)), Array("a+b".utf8))
  }
}
