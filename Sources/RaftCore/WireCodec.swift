// The binary wire format of Raft messages and message batches. Versioned, fixed-width
// little-endian integers, length-prefixed, and every decode bounds-checked: hostile bytes are an
// error, never a crash and never an unbounded allocation.
//
// batch    := magic "CAUB" · version u8 (=4) · fromNode u64 · toNode u64 · count u32 · item* ·
//             heartbeatCount u32 · heartbeat* · forwardCount u32 · forward* · chunkCount u32 · chunk*
// item     := group u64 · length u32 · message (exactly `length` bytes)
// heartbeat:= group u64 · kind u8 (3 heartbeat | 4 heartbeatResponse) · term u64 · commit u64 ·
//             context u64   (from/to are the batch's nodes: a replica's id is its node's id)
// forward  := tag u8 (1 proposal | 2 accepted | 3 refused) · group u64 · requestID u64 · index u64 ·
//             term u64 · refusal u8 · leaderHint u64 · dataLength u32 · data
//             (a fixed layout; the fields a tag does not use are zero: a proposal carries data,
//             an acceptance index and term, a refusal its reason and the leader it knows)
// message  := kind u8 · from u64 · to u64 · term u64 · logTerm u64 · index u64 · commit u64 ·
//             reject u8 (0|1) · rejectHint u64 · context u64 · entryCount u32 · entry* ·
//             hasSnapshot u8 (0|1) · snapshot?
// entry    := term u64 · index u64 · kind u8 · dataLength u32 · data
// snapshot := index u64 · term u64 · config · dataLength u32 · data
// config   := voterCount u32 · u64* · outgoingCount u32 · u64* · learnerCount u32 · u64*
// change   := version u8 (=2, configChangeVersion) · stepCount u32 · (kind u8 · replica u64)* ·
//             contextLength u32 · context     (version 1 had no context; it still decodes)
//
// chunk    := group u64 · from u64 · to u64 · term u64 · snapshotIndex u64 · snapshotTerm u64 ·
//             config · totalBytes u64 · chunkBytes u32 · chunkIndex u32 · dataLength u32 · data
//
// Version 2 added the coalesced heartbeats (one section per node pair instead of a message per
// group) and the forwards: a follower hands a client's write to the group's leader inside the
// batch it sends anyway (etcd's MsgProp), instead of relaying the whole HTTP request. Version 3
// added the snapshot chunks (after the forwards): a snapshot larger than the sender's inline
// limit travels as chunks over several batches instead of one message no receiver accepts.
// Version 4 added the message kind `quiesce` (11), which a version 3 decoder refuses.

/// Upper bounds the decoder enforces; each bounds what a single hostile input can make us do.
public enum WireLimits {
  /// A batch larger than this is refused before parsing: bounds one request's memory.
  public static let batchBytesMax = 64 << 20
  /// Bounds the loop over items of one batch.
  public static let messagesPerBatchMax = 1 << 16
  /// Bounds the loop over entries of one message.
  public static let entriesPerMessageMax = 1 << 16
  /// Bounds one entry's payload (a command); `RaftConfig.maxCommandBytes` must not exceed it.
  public static let entryDataBytesMax = 16 << 20
  /// Bounds one snapshot's payload carried inline in a message.
  public static let snapshotDataBytesMax = 48 << 20
  /// Bounds each replica list in a configuration.
  public static let replicasPerConfigMax = 1 << 12
  /// Bounds the loop over a batch's coalesced heartbeats (one per group the two nodes share).
  public static let heartbeatsPerBatchMax = 1 << 16
  /// Bounds the loop over forwarded proposals and their answers in one batch. A sender with more
  /// in one turn splits them over several batches.
  public static let forwardsPerBatchMax = 1 << 14
  /// What a sender puts in one batch (at least one item, whatever its size): batches this size
  /// stay far below `batchBytesMax` and below what a peer's HTTP route accepts, so no group's
  /// large message can make a receiver refuse the batch that carries every other group's.
  public static let batchBytesTarget = 16 << 20
  /// Bounds the loop over a batch's snapshot chunks.
  public static let snapshotChunksPerBatchMax = 64
  /// A stream's chunk size: at least this (bounds a stream's chunk count, so a receiver's
  /// bookkeeping per stream is small) …
  public static let snapshotChunkBytesMin = 64 << 10
  /// … and at most this (one chunk always fits a batch beside other messages).
  public static let snapshotChunkBytesMax = 8 << 20
  /// Bounds one streamed snapshot's size; the receiving host keeps a lower limit of its own on
  /// the bytes it assembles at once.
  public static let snapshotStreamBytesMax = 1 << 40
}

