import Consensus
import XCTest

@testable import KeyValueStore

extension KeyValueStateMachine {
  /// Applies a typed command through the byte interface and decodes the outcome.
  func write(_ index: UInt64, _ operations: [KVOperation], id: String? = nil) throws
    -> KVWriteOutcome
  {
    let bytes = apply(
      index: index, command: KVCodec.encode(KVCommand(operations: operations, idempotencyKey: id)))
    return try KVCodec.decodeWriteOutcome(bytes)
  }

  /// Queries through the byte interface and decodes the results.
  func read(_ queries: [KVQuery]) throws -> [KVQueryResult] {
    try KVCodec.decodeQueryResults(query(KVCodec.encode(queries: queries)))
  }

  func put(_ index: UInt64, _ key: KVBytes, _ value: KVBytes) throws {
    let outcome = try write(index, [.put(key: key, value: value, precondition: .none)])
    precondition(outcome == .applied([.put(revision: index)]), "test setup put failed: \(outcome)")
  }

  func keys(prefix: KVBytes = [], after: KVBytes? = nil, limit: Int = KVLimits.listLimitMax)
    -> [KVBytes]
  {
    list(prefix: prefix, after: after, limit: limit).items.map(\.key)
  }
}

final class KeyValueStateMachineTests: XCTestCase {
  func testPutGetDelete() throws {
    let machine = KeyValueStateMachine()
    XCTAssertEqual(try machine.read([.get(key: b("a"))]), [.get(nil)])
    XCTAssertEqual(
      try machine.write(1, [.put(key: b("a"), value: b("one"), precondition: .none)]),
      .applied([.put(revision: 1)]))
    XCTAssertEqual(
      try machine.read([.get(key: b("a"))]),
      [.get(KVEntry(key: b("a"), value: b("one"), revision: 1))])
    XCTAssertEqual(machine.count, 1)
    XCTAssertEqual(
      try machine.write(2, [.delete(key: b("a"), precondition: .none)]),
      .applied([.delete(deleted: true)]))
    XCTAssertEqual(
      try machine.write(3, [.delete(key: b("a"), precondition: .none)]),
      .applied([.delete(deleted: false)]))
    XCTAssertEqual(try machine.read([.get(key: b("a"))]), [.get(nil)])
    XCTAssertEqual(machine.count, 0)
    XCTAssertEqual(machine.lastAppliedIndex, 3)
  }

  func testRevisionIsTheApplyIndexAndIndexesMaySkip() throws {
    let machine = KeyValueStateMachine()
    try machine.put(5, b("k"), b("v1"))
    XCTAssertEqual(machine.get(b("k"))?.revision, 5)
    try machine.put(9, b("k"), b("v2"))
    XCTAssertEqual(machine.get(b("k")), KVEntry(key: b("k"), value: b("v2"), revision: 9))
    try machine.put(10, b("other"), [])
    XCTAssertEqual(machine.get(b("k"))?.revision, 9, "other keys keep their revision")
    XCTAssertEqual(machine.lastAppliedIndex, 10)
  }

  func testCompareAndSet() throws {
    let machine = KeyValueStateMachine()
    try machine.put(1, b("k"), b("v1"))
    XCTAssertEqual(
      try machine.write(2, [.put(key: b("k"), value: b("v2"), precondition: .revisionEquals(1))]),
      .applied([.put(revision: 2)]))
    // Stale revision: 412 with the current revision, nothing changes.
    XCTAssertEqual(
      try machine.write(3, [.put(key: b("k"), value: b("v3"), precondition: .revisionEquals(1))]),
      .preconditionFailed(operationIndex: 0, key: b("k"), currentRevision: 2))
    XCTAssertEqual(machine.get(b("k")), KVEntry(key: b("k"), value: b("v2"), revision: 2))
    // Absent key: current revision nil.
    XCTAssertEqual(
      try machine.write(4, [.put(key: b("nope"), value: [], precondition: .revisionEquals(2))]),
      .preconditionFailed(operationIndex: 0, key: b("nope"), currentRevision: nil))
    XCTAssertNil(machine.get(b("nope")))
    // Conditional delete.
    XCTAssertEqual(
      try machine.write(5, [.delete(key: b("k"), precondition: .revisionEquals(1))]),
      .preconditionFailed(operationIndex: 0, key: b("k"), currentRevision: 2))
    XCTAssertEqual(
      try machine.write(6, [.delete(key: b("k"), precondition: .revisionEquals(2))]),
      .applied([.delete(deleted: true)]))
    XCTAssertEqual(
      try machine.write(7, [.delete(key: b("k"), precondition: .revisionEquals(2))]),
      .preconditionFailed(operationIndex: 0, key: b("k"), currentRevision: nil))
  }

