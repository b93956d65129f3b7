import Consensus
import RaftConsensus
import Linearizability
import RaftCore

/// Sees every Ready one node's host executes and checks it (`Checker`): Raft's safety properties
/// on each Ready once persisted, durable hard states, and State Machine Safety on what each
/// replica applies (a digest chained over the applied entries).
final class Observer: ReadyObserver {
  let node: Int
  let checker: CheckerBox
  let trace: TraceLog
  let clock: SimulatedClock
  /// Per group, the role and term last traced.
  private var roles: [UInt64: (Role, Term)] = [:]
  /// Per group: the term durable on this node's disk, and the digest of what it applied (nil
  /// when unknown: installed from a snapshot whose index no replica reported applying).
  private(set) var durableTerms: [UInt64: Term] = [:]
  private var digests: [UInt64: UInt64?] = [:]
  var violation: Violation?
  /// Called when a Ready in which this node was just elected leader, or advanced its commit
  /// index as leader, is persisted: where the simulator may kill it before anything else of
  /// that Ready leaves (the interleavings of Figure 8).
  var onLeaderMilestone: (() -> Void)?
  /// What this node's Readies exercised.
  var snapshotsInstalled = 0
  var unsyncedHardStates = 0

  init(node: Int, checker: CheckerBox, trace: TraceLog, clock: SimulatedClock) {
    self.node = node
    self.checker = checker
    self.trace = trace
    self.clock = clock
  }

  func groupStarted(_ group: GroupID, raft: Raft) {
    durableTerms[group.packed] = raft.hardState.term
    checker.value.restarted(node: node, group: group.packed, raft: raft)
    if let snapshot = raft.latestSnapshot {
      digests[group.packed] = checker.value.stateDigest(group: group.packed, index: snapshot.index)
    } else {
      digests[group.packed] = .some(0)
    }
  }

  func persisted(_ group: GroupID, ready: Ready, raft: Raft, synced: Bool) {
    guard violation == nil else { return }
    let elected = ready.role == .leader && (roles[group.packed].map { $0 != (.leader, ready.term) } ?? true)
    if ready.role == .leader && (elected || ready.hardState != nil) { onLeaderMilestone?() }
    if roles[group.packed].map({ $0 != (ready.role, ready.term) }) ?? true {
      roles[group.packed] = (ready.role, ready.term)
      trace.ring.append(
        .role(
          time: Int(clock.now / 1_000_000), node: node, group: group.packed, role: ready.role, term: ready.term,
          lastIndex: raft.lastIndex, committed: raft.committed))
    }
    if let failure = checker.value.check(ready: ready, node: node, group: group.packed, raft: raft) {
      violation = failure
      return
    }
    if !synced && ready.hardState != nil { unsyncedHardStates += 1 }
    if synced, let hardState = ready.hardState {
      durableTerms[group.packed] = hardState.term
      checker.value.persisted(node: node, group: group.packed, hardState: hardState)
    }
  }

  func applied(_ group: GroupID, ready: Ready) {
    guard violation == nil else { return }
    if let snapshot = ready.snapshot {
      snapshotsInstalled += 1
      digests[group.packed] = checker.value.stateDigest(group: group.packed, index: snapshot.index)
    }
    for entry in ready.committedEntries {
      guard let known = digests[group.packed] ?? nil else { continue }
      var next = Digest(known)
      next.add(Digest.of(entry))
      digests[group.packed] = .some(next.value)
      if let failure = checker.value.applied(node: node, group: group.packed, index: entry.index, stateDigest: next.value) {
        violation = failure
        return
      }
    }
  }
}

/// The trace, shared by the simulator and the nodes' observers (one thread).
final class TraceLog {
  var ring: TraceRing
  init(ring: TraceRing) { self.ring = ring }
}
