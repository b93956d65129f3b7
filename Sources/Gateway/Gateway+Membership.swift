import Consensus
import Directory
import HTTPServer

/// The membership routes (API.md "Groups and membership"). A node that does not lead the group
/// hands the request to the engine, which answers the leader error (or `groupNotFound`), and
/// `Exchange.fail` takes it to the leader. At the leader: create the joining replicas on the new
/// nodes first (`POST /v1/node/groups` with the group's bootstrap voters), then run the engine's
/// change, then delete the replicas of the removed nodes (best effort), then record the new
/// placement in the directory, then answer the group's status. A leader asked to remove itself
/// first hands leadership to another voter that stays, and the request follows it there: the
/// new leader removes it like any other node, and deletes its replica once the removal applied.
extension Gateway {
  /// How long a leader that removed itself waits for another node to take over before it deletes
  /// its own replica: until then the others may not know the removal committed, and may need this
  /// replica to learn it (it keeps replicating until the hand-over).
  static let removedLeaderHandOverWaitMs: UInt32 = 5_000
  static let removedLeaderPollMs: UInt32 = 50
  /// A removed peer whose replica could not be deleted (down, paused, cut off) is asked again
  /// this often, this many times, after the answer: a replica left behind knows no leader and
  /// keeps its node unready until it is deleted or the node rejoins.
  static let removedReplicaDeleteRetryMs: UInt32 = 1_000
  static let removedReplicaDeleteAttemptsMax = 120

  /// `POST /v1/groups/{group}/peers` `{peer}`.
  func addPeer(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let specification = try parsePeerSpecification(try exchange.jsonBody())
    resolvePeers([specification]) { [self] result in
      switch result {
      case .failure(let error): exchange.fail(error)
      case .success(let resolved):
        let peer = resolved[0]
        // A group record names at most groupPeersMax peers (changePeer checks its list likewise).
        if let status = engine.status(group), status.peers.count >= DirectoryRecords.groupPeersMax,
          !status.peers.contains(where: { $0.peer.node == peer.node })
        {
          return exchange.fail(
            .badRequest("\(group) has \(status.peers.count) peers; a group has at most \(DirectoryRecords.groupPeersMax)"))
        }
        prepareJoiners(group, [peer], exchange) { [self] in
          engine.addPeer(group, peer: peer) { [self] result in
            finishMembership(result, group, removed: [], exchange)
          }
        }
      }
    }
  }

  /// `DELETE /v1/groups/{group}/peers/{nodeId}`.
  func removePeer(_ group: GroupID, _ node: NodeID, _ exchange: Exchange) {
    // Its endpoint, while the membership still has it (only the leader's answer counts).
    let removed = engine.status(group)?.peers.first { $0.peer.node == node }.map(\.peer)
    handOverIfLeaving(group, staying: { $0 != node }, exchange) { [self] in
      engine.removePeer(group, node: node) { [self] result in
        finishMembership(result, group, removed: removed.map { [$0] } ?? [], exchange)
      }
    }
  }

  /// `PUT /v1/groups/{group}/peers` `{"peers":[...]}`.
  func changePeer(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let body = try exchange.jsonBody()
    guard let items = body["peers"]?.arrayValue else { throw .badRequest("the body needs \"peers\": an array of peers") }
    guard items.count <= DirectoryRecords.groupPeersMax else {
      throw .badRequest("\"peers\" names \(items.count) peers; the limit is \(DirectoryRecords.groupPeersMax)")
    }
    let specifications = try items.map { value throws(GatewayError) in try parsePeerSpecification(value) }
    guard Set(specifications.map(\.node)).count == specifications.count else { throw .badRequest("\"peers\" names a node twice") }
    resolvePeers(specifications) { [self] result in
      switch result {
      case .failure(let error): exchange.fail(error)
      case .success(let peers):
        let old = engine.status(group)
        // Refused here before any replica is created for nothing; the engine checks again.
        if let old, old.role == .leader {
          let voters = Set(old.peers.filter { !$0.learner }.map(\.peer.node))
          if peers.isEmpty || voters.isDisjoint(with: peers.map(\.node)) {
            return exchange.fail(
              .consensus(.illegalPeerNumber(count: peers.count, reason: "the new peers share no member with the current voters")))
          }
        }
        let staying = Set(peers.map(\.node))
        prepareJoiners(group, peers, exchange) { [self] in
          handOverIfLeaving(group, staying: { staying.contains($0) }, exchange) { [self] in
            changePeerAtLeader(group, peers, old, exchange)
          }
        }
      }
    }
  }