public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
  /// Needed `needed` more bytes at `offset`, but the input ended.
  case truncated(offset: Int, needed: Int)
  case badMagic
  case unsupportedVersion(UInt8)
  /// A field's value is outside what the format allows.
  case invalidField(name: String, offset: Int)
  /// A count or length exceeds its `WireLimits` maximum.
  case limitExceeded(name: String, value: Int, limit: Int)
  /// Bytes left over after a complete value.
  case trailingBytes(count: Int)

  public var description: String {
    switch self {
    case .truncated(let offset, let needed): return "truncated: needed \(needed) bytes at offset \(offset)"
    case .badMagic: return "bad magic: not a Caucus Raft batch"
    case .unsupportedVersion(let version): return "unsupported wire version \(version)"
    case .invalidField(let name, let offset): return "invalid \(name) at offset \(offset)"
    case .limitExceeded(let name, let value, let limit): return "\(name) \(value) exceeds limit \(limit)"
    case .trailingBytes(let count): return "\(count) trailing bytes"
    }
  }
}

/// A message together with the group it belongs to, as carried in a batch.
public struct GroupMessage: Equatable, Sendable {
  public var group: UInt64
  public var message: Message
  public init(group: UInt64, message: Message) {
    self.group = group
    self.message = message
  }
}

/// A heartbeat or heartbeat response of one group inside a batch's coalesced section. Its sender
/// and receiver are the batch's nodes (a replica's id is its node's id), so only what differs per
/// group travels: 33 bytes instead of an 83-byte item.
public struct CoalescedHeartbeat: Equatable, Sendable {
  public var group: UInt64
  public var isResponse: Bool
  public var term: Term
  public var commit: LogIndex
  public var context: UInt64

  public init(group: UInt64, isResponse: Bool, term: Term, commit: LogIndex, context: UInt64) {
    self.group = group
    self.isResponse = isResponse
    self.term = term
    self.commit = commit
    self.context = context
  }

  /// Bytes of one coalesced heartbeat on the wire.
  static let wireBytes = 33

  /// The message this stands for, from `fromNode`'s replica to `toNode`'s.
  public func message(fromNode: UInt64, toNode: UInt64) -> Message {
    Message(
      kind: isResponse ? .heartbeatResponse : .heartbeat, from: fromNode, to: toNode, term: term, commit: commit,
      context: context)
  }
}

/// Why a leader did not take a forwarded proposal. Nothing was appended to its log.
public enum ForwardRefusal: UInt8, Equatable, Sendable, CaseIterable {
  /// This node does not lead the group; `leaderHint` names the leader it knows (0: none).
  case notLeader = 1
  /// A limit of the leader is reached (pending writes, uncommitted bytes, a leader transfer).
  case overloaded = 2
  /// The command exceeds the leader's largest entry.
  case commandTooLarge = 3
  /// This node hosts no replica of the group.
  case groupNotFound = 4
}

/// A client's write that a follower hands to its group's leader inside the batch (etcd's
/// MsgProp), and the leader's answer: the index and term it was appended at, or why not. The
/// follower answers the client itself once it applies that index (Log Matching: the entry it
/// applies there is the proposal exactly when the terms match).
public struct ForwardedProposal: Equatable, Sendable {
  public enum Body: Equatable, Sendable {
    /// Follower → leader: propose this command.
    case proposal(data: [UInt8])
    /// Leader → follower: proposed at `index` in `term`; not yet committed.
    case accepted(index: LogIndex, term: Term)
    /// Leader → follower: not proposed.
    case refused(ForwardRefusal, leaderHint: ReplicaID)
  }

  public var group: UInt64
  /// Chosen by the follower, unique among its outstanding forwards; echoed by the leader.
  public var requestID: UInt64
  public var body: Body

  public init(group: UInt64, requestID: UInt64, body: Body) {
    self.group = group
    self.requestID = requestID
    self.body = body
  }

  /// Bytes of one forward on the wire besides its data.
  public static let headerBytes = 46

  /// A follower's write (rather than a leader's answer to one).
  public var isProposal: Bool {
    if case .proposal = body { return true }
    return false
  }

