import Consensus
import Directory
import Platform

// Leader balancing (issue 11): which leaderships to move so that every node leads its fair share
// of the groups it votes in. A value type that plans; `Gateway+Cluster.swift` gathers the cluster's
// view, runs the transfers and answers.

/// A group as a leader balance sees it: who leads it, and who may take over.
struct BalancedGroup: Equatable, Sendable {
  let id: GroupID
  let leader: NodeID
  /// The group's other voters that answered and host it: only they may receive leadership.
  let candidates: [NodeID]

  init(id: GroupID, leader: NodeID, candidates: [NodeID]) {
    precondition(!candidates.contains(leader), "the leader is not its own candidate")
    precondition(Set(candidates).count == candidates.count, "a candidate is named once")
    self.id = id
    self.leader = leader
    self.candidates = candidates
  }

  /// Every voter that may lead the group, its leader included.
  var voters: [NodeID] { [leader] + candidates }
}

/// One leadership to move.
struct LeaderTransfer: Equatable, Sendable {
  let group: GroupID
  let from: NodeID
  let to: NodeID
}

/// The transfers that spread leadership evenly, at most `transfersMax` of them.
///
/// A node's fair share is the sum, over the groups it may lead, of one over the number of voters
/// that may lead that group (`groups / nodes` when every group is on every node). A node's excess
/// is what it leads minus its share. A transfer from `a` to `b` is worth making when `a`'s excess
/// is more than one above `b`'s: it lowers the sum of squared excesses, so the planning ends, and
/// where every group is on every node it ends with leader counts at most one apart. Each step takes
/// the node furthest above its share and hands one of its groups to the candidate furthest below.
/// Shares are kept in integers scaled by the least common multiple of the groups' voter counts
/// (at most 16 voters: 720720), so equal shares compare equal.
struct LeaderBalancePlan: Sendable {
  /// Leaders per node before, and once every planned transfer is done: every node given, even
  /// those that lead nothing.
  let before: [NodeID: Int]
  let planned: [NodeID: Int]
  let transfers: [LeaderTransfer]
  /// No further transfer would make the spread more even. False when `transfersMax` stopped the
  /// planning: the caller may balance again.
  let balanced: Bool

  init(groups: [BalancedGroup], nodes: [NodeID], transfersMax: Int) {
    precondition(transfersMax >= 0, "a negative number of transfers cannot be made")
    let known = Set(nodes)
    precondition(known.count == nodes.count, "a node is named once")
    precondition(groups.allSatisfy { group in group.voters.allSatisfy(known.contains) }, "every voter is a node given")
    precondition(Set(groups.map(\.id)).count == groups.count, "a group is named once")
    // Keeps the scale below 720720 (the least common multiple of 1...16), so nothing overflows.
    precondition(groups.allSatisfy { $0.voters.count <= DirectoryRecords.groupPeersMax }, "a group has at most groupPeersMax voters")

    let scale = groups.reduce(1) { scale, group in leastCommonMultiple(scale, group.voters.count) }
    var leaders = Dictionary(uniqueKeysWithValues: nodes.map { ($0, 0) })
    var shares = leaders  // scaled by `scale`
    var leaderOf: [GroupID: NodeID] = [:]
    var votersOf: [GroupID: [NodeID]] = [:]
    // The groups `a` leads in which `b` is a candidate, lowest id last (taken first). An entry
    // goes stale when the group's leader changes; stale entries are dropped when met.
    var ledWith: [NodeID: [NodeID: [GroupID]]] = [:]
    for group in groups.sorted(by: { $0.id > $1.id }) {
      leaders[group.leader, default: 0] += 1
      for voter in group.voters { shares[voter, default: 0] += scale / group.voters.count }
      leaderOf[group.id] = group.leader
      votersOf[group.id] = group.voters
      for candidate in group.candidates { ledWith[group.leader, default: [:]][candidate, default: []].append(group.id) }
    }
    before = leaders
    func excess(_ node: NodeID) -> Int { leaders[node, default: 0] * scale - shares[node, default: 0] }

    /// The next transfer worth making, taken off `ledWith`; nil when there is none.
    func nextTransfer() -> LeaderTransfer? {
      let byExcess = nodes.sorted { excess($0) != excess($1) ? excess($0) > excess($1) : $0 < $1 }
      for from in byExcess {
        for to in byExcess.reversed() {
          // Candidates come in rising excess: once one is not far enough below, none further is.
          guard excess(from) - excess(to) > scale else { break }
          while let group = ledWith[from]?[to]?.popLast() {
            if leaderOf[group] == from { return LeaderTransfer(group: group, from: from, to: to) }
          }
        }
      }
      return nil
    }

    var transfers: [LeaderTransfer] = []
    var balanced = false
    while true {
      guard let transfer = nextTransfer() else {
        balanced = true
        break
      }
      precondition(leaderOf[transfer.group] == transfer.from, "a transfer starts at the group's leader")
      precondition(votersOf[transfer.group]?.contains(transfer.to) == true, "a transfer ends at one of the group's voters")
      leaders[transfer.from, default: 0] -= 1
      leaders[transfer.to, default: 0] += 1
      leaderOf[transfer.group] = transfer.to
      for voter in votersOf[transfer.group] ?? [] where voter != transfer.to {
        ledWith[transfer.to, default: [:]][voter, default: []].append(transfer.group)
      }
      precondition(leaders[transfer.from, default: 0] >= 0, "a node leads no fewer than no groups")
      transfers.append(transfer)
      if transfers.count >= transfersMax { break }
    }
    self.transfers = transfers
    self.planned = leaders
    // Stopped by the limit: whether anything is left to do.
    self.balanced = balanced || nextTransfer() == nil
    precondition(transfers.count <= transfersMax, "the plan keeps to its limit")
    precondition(planned.values.reduce(0, +) == before.values.reduce(0, +), "transfers move leaders, never add or drop one")
  }
}

