import Checksum
import Glibc
import Platform

/// The node's write-ahead log: one segmented log shared by every consensus group of the node,
/// plus one snapshot file per group.
///
/// # Use
/// The engine's loop appends the records of one turn for all groups (`append`), then calls `sync()`
/// once (group commit); nothing is durable before `sync()` returns. On start it opens the log
/// (recovery runs in `init`), `replay`s every surviving record, and loads the groups' snapshots.
/// After a snapshot covers a group's entries, `releaseSegments` deletes the sealed segments that
/// hold nothing else still needed. Released segments take every record kind with them: a group's
/// latest `.hardState` (term, vote: Raft safety) and `.groupCreated` may be in one. So the engine,
/// before releasing, appends the latest hard state and group record of every live group again and
/// `sync()`s; those copies are in the current segment, which is never released.
///
/// # I/O
/// Every file and directory operation goes through the injected `FileStore` (`PosixFileStore` on a
/// node, a simulated disk in the deterministic simulator), and nothing depends on the order a
/// directory lists its entries in: names are sorted before anything is decided from them. So a
/// simulated run replays from its seed through this very code.
///
/// # Threads
/// Not thread-safe, and not `Sendable`: one thread (the engine's loop) owns the log and makes every
/// call. Calls block on disk I/O, so that thread must not be an event loop.
///
/// # On-disk format (version 2). All integers fixed-width little-endian.
/// The directory holds:
/// - `LOCK`: empty; held with an exclusive `flock` while a log is open, so two logs never share it.
/// - Segments `wal-<sequence: 16 lowercase hex digits>.log`, sequences contiguous (a gap is
///   corruption: a missing file would be silent loss). Each starts with a 32-byte header:
///   ```
///   0  magic "CAUCUSWL" (8 bytes)     8  version u16 = 2     10 reserved (6 bytes, zero)
///   16 sequence u64 (= the file name) 24 reserved (8 bytes, zero)
///   ```
///   followed by records, each framed as
///   ```
///   0  length u32: bytes after the CRC (25 + payload), at most recordBytesMax
///   4  crc u32: CRC-32C (Castagnoli) of the bytes after it (kind ... payload)
///   8  kind u8 (WALRecordKind)   9 group u64   17 index u64   25 term u64   33 payload
///   ```
///   A frame of kind 0xFF is a sync marker, the log's own (33 bytes, never replayed): group 0,
///   index = the marker's own offset in the segment, term = the segment's sequence, no payload.
///   After a `sync()` completes, the next write to the segment (the next `append`'s, or
///   `close()`'s) starts with one, so a marker found on disk proves that every byte before it was
///   synced. Version 1 segments (no markers) are still read; the log appends only to a version 2
///   segment. A segment is created complete: header written to `<name>.tmp`, fsynced, renamed,
///   directory fsynced. When the next record would take the current segment past `segmentBytesMax`,
///   the segment is fsynced (sealed) and a new one created; so every segment but the last ends
///   exactly after its last frame.
/// - Snapshots `snapshot-<group: 16 lowercase hex digits>.snap`, written to `<name>.tmp`, fsynced,
///   renamed over the old one, directory fsynced:
///   ```
///   0  magic "CAUCUSSN" (8 bytes)   8  version u16 = 1   10 reserved (6 bytes, zero)
///   16 body length u64   24 crc u32: CRC-32C of the body   28 reserved (4 bytes, zero)
///   32 body: group u64, index u64, term u64, data (body length - 24 bytes)
///   ```
/// Leftover `.tmp` files are from interrupted writes and are deleted on open.
///
/// # Recovery (in `init`)
/// Every segment is read and every record's frame and CRC checked. A wrong magic or version refuses
/// start (`badMagic`, `badVersion`). Every segment but the last was fsynced when it was sealed, so
/// a bad frame (short, impossible length, CRC mismatch, a marker not written where it lies) in one
/// refuses start with `WALError.corrupt` naming the file and offset: never silent loss. So does a
/// CRC-valid record of an unknown kind or over `recordBytesMax` (the limit was lowered since it was
/// written) anywhere. In the LAST segment, a bad frame followed by a genuine sync marker (one whose
/// offset and sequence say it was written where it lies) is damage to synced bytes and refuses
/// start too. A bad frame with no genuine marker after it lies past the last point proven synced:
/// it starts the unsynced tail, which a power loss may leave in any shape (cut short, zeros,
/// garbage, or a hole followed by frames that did reach the disk); the file is truncated there and
/// fsynced (reported in `recovery`). Records are not kept in memory; only, per segment, each
/// group's highest `.entry` index (for `releaseSegments`).
///
/// Why markers, written after the sync: appends are not synced one by one (the engine appends a
/// commit-only turn without `sync()`), and after a power loss the unsynced bytes may come back with
/// a hole before frames that did reach the disk. Without anything on disk saying how far the syncs
/// got, recovery must either refuse every such hole (start-up fails after an ordinary power loss)
/// or cut at the first damage (bit rot in synced records is cut silently). A marker covered by its
/// own fsync would not do: if the power fails during that fsync, the marker's page may be on disk
/// and an earlier page not, and nothing was synced. A marker written with the next write after the
/// sync completed proves the sync by being there at all, costs no fsync and no extra write (it
/// rides in the next append's write), and 33 bytes per synced turn. What no marker proves is
/// whether the LAST sync completed (its marker would be the next write): damage in the last synced
/// turn before a crash reads as unsynced and is cut; a clean `close()` writes the marker for its
/// sync (when the segment has room), so after one nothing synced is left unproven. A version 1 last
/// segment has no markers and keeps version 1's rule: a bad frame followed by any valid frame
/// refuses start.
public final class WriteAheadLog {
  public let directory: String
  public let options: WALOptions
  /// Where every file and directory operation of the log goes.
  public let fileStore: any FileStore
  /// What recovery found and did when this log was opened.
  public let recovery: WALRecovery

