import Consensus
import Logging
import Platform
import RaftCore
import WriteAheadLog

// Applying committed entries and snapshots, and answering what waited for them.

extension RaftConsensus {
  /// Steps 4–5 of the Ready contract for one group: apply, answer writes, serve read indexes.
  func apply(_ replica: RaftGroup, _ ready: Ready, _ turn: inout Turn) {
    if let snapshot = ready.snapshot {
      do {
        // The snapshot replaced the changes whose contexts carried the endpoints of the members
        // they added: learn them from it (merged: endpoints known here stay), before `advance`
        // makes the core send to those members.
        let (peers, machine) = try RaftStorage.decodeSnapshotPayload(snapshot.data, group: replica.id)
        replica.learn(peers)
        try replica.lock.withLock {
          try replica.stateMachine.restore(snapshot: machine)
          replica.appliedIndex = snapshot.index
        }
      } catch {
        // The leader built the payload with the same encoder and its snapshot passed its own
        // state machine; a refusal here is a bug, and going on would diverge from the group.
        preconditionFailure("group \(replica.id): the leader's snapshot at \(snapshot.index) does not install: \(error)")
      }
      replica.durableSnapshotIndex = snapshot.index
      replica.nextSnapshotAttemptIndex = snapshot.index
      turn.snapshotsInstalled += 1
      // Writes proposed here up to the snapshot: whether they made it is not known here.
      for (index, proposal) in replica.pending.proposals.sorted(by: { $0.key < $1.key }) where index <= snapshot.index {
        replica.pending.proposals[index] = nil
        let completion = proposal.completion
        answerWrite(&turn, bytes: proposal.bytes) { completion(.failure(.timeout(indeterminate: true))) }
      }
      for (index, waiting) in replica.pending.forwardsAwaitingApply.sorted(by: { $0.key < $1.key }) where index <= snapshot.index {
        replica.pending.forwardsAwaitingApply[index] = nil
        for (_, write) in waiting { answerForward(write, .failure(.timeout(indeterminate: true)), &turn) }
      }
      logger.info("snapshot installed", metadata: ["group": "\(replica.id)", "index": "\(snapshot.index)"])
    }
    if !ready.committedEntries.isEmpty {
      turn.entriesApplied += ready.committedEntries.count
      var responses: [(LogIndex, Term, [UInt8])] = []
      replica.lock.withLock {
        for entry in ready.committedEntries {
          precondition(entry.index == replica.appliedIndex + 1, "group \(replica.id): entries apply in order")
          replica.appliedIndex = entry.index
          // A leader's no-op (empty) and membership entries are not commands.
          guard entry.kind == .normal, !entry.data.isEmpty else {
            responses.append((entry.index, entry.term, []))
            continue
          }
          responses.append((entry.index, entry.term, replica.stateMachine.apply(index: entry.index, command: entry.data)))
        }
      }
      for entry in ready.committedEntries where entry.kind == .configChange { learnEndpoints(replica, entry) }
      for (index, term, response) in responses {
        if !replica.pending.forwardsAwaitingApply.isEmpty {
          settleForwards(replica, index: index, term: term, response: response, &turn)
        }
        guard let proposal = replica.pending.proposals.removeValue(forKey: index) else { continue }
        let completion = proposal.completion
        if proposal.term == term {
          turn.writesCommitted += 1
          answerWrite(&turn, bytes: proposal.bytes) { completion(.success(WriteResult(index: index, response: response))) }
        } else {
          // Another leader's entry took the slot: this write was not applied and never will be.
          let answer = replica.leaderError(leader: ready.leader)
          answerWrite(&turn, bytes: proposal.bytes) { completion(.failure(answer)) }
        }
      }
    }
    for readState in ready.readStates {
      guard let read = replica.pending.readsAwaitingIndex.removeValue(forKey: readState.context) else { continue }
      replica.pending.readsAwaitingApply.append((readState.index, read))
    }
    if ready.role != .leader {
      // The core drops unconfirmed reads when it loses leadership.
      let answer = replica.leaderError(leader: ready.leader)
      for (_, read) in replica.pending.readsAwaitingIndex.sorted(by: { $0.key < $1.key }) {
        answerRead(&turn) { read.completion(.failure(answer)) }
      }
      replica.pending.readsAwaitingIndex = [:]
      // Writes proposed while leading stay unknown until a leader commits or overwrites their
      // index. That normally takes an election or two; without a quorum it never happens, so
      // they are answered `timeout(indeterminate: true)` after two election timeouts rather
      // than at the full proposal timeout.
      if !replica.pending.proposals.isEmpty {
        let cap = clock.nowNanoseconds() + 2 * UInt64(options.electionTicks) * tickNanoseconds
        for (index, proposal) in replica.pending.proposals where proposal.deadline > cap {
          replica.pending.proposals[index]!.deadline = cap
        }
      }
    }
    if !replica.pending.readsAwaitingApply.isEmpty {
      var served: [(LinearizableRead, ReadResult)] = []
      replica.lock.withLock {
        replica.pending.readsAwaitingApply.removeAll { waiting in
          guard let answer = replica.answer(waiting.read.query, ifAppliedAtLeast: waiting.index) else { return false }
          served.append((waiting.read, answer))
          return true
        }
      }
      for (read, answer) in served { answerRead(&turn) { read.completion(.success(answer)) } }
    }
    if ready.leader != replica.announcedLeader || ready.term != replica.announcedTerm {
      if ready.leader != replica.announcedLeader {
        logger.info(
          "leader changed",
          metadata: ["group": "\(replica.id)", "leader": "\(ready.leader)", "term": "\(ready.term)"])
      }
      replica.announcedLeader = ready.leader
      replica.announcedTerm = ready.term
      let leader = ready.leader == 0 ? nil : NodeID(ready.leader)
      replica.lock.withLock { replica.stateMachine.leaderChanged(to: leader, term: ready.term) }
    }
  }

  /// A membership change is applied: learn the endpoints its context carries (before `advance`
  /// makes the core send to the replicas it added).
  func learnEndpoints(_ replica: RaftGroup, _ entry: Entry) {
    let change: ConfigChange
    do {
      change = try WireCodec.decodeConfigChange(entry.data)
    } catch {
      preconditionFailure("group \(replica.id): committed configuration change at \(entry.index) does not decode: \(error)")
    }
    if !change.context.isEmpty {
      do {
        replica.learn(try RaftStorage.decodeContextPeers(change.context, group: replica.id))
      } catch {
        // Only our hosts write contexts; a malformed one leaves the members' endpoints unknown
        // here (messages to them are not sent), which an operator must see.
        logger.error(
          "a membership change carries a malformed endpoint list",
          metadata: ["group": "\(replica.id)", "index": "\(entry.index)", "error": "\(error)"])
      }
    }
    logger.info(
      "membership change applied",
      metadata: [
        "group": "\(replica.id)", "index": "\(entry.index)",
        "steps": "\(change.isLeaveJoint ? ["leave joint"] : change.steps.map { "\($0.kind) \($0.replica)" })",
      ])
  }

}