  var tag: UInt8 {
    switch body {
    case .proposal: return 1
    case .accepted: return 2
    case .refused: return 3
    }
  }
}

/// All messages from one node to another in one send: one batch per destination per loop turn.
/// Heartbeats of every group the two nodes share travel as one coalesced section (DESIGN.md:
/// heartbeats coalesced per node pair, not per group).
public struct MessageBatch: Equatable, Sendable {
  public var fromNode: UInt64
  public var toNode: UInt64
  public var messages: [GroupMessage]
  public var heartbeats: [CoalescedHeartbeat]
  /// Forwarded proposals and their answers; after the heartbeats on the wire.
  public var forwards: [ForwardedProposal]
  /// Pieces of snapshots too large to travel inline; last on the wire.
  public var snapshotChunks: [SnapshotChunk]

  public init(
    fromNode: UInt64, toNode: UInt64, messages: [GroupMessage], heartbeats: [CoalescedHeartbeat] = [],
    forwards: [ForwardedProposal] = [], snapshotChunks: [SnapshotChunk] = []
  ) {
    self.fromNode = fromNode
    self.toNode = toNode
    self.messages = messages
    self.heartbeats = heartbeats
    self.forwards = forwards
    self.snapshotChunks = snapshotChunks
  }

  public var isEmpty: Bool { messages.isEmpty && heartbeats.isEmpty && forwards.isEmpty && snapshotChunks.isEmpty }

  /// Bytes of a batch's fixed parts: magic, version, nodes and the four section counts.
  static let headerBytes = 4 + 1 + 8 + 8 + 4 * 4

  /// Everything one node has for another in one turn, packed into as few batches as keep each
  /// under `bytesTarget` (an item larger than that travels alone) and within every per-batch
  /// count limit: the coalesced heartbeats and the first messages go in the first batch, the
  /// forwards and chunks after the messages. Empty when there is nothing to send.
  public static func packed(
    fromNode: UInt64, toNode: UInt64, messages: [GroupMessage], forwards: [ForwardedProposal] = [],
    snapshotChunks: [SnapshotChunk] = [], bytesTarget: Int = WireLimits.batchBytesTarget
  ) -> [MessageBatch] {
    precondition(bytesTarget >= 1, "a positive byte target")
    let first = coalescing(fromNode: fromNode, toNode: toNode, messages: messages)
    var batches: [MessageBatch] = []
    var current = MessageBatch(fromNode: fromNode, toNode: toNode, messages: [])
    var bytes = headerBytes
    /// Starts a new batch unless `size` more bytes fit this one (or it holds nothing yet).
    func makeRoom(_ size: Int, full: Bool) {
      if (bytes + size > bytesTarget || full) && !current.isEmpty {
        batches.append(current)
        current = MessageBatch(fromNode: fromNode, toNode: toNode, messages: [])
        bytes = headerBytes
      }
      bytes += size
    }
    // Usually one section; more than a batch takes (many ReadIndex rounds' responses in one turn)
    // go on in further batches, never past the receiver's limit.
    for heartbeat in first.heartbeats {
      makeRoom(CoalescedHeartbeat.wireBytes, full: current.heartbeats.count == WireLimits.heartbeatsPerBatchMax)
      current.heartbeats.append(heartbeat)
    }
    for item in first.messages {
      makeRoom(12 + WireCodec.encodedBytes(item.message), full: current.messages.count == WireLimits.messagesPerBatchMax)
      current.messages.append(item)
    }
    for forward in forwards {
      var size = ForwardedProposal.headerBytes
      if case .proposal(let command) = forward.body { size += command.count }
      makeRoom(size, full: current.forwards.count == WireLimits.forwardsPerBatchMax)
      current.forwards.append(forward)
    }
    for chunk in snapshotChunks {
      let size = SnapshotChunk.headerBytes + 8 * chunk.config.allReplicas.count + chunk.data.count
      makeRoom(size, full: current.snapshotChunks.count == WireLimits.snapshotChunksPerBatchMax)
      current.snapshotChunks.append(chunk)
    }
    if !current.isEmpty { batches.append(current) }
    return batches
  }

