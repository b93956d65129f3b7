import CPlatform
import Glibc

/// Starts a detached-from-Swift-concurrency OS thread that runs `body` once. Joinable through the
/// returned handle. Threads here own their mutable state (created inside `body`).
public final class OSThread: @unchecked Sendable {
  // Sendable: `thread` is written once in init before any other access.
  private var thread: pthread_t = 0
  private final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }

  public init(name: String, _ body: @escaping @Sendable () -> Void) {
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let result = pthread_create(&thread, nil, { raw in
      let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
      box.body()
      return nil
    }, box)
    precondition(result == 0, "pthread_create failed: \(result)")
    _ = pthread_setname_np(thread, String(name.prefix(15)))
  }

  /// Waits for the thread to finish. Call at most once.
  public func join() {
    precondition(pthread_join(thread, nil) == 0)
  }
}
