import Consensus
import Foundation
import RaftCore
import WriteAheadLog
import XCTest

@testable import RaftConsensus

/// Replays hand-written logs through `RaftStorage.recover`: the rules for overwritten suffixes,
/// received-snapshot markers, snapshots and deleted or restated groups.
final class RaftStorageTests: XCTestCase {
  private let group = GroupID(.dataRegion, 3)
  private let peers = (1...3).map { Peer(node: NodeID(UInt64($0)), endpoint: Endpoint(host: "10.0.0.\($0)", port: 9000)) }
  private var directory = ""

  override func setUp() { directory = NSTemporaryDirectory() + "caucus-raft-storage-\(UUID().uuidString.prefix(8))" }
  override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

  private func entry(_ index: LogIndex, _ term: Term, _ text: String = "") -> WALRecord {
    RaftStorage.entryRecord(group: group, Entry(term: term, index: index, data: Array(text.utf8)))
  }

  /// A group created over `peers` (they are its bootstrap voters).
  private func created(_ id: GroupID) -> WALRecord {
    RaftStorage.groupCreatedRecord(group: id, peers: peers, bootstrapVoters: peers.map(\.node.rawValue))
  }

  /// A snapshot payload without endpoints: the core's `Snapshot.data` as this host writes it.
  private func payload(_ machine: [UInt8]) -> [UInt8] { RaftStorage.encodeSnapshotPayload(peers: [], machine: machine) }

  private func recover(_ records: [WALRecord], snapshot: Snapshot? = nil) throws -> [GroupID: RaftStorage.RecoveredGroup] {
    do {
      let wal = try WriteAheadLog(directory: directory)
      try wal.append(records)
      try wal.sync()
      if let snapshot {
        try wal.writeSnapshot(
          WALSnapshot(
            group: group.packed, index: snapshot.index, term: snapshot.term,
            data: RaftStorage.encodeSnapshot(config: snapshot.config, data: snapshot.data)))
      }
      try wal.close()
    }
    let wal = try WriteAheadLog(directory: directory)
    defer { try? wal.close() }
    return try RaftStorage.recover(wal)
  }

  func testPeersHardStateAndEntriesComeBack() throws {
    let recovered = try recover([
      created(group), entry(1, 1, "a"), entry(2, 1, "b"),
      RaftStorage.hardStateRecord(group: group, HardState(term: 1, vote: 2, commit: 2)),
    ])
    let replica = try XCTUnwrap(recovered[group])
    XCTAssertEqual(replica.peers, peers)
    XCTAssertEqual(replica.hardState, HardState(term: 1, vote: 2, commit: 2))
    XCTAssertEqual(replica.entries.map(\.index), [1, 2])
    XCTAssertEqual(replica.entries.map { String(decoding: $0.data, as: UTF8.self) }, ["a", "b"])
  }

  /// Regression: after a segment release the surviving entries of a group came before its
  /// restated creation record, and recovery dropped them ("entries are missing").
  func testEntriesBeforeARestatedCreationRecordBelongToTheGroup() throws {
    let recovered = try recover(
      [
        entry(189, 1), created(group),
        RaftStorage.hardStateRecord(group: group, HardState(term: 1, vote: 1, commit: 189)), entry(190, 1),
      ], snapshot: Snapshot(index: 188, term: 1, config: ConfigState(voters: [1, 2, 3]), data: payload([])))
    XCTAssertEqual(recovered[group]?.entries.map(\.index), [189, 190])
    XCTAssertEqual(recovered[group]?.peers, peers)
  }

  func testRecordsOfAGroupWithoutACreationRecordRefuseToStart() throws {
    XCTAssertThrowsError(try recover([entry(1, 1)]))
  }

  func testALaterWriteOfAnIndexOverwritesItAndEverythingAfterIt() throws {
    let recovered = try recover([
      created(group), entry(1, 1), entry(2, 1), entry(3, 1), entry(2, 2),
    ])
    XCTAssertEqual(recovered[group]?.entries.map(\.term), [1, 2])
  }

  func testAGapInTheLogRefusesToStart() throws {
    XCTAssertThrowsError(
      try recover([created(group), entry(1, 1), entry(3, 1)]))
  }

