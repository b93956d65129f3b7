import CCurl
import Glibc
import Platform

/// `curl_global_init` result; a global `let` is initialized exactly once, thread-safely, on first use.
private let curlGlobalInitCode: CURLcode = curl_global_init(Int(CURL_GLOBAL_ALL))

/// The node-to-node HTTP client: every request one node makes to another goes through here.
///
/// One worker thread drives a libcurl multi handle that runs up to `concurrentTransfersMax`
/// transfers at once and keeps connections alive in its connection cache, so repeated requests to
/// a peer reuse a connection. `send` never blocks: it appends to a bounded queue under a lock and,
/// when the worker sleeps, wakes it through an eventfd, so it is safe on an HTTP server's event
/// loop.
///
/// Completions:
/// - Each `send` calls its completion exactly once.
/// - Completions of accepted requests run on the worker thread. They must not block (no disk I/O,
///   no waiting on locks held across I/O, no `waitForCompletion`): every other transfer waits
///   for them. Hand real work to another thread or event loop.
/// - A request refused at once (`.overloaded`, `.shuttingDown`, or `.invalidRequest` for a
///   non-positive timeout) is completed on the calling thread before `send` returns: do not call
///   `send` while holding a lock the completion takes.
///
/// Sendable without `@unchecked`: the handle holds only `let`s of Sendable types (locks, eventfd,
/// thread handle). All libcurl handles are created, used and destroyed on the worker thread
/// (`PeerWorker`) and never leave it.
public final class PeerClient: Sendable {
  public let configuration: PeerClientConfiguration
  /// Signs every request with the cluster secret (`PeerAuthenticator`), when the node has one.
  public let authenticator: PeerAuthenticator?
  private let shared: PeerClientShared
  private let worker: OSThread
  /// True once the worker has been joined; its lock serializes concurrent `shutdown` calls.
  private let joined = Locked(false)

  /// Initializes libcurl process-wide. Idempotent and thread-safe; `PeerClient.init` calls it, but
  /// call it early in `main` (before other threads start), as libcurl asks.
  public static func globalInit() {
    precondition(
      curlGlobalInitCode == CURLE_OK,
      "curl_global_init failed: \(String(cString: curl_easy_strerror(curlGlobalInitCode)))")
  }

  /// Validates the configuration and starts the worker thread.
  public init(
    configuration: PeerClientConfiguration = PeerClientConfiguration(), authenticator: PeerAuthenticator? = nil
  ) throws {
    try configuration.validate()
    Self.globalInit()
    self.configuration = configuration
    self.authenticator = authenticator
    let shared = PeerClientShared(configuration: configuration, wakeup: try EventFD())
    self.shared = shared
    // The worker owns its curl state: created inside the thread, never shared.
    worker = OSThread(name: "peer-client") {
      let worker = PeerWorker(shared: shared)
      worker.run()
    }
  }

  deinit { shutdown() }

  /// Queues `request` and returns at once; `completion` runs exactly once with the response or
  /// the error (see the type's documentation for which thread runs it). Any thread may call this.
  public func send(
    _ request: PeerRequest,
    completion: @escaping @Sendable (Result<PeerResponse, PeerError>) -> Void
  ) {
    // Clamped to a day so the deadline arithmetic cannot overflow.
    let timeoutMs = min(request.timeoutMs ?? configuration.timeoutMs, Self.timeoutMsMax)
    let connectTimeoutMs = min(
      request.connectTimeoutMs ?? configuration.connectTimeoutMs, Self.timeoutMsMax)
    guard timeoutMs > 0, connectTimeoutMs > 0 else {
      completion(
        .failure(
          .invalidRequest(
            "timeoutMs (\(timeoutMs)) and connectTimeoutMs (\(connectTimeoutMs)) must be positive"))
      )
      return
    }
    var request = request
    if let authenticator {
      request.headers.append(
        (
          "X-Caucus-Peer",
          authenticator.headerValue(
            method: request.method, target: PeerAuthenticator.target(ofURL: request.url),
            identity: request.headers.first { $0.name.lowercased() == PeerAuthenticator.identityHeaderName }?.value,
            body: request.body, nowMs: PeerAuthenticator.wallClockMilliseconds())
        ))
    }
    let queued = QueuedRequest(
      request: request,
      deadlineNanoseconds: MonotonicClock.nowNanoseconds() + UInt64(timeoutMs) * 1_000_000,
      connectTimeoutMs: connectTimeoutMs, completion: completion)
    let queuedRequestsMax = configuration.queuedRequestsMax
    let admission = shared.inbox.withLock { inbox -> Admission in
      if inbox.stopping { return .stopping }
      if inbox.count >= queuedRequestsMax {
        inbox.requestsRefusedTotal += 1
        return .overloaded
      }
      inbox.append(queued)
      inbox.requestsAcceptedTotal += 1
      // Only a worker about to sleep needs the eventfd; an awake one sees the inbox next turn.
      defer { inbox.workerWaiting = false }
      return inbox.workerWaiting ? .acceptedWakingWorker : .accepted
    }
    switch admission {
    case .accepted: break
    case .acceptedWakingWorker: shared.wakeup.signal()
    case .overloaded: completion(.failure(.overloaded(queuedRequestsMax: queuedRequestsMax)))
    case .stopping: completion(.failure(.shuttingDown))
    }
  }

