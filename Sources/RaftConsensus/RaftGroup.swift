import Consensus
import Platform
import RaftCore

/// What readers on other threads may see of a group: refreshed by the loop after each turn that
/// touched the group.
struct GroupView {
  var role: Role = .follower
  var leader: ReplicaID = 0
  var term: Term = 0
  var commitIndex: LogIndex = 0
  var firstIndex: LogIndex = 1
  var lastIndex: LogIndex = 0
  /// Bytes of the entries after the snapshot (`Raft.logBytes`).
  var logBytes = 0
  /// Whether the group is quiesced (`Raft.isQuiesced`): it sends and ticks nothing until woken.
  var quiesced = false
  var progress: [ReplicaID: (match: LogIndex, next: LogIndex, state: ProgressState)] = [:]
  /// The membership in force (applied), which the status shows.
  var membership = ConfigState(voters: [])
}

/// A write proposed to the core, answered when its index is applied (or overwritten).
struct Proposal: Sendable {
  let term: Term
  let bytes: Int
  /// Moved closer when this node stops leading (see `RaftConsensus.apply`).
  var deadline: UInt64
  let completion: ConsensusCompletion<WriteResult>
}

/// A write this node handed to its group's leader inside a batch (a forwarded proposal). It is
/// answered when this node applies the index the leader appended it at — with this node's own
/// apply outcome when the applied entry has the term the leader named, else as definitely not
/// written — or at `deadline`.
struct ForwardedWrite: Sendable {
  let requestID: UInt64
  /// The node it was sent to: only that node's answer counts.
  let leader: ReplicaID
  let bytes: Int
  let deadline: UInt64
  let completion: ConsensusCompletion<WriteResult>
}

/// A write to forward whose batch the transport dropped before it left: sent again next turn,
/// to whichever node leads then.
struct UnsentWrite: Sendable {
  let command: [UInt8]
  let deadline: UInt64
  let completion: ConsensusCompletion<WriteResult>
  /// The leader it waited for (held, not lost): it goes there if no leader is known by then, as
  /// it would have gone there had it not waited. 0 for a write whose batch was lost.
  var heldFor: ReplicaID = 0
}

/// A membership change the leader drives (addPeer, removePeer, changePeer): one configuration
/// change entry after another, each waited for until applied, answered at the end, at `deadline`,
/// or when this node stops leading.
/// A membership change as asked.
enum MembershipRequest: Sendable {
  case add(Peer)
  case remove(NodeID)
  case change([Peer])
}

struct MembershipChange: Sendable {
  enum Stage: Sendable {
    /// Not proposed yet: the core takes no change until the previous one (or a new leader's
    /// first entry) applied; planned and proposed as soon as it does.
    case proposing(MembershipRequest)
    /// Waiting for the entry proposed at `index` in `term` to be applied; `then` says what next.
    case applying(index: LogIndex, term: Term, then: Next)
    /// addPeer: the learner is in; waiting until its match index reaches `target` (the leader's
    /// commit index when the learner was applied), then it is promoted.
    case catchingUp(learner: ReplicaID, target: LogIndex)
  }

  enum Next: Sendable {
    /// addPeer: the learner was added; catch it up, then promote it.
    case catchUp(ReplicaID)
    /// Done once applied and the membership is no longer joint (changePeer waits for the leader
    /// to leave the joint configuration it entered).
    case finish
  }

  var stage: Stage
  let deadline: UInt64
  let completion: ConsensusCompletion<Void>
}

/// A linearizable read: waits for a read index, then for that index to be applied.
struct LinearizableRead: Sendable {
  let query: [UInt8]
  let deadline: UInt64
  let completion: ConsensusCompletion<ReadResult>
}

