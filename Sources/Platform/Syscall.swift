import CPlatform
import Glibc

/// An operating error from a system call: thrown and answered, never a crash.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
  public let call: String
  public let errno: Int32
  public let context: String

  public init(call: String, errno: Int32, context: String = "") {
    self.call = call
    self.errno = errno
    self.context = context
  }

  /// The file system is full (ENOSPC) or the user's quota is used up (EDQUOT).
  public var isOutOfSpace: Bool { errno == ENOSPC || errno == EDQUOT }

  /// The failed call was an fsync or fdatasync (of a file or a directory).
  public var isSync: Bool { call == "fsync" || call == "fdatasync" }

  public var description: String {
    let reason = String(cString: strerror(errno))
    return context.isEmpty ? "\(call): \(reason) (errno \(errno))" : "\(call) \(context): \(reason) (errno \(errno))"
  }
}

/// The current thread's errno.
@inline(__always)
public func currentErrno() -> Int32 { caucus_errno() }

/// Every system call goes through here: `EINTR` is retried, `EBADF`/`EFAULT`/`EINVAL`
/// are programmer errors and crash (a descriptor we own is closed or a pointer is wrong), and
/// every other errno is an operating error and thrown.
@inline(__always)
@discardableResult
public func syscall<T: FixedWidthInteger>(
  _ name: @autoclosure () -> String, context: @autoclosure () -> String = "", _ body: () -> T
) throws(SystemError) -> T {
  while true {
    let result = body()
    if result >= 0 { return result }
    let error = caucus_errno()
    if error == EINTR { continue }
    precondition(error != EBADF && error != EFAULT, "\(name()) \(context()): programmer error, errno \(error)")
    throw SystemError(call: name(), errno: error, context: context())
  }
}

/// Ignore SIGPIPE process-wide so a peer that closed its socket cannot kill the process.
public func ignoreBrokenPipeSignal() {
  signal(SIGPIPE, SIG_IGN)
}
