import Consensus
import RaftCore

/// Everything callers wait for in one group, in one place: writes proposed here, writes
/// forwarded to the leader (unanswered, appended there, or not yet sent), linearizable reads
/// (waiting for a read index, then for it to apply), snapshot requests, leader transfers and the
/// membership change in progress. Every request here is answered exactly once: by the host when
/// what it waits for happens, or by `failAll`/`expire`, which take requests out and return the
/// answers for the host to deliver (`RaftConsensus.deliver`), so the counting of outstanding
/// work stays in one place. Loop only.
struct PendingRequests {
  var proposals: [LogIndex: Proposal] = [:]
  var readsAwaitingIndex: [UInt64: LinearizableRead] = [:]
  var readsAwaitingApply: [(index: LogIndex, read: LinearizableRead)] = []
  var snapshotRequests: [ConsensusCompletion<SnapshotInfo>] = []
  var transfers: [(target: ReplicaID, deadline: UInt64, completion: ConsensusCompletion<Void>)] = []
  /// The membership change in progress, at most one: the core takes one at a time.
  var membershipChange: MembershipChange?
  /// Writes forwarded to the leader that it has not answered yet, by request id.
  var forwardsAwaitingAcceptance: [UInt64: ForwardedWrite] = [:]
  /// Writes the leader appended, by index, each with the term it was appended in. An index may
  /// hold several when leaders changed: at most one of them (the applied entry's term) is written.
  var forwardsAwaitingApply: [LogIndex: [(term: Term, write: ForwardedWrite)]] = [:]
  var forwardsUnsent: [UnsentWrite] = []

  /// An answer taken out of the pending requests, for the host to deliver.
  enum Answer {
    case write(ConsensusCompletion<WriteResult>, Result<WriteResult, ConsensusError>, bytes: Int)
    /// A write this node forwarded (sent, or appended at the leader).
    case forward(ForwardedWrite, Result<WriteResult, ConsensusError>)
    /// A write that was to be forwarded and never left this node.
    case unsentForward(UnsentWrite, ConsensusError)
    case read(LinearizableRead, Result<ReadResult, ConsensusError>)
    case snapshot(ConsensusCompletion<SnapshotInfo>, Result<SnapshotInfo, ConsensusError>)
    case control(ConsensusCompletion<Void>, Result<Void, ConsensusError>)
  }

  /// Takes every request out, each answered with `error` — except what may still take effect
  /// (proposed or forwarded writes, a membership change), answered `timeout(indeterminate:)`
  /// whatever the reason (the engine stops, its data directory ran out of space, the replica is
  /// deleted): another replica, a later leader or this node's own log, reopened, may still commit
  /// them. A definite error there would let a caller (or a relaying gateway) send the write again.
  /// In a fixed order (by index, request id, arrival), so a replayed run answers in the same order.
  mutating func failAll(_ error: ConsensusError) -> [Answer] {
    var answers: [Answer] = []
    let unknown = ConsensusError.timeout(indeterminate: true)
    for (_, proposal) in proposals.sorted(by: { $0.key < $1.key }) {
      answers.append(.write(proposal.completion, .failure(unknown), bytes: proposal.bytes))
    }
    // Sent forwards may still be written by the leader, whatever happens here.
    for (_, write) in forwardsAwaitingAcceptance.sorted(by: { $0.key < $1.key }) {
      answers.append(.forward(write, .failure(.timeout(indeterminate: true))))
    }
    for (_, write) in forwardsAwaitingApply.sorted(by: { $0.key < $1.key }).map(\.value).joined() {
      answers.append(.forward(write, .failure(.timeout(indeterminate: true))))
    }
    for unsent in forwardsUnsent { answers.append(.unsentForward(unsent, error)) }
    for read in readsAwaitingIndex.sorted(by: { $0.key < $1.key }).map(\.value) + readsAwaitingApply.map(\.read) {
      answers.append(.read(read, .failure(error)))
    }
    for completion in snapshotRequests { answers.append(.snapshot(completion, .failure(error))) }
    for transfer in transfers { answers.append(.control(transfer.completion, .failure(error))) }
    // A membership change's entries may still commit.
    if let change = membershipChange { answers.append(.control(change.completion, .failure(unknown))) }
    self = PendingRequests()
    return answers
  }

  /// Takes out the writes and reads whose deadline passed by `now` (transfers and membership
  /// changes have deadlines of their own, which the host settles against the core's state).
  mutating func expire(now: UInt64) -> [Answer] {
    var answers: [Answer] = []
    for (index, proposal) in proposals.sorted(by: { $0.key < $1.key }) where proposal.deadline <= now {
      proposals[index] = nil
      answers.append(.write(proposal.completion, .failure(.timeout(indeterminate: true)), bytes: proposal.bytes))
    }
    for (requestID, write) in forwardsAwaitingAcceptance.sorted(by: { $0.key < $1.key }) where write.deadline <= now {
      forwardsAwaitingAcceptance[requestID] = nil
      answers.append(.forward(write, .failure(.timeout(indeterminate: true))))
    }
    for (index, waiting) in forwardsAwaitingApply.sorted(by: { $0.key < $1.key })
    where waiting.contains(where: { $0.write.deadline <= now }) {
      let (expired, kept) = (waiting.filter { $0.write.deadline <= now }, waiting.filter { $0.write.deadline > now })
      forwardsAwaitingApply[index] = kept.isEmpty ? nil : kept
      for (_, write) in expired { answers.append(.forward(write, .failure(.timeout(indeterminate: true)))) }
    }
    for (context, read) in readsAwaitingIndex.sorted(by: { $0.key < $1.key }) where read.deadline <= now {
      readsAwaitingIndex[context] = nil
      answers.append(.read(read, .failure(.timeout(indeterminate: false))))
    }
    readsAwaitingApply.removeAll { waiting in
      guard waiting.read.deadline <= now else { return false }
      answers.append(.read(waiting.read, .failure(.timeout(indeterminate: false))))
      return true
    }
    return answers
  }

  /// Nothing is waiting.
  var isEmpty: Bool {
    proposals.isEmpty && readsAwaitingIndex.isEmpty && readsAwaitingApply.isEmpty && snapshotRequests.isEmpty
      && transfers.isEmpty && membershipChange == nil && forwardsAwaitingAcceptance.isEmpty
      && forwardsAwaitingApply.isEmpty && forwardsUnsent.isEmpty
  }
}