  /// A segment as known in memory. `bytes` is where the next record goes (current) or the file's
  /// size (sealed); `entryIndexMax[group]` is the highest `.entry` index of `group` in it.
  struct Segment {
    let sequence: UInt64
    let path: String
    var bytes: UInt64
    var records: UInt64
    var entryIndexMax: [UInt64: UInt64]
  }

  private enum State {
    case open
    case failed(reason: String)
    case closed
  }

  static let lockFileName = "LOCK"
  /// The frame buffer is reused across appends; one holding more than this after a large batch is
  /// dropped so a single big record does not pin its memory.
  static let frameBufferRetainedBytesMax = 4 << 20
  /// Recovery reads at most this many directory entries as segments (a limit on every loop).
  static let segmentsMax = 1_000_000

  private var state = State.open
  /// Sealed segments, oldest first; their files are closed. Invariant: sequences contiguous and
  /// all below `current.sequence`.
  private var sealed: [Segment]
  private var current: Segment
  /// Open read-write; nil only after a failed roll or close.
  private var currentFile: (any FileHandle)?
  private var lockFile: (any FileHandle)?
  /// Records appended to the current segment since its last sync.
  private var unsynced = false
  /// A sync of the current segment completed and nothing was written to it since: its next write
  /// starts with a sync marker. Invariant: true only when the current segment holds records.
  private var syncMarkerDue = false
  private var frameBuffer: [UInt8] = []
  private var counters = WALStatistics()

  /// Opens (creating if needed, like mkdir -p) the log in `directory` and runs recovery; see the
  /// type's documentation. Throws `corrupt`/`badMagic`/`badVersion` naming the file when the log
  /// cannot be trusted, `locked` when another open log holds the directory. Every file operation
  /// goes through `fileStore`.
  public init(
    directory: String, options: WALOptions = .init(), fileStore: any FileStore = PosixFileStore()
  ) throws(WALError) {
    try options.validate()
    self.directory = directory
    self.options = options
    self.fileStore = fileStore
    let lock: any FileHandle
    let locked: Bool
    do throws(SystemError) {
      try fileStore.makeDirectories(directory, durable: true)
      lock = try fileStore.open(directory + "/" + Self.lockFileName, mode: .readWriteCreate)
      locked = try lock.tryLockExclusive()
    } catch {
      throw .io(error)
    }
    guard locked else { throw .locked(directory: directory) }
    var recovery = WALRecovery()
    var segments = try Self.recoverSegments(
      fileStore: fileStore, directory: directory, options: options, recovery: &recovery)
    precondition(!segments.isEmpty, "recovery leaves at least one segment")
    let last = segments.removeLast()
    self.sealed = segments.map(\.segment)
    self.current = last.segment
    self.currentFile = last.file
    self.lockFile = lock
    self.recovery = recovery
    counters.segments = sealed.count + 1
    for (position, segment) in sealed.enumerated() {
      precondition(
        segment.sequence + UInt64(sealed.count - position) == current.sequence,
        "contiguous segments")
    }
  }

  deinit {
    // Handles are dropped (a `File` closes itself); nothing is synced here: call `close()` for that.
  }

  // MARK: - Records

