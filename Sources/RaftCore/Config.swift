// The configuration of one Raft replica. Every limit is a named field with the reason for it,
// checked once by `validate()` before a `Raft` is built.

public struct RaftConfig: Sendable {
  /// This replica's id; never 0.
  public var id: ReplicaID

  /// Ticks a follower waits without hearing from a leader before it campaigns. The real timeout
  /// is drawn uniformly from [electionTicks, 2 × electionTicks) on every reset (Raft paper §5.2)
  /// so split votes resolve quickly. Must exceed `heartbeatTicks` or followers would campaign
  /// between two heartbeats of a healthy leader.
  public var electionTicks: Int = 10
  /// Ticks between two leader heartbeats (Raft paper §5.2).
  public var heartbeatTicks: Int = 1

  /// Run a pre-election first (thesis §9.6): a partitioned replica that rejoins cannot disrupt
  /// the group by bumping terms unless a quorum would actually vote for it.
  public var preVote: Bool = true
  /// A leader that has not heard from a quorum within an election timeout steps down, and
  /// replicas ignore votes while they have a live leader (thesis §6.2, §4.2.3 leases).
  public var checkQuorum: Bool = true

  /// Upper bound on the entry bytes in one append message. Bounds the memory of one message on
  /// both ends and keeps heartbeats from queueing behind huge batches. At least one entry is
  /// always sent, so a single larger entry still makes progress.
  public var maxEntriesBytesPerMessage: Int = 1 << 20
  /// Upper bound on append messages in flight to one follower while replicating (pipelining,
  /// thesis §10.2.2). Bounds the transport buffers a slow follower can pin on the leader. Counted
  /// before appends of one Ready fold into one message, so a folded message may take several.
  public var maxInflightMessages: Int = 256
  /// Upper bound on entry bytes in flight to one follower, for the same reason in bytes.
  public var maxInflightBytes: Int = 32 << 20
  /// Upper bound on the bytes of proposed but not yet committed entries at a leader. Proposals
  /// beyond it are refused, so a leader cut off from its quorum cannot grow its log without limit.
  public var maxUncommittedEntriesBytes: Int = 64 << 20
  /// Upper bound on the bytes of committed entries handed to the host in one `Ready`, so one
  /// apply step has a bounded latency and memory footprint.
  public var maxCommittedBytesPerReady: Int = 16 << 20
  /// Upper bound on the bytes of one proposed command: larger commands are refused before they
  /// reach the log (they would exceed what the wire codec accepts in one entry).
  public var maxCommandBytes: Int = 8 << 20
  /// Upper bound on ReadIndex requests waiting for a quorum confirmation at a leader.
  public var maxPendingReads: Int = 4096
  /// Heartbeat responses a leader receives from a follower whose inflight window stays full
  /// before it suspects that the appends filling it were lost and probes with an empty append.
  /// Must exceed the network's round-trip time in heartbeat intervals: a probe that overtakes
  /// the appends still in flight is rejected and costs a round trip of back-off.
  public var stalledHeartbeatsBeforeProbe: Int = 4

  /// Ticks a leader must go without a proposal, read or transfer before it may quiesce the group
  /// (`Raft.quiesce`); 0: never. A short quiet period quiesces sooner (less idle work); a longer
  /// one saves the quiesce-and-wake messages of a group written every few ticks.
  public var quiesceAfterTicks: Int = 0

  /// Deliberately wrong rules, for proving that the simulator's checker catches them. Only code
  /// inside this package can set it (`package` access); it is never reachable from a host.
  package var plantedBug: PlantedBug? = nil

  public init(id: ReplicaID) { self.id = id }

  public func validate() throws(RaftConfigError) {
    guard id != 0 else { throw .invalid("id must not be 0 (0 means 'none')") }
    guard heartbeatTicks >= 1 else { throw .invalid("heartbeatTicks must be ≥ 1, got \(heartbeatTicks)") }
    guard electionTicks > heartbeatTicks else {
      throw .invalid("electionTicks (\(electionTicks)) must exceed heartbeatTicks (\(heartbeatTicks))")
    }
    guard maxEntriesBytesPerMessage >= 1 else { throw .invalid("maxEntriesBytesPerMessage must be ≥ 1") }
    guard maxInflightMessages >= 1 else { throw .invalid("maxInflightMessages must be ≥ 1") }
    guard maxInflightBytes >= 1 else { throw .invalid("maxInflightBytes must be ≥ 1") }
    guard maxUncommittedEntriesBytes >= 1 else { throw .invalid("maxUncommittedEntriesBytes must be ≥ 1") }
    guard maxCommittedBytesPerReady >= 1 else { throw .invalid("maxCommittedBytesPerReady must be ≥ 1") }
    guard maxCommandBytes >= 0, maxCommandBytes <= WireLimits.entryDataBytesMax else {
      throw .invalid("maxCommandBytes must be in 0...\(WireLimits.entryDataBytesMax), got \(maxCommandBytes)")
    }
    guard maxPendingReads >= 1 else { throw .invalid("maxPendingReads must be ≥ 1") }
    guard stalledHeartbeatsBeforeProbe >= 1 else { throw .invalid("stalledHeartbeatsBeforeProbe must be ≥ 1") }
    guard quiesceAfterTicks >= 0 else { throw .invalid("quiesceAfterTicks must be ≥ 0, got \(quiesceAfterTicks)") }
  }
}

public enum RaftConfigError: Error, Equatable, Sendable, CustomStringConvertible {
  case invalid(String)
  public var description: String {
    switch self {
    case .invalid(let reason): return "invalid raft config: \(reason)"
    }
  }
}

/// Wrong rules that the simulator plants to show its checker has teeth.
package enum PlantedBug: String, Sendable, CaseIterable {
  /// Grant (pre-)votes without the "candidate's log is at least as up-to-date" check (§5.4.1).
  case voteWithoutLogCheck = "vote-without-log-check"
  /// Commit entries of earlier terms by counting replicas (the mistake of Figure 8, §5.4.2).
  case commitPreviousTerm = "commit-previous-term"
  /// Send a leader's appends before the Ready that made it leader is durable, even when that
  /// Ready changed the term or vote (the single-voter bug: a crash before the fsync lets the
  /// replica win the same term again with other entries at the same indexes).
  case sendBeforeTermDurable = "send-before-term-durable"
}