private func leastCommonMultiple(_ a: Int, _ b: Int) -> Int {
  precondition(a > 0 && b > 0, "voter counts are positive")
  var (x, y) = (a, b)
  while y != 0 { (x, y) = (y, x % y) }
  return a / x * b
}

/// How leadership is balanced: the limits of one balance, and the automatic mode.
public struct LeaderBalanceOptions: Sendable {
  /// Transfers one balance makes at most (`?max=` may ask for fewer): each pauses its group's
  /// writes for about an election, so a call moves a bounded amount of leadership; a cluster
  /// further from even needs more calls (the answer says `"balanced": false`).
  public var transfersMax = 100
  /// The highest `transfersMax` a node accepts.
  public static let transfersMaxLimit = 10_000
  /// Transfers in flight at once: few, so that few groups pause their writes together.
  public var transfersConcurrentMax = 4
  /// How long one transfer may take before it is reported failed (`timeout`); it may still
  /// happen. Above the engine's own bound (two election timeouts, 2 s by default).
  public var transferTimeoutMs: UInt32 = 5_000
  /// How long one balance may take, gathering the cluster's view included: a transfer that
  /// could not finish by then is not started (reported `skipped`).
  public var balanceTimeoutMs: UInt32 = 30_000
  /// Every this many milliseconds the node with the lowest id among those that answer balances
  /// leadership by itself (0: never). The others only check that a lower node answers.
  public var intervalMs: UInt32 = 0
  /// The shortest interval the automatic mode takes: a balance gathers every node's groups.
  public static let intervalMsMin: UInt32 = 100

  public init() {}

  /// Crashes on settings no caller may give (the node's flags are checked before they get here).
  func validate() {
    precondition((1...LeaderBalanceOptions.transfersMaxLimit).contains(transfersMax), "transfersMax is 1...transfersMaxLimit")
    precondition(transfersConcurrentMax >= 1, "at least one transfer runs at a time")
    precondition(transferTimeoutMs > 0, "a transfer has time to happen")
    precondition(transferTimeoutMs <= balanceTimeoutMs, "one transfer fits in a balance")
    precondition(intervalMs == 0 || intervalMs >= LeaderBalanceOptions.intervalMsMin, "the automatic interval is 0 or at least intervalMsMin")
  }
}

/// What became of one planned transfer.
enum TransferOutcome: Equatable, Sendable {
  /// The group's new leader is in office.
  case moved
  /// `error`: the code the leader answered (`not_leader`, `timeout`, …), `unreachable` when it did
  /// not answer, or `timeout` when the transfer's own deadline passed first.
  case failed(error: String, message: String)
  /// Not started: it could not have finished before the balance's deadline.
  case skipped
}

/// Runs planned transfers, at most `concurrentMax` at once, each settled by its answer or by its
/// own deadline, whichever comes first; none starts unless it can finish before `deadlineMs`.
/// `finish` gets one outcome per transfer, in plan order, once all are settled.
final class LeaderTransferRun: Sendable {
  private struct State {
    var next = 0
    var inFlight = 0
    var outcomes: [TransferOutcome?]
    var finished = false
  }

