import XCTest

@testable import KeyValueStore

final class KVCodecTests: XCTestCase {
  // Binary keys and values with NUL and 0xFF bytes throughout.
  static let binaryKey: KVBytes = [0x00, 0xFF, 0x2F, 0x00, 0x80, 0xFF]
  static let binaryValue: KVBytes = [0xFF, 0x00, 0x00, 0xFE, 0x01]

  static let commands: [KVCommand] = [
    KVCommand(operations: []),
    KVCommand(operations: [.put(key: b("a"), value: [], precondition: .none)]),
    KVCommand(
      operations: [
        .put(key: binaryKey, value: binaryValue, precondition: .revisionEquals(UInt64.max)),
        .put(key: [0xFF], value: [0x00], precondition: .absent),
        .delete(key: b("k/with/slashes"), precondition: .none),
        .delete(key: [0x00], precondition: .revisionEquals(0)),
        .delete(key: binaryKey, precondition: .absent),
      ],
      idempotencyKey: "retry-7 ✓"),
    KVCommand(
      operations: [
        .put(
          key: KVBytes(repeating: 0xFF, count: KVLimits.keyBytesMax),
          value: KVBytes(repeating: 0, count: 70_000), precondition: .none)
      ],
      idempotencyKey: String(repeating: "x", count: KVLimits.idempotencyKeyBytesMax)),
    KVCommand(
      operations: (0..<KVLimits.operationsPerCommandMax).map {
        .delete(key: [UInt8(truncatingIfNeeded: $0)], precondition: .none)
      }),
  ]

  static let outcomes: [KVWriteOutcome] = [
    .applied([]),
    .applied([
      .put(revision: 1), .delete(deleted: true), .delete(deleted: false), .put(revision: .max),
    ]),
    .preconditionFailed(operationIndex: 0, key: binaryKey, currentRevision: nil),
    .preconditionFailed(operationIndex: 1023, key: [0xFF], currentRevision: 42),
    .rejected(""),
    .rejected("invalid command: key length is 0, expected 1...4096"),
  ]

  static let querySets: [[KVQuery]] = [
    [],
    [.get(key: binaryKey)],
    [
      .list(prefix: [], after: nil, limit: 0),
      .list(prefix: [0xFF], after: [0xFF, 0x00], limit: KVLimits.listLimitMax),
      .list(prefix: b("a/"), after: [], limit: 10),
      .get(key: [0x00]),
    ],
    [.snapshot(bytesMax: 0), .get(key: [0x01]), .snapshot(bytesMax: .max)],
  ]

  static let resultSets: [[KVQueryResult]] = [
    [],
    [.get(nil)],
    [
      .get(KVEntry(key: binaryKey, value: binaryValue, revision: 9)),
      .list(items: [], more: false),
      .list(items: [], more: true),
      .list(
        items: [
          KVEntry(key: [0x00], value: [], revision: 1),
          KVEntry(key: [0xFF, 0xFF], value: binaryValue, revision: .max),
        ], more: true),
    ],
    [.snapshot([]), .snapshot(binaryValue), .get(nil), .snapshotTooLarge(bytes: 0), .snapshotTooLarge(bytes: .max)],
  ]

  // MARK: Round trips

  func testCommandRoundTrips() throws {
    for command in Self.commands {
      let bytes = KVCodec.encode(command)
      XCTAssertEqual(bytes.first, KVCodec.formatVersion)
      XCTAssertEqual(try KVCodec.decodeCommand(bytes), command)
      XCTAssertNoThrow(try KVCodec.validate(command))
    }
  }

  func testOutcomeRoundTrips() throws {
    for outcome in Self.outcomes {
      let bytes = KVCodec.encode(outcome)
      XCTAssertEqual(bytes.first, KVCodec.formatVersion)
      XCTAssertEqual(try KVCodec.decodeWriteOutcome(bytes), outcome)
    }
  }

  func testQueryRoundTrips() throws {
    for queries in Self.querySets {
      XCTAssertEqual(try KVCodec.decodeQueries(KVCodec.encode(queries: queries)), queries)
    }
  }

  func testResultRoundTrips() throws {
    for results in Self.resultSets {
      XCTAssertEqual(try KVCodec.decodeQueryResults(KVCodec.encode(results: results)), results)
    }
  }

  func testIntegersAreLittleEndianFixedWidth() {
    let bytes = KVCodec.encode(KVWriteOutcome.applied([.put(revision: 0x0102_0304_0506_0708)]))
    XCTAssertEqual(bytes, [1, 1, 1, 0, 0, 0, 1, 8, 7, 6, 5, 4, 3, 2, 1])
  }

  // MARK: Hostile input

