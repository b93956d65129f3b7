import Consensus
import RaftCore
import WriteAheadLog

/// Limits and knobs of the multi-Raft host, each with its reason.
public struct RaftConsensusOptions: Sendable {
  /// Length of one Raft tick. Election and heartbeat timeouts are counted in ticks, so this sets
  /// the time scale of failure detection; every group of the node ticks on the same clock.
  public var tickIntervalMs: UInt64 = 100
  /// Ticks without a leader before a follower campaigns (randomized up to twice this).
  public var electionTicks = 10
  /// Ticks between two heartbeats of a leader.
  public var heartbeatTicks = 1
  /// Ticks a group's leader waits without a proposal, read or transfer before it quiesces the
  /// group (`Raft.quiesce`): its replicas stop ticking and heartbeating until something wakes
  /// them, so idle groups cost nothing. 0: groups never quiesce.
  public var quiesceAfterTicks = 10
  /// Ticks without a batch from a peer node after which this node counts it dead
  /// (`NodeLiveness`) and wakes the quiesced groups it led, which then elect a new leader. Every
  /// node sends each peer a batch every tick, so this is the failure detection of quiesced groups
  /// (active ones still have their election timeout).
  public var nodeLivenessTimeoutTicks = 10
  /// Hold a heartbeat response that confirms only liveness until the next batch to its leader's
  /// node, at most until the next tick, instead of sending it at once. With leadership spread
  /// over the nodes, a node's own heartbeats to a peer then carry its responses to that peer's
  /// heartbeats: one batch per node pair and direction per interval instead of two, which halves
  /// an idle cluster's traffic. Responses to ReadIndex rounds always leave at once.
  public var holdHeartbeatResponses = true
  /// A write forwarded to a leader that still owes this node answers waits for them (or for this
  /// node's next batch to it after a sync) at most this many ticks before it leaves on its own.
  /// The answers normally come within a round trip; the bound only matters when they do not.
  public var forwardHoldTicksMax = 1
  /// Commit indexes are written without an fsync when nothing else needs one (`Ready.mustSync`);
  /// after this many ticks with such records unsynced, a turn syncs them anyway. Losing them to a
  /// crash is harmless, but records left unsynced for long widen the window in which a power
  /// loss can leave a hole before a later record, which recovery refuses to read past.
  public var unsyncedRecordsTicksMax = 1
  /// Writes accepted but not yet answered (queued, proposed or waiting for commit), across all
  /// groups. Past it a write is answered `overloaded` rather than queued without bound.
  public var pendingWritesMax = 16_384
  /// Bytes of those writes: with values up to megabytes, a count alone would let them hold gigabytes.
  public var pendingWriteBytesMax = 256 << 20
  /// Inbound message batches waiting for the loop. Past it a batch is dropped (Raft retries), so
  /// a flood from peers cannot grow memory without bound.
  public var inboundBatchesMax = 4_096
  /// While the data directory is full (`WALError.isOutOfSpace`), how often the loop checks
  /// whether space returned (`SpaceProbe`) and recovers its groups from disk. Shorter resumes
  /// sooner; each attempt writes and deletes `outOfSpaceProbeBytes`.
  public var outOfSpaceRetryMs: UInt64 = 1_000
  /// The room a probe must find before the storage is reopened: several turns of appends and a
  /// snapshot or two, so that a disk with a few bytes free does not reopen only to fill again.
  public var outOfSpaceProbeBytes = 1 << 20
  /// Linearizable reads queued or waiting for their read index, plus stale reads waiting for
  /// `minIndex`, across all groups.
  public var readWaitersMax = 4_096
  /// Groups this node may host. Every active group ticks every turn and has a heartbeat (or
  /// response) in the batch to each peer, so this bounds a turn's work and a batch's coalesced section
  /// (at most `WireLimits.heartbeatsPerBatchMax / 2`: a group can have a held response and a new
  /// heartbeat in one batch). Past it, creating or joining a group is refused. Ten thousand
  /// groups of users' own beside the cluster's directory and a few spare.
  public var groupsMax = 16_384
  /// Group creations, deletions, leader transfers and membership changes queued for the loop
  /// (each costs an fsync).
  public var pendingControlMax = 64
  /// A proposed write not committed within this time is answered `timeout(indeterminate: true)`:
  /// it may still commit later, so the caller must not assume either outcome.
  public var proposalTimeoutMs: UInt64 = 10_000
  /// A group is snapshotted (its log compacted) after this many applied entries since its last
  /// snapshot, so the WAL's segments can be released and restart replay stays short.
  public var snapshotEntriesThreshold: UInt64 = 10_000
  /// When the WAL holds more segments than this, every group is snapshotted so the segments can
  /// be released (see `RaftConsensus`): bounds the disk a quiet group can pin, at
  /// `walSegmentsSoftMax × wal.segmentBytesMax` plus what the busy groups hold.
  public var walSegmentsSoftMax = 32
  /// Snapshots a forced round (`walSegmentsSoftMax`) takes per loop turn: each is a file and an
  /// fsync, so a round over thousands of groups spreads over many turns instead of holding up
  /// every write for seconds.
  public var forcedSnapshotsPerTurnMax = 16
  /// A leader transfer not observed to finish within this many election timeouts is answered
  /// `timeout` (it may still finish).
  public var transferElectionTimeoutsMax: UInt64 = 2
  /// A membership change (addPeer, removePeer, changePeer) not finished within this time is
  /// answered `timeout(indeterminate: true)`: its entries may still commit. It covers every step,
  /// including a new member catching up, which takes as long as copying the group's data.
  public var membershipChangeTimeoutMs: UInt64 = 60_000
  /// A snapshot for a follower whose data exceeds this travels as chunks over several batches
  /// instead of inline in one message: a batch then never outgrows what a receiver accepts
  /// (`WireLimits.batchBytesTarget`, the consensus port's body limit), and one large group's
  /// catch-up cannot hold up every other group's messages in the same batch.
  public var snapshotInlineBytesMax = 4 << 20
  /// The size of one streamed snapshot chunk.
  public var snapshotChunkBytes = 1 << 20
  /// Chunk bytes sent to one destination per tick, over all snapshots streaming to it: paces a
  /// large catch-up so the transport's per-peer queue (and the link) keep room for other groups.
  public var snapshotStreamBytesPerTick = 16 << 20
  /// Bytes of snapshots being assembled from leaders at once; past it a new stream is refused
  /// (its leader sends it again later). Bounds the memory a follower spends on catch-ups.
  public var snapshotAssemblyBytesMax = 1 << 30
  /// Ticks an assembly may go without a new chunk before it is dropped (its leader gave up).
  public var snapshotAssemblyIdleTicksMax = 100
  /// Seed for the election-timeout jitter of every group (mixed with the node and group ids).
  /// Nil: taken from the clock at start.
  public var seed: UInt64? = nil
  public var wal = WALOptions()
  /// The entry bytes one append message carries at most (the core's `maxEntriesBytesPerMessage`;
  /// one entry always goes, whatever its size): bounds a message's memory on both ends.
  public var entriesBytesPerMessageMax = 1 << 20
  /// Append messages in flight to one follower at most while it keeps up (the core's
  /// `maxInflightMessages`): bounds what a slow follower pins in the transport.
  public var inflightMessagesMax = 256
  /// The core's PreVote and CheckQuorum (thesis §9.6, §6.2): always on for a node; the simulator
  /// also runs without them, where more interleavings (Figure 8's) are reachable.
  package var preVote = true
  package var checkQuorum = true
  /// A deliberately wrong rule in every replica, for proving the simulator catches it; only
  /// code inside this package can set it.
  package var plantedBug: PlantedBug? = nil

