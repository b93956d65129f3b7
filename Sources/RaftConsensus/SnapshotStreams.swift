import RaftCore

/// Snapshots too large to travel inline (`RaftConsensusOptions.snapshotInlineBytesMax`): the
/// leader's side sends each as chunks, a tick's budget at a time, so one large group cannot fill
/// the transport or make a receiver refuse a batch that carries every other group's messages;
/// the follower's side puts the chunks back together, in any order, and hands the whole
/// `.snapshot` message to its core. Loop only; no I/O.
struct SnapshotStreams {
  /// A stream's group and the replica at the other end (the follower for an outbound stream, the
  /// leader for an inbound one).
  struct Key: Hashable {
    var group: UInt64
    var replica: ReplicaID
  }

  struct Outbound {
    /// The core's `.snapshot` message: chunks are cut from it as they leave (no copy of the data).
    var message: Message
    var nextChunk = 0
    var chunkCount: Int
  }

  enum Arrival: Equatable {
    /// The last missing chunk: the whole snapshot message, to step into the core.
    case complete(Message)
    case pending
    /// Taking it would put more than `bytesMax` bytes in assemblies at once.
    case refused
  }

  private(set) var outbound: [Key: Outbound] = [:]
  private(set) var inbound: [Key: SnapshotAssembly] = [:]
  /// The bytes of every inbound assembly's buffer.
  private(set) var inboundBytes = 0
  let chunkBytes: Int

  init(chunkBytes: Int) {
    precondition(
      chunkBytes >= WireLimits.snapshotChunkBytesMin && chunkBytes <= WireLimits.snapshotChunkBytesMax,
      "RaftConsensusOptions.validate checks the chunk size")
    self.chunkBytes = chunkBytes
  }

  // MARK: Leader side

  /// Streams `message` (a `.snapshot` of `group`) to its receiver, replacing any stream to it.
  mutating func start(_ message: Message, group: UInt64) {
    guard let snapshot = message.snapshot, message.kind == .snapshot, !snapshot.data.isEmpty else {
      preconditionFailure("only a non-empty snapshot message streams")
    }
    let count = SnapshotChunk.chunkCount(totalBytes: snapshot.data.count, chunkBytes: chunkBytes)
    outbound[Key(group: group, replica: message.to)] = Outbound(message: message, chunkCount: count)
  }

  /// Takes, for every destination node, its streams' next chunks, at most `bytesPerDestination`
  /// of them (but one chunk at least) per destination, round robin across its streams so none
  /// starves. A stream whose group no longer leads in the term it started (`isCurrent` false) is
  /// dropped. Returns the chunks and the streams whose last chunk left (the core is told then).
  mutating func takeChunks(
    bytesPerDestination: Int, isCurrent: (Key, Term) -> Bool
  ) -> (chunks: [ReplicaID: [SnapshotChunk]], finished: [Key]) {
    precondition(bytesPerDestination >= 1, "a positive budget")
    for (key, stream) in outbound where !isCurrent(key, stream.message.term) { outbound[key] = nil }
    var chunks: [ReplicaID: [SnapshotChunk]] = [:]
    var finished: [Key] = []
    let destinations = Set(outbound.keys.map(\.replica)).sorted()
    for destination in destinations {
      var queue = outbound.keys.filter { $0.replica == destination }.sorted { $0.group < $1.group }
      var bytes = 0
      var position = 0
      // One chunk per stream in turn; at least one chunk, and bounded by the streams' chunks.
      while !queue.isEmpty && bytes < bytesPerDestination {
        let key = queue[position]
        var stream = outbound[key]!
        let chunk = SnapshotChunk.cut(stream.message, group: key.group, chunkBytes: chunkBytes, chunkIndex: stream.nextChunk)
        bytes += chunk.data.count
        chunks[destination, default: []].append(chunk)
        stream.nextChunk += 1
        if stream.nextChunk == stream.chunkCount {
          outbound[key] = nil
          finished.append(key)
          queue.remove(at: position)
        } else {
          outbound[key] = stream
          position += 1
        }
        if position >= queue.count { position = 0 }
      }
    }
    return (chunks, finished)
  }

  // MARK: Follower side

  /// Takes one chunk from the leader `chunk.from`. A chunk of another snapshot than the one
  /// being assembled from that leader for that group starts over with it (the leader moved on).
  mutating func receive(_ chunk: SnapshotChunk, bytesMax: Int) -> Arrival {
    let key = Key(group: chunk.group, replica: chunk.from)
    if var assembly = inbound[key], assembly.accepts(chunk) {
      inbound[key] = nil
      guard let message = assembly.add(chunk) else {
        inbound[key] = assembly
        return .pending
      }
      inboundBytes -= assembly.totalBytes
      return .complete(message)
    }
    if let current = inbound[key],
      (chunk.term, chunk.snapshotIndex) < (current.term, current.snapshotIndex)
    {
      return .pending  // a late chunk of an older stream: the newer one keeps its progress
    }
    if let replaced = inbound.removeValue(forKey: key) { inboundBytes -= replaced.totalBytes }
    guard inboundBytes + chunk.totalBytes <= bytesMax else { return .refused }
    var assembly = SnapshotAssembly(first: chunk)
    // A one-chunk stream completes as it starts.
    if let message = assembly.add(chunk) { return .complete(message) }
    inbound[key] = assembly
    inboundBytes += chunk.totalBytes
    precondition(inboundBytes >= 0, "assembly accounting")
    return .pending
  }

  /// One tick passed: drops the assemblies no chunk added to for `idleTicksMax` ticks (their
  /// leader gave up or lost them). Returns how many it dropped.
  mutating func tick(idleTicksMax: Int) -> Int {
    var dropped = 0
    for (key, var assembly) in inbound {
      assembly.idleTicks += 1
      if assembly.idleTicks > idleTicksMax {
        inbound[key] = nil
        inboundBytes -= assembly.totalBytes
        dropped += 1
      } else {
        inbound[key] = assembly
      }
    }
    precondition(inboundBytes >= 0, "assembly accounting")
    return dropped
  }

  /// Forgets every stream of `group` (deleted here).
  mutating func forget(group: UInt64) {
    for key in outbound.keys where key.group == group { outbound[key] = nil }
    for (key, assembly) in inbound where key.group == group {
      inbound[key] = nil
      inboundBytes -= assembly.totalBytes
    }
  }
}
