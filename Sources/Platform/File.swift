import CPlatform
import Glibc

// File and directory I/O: thin wrappers over the POSIX calls, every one through `syscall(...)`
// (EINTR retried, programmer errors crash, operating errors thrown as `SystemError`).
// Blocking by nature: call these from a thread that may block (never from an event loop).

/// An open file descriptor owned by this object. Closed by `close()` or, as a last resort, by
/// `deinit` (errors there are ignored). Not thread-safe: one owner at a time.
public final class File {
  /// How `File.open` opens the path.
  public enum Mode: Sendable {
    /// Read only; the file must exist.
    case readOnly
    /// Read and write; the file must exist.
    case readWrite
    /// Read and write; created if absent, kept as it is if present.
    case readWriteCreate
    /// Read and write; created if absent, truncated to zero if present.
    case readWriteCreateTruncate
    /// Write only; created if absent, truncated to zero if present.
    case writeCreateTruncate
    /// Write only; created; fails with EEXIST if present.
    case writeCreateExclusive

    var flags: Int32 {
      switch self {
      case .readOnly: return O_RDONLY
      case .readWrite: return O_RDWR
      case .readWriteCreate: return O_RDWR | O_CREAT
      case .readWriteCreateTruncate: return O_RDWR | O_CREAT | O_TRUNC
      case .writeCreateTruncate: return O_WRONLY | O_CREAT | O_TRUNC
      case .writeCreateExclusive: return O_WRONLY | O_CREAT | O_EXCL
      }
    }
  }

  /// The path the file was opened with (for error messages).
  public let path: String
  private var descriptorOrClosed: Int32

  /// The raw descriptor; crashes if the file is closed (programmer error).
  public var descriptor: Int32 {
    precondition(descriptorOrClosed >= 0, "\(path): used after close")
    return descriptorOrClosed
  }

  public var isOpen: Bool { descriptorOrClosed >= 0 }

  private init(path: String, descriptor: Int32) {
    precondition(descriptor >= 0)
    self.path = path
    self.descriptorOrClosed = descriptor
  }

  /// Opens `path` (close-on-exec). New files get `permissions` (default rw-r--r--).
  public static func open(
    _ path: String, mode: Mode, permissions: mode_t = 0o644
  ) throws(SystemError) -> File {
    let descriptor = try syscall("open", context: path) {
      Glibc.open(path, mode.flags | O_CLOEXEC, permissions)
    }
    return File(path: path, descriptor: descriptor)
  }

  deinit {
    if descriptorOrClosed >= 0 { _ = Glibc.close(descriptorOrClosed) }
  }

  /// Closes the descriptor. Calling it twice is a programmer error. A failed close(2) still
  /// releases the descriptor (Linux), so it is never retried.
  public func close() throws(SystemError) {
    let descriptor = self.descriptor
    descriptorOrClosed = -1
    if Glibc.close(descriptor) != 0 {
      let error = currentErrno()
      if error == EINTR { return }  // Linux: the descriptor is released anyway.
      precondition(error != EBADF, "\(path): close: descriptor was not open")
      throw SystemError(call: "close", errno: error, context: path)
    }
  }

  /// Writes every byte at `offset` (loops over short writes). Does not move the file offset.
  public func write(all bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(SystemError) {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return }
    var written = 0
    while written < bytes.count {
      let count = try syscall("pwrite", context: path) {
        Glibc.pwrite(
          descriptor, base + written, bytes.count - written, off_t(offset) + off_t(written))
      }
      // pwrite returns 0 only for a zero-length request; anything else would loop forever.
      precondition(count > 0, "\(path): pwrite wrote nothing")
      written += count
    }
    precondition(written == bytes.count)
  }

  /// Writes every byte of `bytes` at `offset`.
  public func write(all bytes: [UInt8], at offset: UInt64) throws(SystemError) {
    // withUnsafeBytes rethrows untyped errors: carry the typed one out in a Result.
    try bytes.withUnsafeBytes { raw in
      Result { () throws(SystemError) in try write(all: raw, at: offset) }
    }.get()
  }