  /// Frames `records` and writes them to the current segment: one write for the batch, or one per
  /// segment when the batch crosses `segmentBytesMax` (the full segment is fsynced before the next
  /// is started). The first append after a `sync()` starts with a sync marker. Not durable until
  /// `sync()`. A record over `recordBytesMax` refuses the whole batch before anything is written.
  /// An I/O failure makes the log unusable until reopened.
  public func append(_ records: [WALRecord]) throws(WALError) {
    try checkOpen()
    for record in records where record.recordBytes > Int(options.recordBytesMax) {
      throw .recordTooLarge(
        group: record.group, index: record.index, bytes: UInt64(record.recordBytes),
        limit: options.recordBytesMax)
    }
    guard !records.isEmpty else { return }
    precondition(frameBuffer.isEmpty, "frame buffer drained after every append")
    var bufferedRecords: UInt64 = 0
    do throws(SystemError) {
      for record in records {
        // A due marker goes just before the batch's first record, in the same segment: if the two
        // do not fit, the roll makes the marker pointless (it fsyncs this segment and clears it).
        let markerBytes = syncMarkerDue ? UInt64(FrameFormat.syncMarkerFrameBytes) : 0
        let frameBytes = UInt64(record.frameBytes)
        let segmentHasRecords = current.records + bufferedRecords > 0
        precondition(!syncMarkerDue || segmentHasRecords, "a marker is due only after records")
        if segmentHasRecords
          && current.bytes + UInt64(frameBuffer.count) + markerBytes + frameBytes
            > options.segmentBytesMax
        {
          try writeFrameBuffer(records: bufferedRecords)
          bufferedRecords = 0
          try roll()
        }
        if syncMarkerDue {
          precondition(frameBuffer.isEmpty, "the marker precedes the batch")
          FrameFormat.encodeSyncMarker(
            offset: current.bytes, sequence: current.sequence, into: &frameBuffer)
          syncMarkerDue = false
        }
        FrameFormat.encode(record, into: &frameBuffer, recordBytesMax: options.recordBytesMax)
        bufferedRecords += 1
        if record.kind == .entry {
          current.entryIndexMax[record.group] = max(
            current.entryIndexMax[record.group] ?? 0, record.index)
        }
      }
      try writeFrameBuffer(records: bufferedRecords)
    } catch {
      frameBuffer.removeAll(keepingCapacity: true)
      state = .failed(reason: "\(error)")
      throw .io(error)
    }
    if frameBuffer.capacity > Self.frameBufferRetainedBytesMax { frameBuffer = [] }
  }

  /// Whether records were appended since the last sync.
  public var hasUnsyncedRecords: Bool { unsynced }

  /// Makes every appended record durable: fdatasync of the current segment (earlier segments were
  /// fsynced when sealed). Nothing to do if nothing was appended since the last sync. A failure
  /// makes the log unusable: after a failed fsync the kernel may have dropped the dirty pages.
  public func sync() throws(WALError) {
    try checkOpen()
    guard unsynced else { return }
    guard let file = currentFile else { preconditionFailure("an open log has a current segment") }
    try syncCurrentSegment(file)
  }

  /// Calls `visit` with every record in the log, oldest first, reading one segment at a time from
  /// disk (frames and CRCs checked again). Errors thrown by `visit` stop the replay and propagate.
  public func replay(_ visit: (WALRecord) throws -> Void) throws {
    try checkOpen()
    for segment in sealed + [current] {
      let bytes: [UInt8]
      do { bytes = try fileStore.readFile(segment.path) } catch { throw WALError.io(error) }
      guard bytes.count >= segment.bytes else {
        throw WALError.corrupt(
          file: segment.path, offset: UInt64(bytes.count),
          reason:
            "segment shrank from \(segment.bytes) to \(bytes.count) bytes while the log was open")
      }
      let end = Int(segment.bytes)
      var records: UInt64 = 0
      try bytes.withUnsafeBytes { raw in
        try SegmentFormat.checkHeader(raw, file: segment.path, sequence: segment.sequence)
        var offset = SegmentFormat.headerBytes
        while offset < end {
          switch FrameFormat.decode(
            raw, at: offset, end: end, recordBytesMax: options.recordBytesMax)
          {
          case .valid(let frame):
            let payload = Array(UnsafeRawBufferPointer(rebasing: raw[frame.payload]))
            try visit(
              WALRecord(
                kind: frame.kind, group: frame.group, index: frame.index, term: frame.term,
                payload: payload))
            records += 1
            offset = frame.next
          case .syncMarker(let marker)
          where marker.isGenuine(at: offset, sequence: segment.sequence):
            offset = marker.next
          case .syncMarker(let marker):
            throw WALError.corrupt(
              file: segment.path, offset: UInt64(offset),
              reason: "sync marker of offset \(marker.offset) in segment \(marker.sequence) "
                + "(changed while the log was open)")
          case .invalid(let reason):
            throw WALError.corrupt(
              file: segment.path, offset: UInt64(offset),
              reason: "\(reason) (changed while the log was open)")
          case .unknownKind(let kind):
            throw WALError.corrupt(
              file: segment.path, offset: UInt64(offset), reason: "unknown record kind \(kind)")
          case .oversized(let length):
            throw WALError.corrupt(
              file: segment.path, offset: UInt64(offset),
              reason: "record length \(length) exceeds recordBytesMax \(options.recordBytesMax)")
          }
        }
        precondition(offset == end, "frames end exactly at the segment's end")
      }
      guard records == segment.records else {
        throw WALError.corrupt(
          file: segment.path, offset: UInt64(end),
          reason: "replay found \(records) records, recovery and appends counted \(segment.records)"
        )
      }
    }
  }