  private static let timeoutMsMax = 24 * 60 * 60 * 1_000

  private enum Admission { case accepted, acceptedWakingWorker, overloaded, stopping }

  /// Stops the worker: queued and in-flight requests complete with `.shuttingDown`, later sends
  /// are refused the same way, and every curl handle is cleaned up. Idempotent; returns after the
  /// worker has exited. Called from a completion (the worker thread) it only asks the worker to
  /// stop, which it does after that completion returns.
  public func shutdown() {
    shared.inbox.withLock { $0.stopping = true }
    shared.wakeup.signal()
    if shared.isWorkerThread() { return }
    joined.withLock { joined in
      guard !joined else { return }
      worker.join()
      joined = true
    }
  }

  /// Counters for metrics.
  public var statistics: PeerClientStatistics {
    var statistics = shared.transferStatistics.withLock { $0 }
    shared.inbox.withLock { inbox in
      statistics.requestsAcceptedTotal = inbox.requestsAcceptedTotal
      statistics.requestsRefusedTotal = inbox.requestsRefusedTotal
    }
    return statistics
  }

  /// The counters in Prometheus text format.
  public func prometheusMetrics() -> String {
    let statistics = self.statistics
    var text = ""
    for (name, help, value) in [
      ("requests_accepted", "Node-to-node HTTP requests accepted.", statistics.requestsAcceptedTotal),
      ("requests_refused", "Requests refused at once (the client's queue was full).", statistics.requestsRefusedTotal),
      ("requests_completed", "Requests that ended with a response.", statistics.requestsCompletedTotal),
      ("requests_failed", "Accepted requests that ended with an error.", statistics.requestsFailedTotal),
      ("connections_opened", "TCP connections opened.", statistics.connectionsOpenedTotal),
      ("connections_reused", "Transfers that ran on a kept-alive connection.", statistics.connectionsReusedTotal),
    ] {
      text += Prometheus.metric("caucus_peer_client_\(name)_total", help: help, UInt64(value))
    }
    return text
  }


  /// Requests waiting for a transfer slot, for metrics.
  public var queuedRequestCount: Int { shared.inbox.withLock { $0.count } }
}

/// A request waiting in the inbox for the worker.
struct QueuedRequest: Sendable {
  let request: PeerRequest
  let deadlineNanoseconds: UInt64
  let connectTimeoutMs: Int
  let completion: @Sendable (Result<PeerResponse, PeerError>) -> Void
}

/// Requests handed from `send` to the worker: a FIFO with a consumed prefix, plus the stop flag.
struct Inbox {
  private var items: [QueuedRequest] = []
  private var head = 0
  var stopping = false
  /// The worker is in (or about to enter) `curl_multi_poll` and must be woken through the eventfd
  /// for a new request. Set by the worker under the lock before it polls; cleared by the first
  /// sender that signals and by the worker when it takes requests. Saves an eventfd write and read
  /// per request while the worker is busy (completions that send again, bursts).
  var workerWaiting = false
  var requestsAcceptedTotal = 0
  var requestsRefusedTotal = 0

  var count: Int { items.count - head }

  mutating func append(_ item: QueuedRequest) { items.append(item) }

  /// Removes and returns the requests whose deadline is at or before `nowNanoseconds`, keeping the
  /// others in order. O(count): called only while every transfer slot is busy, at most every
  /// `queuedDeadlineCheckIntervalMs`.
  mutating func removeExpired(nowNanoseconds: UInt64) -> [QueuedRequest] {
    guard items[head...].contains(where: { $0.deadlineNanoseconds <= nowNanoseconds }) else {
      return []
    }
    var expired: [QueuedRequest] = []
    var kept: [QueuedRequest] = []
    kept.reserveCapacity(count)
    for item in items[head...] {
      if item.deadlineNanoseconds <= nowNanoseconds {
        expired.append(item)
      } else {
        kept.append(item)
      }
    }
    items = kept
    head = 0
    return expired
  }

  /// Removes and returns up to `countMax` requests, oldest first.
  mutating func take(_ countMax: Int) -> [QueuedRequest] {
    precondition(countMax >= 0)
    let end = min(items.count, head + countMax)
    let taken = Array(items[head..<end])
    head = end
    if head == items.count {
      items.removeAll(keepingCapacity: true)
      head = 0
    } else if head >= 1024, head * 2 >= items.count {
      items.removeFirst(head)
      head = 0
    }
    precondition(head <= items.count)
    return taken
  }
}

/// What the public handle and the worker share: only locks, the eventfd and constants.
final class PeerClientShared: Sendable {
  let configuration: PeerClientConfiguration
  let inbox = Locked(Inbox())
  let wakeup: EventFD
  /// Written by the worker only; read for `statistics`.
  let transferStatistics = Locked(PeerClientStatistics())
  /// The worker's pthread, set when it starts (to recognize `shutdown` called from a completion).
  let workerThread = Locked<pthread_t?>(nil)

  init(configuration: PeerClientConfiguration, wakeup: EventFD) {
    self.configuration = configuration
    self.wakeup = wakeup
  }

  func isWorkerThread() -> Bool {
    guard let worker = workerThread.withLock({ $0 }) else { return false }
    return pthread_equal(worker, pthread_self()) != 0
  }
}
