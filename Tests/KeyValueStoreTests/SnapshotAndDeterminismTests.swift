import Checksum
import XCTest

@testable import KeyValueStore

/// A seeded stream of encoded commands exercising every path: puts, deletes, preconditions that
/// hold and fail, batches, binary keys, idempotency keys reused from a small pool, and garbage.
struct CommandStream {
  var random: SplitMix64
  /// Revisions recently handed out, so some preconditions hold.
  var recentRevisions: [UInt64] = [1]

  init(seed: UInt64) {
    random = SplitMix64(seed: seed)
  }

  mutating func key() -> KVBytes {
    let alphabet: [UInt8] = [0x00, 0x2F, 0x61, 0x62, 0x80, 0xFF]
    return (0..<(1 + random.below(4))).map { _ in alphabet[random.below(alphabet.count)] }
  }

  mutating func precondition() -> KVPrecondition {
    switch random.below(6) {
    case 0: return .absent
    case 1: return .revisionEquals(recentRevisions[random.below(recentRevisions.count)])
    default: return .none
    }
  }

  mutating func next(index: UInt64) -> [UInt8] {
    recentRevisions.append(index)
    if recentRevisions.count > 16 { recentRevisions.removeFirst() }
    if random.below(200) == 0 { return random.bytes(count: random.below(12)) }
    var operations: [KVOperation] = []
    for _ in 0..<(random.below(8) == 0 ? 1 + random.below(5) : 1) {
      if random.below(3) == 0 {
        operations.append(.delete(key: key(), precondition: precondition()))
      } else {
        operations.append(
          .put(
            key: key(), value: random.bytes(count: random.below(24)), precondition: precondition()))
      }
    }
    let id: String? = random.below(4) == 0 ? "id-\(random.below(300))" : nil
    return KVCodec.encode(KVCommand(operations: operations, idempotencyKey: id))
  }
}

final class SnapshotAndDeterminismTests: XCTestCase {
  static let streamLength = 10_000

  func testSameCommandStreamGivesIdenticalOutcomesAndSnapshots() {
    var stream = CommandStream(seed: 0x5EED_0001)
    // A small idempotency table so eviction happens inside the stream.
    let first = KeyValueStateMachine(idempotencyEntriesMax: 64)
    let second = KeyValueStateMachine(idempotencyEntriesMax: 64)
    var outcomes: [String: Int] = [:]
    for index in 1...UInt64(Self.streamLength) {
      let command = stream.next(index: index)
      let outcome = first.apply(index: index, command: command)
      XCTAssertEqual(second.apply(index: index, command: command), outcome, "index \(index)")
      switch try? KVCodec.decodeWriteOutcome(outcome) {
      case .applied?: outcomes["applied", default: 0] += 1
      case .preconditionFailed?: outcomes["preconditionFailed", default: 0] += 1
      case .rejected?: outcomes["rejected", default: 0] += 1
      case .replayed?: outcomes["replayed", default: 0] += 1
      case nil: XCTFail("undecodable outcome at \(index)")
      }
    }
    // The stream really exercised every path.
    XCTAssertGreaterThan(outcomes["applied", default: 0], 1_000, "\(outcomes)")
    XCTAssertGreaterThan(outcomes["preconditionFailed", default: 0], 100, "\(outcomes)")
    XCTAssertGreaterThan(outcomes["rejected", default: 0], 10, "\(outcomes)")
    XCTAssertGreaterThan(first.count, 100)
    XCTAssertEqual(first.idempotencyEntryCount, 64)
    XCTAssertEqual(first.takeSnapshot(), second.takeSnapshot())
    first.checkInvariants()
  }

