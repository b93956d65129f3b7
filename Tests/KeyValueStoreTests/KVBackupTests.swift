import Checksum
import Consensus
import XCTest

@testable import KeyValueStore

final class KVBackupTests: XCTestCase {
  /// A state machine with a binary key and value, keys with '/', an empty value, a deleted key and
  /// an idempotency key, queried for its snapshot through the byte interface.
  private func populatedMachine() throws -> KeyValueStateMachine {
    let machine = KeyValueStateMachine()
    try machine.put(1, b("a/b/c"), b("slashes"))
    try machine.put(2, KVCodecTests.binaryKey, KVCodecTests.binaryValue)
    try machine.put(3, b("empty"), [])
    try machine.put(4, b("gone"), b("soon"))
    XCTAssertEqual(try machine.write(5, [.delete(key: b("gone"), precondition: .none)], id: "once"), .applied([.delete(deleted: true)]))
    try machine.put(6, b("a/b/c"), b("slashes, again"))
    return machine
  }

  // MARK: The snapshot query

  func testSnapshotQueryAnswersTakeSnapshotAtTheCurrentState() throws {
    let machine = try populatedMachine()
    let results = try machine.read([.snapshot(bytesMax: .max)])
    XCTAssertEqual(results, [.snapshot(machine.takeSnapshot())])
    guard case .snapshot(let bytes) = results.first else { return XCTFail("no snapshot result") }
    let copy = KeyValueStateMachine()
    try copy.restore(snapshot: bytes)
    XCTAssertEqual(copy.lastAppliedIndex, 6)
    XCTAssertEqual(copy.list(prefix: [], after: nil, limit: 100).items, machine.list(prefix: [], after: nil, limit: 100).items)
    // A later write changes the next snapshot, not one already taken.
    try machine.put(7, b("new"), b("x"))
    XCTAssertNotEqual(try machine.read([.snapshot(bytesMax: .max)]), results)
  }

  /// The snapshot's size is known before it is built (`snapshotByteCount`, kept as keys are put,
  /// overwritten and deleted, idempotency keys remembered and forgotten, and snapshots restored),
  /// and a snapshot over the query's bound is not built but answered with that size.
  func testTheSnapshotSizeIsKnownBeforeItIsBuiltAndBoundsTheQuery() throws {
    let machine = KeyValueStateMachine(idempotencyEntriesMax: 2)
    func check(_ step: String) {
      XCTAssertEqual(machine.snapshotByteCount, machine.takeSnapshot().count, step)
    }
    check("empty")
    try machine.put(1, b("a"), b("one"))
    try machine.put(2, b("b"), [UInt8](repeating: 9, count: 1000))
    check("two keys")
    try machine.put(3, b("b"), b("shorter"))
    check("an overwrite")
    XCTAssertEqual(try machine.write(4, [.delete(key: b("a"), precondition: .none)], id: "first"), .applied([.delete(deleted: true)]))
    check("a delete with an idempotency key")
    for (index, id) in [(5, "second"), (6, "third-evicts-first")] {
      XCTAssertEqual(try machine.write(UInt64(index), [.put(key: b("k\(index)"), value: b("v"), precondition: .none)], id: id), .applied([.put(revision: UInt64(index))]))
    }
    check("an idempotency key forgotten")
    XCTAssertEqual(try machine.write(7, [.delete(key: b("absent"), precondition: .none)]), .applied([.delete(deleted: false)]))
    check("a delete of nothing")
    let copy = KeyValueStateMachine(idempotencyEntriesMax: 2)
    try copy.restore(snapshot: machine.takeSnapshot())
    XCTAssertEqual(copy.snapshotByteCount, machine.snapshotByteCount, "restored")

    let size = UInt64(machine.snapshotByteCount)
    XCTAssertEqual(try machine.read([.snapshot(bytesMax: size - 1)]), [.snapshotTooLarge(bytes: size)])
    XCTAssertEqual(try machine.read([.snapshot(bytesMax: size)]), [.snapshot(machine.takeSnapshot())])
  }

  /// A snapshot claiming the last possible index is refused (its history would start past it).
  func testASnapshotAtTheLastIndexIsRefusedNotATrap() throws {
    let machine = KeyValueStateMachine()
    var bytes = machine.takeSnapshot()
    for offset in 1...8 { bytes[offset] = 0xFF }
    let crc = CRC32C.checksum(bytes, range: 0..<(bytes.count - 4))
    withUnsafeBytes(of: crc.littleEndian) { bytes.replaceSubrange((bytes.count - 4)..., with: $0) }
    XCTAssertThrowsError(try KeyValueStateMachine().restore(snapshot: bytes))
  }

  // MARK: Round trip

