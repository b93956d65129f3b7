import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// Snapshots of local state machines and the release of the WAL segments they cover.

extension RaftConsensus {
  // MARK: Snapshots and log release

  /// Snapshots the groups that asked for it or passed `snapshotEntriesThreshold`, then releases
  /// the WAL segments all snapshots cover. When the WAL holds more than `walSegmentsSoftMax`
  /// segments, every group with applied entries beyond its snapshot is snapshotted too: one quiet
  /// group would otherwise pin every segment since its last snapshot. Such a forced round runs
  /// again only after the count grew by another quarter of the limit, so a group that cannot
  /// compact (nothing applied) costs a bounded amount of work. Throws only when the WAL failed.
  func snapshotDueGroups(_ visited: [RaftGroup], _ wal: WriteAheadLog, releasing received: Int) throws {
    var written = received
    var answers: [@Sendable () -> Void] = []
    let segments = wal.statistics.segments
    if forcedSnapshotQueue == nil && segments > options.walSegmentsSoftMax
      && segments >= segmentsAfterForcedSnapshots + max(1, options.walSegmentsSoftMax / 4)
    {
      // A forced round: every group, `forcedSnapshotsPerTurnMax` per turn. All at once, ten
      // thousand groups meant ten thousand snapshot files and fsyncs in one turn: seconds during
      // which no write was answered.
      forcedSnapshotQueue = live.ordered.map(\.id)[...]
      forcedRoundStartSegments = segments
    }
    // A group the turn did not visit applied nothing and was asked for no snapshot.
    for replica in visited {
      // `firstIndex - 1` is the snapshot's index; reading the snapshot itself would copy it.
      let (applied, snapshotIndex) = replica.inspect { ($0.applied, $0.firstIndex - 1) }
      let automatic =
        applied - snapshotIndex >= options.snapshotEntriesThreshold && applied >= replica.nextSnapshotAttemptIndex
      guard automatic || !replica.pending.snapshotRequests.isEmpty else { continue }
      if take(replica, applied: applied, wal, &answers) { written += 1 }
    }
    var roundFinished = false
    if var queue = forcedSnapshotQueue {
      var budget = options.forcedSnapshotsPerTurnMax
      while budget > 0, let id = queue.popFirst() {
        guard let replica = live[id] else { continue }  // deleted since the round began
        let (applied, snapshotIndex) = replica.inspect { ($0.applied, $0.firstIndex - 1) }
        guard applied > snapshotIndex else { continue }
        budget -= 1
        if take(replica, applied: applied, wal, &answers) { written += 1 }
      }
      roundFinished = queue.isEmpty
      forcedSnapshotQueue = roundFinished ? nil : queue
    }
    if written > 0 || roundFinished { try releaseLog(wal) }
    if roundFinished {
      segmentsAfterForcedSnapshots = wal.statistics.segments
      logger.notice(
        "snapshotted every group to release log segments",
        metadata: ["segmentsBefore": "\(forcedRoundStartSegments)", "segmentsAfter": "\(segmentsAfterForcedSnapshots)"])
    }
    for answer in answers { answer() }
  }

  /// Snapshots one group (answering its snapshot requests); says whether a file was written.
  private func take(_ replica: RaftGroup, applied: LogIndex, _ wal: WriteAheadLog, _ answers: inout [@Sendable () -> Void])
    -> Bool
  {
    let requests = replica.pending.snapshotRequests
    replica.pending.snapshotRequests = []
    let (outcome, wrote) = snapshot(replica, wal)
    if !wrote {
      // Nothing to compact (just after a restart the membership may run ahead of the applied
      // index) or the write failed: try again after another tenth of the threshold.
      replica.nextSnapshotAttemptIndex = applied + max(1, options.snapshotEntriesThreshold / 10)
      if case .failure(let error) = outcome {
        logger.warning("snapshot failed", metadata: ["group": "\(replica.id)", "error": "\(error)"])
      }
    }
    for completion in requests { answers.append { completion(outcome) } }
    return wrote
  }

