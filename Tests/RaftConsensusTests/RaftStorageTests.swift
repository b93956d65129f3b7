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
      RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1, "a"), entry(2, 1, "b"),
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
        entry(189, 1), RaftStorage.groupCreatedRecord(group: group, peers: peers),
        RaftStorage.hardStateRecord(group: group, HardState(term: 1, vote: 1, commit: 189)), entry(190, 1),
      ], snapshot: Snapshot(index: 188, term: 1, config: ConfigState(voters: [1, 2, 3]), data: []))
    XCTAssertEqual(recovered[group]?.entries.map(\.index), [189, 190])
    XCTAssertEqual(recovered[group]?.peers, peers)
  }

  func testRecordsOfAGroupWithoutACreationRecordRefuseToStart() throws {
    XCTAssertThrowsError(try recover([entry(1, 1)]))
  }

  func testALaterWriteOfAnIndexOverwritesItAndEverythingAfterIt() throws {
    let recovered = try recover([
      RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1), entry(2, 1), entry(3, 1), entry(2, 2),
    ])
    XCTAssertEqual(recovered[group]?.entries.map(\.term), [1, 2])
  }

  func testAGapInTheLogRefusesToStart() throws {
    XCTAssertThrowsError(
      try recover([RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1), entry(3, 1)]))
  }

  func testDeletedGroupsAreGoneAndRestatedGroupsKeepTheirLog() throws {
    let other = GroupID(.schemaRegion, 1)
    let recovered = try recover([
      RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1), entry(2, 1),
      RaftStorage.groupCreatedRecord(group: other, peers: peers),
      RaftStorage.groupDeletedRecord(group: other),
      // Restated before a segment release: the log must survive it.
      RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(3, 1),
    ])
    XCTAssertEqual(Array(recovered.keys), [group])
    XCTAssertEqual(recovered[group]?.entries.map(\.index), [1, 2, 3])
  }

  func testASnapshotMarkerVoidsTheLogItReplaced() throws {
    let snapshot = Snapshot(index: 10, term: 3, config: ConfigState(voters: [1, 2, 3]), data: [7])
    let recovered = try recover(
      [
        RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1), entry(2, 1), entry(3, 1),
        RaftStorage.hardStateRecord(group: group, HardState(term: 3, vote: 0, commit: 10), snapshotMarker: (10, 3)),
        entry(11, 3), entry(12, 3),
      ], snapshot: snapshot)
    let replica = try XCTUnwrap(recovered[group])
    XCTAssertEqual(replica.snapshot, snapshot)
    XCTAssertEqual(replica.entries.map(\.index), [11, 12])
  }

  func testEntriesAfterASnapshotAreKeptOnlyWhenTheLogHoldsItsLastEntry() throws {
    let snapshot = Snapshot(index: 2, term: 1, config: ConfigState(voters: [1, 2, 3]), data: [])
    let kept = try recover(
      [RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1), entry(2, 1), entry(3, 1)],
      snapshot: snapshot)
    XCTAssertEqual(kept[group]?.entries.map(\.index), [3])
    try FileManager.default.removeItem(atPath: directory)
    // Written snapshot, crash before its marker: the old log's entry 2 has another term.
    let replaced = try recover(
      [RaftStorage.groupCreatedRecord(group: group, peers: peers), entry(1, 1), entry(2, 2), entry(3, 2)],
      snapshot: Snapshot(index: 2, term: 3, config: ConfigState(voters: [1, 2, 3]), data: []))
    XCTAssertEqual(replaced[group]?.entries.map(\.index), [])
  }

  func testSnapshotFilesOfGroupsThatAreNotLiveAreRemoved() throws {
    let recovered = try recover(
      [RaftStorage.groupCreatedRecord(group: group, peers: peers), RaftStorage.groupDeletedRecord(group: group)],
      snapshot: Snapshot(index: 5, term: 1, config: ConfigState(voters: [1]), data: []))
    XCTAssertTrue(recovered.isEmpty)
    let wal = try WriteAheadLog(directory: directory)
    defer { try? wal.close() }
    XCTAssertEqual(try wal.snapshotGroups(), [])
  }
}