  /// A batch of `messages` with every heartbeat and heartbeat response between the two nodes
  /// moved into the coalesced section; everything else stays an item, in order.
  public static func coalescing(fromNode: UInt64, toNode: UInt64, messages: [GroupMessage]) -> MessageBatch {
    var batch = MessageBatch(fromNode: fromNode, toNode: toNode, messages: [])
    batch.messages.reserveCapacity(messages.count)
    for item in messages {
      let message = item.message
      let coalescable =
        (message.kind == .heartbeat || message.kind == .heartbeatResponse) && message.from == fromNode
        && message.to == toNode && message.logTerm == 0 && message.index == 0 && message.entries.isEmpty
        && !message.reject && message.rejectHint == 0 && message.snapshot == nil
      if coalescable {
        batch.heartbeats.append(
          CoalescedHeartbeat(
            group: item.group, isResponse: message.kind == .heartbeatResponse, term: message.term,
            commit: message.commit, context: message.context))
      } else {
        batch.messages.append(item)
      }
    }
    return batch
  }

  /// Every message of the batch: the items, then the coalesced heartbeats expanded.
  public var allMessages: [GroupMessage] {
    messages
      + heartbeats.map { GroupMessage(group: $0.group, message: $0.message(fromNode: fromNode, toNode: toNode)) }
  }
}

public enum WireCodec {
  /// The batch format's version: 2 added the coalesced heartbeats and the forwards, 3 the
  /// snapshot chunks, 4 the `quiesce` message kind. Nodes of one cluster run one version.
  public static let version: UInt8 = 4
  /// The format version of an encoded `ConfigChange`: these live in log entries, in the WAL and in
  /// snapshots, so they keep their own version, apart from the batch's, and every earlier version
  /// still decodes. Version 2 added the context.
  public static let configChangeVersion: UInt8 = 2
  public static let magic: [UInt8] = [0x43, 0x41, 0x55, 0x42]  // "CAUB"

  // MARK: Encoding

  public static func encode(_ batch: MessageBatch) -> [UInt8] {
    var writer = ByteWriter()
    writer.bytes.append(contentsOf: magic)
    writer.u8(version)
    writer.u64(batch.fromNode)
    writer.u64(batch.toNode)
    writer.u32(UInt32(batch.messages.count))
    for item in batch.messages {
      writer.u64(item.group)
      let body = encode(item.message)
      writer.u32(UInt32(body.count))
      writer.bytes.append(contentsOf: body)
    }
    writer.u32(UInt32(batch.heartbeats.count))
    for heartbeat in batch.heartbeats {
      writer.u64(heartbeat.group)
      writer.u8(heartbeat.isResponse ? MessageKind.heartbeatResponse.rawValue : MessageKind.heartbeat.rawValue)
      writer.u64(heartbeat.term)
      writer.u64(heartbeat.commit)
      writer.u64(heartbeat.context)
    }
    encodeForwards(batch.forwards, &writer)
    precondition(batch.snapshotChunks.count <= WireLimits.snapshotChunksPerBatchMax, "the sender splits chunks over batches")
    writer.u32(UInt32(batch.snapshotChunks.count))
    for chunk in batch.snapshotChunks {
      writer.u64(chunk.group)
      writer.u64(chunk.from)
      writer.u64(chunk.to)
      writer.u64(chunk.term)
      writer.u64(chunk.snapshotIndex)
      writer.u64(chunk.snapshotTerm)
      encodeConfig(chunk.config, &writer)
      writer.u64(UInt64(chunk.totalBytes))
      writer.u32(UInt32(chunk.chunkBytes))
      writer.u32(UInt32(chunk.chunkIndex))
      writer.u32(UInt32(chunk.data.count))
      writer.bytes.append(contentsOf: chunk.data)
    }
    return writer.bytes
  }

  static func encodeConfig(_ config: ConfigState, _ writer: inout ByteWriter) {
    for list in [config.voters, config.votersOutgoing, config.learners] {
      writer.u32(UInt32(list.count))
      for replica in list { writer.u64(replica) }
    }
  }

  /// The bytes `encode(message)` produces, without encoding it: what a sender packs by.
  public static func encodedBytes(_ message: Message) -> Int {
    var bytes = 1 + 8 * 8 + 1 + 4 + 1
    for entry in message.entries { bytes += Entry.headerBytes + entry.data.count }
    if let snapshot = message.snapshot {
      bytes += 8 + 8 + 4 * 3 + 8 * (snapshot.config.voters.count + snapshot.config.votersOutgoing.count + snapshot.config.learners.count)
      bytes += 4 + snapshot.data.count
    }
    return bytes
  }

