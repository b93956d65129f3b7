import Consensus
@testable import Gateway
import Platform
import XCTest

/// The leader balance's planning and its run of transfers, without a cluster (issue 11).
final class LeaderBalancePlanTests: XCTestCase {
  private let nodes = [NodeID(1), NodeID(2), NodeID(3)]

  private func group(_ number: UInt32, ledBy leader: UInt64, voters: [UInt64] = [1, 2, 3]) -> BalancedGroup {
    BalancedGroup(
      id: GroupID(.dataRegion, number), leader: NodeID(leader), candidates: voters.filter { $0 != leader }.map(NodeID.init))
  }

  private func spread(_ counts: [NodeID: Int]) -> Int { (counts.values.max() ?? 0) - (counts.values.min() ?? 0) }

  func testEightGroupsLedByOneNodeSpreadOverThreeWithFiveTransfers() {
    let groups = (1...8).map { group($0, ledBy: 3) }
    let plan = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: 100)
    XCTAssertEqual(plan.before, [NodeID(1): 0, NodeID(2): 0, NodeID(3): 8])
    XCTAssertEqual(plan.transfers.count, 5)
    XCTAssertTrue(plan.transfers.allSatisfy { $0.from == NodeID(3) && $0.to != NodeID(3) }, "\(plan.transfers)")
    XCTAssertEqual(Set(plan.transfers.map(\.group)).count, 5, "each group moves once")
    XCTAssertLessThanOrEqual(spread(plan.planned), 1, "\(plan.planned)")
    XCTAssertEqual(plan.planned.values.reduce(0, +), 8)
    XCTAssertTrue(plan.balanced)
    XCTAssertEqual(plan.transfers.first?.group, GroupID(.dataRegion, 1), "the lowest group id moves first")
  }

  func testTheLimitStopsThePlanAndSaysSo() {
    let groups = (1...8).map { group($0, ledBy: 3) }
    let plan = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: 2)
    XCTAssertEqual(plan.transfers.count, 2)
    XCTAssertFalse(plan.balanced, "more transfers would even the spread")
    XCTAssertEqual(plan.planned[NodeID(3)], 6)
    let exactly = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: 5)
    XCTAssertEqual(exactly.transfers.count, 5)
    XCTAssertTrue(exactly.balanced, "the limit ended the plan exactly where it was done")
  }

  func testAnEvenSpreadIsLeftAlone() {
    let groups = [group(1, ledBy: 1), group(2, ledBy: 2), group(3, ledBy: 3), group(4, ledBy: 1)]
    let plan = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: 100)
    XCTAssertEqual(plan.transfers, [])
    XCTAssertTrue(plan.balanced)
    XCTAssertEqual(plan.planned, plan.before)
  }

  /// A node's fair share counts only the groups it votes in: node 2 votes in all eight groups,
  /// nodes 1 and 3 in four each, so the even spread is 2, 4, 2.
  func testEachNodeLeadsItsShareOfTheGroupsItVotesIn() {
    let groups = (1...4).map { group($0, ledBy: 2, voters: [1, 2]) } + (5...8).map { group($0, ledBy: 2, voters: [2, 3]) }
    let plan = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: 100)
    XCTAssertEqual(plan.planned, [NodeID(1): 2, NodeID(2): 4, NodeID(3): 2])
    XCTAssertTrue(plan.transfers.allSatisfy { transfer in
      groups.first { $0.id == transfer.group }!.voters.contains(transfer.to)
    }, "leadership goes only to the group's voters")
  }

  func testANodeThatMayLeadNothingGetsNothingAndAGroupWithoutCandidatesStays() {
    let groups = [group(1, ledBy: 1, voters: [1])] + (2...5).map { group($0, ledBy: 1, voters: [1, 2]) }
    let plan = LeaderBalancePlan(groups: groups, nodes: nodes + [NodeID(4)], transfersMax: 100)
    XCTAssertFalse(plan.transfers.contains { $0.group == GroupID(.dataRegion, 1) }, "no one else may lead it")
    XCTAssertEqual(plan.planned[NodeID(3)], 0)
    XCTAssertEqual(plan.planned[NodeID(4)], 0)
    // Node 1's share: 1 + 4 × 1/2 = 3; node 2's: 2.
    XCTAssertEqual(plan.planned[NodeID(1)], 3)
    XCTAssertEqual(plan.planned[NodeID(2)], 2)
  }

  func testTenThousandGroupsOnOneLeaderAreSpreadWithinTheLimit() {
    let groups = (1...10_000).map { group(UInt32($0), ledBy: 1) }
    let all = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: LeaderBalanceOptions.transfersMaxLimit)
    XCTAssertEqual(all.transfers.count, 6_666)
    XCTAssertLessThanOrEqual(spread(all.planned), 1)
    XCTAssertTrue(all.balanced)
    let bounded = LeaderBalancePlan(groups: groups, nodes: nodes, transfersMax: 100)
    XCTAssertEqual(bounded.transfers.count, 100)
    XCTAssertFalse(bounded.balanced)
  }
}

