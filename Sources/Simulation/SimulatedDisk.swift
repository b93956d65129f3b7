import Glibc
import Platform
import RaftCore

/// One node's disk for the simulator: the `FileStore` the production write-ahead log runs on.
/// Writes land in a volatile view at once and become durable only with an fsync; directory
/// entries (creations, renames, removals) only with a directory fsync. A crash keeps what was
/// durable plus, chosen by the seed, some of what was not — a prefix of a file's unsynced
/// writes, the last of them torn, or later writes without earlier ones (a hole of zeros where
/// the file grew) — and each pending directory change or not. Faults on purpose: fsync returning
/// EIO (the node must stop), and ENOSPC past a byte limit.
///
/// Single-threaded: the simulator drives everything from one thread (`@unchecked Sendable`
/// because `FileStore` is `Sendable` for the real, stateless store).
public final class SimulatedDisk: FileStore, @unchecked Sendable {
  final class Inode {
    /// What a crash keeps for sure.
    var durable: [UInt8] = []
    /// What reads see now.
    var current: [UInt8] = []
    /// Changes since the last fsync, oldest first: a write, or a truncation (nil bytes).
    var unsynced: [(offset: Int, bytes: [UInt8]?, length: Int)] = []
  }

  enum NameChange {
    case link(name: String, inode: Inode)
    case unlink(name: String)
  }

  /// Names as reads see them, and as a crash would find them.
  private var names: [String: Inode] = [:]
  private var durableNames: [String: Inode] = [:]
  /// Directory changes not yet made durable, oldest first, per directory.
  private var pendingNames: [String: [NameChange]] = [:]
  private var directories: Set<String> = ["/"]
  private var random: SplitMix64
  /// Parts per million of fsyncs that fail with EIO.
  public var fsyncFailurePpm = 0
  /// Bytes of file data past which a write fails with ENOSPC.
  public var capacityBytes = Int.max
  /// Parts per million of fsyncs at which the node dies (power lost during the fsync): the
  /// fsync fails and every later call too, until `crash()`.
  public var crashAtSyncPpm = 0
  /// Parts per million of fsyncs that complete, after which the node dies before doing anything
  /// else (what it would send after the fsync never leaves: Figure 8's interleavings).
  public var crashAfterSyncPpm = 0
  /// A sync chose to crash the node; the simulator crashes it after the turn.
  public private(set) var crashRequested = false
  public private(set) var fsyncFailures = 0
  public private(set) var spaceFailures = 0
  public private(set) var crashes = 0
  /// Handles opened before the last crash belong to a dead process: every call on them fails
  /// and changes nothing (a dropped engine's log may still close its files when it is freed).
  private var generation = 0

  public init(seed: UInt64) { random = SplitMix64(seed: seed) }

  // MARK: Crash

  /// A power loss: every file keeps its durable bytes plus a seeded choice of its unsynced
  /// changes; every directory its durable entries plus a seeded choice of its pending changes.
  public func crash() {
    crashes += 1
    generation += 1
    crashRequested = false
    var seen: Set<ObjectIdentifier> = []
    for path in Set(names.keys).union(durableNames.keys).sorted() {
      for inode in [names[path], durableNames[path]].compactMap({ $0 })
      where seen.insert(ObjectIdentifier(inode)).inserted {
        loseUnsynced(inode)
      }
    }
    for directory in pendingNames.keys.sorted() {
      for change in pendingNames[directory]! where random.below(2) == 0 { apply(change, to: &durableNames) }
    }
    pendingNames = [:]
    names = durableNames
  }

