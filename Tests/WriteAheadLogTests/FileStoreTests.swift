import Platform
import WriteAheadLog
import XCTest

/// The log's I/O seam: every file and directory operation goes through the `FileStore` it was
/// given (the simulator's disk relies on it), and nothing depends on directory listing order.
final class FileStoreTests: WALTestCase {
  /// Appends across several segments, snapshots, releases, closes, and reopens with leftover
  /// temporary files, all through a recording store. Every file in the directory was made, and
  /// every byte in it written, through the store; every segment sync is a store call; leftovers
  /// are removed in name order although the store lists names in reverse order.
  func testEveryFileOperationGoesThroughTheInjectedStore() throws {
    let options = WALOptions(segmentBytesMax: 600)
    var maker = RecordMaker(seed: 41)
    let store = RecordingFileStore()
    let log = try WriteAheadLog(directory: directory, options: options, fileStore: store)
    XCTAssertTrue(log.fileStore === store)
    XCTAssertEqual(
      Array(store.calls.prefix(4)),
      ["makeDirectories", "open LOCK readWriteCreate", "tryLockExclusive LOCK", "listDirectory"])
    var written: [WALRecord] = []
    for batch in 0..<6 {
      let records = (0..<3).map { item in
        maker.entry(group: 1, index: UInt64(batch * 3 + item + 1), payloadBytes: 60)
      }
      try log.append(records)
      try log.sync()
      written += records
    }
    XCTAssertGreaterThanOrEqual(log.statistics.segments, 3, "the records span several segments")
    let snapshot = WALSnapshot(group: 1, index: 9, term: 1, data: maker.payload(bytes: 100))
    try log.writeSnapshot(snapshot)

    // Every byte on disk was written through the store (nothing is overwritten before this point).
    let names = try FileSystem.listDirectory(directory).sorted()
    let bytesOnDisk = try names.reduce(UInt64(0)) { $0 + (try FileSystem.fileSize(directory + "/" + $1)) }
    XCTAssertEqual(store.bytesWritten, bytesOnDisk)
    for name in names where name != "LOCK" {
      XCTAssertTrue(store.calls.contains("rename \(name).tmp \(name)"), "\(name) was made by the store")
    }
    // Every segment sync the log counts is a store call (temporary files are synced before rename).
    let segmentSyncs = store.calls.filter {
      ($0.hasPrefix("sync wal-") || $0.hasPrefix("syncData wal-")) && $0.hasSuffix(".log")
    }
    XCTAssertEqual(UInt64(segmentSyncs.count), log.statistics.syncs)

    let segmentsBefore = try segmentNames()
    let released = try log.releaseSegments(coveredIndex: [1: 9])
    XCTAssertGreaterThan(released, 0)
    XCTAssertEqual(
      store.calls.filter { $0.hasPrefix("unlink ") },
      segmentsBefore.prefix(released).map { "unlink \($0)" }, "oldest first, through the store")
    let survivors = try replayAll(log)
    try log.close()
    XCTAssertEqual(survivors, Array(written.suffix(survivors.count)))
    XCTAssertEqual(store.calls.filter { $0.hasPrefix("close ") }.count, store.calls.filter { $0.hasPrefix("open ") }.count)

    // Leftovers of interrupted writes; the store lists names in descending order.
    let leftovers = ["snapshot-0000000000000007.snap.tmp", "wal-00000000000000ff.log.tmp"]
    for name in leftovers { try Disk.write(directory + "/" + name, [1, 2, 3]) }
    let reopenStore = RecordingFileStore(listsDescending: true)
    let reopened = try WriteAheadLog(directory: directory, options: options, fileStore: reopenStore)
    XCTAssertEqual(reopened.recovery.temporaryFilesRemoved, leftovers)
    XCTAssertEqual(reopenStore.calls.filter { $0.hasPrefix("unlink ") }, leftovers.map { "unlink \($0)" })
    XCTAssertEqual(try replayAll(reopened), survivors)
    XCTAssertEqual(try reopened.loadSnapshot(group: 1), snapshot)
    XCTAssertEqual(try reopened.snapshotGroups(), [1])
    try reopened.close()
    for name in try segmentNames() {
      XCTAssertTrue(reopenStore.calls.contains("readFile \(name)"), "\(name) replayed through the store")
    }
    XCTAssertTrue(reopenStore.calls.contains("open snapshot-0000000000000001.snap readOnly"))
    XCTAssertEqual(
      reopenStore.calls.filter { $0.hasPrefix("close ") }.count,
      reopenStore.calls.filter { $0.hasPrefix("open ") }.count)
  }
}

