import CPlatform
import Glibc
import Platform
import Synchronization

/// Counters for operators (`/metrics`): a snapshot, read from any thread.
public struct HTTPServerStatistics: Sendable, Equatable {
  public var connectionsOpen: Int
  public var connectionsAcceptedTotal: Int
  /// Connections answered 503 and closed because `connectionsMax` was reached.
  public var connectionsRefusedTotal: Int
  /// Requests handed to the handler.
  public var requestsTotal: Int
  /// Requests the server answered itself with an error (malformed, over a limit, timed out).
  public var requestErrorsTotal: Int
  /// Answers given after their connection had closed (dropped).
  public var responsesDroppedTotal: Int
  /// TLS handshakes completed (a TLS server only).
  public var tlsHandshakesTotal: Int
  /// TLS connections closed before their handshake completed: refused (an untrusted or missing
  /// client certificate, not TLS at all), reset, or over `tlsHandshakeTimeoutMs`.
  public var tlsHandshakeFailuresTotal: Int
  /// Plaintext HTTP requests on a TLS port, answered 400 `tls_required`.
  public var tlsPlaintextRefusedTotal: Int
}

/// The counters behind `HTTPServerStatistics`. Written by the loop thread, read by any thread.
final class StatisticsCounters: Sendable {
  let connectionsOpen = Atomic<Int>(0)
  let connectionsAcceptedTotal = Atomic<Int>(0)
  let connectionsRefusedTotal = Atomic<Int>(0)
  let requestsTotal = Atomic<Int>(0)
  let requestErrorsTotal = Atomic<Int>(0)
  let responsesDroppedTotal = Atomic<Int>(0)
  let tlsHandshakesTotal = Atomic<Int>(0)
  let tlsHandshakeFailuresTotal = Atomic<Int>(0)
  let tlsPlaintextRefusedTotal = Atomic<Int>(0)

  @inline(__always) static func increment(_ counter: borrowing Atomic<Int>, by amount: Int = 1) {
    counter.wrappingAdd(amount, ordering: .relaxed)
  }

  var snapshot: HTTPServerStatistics {
    HTTPServerStatistics(
      connectionsOpen: connectionsOpen.load(ordering: .relaxed),
      connectionsAcceptedTotal: connectionsAcceptedTotal.load(ordering: .relaxed),
      connectionsRefusedTotal: connectionsRefusedTotal.load(ordering: .relaxed),
      requestsTotal: requestsTotal.load(ordering: .relaxed),
      requestErrorsTotal: requestErrorsTotal.load(ordering: .relaxed),
      responsesDroppedTotal: responsesDroppedTotal.load(ordering: .relaxed),
      tlsHandshakesTotal: tlsHandshakesTotal.load(ordering: .relaxed),
      tlsHandshakeFailuresTotal: tlsHandshakeFailuresTotal.load(ordering: .relaxed),
      tlsPlaintextRefusedTotal: tlsPlaintextRefusedTotal.load(ordering: .relaxed))
  }
}

/// A minimal HTTP/1.1 server on POSIX sockets: one epoll event loop on its own thread,
/// non-blocking sockets, keep-alive, pipelining with answers in request order, Content-Length and
/// chunked request bodies, `Expect: 100-continue`, and a limit on everything
/// (`HTTPServerConfiguration`). With `configuration.tls`, HTTPS: each connection's TLS handshake
/// runs on the loop (non-blocking, within `tlsHandshakeTimeoutMs`), then HTTP runs over the
/// session as over a plaintext socket.
///
/// The handler runs on the loop thread and must not block; it answers through the
/// `HTTPResponder`, from any thread, now or later. A late answer for a connection that has closed
/// is dropped: connections are identified by a generation number, never by descriptor.
public final class HTTPServer: Sendable {
  public let configuration: HTTPServerConfiguration
  private let handler: any HTTPHandler
  /// One per event loop: answers travel back to the loop that owns their connection.
  private let mailboxes: [Mailbox]
  private let counters = StatisticsCounters()
  private let lifecycle = Locked(Lifecycle())
  /// The TLS context new connections start their sessions from: `configuration.tls` until
  /// `replaceTLSContext` (a certificate reloaded on SIGHUP). Connections keep the session they
  /// began with.
  private let tlsContext: Locked<TLSContext?>

  private struct Lifecycle {
    var threads: [OSThread] = []
    var port: UInt16? = nil
    var started = false
  }

  public init(
    configuration: HTTPServerConfiguration = HTTPServerConfiguration(), handler: any HTTPHandler
  ) {
    self.configuration = configuration
    self.handler = handler
    self.mailboxes = (0..<min(64, max(1, configuration.eventLoopCount))).map { _ in Mailbox() }
    self.tlsContext = Locked(configuration.tls)
  }

  /// New connections use `context` from now on (certificates rotated without a restart); those
  /// open keep theirs. A server started without TLS cannot be switched to it.
  public func replaceTLSContext(_ context: TLSContext) {
    precondition(configuration.tls != nil, "a plaintext server cannot turn to TLS")
    tlsContext.withLock { $0 = context }
  }

