import RaftCore

/// Everything that shapes one simulated run. All of it is derived from, or printed with, the seed.
public struct SimulationOptions: Sendable {
  public var seed: UInt64
  /// Nodes in the cluster (3 or 5). Every node hosts a replica of every group.
  public var nodes: Int = 3
  /// Raft groups hosted by every node; group `g` starts with `ClusterSimulator.bootstrapVoters`
  /// (all voters, three, one, two: four groups cover every shape).
  public var groups: Int = 4
  /// Events (ticks and message deliveries) in the safety phase, with faults on.
  public var safetyEvents: Int = 3000
  /// Ticks allowed after healing for every group to elect a leader, commit a proposal and for
  /// every member to apply the same state.
  public var livenessTicksMax: Int = 2000
  /// A deliberately wrong rule in every replica, by its name (see `PlantedBugName`).
  public var plantedBug: PlantedBugName? = nil
  /// Keep the last this many trace lines for a violation report.
  public var traceLinesMax: Int = 400
  /// Trace routine heartbeats too (they are most of the traffic, so off by default).
  public var traceHeartbeats = false

  public init(seed: UInt64) { self.seed = seed }

  public func validate() throws(SimulationError) {
    guard nodes == 3 || nodes == 5 else { throw .invalidOptions("nodes must be 3 or 5, got \(nodes)") }
    guard (1...64).contains(groups) else { throw .invalidOptions("groups must be in 1...64, got \(groups)") }
    guard safetyEvents >= 0 && safetyEvents <= 10_000_000 else {
      throw .invalidOptions("safetyEvents must be in 0...10000000")
    }
    guard livenessTicksMax >= 50 else { throw .invalidOptions("livenessTicksMax must be ≥ 50") }
    guard traceLinesMax >= 10 else { throw .invalidOptions("traceLinesMax must be ≥ 10") }
  }
}

/// The planted bugs the simulator can switch on; the only way to reach `RaftConfig.plantedBug`.
public enum PlantedBugName: String, Sendable, CaseIterable {
  case voteWithoutLogCheck = "vote-without-log-check"
  case commitPreviousTerm = "commit-previous-term"
  case sendBeforeTermDurable = "send-before-term-durable"

  var bug: PlantedBug {
    switch self {
    case .voteWithoutLogCheck: return .voteWithoutLogCheck
    case .commitPreviousTerm: return .commitPreviousTerm
    case .sendBeforeTermDurable: return .sendBeforeTermDurable
    }
  }
}

public enum SimulationError: Error, Equatable, CustomStringConvertible {
  case invalidOptions(String)
  public var description: String {
    switch self {
    case .invalidOptions(let reason): return "invalid simulation options: \(reason)"
    }
  }
}

/// A property the checker found broken, with the evidence.
public struct Violation: Sendable, CustomStringConvertible {
  public var property: String
  public var detail: String
  public var description: String { "\(property): \(detail)" }
}

/// Counts of the faults and features a run exercised, so a passing run shows what it tried.
public struct Coverage: Sendable, Equatable {
  /// Nodes that lost power during an fsync (what they sent early is in flight, nothing of the
  /// Ready they were persisting is durable).
  public var crashesAtSync = 0
  /// Disks that filled up (ENOSPC) for a while.
  public var disksFilled = 0
  /// Times a node's host met a full disk and stopped taking writes (without a restart), and
  /// times it reopened its storage once there was room again.
  public var outOfSpaceStops = 0
  public var outOfSpaceRecoveries = 0
  public var partitions = 0
  public var snapshotsInstalled = 0
  /// Snapshot chunks sent (snapshots over the inline limit stream).
  public var snapshotChunksSent = 0
  /// Membership changes asked of a leader (joins with addPeer, removePeer).
  public var membershipChanges = 0
  public var transfersStarted = 0
  public var readsServed = 0
  /// Hard states written without an fsync (only their commit moved), which a crash may lose.
  public var unsyncedHardStates = 0
  /// Client operations checked for linearizability, and per-key histories whose search hit its
  /// bound (neither proven nor refuted).
  public var clientOperations = 0
  public var historiesUndecided = 0
  /// Groups quiesced by their leader, and quiesced followers woken because their leader's node
  /// fell silent (node liveness).
  public var quiescences = 0
  public var wakesLeaderLost = 0

  public init() {}

  mutating func add(_ other: Coverage) {
    crashesAtSync += other.crashesAtSync
    disksFilled += other.disksFilled
    outOfSpaceStops += other.outOfSpaceStops
    outOfSpaceRecoveries += other.outOfSpaceRecoveries
    partitions += other.partitions
    snapshotsInstalled += other.snapshotsInstalled
    snapshotChunksSent += other.snapshotChunksSent
    membershipChanges += other.membershipChanges
    transfersStarted += other.transfersStarted
    readsServed += other.readsServed
    unsyncedHardStates += other.unsyncedHardStates
    clientOperations += other.clientOperations
    historiesUndecided += other.historiesUndecided
    quiescences += other.quiescences
    wakesLeaderLost += other.wakesLeaderLost
  }

  var line: String {
    "crashesAtSync=\(crashesAtSync) disksFull=\(disksFilled) outOfSpace=\(outOfSpaceStops) "
      + "outOfSpaceRecovered=\(outOfSpaceRecoveries) partitions=\(partitions) snapshots=\(snapshotsInstalled) "
      + "chunks=\(snapshotChunksSent) membership=\(membershipChanges) transfers=\(transfersStarted) "
      + "reads=\(readsServed) unsyncedHardStates=\(unsyncedHardStates) clientOps=\(clientOperations) "
      + "undecided=\(historiesUndecided) quiescences=\(quiescences) wakesLeaderLost=\(wakesLeaderLost)"
  }
}

public struct SimulationResult: Sendable {
  public var seed: UInt64
  public var events: Int
  public var ticks: Int
  public var messagesDelivered: Int
  public var entriesCommitted: Int
  public var leadersElected: Int
  public var crashes: Int
  /// How much of the fault and feature space this run exercised.
  public var coverage: Coverage
  public var violation: Violation?
  /// The last trace lines before the end (a violation's context).
  public var trace: [String]
  /// Derived parameters, printed so a run can be understood from its output.
  public var parameters: String
}