final class LeaderTransferRunTests: XCTestCase {
  /// A hand-driven world: transfers and timers wait until the test settles or fires them.
  private final class World: @unchecked Sendable {
    let lock = Locked<(started: [(LeaderTransfer, @Sendable (TransferOutcome) -> Void)], timers: [@Sendable () -> Void], finished: [[TransferOutcome]])>(([], [], []))

    func run(_ transfers: [LeaderTransfer], concurrentMax: Int, deadlineMs: UInt64) -> LeaderTransferRun {
      LeaderTransferRun(
        transfers, concurrentMax: concurrentMax, transferTimeoutMs: 1_000, deadlineMs: deadlineMs,
        transfer: { transfer, settle in self.lock.withLock { $0.started.append((transfer, settle)) } },
        after: { _, action in self.lock.withLock { $0.timers.append(action) } },
        finish: { outcomes in self.lock.withLock { $0.finished.append(outcomes) } })
    }

    var startedCount: Int { lock.withLock { $0.started.count } }
    func settle(_ index: Int, _ outcome: TransferOutcome) { lock.withLock { $0.started[index].1 }(outcome) }
    func fireTimer(_ index: Int) { lock.withLock { $0.timers[index] }() }
    var finished: [[TransferOutcome]] { lock.withLock { $0.finished } }
  }

  private let transfers = (1...5).map { LeaderTransfer(group: GroupID(.dataRegion, UInt32($0)), from: NodeID(1), to: NodeID(2)) }
  private var farDeadlineMs: UInt64 { MonotonicClock.nowMilliseconds() + 60_000 }

  func testNoMoreThanTheLimitRunAtOnceAndEveryOutcomeIsReportedOnce() {
    let world = World()
    world.run(transfers, concurrentMax: 2, deadlineMs: farDeadlineMs).start()
    XCTAssertEqual(world.startedCount, 2)
    world.settle(0, .moved)
    XCTAssertEqual(world.startedCount, 3, "one ended, the next began")
    world.settle(0, .failed(error: "late", message: "a second answer is dropped"))
    XCTAssertEqual(world.startedCount, 3)
    // Transfer 2 never answers: its deadline settles it, and its late answer is dropped.
    world.fireTimer(1)
    world.settle(1, .moved)
    world.settle(2, .failed(error: "not_leader", message: "moved on"))
    world.settle(3, .moved)
    XCTAssertEqual(world.finished.count, 0, "transfer 5 is still in flight")
    world.settle(4, .moved)
    XCTAssertEqual(world.finished.count, 1)
    XCTAssertEqual(world.finished.first, [
      .moved, .failed(error: "timeout", message: "no answer within 1000 ms; the transfer may still happen"),
      .failed(error: "not_leader", message: "moved on"), .moved, .moved,
    ])
  }

  func testTransfersThatCannotFinishBeforeTheDeadlineAreSkipped() {
    let world = World()
    world.run(transfers, concurrentMax: 2, deadlineMs: MonotonicClock.nowMilliseconds() + 500).start()
    XCTAssertEqual(world.startedCount, 0)
    XCTAssertEqual(world.finished, [Array(repeating: .skipped, count: 5)])
    let empty = World()
    empty.run([], concurrentMax: 2, deadlineMs: farDeadlineMs).start()
    XCTAssertEqual(empty.finished, [[]], "nothing to do finishes at once")
  }
}