  /// The bound port once started.
  public var port: UInt16? { lifecycle.withLock { $0.port } }

  /// Connection and request counters, for metrics.
  public var statistics: HTTPServerStatistics { counters.snapshot }

  /// Validates the configuration, binds and listens (SO_REUSEADDR), starts the event-loop
  /// thread(s) and returns the bound port (the kernel's choice when the configured port is 0).
  /// Call once.
  @discardableResult
  public func start() throws -> UInt16 {
    try configuration.validate()
    try lifecycle.withLock { state in
      guard !state.started else {
        throw HTTPServerConfigurationError(message: "HTTPServer.start() called twice")
      }
      state.started = true
    }
    ignoreBrokenPipeSignal()
    let listener = try Socket.listen(
      on: SocketAddress(host: configuration.host, port: configuration.port),
      backlog: configuration.listenBacklog)
    let port = try listener.localAddress().port
    // Every loop accepts from the same listening socket through its own descriptor (a dup), so
    // each loop can close its own at shutdown; EPOLLEXCLUSIVE wakes one loop per connection.
    var descriptors: [Int32] = []
    do {
      for _ in 1..<mailboxes.count {
        let original = listener.descriptor
        descriptors.append(
          try syscall("fcntl", context: "F_DUPFD_CLOEXEC") { fcntl(original, F_DUPFD_CLOEXEC, 0) })
      }
    } catch {
      for descriptor in descriptors { _ = Glibc.close(descriptor) }
      throw error
    }
    descriptors.insert(listener.release(), at: 0)

    var threads: [OSThread] = []
    var failure: (any Error)? = nil
    for (index, mailbox) in mailboxes.enumerated() {
      let gate = StartGate()
      let descriptor = descriptors[index]
      let (configuration, tlsContext, handler, counters) = (configuration, tlsContext, handler, counters)
      let exclusiveAccept = mailboxes.count > 1
      let thread = OSThread(name: "http-loop-\(index)") {
        let loop: EventLoop
        do {
          loop = try EventLoop(
            listener: Socket(descriptor: descriptor), exclusiveAccept: exclusiveAccept,
            configuration: configuration, tlsContext: tlsContext,
            handler: handler, mailbox: mailbox, counters: counters)
        } catch {
          gate.open(.failure(error))
          return
        }
        gate.open(.success(()))
        loop.run()
      }
      threads.append(thread)
      if case .failure(let error) = gate.wait() {
        failure = error
        for later in descriptors[(index + 1)...] { _ = Glibc.close(later) }
        break
      }
    }
    if let failure {
      // Stop the loops that did start; the failed one has exited already.
      for mailbox in mailboxes { mailbox.requestShutdown(deadlineMs: 0) }
      for thread in threads { thread.join() }
      throw failure
    }
    lifecycle.withLock { state in
      state.threads = threads
      state.port = port
    }
    return port
  }

  /// Stops accepting, lets requests already handed to the handler be answered (for at most
  /// `gracePeriodMs`), closes every connection, and returns once the loop threads have exited.
  /// Requests still arriving are dropped. Safe to call more than once and before `start()`;
  /// never from a handler (the loop would wait for itself).
  public func shutdown(gracePeriodMs: Int = 5_000) {
    let threads: [OSThread] = lifecycle.withLock { state in
      defer { state.threads = [] }
      return state.threads
    }
    guard !threads.isEmpty else { return }
    let current = pthread_self()
    for mailbox in mailboxes {
      let onLoopThread = mailbox.state.withLock { pthread_equal($0.loopThread, current) != 0 }
      precondition(
        !onLoopThread,
        "HTTPServer.shutdown() called from a handler on a loop thread would wait for itself")
    }
    let deadline = MonotonicClock.nowMilliseconds() + UInt64(max(0, gracePeriodMs))
    for mailbox in mailboxes { mailbox.requestShutdown(deadlineMs: deadline) }
    for thread in threads { thread.join() }
  }

  deinit {
    // Releasing a running server stops it (without a grace period) rather than leaking its threads.
    shutdown(gracePeriodMs: 0)
  }
}

// MARK: - Cross-thread hand-off

/// Answers completed on any thread, queued for the loop, plus the shutdown request. The eventfd
/// wakes the loop once per batch (`wakePending`); answers given on the loop thread itself need no
/// wake-up because the loop drains the mailbox after every batch of events.
final class Mailbox: Sendable {
  struct Completion {
    var connectionID: UInt64
    var sequence: UInt64
    var response: HTTPResponse
  }

  struct State {
    var completions: [Completion] = []
    var wakePending = false
    var loopThread: pthread_t = 0
    var shutdownDeadlineMs: UInt64? = nil
    var loopExited = false
  }

  let state = Locked(State())
  let wake: EventFD

  init() {
    do {
      wake = try EventFD()
    } catch {
      preconditionFailure("eventfd creation failed: \(error)")
    }
  }