  private func loseUnsynced(_ inode: Inode) {
    var bytes = inode.durable
    let changes = inode.unsynced
    // Which changes reach the disk: a prefix, the last of it maybe torn; sometimes a later
    // change as well without the ones before it (pages reach the disk out of order).
    let kept = changes.isEmpty ? 0 : random.below(changes.count + 1)
    for (position, change) in changes.enumerated() {
      let reaches = position < kept || (position > kept && random.below(4) == 0)
      guard reaches else { continue }
      guard let data = change.bytes else {
        if change.length < bytes.count { bytes.removeSubrange(change.length...) }
        continue
      }
      var written = data
      if position == kept - 1 && random.below(3) == 0 { written = Array(written.prefix(random.below(written.count + 1))) }
      if change.offset + written.count > bytes.count {
        bytes.append(contentsOf: repeatElement(0, count: change.offset + written.count - bytes.count))
      }
      bytes.replaceSubrange(change.offset..<(change.offset + written.count), with: written)
    }
    inode.durable = bytes
    inode.current = bytes
    inode.unsynced = []
  }

  // MARK: FileStore

  public func open(_ path: String, mode: File.Mode) throws(SystemError) -> any FileHandle {
    let existing = names[path]
    switch mode {
    case .readOnly, .readWrite:
      guard let existing else { throw SystemError(call: "open", errno: ENOENT, context: path) }
      return Handle(disk: self, path: path, inode: existing, writable: mode == .readWrite, generation: generation)
    case .readWriteCreate:
      if let existing { return Handle(disk: self, path: path, inode: existing, writable: true, generation: generation) }
    case .readWriteCreateTruncate, .writeCreateTruncate:
      if let existing {
        record(existing, offset: 0, bytes: nil, length: 0)
        return Handle(disk: self, path: path, inode: existing, writable: true, generation: generation)
      }
    case .writeCreateExclusive:
      if existing != nil { throw SystemError(call: "open", errno: EEXIST, context: path) }
    }
    try requireDirectory(parent(of: path), path: path)
    let inode = Inode()
    change(.link(name: path, inode: inode))
    return Handle(disk: self, path: path, inode: inode, writable: true, generation: generation)
  }

  public func readFile(_ path: String) throws(SystemError) -> [UInt8] {
    guard let inode = names[path] else { throw SystemError(call: "open", errno: ENOENT, context: path) }
    return inode.current
  }

  public func exists(_ path: String) -> Bool { names[path] != nil || directories.contains(path) }

  public func listDirectory(_ path: String) throws(SystemError) -> [String] {
    try requireDirectory(path, path: path)
    let prefix = path.hasSuffix("/") ? path : path + "/"
    return names.keys.filter { $0.hasPrefix(prefix) && !$0.dropFirst(prefix.count).contains("/") }
      .map { String($0.dropFirst(prefix.count)) }.sorted()
  }

  public func makeDirectories(_ path: String, durable: Bool) throws(SystemError) {
    // Directories themselves are kept across crashes (their creation is not what is tested).
    var prefix = ""
    for component in path.split(separator: "/") {
      prefix += "/" + component
      directories.insert(prefix)
    }
  }

  public func rename(_ source: String, to destination: String) throws(SystemError) {
    guard let inode = names[source] else { throw SystemError(call: "rename", errno: ENOENT, context: source) }
    try requireDirectory(parent(of: destination), path: destination)
    change(.link(name: destination, inode: inode))
    change(.unlink(name: source))
  }

  public func unlink(_ path: String) throws(SystemError) {
    guard names[path] != nil else { throw SystemError(call: "unlink", errno: ENOENT, context: path) }
    change(.unlink(name: path))
  }

  public func syncDirectory(_ path: String) throws(SystemError) {
    try requireDirectory(path, path: path)
    for change in pendingNames.removeValue(forKey: path) ?? [] { apply(change, to: &durableNames) }
  }

  // MARK: Internals

  private func parent(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
    return String(path[..<slash])
  }

  private func requireDirectory(_ directory: String, path: String) throws(SystemError) {
    guard directories.contains(directory) else { throw SystemError(call: "open", errno: ENOENT, context: path) }
  }

  private func change(_ change: NameChange) {
    apply(change, to: &names)
    let name: String
    switch change {
    case .link(let linked, _): name = linked
    case .unlink(let unlinked): name = unlinked
    }
    pendingNames[parent(of: name), default: []].append(change)
  }

  private func apply(_ change: NameChange, to table: inout [String: Inode]) {
    switch change {
    case .link(let name, let inode): table[name] = inode
    case .unlink(let name): table[name] = nil
    }
  }

