import XCTest

@testable import RaftCore

final class WireCodecTests: XCTestCase {
  static func sampleMessages() -> [Message] {
    let snapshot = Snapshot(
      index: 40, term: 3, config: ConfigState(voters: [1, 2, 3], votersOutgoing: [1, 2, 4], learners: [5]),
      data: [1, 2, 3, 4, 5])
    return MessageKind.allCases.map { kind in
      var message = Message(
        kind: kind, from: 1, to: 2, term: 7, logTerm: 6, index: 41, commit: 39, reject: kind == .appendResponse,
        rejectHint: 12, context: 0xDEAD_BEEF_0102_0304)
      if kind == .append {
        message.entries = [
          Entry(term: 7, index: 42, kind: .normal, data: Array("hello".utf8)),
          Entry(term: 7, index: 43, kind: .configChange, data: WireCodec.encode(ConfigChange([.init(.addLearner, 5)]))),
          Entry(term: 7, index: 44),
        ]
      }
      if kind == .snapshot { message.snapshot = snapshot }
      return message
    }
  }

  static func sampleForwards() -> [ForwardedProposal] {
    [
      ForwardedProposal(group: 7, requestID: 1, body: .proposal(data: Array("put k v".utf8))),
      ForwardedProposal(group: 7, requestID: 2, body: .accepted(index: 42, term: 3)),
      ForwardedProposal(group: 8, requestID: 3, body: .refused(.notLeader, leaderHint: 3)),
      ForwardedProposal(group: 8, requestID: 4, body: .refused(.overloaded, leaderHint: 0)),
    ]
  }

  static func sampleBatch() -> MessageBatch {
    MessageBatch(
      fromNode: 1, toNode: 2,
      messages: sampleMessages().enumerated().map { GroupMessage(group: UInt64($0.offset), message: $0.element) },
      heartbeats: [
        CoalescedHeartbeat(group: 7, isResponse: false, term: 9, commit: 100, context: 0),
        CoalescedHeartbeat(group: 8, isResponse: true, term: 9, commit: 0, context: 0x0102_0304_0506_0708),
      ],
      forwards: sampleForwards())
  }

  func testEveryMessageKindRoundTrips() throws {
    for message in Self.sampleMessages() {
      XCTAssertEqual(try WireCodec.decodeMessage(WireCodec.encode(message)), message, "\(message.kind)")
    }
  }

  func testBatchRoundTrips() throws {
    let batch = Self.sampleBatch()
    XCTAssertEqual(try WireCodec.decodeBatch(WireCodec.encode(batch)), batch)
  }

  func testFixedWidthLittleEndianLayout() {
    let bytes = WireCodec.encode(MessageBatch(fromNode: 0x0102, toNode: 3, messages: []))
    XCTAssertEqual(Array(bytes[0..<4]), Array("CAUB".utf8), "magic")
    XCTAssertEqual(bytes[4], 4, "version")
    XCTAssertEqual(Array(bytes[5..<13]), [0x02, 0x01, 0, 0, 0, 0, 0, 0], "from node, little-endian u64")
    XCTAssertEqual(Array(bytes[21..<25]), [0, 0, 0, 0], "message count, u32")
    XCTAssertEqual(Array(bytes[25..<29]), [0, 0, 0, 0], "heartbeat count, u32")
    XCTAssertEqual(Array(bytes[29..<33]), [0, 0, 0, 0], "forward count, u32")
    XCTAssertEqual(Array(bytes[33..<37]), [0, 0, 0, 0], "snapshot chunk count, u32, last")
    XCTAssertEqual(bytes.count, 37)
    let heartbeat = CoalescedHeartbeat(group: 0x0A, isResponse: true, term: 5, commit: 6, context: 7)
    let one = WireCodec.encode(MessageBatch(fromNode: 1, toNode: 2, messages: [], heartbeats: [heartbeat]))
    XCTAssertEqual(one.count, 37 + 33, "a coalesced heartbeat is 33 bytes")
    XCTAssertEqual(Array(one[25..<29]), [1, 0, 0, 0])
    XCTAssertEqual(Array(one[29..<37]), [0x0A, 0, 0, 0, 0, 0, 0, 0], "group")
    XCTAssertEqual(one[37], MessageKind.heartbeatResponse.rawValue, "kind")
  }