/// A `FileStore` over the real file system that records every call, its handles' included, as
/// "operation name [details]" with names relative to the log's directory. Optionally lists
/// directories in descending name order, so that code relying on listing order shows.
final class RecordingFileStore: FileStore {
  private let posix = PosixFileStore()
  private let listsDescending: Bool
  // Locked: `FileStore` is Sendable, although a log makes its calls from one thread.
  private let state = Locked<(calls: [String], bytesWritten: UInt64)>(([], 0))

  init(listsDescending: Bool = false) { self.listsDescending = listsDescending }

  var calls: [String] { state.withLock { $0.calls } }
  /// Bytes written through every handle this store opened.
  var bytesWritten: UInt64 { state.withLock { $0.bytesWritten } }

  /// The last component of `path`: the log keeps every file directly in its directory.
  static func name(_ path: String) -> String {
    path.split(separator: "/").last.map(String.init) ?? path
  }

  func record(_ call: String, bytesWritten: Int = 0) {
    state.withLock {
      $0.calls.append(call)
      $0.bytesWritten += UInt64(bytesWritten)
    }
  }

  func open(_ path: String, mode: File.Mode) throws(SystemError) -> any Platform.FileHandle {
    let handle = try posix.open(path, mode: mode)
    record("open \(Self.name(path)) \(mode)")
    return RecordingFileHandle(handle, store: self)
  }
  func readFile(_ path: String) throws(SystemError) -> [UInt8] {
    record("readFile \(Self.name(path))")
    return try posix.readFile(path)
  }
  func exists(_ path: String) -> Bool {
    record("exists \(Self.name(path))")
    return posix.exists(path)
  }
  func listDirectory(_ path: String) throws(SystemError) -> [String] {
    record("listDirectory")
    let names = try posix.listDirectory(path)
    return listsDescending ? names.sorted(by: >) : names
  }
  func makeDirectories(_ path: String, durable: Bool) throws(SystemError) {
    record("makeDirectories")
    try posix.makeDirectories(path, durable: durable)
  }
  func rename(_ source: String, to destination: String) throws(SystemError) {
    record("rename \(Self.name(source)) \(Self.name(destination))")
    try posix.rename(source, to: destination)
  }
  func unlink(_ path: String) throws(SystemError) {
    record("unlink \(Self.name(path))")
    try posix.unlink(path)
  }
  func syncDirectory(_ path: String) throws(SystemError) {
    record("syncDirectory")
    try posix.syncDirectory(path)
  }
}

/// A handle of `RecordingFileStore`: records each call in its store, then forwards it. (Qualified:
/// XCTest brings Foundation's `FileHandle` into scope too.)
final class RecordingFileHandle: Platform.FileHandle {
  private let inner: any Platform.FileHandle
  private let store: RecordingFileStore

  init(_ inner: any Platform.FileHandle, store: RecordingFileStore) {
    self.inner = inner
    self.store = store
  }

  var path: String { inner.path }
  var isOpen: Bool { inner.isOpen }
  func close() throws(SystemError) {
    store.record("close \(RecordingFileStore.name(path))")
    try inner.close()
  }
  func write(all bytes: [UInt8], at offset: UInt64) throws(SystemError) {
    store.record("write \(RecordingFileStore.name(path))", bytesWritten: bytes.count)
    try inner.write(all: bytes, at: offset)
  }
  func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
    store.record("read \(RecordingFileStore.name(path))")
    return try inner.read(into: buffer, at: offset)
  }
  func readAll() throws(SystemError) -> [UInt8] {
    store.record("readAll \(RecordingFileStore.name(path))")
    return try inner.readAll()
  }
  func size() throws(SystemError) -> UInt64 {
    store.record("size \(RecordingFileStore.name(path))")
    return try inner.size()
  }
  func sync() throws(SystemError) {
    store.record("sync \(RecordingFileStore.name(path))")
    try inner.sync()
  }
  func syncData() throws(SystemError) {
    store.record("syncData \(RecordingFileStore.name(path))")
    try inner.syncData()
  }
  func truncate(to length: UInt64) throws(SystemError) {
    store.record("truncate \(RecordingFileStore.name(path))")
    try inner.truncate(to: length)
  }
  func tryLockExclusive() throws(SystemError) -> Bool {
    store.record("tryLockExclusive \(RecordingFileStore.name(path))")
    return try inner.tryLockExclusive()
  }
}