  func testRoundTripKeepsEveryFieldAndEntry() throws {
    let machine = try populatedMachine()
    let backup = KVBackup(group: GroupID(.dataRegion, 7), index: 9, payload: machine.takeSnapshot())
    let bytes = backup.encode()
    let decoded = try KVBackup.decode(bytes)
    XCTAssertEqual(decoded, backup)
    XCTAssertEqual(decoded.kind, "kv")
    XCTAssertEqual(decoded.fileName, "DataRegion-7-9.caucus-backup")
    XCTAssertEqual(KVBackup.checksum(ofEncoded: bytes), CRC32C.checksum(Array(bytes.dropLast(4))))
    let entries = try decoded.entries()
    XCTAssertEqual(entries.map(\.key), [b("a/b/c"), b("empty"), KVCodecTests.binaryKey].sorted(by: bytesLess))
    XCTAssertEqual(entries.first { $0.key == b("a/b/c") }, KVEntry(key: b("a/b/c"), value: b("slashes, again"), revision: 6))
    XCTAssertEqual(entries.first { $0.key == KVCodecTests.binaryKey }?.value, KVCodecTests.binaryValue)
    XCTAssertEqual(entries.first { $0.key == b("empty") }?.value, [])
  }

  func testEmptyStateAndManyPagesRoundTrip() throws {
    let empty = KVBackup(group: GroupID(.schemaRegion, 0), index: 0, payload: KeyValueStateMachine().takeSnapshot())
    XCTAssertEqual(try KVBackup.decode(empty.encode()).entries(), [])
    // More keys than one listing page holds: `entries()` walks every page.
    let machine = KeyValueStateMachine()
    let keyCount = KVLimits.listLimitMax + 5
    var operations: [KVOperation] = []
    var index: UInt64 = 0
    for number in 0..<keyCount {
      operations.append(.put(key: b("k\(number)"), value: b("v\(number)"), precondition: .none))
      if operations.count == KVLimits.operationsPerCommandMax || number == keyCount - 1 {
        index += 1
        _ = try machine.write(index, operations)
        operations = []
      }
    }
    let backup = try KVBackup.decode(KVBackup(group: GroupID(.dataRegion, 1), index: index, payload: machine.takeSnapshot()).encode())
    let entries = try backup.entries()
    XCTAssertEqual(entries.count, keyCount)
    XCTAssertEqual(Set(entries.map(\.key)).count, keyCount)
  }

  /// The layout the format's comment documents, byte for byte: big-endian, fixed width.
  func testLayoutIsBigEndianAsDocumented() throws {
    let bytes = KVBackup(group: GroupID(.dataRegion, 1), index: 0x0102_0304_0506_0708, payload: [0xAA, 0xBB]).encode()
    var expected: [UInt8] = Array("CAUCUSBK".utf8) + [0, 1]
    expected += [0, 12] + Array("DataRegion-1".utf8)
    expected += [1, 2, 3, 4, 5, 6, 7, 8]
    expected += [2] + Array("kv".utf8)
    expected += [0, 0, 0, 0, 0, 0, 0, 2, 0xAA, 0xBB]
    let checksum = CRC32C.checksum(expected)
    expected += [UInt8(checksum >> 24), UInt8(truncatingIfNeeded: checksum >> 16), UInt8(truncatingIfNeeded: checksum >> 8), UInt8(truncatingIfNeeded: checksum)]
    XCTAssertEqual(bytes, expected)
  }

  // MARK: Decode errors

  private func validBytes() throws -> [UInt8] {
    KVBackup(group: GroupID(.dataRegion, 3), index: 42, payload: try populatedMachine().takeSnapshot()).encode()
  }

  /// Re-seals bytes with a correct checksum after a field was edited, so the field's own check is
  /// what fails.
  private func resealed(_ bytes: [UInt8]) -> [UInt8] {
    var body = Array(bytes.dropLast(4))
    let checksum = CRC32C.checksum(body)
    withUnsafeBytes(of: checksum.bigEndian) { body.append(contentsOf: $0) }
    return body
  }

  func testBadMagicIsNotABackup() throws {
    var bytes = try validBytes()
    bytes[0] ^= 0x01
    XCTAssertThrowsError(try KVBackup.decode(bytes)) { XCTAssertEqual($0 as? KVBackupError, .notABackup) }
    XCTAssertThrowsError(try KVBackup.decode(Array("{\"error\":\"not_found\"}".utf8))) {
      XCTAssertEqual($0 as? KVBackupError, .notABackup)
    }
    XCTAssertThrowsError(try KVBackup.decode([])) { XCTAssertEqual($0 as? KVBackupError, .notABackup) }
  }

  func testUnknownVersionIsRefusedBeforeAnythingElse() throws {
    var bytes = try validBytes()
    bytes[9] = 2
    XCTAssertThrowsError(try KVBackup.decode(bytes)) { XCTAssertEqual($0 as? KVBackupError, .unsupportedVersion(2)) }
    bytes[8] = 1
    XCTAssertThrowsError(try KVBackup.decode(bytes)) { XCTAssertEqual($0 as? KVBackupError, .unsupportedVersion(0x0102)) }
  }

