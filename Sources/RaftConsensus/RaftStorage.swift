import Consensus
import RaftCore
import WriteAheadLog

/// How the host stores Raft state in the node's shared write-ahead log, and how it reads it back.
///
/// Records (all integers little-endian):
/// - `.entry`: `index`, `term` = the entry's; payload = kind u8 (`EntryKind`) · data.
/// - `.hardState`: `index` = commit, `term` = term; payload = version u8 (=1) · vote u64, optionally
///   followed by snapshotIndex u64 · snapshotTerm u64: a marker that a snapshot received from the
///   leader replaced the whole log here, so the group's entries before it are void.
/// - `.groupCreated`: payload = version u8 (=2) · peers · bootstrapCount u16 · u64*, where
///   peers = peerCount u16 · (node u64 · port u16 · hostLength u8 · host)*: the endpoints of the
///   replicas the group knows, then its bootstrap voters — the membership before its log, which
///   is not in the log because groups are bootstrapped out of band. A replica that joins an
///   existing group starts from the same bootstrap voters (it is not among them), so that
///   replaying the leader's log from index 1 reproduces the group's configuration history.
///   Version 1 had no bootstrap list: its peers were the bootstrap voters. The record is restated
///   (written again, with the endpoints known then) for every live group before segments are
///   released, so after a release a group's surviving entries may come BEFORE its creation
///   record: replay attaches every record to its group whatever the order, and a restatement
///   never resets the log. Endpoints that membership changes added travel in the changes'
///   context (the same peers encoding) and are merged from the recovered log too.
/// - `.groupDeleted`: no payload; what came before it for the group is void.
/// Within one loop turn a group's entries precede its hard state (a marker precedes both).
///
/// Snapshots live in the WAL's snapshot files, one per group: data = version u8 (=2) · config
/// (voterCount u32 · u64* · outgoingCount u32 · u64* · learnerCount u32 · u64*) · payload, where
/// payload (what the host hands the core as `Snapshot.data`, so also what a leader sends) =
/// payloadVersion u8 (=1) · peers · the state machine's bytes. The peers are the endpoints the
/// group knew when the snapshot was taken: the changes whose contexts carried them are compacted
/// away, and a replica that installs the snapshot would otherwise never learn them. Version 1
/// files held the state machine's bytes where the payload is: they load as a payload without
/// peers. On recovery the entries after the snapshot are kept when the log holds the
/// snapshot's last entry with its term, or starts right after it (Raft paper §7); otherwise the
/// snapshot replaced them.
enum RaftStorage {
  static let version: UInt8 = 1
  static let entryPayloadOverheadBytes = 1
  static let peersMax = 1 << 12

  static func entryRecord(group: GroupID, _ entry: Entry) -> WALRecord {
    var payload: [UInt8] = []
    payload.reserveCapacity(entry.data.count + entryPayloadOverheadBytes)
    payload.append(entry.kind.rawValue)
    payload.append(contentsOf: entry.data)
    return WALRecord(kind: .entry, group: group.packed, index: entry.index, term: entry.term, payload: payload)
  }

  static func hardStateRecord(
    group: GroupID, _ hardState: HardState, snapshotMarker: (index: LogIndex, term: Term)? = nil
  ) -> WALRecord {
    var payload: [UInt8] = [version]
    appendU64(&payload, hardState.vote)
    if let snapshotMarker {
      appendU64(&payload, snapshotMarker.index)
      appendU64(&payload, snapshotMarker.term)
    }
    return WALRecord(kind: .hardState, group: group.packed, index: hardState.commit, term: hardState.term, payload: payload)
  }

  static let groupCreatedVersion: UInt8 = 2

  static func groupCreatedRecord(group: GroupID, peers: [Peer], bootstrapVoters: [ReplicaID]) -> WALRecord {
    precondition(!bootstrapVoters.isEmpty, "a group has bootstrap voters")
    precondition(bootstrapVoters.count <= peersMax, "too many bootstrap voters")
    precondition(Set(bootstrapVoters).count == bootstrapVoters.count && !bootstrapVoters.contains(0), "voter ids")
    var payload: [UInt8] = [groupCreatedVersion]
    payload.append(contentsOf: encodePeers(peers))
    payload.append(UInt8(truncatingIfNeeded: bootstrapVoters.count))
    payload.append(UInt8(truncatingIfNeeded: bootstrapVoters.count >> 8))
    for voter in bootstrapVoters { appendU64(&payload, voter) }
    return WALRecord(kind: .groupCreated, group: group.packed, index: 0, term: 0, payload: payload)
  }