  func post(_ completion: Completion) {
    let callerThread = pthread_self()
    let mustWake = state.withLock { state -> Bool in
      if state.loopExited { return false }  // the server is gone: the answer is dropped
      state.completions.append(completion)
      if state.loopThread != 0 && pthread_equal(state.loopThread, callerThread) != 0 {
        return false
      }
      if state.wakePending { return false }
      state.wakePending = true
      return true
    }
    if mustWake { wake.signal() }
  }

  func requestShutdown(deadlineMs: UInt64) {
    state.withLock { state in
      if state.shutdownDeadlineMs == nil { state.shutdownDeadlineMs = deadlineMs }
    }
    wake.signal()
  }
}

/// Lets `start()` wait until the loop thread has set itself up (or failed to).
/// Sendable: `result` is only touched with `lock` held.
private final class StartGate: @unchecked Sendable {
  private let lock = ConditionLock()
  private var result: Result<Void, any Error>? = nil

  func open(_ result: Result<Void, any Error>) {
    lock.withLock {
      self.result = result
      lock.broadcast()
    }
  }

  func wait() -> Result<Void, any Error> {
    lock.withLock {
      while result == nil { lock.wait() }
      return result!
    }
  }
}

// MARK: - The event loop (confined to its thread)

/// One connection's state. Owned by the loop thread.
private final class Connection {
  /// What one request (in arrival order) still owes the client.
  struct Slot {
    var sequence: UInt64
    /// `100 Continue` to send when this slot reaches the front.
    var continuePending: Bool
    /// The body is still being read (the slot was opened by `Expect: 100-continue`).
    var awaitingRequest: Bool
    var response: HTTPResponse?
    var minorVersion: Int
    var isHeadMethod: Bool
  }

  /// How the connection's bytes travel.
  enum Phase: Equatable {
    /// Plaintext HTTP: every connection of a plaintext server, and a plaintext request refused
    /// on a TLS port (its 400 goes out in plaintext).
    case plaintext
    /// TLS port, nothing received yet: the first byte tells a TLS handshake (0x16) from a
    /// plaintext HTTP request (a method's capital letter).
    case awaitingFirstByte
    case handshaking
    /// HTTP over the TLS session.
    case established
  }

  let id: UInt64
  let socket: Socket
  let remoteAddress: String
  var phase: Phase = .plaintext
  /// The connection's TLS session, from its first handshake byte on.
  var tls: TLSSession?
  /// While the handshake runs: when it must be done by (from accept), and what it waits for.
  var handshakeDeadlineMs: UInt64?
  var handshakeWaitsFor: EpollEvents = .readable
  /// A TLS read that must wait until the socket is writable (OpenSSL has something to send
  /// first), or a TLS write until it is readable. Rare (no renegotiation), but then the
  /// connection must be woken by the other readiness.
  var readWaitsForWritable = false
  var writeWaitsForReadable = false
  var parser: HTTPRequestParser
  var slots: [Slot] = []
  /// Index of the first unanswered slot in `slots`.
  var slotsHead = 0
  var nextSequence: UInt64 = 0
  var output: [UInt8] = []
  var outputOffset = 0
  /// Body bytes of answers held in `slots` waiting for an earlier answer.
  var heldResponseBytes = 0
  /// No more requests will be read: close once every slot is answered and sent.
  var closing = false
  var peerClosed = false
  var lingerDeadlineMs: UInt64? = nil
  var lingerDiscardedBytes = 0
  var headerDeadlineMs: UInt64?
  var lastActivityMs: UInt64
  var registered: EpollEvents = .readable
  var isDirty = false
  var isClosed = false

  init(
    id: UInt64, socket: Socket, remoteAddress: String, parser: HTTPRequestParser, nowMs: UInt64,
    headerTimeoutMs: Int
  ) {
    self.id = id
    self.socket = socket
    self.remoteAddress = remoteAddress
    self.parser = parser
    self.lastActivityMs = nowMs
    self.headerDeadlineMs = nowMs + UInt64(headerTimeoutMs)
  }

  var outstandingCount: Int { slots.count - slotsHead }
  var unsentBytes: Int { output.count - outputOffset }
  var isHandshaking: Bool { phase == .awaitingFirstByte || phase == .handshaking }
}

private final class EventLoop {
  private static let listenerToken: UInt64 = 0
  private static let wakeToken: UInt64 = 1
  private static let lingerDiscardBytesMax = 8 * 1024 * 1024
  private static let continueBytes: [UInt8] = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
  private static let plaintextRefusal = HTTPParseError(
    status: 400, code: "tls_required",
    message: "This port speaks TLS: use https:// (verifying the server with the cluster's CA).")

