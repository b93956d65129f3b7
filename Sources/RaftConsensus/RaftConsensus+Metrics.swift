import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// The host's Prometheus metrics: node-level counters, per-node aggregates over its groups, and
// per-group gauges for a bounded number of groups.

extension RaftConsensus {
  /// The host's record of running out of space (the simulator's coverage reads it).
  package var outOfSpaceStatistics: OutOfSpaceStatistics { state.withLock { metrics.outOfSpace } }

  /// Groups this node quiesced as their leader, and quiesced followers it woke because their
  /// leader's node fell silent (the simulator's coverage reads them).
  package var quiescenceStatistics: (quiescences: UInt64, wakesLeaderLost: UInt64) {
    state.withLock { (metrics.quiescences, metrics.wakesLeaderLost) }
  }

  /// Every group's series: for an embedding program that hosts few groups.
  public func prometheusMetrics() -> String { prometheusMetrics(groupSeriesMax: .max) }

  public func prometheusMetrics(groupSeriesMax: Int) -> String {
    precondition(groupSeriesMax >= 0, "a negative number of groups cannot be shown")
    let (metrics, views) = state.withLock {
      (self.metrics, groups.map { id, replica in (id, replica.lock.withLock { (replica.view, replica.appliedIndex) }) })
    }
    var text = ""
    func counter(_ name: String, _ help: String, _ value: UInt64, type: String = "counter") {
      text += Prometheus.metric(name, help: help, value, type: type)
    }
    text += metrics.wal.prometheusText()
    text += metrics.outOfSpace.prometheusText()
    counter("caucus_raft_loop_turns_total", "Turns of the raft host loop.", metrics.loopTurns)
    counter(
      "caucus_raft_groups_quiesced", "Groups quiesced on this node (not ticking or heartbeating), as of the last tick.",
      metrics.groupsQuiesced, type: "gauge")
    counter("caucus_raft_quiescences_total", "Idle groups this node quiesced as their leader.", metrics.quiescences)
    counter(
      "caucus_raft_wakes_leader_lost_total",
      "Quiesced groups woken because their leader's node fell silent (node liveness); they elect a new leader.",
      metrics.wakesLeaderLost)
    counter(
      "caucus_raft_peer_nodes", "Nodes this node shares a group with (node liveness pings them every tick).",
      metrics.peerNodes, type: "gauge")
    counter(
      "caucus_raft_peer_nodes_dead", "Of those, nodes not heard from within raft.nodeLivenessTimeoutTicks.",
      metrics.peerNodesDead, type: "gauge")
    counter(
      "caucus_raft_wal_sync_turns_total", "Loop turns that appended to the write-ahead log and synced it once.",
      metrics.walSyncTurns)
    counter(
      "caucus_raft_groups_persisted_total", "Sum over syncing loop turns of the groups whose records that sync covered.",
      metrics.groupsPersisted)
    counter(
      "caucus_raft_groups_per_sync_max", "Most groups covered by one write-ahead log sync.", metrics.groupsPerSyncMax,
      type: "gauge")
    counter("caucus_raft_entries_persisted_total", "Raft log entries written to the write-ahead log.", metrics.entriesPersisted)
    counter("caucus_raft_batches_sent_total", "Message batches handed to the transport.", metrics.batchesSent)
    counter(
      "caucus_raft_messages_sent_total", "Raft messages in those batches (a coalesced heartbeat section counts as one).",
      metrics.messagesSent)
    counter(
      "caucus_raft_heartbeats_coalesced_total",
      "Heartbeats and heartbeat responses of single groups carried in coalesced sections (one per node pair per batch).",
      metrics.heartbeatsCoalesced)
    counter("caucus_raft_batches_received_total", "Inbound message batches queued for the loop.", metrics.batchesReceived)
    counter("caucus_raft_batches_rejected_total", "Inbound batches that failed to decode or were misaddressed.", metrics.batchesRejected)
    counter(
      "caucus_raft_batches_dropped_total", "Inbound batches dropped because the inbox was full.",
      metrics.batchesDroppedOverloaded)
    counter("caucus_writes_committed_total", "Writes committed, applied and answered.", metrics.writesCommitted)
    counter(
      "caucus_raft_forwards_sent_total", "Writes this node handed to their group's leader inside a batch.",
      metrics.forwards.sent)
    counter(
      "caucus_raft_forwards_accepted_total", "Forwarded writes of this node that the leader appended to its log.",
      metrics.forwards.accepted)
    counter(
      "caucus_raft_forwards_refused_total", "Forwarded writes of this node that the leader refused.",
      metrics.forwards.refused)
    counter(
      "caucus_raft_forwards_undelivered_total",
      "Forwarded writes of this node whose batch the transport reports never arrived; they are sent again.",
      metrics.forwards.undelivered)
    counter(
      "caucus_raft_forwards_held_total",
      "Times a forwarded write of this node waited a turn for a batch to its leader to share (an answer due from that leader).",
      metrics.forwards.held)
    counter(
      "caucus_raft_forwards_proposed_for_peers_total", "Writes other nodes forwarded to this node that it proposed.",
      metrics.forwards.proposedForPeers)
    counter(
      "caucus_raft_forwards_refused_for_peers_total", "Writes other nodes forwarded to this node that it refused.",
      metrics.forwards.refusedForPeers)
    counter("caucus_raft_snapshots_taken_total", "Snapshots taken of local state machines.", metrics.snapshotsTaken)
    counter("caucus_raft_snapshots_installed_total", "Snapshots received from leaders and installed.", metrics.snapshotsInstalled)
    counter(
      "caucus_raft_snapshot_chunks_sent_total", "Chunks of snapshots too large to send inline, sent to followers.",
      metrics.snapshotChunksSent)
    counter(
      "caucus_raft_snapshot_chunks_received_total", "Chunks of streamed snapshots received from leaders.",
      metrics.snapshotChunksReceived)
    counter("caucus_wal_segments_released_total", "Write-ahead log segments released after snapshots.", metrics.wal.segmentsReleased)
    let sorted = views.sorted { $0.0 < $1.0 }
    text += GroupAggregates(sorted.lazy.map(\.1), localReplica: localPeer.node.rawValue).prometheusText()
    text += Prometheus.groupGauges(
      [
        ("caucus_group_is_leader", "Whether this node leads the group."),
        ("caucus_group_term", "The group's current term."),
        ("caucus_group_commit_index", "The group's commit index."),
        ("caucus_group_applied_index", "The last log index applied, per group."),
      ],
      rows: sorted.map { group, published in
        let (view, applied) = published
        return (group.description, [view.role == .leader ? 1 : 0, view.term, view.commitIndex, applied])
      },
      groupsMax: groupSeriesMax)
    return text
  }
}

