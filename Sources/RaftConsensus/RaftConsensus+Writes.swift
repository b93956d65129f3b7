import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// Writes: proposals at the leader, writes forwarded to it by followers, and the bookkeeping
// that answers every waiting request exactly once.

extension RaftConsensus {
  /// Proposes `command` in `replica` and waits for its index to apply; a replica that does not
  /// lead answers the core's refusal.
  func propose(
    _ replica: RaftGroup, _ command: [UInt8], deadline: UInt64, _ completion: @escaping ConsensusCompletion<WriteResult>,
    _ turn: inout Turn
  ) {
    do {
      let index = try replica.raft.propose(command)
      if let overwritten = replica.pending.proposals[index] {
        // Our earlier entry at this index was truncated while we were not the leader. Other
        // replicas may still hold it, and a later leader that has it could still commit it
        // (Raft paper Figure 8): its outcome is unknown, not a definite failure.
        let completion = overwritten.completion
        answerWrite(&turn, bytes: overwritten.bytes) { completion(.failure(.timeout(indeterminate: true))) }
      }
      replica.pending.proposals[index] = Proposal(
        term: replica.raft.term, bytes: command.count, deadline: deadline, completion: completion)
    } catch {
      let answer = proposalError(replica, error)
      answerWrite(&turn, bytes: command.count) { completion(.failure(answer)) }
    }
  }

  // MARK: Forwarded writes

  /// A write at this node: handed to the leader in this turn's early batch when another node is
  /// known to lead, else proposed here (which answers `notLeader`/`noLeader` when this node does
  /// not lead either: the write never left it).
  func forward(
    _ replica: RaftGroup, _ command: [UInt8], deadline: UInt64, _ completion: @escaping ConsensusCompletion<WriteResult>,
    _ turn: inout Turn, heldFor: ReplicaID = 0
  ) {
    // A held write whose leader is no longer known (an election started while it waited) goes
    // where it would have gone at once: that node takes it if it still leads, else says why not.
    let leader = replica.raft.leader == 0 ? heldFor : replica.raft.leader
    guard replica.raft.role != .leader, leader != localPeer.node.rawValue, replica.peer(leader) != nil else {
      return propose(replica, command, deadline: deadline, completion, &turn)
    }
    let limit = replica.raft.config.maxCommandBytes
    guard command.count <= limit else {
      // The leader would refuse it: say why here, with the same words.
      let answer = proposalError(replica, .commandTooLarge(bytes: command.count, limit: limit))
      return answerWrite(&turn, bytes: command.count) { completion(.failure(answer)) }
    }
    nextForwardRequestID += 1
    let write = ForwardedWrite(
      requestID: nextForwardRequestID, leader: leader, bytes: command.count, deadline: deadline, completion: completion)
    precondition(replica.pending.forwardsAwaitingAcceptance[write.requestID] == nil, "request ids are unique")
    replica.pending.forwardsAwaitingAcceptance[write.requestID] = write
    forwardsWaiting += 1
    turn.forwards[leader, default: []].append(
      ForwardedProposal(group: replica.id.packed, requestID: write.requestID, body: .proposal(data: command)))
  }