/// This node's replica of one group.
///
/// `lock` guards `stateMachine`, `appliedIndex` and `view`: the loop applies and refreshes under
/// it, readers query under it. Everything marked "loop only" is confined to the engine's loop
/// thread (`raft` above all: the core is a value stepped by one thread).
// @unchecked Sendable: see the confinement above.
final class RaftGroup: @unchecked Sendable {
  let id: GroupID
  let lock = ConditionLock()
  // Guarded by `lock`.
  let stateMachine: any StateMachine
  var appliedIndex: LogIndex = 0
  var view = GroupView()
  /// The endpoint of every replica the group knows: the creation record's, then those the
  /// membership changes carried (their context). The loop writes it; readers on other threads
  /// read it. Guarded by `lock`.
  private var endpoints: [ReplicaID: Peer]
  /// The membership before the log (the creation record keeps it; see `RaftStorage`). Immutable.
  let bootstrapVoters: [ReplicaID]

  // Loop only.
  var raft: Raft
  /// What callers wait for in this group.
  var pending = PendingRequests()
  var announcedLeader: ReplicaID = 0
  var announcedTerm: Term = 0
  /// The index of the group's snapshot file: what the WAL may release up to.
  var durableSnapshotIndex: LogIndex = 0
  /// An automatic snapshot that failed is tried again from this applied index on.
  var nextSnapshotAttemptIndex: LogIndex = 0
  /// Looked up since the loop's last `LiveGroups.takeTurnGroups` (loop only).
  var looked = false

  init(id: GroupID, peers: [Peer], bootstrapVoters: [ReplicaID], stateMachine: any StateMachine, raft: Raft) {
    precondition(!bootstrapVoters.isEmpty, "group \(id): a group has bootstrap voters")
    self.id = id
    self.endpoints = Dictionary(peers.map { ($0.node.rawValue, $0) }, uniquingKeysWith: { _, last in last })
    self.bootstrapVoters = bootstrapVoters
    self.stateMachine = stateMachine
    self.raft = raft
    refreshView()
  }

  /// Any thread; must not hold `lock`.
  func peer(_ replica: ReplicaID) -> Peer? { replica == 0 ? nil : lock.withLock { endpoints[replica] } }

  /// Any thread; must not hold `lock`. Every endpoint the group knows, ordered by node: what the
  /// creation record restates.
  func knownPeers() -> [Peer] { lock.withLock { endpoints.values.sorted { $0.node < $1.node } } }

  /// Loop only; must not hold `lock`. Learns endpoints (a membership change's context).
  func learn(_ peers: [Peer]) {
    lock.withLock { for peer in peers { endpoints[peer.node.rawValue] = peer } }
  }

  /// Loop only. Runs `body` on the core in place. A getter called through the class property
  /// (`replica.raft.committed`) makes Swift copy the whole core first, retaining every buffer it
  /// holds: with 100 idle groups those copies were the loop's largest cost. Reads of the core
  /// that run per group per turn go through here.
  @inline(__always)
  func inspect<T>(_ body: (inout Raft) -> T) -> T { body(&raft) }

  /// Loop only. Publishes the core's current state to readers.
  func refreshView() {
    let fresh = inspect { raft in
      // `status` copies the progress table: only a leader has one worth showing.
      GroupView(
        role: raft.role, leader: raft.leader, term: raft.term, commitIndex: raft.committed,
        firstIndex: raft.firstIndex, lastIndex: raft.lastIndex, logBytes: raft.logBytes, quiesced: raft.isQuiesced,
        progress: raft.role == .leader ? raft.status.progress : [:], membership: raft.membership)
    }
    lock.withLock { view = fresh }
    viewQuiesced = fresh.quiesced
  }

  /// Loop only: what the published view says of quiescence, read without the lock (the loop is
  /// its only writer).
  private(set) var viewQuiesced = false

  /// The core is dropped (its node's storage ran out of space): the published view keeps what
  /// was applied, but leads nothing and knows no leader, so that no one is sent here to a leader
  /// that cannot write.
  func publishLeaderless() {
    lock.withLock {
      view.role = .follower
      view.leader = 0
      view.progress = [:]
    }
  }

  /// The error answered to a request that needs the leader, from the core's view.
  func leaderError(leader: ReplicaID) -> ConsensusError {
    leader == 0 ? .noLeader(id) : .notLeader(id, leader: peer(leader))
  }