  /// Heartbeats between the batch's nodes leave the items for the coalesced section and come
  /// back as the same messages; everything else stays an item, in order.
  func testCoalescingKeepsEveryMessage() throws {
    let heartbeat = Message(kind: .heartbeat, from: 1, to: 2, term: 4, commit: 9, context: 3)
    let response = Message(kind: .heartbeatResponse, from: 1, to: 2, term: 4, context: 5)
    let append = Message(kind: .append, from: 1, to: 2, term: 4, logTerm: 4, index: 9, commit: 9)
    // Not coalescable: addressed between other replicas than the batch's nodes.
    let foreign = Message(kind: .heartbeat, from: 3, to: 2, term: 4, commit: 9)
    let items = [
      GroupMessage(group: 1, message: heartbeat), GroupMessage(group: 2, message: append),
      GroupMessage(group: 3, message: response), GroupMessage(group: 4, message: foreign),
    ]
    let batch = MessageBatch.coalescing(fromNode: 1, toNode: 2, messages: items)
    XCTAssertEqual(batch.messages, [items[1], items[3]])
    XCTAssertEqual(batch.heartbeats.map(\.group), [1, 3])
    let decoded = try WireCodec.decodeBatch(WireCodec.encode(batch))
    XCTAssertEqual(decoded, batch)
    XCTAssertEqual(decoded.allMessages, [items[1], items[3], items[0], items[2]])
  }

  func testUnknownCoalescedHeartbeatKindIsRefused() {
    var bytes = WireCodec.encode(
      MessageBatch(
        fromNode: 1, toNode: 2, messages: [],
        heartbeats: [CoalescedHeartbeat(group: 1, isResponse: false, term: 1, commit: 1, context: 0)]))
    bytes[37] = MessageKind.append.rawValue
    XCTAssertThrowsError(try WireCodec.decodeBatch(bytes)) { error in
      XCTAssertEqual(error as? WireError, .invalidField(name: "coalesced heartbeat kind", offset: 37))
    }
  }

  func testForwardLayoutIsFixed() {
    let batch = MessageBatch(
      fromNode: 1, toNode: 2, messages: [],
      forwards: [ForwardedProposal(group: 0x0A0B, requestID: 5, body: .refused(.overloaded, leaderHint: 3))])
    let bytes = WireCodec.encode(batch)
    XCTAssertEqual(Array(bytes[25..<29]), [0, 0, 0, 0], "heartbeat count")
    XCTAssertEqual(Array(bytes[29..<33]), [1, 0, 0, 0], "forward count")
    let forward = Array(bytes[33..<(bytes.count - 4)])
    XCTAssertEqual(forward.count, ForwardedProposal.headerBytes)
    XCTAssertEqual(forward[0], 3, "tag: refused")
    XCTAssertEqual(Array(forward[1..<9]), [0x0B, 0x0A, 0, 0, 0, 0, 0, 0], "group")
    XCTAssertEqual(Array(forward[9..<17]), [5, 0, 0, 0, 0, 0, 0, 0], "request id")
    XCTAssertEqual(Array(forward[17..<33]), Array(repeating: 0, count: 16), "index and term unused")
    XCTAssertEqual(forward[33], ForwardRefusal.overloaded.rawValue, "refusal")
    XCTAssertEqual(Array(forward[34..<42]), [3, 0, 0, 0, 0, 0, 0, 0], "leader hint")
    XCTAssertEqual(Array(forward[42..<46]), [0, 0, 0, 0], "data length")
  }

  func testEveryForwardKindRoundTrips() throws {
    var forwards = Self.sampleForwards()
    forwards += ForwardRefusal.allCases.map { ForwardedProposal(group: 1, requestID: 9, body: .refused($0, leaderHint: 2)) }
    let batch = MessageBatch(fromNode: 3, toNode: 1, messages: [], forwards: forwards)
    XCTAssertEqual(try WireCodec.decodeBatch(WireCodec.encode(batch)), batch)
  }