  /// peerCount u16 · (node u64 · port u16 · hostLength u8 · host)*: the creation record's
  /// endpoints, and the context of a membership change.
  static func encodePeers(_ peers: [Peer]) -> [UInt8] {
    precondition(peers.count <= peersMax, "too many peers")
    var bytes: [UInt8] = []
    bytes.append(UInt8(truncatingIfNeeded: peers.count))
    bytes.append(UInt8(truncatingIfNeeded: peers.count >> 8))
    for peer in peers {
      let host = Array(peer.endpoint.host.utf8)
      precondition(host.count <= 255, "Endpoint limits hosts to 255 bytes")
      appendU64(&bytes, peer.node.rawValue)
      bytes.append(UInt8(truncatingIfNeeded: peer.endpoint.port))
      bytes.append(UInt8(truncatingIfNeeded: peer.endpoint.port >> 8))
      bytes.append(UInt8(host.count))
      bytes.append(contentsOf: host)
    }
    return bytes
  }

  static func groupDeletedRecord(group: GroupID) -> WALRecord {
    WALRecord(kind: .groupDeleted, group: group.packed, index: 0, term: 0)
  }

  static let snapshotVersion: UInt8 = 2

  /// `data` is a snapshot payload (`encodeSnapshotPayload`).
  static func encodeSnapshot(config: ConfigState, data: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = [snapshotVersion]
    for list in [config.voters, config.votersOutgoing, config.learners] {
      appendU32(&bytes, UInt32(list.count))
      for replica in list { appendU64(&bytes, replica) }
    }
    bytes.append(contentsOf: data)
    return bytes
  }

  /// The configuration and the payload (checked; a version 1 file's bytes become a payload
  /// without peers).
  static func decodeSnapshot(_ bytes: [UInt8], group: GroupID) throws -> (ConfigState, [UInt8]) {
    func malformed(_ what: String) -> ConsensusError { .storage("group \(group): snapshot is malformed: \(what)") }
    guard let fileVersion = bytes.first, fileVersion == 1 || fileVersion == snapshotVersion else {
      throw malformed("version \(bytes.first.map(String.init) ?? "missing"); this build reads 1 and 2")
    }
    var offset = 1
    var lists: [[ReplicaID]] = []
    for _ in 0..<3 {
      guard offset + 4 <= bytes.count else { throw malformed("truncated configuration") }
      let count = Int(readU32(bytes, at: offset))
      offset += 4
      guard count <= peersMax, offset + 8 * count <= bytes.count else { throw malformed("replica count \(count)") }
      lists.append((0..<count).map { readU64(bytes, at: offset + 8 * $0) })
      offset += 8 * count
    }
    let config = ConfigState(voters: lists[0], votersOutgoing: lists[1], learners: lists[2])
    let rest = Array(bytes[offset...])
    guard fileVersion == snapshotVersion else { return (config, encodeSnapshotPayload(peers: [], machine: rest)) }
    _ = try decodeSnapshotPayload(rest, group: group)
    return (config, rest)
  }

  static let snapshotPayloadVersion: UInt8 = 1

  /// The core's `Snapshot.data` for this host: payloadVersion u8 (=1) · peers (`encodePeers`) ·
  /// the state machine's bytes. The only place that builds it.
  static func encodeSnapshotPayload(peers: [Peer], machine: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = [snapshotPayloadVersion]
    bytes.append(contentsOf: encodePeers(peers))
    bytes.append(contentsOf: machine)
    precondition(bytes.count >= 3, "a payload holds at least its version and peer count")
    return bytes
  }

  /// Reads a payload; it may come from another node (a leader's snapshot), so anything
  /// malformed throws.
  static func decodeSnapshotPayload(_ bytes: [UInt8], group: GroupID) throws -> (peers: [Peer], machine: [UInt8]) {
    guard let payloadVersion = bytes.first, payloadVersion == snapshotPayloadVersion else {
      throw ConsensusError.storage(
        "group \(group): snapshot payload version \(bytes.first.map(String.init) ?? "missing"); this build reads 1")
    }
    var offset = 1
    let peers = try decodePeers(bytes, offset: &offset, group: group)
    precondition(offset <= bytes.count, "decodePeers stays within the bytes")
    return (peers, Array(bytes[offset...]))
  }

