/// How fresh a read must be.
public enum ReadConsistency: String, Sendable, CaseIterable {
  /// Reflects every write acknowledged before the read started (ReadIndex under Raft).
  case linearizable
  /// Served by a leader holding a lease; linearizable unless clocks misbehave.
  case lease
  /// Served from this replica's applied state, possibly behind.
  case stale
}

public struct ReadOptions: Sendable, Equatable {
  public var consistency: ReadConsistency
  /// Stale reads wait until the applied index reaches this (bounded by `waitMs`).
  public var minIndex: UInt64
  /// How long a read may wait for `minIndex` or a read index before `timeout`.
  public var waitMs: UInt32

  public init(consistency: ReadConsistency = .linearizable, minIndex: UInt64 = 0, waitMs: UInt32 = 5_000) {
    self.consistency = consistency
    self.minIndex = minIndex
    self.waitMs = waitMs
  }
}

public struct WriteResult: Sendable, Equatable {
  /// The log index of the entry that carried the write.
  public let index: UInt64
  /// What the state machine's `apply` returned.
  public let response: [UInt8]

  public init(index: UInt64, response: [UInt8]) {
    self.index = index
    self.response = response
  }
}

public struct ReadResult: Sendable, Equatable {
  /// The applied index the read observed.
  public let index: UInt64
  /// What the state machine's `query` returned.
  public let response: [UInt8]

  public init(index: UInt64, response: [UInt8]) {
    self.index = index
    self.response = response
  }
}

public struct SnapshotInfo: Sendable, Equatable {
  public let index: UInt64
  public let term: UInt64
  public let bytes: UInt64

  public init(index: UInt64, term: UInt64, bytes: UInt64) {
    self.index = index
    self.term = term
    self.bytes = bytes
  }
}

public enum GroupRole: String, Sendable {
  case leader, follower, candidate, learner
}

public enum PeerReplicationState: String, Sendable {
  case probe, replicate, snapshot
}

public struct PeerStatus: Sendable, Equatable {
  public var peer: Peer
  public var learner: Bool
  public var matchIndex: UInt64
  public var nextIndex: UInt64
  public var lag: UInt64
  /// Milliseconds since the leader last heard from this peer; nil when unknown or self.
  public var lastContactMs: UInt64?
  public var state: PeerReplicationState
  public var snapshotBytesSent: UInt64?
  public var snapshotBytesTotal: UInt64?

  public init(
    peer: Peer, learner: Bool = false, matchIndex: UInt64, nextIndex: UInt64, lag: UInt64,
    lastContactMs: UInt64? = nil, state: PeerReplicationState = .replicate
  ) {
    self.peer = peer
    self.learner = learner
    self.matchIndex = matchIndex
    self.nextIndex = nextIndex
    self.lag = lag
    self.lastContactMs = lastContactMs
    self.state = state
  }
}

public struct GroupStatus: Sendable, Equatable {
  public var id: GroupID
  public var protocolName: String
  public var role: GroupRole
  public var leader: Peer?
  public var term: UInt64
  public var commitIndex: UInt64
  public var appliedIndex: UInt64
  public var snapshotIndex: UInt64
  public var logEntries: UInt64
  public var logBytes: UInt64
  /// The current membership: voters (both sides of a joint configuration) and learners.
  public var peers: [PeerStatus]
  /// The voters the group was bootstrapped with (its membership before its log): a replica that
  /// joins the group later is created with them (`joinPeer`).
  public var bootstrapVoters: [NodeID]
  /// Whether the replica is quiesced: an idle group whose replicas stopped ticking and
  /// heartbeating until something wakes it (raft; never for protocols without quiescence).
  public var quiesced = false

  public init(
    id: GroupID, protocolName: String, role: GroupRole, leader: Peer?, term: UInt64, commitIndex: UInt64,
    appliedIndex: UInt64, snapshotIndex: UInt64, logEntries: UInt64, logBytes: UInt64, peers: [PeerStatus],
    bootstrapVoters: [NodeID]? = nil, quiesced: Bool = false
  ) {
    self.id = id
    self.protocolName = protocolName
    self.role = role
    self.leader = leader
    self.term = term
    self.commitIndex = commitIndex
    self.appliedIndex = appliedIndex
    self.snapshotIndex = snapshotIndex
    self.logEntries = logEntries
    self.logBytes = logBytes
    self.peers = peers
    self.bootstrapVoters = bootstrapVoters ?? peers.map(\.peer.node)
    self.quiesced = quiesced
  }
}

/// What a write does at a node that does not lead its group.
public enum WriteForwarding: Sendable, Equatable {
  /// Answer `notLeader` (with the leader when known) or `noLeader`: the caller decides where to go.
  case refuse
  /// Hand the write to the leader inside the protocol and answer once this node has applied it;
  /// `notLeader` / `noLeader` only when that is not possible. Protocols without forwarding refuse.
  case toLeader
}

/// The consensus layer (IoTDB's `IConsensus`): one interface over pluggable protocols, many groups
/// per node. Calls that may touch the disk or the network complete later through a completion,
/// called exactly once from any thread, so that no caller's event loop ever blocks.
public protocol ConsensusEngine: AnyObject, Sendable {
  /// The canonical protocol name (`standalone`, `raft`).
  var protocolName: String { get }
  /// This node.
  var localPeer: Peer { get }
  /// The most peers a group of this protocol has (standalone: 1, IoTDB's rule), when the
  /// protocol fixes it; nil when `createPeer` checks its own limit. The gateway refuses a larger
  /// peer list with `illegalPeerNumber` before it looks anything up or records anything.
  var groupPeersMax: Int? { get }

