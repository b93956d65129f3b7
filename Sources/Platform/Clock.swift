import Glibc

/// Monotonic time for timeouts and latency measurement (never wall-clock: it can step).
public enum MonotonicClock {
  @inline(__always)
  public static func nowNanoseconds() -> UInt64 {
    var spec = timespec()
    let result = clock_gettime(CLOCK_MONOTONIC, &spec)
    precondition(result == 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail")
    return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
  }

  @inline(__always)
  public static func nowMilliseconds() -> UInt64 { nowNanoseconds() / 1_000_000 }
}

/// A source of monotonic nanoseconds, injected where time drives behaviour: the system's clock
/// on a node, a virtual one in the deterministic simulator.
public protocol NanosecondClock: Sendable {
  func nowNanoseconds() -> UInt64
}

/// The system's monotonic clock.
public struct SystemClock: NanosecondClock {
  public init() {}
  public func nowNanoseconds() -> UInt64 { MonotonicClock.nowNanoseconds() }
}

/// Wall-clock seconds since the epoch, for display only (uptime start, logs).
public func wallClockSeconds() -> Double {
  var spec = timespec()
  clock_gettime(CLOCK_REALTIME, &spec)
  return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}