  func testCreateOnly() throws {
    let machine = KeyValueStateMachine()
    XCTAssertEqual(
      try machine.write(1, [.put(key: b("k"), value: b("first"), precondition: .absent)]),
      .applied([.put(revision: 1)]))
    XCTAssertEqual(
      try machine.write(2, [.put(key: b("k"), value: b("second"), precondition: .absent)]),
      .preconditionFailed(operationIndex: 0, key: b("k"), currentRevision: 1))
    XCTAssertEqual(machine.get(b("k"))?.value, b("first"))
    XCTAssertEqual(
      try machine.write(3, [.delete(key: b("gone"), precondition: .absent)]),
      .applied([.delete(deleted: false)]))
  }

  func testBatchWhoseThirdPreconditionFailsAppliesNothing() throws {
    let machine = KeyValueStateMachine()
    try machine.put(1, b("c"), b("old"))
    let outcome = try machine.write(
      2,
      [
        .put(key: b("a"), value: b("1"), precondition: .none),
        .delete(key: b("c"), precondition: .none),
        .put(key: b("c"), value: b("new"), precondition: .revisionEquals(7)),
        .put(key: b("d"), value: b("4"), precondition: .none),
      ])
    XCTAssertEqual(outcome, .preconditionFailed(operationIndex: 2, key: b("c"), currentRevision: 1))
    XCTAssertNil(machine.get(b("a")))
    XCTAssertNil(machine.get(b("d")))
    XCTAssertEqual(machine.get(b("c")), KVEntry(key: b("c"), value: b("old"), revision: 1))
    XCTAssertEqual(machine.count, 1)
    // The first failing precondition is the one reported.
    XCTAssertEqual(
      try machine.write(
        3,
        [
          .put(key: b("x"), value: [], precondition: .absent),
          .put(key: b("c"), value: [], precondition: .absent),
          .put(key: b("y"), value: [], precondition: .revisionEquals(1)),
        ]),
      .preconditionFailed(operationIndex: 1, key: b("c"), currentRevision: 1))
  }

  func testBatchAppliesInOrderAndChecksPreconditionsAgainstStateBeforeTheBatch() throws {
    let machine = KeyValueStateMachine()
    XCTAssertEqual(
      try machine.write(
        1,
        [
          .put(key: b("k"), value: b("1"), precondition: .none),
          .put(key: b("k"), value: b("2"), precondition: .absent),  // k is absent before the batch
          .put(key: b("gone"), value: b("x"), precondition: .none),
          .delete(key: b("gone"), precondition: .none),
          .delete(key: b("back"), precondition: .none),
          .put(key: b("back"), value: b("y"), precondition: .none),
        ]),
      .applied([
        .put(revision: 1), .put(revision: 1), .put(revision: 1), .delete(deleted: true),
        .delete(deleted: false), .put(revision: 1),
      ]))
    XCTAssertEqual(machine.get(b("k"))?.value, b("2"))
    XCTAssertNil(machine.get(b("gone")))
    XCTAssertEqual(machine.get(b("back"))?.value, b("y"))
    XCTAssertEqual(machine.count, 2)
  }

