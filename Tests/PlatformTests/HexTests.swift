import Platform
import XCTest

final class HexTests: XCTestCase {
  func testEncodeWritesTwoLowercaseDigitsPerByteMostSignificantFirst() {
    XCTAssertEqual(Hex.encode([]), "")
    XCTAssertEqual(Hex.encode([0x00, 0x01, 0x0F, 0x10, 0xAB, 0xFF]), "00010f10abff")
    XCTAssertEqual(Hex.encode((0...255).map(UInt8.init)).count, 512)
  }

  func testDecodeReadsEitherCaseAndUndoesEncode() {
    let all = (0...255).map(UInt8.init)
    XCTAssertEqual(Hex.decode(Hex.encode(all)), all)
    XCTAssertEqual(Hex.decode("00010F10AbfF"), [0x00, 0x01, 0x0F, 0x10, 0xAB, 0xFF])
    XCTAssertEqual(Hex.decode(""), [])
    XCTAssertEqual(Hex.decode("token=abcd".dropFirst(6)), [0xAB, 0xCD], "a Substring")
  }

  func testDecodeRefusesOddLengthsAndAnythingButDigits() {
    for text in ["a", "abc", "0g", "g0", "0x00", " 00", "00 ", "0-", "é0", "ab\n"] {
      XCTAssertNil(Hex.decode(text), text)
    }
  }

  func testDigitValueCoversTheThreeRangesAndNothingElse() {
    let digits = Array("0123456789abcdefABCDEF".utf8)
    let values = digits.map { Hex.digitValue($0) }
    XCTAssertEqual(values, (0...15).map { Optional(UInt8($0)) } + (10...15).map { Optional(UInt8($0)) })
    let others = (0...255).map(UInt8.init).filter { !digits.contains($0) }
    XCTAssertEqual(others.count, 256 - 22)
    XCTAssertTrue(others.allSatisfy { Hex.digitValue($0) == nil })
  }
}