  /// The forwards section, last in the batch.
  static func encodeForwards(_ forwards: [ForwardedProposal], _ writer: inout ByteWriter) {
    precondition(forwards.count <= WireLimits.forwardsPerBatchMax, "the sender splits forwards over batches")
    writer.u32(UInt32(forwards.count))
    for forward in forwards {
      var index: UInt64 = 0
      var term: UInt64 = 0
      var refusal: UInt8 = 0
      var leaderHint: UInt64 = 0
      var data: [UInt8] = []
      switch forward.body {
      case .proposal(let command):
        precondition(!command.isEmpty && command.count <= WireLimits.entryDataBytesMax, "a proposal carries a command")
        data = command
      case .accepted(let acceptedIndex, let acceptedTerm):
        precondition(acceptedIndex != 0 && acceptedTerm != 0, "an acceptance names a real entry")
        index = acceptedIndex
        term = acceptedTerm
      case .refused(let reason, let hint):
        refusal = reason.rawValue
        leaderHint = hint
      }
      writer.u8(forward.tag)
      writer.u64(forward.group)
      writer.u64(forward.requestID)
      writer.u64(index)
      writer.u64(term)
      writer.u8(refusal)
      writer.u64(leaderHint)
      writer.u32(UInt32(data.count))
      writer.bytes.append(contentsOf: data)
    }
  }

  public static func encode(_ message: Message) -> [UInt8] {
    var writer = ByteWriter()
    writer.u8(message.kind.rawValue)
    writer.u64(message.from)
    writer.u64(message.to)
    writer.u64(message.term)
    writer.u64(message.logTerm)
    writer.u64(message.index)
    writer.u64(message.commit)
    writer.u8(message.reject ? 1 : 0)
    writer.u64(message.rejectHint)
    writer.u64(message.context)
    writer.u32(UInt32(message.entries.count))
    for entry in message.entries {
      writer.u64(entry.term)
      writer.u64(entry.index)
      writer.u8(entry.kind.rawValue)
      writer.u32(UInt32(entry.data.count))
      writer.bytes.append(contentsOf: entry.data)
    }
    if let snapshot = message.snapshot {
      writer.u8(1)
      writer.u64(snapshot.index)
      writer.u64(snapshot.term)
      encodeConfig(snapshot.config, &writer)
      writer.u32(UInt32(snapshot.data.count))
      writer.bytes.append(contentsOf: snapshot.data)
    } else {
      writer.u8(0)
    }
    return writer.bytes
  }

  public static func encode(_ change: ConfigChange) -> [UInt8] {
    var writer = ByteWriter()
    writer.u8(configChangeVersion)
    writer.u32(UInt32(change.steps.count))
    for step in change.steps {
      writer.u8(step.kind.rawValue)
      writer.u64(step.replica)
    }
    precondition(change.context.count <= ConfigChange.contextBytesMax, "proposeConfigChange bounds the context")
    writer.u32(UInt32(change.context.count))
    writer.bytes.append(contentsOf: change.context)
    return writer.bytes
  }

  // MARK: Decoding