  func testMalformedCommandIsRejectedDeterministicallyAndChangesNothing() throws {
    let machine = KeyValueStateMachine()
    try machine.put(1, b("k"), b("v"))
    let garbage: [UInt8] = [1, 0, 1, 0, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFF]
    let first = machine.apply(index: 2, command: garbage)
    guard case .rejected(let reason) = try KVCodec.decodeWriteOutcome(first) else {
      return XCTFail("expected a rejection")
    }
    XCTAssertTrue(reason.contains("key length"), reason)
    XCTAssertEqual(machine.apply(index: 3, command: garbage), first)
    guard case .rejected = try KVCodec.decodeWriteOutcome(machine.apply(index: 4, command: []))
    else {
      return XCTFail("expected a rejection of empty bytes")
    }
    XCTAssertEqual(machine.get(b("k")), KVEntry(key: b("k"), value: b("v"), revision: 1))
    XCTAssertEqual(machine.lastAppliedIndex, 4)
    // Only lastAppliedIndex moved: same state as a machine that applied an empty batch at 4.
    let reference = KeyValueStateMachine()
    try reference.put(1, b("k"), b("v"))
    XCTAssertEqual(try reference.write(4, []), .applied([]))
    XCTAssertEqual(machine.takeSnapshot(), reference.takeSnapshot())
  }

  // MARK: Idempotency

  func testIdempotentReplayReturnsTheFirstOutcomeAndIndexAndDoesNotApplyTwice() throws {
    let machine = KeyValueStateMachine()
    let command = KVCodec.encode(
      KVCommand(
        operations: [.put(key: b("k"), value: b("v"), precondition: .none)], idempotencyKey: "req-1"
      ))
    let first = machine.apply(index: 1, command: command)
    XCTAssertEqual(try KVCodec.decodeWriteOutcome(first), .applied([.put(revision: 1)]))
    try machine.put(2, b("k"), b("changed"))
    let replay = machine.apply(index: 3, command: command)
    let operations: [KVOperation] = [.put(key: b("k"), value: b("v"), precondition: .none)]
    XCTAssertEqual(
      try KVCodec.decodeWriteOutcome(replay),
      .replayed(
        originalIndex: 1, commandDigest: KVCodec.digest(of: operations), outcome: try KVCodec.decodeWriteOutcome(first)))
    XCTAssertEqual(machine.get(b("k")), KVEntry(key: b("k"), value: b("changed"), revision: 2))
    // A different command reusing the id is refused and not applied.
    guard case .rejected(let reason) = try machine.write(4, [.delete(key: b("k"), precondition: .none)], id: "req-1") else {
      return XCTFail("a reused key with other operations must be refused")
    }
    XCTAssertTrue(reason.contains("different request"), reason)
    XCTAssertNotNil(machine.get(b("k")))
    XCTAssertEqual(machine.lastAppliedIndex, 4)
  }

  func testPreconditionFailureIsRememberedUnderItsIdempotencyKey() throws {
    let machine = KeyValueStateMachine()
    let failed = try machine.write(
      1, [.put(key: b("k"), value: b("v"), precondition: .revisionEquals(1))], id: "cas")
    XCTAssertEqual(
      failed, .preconditionFailed(operationIndex: 0, key: b("k"), currentRevision: nil))
    try machine.put(2, b("k"), b("v"))
    // Retried after the state changed: still the original answer, still not applied.
    let operations: [KVOperation] = [.put(key: b("k"), value: b("v"), precondition: .revisionEquals(1))]
    XCTAssertEqual(
      try machine.write(3, operations, id: "cas"),
      .replayed(originalIndex: 1, commandDigest: KVCodec.digest(of: operations), outcome: failed))
    XCTAssertEqual(machine.get(b("k"))?.value, b("v"))
  }