  /// The change history is per replica: its bounds must not leak into the replicated state.
  func testHistoryBoundsDoNotAffectSnapshots() {
    var stream = CommandStream(seed: 0x5EED_0003)
    let withHistory = KeyValueStateMachine(idempotencyEntriesMax: 64, historyEntriesMax: 50_000)
    let withoutHistory = KeyValueStateMachine(idempotencyEntriesMax: 64, historyEntriesMax: 0)
    for index in UInt64(1)...2_000 {
      let command = stream.next(index: index)
      XCTAssertEqual(
        withHistory.apply(index: index, command: command),
        withoutHistory.apply(index: index, command: command))
    }
    XCTAssertEqual(withHistory.takeSnapshot(), withoutHistory.takeSnapshot())
    XCTAssertFalse(withHistory.changes(after: 0, prefix: [], limit: 10).events.isEmpty)
    // Without history nothing before the last change is available, and nothing is missing after.
    XCTAssertNotNil(withoutHistory.changes(after: 0, prefix: [], limit: 10).compactedBefore)
    XCTAssertNil(withoutHistory.changes(after: 2_000, prefix: [], limit: 10).compactedBefore)
  }

  func testRestoringAMidStreamSnapshotThenReplayingTheRestGivesIdenticalBytes() throws {
    var stream = CommandStream(seed: 0x5EED_0002)
    let commands = (1...UInt64(Self.streamLength)).map { stream.next(index: $0) }
    let original = KeyValueStateMachine(idempotencyEntriesMax: 64)
    var midStream: [UInt8] = []
    let middle = Self.streamLength / 2
    for (offset, command) in commands.enumerated() {
      _ = original.apply(index: UInt64(offset + 1), command: command)
      if offset + 1 == middle { midStream = original.takeSnapshot() }
    }
    let restored = KeyValueStateMachine(idempotencyEntriesMax: 64)
    try restored.put(1, b("state to be replaced"), b("x"))
    try restored.restore(snapshot: midStream)
    XCTAssertEqual(restored.lastAppliedIndex, UInt64(middle))
    XCTAssertEqual(restored.takeSnapshot(), midStream)
    for (offset, command) in commands.enumerated().dropFirst(middle) {
      _ = restored.apply(index: UInt64(offset + 1), command: command)
    }
    XCTAssertEqual(restored.takeSnapshot(), original.takeSnapshot())
    XCTAssertEqual(restored.count, original.count)
    restored.checkInvariants()
  }

  func testSnapshotRoundTripPreservesEntriesRevisionsAndIndex() throws {
    let machine = KeyValueStateMachine()
    try machine.put(3, [0x00, 0xFF], [0xFF, 0x00])
    try machine.put(4, b("b"), [])
    try machine.put(8, b("a"), b("x"))
    let snapshot = machine.takeSnapshot()
    XCTAssertEqual(snapshot.first, 1, "format version")
    let restored = KeyValueStateMachine()
    try restored.restore(snapshot: snapshot)
    XCTAssertEqual(restored.lastAppliedIndex, 8)
    XCTAssertEqual(restored.count, 3)
    XCTAssertEqual(
      restored.list(prefix: [], after: nil, limit: 10).items,
      machine.list(prefix: [], after: nil, limit: 10).items)
    XCTAssertEqual(
      restored.get([0x00, 0xFF]), KVEntry(key: [0x00, 0xFF], value: [0xFF, 0x00], revision: 3))
    // Empty state round-trips too.
    let empty = KeyValueStateMachine()
    try restored.restore(snapshot: empty.takeSnapshot())
    XCTAssertEqual(restored.count, 0)
    XCTAssertEqual(restored.lastAppliedIndex, 0)
    XCTAssertEqual(restored.takeSnapshot(), empty.takeSnapshot())
  }

