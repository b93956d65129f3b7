import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// Membership changes (addPeer, removePeer, changePeer) and leader transfers, driven at the leader.

extension RaftConsensus {
  // MARK: Membership changes

  /// Takes `request` as the group's membership change; it is checked against the membership in
  /// force when it is proposed (`plan`), which may be later than now.
  func beginMembershipChange(
    _ replica: RaftGroup, _ request: MembershipRequest, _ completion: @escaping ConsensusCompletion<Void>,
    _ turn: inout Turn
  ) {
    func refuse(_ error: ConsensusError) { turn.answers.append { completion(.failure(error)) } }
    guard replica.raft.role == .leader else { return refuse(replica.leaderError(leader: replica.raft.leader)) }
    // The core takes one change at a time; this one's steps would interleave with it.
    guard replica.pending.membershipChange == nil else { return refuse(.overloaded(retryAfterMs: 1_000)) }
    let deadline = clock.nowNanoseconds() + options.membershipChangeTimeoutMs * 1_000_000
    replica.pending.membershipChange = MembershipChange(stage: .proposing(request), deadline: deadline, completion: completion)
    settleMembershipChange(replica, now: clock.nowNanoseconds(), &turn)
  }

  /// What `request` takes from `membership`.
  enum MembershipPlan {
    case propose(ConfigChange, then: MembershipChange.Next)
    /// addPeer of a node that is a learner already (an earlier attempt): catch it up, promote.
    case resumeCatchUp(ReplicaID)
    /// Nothing to change.
    case done
    case refused(ConsensusError)
  }

  func plan(_ request: MembershipRequest, _ membership: ConfigState, group: GroupID) -> MembershipPlan {
    switch request {
    case .add(let peer):
      let node = peer.node.rawValue
      guard !membership.isVoter(node) else { return .refused(.peerAlreadyInGroup(peer.node, group)) }
      if membership.learners.contains(node) { return .resumeCatchUp(node) }
      return .propose(ConfigChange([.init(.addLearner, node)], context: RaftStorage.encodePeers([peer])), then: .catchUp(node))
    case .remove(let node):
      guard membership.allReplicas.contains(node.rawValue) else { return .refused(.peerNotInGroup(node, group)) }
      guard membership.voters != [node.rawValue] else {
        return .refused(.illegalPeerNumber(count: 0, reason: "node \(node) is the group's only voter"))
      }
      return .propose(ConfigChange([.init(.remove, node.rawValue)]), then: .finish)
    case .change(let peers):
      let wanted = Set(peers.map(\.node.rawValue))
      let current = Set(membership.voters + membership.votersOutgoing)
      guard !wanted.isDisjoint(with: current) else {
        return .refused(
          .illegalPeerNumber(
            count: peers.count, reason: "the new peers share no member with the current voters \(current.sorted())"))
      }
      let added = peers.filter { !current.contains($0.node.rawValue) }
      let removed = Set(membership.allReplicas).subtracting(wanted).sorted()
      // Wanted learners are among `added`: they become voters.
      let steps = added.map { ConfigChangeStep(.addVoter, $0.node.rawValue) } + removed.map { ConfigChangeStep(.remove, $0) }
      guard !steps.isEmpty else { return .done }
      return .propose(ConfigChange(steps, context: added.isEmpty ? [] : RaftStorage.encodePeers(added)), then: .finish)
    }
  }

