import XCTest

@testable import RaftCore

/// The small pieces on their own: inflight window, progress states, quorum arithmetic, the log.
final class InflightsTests: XCTestCase {
  func testFullByCountAndByBytes() {
    var window = Inflights(maxMessages: 3, maxBytes: 100)
    window.add(lastIndex: 1, bytes: 10)
    window.add(lastIndex: 2, bytes: 10)
    XCTAssertFalse(window.isFull)
    window.add(lastIndex: 3, bytes: 10)
    XCTAssertTrue(window.isFull, "three messages")
    window.free(through: 2)
    XCTAssertEqual(window.count, 1)
    XCTAssertEqual(window.bytes, 10)
    window.add(lastIndex: 4, bytes: 95)
    XCTAssertTrue(window.isFull, "105 bytes ≥ 100")
    window.free(through: 10)
    XCTAssertEqual(window.count, 0)
    XCTAssertEqual(window.bytes, 0)
  }

  func testManyAddsAndFreesStayBounded() {
    var window = Inflights(maxMessages: 4, maxBytes: 1 << 20)
    for index in 1...10_000 as ClosedRange<LogIndex> {
      if window.isFull { window.free(through: index - 2) }
      window.add(lastIndex: index, bytes: 1)
    }
    XCTAssertLessThanOrEqual(window.count, 4)
  }
}

final class ProgressTests: XCTestCase {
  func makeProgress() -> ReplicaProgress { ReplicaProgress(next: 5, maxInflightMessages: 2, maxInflightBytes: 1000, isLearner: false) }

  /// Raft paper §5.3: nextIndex backs off on rejection, matchIndex advances on success.
  func testProbeBacksOffAndUpdates_Section5_3() {
    var progress = makeProgress()
    progress.probeSent = true
    XCTAssertTrue(progress.isPaused)
    XCTAssertFalse(progress.maybeDecrease(rejected: 2, matchHint: 1), "stale rejection of an older probe")
    XCTAssertTrue(progress.maybeDecrease(rejected: 4, matchHint: 1))
    XCTAssertEqual(progress.next, 2)
    XCTAssertFalse(progress.isPaused)
    XCTAssertTrue(progress.maybeUpdate(3))
    XCTAssertEqual(progress.match, 3)
    XCTAssertEqual(progress.next, 4)
    XCTAssertFalse(progress.maybeUpdate(2), "old acknowledgements change nothing")
  }

  func testReplicateRejectionFallsBackToMatch() {
    var progress = makeProgress()
    _ = progress.maybeUpdate(4)
    progress.becomeReplicate()
    progress.next = 9
    XCTAssertFalse(progress.maybeDecrease(rejected: 3, matchHint: 0), "at or below match: stale")
    XCTAssertTrue(progress.maybeDecrease(rejected: 8, matchHint: 0))
    XCTAssertEqual(progress.next, 5)
  }

  func testSnapshotStatePausesAndResumesAfterSnapshot_Section7() {
    var progress = makeProgress()
    progress.becomeSnapshot(20)
    XCTAssertTrue(progress.isPaused)
    progress.becomeProbe()
    XCTAssertEqual(progress.next, 21, "probing resumes after the snapshot")
  }
}

final class QuorumTests: XCTestCase {
  func testMajorityCommittedIndex_Section5_3() {
    let quorum = Quorum(ConfigState(voters: [1, 2, 3, 4, 5]))
    let acked: [ReplicaID: LogIndex] = [1: 9, 2: 7, 3: 5, 4: 3, 5: 1]
    XCTAssertEqual(quorum.committedIndex { acked[$0]! }, 5)
  }

  func testVoteResults_Section5_2() {
    let quorum = Quorum(ConfigState(voters: [1, 2, 3]))
    XCTAssertEqual(quorum.voteResult([1: true]), .pending)
    XCTAssertEqual(quorum.voteResult([1: true, 2: true]), .won)
    XCTAssertEqual(quorum.voteResult([1: true, 2: false, 3: false]), .lost)
    XCTAssertEqual(quorum.voteResult([1: true, 4: true]), .pending, "non-voters do not count")
  }

  /// Thesis §4.3: joint elections need both majorities.
  func testJointVoteNeedsBothMajorities_Thesis4_3() {
    let quorum = Quorum(ConfigState(voters: [4, 5, 6], votersOutgoing: [1, 2, 3]))
    XCTAssertEqual(quorum.voteResult([1: true, 2: true, 3: true]), .pending)
    XCTAssertEqual(quorum.voteResult([1: true, 2: true, 4: true, 5: true]), .won)
    XCTAssertEqual(quorum.voteResult([1: false, 2: false, 4: true, 5: true]), .lost)
  }
}