  private let configuration: HTTPServerConfiguration
  /// The server's current TLS context (`HTTPServer.replaceTLSContext`).
  private let tlsContext: Locked<TLSContext?>
  private let handler: any HTTPHandler
  private let mailbox: Mailbox
  private let counters: StatisticsCounters
  private let limits: HTTPParserLimits
  private let epoll: Epoll
  private var listener: Socket?
  private let listenerEvents: EpollEvents
  private var acceptPausedUntilMs: UInt64? = nil
  private var connections: [UInt64: Connection] = [:]
  private var nextConnectionID: UInt64 = 2
  private var dirty: [Connection] = []
  private var completions: [Mailbox.Completion] = []
  private let readBuffer: UnsafeMutableRawBufferPointer
  private var shutdownDeadlineMs: UInt64? = nil
  private let sweepIntervalMs: UInt64
  private var nextSweepMs: UInt64
  private let overloadedResponse: [UInt8]

  init(
    listener: Socket, exclusiveAccept: Bool, configuration: HTTPServerConfiguration, tlsContext: Locked<TLSContext?>,
    handler: any HTTPHandler,
    mailbox: Mailbox, counters: StatisticsCounters
  ) throws {
    self.listenerEvents = exclusiveAccept ? [.readable, .exclusive] : .readable
    self.configuration = configuration
    self.tlsContext = tlsContext
    self.counters = counters
    self.handler = handler
    self.mailbox = mailbox
    self.limits = HTTPParserLimits(configuration)
    self.listener = listener
    epoll = try Epoll(eventsPerWaitMax: 256)
    try epoll.add(listener.descriptor, events: listenerEvents, token: Self.listenerToken)
    try epoll.add(mailbox.wake.descriptor, events: .readable, token: Self.wakeToken)
    readBuffer = .allocate(byteCount: configuration.readBufferBytes, alignment: 16)
    let shortest = min(
      configuration.headerTimeoutMs, configuration.idleTimeoutMs, configuration.lingerTimeoutMs)
    sweepIntervalMs = UInt64(min(250, max(5, shortest / 4)))
    nextSweepMs = MonotonicClock.nowMilliseconds() + sweepIntervalMs
    var overloaded: [UInt8] = []
    HTTPResponse.jsonError(
      status: 503, code: "overloaded",
      message: "The server has too many open connections; retry later.",
      headers: [("Retry-After", "1")] + configuration.serverResponseHeaders
    )
    .serialize(into: &overloaded, close: true, keepAliveHTTP10: false, omitBody: false)
    overloadedResponse = overloaded
    let thread = pthread_self()
    mailbox.state.withLock { $0.loopThread = thread }
  }

  deinit {
    readBuffer.deallocate()
  }

  func run() {
    while true {
      let now = MonotonicClock.nowMilliseconds()
      var timeoutMs = nextSweepMs > now ? Int32(nextSweepMs - now) : 0
      if let deadline = shutdownDeadlineMs {
        timeoutMs = min(timeoutMs, deadline > now ? Int32(deadline - now) : 0)
      }
      epoll.wait(timeoutMs: timeoutMs) { event in handle(event) }
      // Answers given during the batch (same thread) or by other threads; flushing can parse
      // buffered pipelined requests whose answers come back here, hence the bounded repeat.
      var rounds = 0
      repeat {
        drainMailbox()
        flushDirty()
        rounds += 1
      } while rounds < 64 && mailboxHasWork()
      let after = MonotonicClock.nowMilliseconds()
      if after >= nextSweepMs {
        sweep(nowMs: after)
        flushDirty()
        nextSweepMs = after + sweepIntervalMs
      }
      if let deadline = shutdownDeadlineMs {
        if connections.isEmpty { break }
        if after >= deadline {
          for connection in Array(connections.values) { close(connection) }
          break
        }
      }
    }
    mailbox.state.withLock { state in
      state.loopExited = true
      state.completions = []
    }
    listener?.close()
  }

  private func mailboxHasWork() -> Bool {
    mailbox.state.withLock { !$0.completions.isEmpty }
  }

  // MARK: Events

  private func handle(_ event: EpollEvent) {
    switch event.token {
    case Self.listenerToken:
      acceptConnections()
    case Self.wakeToken:
      mailbox.wake.drain()
    default:
      guard let connection = connections[event.token] else { return }
      if event.events.contains(.error) || event.events.contains(.hangUp) {
        close(connection)  // reset, or both directions shut: nothing can be sent any more
        return
      }
      if connection.isHandshaking {
        advanceHandshake(connection)
        return
      }
      if event.events.contains(.readable) {
        let forWrite = connection.writeWaitsForReadable
        if forWrite {
          connection.writeWaitsForReadable = false
          writeOutput(connection)
        }
        if !connection.isClosed && (!forWrite || wantsToRead(connection)) { handleReadable(connection) }
      }
      if !connection.isClosed && event.events.contains(.writable) {
        if connection.readWaitsForWritable {
          connection.readWaitsForWritable = false
          handleReadable(connection)
        }
        if !connection.isClosed { writeOutput(connection) }
      }
    }
  }