  public static func decodeBatch(_ bytes: [UInt8]) throws(WireError) -> MessageBatch {
    guard bytes.count <= WireLimits.batchBytesMax else {
      throw .limitExceeded(name: "batch bytes", value: bytes.count, limit: WireLimits.batchBytesMax)
    }
    var reader = ByteReader(bytes)
    let head = try reader.take(4)
    guard head.elementsEqual(magic) else { throw .badMagic }
    let batchVersion = try reader.u8()
    guard batchVersion == version else { throw .unsupportedVersion(batchVersion) }
    let fromNode = try reader.u64()
    let toNode = try reader.u64()
    let count = try reader.count("message count", limit: WireLimits.messagesPerBatchMax)
    var messages: [GroupMessage] = []
    messages.reserveCapacity(min(count, reader.remaining / 12))
    for _ in 0..<count {
      let group = try reader.u64()
      let length = try reader.count("message length", limit: WireLimits.batchBytesMax)
      let body = try reader.take(length)
      var inner = ByteReader(Array(body), baseOffset: reader.offset - length)
      let message = try decodeMessage(&inner)
      guard inner.remaining == 0 else { throw .trailingBytes(count: inner.remaining) }
      messages.append(GroupMessage(group: group, message: message))
    }
    let heartbeatCount = try reader.count("heartbeat count", limit: WireLimits.heartbeatsPerBatchMax)
    var heartbeats: [CoalescedHeartbeat] = []
    heartbeats.reserveCapacity(min(heartbeatCount, reader.remaining / 33))
    for _ in 0..<heartbeatCount {
      let group = try reader.u64()
      let kindOffset = reader.offset
      let kind = try reader.u8()
      guard kind == MessageKind.heartbeat.rawValue || kind == MessageKind.heartbeatResponse.rawValue else {
        throw .invalidField(name: "coalesced heartbeat kind", offset: kindOffset)
      }
      heartbeats.append(
        CoalescedHeartbeat(
          group: group, isResponse: kind == MessageKind.heartbeatResponse.rawValue, term: try reader.u64(),
          commit: try reader.u64(), context: try reader.u64()))
    }
    let forwards = try decodeForwards(&reader)
    let chunks = try decodeSnapshotChunks(&reader)
    guard reader.remaining == 0 else { throw .trailingBytes(count: reader.remaining) }
    return MessageBatch(
      fromNode: fromNode, toNode: toNode, messages: messages, heartbeats: heartbeats, forwards: forwards,
      snapshotChunks: chunks)
  }

  /// The snapshot chunks section. Each chunk's size fields are checked against each other: a
  /// chunk size within the wire's limits, an index within the stream, and exactly the data
  /// length that index must have, so an assembly never writes outside its buffer.
  static func decodeSnapshotChunks(_ reader: inout ByteReader) throws(WireError) -> [SnapshotChunk] {
    let count = try reader.count("snapshot chunk count", limit: WireLimits.snapshotChunksPerBatchMax)
    var chunks: [SnapshotChunk] = []
    for _ in 0..<count {
      let headOffset = reader.offset
      let group = try reader.u64()
      let from = try reader.u64()
      let to = try reader.u64()
      guard from != 0, to != 0 else { throw .invalidField(name: "snapshot chunk replica id 0", offset: headOffset) }
      let term = try reader.u64()
      let snapshotIndex = try reader.u64()
      let snapshotTerm = try reader.u64()
      let config = try decodeConfig(&reader)
      let totalOffset = reader.offset
      let total = try reader.u64()
      guard total >= 1, total <= UInt64(WireLimits.snapshotStreamBytesMax) else {
        throw .invalidField(name: "snapshot chunk total bytes", offset: totalOffset)
      }
      let sizeOffset = reader.offset
      let chunkBytes = Int(try reader.u32())
      guard chunkBytes >= WireLimits.snapshotChunkBytesMin, chunkBytes <= WireLimits.snapshotChunkBytesMax else {
        throw .invalidField(name: "snapshot chunk size", offset: sizeOffset)
      }
      let totalBytes = Int(total)
      let indexOffset = reader.offset
      let chunkIndex = Int(try reader.u32())
      guard chunkIndex < SnapshotChunk.chunkCount(totalBytes: totalBytes, chunkBytes: chunkBytes) else {
        throw .invalidField(name: "snapshot chunk index", offset: indexOffset)
      }
      let lengthOffset = reader.offset
      let length = try reader.count("snapshot chunk data length", limit: WireLimits.snapshotChunkBytesMax)
      guard length == SnapshotChunk.expectedBytes(totalBytes: totalBytes, chunkBytes: chunkBytes, chunkIndex: chunkIndex)
      else { throw .invalidField(name: "snapshot chunk data length", offset: lengthOffset) }
      chunks.append(
        SnapshotChunk(
          group: group, from: from, to: to, term: term, snapshotIndex: snapshotIndex, snapshotTerm: snapshotTerm,
          config: config, totalBytes: totalBytes, chunkBytes: chunkBytes, chunkIndex: chunkIndex,
          data: Array(try reader.take(length))))
    }
    return chunks
  }

  static func decodeConfig(_ reader: inout ByteReader) throws(WireError) -> ConfigState {
    var lists: [[ReplicaID]] = []
    for name in ["voters", "outgoing voters", "learners"] {
      let listOffset = reader.offset
      let count = try reader.count(name, limit: WireLimits.replicasPerConfigMax)
      var list: [ReplicaID] = []
      list.reserveCapacity(min(count, reader.remaining / 8))
      for _ in 0..<count { list.append(try reader.u64()) }
      guard Set(list).count == list.count, !list.contains(0) else {
        throw .invalidField(name: name, offset: listOffset)
      }
      lists.append(list)
    }
    return ConfigState(voters: lists[0], votersOutgoing: lists[1], learners: lists[2])
  }

