import CCurl
import Glibc
import Platform

/// A libcurl easy or multi handle (`CURL *` and `CURLM *` import as raw pointers).
typealias CurlHandle = UnsafeMutableRawPointer

/// The worker thread's state: the multi handle, the running transfers and the idle easy handles.
/// Not Sendable: created inside the worker thread's closure and used only there, so no curl handle
/// is ever touched by two threads.
final class PeerWorker {
  private let shared: PeerClientShared
  private let configuration: PeerClientConfiguration
  private let multi: CurlHandle
  /// Running transfers by easy handle. Count ≤ `concurrentTransfersMax`.
  private var transfers: [CurlHandle: Transfer] = [:]
  /// Easy handles reset after use, ready for the next transfer. Count ≤ `idleHandlesMax`.
  private var idleHandles: [CurlHandle] = []

  init(shared: PeerClientShared) {
    self.shared = shared
    self.configuration = shared.configuration
    guard let multi = curl_multi_init() else { preconditionFailure("curl_multi_init failed") }
    self.multi = multi
    // Connections live in the multi handle's cache and are reused by whichever transfer next goes
    // to the same host:port; these bound that cache and the connections per peer.
    check(
      caucus_curl_multi_setopt_long(
        multi, CURLMOPT_MAX_HOST_CONNECTIONS, configuration.connectionsPerHostMax))
    check(
      caucus_curl_multi_setopt_long(
        multi, CURLMOPT_MAXCONNECTS, configuration.idleConnectionsMax))
  }

  private func check(_ code: CURLMcode, _ call: String = "curl_multi_setopt") {
    precondition(code == CURLM_OK, "\(call) failed: \(String(cString: curl_multi_strerror(code)))")
  }

  /// The loop: take queued requests into free slots, let curl progress, finish done transfers,
  /// sleep in `curl_multi_poll` until socket activity, a curl timer or the wake-up eventfd.
  func run() {
    shared.workerThread.withLock { $0 = pthread_self() }
    let transfersMax = configuration.concurrentTransfersMax
    var wakeup = curl_waitfd(
      fd: shared.wakeup.descriptor, events: Int16(CURL_WAIT_POLLIN), revents: 0)
    // The first turn looks at the inbox without waiting; later turns drain the eventfd only when
    // the poll saw it signalled (one syscall saved per wake-up by socket activity).
    wakeup.revents = Int16(CURL_WAIT_POLLIN)
    while true {
      if wakeup.revents != 0 { shared.wakeup.drain() }
      let freeSlots = transfersMax - transfers.count
      precondition(freeSlots >= 0, "more transfers than concurrentTransfersMax")
      let (taken, stopping) = shared.inbox.withLock { inbox in
        inbox.workerWaiting = false
        return inbox.stopping ? (inbox.take(inbox.count), true) : (inbox.take(freeSlots), false)
      }
      if stopping {
        for queued in taken { fail(queued, .shuttingDown) }
        break
      }
      for queued in taken { start(queued) }

      var running: Int32 = 0
      check(curl_multi_perform(multi, &running), "curl_multi_perform")
      finishDoneTransfers()

      // Slots freed and requests waiting: loop again without sleeping. Every slot busy and
      // requests waiting: they must still fail at their deadline, so look again soon.
      // With every slot busy and requests already queued (checked every few ms), a new request
      // cannot start anyway: no need to be woken for it.
      var pollTimeoutMs: Int32 = 1_000
      let slotFree = transfers.count < transfersMax
      let queuedCount = shared.inbox.withLock { inbox in
        inbox.workerWaiting = slotFree || inbox.count == 0
        return inbox.count
      }
      if queuedCount > 0 {
        if slotFree {
          pollTimeoutMs = 0
        } else {
          failExpiredQueuedRequests()
          pollTimeoutMs = Self.queuedDeadlineCheckIntervalMs
        }
      }
      wakeup.revents = 0
      check(curl_multi_poll(multi, &wakeup, 1, pollTimeoutMs, nil), "curl_multi_poll")
    }
    stop()
  }

  /// How late a request waiting for a transfer slot may fail after its deadline passed.
  static let queuedDeadlineCheckIntervalMs: Int32 = 10