  private func acceptConnections() {
    guard let listener else { return }
    for _ in 0..<64 {
      let accepted: (Socket, SocketAddress)?
      do {
        accepted = try listener.accept()
      } catch {
        if error.errno == EMFILE || error.errno == ENFILE || error.errno == ENOBUFS
          || error.errno == ENOMEM
        {
          // Out of descriptors: stop accepting for a moment instead of spinning on a readable
          // listener (remove, not modify: EPOLLEXCLUSIVE registrations cannot be modified).
          try? epoll.remove(listener.descriptor)
          acceptPausedUntilMs = MonotonicClock.nowMilliseconds() + 100
          return
        }
        continue  // ECONNABORTED and the like: that client is gone, the next may be fine
      }
      guard let (socket, address) = accepted else { return }
      // The count is shared by every loop (exact with one loop, off by at most a few with more).
      if counters.connectionsOpen.load(ordering: .relaxed) >= configuration.connectionsMax
        || shutdownDeadlineMs != nil
      {
        // (A TLS client could not read a plaintext answer: it is only closed.)
        if configuration.tls == nil { _ = overloadedResponse.withUnsafeBytes { try? socket.send($0) } }
        socket.close()
        StatisticsCounters.increment(counters.connectionsRefusedTotal)
        continue
      }
      try? socket.setNoDelay()
      let id = nextConnectionID
      nextConnectionID += 1
      let now = MonotonicClock.nowMilliseconds()
      let connection = Connection(
        id: id, socket: socket, remoteAddress: address.description,
        parser: HTTPRequestParser(limits: limits), nowMs: now,
        headerTimeoutMs: configuration.headerTimeoutMs)
      if configuration.tls != nil {
        // The handshake has its own deadline; the head's starts once it is done.
        connection.phase = .awaitingFirstByte
        connection.handshakeDeadlineMs = now + UInt64(configuration.tlsHandshakeTimeoutMs)
        connection.headerDeadlineMs = nil
      }
      do {
        try epoll.add(socket.descriptor, events: .readable, token: id)
      } catch {
        socket.close()
        continue
      }
      connections[id] = connection
      StatisticsCounters.increment(counters.connectionsAcceptedTotal)
      StatisticsCounters.increment(counters.connectionsOpen)
    }
  }

  private func handleReadable(_ connection: Connection) {
    let received: Int
    switch receive(connection) {
    case .failed:
      close(connection)  // ECONNRESET and the like, or a TLS failure
      return
    case .nothing:
      if connection.readWaitsForWritable { updateInterest(connection) }
      return
    case .endOfStream: received = 0
    case .bytes(let count): received = count
    }
    if received == 0 {
      connection.peerClosed = true
      if connection.lingerDeadlineMs != nil {
        close(connection)
        return
      }
    } else {
      connection.lastActivityMs = MonotonicClock.nowMilliseconds()
      if connection.lingerDeadlineMs != nil {
        connection.lingerDiscardedBytes += received
        if connection.lingerDiscardedBytes > Self.lingerDiscardBytesMax { close(connection) }
        return
      }
      if connection.closing { return }  // bytes after the last request we will answer: ignored
      connection.parser.append(UnsafeRawBufferPointer(rebasing: readBuffer[0..<received]))
    }
    processRequests(connection)
    markDirty(connection)
  }

  private enum Received {
    case bytes(Int)
    case nothing
    case endOfStream
    case failed
  }

  /// What the connection has for us now: plaintext from the socket, or decrypted from its TLS
  /// session (raw, to be discarded, while it lingers).
  private func receive(_ connection: Connection) -> Received {
    if let session = connection.tls, connection.lingerDeadlineMs == nil {
      switch session.read(into: readBuffer) {
      case .done(let count): return .bytes(count)
      case .wantRead: return .nothing
      case .wantWrite:
        connection.readWaitsForWritable = true
        return .nothing
      case .closed: return .endOfStream
      case .failed: return .failed
      }
    }
    do {
      guard let count = try connection.socket.receive(into: readBuffer) else { return .nothing }
      return count == 0 ? .endOfStream : .bytes(count)
    } catch {
      return .failed
    }
  }

  private enum Sent {
    case bytes(Int)
    case wouldBlock
    case failed
  }

  /// Sends what the connection takes now: to the socket, or through its TLS session.
  private func send(_ connection: Connection, _ bytes: UnsafeRawBufferPointer) -> Sent {
    if let session = connection.tls {
      switch session.write(bytes) {
      case .done(let count): return .bytes(count)
      case .wantWrite: return .wouldBlock
      case .wantRead:
        connection.writeWaitsForReadable = true
        return .wouldBlock
      case .closed, .failed: return .failed
      }
    }
    do {
      guard let count = try connection.socket.send(bytes) else { return .wouldBlock }
      return .bytes(count)
    } catch {
      return .failed
    }
  }

  // MARK: TLS handshake