  /// Deletes the longest prefix of sealed segments (never the current one) in which every `.entry`
  /// record has `index <= coveredIndex[group]`; a group absent from `coveredIndex` counts as fully
  /// covered (deleted). Other record kinds never block release. Oldest first, so a crash midway
  /// leaves a contiguous suffix; the directory is fsynced at the end. Returns how many were deleted.
  /// Hard states and group records in released segments are gone: re-append and sync the live
  /// groups' latest ones first (see the type's documentation), and pass the segment they started
  /// in as `before`: only segments older than it go. A restatement that filled a segment rolls
  /// into the next one, and the segment holding its first part must not be released with the
  /// rest (found by the cluster simulator: recovery then met records of a group without its
  /// creation record).
  @discardableResult
  public func releaseSegments(coveredIndex: [UInt64: UInt64], before sequence: UInt64 = .max) throws(WALError) -> Int {
    try checkOpen()
    let releasable = releasableSegmentCount(coveredIndex: coveredIndex, before: sequence)
    guard releasable > 0 else { return 0 }
    var deleted = 0
    defer {
      sealed.removeFirst(deleted)
      counters.segmentsReleased += UInt64(deleted)
      counters.segments = sealed.count + 1
    }
    do throws(SystemError) {
      for segment in sealed.prefix(releasable) {
        try fileStore.unlink(segment.path)
        deleted += 1
      }
      try fileStore.syncDirectory(directory)
    } catch {
      throw .io(error)
    }
    precondition(deleted == releasable, "released the whole prefix")
    return deleted
  }

  /// How many segments `releaseSegments` would delete now: the caller can skip restating its
  /// records when none would go.
  public func releasableSegmentCount(coveredIndex: [UInt64: UInt64], before sequence: UInt64 = .max) -> Int {
    var releasable = 0
    for segment in sealed where segment.sequence < sequence {
      // A pure test over the dictionary: its (hash-seeded) order cannot change the answer, and
      // the unlinks follow `sealed`, oldest first.
      let covered = segment.entryIndexMax.allSatisfy { group, indexMax in
        guard let coveredMax = coveredIndex[group] else { return true }
        return indexMax <= coveredMax
      }
      guard covered else { break }
      releasable += 1
    }
    return releasable
  }

  /// Counters since the log was opened.
  public var statistics: WALStatistics { counters }

  /// The sequence of the segment appends go to now: what `releaseSegments(before:)` keeps.
  public var currentSegmentSequence: UInt64 { current.sequence }

  /// Syncs what was appended (unless an earlier failure made that pointless), writes the sync
  /// marker that proves it (if the segment has room; not synced: only that proof would be lost) and
  /// closes the files. Further calls throw `closed`; closing again does nothing.
  public func close() throws(WALError) {
    var firstError: SystemError? = nil
    if case .open = state, let file = currentFile {
      do throws(SystemError) {
        if unsynced {
          let start = MonotonicClock.nowNanoseconds()
          try file.syncData()
          counters.recordSync(nanoseconds: MonotonicClock.nowNanoseconds() &- start)
          unsynced = false
          syncMarkerDue = true
        }
        let markerBytes = UInt64(FrameFormat.syncMarkerFrameBytes)
        if syncMarkerDue && current.bytes + markerBytes <= options.segmentBytesMax {
          var marker: [UInt8] = []
          FrameFormat.encodeSyncMarker(
            offset: current.bytes, sequence: current.sequence, into: &marker)
          precondition(marker.count == FrameFormat.syncMarkerFrameBytes, "marker size")
          try file.write(all: marker, at: current.bytes)
          current.bytes += markerBytes
          counters.bytesAppended += markerBytes
          syncMarkerDue = false
        }
      } catch {
        firstError = error
      }
    }
    if case .closed = state { return }
    state = .closed
    for file in [currentFile, lockFile] {
      guard let file, file.isOpen else { continue }
      do throws(SystemError) { try file.close() } catch { firstError = firstError ?? error }
    }
    currentFile = nil
    lockFile = nil
    if let firstError { throw .io(firstError) }
  }

  /// Closes the files without writing or syncing anything (not even a sync marker), for a log
  /// whose storage failed: its lock is released, so a new `WriteAheadLog` on the directory can
  /// recover it. Further calls throw `closed`.
  public func abandon() {
    state = .closed
    for file in [currentFile, lockFile] {
      guard let file, file.isOpen else { continue }
      try? file.close()
    }
    currentFile = nil
    lockFile = nil
  }

  /// Fsyncs the current segment even when nothing was appended since the log was opened. After an
  /// in-process reopen (`abandon`, then a new log on the directory), recovery keeps the records the
  /// earlier log wrote and never synced: they are in the page cache, not proven on disk. The
  /// engine treats what it recovers as durable, so it makes it so before acting on it.
  public func syncRecoveredRecords() throws(WALError) {
    try checkOpen()
    guard let file = currentFile else { preconditionFailure("an open log has a current segment") }
    // A segment without records (a new log) holds nothing to make durable. (Earlier segments were
    // fsynced when they were sealed.)
    guard current.records > 0 else { return }
    try syncCurrentSegment(file)
  }