  /// Config changes live in log entries and snapshots: the batch's version bump must not change them.
  func testConfigChangesKeepTheirOwnVersion() {
    XCTAssertEqual(WireCodec.encode(ConfigChange([.init(.addVoter, 4)]))[0], WireCodec.configChangeVersion)
    XCTAssertEqual(WireCodec.configChangeVersion, 2)
  }

  /// Every proper prefix of a valid batch is refused with an error, never a crash.
  func testEveryTruncationIsAnError() {
    let bytes = WireCodec.encode(Self.sampleBatch())
    for length in 0..<bytes.count {
      XCTAssertThrowsError(try WireCodec.decodeBatch(Array(bytes[0..<length])), "prefix of \(length) bytes")
    }
  }

  /// Every proper prefix of a single message is refused too.
  func testEveryMessageTruncationIsAnError() {
    for message in Self.sampleMessages() {
      let bytes = WireCodec.encode(message)
      for length in 0..<bytes.count {
        XCTAssertThrowsError(try WireCodec.decodeMessage(Array(bytes[0..<length])), "\(message.kind) prefix \(length)")
      }
    }
  }

  func testTrailingBytesAreRefused() {
    XCTAssertThrowsError(try WireCodec.decodeBatch(WireCodec.encode(Self.sampleBatch()) + [0])) { error in
      XCTAssertEqual(error as? WireError, .trailingBytes(count: 1))
    }
  }

  func testBadMagicAndVersionAreRefused() {
    var bytes = WireCodec.encode(Self.sampleBatch())
    bytes[0] = 0x58
    XCTAssertThrowsError(try WireCodec.decodeBatch(bytes)) { XCTAssertEqual($0 as? WireError, .badMagic) }
    for other: UInt8 in [1, 2, 3, 5] {
      bytes = WireCodec.encode(Self.sampleBatch())
      bytes[4] = other
      XCTAssertThrowsError(try WireCodec.decodeBatch(bytes)) { XCTAssertEqual($0 as? WireError, .unsupportedVersion(other)) }
    }
  }

  /// The bytes of an empty batch followed by a forwards section written field by field.
  private func batchWithForward(
    count: UInt32 = 1, tag: UInt8, index: UInt64 = 0, term: UInt64 = 0, refusal: UInt8 = 0, leaderHint: UInt64 = 0,
    dataLength: UInt32, data: [UInt8] = []
  ) -> [UInt8] {
    var writer = ByteWriter()
    writer.bytes.append(contentsOf: WireCodec.magic)
    writer.u8(WireCodec.version)
    writer.u64(1)
    writer.u64(2)
    writer.u32(0)  // messages
    writer.u32(0)  // coalesced heartbeats
    writer.u32(count)
    writer.u8(tag)
    writer.u64(1)
    writer.u64(1)
    writer.u64(index)
    writer.u64(term)
    writer.u8(refusal)
    writer.u64(leaderHint)
    writer.u32(dataLength)
    writer.bytes.append(contentsOf: data)
    writer.u32(0)  // snapshot chunks
    return writer.bytes
  }

  func testForwardLimitsAreRefusedWithoutAllocating() {
    XCTAssertThrowsError(try WireCodec.decodeBatch(batchWithForward(count: UInt32.max, tag: 1, dataLength: 1, data: [1]))) {
      XCTAssertEqual(
        $0 as? WireError,
        .limitExceeded(name: "forward count", value: Int(UInt32.max), limit: WireLimits.forwardsPerBatchMax))
    }
    let tooLong = UInt32(WireLimits.entryDataBytesMax + 1)
    XCTAssertThrowsError(try WireCodec.decodeBatch(batchWithForward(tag: 1, dataLength: tooLong))) {
      XCTAssertEqual(
        $0 as? WireError,
        .limitExceeded(name: "forward data length", value: Int(tooLong), limit: WireLimits.entryDataBytesMax))
    }
    // A length within the limit but beyond the input is a truncation, not an allocation.
    XCTAssertThrowsError(try WireCodec.decodeBatch(batchWithForward(tag: 1, dataLength: UInt32(WireLimits.entryDataBytesMax)))) {
      guard case .truncated = $0 as? WireError else { return XCTFail("\($0)") }
    }
  }

