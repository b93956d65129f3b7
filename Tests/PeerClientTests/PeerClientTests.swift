import Glibc
import HTTPServer
import Platform
import XCTest

@testable import PeerClient

final class PeerClientTests: PeerClientTestCase {
  func testGetRoundTripReturnsStatusHeadersAndBody() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let result = roundTrip(
      client,
      PeerRequest(
        method: "GET", host: "127.0.0.1", port: port, target: "/status/203?x=1",
        headers: [("X-Test", "hello world")]))
    let answer = try XCTUnwrap(response(result))
    XCTAssertEqual(answer.status, 203)
    XCTAssertEqual(answer.header("x-echo-method"), "GET")
    XCTAssertEqual(answer.header("x-echo-target"), "/status/203?x=1")
    XCTAssertEqual(answer.header("x-echo-test"), "hello world")
    XCTAssertEqual(answer.header("x-echo-length"), "-", "a GET sends no body")
    XCTAssertEqual(answer.header("content-length"), "0")
    XCTAssertTrue(answer.headers.allSatisfy { $0.name == $0.name.lowercased() })
    XCTAssertEqual(answer.body, [])
  }

  func testPostPutPatchDeleteCarryBinaryBodiesWithNULs() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let body: [UInt8] = [0, 1, 0, 255, 13, 10, 0] + binaryBytes(1000)
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
      let answer = try XCTUnwrap(
        response(
          roundTrip(
            client,
            PeerRequest(
              method: method, url: "http://127.0.0.1:\(port)/k/\(method)",
              headers: [("X-Test", method), ("Content-Type", "application/octet-stream")],
              body: body))), method)
      XCTAssertEqual(answer.status, 200, method)
      XCTAssertEqual(answer.header("x-echo-method"), method)
      XCTAssertEqual(answer.header("x-echo-target"), "/k/\(method)")
      XCTAssertEqual(answer.header("x-echo-test"), method)
      XCTAssertEqual(answer.header("x-echo-expect"), "-", "\(method) must not send Expect")
      XCTAssertEqual(answer.header("x-echo-length"), "\(body.count)")
      XCTAssertEqual(answer.body, body, method)
    }
    // A body-less DELETE and an empty PUT (Content-Length: 0).
    let delete = try XCTUnwrap(
      response(roundTrip(client, PeerRequest(method: "DELETE", url: "http://127.0.0.1:\(port)/d"))))
    XCTAssertEqual(delete.header("x-echo-method"), "DELETE")
    XCTAssertEqual(delete.body, [])
    let put = try XCTUnwrap(
      response(roundTrip(client, PeerRequest(method: "PUT", url: "http://127.0.0.1:\(port)/p"))))
    XCTAssertEqual(put.header("x-echo-method"), "PUT")
    XCTAssertEqual(put.header("x-echo-length"), "0")
  }

  func testTwoMebibyteBodyArrivesWholeWithoutTheExpectContinueStall() throws {
    let (_, port) = try startServer(EchoHandler()) { $0.bodyBytesMax = 4 * 1024 * 1024 }
    let client = try makeClient()
    let body = binaryBytes(2 * 1024 * 1024)
    // Warm the connection so the measurement is the body transfer alone.
    _ = response(
      roundTrip(client, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/")))
    let start = MonotonicClock.nowNanoseconds()
    let answer = try XCTUnwrap(
      response(
        roundTrip(
          client,
          PeerRequest(method: "POST", host: "127.0.0.1", port: port, target: "/big", body: body))))
    let elapsed = seconds(since: start)
    XCTAssertEqual(answer.status, 200)
    XCTAssertEqual(answer.header("x-echo-expect"), "-")
    XCTAssertEqual(answer.body.count, body.count)
    XCTAssertTrue(answer.body == body, "the 2 MiB body must arrive intact")
    XCTAssertLessThan(elapsed, 0.5, "a 2 MiB POST must not wait 1 s for 100 Continue")
  }

  func testTwoHundredConcurrentRequestsFromEightThreadsCompleteExactlyOnce() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let results = Results()
    let threadCount = 8
    let perThread = 25
    let threads = (0..<threadCount).map { thread in
      OSThread(name: "sender-\(thread)") {
        for item in 0..<perThread {
          let index = thread * perThread + item
          client.send(
            PeerRequest(
              method: "POST", host: "127.0.0.1", port: port, target: "/n/\(index)",
              body: Array("body-\(index)".utf8) + [0]),
            completion: results.completion(index))
        }
      }
    }
    for thread in threads { thread.join() }
    let total = threadCount * perThread
    XCTAssertTrue(
      results.wait(count: total, seconds: 20), "only \(results.count) of \(total) completed")
    client.shutdown()
    let all = results.all
    XCTAssertEqual(all.count, total)
    for index in 0..<total {
      guard let outcomes = all[index] else {
        XCTFail("request \(index) never completed")
        continue
      }
      XCTAssertEqual(outcomes.count, 1, "request \(index) completed \(outcomes.count) times")
      guard case .success(let answer) = outcomes[0] else {
        XCTFail("request \(index): \(outcomes[0])")
        continue
      }
      XCTAssertEqual(answer.header("x-echo-target"), "/n/\(index)")
      XCTAssertEqual(answer.body, Array("body-\(index)".utf8) + [0])
    }
    let statistics = client.statistics
    XCTAssertEqual(statistics.requestsAcceptedTotal, total)
    XCTAssertEqual(statistics.requestsStartedTotal, total)
    XCTAssertEqual(statistics.requestsCompletedTotal, total)
    XCTAssertEqual(statistics.requestsFailedTotal, 0)
    XCTAssertLessThanOrEqual(
      statistics.connectionsOpenedTotal, client.configuration.connectionsPerHostMax)
  }

  func testSequentialRequestsReuseOneKeptAliveConnection() throws {
    let (server, port) = try startServer(EchoHandler())
    let client = try makeClient()
    for index in 0..<100 {
      let answer = try XCTUnwrap(
        response(
          roundTrip(
            client,
            PeerRequest(
              method: index % 2 == 0 ? "GET" : "POST", host: "127.0.0.1", port: port,
              target: "/\(index)", body: index % 2 == 0 ? [] : [UInt8(index)]))))
      XCTAssertEqual(answer.header("x-echo-target"), "/\(index)")
    }
    XCTAssertLessThanOrEqual(server.statistics.connectionsAcceptedTotal, 2)
    let statistics = client.statistics
    XCTAssertLessThanOrEqual(statistics.connectionsOpenedTotal, 2)
    XCTAssertGreaterThanOrEqual(statistics.connectionsReusedTotal, 98)
    XCTAssertEqual(statistics.requestsCompletedTotal, 100)
  }

  func testRestartedPeerIsReachedOnAFreshConnection() throws {
    // The kept-alive connection dies with the first server; the next request must not fail on it.
    let (first, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let request = PeerRequest(
      method: "POST", host: "127.0.0.1", port: port, target: "/r", body: [1, 0, 2])
    XCTAssertEqual(response(roundTrip(client, request))?.body, [1, 0, 2])
    first.shutdown(gracePeriodMs: 0)
    let (second, secondPort) = try startServer(EchoHandler()) { $0.port = port }
    XCTAssertEqual(secondPort, port)
    XCTAssertEqual(response(roundTrip(client, request))?.body, [1, 0, 2])
    XCTAssertEqual(second.statistics.connectionsAcceptedTotal, 1)
    XCTAssertEqual(client.statistics.connectionsOpenedTotal, 2)
  }

  func testEightMebibyteResponseArrivesWhole() throws {
    let handler = SizedResponseHandler(size: 8 * 1024 * 1024)
    let (_, port) = try startServer(handler)
    let client = try makeClient()
    let start = MonotonicClock.nowNanoseconds()
    let answer = try XCTUnwrap(
      response(
        roundTrip(client, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/"))))
    let elapsed = seconds(since: start)
    XCTAssertEqual(answer.header("content-length"), "\(8 * 1024 * 1024)")
    XCTAssertLessThan(elapsed, 1.0)
    XCTAssertTrue(answer.body == handler.body)
  }

  /// Found by `caucus torture`: the peer takes the request on the kept-alive connection and dies
  /// before answering; libcurl retries on a fresh connect, which is refused. The request may
  /// have been processed, so this is not `connectFailed` ("nothing was sent").
  func testAPeerThatDiesAfterTakingTheRequestIsNotAConnectFailure() throws {
    let handler = DyingHandler()
    let (server, port) = try startServer(handler)
    handler.server.withLock { $0 = server }
    let client = try makeClient()
    let request = PeerRequest(method: "PUT", host: "127.0.0.1", port: port, target: "/k", body: [7])
    XCTAssertEqual(response(roundTrip(client, request))?.status, 200, "the first request sets up the connection")
    let failure = error(roundTrip(client, request))
    XCTAssertEqual(handler.received.withLock { $0 }, 2, "the second request reached the peer")
    if case .connectFailed = failure {
      XCTFail("a request the peer took is not a connect failure: \(String(describing: failure))")
    }
  }

  func testConnectToClosedPortFailsFastWithConnectFailed() throws {
    // A port that was just bound and released: nothing listens there.
    let (server, port) = try startServer(EchoHandler())
    server.shutdown(gracePeriodMs: 0)
    let client = try makeClient()
    let start = MonotonicClock.nowNanoseconds()
    let failure = error(
      roundTrip(
        client,
        PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/", timeoutMs: 5_000)))
    let elapsed = seconds(since: start)
    guard case .connectFailed(let message) = failure else {
      return XCTFail("expected connectFailed, got \(String(describing: failure))")
    }
    XCTAssertFalse(message.isEmpty)
    XCTAssertLessThan(elapsed, 0.5, "a refused connect must fail at once, not at the timeout")
    XCTAssertEqual(client.statistics.requestsFailedTotal, 1)
  }

  func testPeerThatDropsConnectsFailsAtTheConnectTimeout() throws {
    // A listener with backlog 0 that never accepts: once one connection fills its accept queue,
    // Linux drops further SYNs, so a new connect hangs like one to a dead host.
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0), backlog: 0)
    let port = try listener.localAddress().port
    var fillers: [Int32] = []
    defer { for descriptor in fillers { close(descriptor) } }
    var connected = 0
    for _ in 0..<4 {
      let descriptor = socket(
        AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
      XCTAssertGreaterThanOrEqual(descriptor, 0)
      fillers.append(descriptor)
      var address = try XCTUnwrap(SocketAddress(host: "127.0.0.1", port: port).ipv4())
      _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
      var poll = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
      if Glibc.poll(&poll, 1, 200) == 1 { connected += 1 }
    }
    XCTAssertGreaterThanOrEqual(connected, 1, "the accept queue should be full")
    XCTAssertLessThan(connected, 4, "the listener should drop connects once its queue is full")

    let client = try makeClient { $0.connectTimeoutMs = 200 }
    let start = MonotonicClock.nowNanoseconds()
    let failure = error(
      roundTrip(
        client,
        PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/", timeoutMs: 5_000)))
    let elapsed = seconds(since: start)
    guard case .connectFailed(let message) = failure else {
      return XCTFail("expected connectFailed, got \(String(describing: failure))")
    }
    XCTAssertTrue(message.contains("Timeout") || message.contains("timed out"), message)
    XCTAssertGreaterThanOrEqual(elapsed, 0.19)
    XCTAssertLessThan(elapsed, 1.0)
  }

  func testPeerThatNeverAnswersTimesOutNearTimeoutMs() throws {
    let silent = SilentHandler()
    let (_, port) = try startServer(silent)
    let client = try makeClient()
    let start = MonotonicClock.nowNanoseconds()
    let failure = error(
      roundTrip(
        client,
        PeerRequest(
          method: "POST", host: "127.0.0.1", port: port, target: "/", body: [1],
          timeoutMs: 300)))
    let elapsed = seconds(since: start)
    guard case .timeout = failure else {
      return XCTFail("expected timeout, got \(String(describing: failure))")
    }
    XCTAssertEqual(silent.count, 1, "the request reached the server")
    XCTAssertGreaterThanOrEqual(elapsed, 0.29)
    XCTAssertLessThan(elapsed, 0.8)
  }

  func testRequestQueuedBehindBusySlotsFailsAtItsOwnDeadline() throws {
    let silent = SilentHandler()
    let (_, port) = try startServer(silent)
    let client = try makeClient { $0.concurrentTransfersMax = 1 }
    let results = Results()
    client.send(
      PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/slow", timeoutMs: 3_000),
      completion: results.completion(0))
    XCTAssertTrue(eventually(seconds: 5) { silent.count == 1 })
    let start = MonotonicClock.nowNanoseconds()
    client.send(
      PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/fast", timeoutMs: 200),
      completion: results.completion(1))
    XCTAssertTrue(eventually(seconds: 5) { results.all[1] != nil })
    let elapsed = seconds(since: start)
    guard case .failure(.timeout)? = results.all[1]?.first else {
      return XCTFail("expected timeout, got \(String(describing: results.all[1]))")
    }
    XCTAssertGreaterThanOrEqual(elapsed, 0.19)
    XCTAssertLessThan(elapsed, 0.6, "a queued request must not wait for the running one's timeout")
    XCTAssertNil(results.all[0], "the running request is still waiting")
    XCTAssertEqual(silent.count, 1, "the expired request was never sent")
  }

  func testResponseOverResponseBytesMaxFailsTooLarge() throws {
    let (_, bigPort) = try startServer(SizedResponseHandler(size: 100_000))
    let (_, smallPort) = try startServer(SizedResponseHandler(size: 50_000))
    let client = try makeClient { $0.responseBytesMax = 64 * 1024 }
    let failure = error(
      roundTrip(client, PeerRequest(method: "GET", host: "127.0.0.1", port: bigPort, target: "/")))
    XCTAssertEqual(failure, .tooLarge(bytesMax: 64 * 1024))
    let answer = try XCTUnwrap(
      response(
        roundTrip(
          client, PeerRequest(method: "GET", host: "127.0.0.1", port: smallPort, target: "/"))))
    XCTAssertEqual(answer.body.count, 50_000)
  }

  func testBodyWithoutContentLengthIsCutAtResponseBytesMax() {
    // Chunked or close-delimited bodies announce no length: the write path enforces the limit.
    let transfer = Transfer(completion: { _ in }, responseBytesMax: 10)
    defer { transfer.release() }
    let piece: [UInt8] = Array(repeating: 7, count: 6)
    XCTAssertTrue(piece.withUnsafeBytes { transfer.receiveBody($0) })
    XCTAssertFalse(piece.withUnsafeBytes { transfer.receiveBody($0) })
    XCTAssertTrue(transfer.exceededLimit)
    XCTAssertEqual(transfer.responseBody.count, 6)
  }

  func testHeaderLinesAreLowercasedTrimmedAndResetByInterimResponses() {
    let transfer = Transfer(completion: { _ in }, responseBytesMax: 10)
    defer { transfer.release() }
    for line in [
      "HTTP/1.1 100 Continue\r\n", "X-Early: 1\r\n", "\r\n", "HTTP/1.1 200 OK\r\n",
      "Content-Type:  text/plain \r\n", "X-Empty:\r\n", "\r\n",
    ] {
      XCTAssertTrue(Array(line.utf8).withUnsafeBytes { transfer.receiveHeaderLine($0) })
    }
    XCTAssertEqual(
      transfer.responseHeaders.map { "\($0.name)=\($0.value)" },
      ["content-type=text/plain", "x-empty="])
    XCTAssertFalse(
      Array("Content-Length: 11\r\n".utf8).withUnsafeBytes { transfer.receiveHeaderLine($0) })
    XCTAssertTrue(transfer.exceededLimit)
  }

  func testQueueOverQueuedRequestsMaxIsRefusedAtOnce() throws {
    let silent = SilentHandler()
    let (_, port) = try startServer(silent)
    let client = try makeClient {
      $0.queuedRequestsMax = 4
      $0.concurrentTransfersMax = 1
    }
    let results = Results()
    let sendCount = 20
    let start = MonotonicClock.nowNanoseconds()
    for index in 0..<sendCount {
      client.send(
        PeerRequest(
          method: "GET", host: "127.0.0.1", port: port, target: "/\(index)", timeoutMs: 30_000),
        completion: results.completion(index))
    }
    // Refusals are completed inside `send`: they are all here already.
    let refusedNow = results.count
    XCTAssertLessThan(seconds(since: start), 0.5)
    // One transfer running plus four queued at most; the rest refused.
    XCTAssertGreaterThanOrEqual(refusedNow, sendCount - 5)
    XCTAssertLessThanOrEqual(refusedNow, sendCount - 4)
    for (_, outcomes) in results.all {
      XCTAssertEqual(outcomes.count, 1)
      if case .failure(.overloaded(let queuedRequestsMax)) = outcomes[0] {
        XCTAssertEqual(queuedRequestsMax, 4)
      } else {
        XCTFail("expected overloaded, got \(outcomes[0])")
      }
    }
    XCTAssertEqual(client.statistics.requestsRefusedTotal, refusedNow)
    // Shutting down completes the accepted ones with shuttingDown.
    client.shutdown()
    XCTAssertTrue(results.wait(count: sendCount, seconds: 5))
    let shuttingDown = results.all.values.filter {
      if case .failure(.shuttingDown) = $0[0] { return true } else { return false }
    }
    XCTAssertEqual(shuttingDown.count, sendCount - refusedNow)
  }

  func testShutdownFailsInFlightRequestsAndLaterSends() throws {
    let silent = SilentHandler()
    let (_, port) = try startServer(silent)
    let client = try makeClient()
    let results = Results()
    for index in 0..<10 {
      client.send(
        PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/\(index)"),
        completion: results.completion(index))
    }
    XCTAssertTrue(eventually(seconds: 5) { silent.count == 10 }, "requests in flight at the server")
    XCTAssertEqual(results.count, 0)
    let start = MonotonicClock.nowNanoseconds()
    client.shutdown()
    XCTAssertLessThan(seconds(since: start), 0.5, "shutdown does not wait for the timeout")
    // Shutdown returns after the worker failed every in-flight request.
    XCTAssertEqual(results.count, 10)
    for (index, outcomes) in results.all {
      XCTAssertEqual(outcomes.count, 1)
      guard case .failure(.shuttingDown) = outcomes[0] else {
        return XCTFail("request \(index): expected shuttingDown, got \(outcomes[0])")
      }
    }
    client.shutdown()  // idempotent
    client.send(
      PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/late"),
      completion: results.completion(99))
    XCTAssertEqual(results.all[99]?.count, 1)
    XCTAssertEqual(results.all[99]?.first.flatMap { try? $0.get() }?.status, nil)
    if case .failure(let late)? = results.all[99]?.first { XCTAssertEqual(late, .shuttingDown) }
    XCTAssertEqual(client.statistics.requestsFailedTotal, 10)
  }

  func testSendsRacingShutdownCompleteExactlyOnce() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let results = Results()
    let threadCount = 4
    let perThread = 500
    let threads = (0..<threadCount).map { thread in
      OSThread(name: "racer-\(thread)") {
        for item in 0..<perThread {
          client.send(
            PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/\(item)"),
            completion: results.completion(thread * perThread + item))
        }
      }
    }
    XCTAssertTrue(eventually(seconds: 10) { results.count >= 50 }, "some requests completed first")
    client.shutdown()
    for thread in threads { thread.join() }
    let total = threadCount * perThread
    XCTAssertTrue(results.wait(count: total, seconds: 10), "\(results.count) of \(total)")
    let all = results.all
    XCTAssertEqual(all.count, total)
    var answered = 0
    for (index, outcomes) in all {
      XCTAssertEqual(outcomes.count, 1, "request \(index) completed \(outcomes.count) times")
      switch outcomes[0] {
      case .success(let answer):
        answered += 1
        XCTAssertEqual(answer.status, 200)
      case .failure(let error):
        XCTAssertEqual(error, .shuttingDown)
      }
    }
    let statistics = client.statistics
    XCTAssertEqual(statistics.requestsCompletedTotal, answered)
    XCTAssertEqual(
      statistics.requestsCompletedTotal + statistics.requestsFailedTotal,
      statistics.requestsAcceptedTotal)
  }

  func testShutdownFromACompletionDoesNotDeadlock() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let results = Results()
    client.send(PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/")) { result in
      client.shutdown()
      results.completion(0)(result)
    }
    XCTAssertTrue(results.wait(count: 1, seconds: 5))
    client.shutdown()
    client.send(
      PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/"),
      completion: results.completion(1))
    XCTAssertEqual(results.count, 2)
  }

  func testInvalidRequestsAreRefusedWithAReason() throws {
    let client = try makeClient()
    let bad = [
      PeerRequest(method: "GET", url: "http://127.0.0.1:1/", headers: [("Bad Name", "x")]),
      PeerRequest(method: "GET", url: "http://127.0.0.1:1/", headers: [("X", "a\r\nInjected: 1")]),
      PeerRequest(method: "G ET", url: "http://127.0.0.1:1/"),
      PeerRequest(method: "GET", url: "ftp://127.0.0.1:1/"),
      PeerRequest(method: "GET", url: "http://127.0.0.1:1/", timeoutMs: 0),
    ]
    for request in bad {
      guard case .invalidRequest(let reason) = error(roundTrip(client, request)) else {
        XCTFail("\(request.method) \(request.url) \(request.headers) was not refused as invalid")
        continue
      }
      XCTAssertFalse(reason.isEmpty)
    }
  }

  func testConfigurationValidationNamesTheField() {
    var configuration = PeerClientConfiguration()
    configuration.queuedRequestsMax = 0
    XCTAssertThrowsError(try PeerClient(configuration: configuration)) { error in
      XCTAssertTrue("\(error)".contains("queuedRequestsMax"), "\(error)")
    }
    configuration = PeerClientConfiguration()
    configuration.connectTimeoutMs = 10_000
    configuration.timeoutMs = 1_000
    XCTAssertThrowsError(try configuration.validate())
    XCTAssertNoThrow(try PeerClientConfiguration().validate())
  }

  func testErrorsDescribeThemselves() {
    XCTAssertTrue("\(PeerError.overloaded(queuedRequestsMax: 7))".contains("7"))
    XCTAssertTrue("\(PeerError.tooLarge(bytesMax: 9))".contains("responseBytesMax"))
    XCTAssertTrue("\(PeerError.connectFailed("refused"))".contains("refused"))
    XCTAssertTrue("\(PeerError.timeout("x"))".contains("timed out"))
    XCTAssertTrue("\(PeerError.transport("reset"))".contains("reset"))
    XCTAssertTrue("\(PeerError.shuttingDown)".contains("shutting down"))
  }
}