  private func changePeerAtLeader(
    _ group: GroupID, _ peers: [Peer], _ old: GroupStatus?, _ exchange: Exchange
  ) {
          engine.changePeer(group, peers: peers) { [self] result in
            let removed = (old?.peers ?? []).map(\.peer).filter { member in !peers.contains { $0.node == member.node } }
            finishMembership(result, group, removed: removed, exchange)
          }
  }

  /// At a leader that the change removes: hands leadership to the most caught-up voter that
  /// stays, then `then` (where the engine answers `notLeader`, and the request goes to the new
  /// leader). A leader that deleted its replica right after applying its own removal could strand
  /// the others: they may not know yet that the removal committed, and may still count its vote.
  private func handOverIfLeaving(
    _ group: GroupID, staying: @escaping @Sendable (NodeID) -> Bool, _ exchange: Exchange,
    then: @escaping @Sendable () -> Void
  ) {
    let local = engine.localPeer.node
    guard let status = engine.status(group), status.role == .leader, !staying(local) else { return then() }
    let candidates = status.peers.filter { !$0.learner && $0.peer.node != local && staying($0.peer.node) }
    // None: the engine refuses the change (no voter would be left) or the change makes one.
    guard let target = candidates.max(by: { $0.matchIndex < $1.matchIndex }) else { return then() }
    engine.transferLeader(group, to: target.peer.node) { result in
      switch result {
      case .failure(let error): exchange.fail(.consensus(error))
      case .success: then()
      }
    }
  }

  /// At the leader: creates a joining replica on every candidate that is not a member yet, then
  /// `then`. Elsewhere `then` at once: the engine answers the leader error and the request goes
  /// to the leader. A node that already hosts the group (`409 group_already_exists`, a retry)
  /// counts as done; a joiner's definite refusal (a 4xx such as `409 group_limit_reached`) is the
  /// answer, and the membership is not changed.
  private func prepareJoiners(
    _ group: GroupID, _ candidates: [Peer], _ exchange: Exchange, then: @escaping @Sendable () -> Void
  ) {
    guard let status = engine.status(group), status.role == .leader, let forwarder = configuration.forwarder else {
      return then()
    }
    let members = status.peers.map(\.peer)
    let joiners = candidates.filter { candidate in
      candidate.node != engine.localPeer.node && !members.contains { $0.node == candidate.node }
    }
    guard !joiners.isEmpty else { return then() }
    // A replica of an initial voter starts from the bootstrap configuration, in which it votes:
    // re-created with an empty log, two of them could elect each other and overwrite the group.
    // Such a node comes back under a new node id.
    if let initial = joiners.first(where: { status.bootstrapVoters.contains($0.node) }) {
      return exchange.fail(
        .consensus(
          .illegalPeerNumber(
            count: candidates.count,
            reason:
              "node \(initial.node) was one of \(group)'s initial voters and cannot rejoin it; add its replacement under a new node id")))
    }
    let body = Gateway.groupDocument(group, members + joiners, bootstrapVoters: status.bootstrapVoters)
    fanOut(joiners, exchange, local: { done in done(ReplicaCreation.created) }, remote: { peer, done in
      forwarder.groupOperation("POST", on: peer, target: "/v1/node/groups", body: body) { status, answer in
        done(ReplicaCreation(node: peer.node, status: status, body: answer))
      }
    }) { outcomes in
      // Nothing changed in the group yet: a joiner's refusal (its group limit) is the answer.
      let undone = outcomes.filter { !$0.value.isDone }.sorted { $0.key < $1.key }
      if let refusal = undone.lazy.compactMap(\.value.refusal).first {
        return exchange.fail(.explained(refusal, note: "; the membership of \(group) was not changed"), group: group)
      }
      guard undone.isEmpty else {
        return exchange.fail(
          .consensus(
            .storage("the joining replica of \(group) was not created on node(s) \(Gateway.list(undone.map(\.key))); retry the request")))
      }
      then()
    }
  }

