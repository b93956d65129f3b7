import Checksum
import WriteAheadLog
import XCTest

final class CRC32CTests: XCTestCase {
  /// Bit-at-a-time reference, independent of the tables.
  private func reference(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
      crc ^= UInt32(byte)
      for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
  }

  func testStandardCheckValue() {
    XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
  }

  /// RFC 3720 (iSCSI) appendix B.4 test vectors.
  func testRFC3720Vectors() {
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
    XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
    XCTAssertEqual(CRC32C.checksum((0..<32).reversed().map { UInt8($0) }), 0x113F_DB5C)
  }

  func testEmptyInputIsZero() {
    XCTAssertEqual(CRC32C.checksum([]), 0)
  }

  /// Every length 0...80 at every alignment 0..<8 agrees with the bitwise reference, so the
  /// 8-byte steps and the byte tail are both exercised.
  func testSlicingBy8MatchesReferenceAtEveryLengthAndAlignment() {
    var maker = RecordMaker(seed: 7)
    let bytes = maker.payload(bytes: 100)
    for start in 0..<8 {
      for length in 0...80 {
        let slice = Array(bytes[start..<(start + length)])
        XCTAssertEqual(
          CRC32C.checksum(bytes, range: start..<(start + length)), reference(slice),
          "start \(start) length \(length)")
      }
    }
  }

  func testContinuingEqualsOneShot() {
    var maker = RecordMaker(seed: 11)
    let bytes = maker.payload(bytes: 1000)
    for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
      let first = CRC32C.checksum(bytes, range: 0..<split)
      let whole = bytes.withUnsafeBytes { raw in
        CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[split...]), continuing: first)
      }
      XCTAssertEqual(whole, CRC32C.checksum(bytes), "split \(split)")
    }
  }
}