  /// The forwards section. Each forward is checked against its tag: the fields the tag does not
  /// use must be zero, and a proposal's command is 1 to `entryDataBytesMax` bytes.
  static func decodeForwards(_ reader: inout ByteReader) throws(WireError) -> [ForwardedProposal] {
    let count = try reader.count("forward count", limit: WireLimits.forwardsPerBatchMax)
    var forwards: [ForwardedProposal] = []
    forwards.reserveCapacity(min(count, reader.remaining / ForwardedProposal.headerBytes))
    for _ in 0..<count {
      let tagOffset = reader.offset
      let tag = try reader.u8()
      let group = try reader.u64()
      let requestID = try reader.u64()
      let indexOffset = reader.offset
      let index = try reader.u64()
      let term = try reader.u64()
      let refusalOffset = reader.offset
      let refusalCode = try reader.u8()
      let leaderHint = try reader.u64()
      let lengthOffset = reader.offset
      let length = try reader.count("forward data length", limit: WireLimits.entryDataBytesMax)
      let data = try reader.take(length)
      let body: ForwardedProposal.Body
      switch tag {
      case 1:
        guard index == 0, term == 0 else { throw .invalidField(name: "proposal index or term", offset: indexOffset) }
        guard refusalCode == 0, leaderHint == 0 else {
          throw .invalidField(name: "proposal refusal or leader hint", offset: refusalOffset)
        }
        guard length > 0 else { throw .invalidField(name: "empty proposal", offset: lengthOffset) }
        body = .proposal(data: Array(data))
      case 2:
        guard index != 0, term != 0 else { throw .invalidField(name: "accepted index or term", offset: indexOffset) }
        guard refusalCode == 0, leaderHint == 0 else {
          throw .invalidField(name: "accepted refusal or leader hint", offset: refusalOffset)
        }
        guard length == 0 else { throw .invalidField(name: "accepted data", offset: lengthOffset) }
        body = .accepted(index: index, term: term)
      case 3:
        guard index == 0, term == 0 else { throw .invalidField(name: "refused index or term", offset: indexOffset) }
        guard let refusal = ForwardRefusal(rawValue: refusalCode) else {
          throw .invalidField(name: "forward refusal", offset: refusalOffset)
        }
        guard length == 0 else { throw .invalidField(name: "refused data", offset: lengthOffset) }
        body = .refused(refusal, leaderHint: leaderHint)
      default:
        throw .invalidField(name: "forward tag", offset: tagOffset)
      }
      forwards.append(ForwardedProposal(group: group, requestID: requestID, body: body))
    }
    return forwards
  }

  public static func decodeMessage(_ bytes: [UInt8]) throws(WireError) -> Message {
    var reader = ByteReader(bytes)
    let message = try decodeMessage(&reader)
    guard reader.remaining == 0 else { throw .trailingBytes(count: reader.remaining) }
    return message
  }

  static func decodeMessage(_ reader: inout ByteReader) throws(WireError) -> Message {
    let kindOffset = reader.offset
    guard let kind = MessageKind(rawValue: try reader.u8()) else {
      throw .invalidField(name: "message kind", offset: kindOffset)
    }
    let fromOffset = reader.offset
    let from = try reader.u64()
    let to = try reader.u64()
    guard from != 0, to != 0 else { throw .invalidField(name: "replica id 0", offset: fromOffset) }
    var message = Message(kind: kind, from: from, to: to, term: try reader.u64())
    message.logTerm = try reader.u64()
    message.index = try reader.u64()
    message.commit = try reader.u64()
    message.reject = try reader.bool("reject")
    message.rejectHint = try reader.u64()
    message.context = try reader.u64()
    let entryCount = try reader.count("entry count", limit: WireLimits.entriesPerMessageMax)
    message.entries.reserveCapacity(min(entryCount, reader.remaining / Entry.headerBytes))
    for position in 0..<entryCount {
      let entryOffset = reader.offset
      let term = try reader.u64()
      let index = try reader.u64()
      // Entries of one append are contiguous and follow `index` (the core relies on it).
      guard index == message.index &+ 1 &+ UInt64(position), index != 0 else {
        throw .invalidField(name: "entry index", offset: entryOffset)
      }
      let kindOffset = reader.offset
      guard let kind = EntryKind(rawValue: try reader.u8()) else {
        throw .invalidField(name: "entry kind", offset: kindOffset)
      }
      let length = try reader.count("entry data length", limit: WireLimits.entryDataBytesMax)
      message.entries.append(Entry(term: term, index: index, kind: kind, data: Array(try reader.take(length))))
    }
    if try reader.bool("snapshot flag") {
      let index = try reader.u64()
      let term = try reader.u64()
      let config = try decodeConfig(&reader)
      let length = try reader.count("snapshot data length", limit: WireLimits.snapshotDataBytesMax)
      let data = Array(try reader.take(length))
      message.snapshot = Snapshot(index: index, term: term, config: config, data: data)
    }
    guard (message.kind == .snapshot) == (message.snapshot != nil) else {
      throw .invalidField(name: "snapshot presence", offset: reader.offset)
    }
    return message
  }