  public init() {}

  /// Reads the options a properties file or flag may set (unknown names are ignored).
  public init(options: [String: String]) throws(ConsensusError) {
    self.init()
    func number(_ name: String, _ range: ClosedRange<UInt64>) throws(ConsensusError) -> UInt64? {
      try protocolOption(options, name, range)
    }
    if let value = try number("tickIntervalMs", 1...10_000) { tickIntervalMs = value }
    if let value = try number("electionTicks", 2...1_000) { electionTicks = Int(value) }
    if let value = try number("heartbeatTicks", 1...1_000) { heartbeatTicks = Int(value) }
    if let value = try number("quiesceAfterTicks", 0...1_000_000) { quiesceAfterTicks = Int(value) }
    if let value = try number("nodeLivenessTimeoutTicks", 2...1_000) { nodeLivenessTimeoutTicks = Int(value) }
    if let value = try number("pendingWritesMax", 1...1_000_000) { pendingWritesMax = Int(value) }
    if let value = try number("pendingWriteBytesMax", 1 << 20...1 << 40) { pendingWriteBytesMax = Int(value) }
    if let value = try number("inboundBatchesMax", 1...1_000_000) { inboundBatchesMax = Int(value) }
    if let value = try number("proposalTimeoutMs", 1...3_600_000) { proposalTimeoutMs = value }
    if let value = try number("forwardHoldTicksMax", 1...1_000) { forwardHoldTicksMax = Int(value) }
    if let value = try number("unsyncedRecordsTicksMax", 1...1_000) { unsyncedRecordsTicksMax = Int(value) }
    if let value = try number("membershipChangeTimeoutMs", 1...3_600_000) { membershipChangeTimeoutMs = value }
    if let value = try number("snapshotEntriesThreshold", 1...UInt64(UInt32.max)) { snapshotEntriesThreshold = value }
    if let value = try number("walSegmentsSoftMax", 2...100_000) { walSegmentsSoftMax = Int(value) }
    if let value = try number("forcedSnapshotsPerTurnMax", 1...100_000) { forcedSnapshotsPerTurnMax = Int(value) }
    if let value = try number("groupsMax", 1...UInt64(WireLimits.heartbeatsPerBatchMax / 2)) { groupsMax = Int(value) }
    if let value = try number("walSegmentBytes", 1 << 16...1 << 34) { wal.segmentBytesMax = value }
    if let value = try number("outOfSpaceRetryMs", 1...600_000) { outOfSpaceRetryMs = value }
    if let value = try number("outOfSpaceProbeBytes", 4_096...1 << 30) { outOfSpaceProbeBytes = Int(value) }
    if let value = try number("entriesBytesPerMessageMax", 1...UInt64(WireLimits.batchBytesTarget)) {
      entriesBytesPerMessageMax = Int(value)
    }
    if let value = try number("inflightMessagesMax", 1...65_536) { inflightMessagesMax = Int(value) }
    if let value = try number("snapshotInlineBytesMax", 0...UInt64(WireLimits.batchBytesTarget / 2)) {
      snapshotInlineBytesMax = Int(value)
    }
    if let value = try number(
      "snapshotChunkBytes", UInt64(WireLimits.snapshotChunkBytesMin)...UInt64(WireLimits.snapshotChunkBytesMax))
    {
      snapshotChunkBytes = Int(value)
    }
    if let value = try number("snapshotStreamBytesPerTick", 1...1 << 30) { snapshotStreamBytesPerTick = Int(value) }
    if let value = try number("snapshotAssemblyBytesMax", 1 << 20...1 << 40) { snapshotAssemblyBytesMax = Int(value) }
    if let value = try number("snapshotAssemblyIdleTicksMax", 1...1_000_000) { snapshotAssemblyIdleTicksMax = Int(value) }
    try validate()
  }