  func testCorruptOrTruncatedSnapshotThrowsAndLeavesStateUnchanged() throws {
    let source = KeyValueStateMachine()
    try source.put(1, b("alpha"), b("one"))
    _ = try source.write(2, [.put(key: [0xFF], value: [0x00], precondition: .none)], id: "retry")
    let snapshot = source.takeSnapshot()

    let target = KeyValueStateMachine()
    try target.put(7, b("mine"), b("keep"))
    let before = target.takeSnapshot()
    func assertRejected(_ bytes: [UInt8], _ message: String) {
      XCTAssertThrowsError(try target.restore(snapshot: bytes), message) {
        XCTAssertTrue($0 is KVCodecError, "\(message): \($0)")
      }
      XCTAssertEqual(target.takeSnapshot(), before, message)
    }
    for length in 0..<snapshot.count {
      assertRejected(Array(snapshot[..<length]), "truncated to \(length)")
    }
    assertRejected(snapshot + [0], "trailing byte")
    for position in snapshot.indices {
      var flipped = snapshot
      flipped[position] ^= 0x01
      assertRejected(flipped, "bit flipped at \(position)")
    }
    var wrongVersion = snapshot
    wrongVersion[0] = 2
    assertRejected(wrongVersion, "version 2")
    XCTAssertEqual(target.get(b("mine"))?.value, b("keep"))
    XCTAssertEqual(target.lastAppliedIndex, 7)
  }

  /// Structurally broken snapshots with a valid checksum are refused by content checks.
  func testSnapshotContentChecks() throws {
    func sealed(_ body: (inout ByteWriter) -> Void) -> [UInt8] {
      var writer = ByteWriter()
      writer.writeUInt8(1)
      body(&writer)
      var bytes = writer.bytes
      let checksum = CRC32C.checksum(bytes)
      withUnsafeBytes(of: checksum.littleEndian) { bytes.append(contentsOf: $0) }
      return bytes
    }
    func entry(_ writer: inout ByteWriter, _ key: KVBytes, _ revision: UInt64) {
      writer.writeLengthPrefixed(key)
      writer.writeLengthPrefixed([])
      writer.writeUInt64(revision)
    }
    let valid = sealed { writer in
      writer.writeUInt64(5)
      writer.writeUInt64(2)
      entry(&writer, b("a"), 1)
      entry(&writer, b("b"), 5)
      writer.writeUInt64(0)
    }
    let machine = KeyValueStateMachine()
    XCTAssertNoThrow(try machine.restore(snapshot: valid))
    XCTAssertEqual(machine.count, 2)
    let broken: [(String, [UInt8])] = [
      (
        "keys out of order",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(2)
          entry(&writer, b("b"), 1)
          entry(&writer, b("a"), 1)
          writer.writeUInt64(0)
        }
      ),
      (
        "duplicate key",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(2)
          entry(&writer, b("a"), 1)
          entry(&writer, b("a"), 1)
          writer.writeUInt64(0)
        }
      ),
      (
        "revision past the index",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(1)
          entry(&writer, b("a"), 6)
          writer.writeUInt64(0)
        }
      ),
      (
        "revision zero",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(1)
          entry(&writer, b("a"), 0)
          writer.writeUInt64(0)
        }
      ),
      (
        "huge entry count",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(UInt64.max)
          writer.writeUInt64(0)
        }
      ),
      (
        "empty key",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(1)
          entry(&writer, [], 1)
          writer.writeUInt64(0)
        }
      ),
      (
        "undecodable idempotency outcome",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(0)
          writer.writeUInt64(1)
          writer.writeString("id")
          writer.writeLengthPrefixed([1, 9])
        }
      ),
      (
        "duplicate idempotency key",
        sealed { writer in
          writer.writeUInt64(5)
          writer.writeUInt64(0)
          writer.writeUInt64(2)
          writer.writeString("id")
          writer.writeLengthPrefixed(KVCodec.encode(KVWriteOutcome.applied([])))
          writer.writeString("id")
          writer.writeLengthPrefixed(KVCodec.encode(KVWriteOutcome.applied([])))
        }
      ),
    ]
    for (name, bytes) in broken {
      XCTAssertThrowsError(try machine.restore(snapshot: bytes), name)
      XCTAssertEqual(machine.count, 2, name)
      XCTAssertEqual(machine.lastAppliedIndex, 5, name)
    }
  }
}
