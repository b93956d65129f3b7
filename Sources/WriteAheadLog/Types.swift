import Platform

/// Limits of a `WriteAheadLog`, each with its reasoning. Checked by `validate()` at start-up.
public struct WALOptions: Sendable, Equatable {
  /// A segment is sealed (fsynced) and a new one started when the next record would take the
  /// current one past this size. Smaller segments release disk sooner after snapshots; larger ones
  /// mean fewer files and fewer rolls (each roll costs an fsync of the file and of the directory).
  /// A single record larger than this still fits: it goes alone into a fresh segment.
  public var segmentBytesMax: UInt64 = 64 << 20

  /// Largest record accepted by `append`, counted as the framed length field: kind, group, index
  /// and term (25 bytes) plus the payload. It bounds the memory one record can take on recovery and
  /// lets recovery tell a garbage length from a real one. Larger records are refused on append and
  /// are corruption (or a torn tail) on read.
  public var recordBytesMax: UInt32 = 16 << 20

  /// Largest snapshot body accepted (group, index, term and data): `loadSnapshot` reads a snapshot
  /// whole into memory, so this bounds that allocation.
  public var snapshotBytesMax: UInt64 = 1 << 30

  public init(
    segmentBytesMax: UInt64 = 64 << 20, recordBytesMax: UInt32 = 16 << 20,
    snapshotBytesMax: UInt64 = 1 << 30
  ) {
    self.segmentBytesMax = segmentBytesMax
    self.recordBytesMax = recordBytesMax
    self.snapshotBytesMax = snapshotBytesMax
  }

  /// Hard ceiling for `recordBytesMax`: one record must fit in memory comfortably and in a UInt32.
  public static let recordBytesLimit: UInt32 = 1 << 30
  /// Hard ceiling for `segmentBytesMax` (1 TiB).
  public static let segmentBytesLimit: UInt64 = 1 << 40

  /// Throws `WALError.invalidOptions` naming the first bad field.
  public func validate() throws(WALError) {
    let segmentBytesMin = UInt64(
      SegmentFormat.headerBytes + FrameFormat.headerBytes + FrameFormat.recordFixedBytes)
    guard segmentBytesMax >= segmentBytesMin else {
      throw .invalidOptions(
        "segmentBytesMax \(segmentBytesMax) is below the minimum \(segmentBytesMin)")
    }
    guard segmentBytesMax <= Self.segmentBytesLimit else {
      throw .invalidOptions(
        "segmentBytesMax \(segmentBytesMax) is above the limit \(Self.segmentBytesLimit)")
    }
    guard recordBytesMax >= UInt32(FrameFormat.recordFixedBytes) else {
      throw .invalidOptions(
        "recordBytesMax \(recordBytesMax) is below the minimum \(FrameFormat.recordFixedBytes)")
    }
    guard recordBytesMax <= Self.recordBytesLimit else {
      throw .invalidOptions(
        "recordBytesMax \(recordBytesMax) is above the limit \(Self.recordBytesLimit)")
    }
    guard snapshotBytesMax >= UInt64(SnapshotFormat.bodyFixedBytes) else {
      throw .invalidOptions(
        "snapshotBytesMax \(snapshotBytesMax) is below the minimum \(SnapshotFormat.bodyFixedBytes)"
      )
    }
    guard snapshotBytesMax <= UInt64(Int.max) else {
      throw .invalidOptions("snapshotBytesMax \(snapshotBytesMax) is above the limit \(Int.max)")
    }
  }
}

/// What a record means to the engine. The raw value is the byte on disk: never renumber.
public enum WALRecordKind: UInt8, Sendable, CaseIterable {
  /// A log entry of a group at `index`, written in `term`.
  case entry = 1
  /// A group's hard state (term, vote, commit), encoded by the engine in the payload.
  case hardState = 2
  /// A group was created on this node (payload: the engine's description of it).
  case groupCreated = 3
  /// A group was deleted from this node.
  case groupDeleted = 4
  // 0xFF is taken on disk by the log's own sync markers (`FrameFormat.syncMarkerKind`).
}

/// One record of the log. `group` is `GroupID.packed`; `index` and `term` mean what `kind` says
/// (for `.entry`: the entry's log position and term; the WAL itself reads `index` only of entries).
public struct WALRecord: Sendable, Equatable {
  public var kind: WALRecordKind
  public var group: UInt64
  public var index: UInt64
  public var term: UInt64
  public var payload: [UInt8]