  /// Every proper prefix of every valid encoding throws, and so does one extra trailing byte.
  func testEveryTruncationAndTrailingByteThrows() {
    var encodings: [(String, [UInt8], ([UInt8]) throws -> Void)] = []
    for command in Self.commands.prefix(4) {
      encodings.append(("command", KVCodec.encode(command), { _ = try KVCodec.decodeCommand($0) }))
    }
    for outcome in Self.outcomes {
      encodings.append(
        ("outcome", KVCodec.encode(outcome), { _ = try KVCodec.decodeWriteOutcome($0) }))
    }
    for queries in Self.querySets {
      encodings.append(
        ("queries", KVCodec.encode(queries: queries), { _ = try KVCodec.decodeQueries($0) }))
    }
    for results in Self.resultSets {
      encodings.append(
        ("results", KVCodec.encode(results: results), { _ = try KVCodec.decodeQueryResults($0) }))
    }
    for (name, bytes, decode) in encodings {
      XCTAssertNoThrow(try decode(bytes), name)
      for length in 0..<bytes.count {
        XCTAssertThrowsError(try decode(Array(bytes[..<length])), "\(name) cut at \(length)") {
          XCTAssertTrue($0 is KVCodecError, "\(name): \($0)")
        }
      }
      XCTAssertThrowsError(try decode(bytes + [0]), "\(name) with a trailing byte") {
        XCTAssertEqual($0 as? KVCodecError, .trailingBytes(count: 1))
      }
    }
  }

  func testForgedHugeLengthsThrow() {
    // version, no idempotency key, 1 op, put, no precondition, then the key length at 8.
    var bytes = KVCodec.encode(
      KVCommand(operations: [.put(key: b("k"), value: b("v"), precondition: .none)]))
    XCTAssertEqual(Array(bytes[..<9]), [1, 0, 1, 0, 0, 0, 1, 0, 1])
    bytes.replaceSubrange(8..<12, with: [0xFF, 0xFF, 0xFF, 0xFF])
    XCTAssertThrowsError(try KVCodec.decodeCommand(bytes)) {
      guard case .limitExceeded(let field, let value, _, _) = $0 as? KVCodecError else {
        return XCTFail("\($0)")
      }
      XCTAssertEqual(field, "key length")
      XCTAssertEqual(value, UInt64(UInt32.max))
    }
    // A forged value length within no limit but beyond the input: truncated, not allocated.
    var value = KVCodec.encode(
      KVCommand(operations: [.put(key: b("k"), value: b("v"), precondition: .none)]))
    XCTAssertEqual(Array(value[13..<17]), [1, 0, 0, 0])
    value.replaceSubrange(13..<17, with: [0xF0, 0xFF, 0xFF, 0xFF])
    XCTAssertThrowsError(try KVCodec.decodeCommand(value)) {
      guard case .truncated = $0 as? KVCodecError else { return XCTFail("\($0)") }
    }
    // Forged counts.
    XCTAssertThrowsError(try KVCodec.decodeCommand([1, 0, 0xFF, 0xFF, 0xFF, 0xFF]))
    XCTAssertThrowsError(try KVCodec.decodeQueries([1, 0xFF, 0xFF, 0xFF, 0x7F]))
    XCTAssertThrowsError(try KVCodec.decodeQueryResults([1, 1, 0, 0, 0, 2, 0x10, 0x27, 0, 0]))
    XCTAssertThrowsError(try KVCodec.decodeWriteOutcome([1, 1, 0xFF, 0xFF, 0xFF, 0xFF]))
  }

  func testLimitViolationsThrowOnDecodeAndValidate() {
    let tooLongKey = KVBytes(repeating: 0x61, count: KVLimits.keyBytesMax + 1)
    let badCommands: [KVCommand] = [
      KVCommand(operations: [.put(key: tooLongKey, value: [], precondition: .none)]),
      KVCommand(operations: [.put(key: [], value: [1], precondition: .none)]),
      KVCommand(operations: [.delete(key: [], precondition: .none)]),
      KVCommand(
        operations: Array(
          repeating: .delete(key: b("k"), precondition: .none),
          count: KVLimits.operationsPerCommandMax + 1)),
      KVCommand(
        operations: [],
        idempotencyKey: String(repeating: "i", count: KVLimits.idempotencyKeyBytesMax + 1)),
      KVCommand(operations: [], idempotencyKey: ""),
    ]
    for command in badCommands {
      XCTAssertThrowsError(try KVCodec.decodeCommand(KVCodec.encode(command))) {
        guard case .limitExceeded = $0 as? KVCodecError else { return XCTFail("\($0)") }
      }
      XCTAssertThrowsError(try KVCodec.validate(command))
    }
    let badQueries: [[KVQuery]] = [
      [.get(key: [])],
      [.get(key: tooLongKey)],
      [.list(prefix: tooLongKey, after: nil, limit: 1)],
      [.list(prefix: [], after: tooLongKey, limit: 1)],
      [.list(prefix: [], after: nil, limit: KVLimits.listLimitMax + 1)],
      [.list(prefix: [], after: nil, limit: -1)],
      Array(repeating: .get(key: b("k")), count: KVLimits.queriesPerReadMax + 1),
    ]
    for queries in badQueries {
      XCTAssertThrowsError(try KVCodec.decodeQueries(KVCodec.encode(queries: queries))) {
        guard case .limitExceeded = $0 as? KVCodecError else { return XCTFail("\($0)") }
      }
    }
    let tooManyItems = Array(
      repeating: KVEntry(key: b("k"), value: [], revision: 1), count: KVLimits.listLimitMax + 1)
    XCTAssertThrowsError(
      try KVCodec.decodeQueryResults(
        KVCodec.encode(results: [.list(items: tooManyItems, more: false)])))
  }

