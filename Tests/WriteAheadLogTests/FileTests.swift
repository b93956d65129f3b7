import Glibc
import Platform
import XCTest

/// The Platform file wrappers the log is built on.
final class FileTests: WALTestCase {
  func testMakeDirectoriesCreatesEveryLevelAndAcceptsExisting() throws {
    let nested = directory + "/a/b/c"
    XCTAssertTrue(try FileSystem.makeDirectories(nested))
    XCTAssertTrue(FileSystem.isDirectory(nested))
    XCTAssertFalse(try FileSystem.makeDirectories(nested))
    try Disk.write(directory + "/plain", [1])
    XCTAssertThrowsError(try FileSystem.makeDirectories(directory + "/plain/x")) { error in
      XCTAssertEqual((error as? SystemError)?.errno, ENOTDIR)
    }
  }

  func testWriteReadTruncateSizeRenameUnlinkList() throws {
    let path = directory + "/file"
    let file = try File.open(path, mode: .readWriteCreate)
    try file.write(all: [1, 2, 3, 4, 5], at: 0)
    try file.write(all: [9, 9], at: 5)
    try file.syncData()
    XCTAssertEqual(try file.size(), 7)
    XCTAssertEqual(try file.readAll(), [1, 2, 3, 4, 5, 9, 9])
    try file.truncate(to: 3)
    try file.sync()
    XCTAssertEqual(try FileSystem.fileSize(path), 3)
    try file.close()
    XCTAssertFalse(file.isOpen)

    try FileSystem.rename(path, to: directory + "/renamed")
    try FileSystem.syncDirectory(directory)
    XCTAssertEqual(try FileSystem.listDirectory(directory), ["renamed"])
    XCTAssertEqual(try FileSystem.readFile(directory + "/renamed"), [1, 2, 3])
    try FileSystem.unlink(directory + "/renamed")
    XCTAssertEqual(try FileSystem.listDirectory(directory), [])
    XCTAssertFalse(FileSystem.exists(directory + "/renamed"))
  }

  func testOpenMissingFileThrowsENOENTNamingThePath() {
    XCTAssertThrowsError(try File.open(directory + "/missing", mode: .readOnly)) { error in
      let systemError = error as? SystemError
      XCTAssertEqual(systemError?.errno, ENOENT)
      XCTAssertEqual(systemError?.context, directory + "/missing")
    }
  }

  func testExclusiveCreateRefusesExistingFile() throws {
    try Disk.write(directory + "/x", [])
    XCTAssertThrowsError(try File.open(directory + "/x", mode: .writeCreateExclusive)) { error in
      XCTAssertEqual((error as? SystemError)?.errno, EEXIST)
    }
  }

  func testSecondExclusiveLockOnSameFileFails() throws {
    let first = try File.open(directory + "/LOCK", mode: .readWriteCreate)
    let second = try File.open(directory + "/LOCK", mode: .readWriteCreate)
    XCTAssertTrue(try first.tryLockExclusive())
    XCTAssertFalse(try second.tryLockExclusive())
    try first.close()
    XCTAssertTrue(try second.tryLockExclusive())
    try second.close()
  }
}