  public init(
    kind: WALRecordKind, group: UInt64, index: UInt64, term: UInt64, payload: [UInt8] = []
  ) {
    self.kind = kind
    self.group = group
    self.index = index
    self.term = term
    self.payload = payload
  }

  /// Bytes of this record as counted against `WALOptions.recordBytesMax` (the frame's length field).
  public var recordBytes: Int { WALRecord.fixedBytes + payload.count }
  /// What a record counts against `WALOptions.recordBytesMax` beyond its payload.
  public static let fixedBytes = FrameFormat.recordFixedBytes
  /// Bytes this record takes in a segment, frame header included.
  public var frameBytes: Int { FrameFormat.headerBytes + recordBytes }
}

/// A group's snapshot: the state machine's bytes as of `index` (applied), taken in `term`.
public struct WALSnapshot: Sendable, Equatable {
  public var group: UInt64
  public var index: UInt64
  public var term: UInt64
  public var data: [UInt8]

  public init(group: UInt64, index: UInt64, term: UInt64, data: [UInt8]) {
    self.group = group
    self.index = index
    self.term = term
    self.data = data
  }
}

/// Counters since `init`, for the metrics endpoint (Prometheus).
public struct WALStatistics: Sendable, Equatable {
  /// Upper bounds (seconds) of the sync latency histogram buckets; a final `+Inf` bucket follows.
  public static let syncLatencyBucketBoundsSeconds: [Double] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
  ]

  /// Records written by `append`.
  public var recordsAppended: UInt64 = 0
  /// Bytes written to segments by `append` (and `close`), frame headers and the log's sync
  /// markers included.
  public var bytesAppended: UInt64 = 0
  /// Segment syncs: each `sync()` that had something to sync (fdatasync) and each fsync of a
  /// segment sealed by a roll.
  public var syncs: UInt64 = 0
  /// Time spent in those syncs.
  public var syncNanosecondsTotal: UInt64 = 0
  /// Cumulative counts per bucket (Prometheus `le`): entry i counts syncs that took at most
  /// `syncLatencyBucketBoundsSeconds[i]`; the last entry (`+Inf`) equals `syncs`.
  public var syncLatencyBuckets: [UInt64] = .init(
    repeating: 0, count: syncLatencyBucketBoundsSeconds.count + 1)
  /// Segment files now in the log (sealed ones plus the current one).
  public var segments: Int = 0
  /// Segment files deleted by `releaseSegments`.
  public var segmentsReleased: UInt64 = 0

  public init() {}

  mutating func recordSync(nanoseconds: UInt64) {
    syncs += 1
    syncNanosecondsTotal &+= nanoseconds
    let seconds = Double(nanoseconds) / 1e9
    for (bucket, bound) in Self.syncLatencyBucketBoundsSeconds.enumerated() where seconds <= bound {
      syncLatencyBuckets[bucket] += 1
    }
    syncLatencyBuckets[syncLatencyBuckets.count - 1] += 1
    precondition(syncLatencyBuckets.last == syncs, "the +Inf bucket counts every sync")
  }
}

/// What recovery found and did when the log was opened, for the engine to log.
public struct WALRecovery: Sendable, Equatable {
  /// Segment files found (0 for a new log).
  public var segmentsFound: Int = 0
  /// Records found in them (after truncation; the log's sync markers are not records).
  public var recordsFound: UInt64 = 0
  /// The segment whose torn or unsynced tail was cut, if any.
  public var truncatedFile: String? = nil
  /// Where the cut was made (the torn record's frame offset) and how many bytes went.
  public var truncatedOffset: UInt64 = 0
  public var truncatedBytes: UInt64 = 0
  /// Why the tail was cut (the first bad frame's problem; no sync marker followed it).
  public var truncationReason: String? = nil
  /// Leftover temporary files of an interrupted segment roll or snapshot write, removed.
  public var temporaryFilesRemoved: [String] = []

  public init() {}
}

