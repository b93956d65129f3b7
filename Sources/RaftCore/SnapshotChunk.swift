// Snapshots too large to travel inline in one message: split by the sender into chunks that ride
// in ordinary batches over several turns, put back together by the receiver in any order, then
// stepped into the core as the one `.snapshot` message they stand for. Pure values.

/// One piece of a leader's snapshot for one follower. Every chunk repeats the snapshot's identity
/// (index, term, membership, size), so the receiver can start assembling from any of them and
/// tell the pieces of one snapshot from another's.
public struct SnapshotChunk: Equatable, Sendable {
  public var group: UInt64
  /// The leader's replica and the follower's, and the leader's term: the `.snapshot` message's.
  public var from: ReplicaID
  public var to: ReplicaID
  public var term: Term
  public var snapshotIndex: LogIndex
  public var snapshotTerm: Term
  public var config: ConfigState
  /// The whole snapshot's data bytes, and the size of every chunk but the last.
  public var totalBytes: Int
  public var chunkBytes: Int
  public var chunkIndex: Int
  public var data: [UInt8]

  public init(
    group: UInt64, from: ReplicaID, to: ReplicaID, term: Term, snapshotIndex: LogIndex, snapshotTerm: Term,
    config: ConfigState, totalBytes: Int, chunkBytes: Int, chunkIndex: Int, data: [UInt8]
  ) {
    self.group = group
    self.from = from
    self.to = to
    self.term = term
    self.snapshotIndex = snapshotIndex
    self.snapshotTerm = snapshotTerm
    self.config = config
    self.totalBytes = totalBytes
    self.chunkBytes = chunkBytes
    self.chunkIndex = chunkIndex
    self.data = data
  }

  /// Chunks of the snapshot: the last may be shorter. At least one (the decoder requires
  /// `totalBytes ≥ 1`; an empty snapshot always travels inline).
  public var chunkCount: Int { SnapshotChunk.chunkCount(totalBytes: totalBytes, chunkBytes: chunkBytes) }

  public static func chunkCount(totalBytes: Int, chunkBytes: Int) -> Int { (totalBytes + chunkBytes - 1) / chunkBytes }

  /// The data length chunk `chunkIndex` of such a snapshot must have.
  static func expectedBytes(totalBytes: Int, chunkBytes: Int, chunkIndex: Int) -> Int {
    min(chunkBytes, totalBytes - chunkIndex * chunkBytes)
  }

  /// Bytes of one chunk on the wire besides its data and membership lists.
  public static let headerBytes = 8 * 7 + 4 * 3 + 4 * 3

  /// The chunks of a `.snapshot` message, in order, each `chunkBytes` long but the last.
  public static func split(_ message: Message, group: UInt64, chunkBytes: Int) -> [SnapshotChunk] {
    guard let snapshot = message.snapshot else { preconditionFailure("a snapshot message carries a snapshot") }
    let count = chunkCount(totalBytes: snapshot.data.count, chunkBytes: chunkBytes)
    return (0..<count).map { cut(message, group: group, chunkBytes: chunkBytes, chunkIndex: $0) }
  }

  /// Chunk `chunkIndex` of a `.snapshot` message, cut when it is sent (a stream keeps the message,
  /// not its chunks).
  public static func cut(_ message: Message, group: UInt64, chunkBytes: Int, chunkIndex: Int) -> SnapshotChunk {
    precondition(message.kind == .snapshot, "only a snapshot message is split")
    guard let snapshot = message.snapshot else { preconditionFailure("a snapshot message carries a snapshot") }
    precondition(!snapshot.data.isEmpty, "an empty snapshot travels inline")
    precondition(
      chunkBytes >= WireLimits.snapshotChunkBytesMin && chunkBytes <= WireLimits.snapshotChunkBytesMax,
      "chunk size within the wire's limits")
    precondition(snapshot.data.count <= WireLimits.snapshotStreamBytesMax, "snapshot within the stream limit")
    let start = chunkIndex * chunkBytes
    let end = min(start + chunkBytes, snapshot.data.count)
    precondition(chunkIndex >= 0 && start < end, "a chunk inside the snapshot")
    return SnapshotChunk(
      group: group, from: message.from, to: message.to, term: message.term, snapshotIndex: snapshot.index,
      snapshotTerm: snapshot.term, config: snapshot.config, totalBytes: snapshot.data.count, chunkBytes: chunkBytes,
      chunkIndex: chunkIndex, data: Array(snapshot.data[start..<end]))
  }
}

/// The receiving side of one snapshot stream: collects the chunks of one snapshot from one
/// leader, in any order and with duplicates, and hands back the `.snapshot` message once every
/// chunk is in. The caller bounds how many assemblies it keeps and their bytes.
public struct SnapshotAssembly: Sendable {
  public let group: UInt64
  public let from: ReplicaID
  public let to: ReplicaID
  public let term: Term
  public let snapshotIndex: LogIndex
  public let snapshotTerm: Term
  public let config: ConfigState
  public let totalBytes: Int
  public let chunkBytes: Int
  private var buffer: [UInt8]
  private var received: [Bool]
  public private(set) var receivedCount = 0
  /// Ticks since a chunk last added something: the caller drops assemblies idle too long.
  public var idleTicks = 0

  /// Starts assembling the snapshot `first` belongs to; `add(first)` takes the chunk itself.
  public init(first: SnapshotChunk) {
    group = first.group
    from = first.from
    to = first.to
    term = first.term
    snapshotIndex = first.snapshotIndex
    snapshotTerm = first.snapshotTerm
    config = first.config
    totalBytes = first.totalBytes
    chunkBytes = first.chunkBytes
    buffer = Array(repeating: 0, count: first.totalBytes)
    received = Array(repeating: false, count: first.chunkCount)
  }

  /// Whether `chunk` is a piece of the snapshot this assembles.
  public func accepts(_ chunk: SnapshotChunk) -> Bool {
    chunk.group == group && chunk.from == from && chunk.to == to && chunk.term == term
      && chunk.snapshotIndex == snapshotIndex && chunk.snapshotTerm == snapshotTerm && chunk.config == config
      && chunk.totalBytes == totalBytes && chunk.chunkBytes == chunkBytes
  }

  public var isComplete: Bool { receivedCount == received.count }

  /// Takes one chunk of this snapshot (the decoder checked its length); returns the whole
  /// snapshot message when this chunk completed it.
  public mutating func add(_ chunk: SnapshotChunk) -> Message? {
    precondition(accepts(chunk), "a chunk of another snapshot")
    precondition(chunk.chunkIndex >= 0 && chunk.chunkIndex < received.count, "chunk index within the stream")
    precondition(
      chunk.data.count
        == SnapshotChunk.expectedBytes(totalBytes: totalBytes, chunkBytes: chunkBytes, chunkIndex: chunk.chunkIndex),
      "chunk length as the decoder checked it")
    guard !received[chunk.chunkIndex] else { return nil }
    received[chunk.chunkIndex] = true
    receivedCount += 1
    idleTicks = 0
    let start = chunk.chunkIndex * chunkBytes
    buffer.replaceSubrange(start..<(start + chunk.data.count), with: chunk.data)
    guard isComplete else { return nil }
    return Message(
      kind: .snapshot, from: from, to: to, term: term,
      snapshot: Snapshot(index: snapshotIndex, term: snapshotTerm, config: config, data: buffer))
  }
}
