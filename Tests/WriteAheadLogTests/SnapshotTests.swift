import Platform
import WriteAheadLog
import XCTest

final class SnapshotTests: WALTestCase {
  func testWriteLoadRoundTripReplaceAndList() throws {
    let log = try open()
    XCTAssertNil(try log.loadSnapshot(group: 1))
    XCTAssertEqual(try log.snapshotGroups(), [])
    var maker = RecordMaker(seed: 21)
    let first = WALSnapshot(group: 1, index: 10, term: 2, data: maker.payload(bytes: 1000))
    let other = WALSnapshot(group: 0xDEAD_BEEF_0000_0001, index: 5, term: 1, data: [])
    try log.writeSnapshot(first)
    try log.writeSnapshot(other)
    XCTAssertEqual(try log.loadSnapshot(group: 1), first)
    XCTAssertEqual(try log.loadSnapshot(group: other.group), other)
    XCTAssertEqual(try log.snapshotGroups(), [1, other.group])

    let replacement = WALSnapshot(group: 1, index: 20, term: 3, data: maker.payload(bytes: 10))
    try log.writeSnapshot(replacement)
    XCTAssertEqual(try log.loadSnapshot(group: 1), replacement)
    XCTAssertFalse(try FileSystem.listDirectory(directory).contains { $0.hasSuffix(".tmp") })
    try log.close()

    let reopened = try open()
    XCTAssertEqual(try reopened.loadSnapshot(group: 1), replacement)
    XCTAssertEqual(try reopened.snapshotGroups(), [1, other.group])
    try reopened.close()
  }

  func testDeleteSnapshot() throws {
    let log = try open()
    try log.writeSnapshot(WALSnapshot(group: 4, index: 1, term: 1, data: [1]))
    try log.deleteSnapshot(group: 4)
    XCTAssertNil(try log.loadSnapshot(group: 4))
    XCTAssertEqual(try log.snapshotGroups(), [])
    try log.deleteSnapshot(group: 4)  // deleting what is not there is fine
    try log.close()
  }

  /// Any flipped byte anywhere in the file is refused with an error naming the file.
  func testCorruptSnapshotIsRefusedNamingTheFile() throws {
    let log = try open()
    let snapshot = WALSnapshot(group: 3, index: 9, term: 9, data: Array("state machine bytes".utf8))
    try log.writeSnapshot(snapshot)
    let path = log.snapshotPath(group: 3)
    let original = try Disk.read(path)
    for offset in original.indices {
      var damaged = original
      damaged[offset] ^= 0x01
      try Disk.write(path, damaged)
      XCTAssertThrowsError(try log.loadSnapshot(group: 3), "offset \(offset)") { error in
        switch error as? WALError {
        case .corrupt(let file, _, _), .badMagic(let file), .badVersion(let file, _):
          XCTAssertEqual(file, path, "offset \(offset)")
        default:
          XCTFail("offset \(offset): unexpected \(error)")
        }
      }
    }
    // Truncated, and extended.
    try Disk.write(path, Array(original.dropLast()))
    XCTAssertThrowsError(try log.loadSnapshot(group: 3))
    try Disk.write(path, original + [0])
    XCTAssertThrowsError(try log.loadSnapshot(group: 3))
    try Disk.write(path, Array(original.prefix(20)))
    XCTAssertThrowsError(try log.loadSnapshot(group: 3))
    try Disk.write(path, original)
    XCTAssertEqual(try log.loadSnapshot(group: 3), snapshot)
    try log.close()
  }

  /// A valid snapshot of group 3 saved under group 4's name is refused.
  func testSnapshotUnderAnotherGroupsNameIsRefused() throws {
    let log = try open()
    try log.writeSnapshot(WALSnapshot(group: 3, index: 1, term: 1, data: [1]))
    try FileSystem.rename(log.snapshotPath(group: 3), to: log.snapshotPath(group: 4))
    XCTAssertThrowsError(try log.loadSnapshot(group: 4)) { error in
      guard case .corrupt(let file, _, _) = error as? WALError else { return XCTFail("\(error)") }
      XCTAssertEqual(file, log.snapshotPath(group: 4))
    }
    try log.close()
  }

  func testSnapshotOverLimitIsRefused() throws {
    let log = try open(WALOptions(snapshotBytesMax: 100))
    XCTAssertThrowsError(
      try log.writeSnapshot(
        WALSnapshot(group: 1, index: 1, term: 1, data: [UInt8](repeating: 0, count: 77)))
    ) { error in
      XCTAssertEqual(error as? WALError, .snapshotTooLarge(group: 1, bytes: 101, limit: 100))
    }
    try log.writeSnapshot(
      WALSnapshot(group: 1, index: 1, term: 1, data: [UInt8](repeating: 0, count: 76)))
    try log.close()
  }
}