/// Errors of the write-ahead log. `corrupt`, `badMagic` and `badVersion` refuse start-up and name
/// the file (and offset): the operator must look, because continuing could lose acknowledged data.
public enum WALError: Error, CustomStringConvertible, Sendable, Equatable {
  /// A record or header is damaged where a crash cannot explain it (not a torn tail).
  case corrupt(file: String, offset: UInt64, reason: String)
  /// A system call failed.
  case io(SystemError)
  /// `append` refused a record: `bytes` (the record's length field) exceeds `limit` (recordBytesMax).
  case recordTooLarge(group: UInt64, index: UInt64, bytes: UInt64, limit: UInt32)
  /// `writeSnapshot` refused a snapshot whose body exceeds `snapshotBytesMax`.
  case snapshotTooLarge(group: UInt64, bytes: UInt64, limit: UInt64)
  /// The file does not start with the expected magic: not one of ours.
  case badMagic(file: String)
  /// The file's format version is not one this build reads.
  case badVersion(file: String, found: UInt16)
  /// `WALOptions.validate()` failed.
  case invalidOptions(String)
  /// Another open log (this process or another) holds the directory's lock file.
  case locked(directory: String)
  /// The log was closed.
  case closed
  /// An earlier write or sync failed; the log's durable state is unknown, so it refuses all work
  /// until reopened (which runs recovery).
  case unusable(reason: String)

  public var description: String {
    switch self {
    case .corrupt(let file, let offset, let reason):
      return "write-ahead log corrupt: \(file) at offset \(offset): \(reason). Refusing to start: "
        + "restore the file from a replica or backup, or move it aside if its data is known to be elsewhere"
    case .io(let error):
      return "write-ahead log I/O error: \(error)"
    case .recordTooLarge(let group, let index, let bytes, let limit):
      return
        "write-ahead log record for group \(group) index \(index) is \(bytes) bytes; recordBytesMax is \(limit)"
    case .snapshotTooLarge(let group, let bytes, let limit):
      return "snapshot for group \(group) is \(bytes) bytes; snapshotBytesMax is \(limit)"
    case .badMagic(let file):
      return "\(file) is not a Caucus write-ahead log file (wrong magic). Refusing to start"
    case .badVersion(let file, let found):
      return "\(file) has format version \(found); this build reads segment versions "
        + "\(SegmentFormat.versionOldestReadable) to \(SegmentFormat.version) and snapshot version "
        + "\(SnapshotFormat.version). Refusing to start"
    case .invalidOptions(let reason):
      return "invalid write-ahead log options: \(reason)"
    case .locked(let directory):
      return
        "write-ahead log directory \(directory) is in use by another log (its LOCK file is held)"
    case .closed:
      return "write-ahead log is closed"
    case .unusable(let reason):
      return
        "write-ahead log is unusable after an earlier failure (\(reason)); reopen it to recover"
    }
  }
}

extension WALError {
  /// The file system is full (ENOSPC) or over quota (EDQUOT), and the call that failed wrote,
  /// created, renamed or truncated a file. Such a failure passes: what the log's files hold is what
  /// the calls before it wrote (still in the page cache if unsynced), a reopened log reads exactly
  /// that back (cutting a torn tail), and a sync then makes it durable. A failed fsync is never
  /// this, whatever its errno: after one the kernel may have dropped the dirty pages (fsyncgate),
  /// so what a reopened log reads back need not be what the disk holds, and only a restart
  /// (recovery from the disk itself) is safe.
  public var isOutOfSpace: Bool {
    guard case .io(let error) = self else { return false }
    return error.isOutOfSpace && !error.isSync
  }
}

extension WALStatistics {
  /// The log's metrics in Prometheus text format, the same for every engine built on it.
  public func prometheusText() -> String {
    var text = Prometheus.metric("caucus_wal_records_appended_total", help: "Records appended to the write-ahead log.", recordsAppended)
    text += Prometheus.metric("caucus_wal_bytes_appended_total", help: "Bytes appended to the write-ahead log.", bytesAppended)
    text += Prometheus.metric("caucus_wal_fsyncs_total", help: "fsync calls on the write-ahead log.", syncs)
    text += "# HELP caucus_wal_fsync_duration_seconds Latency of write-ahead log fsyncs.\n"
    text += "# TYPE caucus_wal_fsync_duration_seconds histogram\n"
    let bounds = WALStatistics.syncLatencyBucketBoundsSeconds.map { "\($0)" } + ["+Inf"]
    for (bound, count) in zip(bounds, syncLatencyBuckets) {
      text += "caucus_wal_fsync_duration_seconds_bucket{le=\"\(bound)\"} \(count)\n"
    }
    text += "caucus_wal_fsync_duration_seconds_sum \(Double(syncNanosecondsTotal) / 1e9)\n"
    text += "caucus_wal_fsync_duration_seconds_count \(syncs)\n"
    text += Prometheus.metric("caucus_wal_segments", help: "Live write-ahead log segment files.", UInt64(segments), type: "gauge")
    return text
  }
}