  func testForwardFieldsATagDoesNotUseMustBeZero() {
    let refused = [
      ("unknown tag", batchWithForward(tag: 4, dataLength: 0)),
      ("tag 0", batchWithForward(tag: 0, dataLength: 0)),
      ("empty proposal", batchWithForward(tag: 1, dataLength: 0)),
      ("proposal with an index", batchWithForward(tag: 1, index: 3, dataLength: 1, data: [1])),
      ("proposal with a refusal", batchWithForward(tag: 1, refusal: 1, dataLength: 1, data: [1])),
      ("acceptance without a term", batchWithForward(tag: 2, index: 3, dataLength: 0)),
      ("acceptance with data", batchWithForward(tag: 2, index: 3, term: 1, dataLength: 1, data: [1])),
      ("acceptance with a leader hint", batchWithForward(tag: 2, index: 3, term: 1, leaderHint: 2, dataLength: 0)),
      ("refusal without a reason", batchWithForward(tag: 3, dataLength: 0)),
      ("refusal with an unknown reason", batchWithForward(tag: 3, refusal: 9, dataLength: 0)),
      ("refusal with an index", batchWithForward(tag: 3, index: 1, refusal: 1, dataLength: 0)),
      ("refusal with data", batchWithForward(tag: 3, refusal: 1, dataLength: 1, data: [1])),
    ]
    for (name, bytes) in refused {
      XCTAssertThrowsError(try WireCodec.decodeBatch(bytes), name) { error in
        guard case .invalidField = error as? WireError else { return XCTFail("\(name): \(error)") }
      }
    }
    XCTAssertNoThrow(try WireCodec.decodeBatch(batchWithForward(tag: 3, refusal: 1, leaderHint: 2, dataLength: 0)))
  }

  func testHugeCountsAreRefusedWithoutAllocating() {
    var writer = ByteWriter()
    writer.bytes.append(contentsOf: WireCodec.magic)
    writer.u8(WireCodec.version)
    writer.u64(1)
    writer.u64(2)
    writer.u32(UInt32.max)
    XCTAssertThrowsError(try WireCodec.decodeBatch(writer.bytes)) { error in
      guard case .limitExceeded(let name, _, _) = error as? WireError else { return XCTFail("\(error)") }
      XCTAssertEqual(name, "message count")
    }
    var heartbeats = ByteWriter()
    heartbeats.bytes.append(contentsOf: WireCodec.magic)
    heartbeats.u8(WireCodec.version)
    heartbeats.u64(1)
    heartbeats.u64(2)
    heartbeats.u32(0)
    heartbeats.u32(UInt32.max)
    XCTAssertThrowsError(try WireCodec.decodeBatch(heartbeats.bytes)) { error in
      guard case .limitExceeded(let name, _, _) = error as? WireError else { return XCTFail("\(error)") }
      XCTAssertEqual(name, "heartbeat count")
    }
    // An entry claiming 16 MiB + 1 of data.
    var message = ByteWriter()
    message.u8(MessageKind.append.rawValue)
    for _ in 0..<6 { message.u64(1) }
    message.u8(0)
    message.u64(0)
    message.u64(0)
    message.u32(1)
    message.u64(1)
    message.u64(2)
    message.u8(0)
    message.u32(UInt32(WireLimits.entryDataBytesMax + 1))
    XCTAssertThrowsError(try WireCodec.decodeMessage(message.bytes))
  }

