import Checksum
import Platform
import WriteAheadLog
import XCTest

/// A base class that gives every test its own temporary directory, removed afterwards.
class WALTestCase: XCTestCase {
  var directory = ""

  override func setUpWithError() throws {
    directory = try FileSystem.makeTemporaryDirectory(prefix: "/tmp/caucus-wal-test-")
  }

  override func tearDownWithError() throws {
    if !directory.isEmpty { try FileSystem.removeTree(directory) }
  }

  /// The path of segment `sequence` (1-based, as the log names them).
  func segmentPath(_ sequence: UInt64) -> String {
    let digits = String(sequence, radix: 16)
    return directory + "/wal-" + String(repeating: "0", count: 16 - digits.count) + digits + ".log"
  }

  func segmentNames() throws -> [String] {
    try FileSystem.listDirectory(directory).filter { $0.hasPrefix("wal-") }.sorted()
  }

  func open(_ options: WALOptions = .init()) throws -> WriteAheadLog {
    try WriteAheadLog(directory: directory, options: options)
  }

  func replayAll(_ log: WriteAheadLog) throws -> [WALRecord] {
    var records: [WALRecord] = []
    try log.replay { records.append($0) }
    return records
  }

  /// Reopens the log in `directory` and returns everything it replays.
  func reopenAndReplay(_ options: WALOptions = .init()) throws -> [WALRecord] {
    let log = try open(options)
    defer { try? log.close() }
    return try replayAll(log)
  }

  /// Asserts that `body` throws `WALError.corrupt` for `file` at `offset`.
  func assertCorrupt(
    file: String, offset: UInt64, _ body: () throws -> Void, line: UInt = #line
  ) {
    do {
      try body()
      XCTFail("expected corrupt(\(file), \(offset)), nothing thrown", line: line)
    } catch let WALError.corrupt(foundFile, foundOffset, reason) {
      XCTAssertEqual(foundFile, file, reason, line: line)
      XCTAssertEqual(foundOffset, offset, reason, line: line)
    } catch {
      XCTFail("expected corrupt(\(file), \(offset)), got \(error)", line: line)
    }
  }
}

/// Deterministic records: payloads from a seeded generator, so failures replay.
struct RecordMaker {
  private var state: UInt64

  init(seed: UInt64) { state = seed | 1 }

  mutating func nextRandom() -> UInt64 {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    return state
  }

  mutating func payload(bytes: Int) -> [UInt8] {
    (0..<bytes).map { _ in UInt8(truncatingIfNeeded: nextRandom()) }
  }

  mutating func entry(group: UInt64, index: UInt64, term: UInt64 = 1, payloadBytes: Int)
    -> WALRecord
  {
    WALRecord(
      kind: .entry, group: group, index: index, term: term, payload: payload(bytes: payloadBytes))
  }
}

/// File surgery for damage tests.
enum Disk {
  static func read(_ path: String) throws -> [UInt8] { try FileSystem.readFile(path) }

  static func write(_ path: String, _ bytes: [UInt8]) throws {
    let file = try File.open(path, mode: .writeCreateTruncate)
    try file.write(all: bytes, at: 0)
    try file.close()
  }

  static func truncate(_ path: String, to length: UInt64) throws {
    let file = try File.open(path, mode: .readWrite)
    try file.truncate(to: length)
    try file.close()
  }

  static func flipBit(_ path: String, at offset: Int, bit: Int = 0) throws {
    var bytes = try read(path)
    bytes[offset] ^= UInt8(1 << bit)
    try write(path, bytes)
  }

  /// A frame as the log writes it, built independently of the log's own encoder.
  static func frame(kind: UInt8, group: UInt64, index: UInt64, term: UInt64, payload: [UInt8])
    -> [UInt8]
  {
    var body: [UInt8] = [kind]
    for value in [group, index, term] {
      withUnsafeBytes(of: value.littleEndian) { body.append(contentsOf: $0) }
    }
    body.append(contentsOf: payload)
    var frame: [UInt8] = []
    withUnsafeBytes(of: UInt32(body.count).littleEndian) { frame.append(contentsOf: $0) }
    withUnsafeBytes(of: CRC32C.checksum(body).littleEndian) { frame.append(contentsOf: $0) }
    return frame + body
  }
}

let segmentHeaderBytes = 32
/// Kind byte of the log's sync markers (its own frames, never replayed): group 0, index = the
/// marker's offset, term = the segment's sequence, no payload.
let syncMarkerKind: UInt8 = 0xFF
let syncMarkerFrameBytes = 33

extension Disk {
  /// The frames of a segment file the log wrote whole, walked by their length fields independently
  /// of the log: where each starts and ends, and its kind byte (`syncMarkerKind` for markers).
  static func frames(_ path: String) throws -> [(start: Int, end: Int, kind: UInt8)] {
    let bytes = try read(path)
    var frames: [(start: Int, end: Int, kind: UInt8)] = []
    var offset = segmentHeaderBytes
    while offset + 8 <= bytes.count {
      let length = bytes[offset..<(offset + 4)].reversed().reduce(0) { $0 << 8 | Int($1) }
      let end = offset + 8 + length
      precondition(end <= bytes.count, "test reads only logs it wrote whole")
      frames.append((offset, end, bytes[offset + 8]))
      offset = end
    }
    return frames
  }

  /// Overwrites `bytes.count` bytes at `offset`, keeping the file's length (what a power loss
  /// leaves where the file grew but its data blocks did not all reach the disk).
  static func overwrite(_ path: String, at offset: Int, with bytes: [UInt8]) throws {
    var content = try read(path)
    precondition(offset + bytes.count <= content.count, "overwrite keeps the length")
    content.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
    try write(path, content)
  }
}

/// A random workload (batches of entries, a sync after about a third of them), then a crash:
/// the log is dropped without `close`, so nothing more is synced. Returns every record appended,
/// how many of them a sync covered, and the path of the last segment.
func randomWorkloadThenCrash(
  directory: String, options: WALOptions, _ random: inout RecordMaker, batchesExtraMax: UInt64,
  recordsPerBatchMax: UInt64, groups: UInt64, payloadBytesMax: UInt64
) throws -> (appended: [WALRecord], syncedCount: Int, lastPath: String) {
  var appended: [WALRecord] = []
  var syncedCount = 0
  do {
    let log = try WriteAheadLog(directory: directory, options: options)
    for _ in 0..<(5 + random.nextRandom() % batchesExtraMax) {
      var batch: [WALRecord] = []
      for _ in 0..<(1 + random.nextRandom() % recordsPerBatchMax) {
        batch.append(
          random.entry(
            group: random.nextRandom() % groups, index: UInt64(appended.count + batch.count + 1),
            payloadBytes: Int(random.nextRandom() % payloadBytesMax)))
      }
      try log.append(batch)
      appended += batch
      if random.nextRandom() % 3 == 0 {
        try log.sync()
        syncedCount = appended.count
      }
    }
  }
  let names = try FileSystem.listDirectory(directory).filter { $0.hasSuffix(".log") }.sorted()
  return (appended, syncedCount, directory + "/" + names.last!)
}