  /// Bytes of file data the disk holds now.
  public var bytesStored: Int {
    var seen: Set<ObjectIdentifier> = []
    var total = 0
    for inode in names.values where seen.insert(ObjectIdentifier(inode)).inserted { total += inode.current.count }
    return total
  }

  /// The node loses power now: every later call fails, until `crash()`.
  public func losePowerNow() { crashRequested = true }

  fileprivate func record(_ inode: Inode, offset: Int, bytes: [UInt8]?, length: Int) {
    if let bytes {
      if offset + bytes.count > inode.current.count {
        inode.current.append(contentsOf: repeatElement(0, count: offset + bytes.count - inode.current.count))
      }
      inode.current.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
    } else if length < inode.current.count {
      inode.current.removeSubrange(length...)
    }
    inode.unsynced.append((offset, bytes, length))
  }

  fileprivate func write(_ inode: Inode, _ bytes: [UInt8], at offset: Int, path: String) throws(SystemError) {
    if crashRequested { throw SystemError(call: "pwrite", errno: EIO, context: path) }
    let growth = max(0, offset + bytes.count - inode.current.count)
    if growth > 0 && bytesStored + growth > capacityBytes {
      spaceFailures += 1
      throw SystemError(call: "pwrite", errno: ENOSPC, context: path)
    }
    record(inode, offset: offset, bytes: bytes, length: 0)
  }

  fileprivate func sync(_ inode: Inode, path: String) throws(SystemError) {
    if crashRequested || random.chance(ppm: crashAtSyncPpm) {
      crashRequested = true
      throw SystemError(call: "fdatasync", errno: EIO, context: path)
    }
    if random.chance(ppm: fsyncFailurePpm) {
      // After a failed fsync the kernel may have dropped the dirty pages: what reaches the disk
      // is unknown, and the caller must not trust anything unsynced (fsyncgate).
      fsyncFailures += 1
      throw SystemError(call: "fdatasync", errno: EIO, context: path)
    }
    inode.durable = inode.current
    inode.unsynced = []
    if random.chance(ppm: crashAfterSyncPpm) { crashRequested = true }
  }

  /// An open file of the simulated disk.
  final class Handle: FileHandle {
    let disk: SimulatedDisk
    let path: String
    let inode: Inode
    let writable: Bool
    let generation: Int
    var isOpen = true

    init(disk: SimulatedDisk, path: String, inode: Inode, writable: Bool, generation: Int) {
      self.disk = disk
      self.path = path
      self.inode = inode
      self.writable = writable
      self.generation = generation
    }

    private func requireOpen() throws(SystemError) {
      precondition(isOpen, "\(path): used after close")
      guard generation == disk.generation else { throw SystemError(call: "io", errno: EIO, context: path) }
    }

    func close() throws(SystemError) {
      precondition(isOpen, "\(path): closed twice")
      isOpen = false
    }

    func write(all bytes: [UInt8], at offset: UInt64) throws(SystemError) {
      try requireOpen()
      guard writable else { throw SystemError(call: "pwrite", errno: EBADF, context: path) }
      try disk.write(inode, bytes, at: Int(offset), path: path)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
      try requireOpen()
      let start = min(Int(offset), inode.current.count)
      let count = min(buffer.count, inode.current.count - start)
      for position in 0..<count { buffer[position] = inode.current[start + position] }
      return count
    }

    func readAll() throws(SystemError) -> [UInt8] {
      try requireOpen()
      return inode.current
    }

    func size() throws(SystemError) -> UInt64 {
      try requireOpen()
      return UInt64(inode.current.count)
    }

    func sync() throws(SystemError) {
      try requireOpen()
      try disk.sync(inode, path: path)
    }

    func syncData() throws(SystemError) { try sync() }

    func truncate(to length: UInt64) throws(SystemError) {
      try requireOpen()
      disk.record(inode, offset: 0, bytes: nil, length: Int(length))
    }

    func tryLockExclusive() throws(SystemError) -> Bool {
      try requireOpen()
      return true
    }
  }
}