  func testDeletedGroupsAreGoneAndRestatedGroupsKeepTheirLog() throws {
    let other = GroupID(.schemaRegion, 1)
    let recovered = try recover([
      created(group), entry(1, 1), entry(2, 1),
      created(other),
      RaftStorage.groupDeletedRecord(group: other),
      // Restated before a segment release: the log must survive it.
      created(group), entry(3, 1),
    ])
    XCTAssertEqual(Array(recovered.keys), [group])
    XCTAssertEqual(recovered[group]?.entries.map(\.index), [1, 2, 3])
  }

  func testASnapshotMarkerVoidsTheLogItReplaced() throws {
    let snapshot = Snapshot(index: 10, term: 3, config: ConfigState(voters: [1, 2, 3]), data: payload([7]))
    let recovered = try recover(
      [
        created(group), entry(1, 1), entry(2, 1), entry(3, 1),
        RaftStorage.hardStateRecord(group: group, HardState(term: 3, vote: 0, commit: 10), snapshotMarker: (10, 3)),
        entry(11, 3), entry(12, 3),
      ], snapshot: snapshot)
    let replica = try XCTUnwrap(recovered[group])
    XCTAssertEqual(replica.snapshot, snapshot)
    XCTAssertEqual(replica.entries.map(\.index), [11, 12])
  }

  func testEntriesAfterASnapshotAreKeptOnlyWhenTheLogHoldsItsLastEntry() throws {
    let snapshot = Snapshot(index: 2, term: 1, config: ConfigState(voters: [1, 2, 3]), data: payload([]))
    let kept = try recover(
      [created(group), entry(1, 1), entry(2, 1), entry(3, 1)],
      snapshot: snapshot)
    XCTAssertEqual(kept[group]?.entries.map(\.index), [3])
    try FileManager.default.removeItem(atPath: directory)
    // Written snapshot, crash before its marker: the old log's entry 2 has another term.
    let replaced = try recover(
      [created(group), entry(1, 1), entry(2, 2), entry(3, 2)],
      snapshot: Snapshot(index: 2, term: 3, config: ConfigState(voters: [1, 2, 3]), data: payload([])))
    XCTAssertEqual(replaced[group]?.entries.map(\.index), [])
  }

  /// Found by the cluster simulator (seed 290): a received snapshot's file was written, the node
  /// lost power before the marker; recovery used the snapshot, the node appended the next entry,
  /// and the next recovery read that entry right after the old log's end: a gap. The marker the
  /// first recovery asks for keeps the log readable.
  func testASnapshotWhoseMarkerWasLostAsksForItAndTheLogStaysReadable() throws {
    let snapshot = Snapshot(index: 19, term: 4, config: ConfigState(voters: [1, 2, 3]), data: payload([1]))
    let first = try recover([created(group), entry(17, 2), entry(18, 3)], snapshot: snapshot)
    var replica = try XCTUnwrap(first[group])
    XCTAssertEqual(replica.entries, [])
    XCTAssertTrue(replica.snapshotMarkerMissing)
    // What the host writes at that start, then the entry it appends later.
    let marker = RaftStorage.snapshotMarkerRecord(group: group, replica)
    try FileManager.default.removeItem(atPath: directory)
    let second = try recover([created(group), entry(17, 2), entry(18, 3), marker, entry(20, 5)], snapshot: snapshot)
    replica = try XCTUnwrap(second[group])
    XCTAssertEqual(replica.entries.map(\.index), [20])
    XCTAssertFalse(replica.snapshotMarkerMissing)
    // Without the marker the gap refuses to start.
    try FileManager.default.removeItem(atPath: directory)
    XCTAssertThrowsError(try recover([created(group), entry(17, 2), entry(18, 3), entry(20, 5)], snapshot: snapshot))
  }