  /// A live group as the log describes it.
  struct RecoveredGroup {
    /// Nil until the group's creation record is replayed: after a segment release, the surviving
    /// entries of a group may come before its restated creation record.
    var peers: [Peer]?
    /// From the creation record (version 1: its peers).
    var bootstrapVoters: [ReplicaID] = []
    var hardState = HardState()
    /// Contiguous, ascending; they may start after 1 once segments were released.
    var entries: [Entry] = []
    /// Set by a snapshot marker: the index the (received) snapshot ended at; entries follow it.
    var base: LogIndex? = nil
    /// Its `data` is a payload (`encodeSnapshotPayload`), whatever the file's version.
    var snapshot: Snapshot? = nil
    /// The endpoints every replayed membership change's context carried, with the change's
    /// index, in log order. Gathered during replay, so that entries the snapshot covers (trimmed
    /// after replay) or overwritten later still count: knowing an endpoint too many costs
    /// nothing, forgetting one stalls the group.
    var contextPeers: [(index: LogIndex, peer: Peer)] = []
    /// The snapshot replaced the log (a received snapshot whose file was written, but not the
    /// marker that voids the old log: a crash between the two). The host writes the marker now
    /// (`snapshotMarkerRecord`), or the next replay would read the new entries after the old
    /// ones: a gap when the old log ended before the snapshot, or an old entry at the snapshot's
    /// index whose term disagrees, for which the new entries after it would be thrown away.
    var snapshotMarkerMissing = false
  }

  /// The marker a recovery writes for a group whose snapshot replaced its log
  /// (`RecoveredGroup.snapshotMarkerMissing`).
  static func snapshotMarkerRecord(group id: GroupID, _ group: RecoveredGroup) -> WALRecord {
    guard let snapshot = group.snapshot, group.snapshotMarkerMissing else {
      preconditionFailure("group \(id): a marker only for a snapshot that replaced the log")
    }
    var hardState = group.hardState
    hardState.commit = max(hardState.commit, snapshot.index)
    hardState.term = max(hardState.term, snapshot.term)
    if hardState.term != group.hardState.term { hardState.vote = 0 }
    return hardStateRecord(group: id, hardState, snapshotMarker: (snapshot.index, snapshot.term))
  }

  /// Replays the whole log into the live groups' persisted Raft state, and loads their snapshots.
  /// Snapshot files of groups that are not live (deleted, crashed before the unlink) are removed.
  static func recover(_ wal: WriteAheadLog) throws -> [GroupID: RecoveredGroup] {
    var groups: [GroupID: RecoveredGroup] = [:]
    try wal.replay { record in
      guard let id = GroupID(packed: record.group) else {
        throw ConsensusError.storage("the log names an unknown group \(record.group)")
      }
      // A group's records before its (restated) creation record belong to it: release only ever
      // deletes a prefix, and a deletion record always follows the records it voids.
      if record.kind != .groupDeleted && groups[id] == nil { groups[id] = RecoveredGroup(peers: nil) }
      switch record.kind {
      case .groupCreated:
        let (peers, bootstrapVoters) = try decodeGroupCreated(record.payload, group: id)
        groups[id]!.peers = peers
        groups[id]!.bootstrapVoters = bootstrapVoters
      case .groupDeleted:
        groups[id] = nil
      case .hardState:
        guard (record.payload.count == 9 || record.payload.count == 25), record.payload[0] == version else {
          throw ConsensusError.storage("group \(id): hard state record of \(record.payload.count) bytes is malformed")
        }
        groups[id]!.hardState = HardState(term: record.term, vote: readU64(record.payload, at: 1), commit: record.index)
        if record.payload.count == 25 {
          // A received snapshot replaced the whole log here.
          groups[id]!.entries = []
          groups[id]!.base = readU64(record.payload, at: 9)
        }
      case .entry:
        guard let first = record.payload.first, let kind = EntryKind(rawValue: first) else {
          throw ConsensusError.storage("group \(id): entry \(record.index) has no valid kind byte")
        }
        let entry = Entry(term: record.term, index: record.index, kind: kind, data: Array(record.payload.dropFirst()))
        if entry.kind == .configChange {
          for peer in try contextPeers(of: entry, group: id) { groups[id]!.contextPeers.append((entry.index, peer)) }
        }
        try append(entry, to: &groups[id]!, group: id)
      }
    }
    for id in groups.keys.sorted() where groups[id]!.peers == nil {
      throw ConsensusError.storage("group \(id) has records in the log but no creation record")
    }
    let snapshotted = try wal.snapshotGroups()
    for packed in snapshotted {
      guard let id = GroupID(packed: packed), groups[id] != nil else {
        try wal.deleteSnapshot(group: packed)
        continue
      }
      guard let file = try wal.loadSnapshot(group: packed) else { continue }
      let (config, data) = try decodeSnapshot(file.data, group: id)
      groups[id]!.snapshot = Snapshot(index: file.index, term: file.term, config: config, data: data)
    }
    for id in Array(groups.keys) { try trim(&groups[id]!, group: id) }
    return groups
  }