final class RaftLogTests: XCTestCase {
  func testAppendTruncatesConflictsAndMarksUnstable_Section5_3() {
    var log = RaftLog(snapshot: nil, entries: entries([1, 1, 2]), commit: 1)
    XCTAssertEqual(log.unstableEntries, [])
    log.append([Entry(term: 3, index: 3), Entry(term: 3, index: 4)])
    XCTAssertEqual(log.lastIndex, 4)
    XCTAssertEqual(log.stableIndex, 2)
    XCTAssertEqual(log.unstableEntries.map(\.index), [3, 4])
  }

  func testFindConflictByTerm_Thesis3_5() {
    let log = RaftLog(snapshot: nil, entries: entries([1, 1, 2, 2, 4, 4]), commit: 0)
    XCTAssertEqual(log.findConflictByTerm(6, 3), 4, "last index with term ≤ 3")
    XCTAssertEqual(log.findConflictByTerm(6, 1), 2)
    XCTAssertEqual(log.findConflictByTerm(6, 0), 0)
    XCTAssertEqual(log.findConflictByTerm(10, 9), 6, "clamped to the last index")
  }

  func testEntriesRespectByteLimitButSendAtLeastOne() {
    let log = RaftLog(snapshot: nil, entries: entries([1, 1, 1, 1]), commit: 0)
    XCTAssertEqual(log.entries(from: 1, maxBytes: 1)?.count, 1)
    XCTAssertEqual(log.entries(from: 1, maxBytes: 2 * (Entry.headerBytes + 1))?.count, 2)
    XCTAssertEqual(log.entries(from: 5, maxBytes: 100)?.count, 0)
  }

  func testCompactionKeepsTermOfSnapshotIndex_Section7() {
    var log = RaftLog(snapshot: nil, entries: entries([1, 2, 3, 3]), commit: 3)
    log.markApplied(3)
    log.compact(Snapshot(index: 2, term: 2, config: ConfigState(voters: [1]), data: []))
    XCTAssertEqual(log.firstIndex, 3)
    XCTAssertEqual(log.term(at: 2), 2, "the snapshot's own index keeps its term")
    XCTAssertNil(log.term(at: 1))
    XCTAssertNil(log.entries(from: 2, maxBytes: 100), "compacted entries must come from the snapshot")
  }

  /// The log's byte count (the group status's `logBytes`) follows every change of its entries:
  /// restore from storage, append, truncation of a conflicting suffix, compaction, a snapshot.
  func testEntriesBytesFollowAppendTruncationCompactionAndRestore() {
    func sized(_ term: Term, _ index: LogIndex, _ bytes: Int) -> Entry {
      Entry(term: term, index: index, data: [UInt8](repeating: 7, count: bytes))
    }
    func recount(_ log: RaftLog) -> Int { log.entries.reduce(0) { $0 + $1.sizeBytes } }
    var log = RaftLog(snapshot: nil, entries: [sized(1, 1, 10), sized(1, 2, 20), sized(1, 3, 30)], commit: 1)
    XCTAssertEqual(log.entriesBytes, 60 + 3 * Entry.headerBytes)
    log.append([sized(2, 3, 5), sized(2, 4, 6)])  // replaces entry 3
    XCTAssertEqual(log.entriesBytes, recount(log))
    XCTAssertEqual(log.entriesBytes, 10 + 20 + 5 + 6 + 4 * Entry.headerBytes)
    log.commit(to: 3)
    log.markApplied(3)
    log.compact(Snapshot(index: 2, term: 1, config: ConfigState(voters: [1]), data: []))
    XCTAssertEqual(log.entriesBytes, 5 + 6 + 2 * Entry.headerBytes)
    XCTAssertEqual(log.entriesBytes, recount(log))
    log.restore(Snapshot(index: 9, term: 3, config: ConfigState(voters: [1]), data: []))
    XCTAssertEqual(log.entriesBytes, 0)
  }

  func testUpToDateComparesTermThenIndex_Section5_4_1() {
    let log = RaftLog(snapshot: nil, entries: entries([1, 2, 2]), commit: 0)
    XCTAssertTrue(log.isUpToDate(lastIndex: 1, lastTerm: 3))
    XCTAssertTrue(log.isUpToDate(lastIndex: 3, lastTerm: 2))
    XCTAssertFalse(log.isUpToDate(lastIndex: 2, lastTerm: 2))
    XCTAssertFalse(log.isUpToDate(lastIndex: 9, lastTerm: 1))
  }
}