  func testIdempotencyTableIsBoundedAndForgetsOldestFirst() throws {
    let machine = KeyValueStateMachine(idempotencyEntriesMax: 3)
    for (offset, id) in ["a", "b", "c", "d"].enumerated() {
      _ = try machine.write(
        UInt64(offset + 1), [.put(key: b("key-\(id)"), value: [], precondition: .none)], id: id)
    }
    XCTAssertEqual(machine.idempotencyEntryCount, 3)
    // "b" is still remembered: the replay is not applied (revision stays 2).
    XCTAssertEqual(
      try machine.write(5, [.put(key: b("key-b"), value: [], precondition: .none)], id: "b"),
      .replayed(
        originalIndex: 2, commandDigest: KVCodec.digest(of: [.put(key: b("key-b"), value: [], precondition: .none)]),
        outcome: .applied([.put(revision: 2)])))
    XCTAssertEqual(machine.get(b("key-b"))?.revision, 2)
    // A replay does not refresh "b"; "a" was evicted and applies anew, evicting "b".
    XCTAssertEqual(
      try machine.write(6, [.put(key: b("key-a"), value: [], precondition: .none)], id: "a"),
      .applied([.put(revision: 6)]))
    XCTAssertEqual(
      try machine.write(7, [.put(key: b("key-b"), value: [], precondition: .none)], id: "b"),
      .applied([.put(revision: 7)]))
    XCTAssertEqual(machine.idempotencyEntryCount, 3)
  }

  func testZeroSizedIdempotencyTableRemembersNothing() throws {
    let machine = KeyValueStateMachine(idempotencyEntriesMax: 0)
    XCTAssertEqual(
      try machine.write(1, [.put(key: b("k"), value: [], precondition: .none)], id: "x"),
      .applied([.put(revision: 1)]))
    XCTAssertEqual(
      try machine.write(2, [.put(key: b("k"), value: [], precondition: .none)], id: "x"),
      .applied([.put(revision: 2)]))
    XCTAssertEqual(machine.idempotencyEntryCount, 0)
  }

  func testIdempotencyTableSurvivesSnapshotAndRestoreInEvictionOrder() throws {
    let machine = KeyValueStateMachine(idempotencyEntriesMax: 3)
    var firstOutcomes: [String: [UInt8]] = [:]
    for (offset, id) in ["a", "b", "c"].enumerated() {
      firstOutcomes[id] = machine.apply(
        index: UInt64(offset + 1),
        command: KVCodec.encode(
          KVCommand(
            operations: [.put(key: b(id), value: [], precondition: .none)], idempotencyKey: id)))
    }
    let restored = KeyValueStateMachine(idempotencyEntriesMax: 3)
    try restored.restore(snapshot: machine.takeSnapshot())
    XCTAssertEqual(restored.takeSnapshot(), machine.takeSnapshot())
    XCTAssertEqual(restored.idempotencyEntryCount, 3)
    for id in ["c", "a", "b"] {
      let replay = restored.apply(
        index: restored.lastAppliedIndex + 1,
        command: KVCodec.encode(
          KVCommand(operations: [.put(key: b(id), value: [], precondition: .none)], idempotencyKey: id)))
      let first = try KVCodec.decodeWriteOutcome(firstOutcomes[id]!)
      guard case .applied(let results) = first, case .put(let revision)? = results.first else { return XCTFail("\(first)") }
      XCTAssertEqual(
        try KVCodec.decodeWriteOutcome(replay),
        .replayed(
          originalIndex: revision, commandDigest: KVCodec.digest(of: [.put(key: b(id), value: [], precondition: .none)]),
          outcome: first), id)
    }
    XCTAssertEqual(restored.count, 3, "replays applied nothing")
    XCTAssertEqual(restored.get(b("a"))?.revision, 1, "replays applied nothing")
    // A new id evicts the oldest, "a", exactly as on the original.
    _ = try restored.write(restored.lastAppliedIndex + 1, [], id: "d")
    XCTAssertEqual(
      try restored.write(
        restored.lastAppliedIndex + 1, [.delete(key: b("a"), precondition: .none)], id: "a"),
      .applied([.delete(deleted: true)]))
    // A smaller table keeps only the newest ids of the snapshot.
    let small = KeyValueStateMachine(idempotencyEntriesMax: 1)
    try small.restore(snapshot: machine.takeSnapshot())
    XCTAssertEqual(small.idempotencyEntryCount, 1)
    XCTAssertEqual(
      try small.write(10, [.put(key: b("c"), value: [], precondition: .none)], id: "c"),
      .replayed(
        originalIndex: 3, commandDigest: KVCodec.digest(of: [.put(key: b("c"), value: [], precondition: .none)]),
        outcome: .applied([.put(revision: 3)])))
  }

