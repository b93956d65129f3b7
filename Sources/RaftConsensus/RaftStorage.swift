import Consensus
import RaftCore
import WriteAheadLog

/// How the host stores Raft state in the node's shared write-ahead log, and how it reads it back.
///
/// Records (all integers little-endian):
/// - `.entry`: `index`, `term` = the entry's; payload = kind u8 (`EntryKind`) · data.
/// - `.hardState`: `index` = commit, `term` = term; payload = version u8 (=1) · vote u64.
/// - `.groupCreated`: payload = version u8 (=1) · peerCount u16 · (node u64 · port u16 · hostLength u8
///   · host)*: the group's initial voters. A `.groupCreated` for a group already live restates it
///   (written again before segments are released) and does not reset its log.
/// - `.groupDeleted`: no payload; what came before it for the group is void.
/// Within one loop turn a group's entries precede its hard state, so a torn tail never keeps a
/// commit index beyond the entries it covers.
///
/// Not yet: snapshots (no compaction in this increment, so no segment is ever released and the
/// log holds every group's whole history).
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

  static func hardStateRecord(group: GroupID, _ hardState: HardState) -> WALRecord {
    var payload: [UInt8] = [version]
    appendU64(&payload, hardState.vote)
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

  /// A live group as the log describes it.
  struct RecoveredGroup {
    var peers: [Peer]
    var hardState = HardState()
    /// entries[i].index == i + 1 (no snapshots yet).
    var entries: [Entry] = []
  }

  /// Replays the whole log into the live groups' persisted Raft state.
  static func recover(_ wal: WriteAheadLog) throws -> [GroupID: RecoveredGroup] {
    var groups: [GroupID: RecoveredGroup] = [:]
    try wal.replay { record in
      guard let id = GroupID(packed: record.group) else {
        throw ConsensusError.storage("the log names an unknown group \(record.group)")
      }
      switch record.kind {
      case .groupCreated:
        let peers = try decodePeers(record.payload, group: id)
        if groups[id] != nil { groups[id]!.peers = peers } else { groups[id] = RecoveredGroup(peers: peers) }
      case .groupDeleted:
        groups[id] = nil
      case .hardState:
        guard groups[id] != nil else { return }
        guard record.payload.count == 9, record.payload[0] == version else {
          throw ConsensusError.storage("group \(id): hard state record of \(record.payload.count) bytes is malformed")
        }
        groups[id]!.hardState = HardState(term: record.term, vote: readU64(record.payload, at: 1), commit: record.index)
      case .entry:
        guard groups[id] != nil else { return }
        guard let first = record.payload.first, let kind = EntryKind(rawValue: first) else {
          throw ConsensusError.storage("group \(id): entry \(record.index) has no valid kind byte")
        }
        let count = UInt64(groups[id]!.entries.count)
        guard record.index >= 1, record.index <= count + 1 else {
          throw ConsensusError.storage(
            "group \(id): log entry \(record.index) does not follow the \(count) entries before it; entries are missing")
        }
        // A later write of an index overwrites it and everything after it (a conflicting suffix).
        groups[id]!.entries.removeSubrange(Int(record.index - 1)...)
        groups[id]!.entries.append(
          Entry(term: record.term, index: record.index, kind: kind, data: Array(record.payload.dropFirst())))
      }
    }
    for (id, group) in groups {
      let last = UInt64(group.entries.count)
      guard group.hardState.commit <= last else {
        throw ConsensusError.storage("group \(id): commit index \(group.hardState.commit) is beyond the last entry \(last)")
      }
      if let lastEntry = group.entries.last, lastEntry.term > group.hardState.term {
        // Entries are only ever written in or below the current term.
        throw ConsensusError.storage("group \(id): entry term \(lastEntry.term) is beyond the hard state's \(group.hardState.term)")
      }
    }
    return groups
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

  static func readU64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
    precondition(offset + 8 <= bytes.count, "readU64 past the end")
    var value: UInt64 = 0
    for position in 0..<8 { value |= UInt64(bytes[offset + position]) << UInt64(8 * position) }
    return value
  }
}
