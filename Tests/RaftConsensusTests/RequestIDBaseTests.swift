import XCTest

@testable import RaftConsensus

/// Each incarnation of a node starts its forwarded-write request ids at its own base: a leader
/// answers an id it remembers (`ForwardWindow`) with the first answer, so a restarted node that
/// reused a base had new writes answered with old writes' results (found by `caucus torture`: a
/// compare-and-set answered "swapped" that never took effect).
final class RequestIDBaseTests: XCTestCase {
  func testRealNodesDrawADifferentBaseEachIncarnationEvenAtTheSameClockReading() {
    // Two starts read (nearly) the same clock; before the fix the clock cancelled out and the
    // bases were equal.
    var bases = Set<UInt64>()
    for _ in 0..<1_000 { bases.insert(RaftConsensus.forwardRequestIDBase(seed: nil, clockNanoseconds: 123_456_789)) }
    XCTAssertGreaterThanOrEqual(bases.count, 999, "bases drawn: \(bases.count) distinct of 1000")
  }

  func testAFixedSeedDrawsItsBaseFromTheClockDeterministically() {
    let first = RaftConsensus.forwardRequestIDBase(seed: 42, clockNanoseconds: 1_000)
    XCTAssertEqual(first, RaftConsensus.forwardRequestIDBase(seed: 42, clockNanoseconds: 1_000), "a replay draws the same base")
    XCTAssertNotEqual(first, RaftConsensus.forwardRequestIDBase(seed: 42, clockNanoseconds: 2_000), "another incarnation, another base")
  }

  func testABaseLeavesTheLowBitsForCountingAndTheTopBitClear() {
    for _ in 0..<100 {
      let base = RaftConsensus.forwardRequestIDBase(seed: nil, clockNanoseconds: 0)
      XCTAssertEqual(base & 0xFFFF_FFFF, 0)
      XCTAssertEqual(base >> 63, 0)
    }
  }
}