  /// Fsyncs the current segment; the next append starts with the marker that proves it. A
  /// failure makes the log unusable: after a failed fsync the kernel may have dropped the dirty pages.
  private func syncCurrentSegment(_ file: any FileHandle) throws(WALError) {
    do throws(SystemError) {
      let start = MonotonicClock.nowNanoseconds()
      try file.syncData()
      counters.recordSync(nanoseconds: MonotonicClock.nowNanoseconds() &- start)
    } catch {
      state = .failed(reason: "\(error)")
      throw .io(error)
    }
    unsynced = false
    syncMarkerDue = true
  }

  // MARK: - Snapshots

  /// Path of `group`'s snapshot file.
  public func snapshotPath(group: UInt64) -> String {
    directory + "/" + SnapshotFormat.fileName(group: group)
  }

  /// Replaces `snapshot.group`'s snapshot atomically: temporary file, fsync, rename, directory fsync.
  /// `partway` is passed once the temporary file holds the header and not yet the data (the
  /// caller's failpoint: a snapshot taken here, not one received).
  public func writeSnapshot(_ snapshot: WALSnapshot, partway: Failpoint? = nil) throws(WALError) {
    try checkOpen()
    let bodyBytes = UInt64(SnapshotFormat.bodyFixedBytes + snapshot.data.count)
    guard bodyBytes <= options.snapshotBytesMax else {
      throw .snapshotTooLarge(
        group: snapshot.group, bytes: bodyBytes, limit: options.snapshotBytesMax)
    }
    let path = snapshotPath(group: snapshot.group)
    let temporaryPath = path + SegmentFormat.temporarySuffix
    let prefix = SnapshotFormat.encodePrefix(snapshot)
    precondition(
      prefix.count == SnapshotFormat.headerBytes + SnapshotFormat.bodyFixedBytes,
      "snapshot prefix size")
    do throws(SystemError) {
      let file = try fileStore.open(temporaryPath, mode: .writeCreateTruncate)
      try file.write(all: prefix, at: 0)
      partway?.pass()
      try file.write(all: snapshot.data, at: UInt64(prefix.count))
      try file.sync()
      try file.close()
      try fileStore.rename(temporaryPath, to: path)
      try fileStore.syncDirectory(directory)
    } catch {
      try? fileStore.unlink(temporaryPath)
      throw .io(error)
    }
  }

  /// `group`'s snapshot, or nil if it has none. Header, length and CRC are checked; damage throws
  /// `corrupt` (or `badMagic`/`badVersion`) naming the file.
  public func loadSnapshot(group: UInt64) throws(WALError) -> WALSnapshot? {
    try checkOpen()
    let path = snapshotPath(group: group)
    let file: any FileHandle
    do throws(SystemError) {
      file = try fileStore.open(path, mode: .readOnly)
    } catch {
      if error.errno == ENOENT { return nil }
      throw .io(error)
    }
    defer { try? file.close() }
    let prefixBytes = SnapshotFormat.headerBytes + SnapshotFormat.bodyFixedBytes
    do {
      let size = try file.size()
      guard size >= UInt64(prefixBytes) else {
        throw WALError.corrupt(
          file: path, offset: 0,
          reason: "snapshot file is \(size) bytes; the smallest is \(prefixBytes)")
      }
      var prefix = [UInt8](repeating: 0, count: prefixBytes)
      let prefixRead = try prefix.withUnsafeMutableBytes { raw in
        Result { () throws(SystemError) in try file.read(into: raw, at: 0) }
      }.get()
      let header = try Self.checkSnapshotHeader(
        prefix, count: prefixRead, fileSize: size, path: path, options: options)
      var data = [UInt8](repeating: 0, count: Int(size) - prefixBytes)
      let dataRead = try data.withUnsafeMutableBytes { raw in
        Result { () throws(SystemError) in try file.read(into: raw, at: UInt64(prefixBytes)) }
      }.get()
      guard dataRead == data.count else {
        throw WALError.corrupt(
          file: path, offset: UInt64(prefixBytes + dataRead),
          reason: "snapshot file shrank while read")
      }
      let computed = data.withUnsafeBytes { dataBytes in
        prefix.withUnsafeBytes { prefixBytes in
          CRC32C.checksum(
            dataBytes,
            continuing: CRC32C.checksum(
              UnsafeRawBufferPointer(rebasing: prefixBytes[SnapshotFormat.headerBytes...])))
        }
      }
      guard computed == header.crc else {
        throw WALError.corrupt(
          file: path, offset: UInt64(SnapshotFormat.headerBytes),
          reason: "snapshot CRC mismatch: stored \(hex8(header.crc)), computed \(hex8(computed))")
      }
      let snapshot = prefix.withUnsafeBytes { raw in
        WALSnapshot(
          group: readLittleEndian(raw, at: 32, as: UInt64.self),
          index: readLittleEndian(raw, at: 40, as: UInt64.self),
          term: readLittleEndian(raw, at: 48, as: UInt64.self), data: data)
      }
      guard snapshot.group == group else {
        throw WALError.corrupt(
          file: path, offset: UInt64(SnapshotFormat.headerBytes),
          reason: "snapshot is of group \(snapshot.group), its file name says group \(group)")
      }
      return snapshot
    } catch let error as WALError {
      throw error
    } catch let error as SystemError {
      throw .io(error)
    } catch {
      preconditionFailure("unexpected error \(error)")
    }
  }