  /// The endpoints a snapshot or a restated creation record keeps: the members' and this node's.
  /// Those of removed members are dropped, so what a group ever knew cannot outgrow
  /// `RaftStorage.peersMax` over many membership changes.
  func endpointsToKeep(_ replica: RaftGroup) -> [Peer] {
    let keep = Set(replica.inspect { $0.membership.allReplicas }).union([localPeer.node.rawValue])
    return replica.knownPeers().filter { keep.contains($0.node.rawValue) }
  }

  /// Captures, compacts and writes one group's snapshot; with nothing new to capture, answers
  /// the latest snapshot. `SnapshotInfo.bytes` is the payload's size: what the file holds and a
  /// leader sends, the endpoints included.
  func snapshot(_ replica: RaftGroup, _ wal: WriteAheadLog) -> (Result<SnapshotInfo, ConsensusError>, wrote: Bool) {
    // The endpoints go with the state: the changes that carried them are compacted away here.
    let peers = endpointsToKeep(replica)
    let machine: [UInt8] = replica.lock.withLock {
      precondition(replica.appliedIndex == replica.raft.applied, "group \(replica.id): state machine lags the core")
      return replica.stateMachine.takeSnapshot()
    }
    let data = RaftStorage.encodeSnapshotPayload(peers: peers, machine: machine)
    guard let snapshot = replica.raft.compact(data: data) else {
      guard let latest = replica.raft.latestSnapshot else {
        return (.failure(.invalidRequest("group \(replica.id) has applied nothing yet to snapshot")), false)
      }
      return (.success(SnapshotInfo(index: latest.index, term: latest.term, bytes: UInt64(latest.data.count))), false)
    }
    do {
      try wal.writeSnapshot(
        WALSnapshot(
          group: replica.id.packed, index: snapshot.index, term: snapshot.term,
          data: RaftStorage.encodeSnapshot(config: snapshot.config, data: snapshot.data)),
        partway: Failpoints.snapshotSave)
    } catch {
      // The log in memory is compacted, the WAL still holds the entries: nothing is lost, and
      // nothing is released until a snapshot file covers them. The file is written aside and
      // renamed, so a full disk changed nothing: the caller may retry once there is room.
      let refused: ConsensusError =
        error.isOutOfSpace
        ? .outOfSpace(directory: directory, retryAfterMs: UInt32(options.outOfSpaceRetryMs)) : .storage("\(error)")
      return (.failure(refused), false)
    }
    replica.durableSnapshotIndex = snapshot.index
    replica.refreshView()
    state.withLock { metrics.snapshotsTaken += 1 }
    logger.info(
      "snapshot taken", metadata: ["group": "\(replica.id)", "index": "\(snapshot.index)", "bytes": "\(data.count)"])
    return (.success(SnapshotInfo(index: snapshot.index, term: snapshot.term, bytes: UInt64(data.count))), true)
  }

  /// Restates every live group's creation record and hard state in the current segment (release
  /// deletes every record kind of a released segment), syncs, and releases what snapshots cover.
  func releaseLog(_ wal: WriteAheadLog) throws {
    var covered: [UInt64: UInt64] = [:]
    covered.reserveCapacity(live.count)
    for replica in live.ordered { covered[replica.id.packed] = replica.durableSnapshotIndex }
    // The restatement is two records per group: at thousands of groups, not worth writing for a
    // snapshot that releases nothing yet.
    guard wal.releasableSegmentCount(coveredIndex: covered, before: wal.currentSegmentSequence) > 0 else {
      let statistics = wal.statistics
      state.withLock { metrics.wal = statistics }
      return
    }
    var records: [WALRecord] = []
    records.reserveCapacity(2 * live.count)
    for replica in live.ordered {
      records.append(
        RaftStorage.groupCreatedRecord(group: replica.id, peers: endpointsToKeep(replica), bootstrapVoters: replica.bootstrapVoters))
      records.append(RaftStorage.hardStateRecord(group: replica.id, replica.inspect { $0.hardState }))
    }
    // The restatement may roll into a new segment: the one it starts in stays.
    let restatedFrom = wal.currentSegmentSequence
    if !records.isEmpty {
      try wal.append(records)
      try wal.sync()
    }
    let released = try wal.releaseSegments(coveredIndex: covered, before: restatedFrom)
    if released > 0 { logger.info("log segments released", metadata: ["segments": "\(released)"]) }
    let statistics = wal.statistics
    state.withLock { metrics.wal = statistics }
  }

}