  /// The same with an old entry at the snapshot's index in another term: without the marker, the
  /// next recovery would drop the new entries after it.
  func testAStaleEntryAtTheSnapshotsIndexAsksForTheMarker() throws {
    let snapshot = Snapshot(index: 2, term: 3, config: ConfigState(voters: [1, 2, 3]), data: payload([]))
    let first = try recover([created(group), entry(1, 1), entry(2, 2)], snapshot: snapshot)
    let replica = try XCTUnwrap(first[group])
    XCTAssertTrue(replica.snapshotMarkerMissing)
    let marker = RaftStorage.snapshotMarkerRecord(group: group, replica)
    try FileManager.default.removeItem(atPath: directory)
    let second = try recover([created(group), entry(1, 1), entry(2, 2), marker, entry(3, 3)], snapshot: snapshot)
    XCTAssertEqual(second[group]?.entries.map(\.index), [3])
  }

  func testSnapshotFilesOfGroupsThatAreNotLiveAreRemoved() throws {
    let recovered = try recover(
      [created(group), RaftStorage.groupDeletedRecord(group: group)],
      snapshot: Snapshot(index: 5, term: 1, config: ConfigState(voters: [1]), data: []))
    XCTAssertTrue(recovered.isEmpty)
    let wal = try WriteAheadLog(directory: directory)
    defer { try? wal.close() }
    XCTAssertEqual(try wal.snapshotGroups(), [])
  }

  /// Version 2 keeps the bootstrap voters apart from the endpoints: a replica that joined an
  /// existing group knows endpoints of nodes that were never bootstrap voters.
  func testCreationRecordVersionTwoRoundTripsEndpointsAndBootstrapVoters() throws {
    let joiner = Peer(node: NodeID(4), endpoint: Endpoint(host: "10.0.0.4", port: 9000))
    let record = RaftStorage.groupCreatedRecord(group: group, peers: peers + [joiner], bootstrapVoters: [1, 2, 3])
    XCTAssertEqual(record.payload.first, 2, "version")
    XCTAssertEqual(Array(record.payload.suffix(2 + 3 * 8).prefix(2)), [3, 0], "bootstrap count, little-endian")
    let decoded = try RaftStorage.decodeGroupCreated(record.payload, group: group)
    XCTAssertEqual(decoded.peers, peers + [joiner])
    XCTAssertEqual(decoded.bootstrapVoters, [1, 2, 3])
    let recovered = try XCTUnwrap(try recover([record, entry(1, 1)])[group])
    XCTAssertEqual(recovered.peers, peers + [joiner])
    XCTAssertEqual(recovered.bootstrapVoters, [1, 2, 3])
    for length in 0..<record.payload.count {
      XCTAssertThrowsError(try RaftStorage.decodeGroupCreated(Array(record.payload[0..<length]), group: group), "prefix \(length)")
    }
    XCTAssertThrowsError(try RaftStorage.decodeGroupCreated(record.payload + [0], group: group), "trailing byte")
  }

  /// Version 1 (written before membership changes): its peers are the bootstrap voters.
  func testCreationRecordVersionOneStillDecodes() throws {
    var payload: [UInt8] = [1]
    payload += RaftStorage.encodePeers(peers)
    let recovered = try XCTUnwrap(
      try recover([WALRecord(kind: .groupCreated, group: group.packed, index: 0, term: 0, payload: payload), entry(1, 1)])[group])
    XCTAssertEqual(recovered.peers, peers)
    XCTAssertEqual(recovered.bootstrapVoters, [1, 2, 3])
    XCTAssertThrowsError(try RaftStorage.decodeGroupCreated([3] + Array(payload.dropFirst()), group: group), "unknown version")
  }

  /// Endpoints added by membership changes come back from the changes' context in the log, later
  /// ones winning over the creation record's.
  func testEndpointsOfMembershipChangesInTheLogAreMergedOnRecovery() throws {
    let joiner = Peer(node: NodeID(4), endpoint: Endpoint(host: "10.0.0.4", port: 9000))
    let moved = Peer(node: NodeID(2), endpoint: Endpoint(host: "10.0.0.22", port: 9001))
    func change(_ index: LogIndex, _ steps: [ConfigChangeStep], _ added: [Peer]) -> WALRecord {
      let bytes = WireCodec.encode(ConfigChange(steps, context: RaftStorage.encodePeers(added)))
      return RaftStorage.entryRecord(group: group, Entry(term: 1, index: index, kind: .configChange, data: bytes))
    }
    let versionOneChange = RaftStorage.entryRecord(
      group: group,
      Entry(term: 1, index: 4, kind: .configChange, data: [1, 1, 0, 0, 0, ConfigChangeKind.remove.rawValue, 3, 0, 0, 0, 0, 0, 0, 0]))
    let recovered = try XCTUnwrap(
      try recover([
        created(group), entry(1, 1), change(2, [.init(.addLearner, 4)], [joiner]), change(3, [.init(.addVoter, 2)], [moved]),
        versionOneChange,
      ])[group])
    XCTAssertEqual(recovered.bootstrapVoters, [1, 2, 3])
    XCTAssertEqual(try RaftStorage.endpoints(of: recovered, id: group), [peers[0], moved, peers[2], joiner])
  }

