import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// The host's Prometheus metrics: node-level counters and per-group gauges.

extension RaftConsensus {
  /// The host's record of running out of space (the simulator's coverage reads it).
  package var outOfSpaceStatistics: OutOfSpaceStatistics { state.withLock { metrics.outOfSpace } }

  /// Groups this node quiesced as their leader, and quiesced followers it woke because their
  /// leader's node fell silent (the simulator's coverage reads them).
  package var quiescenceStatistics: (quiescences: UInt64, wakesLeaderLost: UInt64) {
    state.withLock { (metrics.quiescences, metrics.wakesLeaderLost) }
  }

  public func prometheusMetrics() -> String {
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
    text += "# HELP caucus_group_is_leader Whether this node leads the group.\n# TYPE caucus_group_is_leader gauge\n"
    for (group, (view, _)) in sorted { text += "caucus_group_is_leader{group=\"\(group)\"} \(view.role == .leader ? 1 : 0)\n" }
    text += "# HELP caucus_group_term The group's current term.\n# TYPE caucus_group_term gauge\n"
    for (group, (view, _)) in sorted { text += "caucus_group_term{group=\"\(group)\"} \(view.term)\n" }
    text += "# HELP caucus_group_commit_index The group's commit index.\n# TYPE caucus_group_commit_index gauge\n"
    for (group, (view, _)) in sorted { text += "caucus_group_commit_index{group=\"\(group)\"} \(view.commitIndex)\n" }
    text += "# HELP caucus_group_applied_index The last log index applied, per group.\n"
    text += "# TYPE caucus_group_applied_index gauge\n"
    for (group, (_, applied)) in sorted { text += "caucus_group_applied_index{group=\"\(group)\"} \(applied)\n" }
    return text
  }

}