  /// Deletes `group`'s snapshot (if any) and fsyncs the directory.
  public func deleteSnapshot(group: UInt64) throws(WALError) {
    try checkOpen()
    do throws(SystemError) {
      do throws(SystemError) {
        try fileStore.unlink(snapshotPath(group: group))
      } catch where error.errno == ENOENT {
        return
      }
      try fileStore.syncDirectory(directory)
    } catch {
      throw .io(error)
    }
  }

  /// Groups that have a snapshot file, ascending.
  public func snapshotGroups() throws(WALError) -> [UInt64] {
    try checkOpen()
    do throws(SystemError) {
      return try fileStore.listDirectory(directory).compactMap(SnapshotFormat.group(fileName:))
        .sorted()
    } catch {
      throw .io(error)
    }
  }

  // MARK: - Internals

  private func checkOpen() throws(WALError) {
    switch state {
    case .open: return
    case .closed: throw .closed
    case .failed(let reason): throw .unusable(reason: reason)
    }
  }

  /// Writes the buffered frames at the end of the current segment.
  private func writeFrameBuffer(records: UInt64) throws(SystemError) {
    guard !frameBuffer.isEmpty else {
      precondition(records == 0, "records buffered without bytes")
      return
    }
    guard let file = currentFile else { preconditionFailure("an open log has a current segment") }
    try file.write(all: frameBuffer, at: current.bytes)
    current.bytes += UInt64(frameBuffer.count)
    current.records += records
    counters.recordsAppended += records
    counters.bytesAppended += UInt64(frameBuffer.count)
    unsynced = true
    frameBuffer.removeAll(keepingCapacity: true)
  }

  /// Seals the current segment (fsync, close) and starts the next one.
  private func roll() throws(SystemError) {
    guard let file = currentFile else { preconditionFailure("an open log has a current segment") }
    precondition(current.records > 0, "never roll an empty segment")
    let start = MonotonicClock.nowNanoseconds()
    try file.sync()
    counters.recordSync(nanoseconds: MonotonicClock.nowNanoseconds() &- start)
    unsynced = false
    // Nothing to mark: this segment is sealed (every segment but the last is trusted whole), and
    // the next one's header was synced when it was created.
    syncMarkerDue = false
    currentFile = nil
    try file.close()
    sealed.append(current)
    let next = try Self.createSegment(
      fileStore: fileStore, directory: directory, sequence: current.sequence + 1)
    current = next.segment
    currentFile = next.file
    counters.segments = sealed.count + 1
  }

  /// Creates segment `sequence` complete (temporary file, header, fsync, rename, directory fsync)
  /// and opens it for appending.
  private static func createSegment(
    fileStore: any FileStore, directory: String, sequence: UInt64
  ) throws(SystemError) -> (segment: Segment, file: any FileHandle) {
    let path = directory + "/" + SegmentFormat.fileName(sequence: sequence)
    let temporaryPath = path + SegmentFormat.temporarySuffix
    let temporary = try fileStore.open(temporaryPath, mode: .writeCreateTruncate)
    try temporary.write(all: SegmentFormat.header(sequence: sequence), at: 0)
    try temporary.sync()
    try temporary.close()
    try fileStore.rename(temporaryPath, to: path)
    try fileStore.syncDirectory(directory)
    let file = try fileStore.open(path, mode: .readWrite)
    let segment = Segment(
      sequence: sequence, path: path, bytes: UInt64(SegmentFormat.headerBytes), records: 0,
      entryIndexMax: [:])
    return (segment, file)
  }