  func testUnknownVersionTagsAndFlagsThrow() {
    var command = KVCodec.encode(Self.commands[2])
    command[0] = 2
    XCTAssertThrowsError(try KVCodec.decodeCommand(command)) {
      XCTAssertEqual($0 as? KVCodecError, .unsupportedVersion(2))
    }
    XCTAssertThrowsError(try KVCodec.decodeCommand([1, 2, 0, 0, 0, 0])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidTag(field: "idempotency key flag", value: 2))
    }
    XCTAssertThrowsError(try KVCodec.decodeCommand([1, 0, 1, 0, 0, 0, 9])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidTag(field: "operation", value: 9))
    }
    XCTAssertThrowsError(try KVCodec.decodeCommand([1, 0, 1, 0, 0, 0, 1, 7])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidTag(field: "precondition", value: 7))
    }
    XCTAssertThrowsError(try KVCodec.decodeWriteOutcome([1, 5])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidTag(field: "outcome", value: 5))
    }
    XCTAssertThrowsError(try KVCodec.decodeQueries([1, 1, 0, 0, 0, 5])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidTag(field: "query", value: 5))
    }
    XCTAssertThrowsError(try KVCodec.decodeQueryResults([1, 1, 0, 0, 0, 1, 2])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidTag(field: "entry flag", value: 2))
    }
    // An idempotency key that is not UTF-8.
    XCTAssertThrowsError(try KVCodec.decodeCommand([1, 1, 2, 0, 0, 0, 0xC3, 0x28, 0, 0, 0, 0])) {
      XCTAssertEqual($0 as? KVCodecError, .invalidUTF8(field: "idempotency key length"))
    }
  }

  /// Random bytes and random mutations of valid encodings never crash a decoder; whatever decodes
  /// re-encodes to exactly the same bytes (the encoding is canonical).
  func testRandomAndMutatedBytesNeverCrashAndDecodedBytesAreCanonical() {
    var random = SplitMix64(seed: 0xC0DEC)
    let seeds: [[UInt8]] =
      Self.commands.prefix(3).map(KVCodec.encode)
      + Self.outcomes.map { KVCodec.encode($0) }
      + Self.querySets.map { KVCodec.encode(queries: $0) }
      + Self.resultSets.map { KVCodec.encode(results: $0) }
    var decodedCount = 0
    for round in 0..<20_000 {
      var bytes: [UInt8]
      if round % 4 == 0 {
        bytes = random.bytes(count: random.below(40))
        if !bytes.isEmpty { bytes[0] = 1 }
      } else {
        bytes = seeds[random.below(seeds.count)]
        for _ in 0...random.below(3) where !bytes.isEmpty {
          bytes[random.below(bytes.count)] = UInt8(truncatingIfNeeded: random.next())
        }
      }
      if let command = try? KVCodec.decodeCommand(bytes) {
        XCTAssertEqual(KVCodec.encode(command), bytes)
        decodedCount += 1
      }
      if let outcome = try? KVCodec.decodeWriteOutcome(bytes) {
        XCTAssertEqual(KVCodec.encode(outcome), bytes)
        decodedCount += 1
      }
      if let queries = try? KVCodec.decodeQueries(bytes) {
        XCTAssertEqual(KVCodec.encode(queries: queries), bytes)
        decodedCount += 1
      }
      if let results = try? KVCodec.decodeQueryResults(bytes) {
        XCTAssertEqual(KVCodec.encode(results: results), bytes)
        decodedCount += 1
      }
    }
    XCTAssertGreaterThan(decodedCount, 100, "mutations should sometimes stay valid")
  }
}