  // MARK: Listing

  static let listingKeys: [KVBytes] = [
    b("a"), b("a/1"), b("a/2"), b("a/3"), b("a0"), b("b"),
    [0x61, 0xFF], [0x61, 0xFF, 0xFF], [0x61, 0xFF, 0x00],
    [0xFF], [0xFF, 0x00], [0xFF, 0xFF], [0xFF, 0xFF, 0xFF], [0x00], [0x00, 0x00],
  ]

  func listingMachine() throws -> KeyValueStateMachine {
    let machine = KeyValueStateMachine()
    for (offset, key) in Self.listingKeys.enumerated() {
      try machine.put(UInt64(offset + 1), key, [UInt8(offset)])
    }
    return machine
  }

  func testListIsOrderedByUnsignedBytes() throws {
    let machine = try listingMachine()
    XCTAssertEqual(machine.keys(), Self.listingKeys.sorted(by: bytesLess))
    XCTAssertEqual(machine.keys().first, [0x00])
    XCTAssertEqual(machine.keys().last, [0xFF, 0xFF, 0xFF])
    let page = machine.list(prefix: [], after: nil, limit: 100)
    XCTAssertFalse(page.more)
    XCTAssertEqual(page.items.first, KVEntry(key: [0x00], value: [13], revision: 14))
  }

  func testListPrefixAfterLimitAndMore() throws {
    let machine = try listingMachine()
    var page = machine.list(prefix: b("a/"), after: nil, limit: 2)
    XCTAssertEqual(page.items.map(\.key), [b("a/1"), b("a/2")])
    XCTAssertTrue(page.more)
    page = machine.list(prefix: b("a/"), after: b("a/2"), limit: 2)
    XCTAssertEqual(page.items.map(\.key), [b("a/3")])
    XCTAssertFalse(page.more)
    // Exactly `limit` matches left: more is false.
    page = machine.list(prefix: b("a/"), after: b("a/1"), limit: 2)
    XCTAssertEqual(page.items.map(\.key), [b("a/2"), b("a/3")])
    XCTAssertFalse(page.more)
    // `after` that is not a key, before and after the prefix range.
    XCTAssertEqual(machine.keys(prefix: b("a/"), after: b("a/15")), [b("a/2"), b("a/3")])
    XCTAssertEqual(machine.keys(prefix: b("a/"), after: b("a")), [b("a/1"), b("a/2"), b("a/3")])
    XCTAssertEqual(machine.keys(prefix: b("a/"), after: []), [b("a/1"), b("a/2"), b("a/3")])
    XCTAssertEqual(machine.keys(prefix: b("a/"), after: b("b")), [])
    XCTAssertEqual(machine.keys(prefix: b("a/"), after: b("a/3")), [])
    // The prefix itself is a key and is included.
    XCTAssertEqual(machine.keys(prefix: b("a"), limit: 3), [b("a"), b("a/1"), b("a/2")])
    XCTAssertEqual(machine.keys(prefix: b("zzz")), [])
    // limit 0: nothing, but says whether anything matches.
    XCTAssertEqual(machine.list(prefix: b("a/"), after: nil, limit: 0).more, true)
    XCTAssertEqual(machine.list(prefix: b("q"), after: nil, limit: 0).more, false)
  }

  func testListWithHighBytePrefixes() throws {
    let machine = try listingMachine()
    XCTAssertEqual(
      machine.keys(prefix: [0xFF]), [[0xFF], [0xFF, 0x00], [0xFF, 0xFF], [0xFF, 0xFF, 0xFF]])
    XCTAssertEqual(machine.keys(prefix: [0xFF, 0xFF]), [[0xFF, 0xFF], [0xFF, 0xFF, 0xFF]])
    XCTAssertEqual(
      machine.keys(prefix: [0xFF], after: [0xFF, 0x00]), [[0xFF, 0xFF], [0xFF, 0xFF, 0xFF]])
    XCTAssertEqual(
      machine.keys(prefix: [0x61, 0xFF]), [[0x61, 0xFF], [0x61, 0xFF, 0x00], [0x61, 0xFF, 0xFF]])
    // "a" + 0xFF... sorts after "a0" and "a/…": the range ends before "b".
    XCTAssertEqual(
      machine.keys(prefix: b("a"), after: b("a0")),
      [[0x61, 0xFF], [0x61, 0xFF, 0x00], [0x61, 0xFF, 0xFF]])
    XCTAssertEqual(machine.keys(prefix: [0x00]), [[0x00], [0x00, 0x00]])
    XCTAssertEqual(machine.keys(prefix: [0x00], after: [0x00]), [[0x00, 0x00]])
    XCTAssertEqual(machine.keys(prefix: [0xFF, 0xFF, 0xFF, 0xFF]), [])
  }