  /// Fails the queued requests whose deadline passed while every transfer slot was busy.
  private func failExpiredQueuedRequests() {
    let expired = shared.inbox.withLock {
      $0.removeExpired(nowNanoseconds: MonotonicClock.nowNanoseconds())
    }
    for queued in expired {
      fail(queued, .timeout("deadline passed while queued behind concurrentTransfersMax transfers"))
    }
  }

  /// Fails every running transfer with `.shuttingDown` and frees every curl handle.
  private func stop() {
    for (easy, _) in transfers {
      finish(easy, result: .failure(.shuttingDown))
    }
    precondition(transfers.isEmpty)
    for easy in idleHandles { curl_easy_cleanup(easy) }
    idleHandles = []
    check(curl_multi_cleanup(multi), "curl_multi_cleanup")
  }

  private func finishDoneTransfers() {
    var messagesLeft: Int32 = 0
    while let message = curl_multi_info_read(multi, &messagesLeft) {
      guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else {
        continue
      }
      // Copy out before `finish` removes the handle (the message dies with it).
      let code = caucus_curl_message_result(message)
      finish(easy, result: result(of: easy, code: code))
    }
  }

  // MARK: - One transfer

  private func start(_ queued: QueuedRequest) {
    let nowNanoseconds = MonotonicClock.nowNanoseconds()
    guard queued.deadlineNanoseconds > nowNanoseconds + 1_000_000 else {
      fail(queued, .timeout("deadline passed while queued behind concurrentTransfersMax transfers"))
      return
    }
    let remainingMs = Int((queued.deadlineNanoseconds - nowNanoseconds) / 1_000_000)
    guard let easy = idleHandles.popLast() ?? curl_easy_init() else {
      fail(queued, .transport("curl_easy_init failed (out of memory)"))
      return
    }
    let transfer = Transfer(
      completion: queued.completion, responseBytesMax: configuration.responseBytesMax)
    if let problem = configure(
      easy, transfer: transfer, request: queued.request, timeoutMs: remainingMs,
      connectTimeoutMs: min(queued.connectTimeoutMs, remainingMs))
    {
      transfer.release()
      recycle(easy)
      fail(queued, .invalidRequest(problem))
      return
    }
    let added = curl_multi_add_handle(multi, easy)
    guard added == CURLM_OK else {
      transfer.release()
      recycle(easy)
      fail(
        queued, .transport("curl_multi_add_handle: \(String(cString: curl_multi_strerror(added)))"))
      return
    }
    transfers[easy] = transfer
    shared.transferStatistics.withLock { $0.requestsStartedTotal += 1 }
  }

  /// Sets every option of one transfer; returns a message when the request cannot be sent.
  private func configure(
    _ easy: CurlHandle, transfer: Transfer, request: PeerRequest, timeoutMs: Int,
    connectTimeoutMs: Int
  ) -> String? {
    var failure: String? = nil
    func set(_ option: String, _ code: CURLcode) {
      if failure == nil, code != CURLE_OK {
        failure = "\(option): \(String(cString: curl_easy_strerror(code)))"
      }
    }
    let context = Unmanaged.passUnretained(transfer).toOpaque()
    if let tls = configuration.tls {
      set("URL", caucus_curl_setopt_string(easy, CURLOPT_URL, Self.upgradedToHTTPS(request.url)))
      configureTLS(easy, tls, set)
    } else {
      set("URL", caucus_curl_setopt_string(easy, CURLOPT_URL, request.url))
      set("PROTOCOLS_STR", caucus_curl_setopt_string(easy, CURLOPT_PROTOCOLS_STR, "http,https"))
    }
    set("NOSIGNAL", caucus_curl_setopt_long(easy, CURLOPT_NOSIGNAL, 1))
    set(
      "MAXAGE_CONN",
      caucus_curl_setopt_long(easy, CURLOPT_MAXAGE_CONN, configuration.connectionIdleSecondsMax))
    // Peers are reached directly, never through an `http_proxy` from the environment.
    set("PROXY", caucus_curl_setopt_string(easy, CURLOPT_PROXY, ""))
    set("TIMEOUT_MS", caucus_curl_setopt_long(easy, CURLOPT_TIMEOUT_MS, timeoutMs))
    set(
      "CONNECTTIMEOUT_MS",
      caucus_curl_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, connectTimeoutMs))
    set("ERRORBUFFER", caucus_curl_setopt_pointer(easy, CURLOPT_ERRORBUFFER, transfer.errorBuffer))
    set("WRITEDATA", caucus_curl_setopt_pointer(easy, CURLOPT_WRITEDATA, context))
    set("HEADERDATA", caucus_curl_setopt_pointer(easy, CURLOPT_HEADERDATA, context))
    set(
      "WRITEFUNCTION",
      caucus_curl_setopt_write_callback(easy, CURLOPT_WRITEFUNCTION) { data, size, count, context in
        let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
        let length = size * count
        return transfer.receiveBody(UnsafeRawBufferPointer(start: data, count: length))
          ? length : 0
      })
    set(
      "HEADERFUNCTION",
      caucus_curl_setopt_write_callback(easy, CURLOPT_HEADERFUNCTION) {
        data, size, count, context in
        let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
        let length = size * count
        return transfer.receiveHeaderLine(UnsafeRawBufferPointer(start: data, count: length))
          ? length : 0
      })