  /// Writes every byte at the current file offset (loops over short writes).
  public func write(all bytes: [UInt8]) throws(SystemError) {
    try bytes.withUnsafeBytes { raw in
      Result { () throws(SystemError) in
        guard let base = raw.baseAddress, raw.count > 0 else { return }
        var written = 0
        while written < raw.count {
          let count = try syscall("write", context: path) {
            Glibc.write(descriptor, base + written, raw.count - written)
          }
          precondition(count > 0, "\(path): write wrote nothing")
          written += count
        }
      }
    }.get()
  }

  /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (0 at end of file).
  public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64)
    throws(SystemError) -> Int
  {
    guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
    var total = 0
    while total < buffer.count {
      let count = try syscall("pread", context: path) {
        Glibc.pread(descriptor, base + total, buffer.count - total, off_t(offset) + off_t(total))
      }
      if count == 0 { break }
      total += count
    }
    return total
  }

  /// Reads the whole file from offset 0 until end of file. Starts from the size fstat reports and
  /// keeps reading past it, so files whose size is not known in advance (/proc) read whole too.
  public func readAll() throws(SystemError) -> [UInt8] {
    let size = try self.size()
    precondition(size <= UInt64(Int.max), "\(path): file too large to read into memory")
    var result = [UInt8](repeating: 0, count: Int(size) + 4096)
    var filled = 0
    while true {
      let count = try result.withUnsafeMutableBytes { raw in
        let free = UnsafeMutableRawBufferPointer(rebasing: raw[filled...])
        return Result { () throws(SystemError) in try read(into: free, at: UInt64(filled)) }
      }.get()
      if count == 0 { break }
      filled += count
      if filled == result.count { result.append(contentsOf: repeatElement(0, count: max(4096, result.count))) }
    }
    result.removeSubrange(filled...)
    return result
  }

  /// The file's size in bytes (fstat).
  public func size() throws(SystemError) -> UInt64 {
    var info = stat()
    try syscall("fstat", context: path) { fstat(descriptor, &info) }
    precondition(info.st_size >= 0)
    return UInt64(info.st_size)
  }

  /// fsync(2): data and metadata durable.
  public func sync() throws(SystemError) {
    try syscall("fsync", context: path) { fsync(descriptor) }
  }

  /// fdatasync(2): data (and the metadata needed to read it, e.g. the size) durable.
  public func syncData() throws(SystemError) {
    // The write-ahead log's fsync is this call (the log is its only caller): the `wal-fsync`
    // failpoint stands here, so an injected EIO takes the path a real one would.
    try Failpoints.walFsync.passIO(call: "fdatasync", context: path)
    try syscall("fdatasync", context: path) { fdatasync(descriptor) }
  }

  /// ftruncate(2): sets the size to `length` bytes.
  public func truncate(to length: UInt64) throws(SystemError) {
    precondition(length <= UInt64(Int64.max))
    try syscall("ftruncate", context: path) { ftruncate(descriptor, off_t(length)) }
  }

  /// Takes an exclusive advisory lock (flock) without waiting. Returns false if another open
  /// file description holds it (another process, or another `File` on the same path).
  public func tryLockExclusive() throws(SystemError) -> Bool {
    while true {
      if flock(descriptor, LOCK_EX | LOCK_NB) == 0 { return true }
      let error = currentErrno()
      if error == EINTR { continue }
      if error == EWOULDBLOCK { return false }
      precondition(error != EBADF, "\(path): flock: descriptor was not open")
      throw SystemError(call: "flock", errno: error, context: path)
    }
  }
}

/// Operations on paths and directories.
public enum FileSystem {
  /// The target of a symbolic link (for example /proc/self/exe).
  public static func readLink(_ path: String) throws(SystemError) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = try syscall("readlink", context: path) { Glibc.readlink(path, &buffer, buffer.count - 1) }
    return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  /// Reads a whole file.
  public static func readFile(_ path: String) throws(SystemError) -> [UInt8] {
    let file = try File.open(path, mode: .readOnly)
    defer { try? file.close() }
    return try file.readAll()
  }

  /// Size in bytes of the file at `path` (stat).
  public static func fileSize(_ path: String) throws(SystemError) -> UInt64 {
    var info = stat()
    try syscall("stat", context: path) { stat(path, &info) }
    precondition(info.st_size >= 0)
    return UInt64(info.st_size)
  }