  private func change(_ index: LogIndex, _ steps: [ConfigChangeStep], _ added: [Peer]) -> WALRecord {
    let bytes = WireCodec.encode(ConfigChange(steps, context: RaftStorage.encodePeers(added)))
    return RaftStorage.entryRecord(group: group, Entry(term: 1, index: index, kind: .configChange, data: bytes))
  }

  /// A snapshot file as version 1 wrote it: the state machine's bytes right after the config.
  private func versionOneSnapshotFile(config: ConfigState, machine: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = [1]
    for list in [config.voters, config.votersOutgoing, config.learners] {
      RaftStorage.appendU32(&bytes, UInt32(list.count))
      for replica in list { RaftStorage.appendU64(&bytes, replica) }
    }
    return bytes + machine
  }

  /// Writes `records` and a raw snapshot file for the group, then recovers.
  private func recover(_ records: [WALRecord], snapshotFile: [UInt8], index: LogIndex, term: Term) throws
    -> [GroupID: RaftStorage.RecoveredGroup]
  {
    do {
      let wal = try WriteAheadLog(directory: directory)
      try wal.append(records)
      try wal.sync()
      try wal.writeSnapshot(WALSnapshot(group: group.packed, index: index, term: term, data: snapshotFile))
      try wal.close()
    }
    let wal = try WriteAheadLog(directory: directory)
    defer { try? wal.close() }
    return try RaftStorage.recover(wal)
  }

  func testSnapshotPayloadRoundTripsEndpointsAndMachineBytes() throws {
    let joiner = Peer(node: NodeID(4), endpoint: Endpoint(host: "10.0.0.4", port: 9000))
    let machine: [UInt8] = [9, 8, 7, 0, 255]
    let bytes = RaftStorage.encodeSnapshotPayload(peers: peers + [joiner], machine: machine)
    XCTAssertEqual(bytes.first, 1, "payload version")
    XCTAssertEqual(Array(bytes[1...2]), [4, 0], "peer count, little-endian")
    let decoded = try RaftStorage.decodeSnapshotPayload(bytes, group: group)
    XCTAssertEqual(decoded.peers, peers + [joiner])
    XCTAssertEqual(decoded.machine, machine)
    let empty = try RaftStorage.decodeSnapshotPayload(RaftStorage.encodeSnapshotPayload(peers: [], machine: []), group: group)
    XCTAssertEqual(empty.peers, [])
    XCTAssertEqual(empty.machine, [])
  }

  /// A payload comes from another node: every cut through its version and endpoints, and every
  /// hostile header, is an error, never a crash. (A cut inside the machine bytes is theirs to find.)
  func testSnapshotPayloadTruncatedOrHostileIsAnError() throws {
    let machine: [UInt8] = [1, 2, 3]
    let bytes = RaftStorage.encodeSnapshotPayload(peers: peers, machine: machine)
    for length in 0..<(bytes.count - machine.count) {
      XCTAssertThrowsError(try RaftStorage.decodeSnapshotPayload(Array(bytes[0..<length]), group: group), "prefix \(length)")
    }
    XCTAssertThrowsError(try RaftStorage.decodeSnapshotPayload([2] + bytes.dropFirst(), group: group), "unknown version")
    XCTAssertThrowsError(try RaftStorage.decodeSnapshotPayload([1, 0xFF, 0xFF] + machine, group: group), "peer count")
    XCTAssertThrowsError(try RaftStorage.decodeSnapshotPayload([1, 1, 0] + [UInt8](repeating: 0, count: 11), group: group), "node 0")
    var longHost = bytes
    longHost[1 + 2 + 10] = 200  // the first peer's host length runs past the end
    XCTAssertThrowsError(try RaftStorage.decodeSnapshotPayload(longHost, group: group), "host length")
    // The snapshot file checks its payload when read back.
    let file = RaftStorage.encodeSnapshot(config: ConfigState(voters: [1, 2, 3]), data: Array(bytes.prefix(5)))
    XCTAssertEqual(file.first, 2, "file version")
    XCTAssertThrowsError(try RaftStorage.decodeSnapshot(file, group: group), "truncated payload")
    XCTAssertThrowsError(try RaftStorage.decodeSnapshot([3] + file.dropFirst(), group: group), "unknown file version")
  }

