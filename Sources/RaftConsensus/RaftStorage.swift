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
/// - `.groupCreated`: payload = version u8 (=1) · peerCount u16 · (node u64 · port u16 · hostLength u8
///   · host)*: the group's initial voters. It is restated (written again) for every live group
///   before segments are released, so after a release a group's surviving entries may come
///   BEFORE its creation record: replay attaches every record to its group whatever the order,
///   and a restatement never resets the log.
/// - `.groupDeleted`: no payload; what came before it for the group is void.
/// Within one loop turn a group's entries precede its hard state (a marker precedes both).
///
/// Snapshots live in the WAL's snapshot files, one per group: data = version u8 (=1) · config
/// (voterCount u32 · u64* · outgoingCount u32 · u64* · learnerCount u32 · u64*) · the state
/// machine's bytes. On recovery the entries after the snapshot are kept when the log holds the
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

  static func groupCreatedRecord(group: GroupID, peers: [Peer]) -> WALRecord {
    precondition(peers.count <= peersMax, "too many peers")
    var payload: [UInt8] = [version]
    payload.append(UInt8(truncatingIfNeeded: peers.count))
    payload.append(UInt8(truncatingIfNeeded: peers.count >> 8))
    for peer in peers {
      let host = Array(peer.endpoint.host.utf8)
      precondition(host.count <= 255, "Endpoint limits hosts to 255 bytes")
      appendU64(&payload, peer.node.rawValue)
      payload.append(UInt8(truncatingIfNeeded: peer.endpoint.port))
      payload.append(UInt8(truncatingIfNeeded: peer.endpoint.port >> 8))
      payload.append(UInt8(host.count))
      payload.append(contentsOf: host)
    }
    return WALRecord(kind: .groupCreated, group: group.packed, index: 0, term: 0, payload: payload)
  }

  static func groupDeletedRecord(group: GroupID) -> WALRecord {
    WALRecord(kind: .groupDeleted, group: group.packed, index: 0, term: 0)
  }

  static let snapshotVersion: UInt8 = 1

  static func encodeSnapshot(config: ConfigState, data: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = [snapshotVersion]
    for list in [config.voters, config.votersOutgoing, config.learners] {
      appendU32(&bytes, UInt32(list.count))
      for replica in list { appendU64(&bytes, replica) }
    }
    bytes.append(contentsOf: data)
    return bytes
  }

  static func decodeSnapshot(_ bytes: [UInt8], group: GroupID) throws -> (ConfigState, [UInt8]) {
    func malformed(_ what: String) -> ConsensusError { .storage("group \(group): snapshot is malformed: \(what)") }
    guard bytes.first == snapshotVersion else { throw malformed("version") }
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
    return (ConfigState(voters: lists[0], votersOutgoing: lists[1], learners: lists[2]), Array(bytes[offset...]))
  }

  /// A live group as the log describes it.
  struct RecoveredGroup {
    /// Nil until the group's creation record is replayed: after a segment release, the surviving
    /// entries of a group may come before its restated creation record.
    var peers: [Peer]?
    var hardState = HardState()
    /// Contiguous, ascending; they may start after 1 once segments were released.
    var entries: [Entry] = []
    /// Set by a snapshot marker: the index the (received) snapshot ended at; entries follow it.
    var base: LogIndex? = nil
    var snapshot: Snapshot? = nil
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
        groups[id]!.peers = try decodePeers(record.payload, group: id)
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
        try append(entry, to: &groups[id]!, group: id)
      }
    }
    for (id, group) in groups where group.peers == nil {
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
    if last <= snapshot.index {
      group.entries = []
    } else if first == snapshot.index + 1 {
      return
    } else if group.entries[Int(snapshot.index - first)].term == snapshot.term {
      group.entries.removeFirst(Int(snapshot.index - first) + 1)
    } else {
      // The snapshot was received and written, but the marker voiding the old log was not.
      group.entries = []
    }
  }

  static func decodePeers(_ payload: [UInt8], group: GroupID) throws -> [Peer] {
    func malformed(_ what: String) -> ConsensusError {
      .storage("group \(group): group record is malformed: \(what)")
    }
    guard payload.count >= 3, payload[0] == version else { throw malformed("version or length") }
    let count = Int(payload[1]) | Int(payload[2]) << 8
    guard count <= peersMax else { throw malformed("\(count) peers") }
    var offset = 3
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
    guard offset == payload.count else { throw malformed("trailing bytes") }
    return peers
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