  /// One forward from `node`: as the leader, a proposal to take; as a follower, the leader's
  /// answer to one of ours.
  func handle(_ forward: ForwardedProposal, from node: ReplicaID, _ turn: inout Turn) {
    let replica = GroupID(packed: forward.group).flatMap { live[$0] }
    switch forward.body {
    case .proposal(let command):
      if let repeated = forwardWindow.answer(from: node, requestID: forward.requestID) {
        // The same request again (a duplicated batch): the first answer, nothing appended.
        turn.forwards[node, default: []].append(
          ForwardedProposal(group: forward.group, requestID: forward.requestID, body: repeated))
        return
      }
      func answer(_ body: ForwardedProposal.Body) {
        forwardWindow.remember(from: node, requestID: forward.requestID, answer: body)
        turn.forwards[node, default: []].append(
          ForwardedProposal(group: forward.group, requestID: forward.requestID, body: body))
      }
      guard let replica else {
        turn.forwardCounts.refusedForPeers += 1
        return answer(.refused(.groupNotFound, leaderHint: 0))
      }
      // Only a member may propose (and only a member's endpoint is known to answer it).
      guard node != localPeer.node.rawValue, replica.peer(node) != nil else {
        turn.forwardCounts.refusedForPeers += 1
        return
      }
      // The entry needs no completion here, but its bytes sit in this node's log: it takes what
      // is left of the pending-write limits this turn. The core's uncommitted-bytes limit bounds
      // what all turns together append before a commit.
      if turn.forwardCapacity == nil {
        turn.forwardCapacity = state.withLock {
          (options.pendingWritesMax - writesOutstanding, options.pendingWriteBytesMax - writeBytesOutstanding)
        }
      }
      guard let capacity = turn.forwardCapacity, capacity.writes >= 1, capacity.bytes >= command.count else {
        turn.forwardCounts.refusedForPeers += 1
        return answer(.refused(.overloaded, leaderHint: 0))
      }
      do {
        let index = try replica.raft.propose(command)
        turn.forwardCapacity = (capacity.writes - 1, capacity.bytes - command.count)
        turn.forwardCounts.proposedForPeers += 1
        answer(.accepted(index: index, term: replica.raft.term))
      } catch {
        turn.forwardCounts.refusedForPeers += 1
        let (refusal, leaderHint) = forwardRefusal(proposalError(replica, error))
        answer(.refused(refusal, leaderHint: leaderHint))
      }
    case .accepted(let index, let term):
      // Unknown: answered already (deadline, group deleted) or not ours.
      guard let replica, let write = replica.pending.forwardsAwaitingAcceptance[forward.requestID], write.leader == node else {
        return
      }
      replica.pending.forwardsAwaitingAcceptance[forward.requestID] = nil
      turn.forwardCounts.accepted += 1
      guard index > replica.appliedIndex else {
        // Applied before the answer came (a later batch overtook this one). Log Matching tells
        // another write apart; this one's outcome is no longer at hand.
        let overwritten = replica.raft.term(at: index).map { $0 != term } ?? false
        return answerForward(write, .failure(overwritten ? .noLeader(replica.id) : .timeout(indeterminate: true)), &turn)
      }
      replica.pending.forwardsAwaitingApply[index, default: []].append((term, write))
    case .refused(let refusal, let leaderHint):
      guard let replica, let write = replica.pending.forwardsAwaitingAcceptance[forward.requestID], write.leader == node else {
        return
      }
      replica.pending.forwardsAwaitingAcceptance[forward.requestID] = nil
      turn.forwardCounts.refused += 1
      let answer: ConsensusError
      switch refusal {
      case .notLeader:
        // A hint naming this node is stale news of an election: wait for the leader to show.
        answer = proposalError(replica, .notLeader(leader: leaderHint == localPeer.node.rawValue ? 0 : leaderHint))
      case .overloaded: answer = .overloaded(retryAfterMs: 100)
      case .commandTooLarge:
        answer = proposalError(replica, .commandTooLarge(bytes: write.bytes, limit: replica.raft.config.maxCommandBytes))
      // The node we took for the leader has no replica (deleted, or not created yet).
      case .groupNotFound: answer = .noLeader(replica.id)
      }
      answerForward(write, .failure(answer), &turn)
    }
  }

  /// How a leader tells a follower why it did not take its forward: `proposalError`'s answer in
  /// the wire's terms.
  func forwardRefusal(_ error: ConsensusError) -> (ForwardRefusal, ReplicaID) {
    switch error {
    case .notLeader(_, let leader): return (.notLeader, leader?.node.rawValue ?? 0)
    case .noLeader: return (.notLeader, 0)
    case .overloaded: return (.overloaded, 0)
    case .invalidRequest: return (.commandTooLarge, 0)
    default: preconditionFailure("proposalError answers a command proposal with \(error)")
    }
  }

  /// Answers a forwarded write, taken out of whichever collection held it.
  func answerForward(_ write: ForwardedWrite, _ result: Result<WriteResult, ConsensusError>, _ turn: inout Turn) {
    precondition(forwardsWaiting > 0, "a forwarded write is answered once")
    forwardsWaiting -= 1
    let completion = write.completion
    answerWrite(&turn, bytes: write.bytes) { completion(result) }
  }

  /// Answers the forwarded writes waiting for `index`, which `replica` just applied with `term`.
  func settleForwards(
    _ replica: RaftGroup, index: LogIndex, term: Term, response: [UInt8], _ turn: inout Turn
  ) {
    guard let waiting = replica.pending.forwardsAwaitingApply.removeValue(forKey: index) else { return }
    for (acceptedTerm, write) in waiting {
      if acceptedTerm == term {
        turn.writesCommitted += 1
        answerForward(write, .success(WriteResult(index: index, response: response)), &turn)
      } else {
        // Another entry holds the index for good (it is applied): this write never will be.
        answerForward(write, .failure(.noLeader(replica.id)), &turn)
      }
    }
  }

  /// Sends again, to whoever leads now, what the transport dropped last turn before it left.
  func resendUnsentForwards(_ turn: inout Turn) {
    for (node, answers) in forwardAnswersUnsent.sorted(by: { $0.key < $1.key }) {
      turn.forwards[node, default: []].append(contentsOf: answers)
    }
    forwardAnswersUnsent = [:]
    guard !groupsWithUnsentForwards.isEmpty else { return }
    let ids = groupsWithUnsentForwards
    groupsWithUnsentForwards = []
    for id in ids.sorted() {
      guard let replica = live[id] else { continue }  // deleted: `failAllWaiting` answered them
      let unsent = replica.pending.forwardsUnsent
      replica.pending.forwardsUnsent = []
      let now = clock.nowNanoseconds()
      for write in unsent {
        forwardsWaiting -= 1  // `forward` counts it again if it goes out
        guard write.deadline > now else {
          let completion = write.completion
          // It never left this node: certainly not written.
          answerWrite(&turn, bytes: write.command.count) { completion(.failure(.timeout(indeterminate: false))) }
          continue
        }
        forward(replica, write.command, deadline: write.deadline, write.completion, &turn, heldFor: write.heldFor)
      }
    }
  }