    // Headers: an empty `Expect:` suppresses curl's 100-continue wait (1 s) for large bodies.
    var list = curl_slist_append(nil, "Expect:")
    for (name, value) in request.headers {
      guard Self.isHeaderToken(name),
        !value.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 })
      else {
        failure = failure ?? "header \(name.debugDescription) is not a valid header"
        break
      }
      if let appended = curl_slist_append(list, "\(name): \(value)") { list = appended }
    }
    transfer.headerList = list
    set("HTTPHEADER", caucus_curl_setopt_slist(easy, CURLOPT_HTTPHEADER, list))

    let method = request.method
    guard Self.isHeaderToken(method) else {
      return "method \(method.debugDescription) is not a token"
    }
    switch method {
    case "GET": set("HTTPGET", caucus_curl_setopt_long(easy, CURLOPT_HTTPGET, 1))
    case "HEAD": set("NOBODY", caucus_curl_setopt_long(easy, CURLOPT_NOBODY, 1))
    default:
      let sendsBody = !request.body.isEmpty || ["POST", "PUT", "PATCH"].contains(method)
      if sendsBody {
        // POSTFIELDS is not copied: the bytes live in the transfer until it is finished.
        let body = transfer.keepBody(request.body)
        set(
          "POSTFIELDSIZE_LARGE",
          caucus_curl_setopt_off_t(
            easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count)))
        set("POSTFIELDS", caucus_curl_setopt_pointer(easy, CURLOPT_POSTFIELDS, body))
      }
      if method != "POST" || !sendsBody {
        set("CUSTOMREQUEST", caucus_curl_setopt_string(easy, CURLOPT_CUSTOMREQUEST, method))
      }
    }
    return failure
  }

  /// `https://` for an `http://` URL (the TLS switch covers every request); any other as it is.
  static func upgradedToHTTPS(_ url: String) -> String {
    url.hasPrefix("http://") ? "https://" + url.dropFirst("http://".count) : url
  }

  /// Every TLS option of one transfer (`curl_easy_reset` clears them between transfers). libcurl
  /// reuses a kept-alive connection only for the same TLS settings, and resumes TLS sessions.
  private func configureTLS(_ easy: CurlHandle, _ tls: PeerTLSConfiguration, _ set: (String, CURLcode) -> Void) {
    set("PROTOCOLS_STR", caucus_curl_setopt_string(easy, CURLOPT_PROTOCOLS_STR, "https"))
    set("SSLVERSION", caucus_curl_setopt_long(easy, CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_2))
    set("SSL_VERIFYPEER", caucus_curl_setopt_long(easy, CURLOPT_SSL_VERIFYPEER, 1))
    set("SSL_VERIFYHOST", caucus_curl_setopt_long(easy, CURLOPT_SSL_VERIFYHOST, 2))
    set("CAINFO", caucus_curl_setopt_string(easy, CURLOPT_CAINFO, tls.caCertificateFile))
    // No cached CA store (libcurl keeps one for a day by default): a new connection reads the CA
    // file as it is now, so a CA replaced on disk counts without a restart. One small file per
    // new connection; kept-alive connections are reused.
    set("CA_CACHE_TIMEOUT", caucus_curl_setopt_long(easy, CURLOPT_CA_CACHE_TIMEOUT, 0))
    // Only the cluster CA: not the directory of system CAs libcurl was built to use as well.
    set("CAPATH", caucus_curl_setopt_string(easy, CURLOPT_CAPATH, nil))
    if let certificate = tls.clientCertificateFile, let key = tls.clientKeyFile {
      set("SSLCERT", caucus_curl_setopt_string(easy, CURLOPT_SSLCERT, certificate))
      set("SSLKEY", caucus_curl_setopt_string(easy, CURLOPT_SSLKEY, key))
    }
  }

  /// RFC 9110 token characters only (no separators, spaces or controls).
  private static func isHeaderToken(_ text: String) -> Bool {
    !text.isEmpty
      && text.utf8.allSatisfy { byte in
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
          UInt8(ascii: "0")...UInt8(ascii: "9"):
          return true
        default: return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
      }
  }

  /// Maps a finished transfer's curl code (and what the callbacks saw) to the caller's result.
  private func result(of easy: CurlHandle, code: CURLcode) -> Result<PeerResponse, PeerError> {
    guard let transfer = transfers[easy] else {
      preconditionFailure("done message for unknown handle")
    }
    if transfer.exceededLimit {
      return .failure(.tooLarge(bytesMax: configuration.responseBytesMax))
    }
    guard code == CURLE_OK else {
      let message = transfer.errorMessage(code)
      // A connect failure after bytes of this request went out is not "nothing was sent": libcurl
      // sends on a kept-alive connection, and when that connection dies before any answer it
      // retries once on a fresh connect; if that connect fails it reports the connect failure.
      // The first copy may have been processed (found by `caucus torture`: a write reported
      // refused was applied, and a relaying gateway would have sent it again).
      var requestBytes = 0
      _ = caucus_curl_getinfo_long(easy, CURLINFO_REQUEST_SIZE, &requestBytes)
      let sentEarlier = requestBytes > 0
      let sentNote = " (after \(requestBytes) bytes of the request were sent on an earlier connection)"
      switch code {
      case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY,
        // A TLS handshake that failed (the peer's certificate not trusted or not for its host, ours
        // refused, no common protocol): the request never left either.
        CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CACERT_BADFILE:
        return .failure(sentEarlier ? .transport(message + sentNote) : .connectFailed(message))
      case CURLE_OPERATION_TIMEDOUT:
        // curl reports a connect (or name resolution) timeout with the same code as a transfer
        // timeout; its message tells them apart.
        if message.hasPrefix("Connection timed out") || message.hasPrefix("Resolving timed out")
          || message.hasPrefix("Failed to connect")
        {
          return .failure(sentEarlier ? .timeout(message + sentNote) : .connectFailed(message))
        }
        return .failure(.timeout(message))
      case CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL:
        return .failure(.invalidRequest(message))
      default:
        return .failure(.transport(message))
      }
    }
    var status = 0
    _ = caucus_curl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
    return .success(
      PeerResponse(status: status, headers: transfer.responseHeaders, body: transfer.responseBody))
  }

  /// Removes a running transfer, frees its resources, counts it and calls its completion (last, so
  /// a completion that sends again sees a consistent worker).
  private func finish(_ easy: CurlHandle, result: Result<PeerResponse, PeerError>) {
    guard let transfer = transfers.removeValue(forKey: easy) else {
      preconditionFailure("finish of unknown transfer")
    }
    var connectsNew = 0
    _ = caucus_curl_getinfo_long(easy, CURLINFO_NUM_CONNECTS, &connectsNew)
    check(curl_multi_remove_handle(multi, easy), "curl_multi_remove_handle")
    transfer.release()
    recycle(easy)
    shared.transferStatistics.withLock { statistics in
      switch result {
      case .success:
        statistics.requestsCompletedTotal += 1
        if connectsNew == 0 { statistics.connectionsReusedTotal += 1 }
      case .failure: statistics.requestsFailedTotal += 1
      }
      statistics.connectionsOpenedTotal += connectsNew
    }
    transfer.completion(result)
  }

  /// A request that never became a transfer.
  private func fail(_ queued: QueuedRequest, _ error: PeerError) {
    shared.transferStatistics.withLock { $0.requestsFailedTotal += 1 }
    queued.completion(.failure(error))
  }

  /// Keeps a reset easy handle for the next transfer (connections stay in the multi's cache).
  private func recycle(_ easy: CurlHandle) {
    if idleHandles.count < configuration.idleHandlesMax {
      curl_easy_reset(easy)
      idleHandles.append(easy)
    } else {
      curl_easy_cleanup(easy)
    }
  }
}