/// What a dashboard watches of a node's groups, summed over all of them however many they are.
struct GroupAggregates {
  var hosted: UInt64 = 0
  /// Replicas by role: `learner` is a replica that does not vote (not yet promoted, or a joining
  /// replica still waiting for its leader); the other three are voters.
  var leaders: UInt64 = 0
  var followers: UInt64 = 0
  var candidates: UInt64 = 0
  var learners: UInt64 = 0
  /// Replicas that know no leader (an election is due or under way, or the group lost its quorum).
  var leaderless: UInt64 = 0
  /// Committed entries not yet applied, summed and at most, over the groups.
  var applyLagEntriesSum: UInt64 = 0
  var applyLagEntriesMax: UInt64 = 0
  /// In the groups this node leads: the most entries a peer's log is behind the leader's.
  var replicationLagEntriesMax: UInt64 = 0

  init(_ replicas: some Sequence<(GroupView, LogIndex)>, localReplica: ReplicaID) {
    for (view, applied) in replicas {
      hosted += 1
      switch view.role {
      case .leader: leaders += 1
      case .candidate, .preCandidate: candidates += 1
      case .follower:
        if view.membership.isVoter(localReplica) { followers += 1 } else { learners += 1 }
      }
      if view.leader == 0 { leaderless += 1 }
      // Applied may pass a commit index the view has not refreshed yet: no lag then.
      let applyLag = view.commitIndex > applied ? view.commitIndex - applied : 0
      applyLagEntriesSum += applyLag
      applyLagEntriesMax = max(applyLagEntriesMax, applyLag)
      if view.role == .leader {
        for (replica, progress) in view.progress where replica != localReplica && view.lastIndex > progress.match {
          replicationLagEntriesMax = max(replicationLagEntriesMax, view.lastIndex - progress.match)
        }
      }
    }
    precondition(leaders + followers + candidates + learners == hosted, "every replica has one role")
    precondition(applyLagEntriesMax <= applyLagEntriesSum, "the largest lag is part of the sum")
  }

  func prometheusText() -> String {
    var text = Prometheus.metric("caucus_groups_hosted", help: "Groups this node hosts a replica of.", hosted, type: "gauge")
    text += Prometheus.family(
      "caucus_raft_groups_by_role",
      help: "This node's replicas by role (learner: a replica that does not vote, not yet promoted or waiting for its leader).",
      label: "role",
      [("leader", leaders), ("follower", followers), ("candidate", candidates), ("learner", learners)])
    text += Prometheus.metric(
      "caucus_raft_groups_leaderless", help: "Groups whose replica here knows no leader.", leaderless, type: "gauge")
    text += Prometheus.metric(
      "caucus_raft_apply_lag_entries_sum", help: "Committed entries not yet applied, summed over this node's groups.",
      applyLagEntriesSum, type: "gauge")
    text += Prometheus.metric(
      "caucus_raft_apply_lag_entries_max", help: "Committed entries not yet applied, in the group furthest behind.",
      applyLagEntriesMax, type: "gauge")
    text += Prometheus.metric(
      "caucus_raft_replication_lag_entries_max",
      help: "In the groups this node leads, the most entries a peer's log is behind the leader's.",
      replicationLagEntriesMax, type: "gauge")
    return text
  }
}
