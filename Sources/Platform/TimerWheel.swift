/// Runs actions after a delay on one sweeping thread: request deadlines (`504 timeout`), retries
/// with backoff, periodic jobs. Entries sit in buckets of `granularityMs`, and the thread sweeps
/// the buckets whose time has come; it sleeps untimed while there is nothing to run. An action
/// that must not keep its object alive until it fires (a request, body and all) captures it weakly.
public final class TimerWheel: @unchecked Sendable {
  // @unchecked Sendable: `buckets`, `stopping` and `thread` are guarded by `lock`.

  /// Bucket width: actions run up to this late. Deadlines and retries are 50 ms or longer.
  public let granularityMs: UInt64
  private let name: String
  private let lock = ConditionLock()
  private var buckets: [UInt64: [@Sendable () -> Void]] = [:]
  private var stopping = false
  private var thread: OSThread?

  public init(name: String, granularityMs: UInt64 = 50) {
    precondition(granularityMs > 0, "a bucket has a width")
    self.name = name
    self.granularityMs = granularityMs
  }

  /// Runs `action` on the sweeping thread after about `delayMs` (rounded up to the granularity),
  /// unless the wheel stops first.
  public func after(delayMs: UInt32, _ action: @escaping @Sendable () -> Void) {
    let slot = (MonotonicClock.nowMilliseconds() + UInt64(delayMs)) / granularityMs + 1
    lock.withLock {
      guard !stopping else { return }
      if buckets.isEmpty { lock.signal() }  // the sweeper sleeps untimed while there is nothing to run
      buckets[slot, default: []].append(action)
      if thread == nil {
        thread = OSThread(name: name) { [self] in sweep() }
      }
    }
  }

  /// Stops the sweeping thread; pending actions no longer run.
  public func stop() {
    let running: OSThread? = lock.withLock {
      stopping = true
      lock.broadcast()
      return thread
    }
    running?.join()
  }

  private func sweep() {
    while true {
      let due: [@Sendable () -> Void] = lock.withLock {
        if buckets.isEmpty && !stopping {
          lock.wait()  // an idle node does not wake up for nothing
        } else if !stopping {
          let nextTick = (MonotonicClock.nowMilliseconds() / granularityMs + 1) * granularityMs
          _ = lock.wait(untilNanoseconds: nextTick * 1_000_000)
        }
        guard !stopping else { return [] }
        let now = MonotonicClock.nowMilliseconds() / granularityMs
        var due: [@Sendable () -> Void] = []
        for slot in buckets.keys where slot <= now {
          due += buckets.removeValue(forKey: slot) ?? []
        }
        return due
      }
      if lock.withLock({ stopping }) { return }
      for action in due { action() }
    }
  }
}
