import Glibc
import Platform
import WriteAheadLog
import XCTest

/// A full disk: which failures pass (`WALError.isOutOfSpace`), and the pieces the engines use to
/// come back from one in-process: `abandon`, a reopened log, `syncRecoveredRecords`, `SpaceProbe`.
final class OutOfSpaceTests: WALTestCase {
  func testOnlyWritesThatRanOutOfSpaceOrQuotaPass() {
    func io(_ call: String, _ errno: Int32) -> WALError { .io(SystemError(call: call, errno: errno, context: "/data/wal")) }
    XCTAssertTrue(io("pwrite", ENOSPC).isOutOfSpace)
    XCTAssertTrue(io("pwrite", EDQUOT).isOutOfSpace)
    XCTAssertTrue(io("open", ENOSPC).isOutOfSpace, "creating a segment or snapshot file")
    XCTAssertTrue(io("rename", ENOSPC).isOutOfSpace)
    // After a failed fsync the kernel may have dropped the pages: never recoverable in-process.
    XCTAssertFalse(io("fdatasync", ENOSPC).isOutOfSpace)
    XCTAssertFalse(io("fsync", EDQUOT).isOutOfSpace)
    XCTAssertFalse(io("pwrite", EIO).isOutOfSpace)
    XCTAssertFalse(io("fdatasync", EIO).isOutOfSpace)
    XCTAssertFalse(WALError.unusable(reason: "pwrite: No space left on device").isOutOfSpace, "only the first failure tells")
    XCTAssertFalse(WALError.corrupt(file: "f", offset: 0, reason: "r").isOutOfSpace)
  }

  func testALogThatRanOutOfSpaceIsAbandonedAndReopenedWithEverythingSyncedAndTakesAppendsAgain() throws {
    let store = FullDiskStore()
    let log = try WriteAheadLog(directory: directory, fileStore: store)
    let synced = (1...5).map { WALRecord(kind: .entry, group: 1, index: $0, term: 1, payload: Array("entry \($0)".utf8)) }
    try log.append(synced)
    try log.sync()
    store.full = true
    let refused = WALRecord(kind: .entry, group: 1, index: 6, term: 1, payload: Array("refused".utf8))
    XCTAssertThrowsError(try log.append([refused])) { error in
      XCTAssertTrue((error as? WALError)?.isOutOfSpace == true, "\(error)")
    }
    XCTAssertThrowsError(try log.append([refused])) { error in
      guard case .unusable = error as? WALError else { return XCTFail("the log refuses work after the failure: \(error)") }
    }
    // Its lock is held until it is abandoned: that is what `abandon` is for.
    XCTAssertThrowsError(try WriteAheadLog(directory: directory, fileStore: store)) { error in
      XCTAssertEqual(error as? WALError, .locked(directory: directory))
    }
    log.abandon()
    XCTAssertThrowsError(try SpaceProbe.check(directory: directory, bytes: 8_192, fileStore: store)) { error in
      XCTAssertTrue((error as? WALError)?.isOutOfSpace == true, "\(error)")
    }
    XCTAssertFalse(store.exists(directory + "/" + SpaceProbe.fileName), "a failed probe keeps no space")

    store.full = false
    try SpaceProbe.check(directory: directory, bytes: 8_192, fileStore: store)
    XCTAssertFalse(store.exists(directory + "/" + SpaceProbe.fileName), "a probe deletes its file")
    let reopened = try WriteAheadLog(directory: directory, fileStore: store)
    try reopened.syncRecoveredRecords()
    XCTAssertEqual(try replayAll(reopened), synced)
    let next = WALRecord(kind: .entry, group: 1, index: 6, term: 1, payload: Array("after".utf8))
    try reopened.append([next])
    try reopened.sync()
    try reopened.close()
    XCTAssertEqual(try reopenAndReplay(), synced + [next])
  }
}

/// The node's file system, except that writes fail with ENOSPC while `full`.
final class FullDiskStore: FileStore, @unchecked Sendable {
  private let base = PosixFileStore()
  private let state = Locked(false)
  var full: Bool {
    get { state.withLock { $0 } }
    set { state.withLock { $0 = newValue } }
  }

  func open(_ path: String, mode: File.Mode) throws(SystemError) -> any Platform.FileHandle {
    Handle(try base.open(path, mode: mode), store: self)
  }
  func readFile(_ path: String) throws(SystemError) -> [UInt8] { try base.readFile(path) }
  func exists(_ path: String) -> Bool { base.exists(path) }
  func listDirectory(_ path: String) throws(SystemError) -> [String] { try base.listDirectory(path) }
  func makeDirectories(_ path: String, durable: Bool) throws(SystemError) { try base.makeDirectories(path, durable: durable) }
  func rename(_ source: String, to destination: String) throws(SystemError) { try base.rename(source, to: destination) }
  func unlink(_ path: String) throws(SystemError) { try base.unlink(path) }
  func syncDirectory(_ path: String) throws(SystemError) { try base.syncDirectory(path) }

  final class Handle: Platform.FileHandle {
    let file: any Platform.FileHandle
    let store: FullDiskStore
    init(_ file: any Platform.FileHandle, store: FullDiskStore) {
      self.file = file
      self.store = store
    }
    var path: String { file.path }
    var isOpen: Bool { file.isOpen }
    func close() throws(SystemError) { try file.close() }
    func write(all bytes: [UInt8], at offset: UInt64) throws(SystemError) {
      if store.full { throw SystemError(call: "pwrite", errno: ENOSPC, context: path) }
      try file.write(all: bytes, at: offset)
    }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
      try file.read(into: buffer, at: offset)
    }
    func readAll() throws(SystemError) -> [UInt8] { try file.readAll() }
    func size() throws(SystemError) -> UInt64 { try file.size() }
    func sync() throws(SystemError) { try file.sync() }
    func syncData() throws(SystemError) { try file.syncData() }
    func truncate(to length: UInt64) throws(SystemError) { try file.truncate(to: length) }
    func tryLockExclusive() throws(SystemError) -> Bool { try file.tryLockExclusive() }
  }
}
