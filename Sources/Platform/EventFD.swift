import CPlatform
import Glibc

/// A non-blocking Linux eventfd used as a wake-up: any thread may `signal()`, the owning event loop
/// waits for it to become readable (epoll) and then `drain()`s it. Signals coalesce: many signals
/// before one drain wake the loop once.
/// Sendable: the descriptor is an immutable integer; signal/drain are single atomic syscalls.
public final class EventFD: Sendable {
  public let descriptor: Int32

  public init() throws(SystemError) {
    descriptor = try syscall("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    precondition(descriptor >= 0)
  }

  deinit { _ = Glibc.close(descriptor) }

  /// Adds one to the counter, making the descriptor readable. Never blocks (the counter only
  /// overflows after 2^64-2 signals without a drain, which cannot happen).
  public func signal() {
    var one: UInt64 = 1
    let written = Glibc.write(descriptor, &one, MemoryLayout<UInt64>.size)
    precondition(
      written == MemoryLayout<UInt64>.size || currentErrno() == EAGAIN, "eventfd write failed")
  }

  /// Resets the counter to zero; returns how many signals it had collected (0 when none).
  @discardableResult
  public func drain() -> UInt64 {
    var value: UInt64 = 0
    let count = Glibc.read(descriptor, &value, MemoryLayout<UInt64>.size)
    if count < 0 {
      let error = currentErrno()
      precondition(error == EAGAIN || error == EINTR, "eventfd read failed: errno \(error)")
      return 0
    }
    precondition(count == MemoryLayout<UInt64>.size)
    return value
  }
}
