import CPlatform
import Glibc

/// The readiness conditions an `Epoll` registration waits for and an event reports.
public struct EpollEvents: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let readable = EpollEvents(rawValue: EPOLLIN.rawValue)
  public static let writable = EpollEvents(rawValue: EPOLLOUT.rawValue)
  /// The peer shut down its writing side (half-close).
  public static let readHangUp = EpollEvents(rawValue: EPOLLRDHUP.rawValue)
  /// For a descriptor several epoll instances watch (a shared listener): wake only one of them.
  /// Such a registration cannot be modified, only removed and added again.
  public static let exclusive = EpollEvents(rawValue: EPOLLEXCLUSIVE.rawValue)
  /// Always reported, never requested.
  public static let hangUp = EpollEvents(rawValue: EPOLLHUP.rawValue)
  /// Always reported, never requested.
  public static let error = EpollEvents(rawValue: EPOLLERR.rawValue)
}

/// One readiness report: the registration's token and what became ready.
public struct EpollEvent: Sendable, Equatable {
  public var token: UInt64
  public var events: EpollEvents
}

/// A level-triggered epoll instance. Registrations carry a 64-bit token (not the descriptor), so
/// callers can identify connections by generation and never confuse a reused descriptor.
/// Not Sendable on purpose: one event loop thread owns it.
public final class Epoll {
  public let descriptor: Int32
  private var buffer: UnsafeMutablePointer<epoll_event>
  /// The most events one `wait` returns.
  public let eventsPerWaitMax: Int

  public init(eventsPerWaitMax: Int = 256) throws(SystemError) {
    precondition(
      eventsPerWaitMax > 0 && eventsPerWaitMax <= 65_536, "eventsPerWaitMax out of range")
    descriptor = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    self.eventsPerWaitMax = eventsPerWaitMax
    buffer = .allocate(capacity: eventsPerWaitMax)
  }

  deinit {
    buffer.deallocate()
    _ = Glibc.close(descriptor)
  }

  public func add(_ fd: Int32, events: EpollEvents, token: UInt64) throws(SystemError) {
    try control(EPOLL_CTL_ADD, fd, events, token)
  }

  public func modify(_ fd: Int32, events: EpollEvents, token: UInt64) throws(SystemError) {
    try control(EPOLL_CTL_MOD, fd, events, token)
  }

  /// Removes the registration. Closing a descriptor removes it too; call this before closing
  /// when the descriptor might be shared (dup'ed).
  public func remove(_ fd: Int32) throws(SystemError) {
    var event = epoll_event()
    try syscall("epoll_ctl", context: "DEL fd \(fd)") {
      epoll_ctl(descriptor, EPOLL_CTL_DEL, fd, &event)
    }
  }

  private func control(_ operation: Int32, _ fd: Int32, _ events: EpollEvents, _ token: UInt64)
    throws(SystemError)
  {
    var event = epoll_event()
    event.events = events.rawValue
    event.data.u64 = token
    try syscall("epoll_ctl", context: "op \(operation) fd \(fd)") {
      epoll_ctl(descriptor, operation, fd, &event)
    }
  }

  /// Waits up to `timeoutMs` (-1: forever, 0: poll) and calls `body` for every ready registration.
  /// Returns the number of events. EINTR counts as a wake-up with no events.
  @discardableResult
  public func wait(timeoutMs: Int32, _ body: (EpollEvent) throws -> Void) rethrows -> Int {
    let count = epoll_wait(descriptor, buffer, Int32(eventsPerWaitMax), timeoutMs)
    if count < 0 {
      let error = currentErrno()
      precondition(error == EINTR, "epoll_wait failed: errno \(error)")
      return 0
    }
    precondition(count <= eventsPerWaitMax)
    for index in 0..<Int(count) {
      let raw = buffer[index]
      try body(EpollEvent(token: raw.data.u64, events: EpollEvents(rawValue: raw.events)))
    }
    return Int(count)
  }
}