  public static func decodeConfigChange(_ bytes: [UInt8]) throws(WireError) -> ConfigChange {
    var reader = ByteReader(bytes)
    let changeVersion = try reader.u8()
    guard changeVersion == 1 || changeVersion == configChangeVersion else { throw .unsupportedVersion(changeVersion) }
    let count = try reader.count("config change steps", limit: ConfigChange.stepsMax)
    var steps: [ConfigChangeStep] = []
    for _ in 0..<count {
      let offset = reader.offset
      guard let kind = ConfigChangeKind(rawValue: try reader.u8()) else {
        throw .invalidField(name: "config change kind", offset: offset)
      }
      steps.append(ConfigChangeStep(kind, try reader.u64()))
    }
    var context: [UInt8] = []
    if changeVersion >= 2 {
      let length = try reader.count("config change context bytes", limit: ConfigChange.contextBytesMax)
      context = Array(try reader.take(length))
    }
    guard reader.remaining == 0 else { throw .trailingBytes(count: reader.remaining) }
    return ConfigChange(steps, context: context)
  }
}

struct ByteWriter {
  var bytes: [UInt8] = []
  mutating func u8(_ value: UInt8) { bytes.append(value) }
  mutating func u32(_ value: UInt32) {
    for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
  }
  mutating func u64(_ value: UInt64) {
    for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
  }
}

struct ByteReader {
  let bytes: [UInt8]
  private var position = 0
  let baseOffset: Int

  init(_ bytes: [UInt8], baseOffset: Int = 0) {
    self.bytes = bytes
    self.baseOffset = baseOffset
  }

  var offset: Int { baseOffset + position }
  var remaining: Int { bytes.count - position }

  mutating func take(_ count: Int) throws(WireError) -> ArraySlice<UInt8> {
    guard count >= 0, count <= remaining else { throw .truncated(offset: offset, needed: count) }
    let slice = bytes[position..<(position + count)]
    position += count
    return slice
  }

  mutating func u8() throws(WireError) -> UInt8 {
    guard remaining >= 1 else { throw .truncated(offset: offset, needed: 1) }
    position += 1
    return bytes[position - 1]
  }

  mutating func u32() throws(WireError) -> UInt32 {
    guard remaining >= 4 else { throw .truncated(offset: offset, needed: 4) }
    var value: UInt32 = 0
    for shift in 0..<4 { value |= UInt32(bytes[position + shift]) << UInt32(8 * shift) }
    position += 4
    return value
  }

  mutating func u64() throws(WireError) -> UInt64 {
    guard remaining >= 8 else { throw .truncated(offset: offset, needed: 8) }
    var value: UInt64 = 0
    for shift in 0..<8 { value |= UInt64(bytes[position + shift]) << UInt64(8 * shift) }
    position += 8
    return value
  }

  mutating func bool(_ name: String) throws(WireError) -> Bool {
    let fieldOffset = offset
    switch try u8() {
    case 0: return false
    case 1: return true
    default: throw .invalidField(name: name, offset: fieldOffset)
    }
  }

  /// A u32 count or length, refused when above `limit`.
  mutating func count(_ name: String, limit: Int) throws(WireError) -> Int {
    let value = Int(try u32())
    guard value <= limit else { throw .limitExceeded(name: name, value: value, limit: limit) }
    return value
  }
}