  private let transfers: [LeaderTransfer]
  private let concurrentMax: Int
  private let transferTimeoutMs: UInt32
  private let deadlineMs: UInt64
  private let transfer: @Sendable (LeaderTransfer, @escaping @Sendable (TransferOutcome) -> Void) -> Void
  private let after: @Sendable (UInt32, @escaping @Sendable () -> Void) -> Void
  private let finish: @Sendable ([TransferOutcome]) -> Void
  private let state: Locked<State>

  init(
    _ transfers: [LeaderTransfer], concurrentMax: Int, transferTimeoutMs: UInt32, deadlineMs: UInt64,
    transfer: @escaping @Sendable (LeaderTransfer, @escaping @Sendable (TransferOutcome) -> Void) -> Void,
    after: @escaping @Sendable (UInt32, @escaping @Sendable () -> Void) -> Void,
    finish: @escaping @Sendable ([TransferOutcome]) -> Void
  ) {
    precondition(concurrentMax >= 1, "at least one transfer runs at a time")
    self.transfers = transfers
    self.concurrentMax = concurrentMax
    self.transferTimeoutMs = transferTimeoutMs
    self.deadlineMs = deadlineMs
    self.transfer = transfer
    self.after = after
    self.finish = finish
    self.state = Locked(State(outcomes: Array(repeating: nil, count: transfers.count)))
  }

  func start() {
    for _ in 0..<max(1, min(concurrentMax, transfers.count)) { launchNext() }
  }

  private enum Step {
    case launch(Int)
    case finish([TransferOutcome])
    case wait
  }

  /// Starts the next transfer if one may start; else, once none is in flight, finishes.
  private func launchNext() {
    let now = MonotonicClock.nowMilliseconds()
    let step: Step = state.withLock { run in
      if run.next < transfers.count, now + UInt64(transferTimeoutMs) <= deadlineMs {
        run.next += 1
        run.inFlight += 1
        precondition(run.inFlight <= concurrentMax, "no more transfers in flight than allowed")
        return .launch(run.next - 1)
      }
      // Nothing more fits before the deadline: what never started is skipped.
      while run.next < transfers.count {
        run.outcomes[run.next] = .skipped
        run.next += 1
      }
      guard run.inFlight == 0, !run.finished else { return .wait }
      run.finished = true
      return .finish(run.outcomes.map { outcome in
        guard let outcome else { preconditionFailure("every transfer is settled before the run finishes") }
        return outcome
      })
    }
    switch step {
    case .wait: return
    case .finish(let outcomes): finish(outcomes)
    case .launch(let index):
      let settled = Locked(false)
      let settle: @Sendable (TransferOutcome) -> Void = { [self] outcome in
        guard settled.withLock({ done in
          defer { done = true }
          return !done
        }) else { return }
        state.withLock { run in
          precondition(run.outcomes[index] == nil, "a transfer is settled once")
          run.outcomes[index] = outcome
          run.inFlight -= 1
        }
        launchNext()
      }
      let timeoutMs = transferTimeoutMs
      after(timeoutMs) {
        settle(.failed(error: "timeout", message: "no answer within \(timeoutMs) ms; the transfer may still happen"))
      }
      transfer(transfers[index], settle)
    }
  }
}

/// The leader balances that ran on this node: at most one at a time, and their counts for `/metrics`.
final class LeaderBalanceState: Sendable {
  private struct Totals {
    var running = false
    var runs: UInt64 = 0
    var moved: UInt64 = 0
    var failed: UInt64 = 0
    var skipped: UInt64 = 0
  }

  private let totals = Locked(Totals())

  /// Claims the right to balance; false while another balance runs here.
  func begin() -> Bool {
    totals.withLock { totals in
      guard !totals.running else { return false }
      totals.running = true
      return true
    }
  }

  func end(_ outcomes: [TransferOutcome]) {
    totals.withLock { totals in
      precondition(totals.running, "a balance ends after it began")
      totals.running = false
      totals.runs += 1
      for outcome in outcomes {
        switch outcome {
        case .moved: totals.moved += 1
        case .failed: totals.failed += 1
        case .skipped: totals.skipped += 1
        }
      }
    }
  }

  func prometheusText() -> String {
    let totals = totals.withLock { $0 }
    return Prometheus.metric(
      "caucus_leader_balance_runs_total", help: "Leader balances this node ran (POST /v1/cluster/rebalance and the automatic mode).",
      totals.runs)
      + Prometheus.family(
        "caucus_leader_balance_transfers_total", help: "Leadership transfers those balances planned, by outcome.", type: "counter",
        label: "outcome", [("moved", totals.moved), ("failed", totals.failed), ("skipped", totals.skipped)])
  }
}