  /// Moves the membership change of `replica` on as far as it can go now: to its next entry once
  /// one is applied, to the promotion once the learner caught up; answers it when it is done,
  /// when this node no longer leads, or at its deadline. Each pass moves one stage on, and there
  /// are at most three stages.
  func settleMembershipChange(_ replica: RaftGroup, now: UInt64, _ turn: inout Turn) {
    let stagesMax = 3
    for _ in 0..<stagesMax {
      guard let change = replica.pending.membershipChange else { return }
      func answer(_ result: Result<Void, ConsensusError>) {
        replica.pending.membershipChange = nil
        let completion = change.completion
        turn.answers.append { completion(result) }
      }
      let leaderError = replica.leaderError(leader: replica.raft.leader)
      switch change.stage {
      case .proposing(let request):
        guard replica.raft.role == .leader else { return answer(.failure(leaderError)) }
        // Planned against the membership in force now: an earlier change may have applied while
        // this one waited.
        switch plan(request, replica.raft.membership, group: replica.id) {
        case .refused(let error): return answer(.failure(error))
        case .done: return answer(.success(()))
        case .resumeCatchUp(let learner):
          replica.pending.membershipChange!.stage = .catchingUp(learner: learner, target: replica.raft.committed)
          continue
        case .propose(let configChange, let next):
          do {
            let index = try replica.raft.proposeConfigChange(configChange)
            replica.pending.membershipChange!.stage = .applying(index: index, term: replica.raft.term, then: next)
            logger.info(
              "membership change proposed",
              metadata: [
                "group": "\(replica.id)", "index": "\(index)",
                "steps": "\(configChange.steps.map { "\($0.kind) \($0.replica)" })",
              ])
          } catch .configChangePending {
            // A just-elected leader first applies its own entries: wait for them, not the caller.
            if now >= change.deadline { return answer(.failure(.timeout(indeterminate: false))) }
          } catch {
            return answer(.failure(proposalError(replica, error)))
          }
          return
        }
      case .applying(let index, let term, let next):
        guard replica.raft.applied >= index else {
          // Deposed before it applied: the next leader may still commit the entry, so its
          // outcome is unknown (a retry at the new leader resumes or reports it).
          if replica.raft.role != .leader || now >= change.deadline {
            return answer(.failure(.timeout(indeterminate: true)))
          }
          return
        }
        guard let appliedTerm = replica.raft.term(at: index) else {
          // Compacted into a snapshot (installed from another leader): which entry it was is gone.
          return answer(.failure(.timeout(indeterminate: true)))
        }
        // Another leader's entry took the slot: this change was not made.
        guard appliedTerm == term else { return answer(.failure(leaderError)) }
        switch next {
        case .finish:
          // changePeer: wait for the leader to leave the joint configuration as well.
          guard replica.raft.membership.isJoint else {
            logger.info(
              "membership changed", metadata: ["group": "\(replica.id)", "membership": "\(replica.raft.membership)"])
            return answer(.success(()))
          }
          // The joint configuration is in force: the change is made, and whichever node leads
          // leaves the joint configuration on its own (the core retries that every tick).
          if replica.raft.role != .leader {
            logger.info(
              "membership changed (joint; the next leader leaves it)",
              metadata: ["group": "\(replica.id)", "membership": "\(replica.raft.membership)"])
            return answer(.success(()))
          }
          if now >= change.deadline { return answer(.failure(.timeout(indeterminate: true))) }
          return
        case .catchUp(let learner):
          replica.pending.membershipChange!.stage = .catchingUp(learner: learner, target: replica.raft.committed)
        }
      case .catchingUp(let learner, let target):
        guard replica.raft.role == .leader else { return answer(.failure(leaderError)) }
        guard replica.raft.membership.learners.contains(learner) else {
          return answer(.failure(.invalidRequest("node \(learner) is no longer a learner of \(replica.id)")))
        }
        let match = replica.inspect { $0.status.progress[learner]?.match ?? 0 }
        guard match >= target else {
          if now >= change.deadline { return answer(.failure(.timeout(indeterminate: true))) }
          return
        }
        do {
          let context = replica.peer(learner).map { RaftStorage.encodePeers([$0]) } ?? []
          let index = try replica.raft.proposeConfigChange(ConfigChange([.init(.addVoter, learner)], context: context))
          replica.pending.membershipChange!.stage = .applying(index: index, term: replica.raft.term, then: .finish)
          logger.info(
            "learner caught up; promoting it",
            metadata: ["group": "\(replica.id)", "node": "\(learner)", "match": "\(match)", "index": "\(index)"])
        } catch {
          // `configChangePending` cannot happen (ours was applied); a transfer in progress or a
          // full uncommitted budget may: say so and let the caller retry, which resumes here.
          return answer(.failure(proposalError(replica, error)))
        }
        return
      }
    }
  }

  /// Answers the leader transfers of `replica` that finished (this node sees the target lead) or
  /// ran out of time.
  func settleTransfers(_ replica: RaftGroup, now: UInt64, _ turn: inout Turn) {
    let leader = replica.raft.leader
    replica.pending.transfers.removeAll { transfer in
      let completion = transfer.completion
      if leader == transfer.target {
        turn.answers.append { completion(.success(())) }
        return true
      }
      if now >= transfer.deadline {
        turn.answers.append { completion(.failure(.timeout(indeterminate: true))) }
        return true
      }
      return false
    }
  }

  func proposalError(_ replica: RaftGroup, _ error: ProposalError) -> ConsensusError {
    switch error {
    case .notLeader(let leader): return replica.leaderError(leader: leader)
    case .transferInProgress, .uncommittedBytesExceeded, .tooManyPendingReads: return .overloaded(retryAfterMs: 100)
    case .commandTooLarge(let bytes, let limit):
      return .invalidRequest("the command is \(bytes) bytes; a raft entry takes at most \(limit)")
    // Another change (or a new leader's first entry) must apply first: retry shortly.
    case .configChangePending: return .overloaded(retryAfterMs: 500)
    case .configChangeInvalid: return .invalidRequest(error.description)
    }
  }

}
