import Platform
import XCTest

final class TimerWheelTests: XCTestCase {
  func testActionsRunAfterTheirDelayAndNotOnceStopped() throws {
    let wheel = TimerWheel(name: "test-wheel", granularityMs: 10)
    let ran = Locked<[Int]>([])
    let scheduledAt = MonotonicClock.nowMilliseconds()
    let ranAt = Locked<UInt64>(0)
    wheel.after(delayMs: 60) {
      ranAt.withLock { $0 = MonotonicClock.nowMilliseconds() }
      ran.withLock { $0.append(2) }
    }
    wheel.after(delayMs: 0) { ran.withLock { $0.append(1) } }
    let deadline = MonotonicClock.nowMilliseconds() + 5_000
    while ran.withLock({ $0.count }) < 2 && MonotonicClock.nowMilliseconds() < deadline { usleep(1_000) }
    XCTAssertEqual(ran.withLock { $0 }, [1, 2])
    XCTAssertGreaterThanOrEqual(ranAt.withLock { $0 } - scheduledAt, 60, "not before its delay")
    wheel.after(delayMs: 10_000) { ran.withLock { $0.append(3) } }
    wheel.stop()
    wheel.after(delayMs: 0) { ran.withLock { $0.append(4) } }
    XCTAssertEqual(ran.withLock { $0 }, [1, 2], "a stopped wheel runs nothing more")
  }
}