  /// Must hold `lock`. The query's answer when `minIndex` is applied, else nil.
  func answer(_ query: [UInt8], ifAppliedAtLeast minIndex: UInt64) -> ReadResult? {
    guard appliedIndex >= minIndex else { return nil }
    return ReadResult(index: appliedIndex, response: stateMachine.query(query))
  }
}

/// The groups the loop runs, by id and in id order: a turn visits them in that order, so what it
/// writes and sends does not depend on a dictionary's hash seed, and one seed replays a whole
/// simulated run (`caucus-sim`). Loop only.
///
/// A turn visits only the groups that may need it (`takeTurnGroups`): those awake after the last
/// turn (not quiesced, or with requests waiting) and those looked up since (a message, request or
/// wake for them). With most groups quiesced, a turn's cost then follows the active groups, not
/// all of them: at ten thousand groups a pass over every one each tick was most of an idle node's CPU.
// @unchecked Sendable: loop only (see above); the class is handed to the loop thread once.
final class LiveGroups: @unchecked Sendable {
  private var byID: [GroupID: RaftGroup] = [:]
  /// Every group, sorted by id.
  private(set) var ordered: [RaftGroup] = []
  /// Groups awake after the last turn, sorted by id: every group that is not quiesced is here or
  /// in `looked`.
  private(set) var awake: [RaftGroup] = []
  /// Groups looked up since the last `takeTurnGroups` (each once: `RaftGroup.looked`).
  private var looked: [RaftGroup] = []

  var count: Int { byID.count }
  var isEmpty: Bool { byID.isEmpty }

  /// The group, which the next turn then visits.
  subscript(id: GroupID) -> RaftGroup? {
    guard let group = byID[id] else { return nil }
    mark(group)
    return group
  }

  /// The next turn visits `group` (something happened to it outside a lookup: a wake).
  func mark(_ group: RaftGroup) {
    guard !group.looked else { return }
    group.looked = true
    looked.append(group)
  }

  func insert(_ group: RaftGroup) {
    precondition(byID[group.id] == nil, "group \(group.id) is live already")
    byID[group.id] = group
    // Binary search: groups are created one after another, often thousands of them.
    var (low, high) = (0, ordered.count)
    while low < high {
      let middle = (low + high) / 2
      if ordered[middle].id < group.id { low = middle + 1 } else { high = middle }
    }
    ordered.insert(group, at: low)
    precondition(ordered.count == byID.count, "the order holds every group once")
    mark(group)
  }

  @discardableResult
  func remove(_ id: GroupID) -> RaftGroup? {
    guard let group = byID.removeValue(forKey: id) else { return nil }
    ordered.removeAll { $0.id == id }
    precondition(ordered.count == byID.count, "the order holds every group once")
    return group
  }

  /// The groups this turn visits, in id order: the awake ones and those looked up since the last
  /// turn, without the deleted ones. Lookups after this call count for the next turn.
  func takeTurnGroups() -> [RaftGroup] {
    looked.sort { $0.id < $1.id }
    var merged: [RaftGroup] = []
    merged.reserveCapacity(awake.count + looked.count)
    var (left, right) = (0, 0)
    while left < awake.count || right < looked.count {
      let next: RaftGroup
      if right == looked.count || (left < awake.count && awake[left].id < looked[right].id) {
        next = awake[left]
        left += 1
      } else if left == awake.count || looked[right].id < awake[left].id {
        next = looked[right]
        right += 1
      } else {
        // The same id twice: the group, or a deleted one and the group created in its place.
        next = byID[awake[left].id] === looked[right] ? looked[right] : awake[left]
        left += 1
        right += 1
      }
      if byID[next.id] === next { merged.append(next) }
    }
    for group in looked { group.looked = false }
    looked.removeAll(keepingCapacity: true)
    return merged
  }

  /// After a turn: the groups among those it visited that stay awake.
  func keepAwake(_ groups: [RaftGroup]) {
    precondition(zip(groups, groups.dropFirst()).allSatisfy { $0.id < $1.id }, "awake groups in id order")
    awake = groups
  }
}