  /// Recovers storage and starts serving. Throws when storage cannot be recovered.
  func start() throws
  /// Stops accepting work, finishes what is in flight, syncs, and stops. Idempotent.
  func stop()

  func write(_ group: GroupID, command: [UInt8], completion: @escaping ConsensusCompletion<WriteResult>)
  /// `write`, choosing what happens when this node does not lead `group`.
  func write(
    _ group: GroupID, command: [UInt8], forwarding: WriteForwarding,
    completion: @escaping ConsensusCompletion<WriteResult>)
  func read(
    _ group: GroupID, query: [UInt8], options: ReadOptions, completion: @escaping ConsensusCompletion<ReadResult>)

  /// Creates this node's replica of `group` with the given initial peers.
  func createPeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>)
  /// Creates this node's replica of an existing `group` that it is about to join (`addPeer` or
  /// `changePeer` at the leader follows). `peers`: the endpoints of the group's members and of this
  /// node; `bootstrapVoters`: the group's bootstrap voters (`GroupStatus.bootstrapVoters`), which
  /// this node is not among: it waits for the leader and never campaigns on its own.
  func joinPeer(
    _ group: GroupID, peers: [Peer], bootstrapVoters: [NodeID], completion: @escaping ConsensusCompletion<Void>)
  /// Removes this node's replica of `group` and its data. With `ifLogEndsBy`, only when the
  /// replica's log ends at or before that position in log order (a lower last term, or the same
  /// term and an index no higher), checked where the replica's log changes; else
  /// `peerAlreadyInGroup` and nothing is deleted. How the leader that removed a peer deletes the
  /// peer's replica: bounded by the end of its own log once the removal applied, since a replica
  /// added back since holds the later entry that added it (a later index in that term, or a later
  /// term).
  func deletePeer(_ group: GroupID, ifLogEndsBy: LogPosition?, completion: @escaping ConsensusCompletion<Void>)
  func addPeer(_ group: GroupID, peer: Peer, completion: @escaping ConsensusCompletion<Void>)
  func removePeer(_ group: GroupID, node: NodeID, completion: @escaping ConsensusCompletion<Void>)
  func changePeer(_ group: GroupID, peers: [Peer], completion: @escaping ConsensusCompletion<Void>)
  func transferLeader(_ group: GroupID, to node: NodeID, completion: @escaping ConsensusCompletion<Void>)
  func triggerSnapshot(_ group: GroupID, completion: @escaping ConsensusCompletion<SnapshotInfo>)

  func isLeader(_ group: GroupID) -> Bool
  func leader(_ group: GroupID) -> Peer?
  func allGroupIDs() -> [GroupID]
  func status(_ group: GroupID) -> GroupStatus?

  /// Whether storage has been recovered and the engine serves requests.
  var isReady: Bool { get }
  /// Whether storage works, is out of space (passing) or failed (until restart).
  var storageCondition: StorageCondition { get }

  /// The engine's own metrics in Prometheus text exposition format (lines ending in "\n").
  func prometheusMetrics() -> String
  /// `prometheusMetrics()` with per-group series for at most `groupSeriesMax` groups, the first in
  /// id order (0: none), and a count of the groups left out; per-node aggregates are always
  /// written. A node may host ten thousand groups: a scrape must not grow with them.
  func prometheusMetrics(groupSeriesMax: Int) -> String
}

extension ConsensusEngine {
  /// Protocols whose `createPeer` checks its peer list itself.
  public var groupPeersMax: Int? { nil }

  /// Engines that never report a storage problem of their own (test fakes).
  public var storageCondition: StorageCondition { .ok }

  /// Engines without per-group series (test fakes) have nothing to leave out.
  public func prometheusMetrics(groupSeriesMax: Int) -> String { prometheusMetrics() }

  /// Protocols with one replica per group have nothing to join.
  public func joinPeer(
    _ group: GroupID, peers: [Peer], bootstrapVoters: [NodeID], completion: @escaping ConsensusCompletion<Void>
  ) {
    completion(.failure(.notSupported("\(protocolName) groups have one replica; there is no group to join")))
  }

  /// Protocols that cannot forward inside themselves refuse at a non-leader, as `write` does.
  public func write(
    _ group: GroupID, command: [UInt8], forwarding: WriteForwarding,
    completion: @escaping ConsensusCompletion<WriteResult>
  ) {
    write(group, command: command, completion: completion)
  }
}

extension ConsensusEngine {
  /// Removes this node's replica of `group` and its data, whatever its log holds.
  public func deletePeer(_ group: GroupID, completion: @escaping ConsensusCompletion<Void>) {
    deletePeer(group, ifLogEndsBy: nil, completion: completion)
  }
}

/// A place in a replica's log: an entry's index and term.
public struct LogPosition: Sendable, Equatable {
  public var index: UInt64
  public var term: UInt64

  public init(index: UInt64, term: UInt64) {
    self.index = index
    self.term = term
  }

  /// Whether a log whose last entry is at (`lastIndex`, `lastTerm`) ends at or before this place.
  public func bounds(lastIndex: UInt64, lastTerm: UInt64) -> Bool {
    lastTerm < term || (lastTerm == term && lastIndex <= index)
  }
}