  public func validate() throws(ConsensusError) {
    guard tickIntervalMs >= 1 else { throw .invalidRequest("tickIntervalMs must be ≥ 1") }
    guard electionTicks > heartbeatTicks else {
      throw .invalidRequest("electionTicks (\(electionTicks)) must exceed heartbeatTicks (\(heartbeatTicks))")
    }
    guard forwardHoldTicksMax >= 1, UInt64(forwardHoldTicksMax) * tickIntervalMs < proposalTimeoutMs else {
      // A write held that long would time out without ever leaving this node.
      throw .invalidRequest(
        "forwardHoldTicksMax (\(forwardHoldTicksMax)) must be ≥ 1, and that many ticks of \(tickIntervalMs) ms (the "
          + "heartbeat interval) shorter than proposalTimeoutMs (\(proposalTimeoutMs))")
    }
    guard quiesceAfterTicks >= 0 else { throw .invalidRequest("quiesceAfterTicks must be ≥ 0") }
    guard nodeLivenessTimeoutTicks >= 2 else {
      // Pings go every tick: one tick of silence is normal jitter, not a death.
      throw .invalidRequest("nodeLivenessTimeoutTicks must be ≥ 2")
    }
    guard unsyncedRecordsTicksMax >= 1 else { throw .invalidRequest("unsyncedRecordsTicksMax must be ≥ 1") }
    guard pendingWritesMax >= 1, pendingWriteBytesMax >= 1, inboundBatchesMax >= 1, readWaitersMax >= 1,
      pendingControlMax >= 1, walSegmentsSoftMax >= 2, forcedSnapshotsPerTurnMax >= 1
    else { throw .invalidRequest("queue limits must be ≥ 1") }
    guard snapshotInlineBytesMax >= 0, snapshotInlineBytesMax <= WireLimits.batchBytesTarget / 2 else {
      throw .invalidRequest("snapshotInlineBytesMax must be 0 to \(WireLimits.batchBytesTarget / 2)")
    }
    guard snapshotChunkBytes >= WireLimits.snapshotChunkBytesMin, snapshotChunkBytes <= WireLimits.snapshotChunkBytesMax
    else {
      throw .invalidRequest(
        "snapshotChunkBytes must be \(WireLimits.snapshotChunkBytesMin) to \(WireLimits.snapshotChunkBytesMax)")
    }
    guard snapshotStreamBytesPerTick >= 1, snapshotAssemblyBytesMax >= 1, snapshotAssemblyIdleTicksMax >= 1 else {
      throw .invalidRequest("snapshot stream limits must be ≥ 1")
    }
    guard groupsMax >= 1, groupsMax <= WireLimits.heartbeatsPerBatchMax / 2 else {
      throw .invalidRequest("groupsMax must be 1 to \(WireLimits.heartbeatsPerBatchMax / 2)")
    }
    do { try wal.validate() } catch { throw .invalidRequest("\(error)") }
  }

  /// The core's configuration of this node's replica in one group.
  func raftConfig(node: NodeID) -> RaftConfig {
    var config = RaftConfig(id: node.rawValue)
    config.plantedBug = plantedBug
    config.preVote = preVote
    config.checkQuorum = checkQuorum
    config.maxEntriesBytesPerMessage = entriesBytesPerMessageMax
    config.maxInflightMessages = inflightMessagesMax
    config.electionTicks = electionTicks
    config.heartbeatTicks = heartbeatTicks
    config.quiesceAfterTicks = quiesceAfterTicks
    // A command must fit in one WAL record beside the entry's kind byte.
    config.maxCommandBytes = min(
      config.maxCommandBytes, Int(wal.recordBytesMax) - WALRecord.fixedBytes - RaftStorage.entryPayloadOverheadBytes)
    return config
  }
}