  /// The transport's word that a batch with forwards never reached `node` (any thread).
  func undelivered(_ forwards: ArraySlice<ForwardedProposal>, to node: ReplicaID) {
    state.withLock {
      guard phase == .running, failure == nil else { return }  // stopping answers every waiter
      undeliveredForwards.append((node, forwards))
    }
  }

  /// A batch never reached `node`: keep its forwards for the next tick. Our writes go back to
  /// unsent (nothing can have reached the leader); answers to other nodes wait beside them, up
  /// to a bound.
  func keepUnsent(_ forwards: ArraySlice<ForwardedProposal>, to node: ReplicaID, _ turn: inout Turn) {
    for forward in forwards {
      guard case .proposal(let command) = forward.body else {
        if forwardAnswersUnsent[node, default: []].count < WireLimits.forwardsPerBatchMax {
          forwardAnswersUnsent[node, default: []].append(forward)
        }
        continue
      }
      if takeBack(forward, command, heldFor: 0) { turn.forwardCounts.undelivered += 1 }
    }
  }

  /// Our writes for a leader that owes us answers: back to unsent, forwarded again next turn
  /// (to whoever leads then), so they leave with a later batch.
  func hold(_ proposals: [ForwardedProposal], for node: ReplicaID, _ turn: inout Turn) {
    for forward in proposals {
      guard case .proposal(let command) = forward.body else { preconditionFailure("only proposals are held") }
      if takeBack(forward, command, heldFor: node) { turn.forwardCounts.held += 1 }
    }
  }

  /// Moves one of our forwarded writes that did not leave this node back to unsent. False when
  /// it is gone: its group was deleted after it was queued this turn (and answered then).
  func takeBack(_ forward: ForwardedProposal, _ command: [UInt8], heldFor: ReplicaID) -> Bool {
    guard let id = GroupID(packed: forward.group), let replica = live[id],
      let write = replica.pending.forwardsAwaitingAcceptance.removeValue(forKey: forward.requestID)
    else { return false }
    replica.pending.forwardsUnsent.append(
      UnsentWrite(command: command, deadline: write.deadline, completion: write.completion, heldFor: heldFor))
    groupsWithUnsentForwards.insert(id)
    return true
  }

  func answerWrite(_ turn: inout Turn, bytes: Int, _ answer: @escaping @Sendable () -> Void) {
    turn.writesAnswered += 1
    turn.writeBytesAnswered += bytes
    turn.answers.append(answer)
  }

  func answerRead(_ turn: inout Turn, _ answer: @escaping @Sendable () -> Void) {
    turn.readsAnswered += 1
    turn.answers.append(answer)
  }

  /// Fails every write and read waiting in `replica` (deleted, or the engine is stopping).
  func failAllWaiting(_ replica: RaftGroup, _ error: ConsensusError, _ turn: inout Turn) {
    deliver(replica.pending.failAll(error), &turn)
  }

  /// Hands answers taken out of a group's pending requests to the turn, counting what they
  /// release of the outstanding-work limits.
  func deliver(_ answers: [PendingRequests.Answer], _ turn: inout Turn) {
    for answer in answers {
      switch answer {
      case .write(let completion, let result, let bytes):
        answerWrite(&turn, bytes: bytes) { completion(result) }
      case .forward(let write, let result):
        answerForward(write, result, &turn)
      case .unsentForward(let unsent, let error):
        precondition(forwardsWaiting > 0, "a forwarded write is answered once")
        forwardsWaiting -= 1
        let completion = unsent.completion
        answerWrite(&turn, bytes: unsent.command.count) { completion(.failure(error)) }
      case .read(let read, let result):
        answerRead(&turn) { read.completion(result) }
      case .snapshot(let completion, let result):
        turn.answers.append { completion(result) }
      case .control(let completion, let result):
        turn.answers.append { completion(result) }
      }
    }
  }

  func expireDeadlines(_ groups: [RaftGroup], now: UInt64, _ turn: inout Turn) {
    for replica in groups {
      if !replica.pending.isEmpty { deliver(replica.pending.expire(now: now), &turn) }
      if !replica.pending.transfers.isEmpty { settleTransfers(replica, now: now, &turn) }
      // Also how a learner's catch-up is noticed: its acknowledgements need not make a Ready.
      if replica.pending.membershipChange != nil { settleMembershipChange(replica, now: now, &turn) }
    }
  }

}
