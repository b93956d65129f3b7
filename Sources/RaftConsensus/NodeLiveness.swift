import RaftCore

/// Node-level liveness: which peer nodes this node heard from lately (CockroachDB's node liveness,
/// in miniature). A quiesced group sends no heartbeats, so its followers cannot tell a dead leader
/// from an idle one by the group's own messages; they go by its node instead. Every node sends
/// each peer node it shares a group with one batch per tick (`RaftConsensus.livenessPings`: an
/// empty one when it has nothing else for it), so the cost is one message per node pair and tick
/// whatever the number of groups. A peer not heard from for `timeoutNanoseconds` is dead. Loop only.
struct NodeLiveness {
  /// Silence after which a peer node counts as dead.
  let timeoutNanoseconds: UInt64
  /// When each peer node was last heard from (or first became a peer: a grace period).
  private var lastHeardNanoseconds: [ReplicaID: UInt64] = [:]
  /// Peers dead as of the last `update`.
  private(set) var dead: Set<ReplicaID> = []

  init(timeoutNanoseconds: UInt64) {
    precondition(timeoutNanoseconds > 0, "a liveness timeout")
    self.timeoutNanoseconds = timeoutNanoseconds
  }

  /// A batch from `node` arrived.
  mutating func heard(_ node: ReplicaID, at now: UInt64) {
    lastHeardNanoseconds[node] = max(lastHeardNanoseconds[node] ?? 0, now)
  }

  func isDead(_ node: ReplicaID) -> Bool { dead.contains(node) }

  /// When each peer node was last heard from (its first becoming a peer, before anything came).
  var lastHeard: [ReplicaID: UInt64] { lastHeardNanoseconds }

  /// Re-evaluates every peer at `now` (a new peer starts live) and forgets nodes no longer peers.
  /// Returns the nodes that died and those that came back since the last update, in id order.
  mutating func update(peers: Set<ReplicaID>, now: UInt64) -> (died: [ReplicaID], revived: [ReplicaID]) {
    for node in Array(lastHeardNanoseconds.keys) where !peers.contains(node) { lastHeardNanoseconds[node] = nil }
    dead.formIntersection(peers)
    var died: [ReplicaID] = []
    var revived: [ReplicaID] = []
    for node in peers.sorted() {
      let heard = lastHeardNanoseconds[node] ?? now
      lastHeardNanoseconds[node] = heard
      let silent = now > heard && now - heard >= timeoutNanoseconds
      if silent && !dead.contains(node) {
        dead.insert(node)
        died.append(node)
      } else if !silent && dead.contains(node) {
        dead.remove(node)
        revived.append(node)
      }
    }
    return (died, revived)
  }
}