  /// Finds, checks and (last one only) repairs the segments; creates the first one for a new log,
  /// and a new last one when the last is of an older version (markers go only into version 2).
  /// Returns them oldest first, the last with its file open for appending.
  private static func recoverSegments(
    fileStore: any FileStore, directory: String, options: WALOptions, recovery: inout WALRecovery
  ) throws(WALError) -> [(segment: Segment, file: (any FileHandle)?)] {
    do {
      // Sorted: which leftover is unlinked first, the order `temporaryFilesRemoved` reports and
      // which bad name is refused must not depend on the order the directory lists them in.
      let names = try fileStore.listDirectory(directory).sorted()
      var sequences: [UInt64] = []
      for name in names {
        if name.hasSuffix(SegmentFormat.temporarySuffix)
          && (name.hasPrefix(SegmentFormat.filePrefix) || name.hasPrefix(SnapshotFormat.filePrefix))
        {
          try fileStore.unlink(directory + "/" + name)
          recovery.temporaryFilesRemoved.append(name)
        } else if let sequence = SegmentFormat.sequence(fileName: name) {
          sequences.append(sequence)
        } else if name.hasPrefix(SegmentFormat.filePrefix)
          && name.hasSuffix(SegmentFormat.fileSuffix)
        {
          throw WALError.corrupt(
            file: directory + "/" + name, offset: 0,
            reason: "not a segment name (wal-<16 lowercase hex digits>.log)")
        }
        guard sequences.count <= segmentsMax else {
          throw WALError.corrupt(
            file: directory, offset: 0, reason: "more than \(segmentsMax) segments")
        }
      }
      if !recovery.temporaryFilesRemoved.isEmpty { try fileStore.syncDirectory(directory) }
      sequences.sort()
      recovery.segmentsFound = sequences.count
      guard !sequences.isEmpty else {
        let first = try createSegment(fileStore: fileStore, directory: directory, sequence: 1)
        return [(first.segment, first.file)]
      }
      for (previous, next) in zip(sequences, sequences.dropFirst()) where next != previous + 1 {
        throw WALError.corrupt(
          file: directory + "/" + SegmentFormat.fileName(sequence: previous + 1), offset: 0,
          reason: "segment missing: found \(SegmentFormat.fileName(sequence: previous)) and "
            + "\(SegmentFormat.fileName(sequence: next)) but nothing between")
      }
      var segments: [(segment: Segment, file: (any FileHandle)?)] = []
      for (position, sequence) in sequences.enumerated() {
        let isLast = position == sequences.count - 1
        let path = directory + "/" + SegmentFormat.fileName(sequence: sequence)
        let file = try fileStore.open(path, mode: isLast ? .readWrite : .readOnly)
        let bytes = try file.readAll()
        let scan = try bytes.withUnsafeBytes { raw in
          Result { () throws(WALError) in
            try scanSegment(
              raw, path: path, sequence: sequence, isLast: isLast,
              recordBytesMax: options.recordBytesMax)
          }
        }.get()
        var segment = scan.segment
        if let torn = scan.tornAt {
          precondition(isLast, "only the last segment may have a torn tail")
          try file.truncate(to: torn.offset)
          try file.sync()
          segment.bytes = torn.offset
          recovery.truncatedFile = path
          recovery.truncatedOffset = torn.offset
          recovery.truncatedBytes = UInt64(bytes.count) - torn.offset
          recovery.truncationReason = torn.reason
        }
        recovery.recordsFound += segment.records
        if isLast && scan.version >= SegmentFormat.versionWithSyncMarkers {
          segments.append((segment, file))
        } else if isLast {
          // Sealed like a roll does (fsync), so that it is trusted whole from now on; appending
          // markers to it would not help, since its header keeps it under version 1's tail rule.
          try file.sync()
          try file.close()
          segments.append((segment, nil))
          let next = try createSegment(
            fileStore: fileStore, directory: directory, sequence: sequence + 1)
          segments.append((next.segment, next.file))
        } else {
          try file.close()
          segments.append((segment, nil))
        }
      }
      return segments
    } catch let error as WALError {
      throw error
    } catch let error as SystemError {
      throw .io(error)
    } catch {
      preconditionFailure("unexpected error \(error)")
    }
  }