  /// Replays one entry record: a write of an index overwrites it and everything after it.
  private static func append(_ entry: Entry, to group: inout RecoveredGroup, group id: GroupID) throws {
    guard entry.index >= 1 else { throw ConsensusError.storage("group \(id): log entry at index 0") }
    if let base = group.base, entry.index <= base { return }  // below a received snapshot: void
    guard let first = group.entries.first?.index else {
      if let base = group.base, entry.index != base + 1 {
        throw ConsensusError.storage(
          "group \(id): log entry \(entry.index) does not follow the snapshot at \(base); entries are missing")
      }
      group.entries = [entry]
      return
    }
    let last = first + LogIndex(group.entries.count) - 1
    guard entry.index <= last + 1 else {
      throw ConsensusError.storage(
        "group \(id): log entry \(entry.index) does not follow entry \(last); entries are missing")
    }
    if entry.index < first {
      group.entries = [entry]
    } else {
      group.entries.removeSubrange(Int(entry.index - first)...)
      group.entries.append(entry)
    }
  }

  /// Keeps the entries that follow the group's snapshot (Raft paper §7), or checks they start at 1.
  private static func trim(_ group: inout RecoveredGroup, group id: GroupID) throws {
    guard let first = group.entries.first?.index else { return }
    let last = first + LogIndex(group.entries.count) - 1
    guard let snapshot = group.snapshot else {
      guard first == 1 else {
        throw ConsensusError.storage("group \(id): the log starts at entry \(first), but the group has no snapshot")
      }
      return
    }
    if first > snapshot.index + 1 {
      throw ConsensusError.storage(
        "group \(id): the log starts at entry \(first), after the snapshot at \(snapshot.index); entries are missing")
    }
    if first == snapshot.index + 1 { return }
    // Here first ≤ snapshot.index (the log starts at or before it).
    let holdsSnapshotEntry = last >= snapshot.index && group.entries[Int(snapshot.index - first)].term == snapshot.term
    if holdsSnapshotEntry {
      group.entries.removeFirst(Int(snapshot.index - first) + 1)
    } else {
      // The log ends before the snapshot, or disagrees with it at its index: the snapshot was
      // received and written, but the marker voiding the old log was not.
      group.entries = []
      if (group.base ?? 0) < snapshot.index { group.snapshotMarkerMissing = true }
    }
  }

  /// A creation record's endpoints and bootstrap voters (version 1: the peers are both).
  static func decodeGroupCreated(_ payload: [UInt8], group: GroupID) throws -> (peers: [Peer], bootstrapVoters: [ReplicaID]) {
    func malformed(_ what: String) -> ConsensusError {
      .storage("group \(group): group record is malformed: \(what)")
    }
    guard let recordVersion = payload.first, recordVersion == 1 || recordVersion == groupCreatedVersion else {
      throw malformed("version \(payload.first.map(String.init) ?? "missing"); this build reads 1 and 2")
    }
    var offset = 1
    let peers = try decodePeers(payload, offset: &offset, group: group)
    guard recordVersion == groupCreatedVersion else {
      guard offset == payload.count else { throw malformed("trailing bytes") }
      return (peers, peers.map(\.node.rawValue))
    }
    guard offset + 2 <= payload.count else { throw malformed("truncated bootstrap voters") }
    let count = Int(payload[offset]) | Int(payload[offset + 1]) << 8
    offset += 2
    guard count >= 1, count <= peersMax, offset + 8 * count == payload.count else {
      throw malformed("\(count) bootstrap voters in \(payload.count - offset) bytes")
    }
    let voters = (0..<count).map { readU64(payload, at: offset + 8 * $0) }
    guard !voters.contains(0), Set(voters).count == voters.count else { throw malformed("bootstrap voter ids") }
    return (peers, voters)
  }