  func testEveryTruncationThrowsTruncatedOrNotABackup() throws {
    let bytes = try validBytes()
    for length in 0..<bytes.count {
      XCTAssertThrowsError(try KVBackup.decode(Array(bytes[..<length])), "cut at \(length)") { error in
        switch error as? KVBackupError {
        case .notABackup: XCTAssertLessThan(length, KVBackup.magic.count, "cut at \(length)")
        case .truncated: XCTAssertGreaterThanOrEqual(length, KVBackup.magic.count, "cut at \(length)")
        default: XCTFail("cut at \(length): \(error)")
        }
      }
    }
  }

  func testTrailingBytesThrow() throws {
    XCTAssertThrowsError(try KVBackup.decode(try validBytes() + [0])) {
      XCTAssertEqual($0 as? KVBackupError, .trailingBytes(count: 1))
    }
  }

  /// Any one flipped bit in the fields, the payload or the checksum is caught (CRC-32C finds every
  /// single-bit error); a flip in a length is caught as truncation or trailing bytes.
  func testEveryFlippedBitAfterTheHeaderIsCaught() throws {
    let bytes = try validBytes()
    for offset in 10..<bytes.count {
      for bit in [0, 7] {
        var flipped = bytes
        flipped[offset] ^= UInt8(1 << bit)
        XCTAssertThrowsError(try KVBackup.decode(flipped), "bit \(bit) of byte \(offset)") { error in
          XCTAssertNotNil(error as? KVBackupError, "bit \(bit) of byte \(offset): \(error)")
        }
      }
    }
  }

  func testChecksumMismatchNamesBothValues() throws {
    var bytes = try validBytes()
    bytes[bytes.count - 10] ^= 0xFF  // inside the payload
    XCTAssertThrowsError(try KVBackup.decode(bytes)) { error in
      guard case .checksumMismatch(let stored, let computed) = error as? KVBackupError else { return XCTFail("\(error)") }
      XCTAssertNotEqual(stored, computed)
      XCTAssertTrue("\(error)".contains("corrupt"), "\(error)")
    }
  }

  func testInvalidFieldsUnderAValidChecksumAreRefused() throws {
    let valid = try validBytes()
    // The group id "DataRegion-3" starts at offset 12; make it "XataRegion-3".
    var badGroup = valid
    badGroup[12] = UInt8(ascii: "X")
    XCTAssertThrowsError(try KVBackup.decode(resealed(badGroup))) { error in
      guard case .invalidField(let reason) = error as? KVBackupError else { return XCTFail("\(error)") }
      XCTAssertTrue(reason.contains("group id"), reason)
    }
    // The kind "kv" follows the group (12 bytes), the index (8) and its length byte: make it "kw".
    var badKind = valid
    badKind[12 + 12 + 8 + 2] = UInt8(ascii: "w")
    XCTAssertThrowsError(try KVBackup.decode(resealed(badKind))) { error in
      guard case .invalidField(let reason) = error as? KVBackupError else { return XCTFail("\(error)") }
      XCTAssertTrue(reason.contains("'kw'"), reason)
    }
    // A group length of 0 and one past the limit.
    for length: UInt8 in [0, UInt8(KVBackup.groupBytesMax + 1)] {
      var badLength = valid
      badLength[11] = length
      XCTAssertThrowsError(try KVBackup.decode(resealed(badLength))) { error in
        guard case .invalidField = error as? KVBackupError else { return XCTFail("\(error)") }
      }
    }
  }

  /// A payload length past what remains throws before anything is allocated from it.
  func testForgedPayloadLengthThrowsTruncated() throws {
    var bytes = try validBytes()
    let payloadLengthOffset = 12 + 12 + 8 + 1 + 2
    // 0xFF000000 bytes: under the limit, past what remains.
    for position in 0..<8 { bytes[payloadLengthOffset + position] = position == 4 ? 0xFF : 0 }
    XCTAssertThrowsError(try KVBackup.decode(bytes)) { error in
      guard case .truncated(let field, _, _) = error as? KVBackupError else { return XCTFail("\(error)") }
      XCTAssertEqual(field, "payload")
    }
    for position in 0..<8 { bytes[payloadLengthOffset + position] = 0xFF }
    XCTAssertThrowsError(try KVBackup.decode(bytes)) { error in
      guard case .invalidField(let reason) = error as? KVBackupError else { return XCTFail("\(error)") }
      XCTAssertTrue(reason.contains("payload length"), reason)
    }
  }

  /// A whole, correctly sealed backup whose payload is not a key-value snapshot: `decode` accepts
  /// the frame, `entries()` refuses the payload.
  func testCorruptPayloadIsRefusedByEntries() throws {
    var payload = try populatedMachine().takeSnapshot()
    payload[payload.count / 2] ^= 0x10
    let backup = try KVBackup.decode(KVBackup(group: GroupID(.dataRegion, 1), index: 6, payload: payload).encode())
    XCTAssertThrowsError(try backup.entries()) { XCTAssertNotNil($0 as? KVCodecError, "\($0)") }
  }
}
