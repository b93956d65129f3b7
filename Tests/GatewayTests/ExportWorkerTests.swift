@testable import Gateway
import Platform
import XCTest

/// Backup exports run one at a time on their own thread, at most `queuedMax` waiting or running:
/// one more is refused (the route's `503 overloaded`), and a slot frees when an export ends.
final class ExportWorkerTests: XCTestCase {
  func testAtMostQueuedMaxExportsWaitOrRunAndTheyRunInOrderOneAtATime() {
    let worker = ExportWorker(queuedMax: 2)
    let gate = ConditionLock()
    let released = Locked(false)
    let order = Locked<[Int]>([])
    let running = Locked(0)
    let overlapped = Locked(false)
    func job(_ number: Int) -> @Sendable () -> Void {
      {
        if running.withLock({ $0 += 1; return $0 }) > 1 { overlapped.withLock { $0 = true } }
        gate.withLock { while !released.withLock({ $0 }) { _ = gate.wait(untilNanoseconds: MonotonicClock.nowNanoseconds() + 10_000_000) } }
        order.withLock { $0.append(number) }
        running.withLock { $0 -= 1 }
      }
    }
    XCTAssertTrue(worker.submit(job(1)))
    XCTAssertTrue(worker.submit(job(2)))
    XCTAssertFalse(worker.submit(job(3)), "a third export while two wait or run")
    gate.withLock {
      released.withLock { $0 = true }
      gate.broadcast()
    }
    let deadline = MonotonicClock.nowNanoseconds() + 10_000_000_000
    while order.withLock({ $0.count }) < 2 && MonotonicClock.nowNanoseconds() < deadline { usleep(1_000) }
    XCTAssertEqual(order.withLock { $0 }, [1, 2])
    XCTAssertFalse(overlapped.withLock { $0 }, "one export at a time")
    XCTAssertTrue(worker.submit(job(4)), "the slots free as exports end")
    worker.stop()
    XCTAssertEqual(order.withLock { $0 }, [1, 2, 4], "stop lets the queued exports finish")
    XCTAssertFalse(worker.submit(job(5)), "a stopped worker takes no more")
  }
}