  func testPaginationVisitsEveryKeyOnce() throws {
    let machine = KeyValueStateMachine()
    var random = SplitMix64(seed: 77)
    var expected: [KVBytes] = []
    for index in 1...2_000 {
      let key = [UInt8(0x70)] + random.bytes(count: 1 + random.below(3))
      try machine.put(UInt64(index), key, [])
      expected.append(key)
    }
    try machine.put(2_001, [0x6F], [])
    try machine.put(2_002, [0x71], [])
    expected = Array(Set(expected)).sorted(by: bytesLess)
    var seen: [KVBytes] = []
    var after: KVBytes? = nil
    var pages = 0
    while true {
      let page = machine.list(prefix: [0x70], after: after, limit: 7)
      seen += page.items.map(\.key)
      pages += 1
      guard page.more else { break }
      after = page.items.last?.key
      XCTAssertLessThan(pages, 1_000)
    }
    XCTAssertEqual(seen, expected)
  }

  func testQueryBytesAnswersEachQueryInOrderAndRefusesGarbage() throws {
    let machine = try listingMachine()
    let results = try machine.read([
      .get(key: b("a/2")),
      .get(key: b("missing")),
      .list(prefix: b("a/"), after: nil, limit: 1),
    ])
    XCTAssertEqual(
      results,
      [
        .get(KVEntry(key: b("a/2"), value: [2], revision: 3)),
        .get(nil),
        .list(items: [KVEntry(key: b("a/1"), value: [1], revision: 2)], more: true),
      ])
    for garbage: [UInt8] in [[], [9], [1, 5, 0, 0, 0], [1, 1, 0, 0, 0, 1, 0, 0, 0, 0]] {
      XCTAssertEqual(try KVCodec.decodeQueryResults(machine.query(garbage)), [])
    }
    XCTAssertEqual(try machine.read([]), [])
  }
}

final class ListPageBytesTests: XCTestCase {
  func testAListingPageStopsAtItsByteBudgetAndSaysThereIsMore() throws {
    let machine = KeyValueStateMachine()
    let value = [UInt8](repeating: 7, count: 1 << 20)
    for index in 0..<10 {
      _ = machine.apply(
        index: UInt64(index + 1),
        command: KVCodec.encode(KVCommand(operations: [.put(key: Array("big/\(index)".utf8), value: value, precondition: .none)])))
    }
    let page = machine.list(prefix: Array("big/".utf8), after: nil, limit: 100)
    // Each item is 1 MiB plus its key: three fit in 4 MiB, a fourth would not.
    XCTAssertEqual(page.items.count, 3)
    let pageBytes = page.items.reduce(0) { $0 + $1.key.count + $1.value.count }
    XCTAssertLessThanOrEqual(pageBytes, KVLimits.listPageBytesMax)
    XCTAssertLessThan(page.items.count, 10)
    XCTAssertGreaterThan(page.items.count, 0)
    XCTAssertTrue(page.more)
    // Paging on from the last key reaches every item exactly once.
    var seen = page.items.map(\.key)
    var after = seen.last
    while let last = after {
      let next = machine.list(prefix: Array("big/".utf8), after: last, limit: 100)
      seen += next.items.map(\.key)
      after = next.more ? next.items.last?.key : nil
    }
    XCTAssertEqual(seen.count, 10)
    XCTAssertEqual(Set(seen.map { String(decoding: $0, as: UTF8.self) }).count, 10)
  }
}
