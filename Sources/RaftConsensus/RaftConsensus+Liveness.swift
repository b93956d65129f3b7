import Consensus
import RaftCore

// Node liveness for quiesced groups (`NodeLiveness`): who the peers are, and what a death or a
// return changes.

extension RaftConsensus {
  /// At a tick: refreshes the peer nodes when due, re-evaluates their liveness, and wakes the
  /// quiesced groups a change concerns — followers whose leader's node died (they forget it and
  /// elect another), and leaders with a replica on a node that came back (their heartbeats bring
  /// it up to date, or tell a restarted replica who leads before it campaigns).
  func checkLiveness(_ turn: inout Turn) {
    let sinceRefresh = ticksRun - livenessPeersRefreshedTick
    // A stale set waits an election timeout: a node that shares no group yet keeps sending (a
    // removed replica's) must not cost a pass over every group each tick.
    if sinceRefresh >= Self.livenessPeersRefreshTicks || (livenessPeersStale && sinceRefresh >= UInt64(options.electionTicks)) {
      refreshLivenessPeers()
    }
    let (died, revived) = liveness.update(peers: Set(livenessPeers.keys), now: turn.now)
    let lastHeard = liveness.lastHeard
    peerNodesLastHeard.withLock { $0 = lastHeard }
    guard !died.isEmpty || !revived.isEmpty else { return }
    logger.notice(
      "peer node liveness changed",
      metadata: ["died": "\(died)", "revived": "\(revived)", "timeoutTicks": "\(options.nodeLivenessTimeoutTicks)"])
    let diedSet = Set(died)
    let revivedSet = Set(revived)
    for replica in live.ordered where replica.inspect({ $0.isQuiesced }) {
      let (role, leader, members) = replica.inspect { ($0.role, $0.leader, $0.membership.allReplicas) }
      if role == .follower && diedSet.contains(leader) {
        replica.raft.wake(leaderLost: true)
        live.mark(replica)
        turn.wakesLeaderLost += 1
      } else if role == .leader && members.contains(where: revivedSet.contains) {
        replica.raft.wake(leaderLost: false)
        live.mark(replica)
      }
    }
  }

  /// How often the peer nodes are recomputed (a pass over every group), which drops the nodes no
  /// group shares any more. A new group's peers join at once (`addLivenessPeers`); a node not
  /// among them that sends a batch (a membership change made it a peer) makes it sooner.
  static let livenessPeersRefreshTicks: UInt64 = 100

  /// A group was created or recovered here: its peers are pinged from the next tick on.
  func addLivenessPeers(_ peers: [Peer]) {
    for peer in peers where peer.node != localPeer.node && livenessPeers[peer.node.rawValue] == nil {
      livenessPeers[peer.node.rawValue] = peer
    }
  }

  /// Every node some group shares with this one, with its endpoint (any group that has the node
  /// as a peer knows it). Endpoints already known are kept: a node's endpoint is fixed.
  func refreshLivenessPeers() {
    var nodes: Set<ReplicaID> = []
    for replica in live.ordered {
      replica.inspect { raft in
        for node in raft.membership.allReplicas where node != localPeer.node.rawValue { nodes.insert(node) }
      }
    }
    var peers: [ReplicaID: Peer] = [:]
    for node in nodes {
      if let known = livenessPeers[node] {
        peers[node] = known
      } else if let peer = live.ordered.lazy.compactMap({ $0.peer(node) }).first {
        peers[node] = peer
      }
    }
    livenessPeers = peers
    livenessPeersStale = false
    livenessPeersRefreshedTick = ticksRun
  }
}