  /// After the engine's answer: on success, delete the removed nodes' replicas (best effort),
  /// record the new placement, and answer the status as of the change.
  private func finishMembership(
    _ result: Result<Void, ConsensusError>, _ group: GroupID, removed: [Peer], _ exchange: Exchange
  ) {
    // Failures (the leader error among them, which forwards) and answers without a status.
    guard case .success = result, let status = engine.status(group) else {
      return answerMembership(result, group, exchange)
    }
    let members = status.peers.map(\.peer)
    let answer: @Sendable () -> Void = { [self] in
      recordInDirectory(group, members) { [self] in
        exchange.respond(json: statusDocument(status), headers: groupHeaders(status))
      }
    }
    guard !removed.isEmpty, let forwarder = configuration.forwarder else { return answer() }
    fanOut(removed, exchange, local: { [self] done in
      deleteRemovedLocally(group, waitedMs: 0) { done(200) }
    }, remote: { [self] peer, done in
      // The end of this leader's log, the removal applied (a leader's last entry is of its term).
      let logEnd = "ifLogEndsAtIndex=\(status.snapshotIndex + status.logEntries)&ifLogEndsAtTerm=\(status.term)"
      let target = "/v1/node/groups/\(group)?\(logEnd)"
      forwarder.groupOperation("DELETE", on: peer, target: target, body: []) { [self] deleted, _ in
        if ![200, 404, 409].contains(deleted) { deleteRemovedReplica(target, group, on: peer, forwarder, attempt: 1) }
        done(deleted)
      }
    }) { _ in answer() }
  }

  /// Asks a removed peer again, in the background, to delete its replica of `group` (`target`
  /// carries the end of the leader's log once the removal applied), until it has (200), never had
  /// one (404), or is a member again (409: its log goes further), or the attempts run out (then
  /// says how to do it by hand).
  private func deleteRemovedReplica(
    _ target: String, _ group: GroupID, on peer: Peer, _ forwarder: LeaderForwarder, attempt: Int
  ) {
    guard attempt < Gateway.removedReplicaDeleteAttemptsMax else {
      return logger.warning(
        "the replica of a removed peer was not deleted; delete it with DELETE /v1/node/groups/{group} on that node",
        metadata: ["group": "\(group)", "peer": "\(peer.node)", "attempts": "\(attempt)"])
    }
    deadlines.after(delayMs: Gateway.removedReplicaDeleteRetryMs) { [self] in
      // A member again as this node sees it: stop (the bound protects it anyway).
      if engine.status(group)?.peers.contains(where: { $0.peer.node == peer.node }) == true { return }
      forwarder.groupOperation("DELETE", on: peer, target: target, body: []) { [self] status, _ in
        if ![200, 404, 409].contains(status) { deleteRemovedReplica(target, group, on: peer, forwarder, attempt: attempt + 1) }
      }
    }
  }

  /// This node removed itself: deletes its replica once another node leads (the core hands
  /// leadership over), or leaves it in place after `removedLeaderHandOverWaitMs` and says so.
  private func deleteRemovedLocally(_ group: GroupID, waitedMs: UInt32, then: @escaping @Sendable () -> Void) {
    let leader = engine.leader(group)?.node
    guard leader == nil || leader == engine.localPeer.node else {
      return engine.deletePeer(group) { [self] result in
        if case .failure(let error) = result {
          logger.warning(
            "deleting this node's removed replica failed", metadata: ["group": "\(group)", "error": "\(error)"])
        }
        then()
      }
    }
    guard waitedMs < Gateway.removedLeaderHandOverWaitMs else {
      logger.warning(
        "no other node took over the group this node left; its replica stays until DELETE /v1/node/groups/{group}",
        metadata: ["group": "\(group)"])
      return then()
    }
    deadlines.after(delayMs: Gateway.removedLeaderPollMs) { [self] in
      deleteRemovedLocally(group, waitedMs: waitedMs + Gateway.removedLeaderPollMs, then: then)
    }
  }
}