  /// A snapshot file written before snapshots carried endpoints loads: its bytes are the state
  /// machine's, and the endpoints come from the creation record and the log.
  func testVersionOneSnapshotFileStillLoads() throws {
    let config = ConfigState(voters: [1, 2, 3])
    let recovered = try XCTUnwrap(
      try recover(
        [created(group), entry(1, 1), entry(2, 1), entry(3, 1)],
        snapshotFile: versionOneSnapshotFile(config: config, machine: [5, 6]), index: 2, term: 1)[group])
    let snapshot = try XCTUnwrap(recovered.snapshot)
    XCTAssertEqual(snapshot.config, config)
    XCTAssertEqual(snapshot.data, RaftStorage.encodeSnapshotPayload(peers: [], machine: [5, 6]))
    XCTAssertEqual(recovered.entries.map(\.index), [3])
    XCTAssertEqual(try RaftStorage.endpoints(of: recovered, id: group), peers)
  }

  /// Regression: recovery gathered endpoints only from the entries left after trimming those the
  /// snapshot covers, so a snapshot written (here: by a build whose snapshots carried no
  /// endpoints) without the creation record restated after it lost the members added before it.
  func testRecoveryMergesEndpointsOfChangesTheSnapshotCovers() throws {
    let joiner = Peer(node: NodeID(4), endpoint: Endpoint(host: "10.0.0.4", port: 9000))
    let recovered = try XCTUnwrap(
      try recover(
        [created(group), entry(1, 1), change(2, [.init(.addLearner, 4)], [joiner]), entry(3, 1), entry(4, 1)],
        snapshotFile: versionOneSnapshotFile(config: ConfigState(voters: [1, 2, 3], learners: [4]), machine: []),
        index: 3, term: 1)[group])
    XCTAssertEqual(recovered.entries.map(\.index), [4], "the snapshot covers the change")
    XCTAssertEqual(try RaftStorage.endpoints(of: recovered, id: group), peers + [joiner])
  }

  /// Endpoints whose changes were released with the log come back from the snapshot that covers
  /// them; the snapshot wins over changes it covers, later changes win over it.
  func testRecoveryMergesTheSnapshotsEndpoints() throws {
    let fifthBefore = Peer(node: NodeID(5), endpoint: Endpoint(host: "10.0.0.50", port: 9000))
    let fifth = Peer(node: NodeID(5), endpoint: Endpoint(host: "10.0.0.5", port: 9000))
    let movedInSnapshot = Peer(node: NodeID(3), endpoint: Endpoint(host: "10.0.0.33", port: 9000))
    let movedLater = Peer(node: NodeID(3), endpoint: Endpoint(host: "10.0.0.34", port: 9000))
    let data = RaftStorage.encodeSnapshotPayload(peers: [fifth, movedInSnapshot], machine: [1])
    let recovered = try XCTUnwrap(
      try recover(
        [
          created(group), entry(8, 1), change(9, [.init(.addVoter, 5)], [fifthBefore]), entry(10, 1), entry(11, 1),
          change(12, [.init(.addVoter, 3)], [movedLater]),
        ],
        snapshot: Snapshot(index: 10, term: 1, config: ConfigState(voters: [1, 2, 3, 5]), data: data))[group])
    XCTAssertEqual(recovered.snapshot?.data, data)
    XCTAssertEqual(try RaftStorage.endpoints(of: recovered, id: group), [peers[0], peers[1], movedLater, fifth])
  }
}