  /// The endpoints a membership change's context carries (`encodePeers`, nothing after it).
  static func decodeContextPeers(_ context: [UInt8], group: GroupID) throws -> [Peer] {
    var offset = 0
    let peers = try decodePeers(context, offset: &offset, group: group)
    guard offset == context.count else {
      throw ConsensusError.storage("group \(group): a membership change's peer list has trailing bytes")
    }
    return peers
  }

  /// An `encodePeers` list at `offset`, which it moves past the list.
  static func decodePeers(_ payload: [UInt8], offset: inout Int, group: GroupID) throws -> [Peer] {
    func malformed(_ what: String) -> ConsensusError {
      .storage("group \(group): peer list is malformed: \(what)")
    }
    guard offset + 2 <= payload.count else { throw malformed("truncated length") }
    let count = Int(payload[offset]) | Int(payload[offset + 1]) << 8
    guard count <= peersMax else { throw malformed("\(count) peers") }
    offset += 2
    var peers: [Peer] = []
    for _ in 0..<count {
      guard offset + 11 <= payload.count else { throw malformed("truncated peer") }
      let node = readU64(payload, at: offset)
      let port = UInt16(payload[offset + 8]) | UInt16(payload[offset + 9]) << 8
      let hostLength = Int(payload[offset + 10])
      offset += 11
      guard node > 0, port > 0, hostLength > 0, offset + hostLength <= payload.count else { throw malformed("peer fields") }
      let host = String(decoding: payload[offset..<offset + hostLength], as: UTF8.self)
      offset += hostLength
      peers.append(Peer(node: NodeID(node), endpoint: Endpoint(host: host, port: port)))
    }
    return peers
  }

  /// The endpoints a configuration-change entry's context carries (none when it has no context).
  static func contextPeers(of entry: Entry, group id: GroupID) throws -> [Peer] {
    precondition(entry.kind == .configChange, "only membership changes carry endpoints")
    let change: ConfigChange
    do { change = try WireCodec.decodeConfigChange(entry.data) } catch {
      throw ConsensusError.storage("group \(id): the membership change at \(entry.index) does not decode: \(error)")
    }
    guard !change.context.isEmpty else { return [] }
    return try decodeContextPeers(change.context, group: id)
  }

  /// The endpoints of a recovered group: its creation record's, then those every replayed
  /// membership change carried (including changes the snapshot covers, whose entries recovery
  /// trimmed), with the snapshot's taking effect at its index; later ones win.
  static func endpoints(of group: RecoveredGroup, id: GroupID) throws -> [Peer] {
    var byNode: [NodeID: Peer] = [:]
    for peer in group.peers ?? [] { byNode[peer.node] = peer }
    let snapshotIndex = group.snapshot?.index ?? 0
    for (index, peer) in group.contextPeers where index <= snapshotIndex { byNode[peer.node] = peer }
    if let snapshot = group.snapshot {
      for peer in try decodeSnapshotPayload(snapshot.data, group: id).peers { byNode[peer.node] = peer }
    }
    for (index, peer) in group.contextPeers where index > snapshotIndex { byNode[peer.node] = peer }
    return byNode.values.sorted { $0.node < $1.node }
  }

  static func appendU64(_ bytes: inout [UInt8], _ value: UInt64) {
    for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
  }

  static func appendU32(_ bytes: inout [UInt8], _ value: UInt32) {
    for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
  }

  static func readU32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    precondition(offset + 4 <= bytes.count, "readU32 past the end")
    var value: UInt32 = 0
    for position in 0..<4 { value |= UInt32(bytes[offset + position]) << UInt32(8 * position) }
    return value
  }

  static func readU64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
    precondition(offset + 8 <= bytes.count, "readU64 past the end")
    var value: UInt64 = 0
    for position in 0..<8 { value |= UInt64(bytes[offset + position]) << UInt64(8 * position) }
    return value
  }
}