  /// Moves a TLS connection's handshake on as far as the socket allows: first, from the first
  /// byte, whether it is TLS at all; then the handshake, which ends in HTTP over the session or a
  /// close.
  private func advanceHandshake(_ connection: Connection) {
    precondition(connection.isHandshaking, "advanceHandshake on a connection past its handshake")
    if connection.phase == .awaitingFirstByte {
      var first: UInt8 = 0
      let peeked: Int?
      do {
        peeked = try withUnsafeMutableBytes(of: &first) { try connection.socket.peek(into: $0) }
      } catch {
        close(connection)
        return
      }
      guard let peeked else { return }  // nothing yet
      guard peeked > 0 else {
        close(connection)  // closed before saying anything
        return
      }
      if (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(first) {
        refusePlaintext(connection)
        return
      }
      // Anything else goes to OpenSSL, which fails the handshake if it is not TLS.
      guard let context = tlsContext.withLock({ $0 }), let session = try? context.makeSession(descriptor: connection.socket.descriptor)
      else {
        close(connection)
        return
      }
      connection.tls = session
      connection.phase = .handshaking
    }
    guard let session = connection.tls else { preconditionFailure("a handshaking connection without a session") }
    switch session.handshake() {
    case .done:
      let now = MonotonicClock.nowMilliseconds()
      connection.phase = .established
      connection.handshakeDeadlineMs = nil
      connection.lastActivityMs = now
      connection.headerDeadlineMs = now + UInt64(configuration.headerTimeoutMs)
      StatisticsCounters.increment(counters.tlsHandshakesTotal)
    case .wantRead:
      connection.handshakeWaitsFor = .readable
    case .wantWrite:
      connection.handshakeWaitsFor = .writable
    case .closed, .failed:
      close(connection)  // counted as a failed handshake
      return
    }
    updateInterest(connection)
  }

  /// A plaintext HTTP request on a TLS port: a plaintext 400 saying so, then the usual close
  /// (its request is never parsed).
  private func refusePlaintext(_ connection: Connection) {
    connection.phase = .plaintext
    connection.handshakeDeadlineMs = nil
    StatisticsCounters.increment(counters.tlsPlaintextRefusedTotal)
    answerWithError(connection, Self.plaintextRefusal)
  }

  /// Turns buffered bytes into requests for the handler, while the connection has room.
  private func processRequests(_ connection: Connection) {
    while !connection.closing && connection.outstandingCount < configuration.pipelinedRequestsMax
      && connection.unsentBytes + connection.heldResponseBytes
        < configuration.responseBufferBytesMax
    {
      guard let event = connection.parser.next() else {
        if connection.peerClosed {
          connection.closing = true  // the client sends nothing more; a partial request is dropped
        }
        break
      }
      switch event {
      case .continueExpected:
        connection.slots.append(
          Connection.Slot(
            sequence: connection.nextSequence, continuePending: true, awaitingRequest: true,
            response: nil,
            minorVersion: 1, isHeadMethod: false))
        connection.nextSequence += 1
        markDirty(connection)
      case .request(let parsed):
        let sequence: UInt64
        if let last = connection.slots.indices.last, last >= connection.slotsHead,
          connection.slots[last].awaitingRequest
        {
          connection.slots[last].awaitingRequest = false
          connection.slots[last].minorVersion = parsed.minorVersion
          connection.slots[last].isHeadMethod = parsed.request.method == "HEAD"
          sequence = connection.slots[last].sequence
        } else {
          sequence = connection.nextSequence
          connection.nextSequence += 1
          connection.slots.append(
            Connection.Slot(
              sequence: sequence, continuePending: false, awaitingRequest: false, response: nil,
              minorVersion: parsed.minorVersion, isHeadMethod: parsed.request.method == "HEAD"))
        }
        if !parsed.keepAlive { connection.closing = true }
        var request = parsed.request
        request.remoteAddress = connection.remoteAddress
        let mailbox = mailbox
        let connectionID = connection.id
        StatisticsCounters.increment(counters.requestsTotal)
        handler.handle(
          request,
          responder: HTTPResponder { response in
            mailbox.post(
              Mailbox.Completion(connectionID: connectionID, sequence: sequence, response: response)
            )
          })
      case .failure(let error):
        answerWithError(connection, error)
      }
    }
    updateHeaderDeadline(connection)
  }

  private func updateHeaderDeadline(_ connection: Connection) {
    if connection.parser.isReadingHead && !connection.closing {
      if connection.headerDeadlineMs == nil {
        connection.headerDeadlineMs =
          MonotonicClock.nowMilliseconds() + UInt64(configuration.headerTimeoutMs)
      }
    } else if connection.parser.isReadingBody || connection.nextSequence > 0 || connection.closing {
      // (A new connection keeps its accept-time deadline until its first request head arrives.)
      connection.headerDeadlineMs = nil
    }
  }

  /// Queues an error answer after the earlier answers and stops reading the connection.
  private func answerWithError(_ connection: Connection, _ error: HTTPParseError) {
    StatisticsCounters.increment(counters.requestErrorsTotal)
    let response = HTTPResponse.jsonError(
      status: error.status, code: error.code, message: error.message, headers: configuration.serverResponseHeaders)
    connection.heldResponseBytes += response.body.count
    // A slot opened by 100-continue whose body failed takes the error in its place.
    if let last = connection.slots.indices.last, last >= connection.slotsHead,
      connection.slots[last].awaitingRequest
    {
      connection.slots[last].awaitingRequest = false
      connection.slots[last].response = response
    } else {
      connection.slots.append(
        Connection.Slot(
          sequence: connection.nextSequence, continuePending: false, awaitingRequest: false,
          response: response,
          minorVersion: 1, isHeadMethod: false))
      connection.nextSequence += 1
    }
    connection.closing = true
    connection.headerDeadlineMs = nil
    markDirty(connection)
  }

  // MARK: Answers

  private func drainMailbox() {
    mailbox.state.withLock { state in
      swap(&state.completions, &completions)
      state.wakePending = false
      if shutdownDeadlineMs == nil, let deadline = state.shutdownDeadlineMs {
        shutdownDeadlineMs = deadline
        beginShutdownPending = true
      }
    }
    if beginShutdownPending {
      beginShutdownPending = false
      beginShutdown()
    }
    for completion in completions {
      guard let connection = connections[completion.connectionID] else {
        StatisticsCounters.increment(counters.responsesDroppedTotal)  // its connection closed
        continue
      }
      guard connection.slotsHead < connection.slots.count else { continue }  // nothing outstanding
      // Slots hold consecutive sequence numbers from the first unanswered one.
      let firstSequence = connection.slots[connection.slotsHead].sequence
      guard completion.sequence >= firstSequence else { continue }
      let index = connection.slotsHead + Int(completion.sequence - firstSequence)
      guard index < connection.slots.count, connection.slots[index].sequence == completion.sequence,
        connection.slots[index].response == nil, !connection.slots[index].awaitingRequest
      else { continue }  // answered twice, or dropped after an earlier `Connection: close`
      connection.heldResponseBytes += completion.response.body.count
      connection.slots[index].response = completion.response
      markDirty(connection)
    }
    completions.removeAll(keepingCapacity: true)
  }

  private var beginShutdownPending = false

  private func beginShutdown() {
    if let listener {
      listener.close()
      self.listener = nil
    }
    for connection in Array(connections.values) {
      connection.closing = true
      connection.headerDeadlineMs = nil
      // A request whose body is still arriving (after 100 Continue) will not be read: forget it.
      if let last = connection.slots.indices.last, last >= connection.slotsHead,
        connection.slots[last].awaitingRequest
      {
        connection.slots.removeLast()
      }
      markDirty(connection)
    }
  }

  private func markDirty(_ connection: Connection) {
    if connection.isDirty || connection.isClosed { return }
    connection.isDirty = true
    dirty.append(connection)
  }

  private func flushDirty() {
    var index = 0
    while index < dirty.count {  // flushing may dirty more connections (never the same twice)
      let connection = dirty[index]
      connection.isDirty = false
      if !connection.isClosed { flush(connection) }
      index += 1
    }
    dirty.removeAll(keepingCapacity: true)
  }

  /// Serializes every answer that is next in request order, sends, and decides what comes next
  /// for the connection (more requests, close, linger).
  private func flush(_ connection: Connection) {
    precondition(connection.slotsHead <= connection.slots.count, "slot head past the slots")
    precondition(
      connection.outputOffset <= connection.output.count, "output offset past the output")
    if connection.outputOffset == connection.output.count {
      connection.output.removeAll(keepingCapacity: connection.output.capacity <= 256 * 1024)
      connection.outputOffset = 0
    }
    while connection.slotsHead < connection.slots.count {
      let slotIndex = connection.slotsHead
      if connection.slots[slotIndex].continuePending {
        connection.output.append(contentsOf: Self.continueBytes)
        connection.slots[slotIndex].continuePending = false
      }
      guard let response = connection.slots[slotIndex].response else { break }
      let slot = connection.slots[slotIndex]
      connection.heldResponseBytes -= response.body.count
      let isLast = connection.closing && slotIndex == connection.slots.count - 1
      let close = isLast || response.asksToClose
      response.serialize(
        into: &connection.output, close: close, keepAliveHTTP10: slot.minorVersion == 0 && !close,
        omitBody: slot.isHeadMethod)
      connection.slotsHead += 1
      if close {
        connection.closing = true
        connection.heldResponseBytes = 0
        connection.slots.removeAll()  // later pipelined requests are dropped with the connection
        connection.slotsHead = 0
        break
      }
    }
    if connection.slotsHead == connection.slots.count {
      connection.slots.removeAll(keepingCapacity: true)
      connection.slotsHead = 0
    }
    precondition(connection.heldResponseBytes >= 0, "held response bytes went negative")
    writeOutput(connection)
  }

  private func writeOutput(_ connection: Connection) {
    while connection.outputOffset < connection.output.count {
      let offset = connection.outputOffset
      let result = connection.output.withUnsafeBytes { raw in
        send(connection, UnsafeRawBufferPointer(rebasing: raw[offset...]))
      }
      let sent: Int
      switch result {
      case .failed:
        close(connection)  // EPIPE, ECONNRESET: the client is gone
        return
      case .wouldBlock:
        updateInterest(connection)
        return
      case .bytes(let count): sent = count
      }
      connection.outputOffset += sent
      connection.lastActivityMs = MonotonicClock.nowMilliseconds()
    }
    if connection.outputOffset == connection.output.count {
      connection.output.removeAll(keepingCapacity: connection.output.capacity <= 256 * 1024)
      connection.outputOffset = 0
      if connection.outstandingCount == 0 {
        if connection.closing {
          finishConnection(connection)
          return
        }
        // Room again: parse pipelined requests waiting in the buffer (or learn, after the
        // client's end of stream, that none will come).
        if connection.parser.bufferedByteCount > 0 || connection.peerClosed {
          processRequests(connection)
        }
        if connection.closing && connection.outstandingCount == 0
          && connection.outputOffset == connection.output.count
        {
          finishConnection(connection)
          return
        }
      } else if !connection.closing && connection.parser.bufferedByteCount > 0 {
        processRequests(connection)
      }
    }
    updateInterest(connection)
  }

  /// Every answer is sent and no request will follow: close, after a linger when the client may
  /// still be sending (so it reads our last answer instead of a reset).
  private func finishConnection(_ connection: Connection) {
    _ = connection.tls?.shutdown()  // close_notify, best effort (the answers are framed already)
    if connection.peerClosed || shutdownDeadlineMs != nil {
      close(connection)
      return
    }
    if connection.lingerDeadlineMs == nil {
      connection.socket.shutdownWrite()
      connection.lingerDeadlineMs =
        MonotonicClock.nowMilliseconds() + UInt64(configuration.lingerTimeoutMs)
      connection.headerDeadlineMs = nil
    }
    updateInterest(connection)
  }

  private func updateInterest(_ connection: Connection) {
    if connection.isClosed { return }
    var wanted: EpollEvents = []
    if connection.phase == .awaitingFirstByte {
      wanted = .readable
    } else if connection.phase == .handshaking {
      wanted = connection.handshakeWaitsFor
    } else if connection.lingerDeadlineMs != nil {
      wanted = .readable
    } else {
      if wantsToRead(connection) { wanted.insert(.readable) }
      if connection.outputOffset < connection.output.count { wanted.insert(.writable) }
      if connection.readWaitsForWritable { wanted.insert(.writable) }
      if connection.writeWaitsForReadable { wanted.insert(.readable) }
    }
    if wanted != connection.registered {
      if wanted.contains(.readable) && !connection.registered.contains(.readable)
        && connection.headerDeadlineMs != nil
        && connection.nextSequence > 0
      {
        // Reading resumes after a pause (pipelining or output limits): the client was not slow.
        connection.headerDeadlineMs =
          MonotonicClock.nowMilliseconds() + UInt64(configuration.headerTimeoutMs)
      }
      do {
        try epoll.modify(connection.socket.descriptor, events: wanted, token: connection.id)
        connection.registered = wanted
      } catch {
        close(connection)
      }
    }
  }

  /// Whether the connection takes more requests now (it is not closing, and is under its
  /// pipelining and output limits).
  private func wantsToRead(_ connection: Connection) -> Bool {
    !connection.closing && !connection.peerClosed
      && connection.outstandingCount < configuration.pipelinedRequestsMax
      && connection.unsentBytes + connection.heldResponseBytes < configuration.responseBufferBytesMax
  }

  private func close(_ connection: Connection) {
    if connection.isClosed { return }
    connection.isClosed = true
    connection.socket.close()
    connections[connection.id] = nil
    StatisticsCounters.increment(counters.connectionsOpen, by: -1)
    if connection.isHandshaking { StatisticsCounters.increment(counters.tlsHandshakeFailuresTotal) }
  }

  // MARK: Timers

  private func sweep(nowMs: UInt64) {
    if let until = acceptPausedUntilMs, nowMs >= until, let listener {
      acceptPausedUntilMs = nil
      try? epoll.add(listener.descriptor, events: listenerEvents, token: Self.listenerToken)
    }
    let idleTimeoutMs = UInt64(configuration.idleTimeoutMs)
    for connection in Array(connections.values) {
      if let deadline = connection.handshakeDeadlineMs {
        if nowMs >= deadline { close(connection) }  // nothing can be answered before the handshake
        continue
      }
      if let linger = connection.lingerDeadlineMs {
        if nowMs >= linger { close(connection) }
        continue
      }
      // (Only while reading: a head cut short by our own pause is not the client's slowness.)
      if let deadline = connection.headerDeadlineMs, nowMs >= deadline, !connection.closing,
        connection.registered.contains(.readable)
      {
        answerWithError(connection, .requestTimeout())
        continue
      }
      let quiet = connection.outstandingCount == 0 && connection.unsentBytes == 0
      guard quiet, nowMs >= connection.lastActivityMs + idleTimeoutMs else { continue }
      if connection.parser.isReadingBody && !connection.closing {
        answerWithError(connection, .requestTimeout())  // a body that stopped arriving
      } else if !connection.parser.isReadingHead {
        close(connection)  // idle keep-alive connection
      }
    }
  }
}
