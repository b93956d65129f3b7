// The file operations storage needs, behind one seam: POSIX files on a node (`PosixFileStore`),
// a simulated disk in the deterministic simulator, which loses unsynced writes on a crash, tears
// writes and fails fsync or space on purpose. The write-ahead log does all its I/O through it, so
// the simulator runs the production log code.

/// An open file. Not thread-safe: one owner at a time.
public protocol FileHandle: AnyObject {
  /// The path the file was opened with (for error messages).
  var path: String { get }
  var isOpen: Bool { get }
  func close() throws(SystemError)
  /// Writes every byte at `offset` (not durable until `sync`/`syncData`).
  func write(all bytes: [UInt8], at offset: UInt64) throws(SystemError)
  /// Fills `buffer` from `offset`; returns the bytes read (fewer only at the end of the file).
  func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int
  func readAll() throws(SystemError) -> [UInt8]
  func size() throws(SystemError) -> UInt64
  /// Makes the file's data and metadata durable (fsync).
  func sync() throws(SystemError)
  /// Makes the file's data durable (fdatasync).
  func syncData() throws(SystemError)
  func truncate(to length: UInt64) throws(SystemError)
  /// Takes an exclusive advisory lock without waiting; false when another holder has it.
  func tryLockExclusive() throws(SystemError) -> Bool
}

/// Paths, directories and the files in them.
public protocol FileStore: AnyObject, Sendable {
  func open(_ path: String, mode: File.Mode) throws(SystemError) -> any FileHandle
  func readFile(_ path: String) throws(SystemError) -> [UInt8]
  func exists(_ path: String) -> Bool
  func listDirectory(_ path: String) throws(SystemError) -> [String]
  /// Creates `path` and its missing parents; with `durable`, fsyncs each parent it changed.
  func makeDirectories(_ path: String, durable: Bool) throws(SystemError)
  func rename(_ source: String, to destination: String) throws(SystemError)
  func unlink(_ path: String) throws(SystemError)
  /// Makes the directory's entries (creations, renames, removals) durable.
  func syncDirectory(_ path: String) throws(SystemError)
}

extension File: FileHandle {}

/// The real file system, through `File` and `FileSystem`.
public final class PosixFileStore: FileStore {
  public init() {}
  public func open(_ path: String, mode: File.Mode) throws(SystemError) -> any FileHandle {
    try File.open(path, mode: mode)
  }
  public func readFile(_ path: String) throws(SystemError) -> [UInt8] { try FileSystem.readFile(path) }
  public func exists(_ path: String) -> Bool { FileSystem.exists(path) }
  public func listDirectory(_ path: String) throws(SystemError) -> [String] { try FileSystem.listDirectory(path) }
  public func makeDirectories(_ path: String, durable: Bool) throws(SystemError) {
    try FileSystem.makeDirectories(path, durable: durable)
  }
  public func rename(_ source: String, to destination: String) throws(SystemError) {
    try FileSystem.rename(source, to: destination)
  }
  public func unlink(_ path: String) throws(SystemError) { try FileSystem.unlink(path) }
  public func syncDirectory(_ path: String) throws(SystemError) { try FileSystem.syncDirectory(path) }
}
