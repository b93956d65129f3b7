import Glibc

/// A pthread mutex plus condition variable. Used instead of `Synchronization.Mutex` where a
/// thread must wait for a condition, and because TSan on Linux reports false races on `Mutex`.
/// Sendable: all access to the pthread objects goes through the lock itself.
public final class ConditionLock: @unchecked Sendable {
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private let condition: UnsafeMutablePointer<pthread_cond_t>

  public init() {
    mutex = .allocate(capacity: 1)
    condition = .allocate(capacity: 1)
    precondition(pthread_mutex_init(mutex, nil) == 0)
    var attributes = pthread_condattr_t()
    pthread_condattr_init(&attributes)
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
    precondition(pthread_cond_init(condition, &attributes) == 0)
    pthread_condattr_destroy(&attributes)
  }

  deinit {
    pthread_cond_destroy(condition)
    pthread_mutex_destroy(mutex)
    condition.deallocate()
    mutex.deallocate()
  }

  public func lock() { precondition(pthread_mutex_lock(mutex) == 0) }
  public func unlock() { precondition(pthread_mutex_unlock(mutex) == 0) }

  @inline(__always)
  public func withLock<T>(_ body: () throws -> T) rethrows -> T {
    lock()
    defer { unlock() }
    return try body()
  }

  /// Must hold the lock. Wakes on signal, broadcast, or spuriously: re-check the condition.
  public func wait() { precondition(pthread_cond_wait(condition, mutex) == 0) }

  /// Must hold the lock. Returns false when the deadline (monotonic ns) passed.
  @discardableResult
  public func wait(untilNanoseconds deadline: UInt64) -> Bool {
    var spec = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    let result = pthread_cond_timedwait(condition, mutex, &spec)
    return result != ETIMEDOUT
  }

  public func signal() { pthread_cond_signal(condition) }
  public func broadcast() { pthread_cond_broadcast(condition) }
}

/// A value guarded by a `ConditionLock`.
public final class Locked<Value>: @unchecked Sendable {
  private var value: Value
  private let lock = ConditionLock()

  public init(_ value: Value) { self.value = value }

  @inline(__always)
  public func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
    lock.lock()
    defer { lock.unlock() }
    return try body(&value)
  }
}

/// Calls `start` with a completion and blocks the calling thread until the completion runs (on any
/// thread). For command-line tools, tests and start-up code — never on an event loop.
public func waitForCompletion<Value: Sendable>(_ start: (@escaping @Sendable (Value) -> Void) -> Void) -> Value {
  let lock = ConditionLock()
  let box = Locked<Value?>(nil)
  start { value in
    lock.withLock {
      box.withLock { $0 = value }
      lock.signal()
    }
  }
  return lock.withLock {
    while true {
      if let value = box.withLock({ $0 }) { return value }
      lock.wait()
    }
  }
}