  /// Whether something exists at `path` (stat succeeds).
  public static func exists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
  }

  /// Whether `path` is a directory.
  public static func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
  }

  /// rename(2): atomically replaces `destination`. Durable only after `syncDirectory`.
  public static func rename(_ source: String, to destination: String) throws(SystemError) {
    try syscall("rename", context: "\(source) -> \(destination)") {
      Glibc.rename(source, destination)
    }
  }

  /// unlink(2). Durable only after `syncDirectory`.
  public static func unlink(_ path: String) throws(SystemError) {
    try syscall("unlink", context: path) { Glibc.unlink(path) }
  }

  /// rmdir(2) of an empty directory.
  public static func removeDirectory(_ path: String) throws(SystemError) {
    try syscall("rmdir", context: path) { Glibc.rmdir(path) }
  }

  /// fsync of a directory: makes creations, renames and unlinks inside it durable.
  public static func syncDirectory(_ path: String) throws(SystemError) {
    let descriptor = try syscall("open", context: path) {
      Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    }
    defer { _ = Glibc.close(descriptor) }
    try syscall("fsync", context: path) { fsync(descriptor) }
  }

  /// mkdir -p. Returns true if it created the last component. Existing directories are fine;
  /// an existing non-directory fails with ENOTDIR. With `durable`, the parent of every directory
  /// it creates is fsynced, so the whole new path survives a crash (files made inside it later
  /// need their own directory fsync).
  @discardableResult
  public static func makeDirectories(
    _ path: String, permissions: mode_t = 0o755, durable: Bool = false
  ) throws(SystemError) -> Bool {
    precondition(!path.isEmpty, "makeDirectories: empty path")
    let components = path.split(separator: "/", omittingEmptySubsequences: true)
    var prefix = path.hasPrefix("/") ? "/" : ""
    var createdLast = false
    for (position, component) in components.enumerated() {
      let parent = prefix.isEmpty ? "." : prefix
      prefix += (prefix.isEmpty || prefix == "/" ? "" : "/") + component
      if Glibc.mkdir(prefix, permissions) == 0 {
        if durable { try syncDirectory(parent) }
        createdLast = position == components.count - 1
        continue
      }
      let error = currentErrno()
      if error == EEXIST {
        guard isDirectory(prefix) else {
          throw SystemError(call: "mkdir", errno: ENOTDIR, context: prefix)
        }
        createdLast = false
        continue
      }
      throw SystemError(call: "mkdir", errno: error, context: prefix)
    }
    return createdLast
  }

  /// Names of the entries in a directory (without "." and ".."), in no particular order.
  public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
    guard let directory = opendir(path) else {
      throw SystemError(call: "opendir", errno: currentErrno(), context: path)
    }
    defer { closedir(directory) }
    var names: [String] = []
    let entriesMax = 10_000_000  // A limit on every loop: far above any directory we create.
    while names.count < entriesMax {
      errno = 0
      guard let entry = readdir(directory) else {
        let error = currentErrno()
        if error != 0 { throw SystemError(call: "readdir", errno: error, context: path) }
        return names
      }
      let name = withUnsafePointer(to: &entry.pointee.d_name) { tuple in
        tuple.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: tuple.pointee))
        {
          String(cString: $0)
        }
      }
      if name != "." && name != ".." { names.append(name) }
    }
    preconditionFailure("\(path): more than \(entriesMax) entries")
  }

  /// rm -rf for a directory tree we own (tests, temporary directories). Does not follow
  /// symbolic links to directories (lstat).
  public static func removeTree(_ path: String) throws(SystemError) {
    var info = stat()
    if lstat(path, &info) != 0 {
      let error = currentErrno()
      if error == ENOENT { return }
      throw SystemError(call: "lstat", errno: error, context: path)
    }
    if (info.st_mode & S_IFMT) == S_IFDIR {
      for name in try listDirectory(path) { try removeTree(path + "/" + name) }
      try removeDirectory(path)
    } else {
      try unlink(path)
    }
  }

  /// Creates a fresh directory from a template ending in "XXXXXX" (mkdtemp) and returns its path.
  public static func makeTemporaryDirectory(prefix: String = "/tmp/caucus-") throws(SystemError)
    -> String
  {
    var template = Array((prefix + "XXXXXX").utf8CString)
    let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard let result else {
      throw SystemError(call: "mkdtemp", errno: currentErrno(), context: prefix)
    }
    return String(cString: result)
  }
}