  func testInvalidFieldsAreRefused() {
    var message = Message(kind: .append, from: 1, to: 2, term: 1, index: 5, entries: [Entry(term: 1, index: 7)])
    XCTAssertThrowsError(try WireCodec.decodeMessage(WireCodec.encode(message)), "entries must follow index")
    message = Message(kind: .vote, from: 0, to: 2, term: 1)
    XCTAssertThrowsError(try WireCodec.decodeMessage(WireCodec.encode(message)), "replica 0")
    var bytes = WireCodec.encode(Message(kind: .vote, from: 1, to: 2, term: 1))
    bytes[0] = 99
    XCTAssertThrowsError(try WireCodec.decodeMessage(bytes), "unknown kind")
    bytes = WireCodec.encode(Message(kind: .vote, from: 1, to: 2, term: 1))
    bytes[49] = 2  // the reject flag
    XCTAssertThrowsError(try WireCodec.decodeMessage(bytes), "a boolean is 0 or 1")
    message = Message(kind: .snapshot, from: 1, to: 2, term: 1)
    XCTAssertThrowsError(try WireCodec.decodeMessage(WireCodec.encode(message)), "a snapshot message carries one")
  }

  /// Hostile input: random bytes and random corruptions of valid batches never crash the decoder.
  func testRandomCorruptionNeverCrashes() {
    var random = SplitMix64(seed: 2024)
    let valid = WireCodec.encode(Self.sampleBatch())
    var decoded = 0
    for round in 0..<3000 {
      var bytes = valid
      if round % 3 == 0 {
        bytes = (0..<Int(random.next() % 200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
      } else {
        for _ in 0..<(1 + Int(random.next() % 4)) {
          bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next())
        }
      }
      if (try? WireCodec.decodeBatch(bytes)) != nil { decoded += 1 }
    }
    XCTAssertLessThan(decoded, 3000, "most corruptions are detected")
  }

  func testConfigChangeRoundTripsAndRefusesGarbage() throws {
    let change = ConfigChange([.init(.addVoter, 4), .init(.remove, 1)])
    XCTAssertEqual(try WireCodec.decodeConfigChange(WireCodec.encode(change)), change)
    let bytes = WireCodec.encode(change)
    for length in 0..<bytes.count {
      XCTAssertThrowsError(try WireCodec.decodeConfigChange(Array(bytes[0..<length])))
    }
  }

  /// Version 2 carries the host's context (the endpoints of the replicas a change involves).
  func testConfigChangeWithContextRoundTripsAndEveryTruncationIsAnError() throws {
    let change = ConfigChange([.init(.addLearner, 4)], context: [9, 8, 7, 6, 5])
    let bytes = WireCodec.encode(change)
    XCTAssertEqual(bytes.count, 1 + 4 + 9 + 4 + 5, "version · steps · contextLength · context")
    XCTAssertEqual(Array(bytes[14..<18]), [5, 0, 0, 0], "context length, little-endian")
    XCTAssertEqual(try WireCodec.decodeConfigChange(bytes), change)
    for length in 0..<bytes.count {
      XCTAssertThrowsError(try WireCodec.decodeConfigChange(Array(bytes[0..<length])), "prefix of \(length) bytes")
    }
    XCTAssertThrowsError(try WireCodec.decodeConfigChange(bytes + [0]), "trailing byte")
    var oversized = Array(bytes[0..<14])
    oversized += [0xFF, 0xFF, 0xFF, 0x7F]
    XCTAssertThrowsError(try WireCodec.decodeConfigChange(oversized), "a context past contextBytesMax")
  }

  /// Changes written before the context existed sit in logs and snapshots: they still decode.
  func testConfigChangeVersionOneStillDecodes() throws {
    let versionOne: [UInt8] = [1, 2, 0, 0, 0, ConfigChangeKind.addVoter.rawValue, 4, 0, 0, 0, 0, 0, 0, 0,
      ConfigChangeKind.remove.rawValue, 1, 0, 0, 0, 0, 0, 0, 0]
    XCTAssertEqual(
      try WireCodec.decodeConfigChange(versionOne), ConfigChange([.init(.addVoter, 4), .init(.remove, 1)]))
    XCTAssertThrowsError(try WireCodec.decodeConfigChange(versionOne + [0, 0, 0, 0]), "version 1 has no context")
    XCTAssertThrowsError(try WireCodec.decodeConfigChange([3, 0, 0, 0, 0]), "an unknown version")
  }
}