/// One running transfer's buffers; curl's callbacks reach it through an unretained pointer while
/// `PeerWorker.transfers` holds it. Worker-thread confined like the worker.
final class Transfer {
  let completion: @Sendable (Result<PeerResponse, PeerError>) -> Void
  let responseBytesMax: Int
  var responseBody: [UInt8] = []
  var responseHeaders: [(name: String, value: String)] = []
  /// The response (body or announced Content-Length) passed `responseBytesMax`; curl was told to
  /// abort.
  var exceededLimit = false
  /// curl writes its detailed message here (CURLOPT_ERRORBUFFER).
  let errorBuffer: UnsafeMutablePointer<CChar>
  var headerList: UnsafeMutablePointer<curl_slist>? = nil
  /// A copy of the request body that outlives the transfer (CURLOPT_POSTFIELDS is not copied).
  private var body: UnsafeMutableRawBufferPointer? = nil

  init(
    completion: @escaping @Sendable (Result<PeerResponse, PeerError>) -> Void,
    responseBytesMax: Int
  ) {
    self.completion = completion
    self.responseBytesMax = responseBytesMax
    errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
    errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
  }

  deinit {
    precondition(body == nil && headerList == nil, "transfer freed without release()")
    errorBuffer.deallocate()
  }

  func keepBody(_ bytes: [UInt8]) -> UnsafeMutableRawPointer {
    precondition(body == nil)
    // At least one byte so the pointer is never null (curl would then read a callback instead).
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 1)
    copy.copyBytes(from: bytes)
    body = copy
    return copy.baseAddress!
  }

  /// Frees what curl pointed at; call after the handle left the multi (or was never added).
  func release() {
    body?.deallocate()
    body = nil
    curl_slist_free_all(headerList)
    headerList = nil
  }

  func errorMessage(_ code: CURLcode) -> String {
    let detail = String(cString: errorBuffer)
    return detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
  }

  static let announcedBodyReserveBytesMax = 4 * 1024 * 1024

  /// Appends a piece of body; false (abort) past `responseBytesMax`.
  func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard responseBody.count + bytes.count <= responseBytesMax else {
      exceededLimit = true
      return false
    }
    responseBody.append(contentsOf: bytes)
    return true
  }

  /// One header line with its CRLF (or a status line, or the final empty line). A status line
  /// starts a new response (after `100 Continue`, say): earlier headers are dropped.
  func receiveHeaderLine(_ line: UnsafeRawBufferPointer) -> Bool {
    if line.starts(with: "HTTP/".utf8) {
      responseHeaders.removeAll(keepingCapacity: true)
      return true
    }
    guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return true }
    let isSpace = { (byte: UInt8) in byte == 32 || byte == 9 || byte == 13 || byte == 10 }
    var start = colon + 1
    var end = line.count
    while start < end, isSpace(line[start]) { start += 1 }
    while end > start, isSpace(line[end - 1]) { end -= 1 }
    let name = String(
      decoding: line[..<colon].map { $0 | (($0 >= 65 && $0 <= 90) ? 32 : 0) }, as: UTF8.self)
    let value = String(decoding: line[start..<end], as: UTF8.self)
    if name == "content-length", let length = Int(value) {
      guard length <= responseBytesMax else {
        exceededLimit = true
        return false
      }
      // Reserve what is announced, up to a bound: a peer announcing a large body and sending
      // nothing must not make every transfer hold `responseBytesMax` of memory.
      responseBody.reserveCapacity(min(length, Self.announcedBodyReserveBytesMax))
    }
    responseHeaders.append((name, value))
    return true
  }
}
