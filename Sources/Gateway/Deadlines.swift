import Consensus
import Platform

/// Answers requests whose engine call has not completed by their deadline (`504 timeout`, with
/// `indeterminate: true` for writes). A timer wheel: entries sit in buckets of `granularityMs`,
/// and one thread sweeps the buckets whose time has come. Entries hold their exchange weakly, so
/// a request answered in time is freed at once, not kept (body and all) until its deadline.
final class DeadlineWheel: @unchecked Sendable {
  // @unchecked Sendable: `buckets`, `stopping` and `thread` are guarded by `lock`.
  private struct Entry {
    weak var exchange: Exchange?
    let group: GroupID?
    let indeterminate: Bool
    /// When set, the entry is a delayed action rather than a deadline.
    var action: (@Sendable () -> Void)? = nil
  }

  /// Bucket width: deadlines fire up to this late. Request deadlines are seconds long.
  let granularityMs: UInt64
  private let lock = ConditionLock()
  private var buckets: [UInt64: [Entry]] = [:]
  private var stopping = false
  private var thread: OSThread?

  init(granularityMs: UInt64 = 50) {
    precondition(granularityMs > 0)
    self.granularityMs = granularityMs
  }

  /// Answers `exchange` with a timeout after `timeoutMs` unless it was answered by then.
  func schedule(_ exchange: Exchange, timeoutMs: UInt32, group: GroupID?, indeterminate: Bool) {
    let slot = (MonotonicClock.nowMilliseconds() + UInt64(timeoutMs)) / granularityMs + 1
    lock.withLock {
      guard !stopping else { return }
      if buckets.isEmpty { lock.signal() }  // the sweeper sleeps untimed while there is nothing to time
      buckets[slot, default: []].append(Entry(exchange: exchange, group: group, indeterminate: indeterminate))
      if thread == nil {
        thread = OSThread(name: "caucus-deadlines") { [self] in sweep() }
      }
    }
  }

  /// Runs `action` on the sweeping thread after about `delayMs` (rounded up to the granularity).
  func after(delayMs: UInt32, _ action: @escaping @Sendable () -> Void) {
    let slot = (MonotonicClock.nowMilliseconds() + UInt64(delayMs)) / granularityMs + 1
    lock.withLock {
      guard !stopping else { return }
      if buckets.isEmpty { lock.signal() }
      buckets[slot, default: []].append(Entry(exchange: nil, group: nil, indeterminate: false, action: action))
      if thread == nil {
        thread = OSThread(name: "caucus-deadlines") { [self] in sweep() }
      }
    }
  }

  /// Stops the sweeping thread; pending deadlines no longer fire.
  func stop() {
    let running: OSThread? = lock.withLock {
      stopping = true
      lock.broadcast()
      return thread
    }
    running?.join()
  }

  private func sweep() {
    while true {
      let due: [Entry] = lock.withLock {
        if buckets.isEmpty && !stopping {
          lock.wait()  // an idle node does not wake up for nothing
        } else if !stopping {
          let nextTick = (MonotonicClock.nowMilliseconds() / granularityMs + 1) * granularityMs
          lock.wait(untilNanoseconds: nextTick * 1_000_000)
        }
        guard !stopping else { return [] }
        let now = MonotonicClock.nowMilliseconds() / granularityMs
        var due: [Entry] = []
        for slot in buckets.keys where slot <= now {
          due += buckets.removeValue(forKey: slot) ?? []
        }
        return due
      }
      if lock.withLock({ stopping }) { return }
      for entry in due {
        if let action = entry.action {
          action()
        } else {
          entry.exchange?.expire(group: entry.group, indeterminate: entry.indeterminate)
        }
      }
    }
  }
}