  /// Checks one segment's header and frames. Returns its version, its in-memory index and, for the
  /// last segment, where its unsynced (or torn) tail starts; throws `corrupt` for damage that is
  /// not in such a tail.
  static func scanSegment(
    _ raw: UnsafeRawBufferPointer, path: String, sequence: UInt64, isLast: Bool,
    recordBytesMax: UInt32
  ) throws(WALError) -> (
    version: UInt16, segment: Segment, tornAt: (offset: UInt64, reason: String)?
  ) {
    let version = try SegmentFormat.checkHeader(raw, file: path, sequence: sequence)
    var segment = Segment(sequence: sequence, path: path, bytes: 0, records: 0, entryIndexMax: [:])
    var offset = SegmentFormat.headerBytes
    let end = raw.count
    while offset < end {
      let damage: String
      switch FrameFormat.decode(raw, at: offset, end: end, recordBytesMax: recordBytesMax) {
      case .valid(let frame):
        if frame.kind == .entry {
          segment.entryIndexMax[frame.group] = max(
            segment.entryIndexMax[frame.group] ?? 0, frame.index)
        }
        segment.records += 1
        offset = frame.next
        continue
      case .syncMarker(let marker) where marker.isGenuine(at: offset, sequence: sequence):
        offset = marker.next
        continue
      case .syncMarker(let marker):
        // CRC-valid but written elsewhere (a stale block): damage like any other bad frame.
        damage =
          "sync marker of offset \(marker.offset) in segment \(marker.sequence) found at offset "
          + "\(offset) of segment \(sequence)"
      case .invalid(let reason):
        damage = reason
      case .unknownKind(let kind):
        throw .corrupt(
          file: path, offset: UInt64(offset), reason: "unknown record kind \(kind) (CRC valid)")
      case .oversized(let length):
        throw .corrupt(
          file: path, offset: UInt64(offset),
          reason:
            "record length \(length) exceeds recordBytesMax \(recordBytesMax) (CRC valid: was the limit lowered?)"
        )
      }
      guard isLast else {
        throw .corrupt(file: path, offset: UInt64(offset), reason: "\(damage), in a sealed segment")
      }
      if version < SegmentFormat.versionWithSyncMarkers {
        // Version 1 wrote no markers: it cannot tell an unsynced hole from damage to synced bytes.
        if let valid = firstValidFrame(
          raw, after: offset, end: end, recordBytesMax: recordBytesMax)
        {
          throw .corrupt(
            file: path, offset: UInt64(offset),
            reason: "\(damage), and a valid record follows at offset \(valid) (version 1 segment)")
        }
      } else if let marker = firstGenuineSyncMarker(
        raw, after: offset, end: end, sequence: sequence)
      {
        throw .corrupt(
          file: path, offset: UInt64(offset),
          reason: "\(damage), before the sync marker at offset \(marker) (every byte before it "
            + "was synced)")
      }
      precondition(offset < end, "a tail to cut")
      segment.bytes = UInt64(offset)
      return (version, segment, (UInt64(offset), damage))
    }
    precondition(offset == end, "frames end exactly at the file's end")
    segment.bytes = UInt64(end)
    return (version, segment, nil)
  }

  /// The first offset after `offset` where a genuine sync marker of segment `sequence` starts, if
  /// any. Every byte offset is tried, since a damaged length field says nothing about where the
  /// next frame is; the loop is bounded by `end`, and each try is a few compares unless it looks
  /// like a marker.
  static func firstGenuineSyncMarker(
    _ raw: UnsafeRawBufferPointer, after offset: Int, end: Int, sequence: UInt64
  ) -> Int? {
    var candidate = offset + 1
    while candidate + FrameFormat.syncMarkerFrameBytes <= end {
      if FrameFormat.isGenuineSyncMarker(raw, at: candidate, end: end, sequence: sequence) {
        return candidate
      }
      candidate += 1
    }
    return nil
  }

  /// The first offset after `offset` where a CRC-valid frame starts, if any (version 1's tail
  /// rule). Every byte offset is tried, since a damaged length field says nothing about where the
  /// next frame is.
  static func firstValidFrame(
    _ raw: UnsafeRawBufferPointer, after offset: Int, end: Int, recordBytesMax: UInt32
  ) -> Int? {
    var candidate = offset + 1
    while candidate + FrameFormat.headerBytes + FrameFormat.recordFixedBytes <= end {
      switch FrameFormat.decode(raw, at: candidate, end: end, recordBytesMax: recordBytesMax) {
      case .valid, .syncMarker, .unknownKind, .oversized: return candidate
      case .invalid: candidate += 1
      }
    }
    return nil
  }

  /// Checks a snapshot's header against the file's size; returns the stored body CRC.
  private static func checkSnapshotHeader(
    _ prefix: [UInt8], count: Int, fileSize: UInt64, path: String, options: WALOptions
  ) throws(WALError) -> (bodyBytes: UInt64, crc: UInt32) {
    guard count == prefix.count else {
      throw .corrupt(file: path, offset: UInt64(count), reason: "snapshot file shrank while read")
    }
    let (magicMatches, version, reservedZero, bodyBytes, crc) = prefix.withUnsafeBytes { raw in
      (
        raw.prefix(SnapshotFormat.magic.count).elementsEqual(SnapshotFormat.magic),
        readLittleEndian(raw, at: 8, as: UInt16.self),
        raw[10..<16].allSatisfy { $0 == 0 } && raw[28..<32].allSatisfy { $0 == 0 },
        readLittleEndian(raw, at: 16, as: UInt64.self),
        readLittleEndian(raw, at: 24, as: UInt32.self)
      )
    }
    guard magicMatches else { throw .badMagic(file: path) }
    guard version == SnapshotFormat.version else { throw .badVersion(file: path, found: version) }
    guard reservedZero else {
      throw .corrupt(file: path, offset: 10, reason: "reserved header bytes are not zero")
    }
    let bodyBytesInFile = fileSize - UInt64(SnapshotFormat.headerBytes)
    guard bodyBytes == bodyBytesInFile else {
      throw .corrupt(
        file: path, offset: 16,
        reason: "body length \(bodyBytes), but \(bodyBytesInFile) bytes follow the header")
    }
    guard bodyBytes <= options.snapshotBytesMax else {
      throw .corrupt(
        file: path, offset: 16,
        reason: "body length \(bodyBytes) exceeds snapshotBytesMax \(options.snapshotBytesMax)")
    }
    return (bodyBytes, crc)
  }
}
