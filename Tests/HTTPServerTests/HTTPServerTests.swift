import Glibc
import HTTPServer
import Platform
import XCTest

/// Answers at once: `<METHOD> <target> <body>`.
private struct EchoHandler: HTTPHandler {
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    let text =
      "\(request.method) \(request.target) " + String(decoding: request.body, as: UTF8.self)
    responder.respond(
      HTTPResponse(status: 200, headers: [("Content-Type", "text/plain")], body: Array(text.utf8)))
  }
}

/// Keeps every request and its responder; the test answers later, from any thread.
private final class DeferredHandler: HTTPHandler {
  let pending = Locked<[(request: HTTPRequest, responder: HTTPResponder)]>([])
  var count: Int { pending.withLock { $0.count } }

  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    pending.withLock { $0.append((request, responder)) }
  }

  func take(_ index: Int) -> (request: HTTPRequest, responder: HTTPResponder) {
    pending.withLock { $0[index] }
  }
}

private struct BigResponseHandler: HTTPHandler {
  let body: [UInt8]
  init(size: Int) { body = (0..<size).map { UInt8(truncatingIfNeeded: $0 % 251) } }
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    responder.respond(HTTPResponse(status: 200, body: body))
  }
}

final class HTTPServerTests: XCTestCase {
  private var servers: [HTTPServer] = []

  override func tearDown() {
    for server in servers { server.shutdown(gracePeriodMs: 0) }
    servers = []
    super.tearDown()
  }

  private func start(
    _ handler: any HTTPHandler, _ configure: (inout HTTPServerConfiguration) -> Void = { _ in }
  ) throws -> UInt16 {
    var configuration = HTTPServerConfiguration()
    configure(&configuration)
    let server = HTTPServer(configuration: configuration, handler: handler)
    servers.append(server)
    return try server.start()
  }

  private func get(
    _ client: RawHTTPClient, _ target: String, file: StaticString = #filePath, line: UInt = #line
  ) throws -> RawResponse {
    try client.send("GET \(target) HTTP/1.1\r\nHost: test\r\n\r\n")
    let response = try XCTUnwrap(
      try client.readResponse(), "no response to \(target)", file: file, line: line)
    return response
  }

  func testKeepAliveServesSeveralRequestsOnOneConnection() throws {
    let port = try start(EchoHandler())
    let client = try RawHTTPClient(port: port)
    for index in 0..<5 {
      let response = try get(client, "/n/\(index)")
      XCTAssertEqual(response.status, 200)
      XCTAssertEqual(response.bodyText, "GET /n/\(index) ")
      XCTAssertFalse(response.closes)
      XCTAssertEqual(response.header("content-length"), "\(response.body.count)")
    }
    try client.send("PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    XCTAssertEqual(try client.readResponse()?.bodyText, "PUT /k hello")
    try client.send(
      "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
    )
    XCTAssertEqual(try client.readResponse()?.bodyText, "POST /c abcde")
  }

  func testConnectionCloseAndHTTP10AreHonoured() throws {
    let port = try start(EchoHandler())
    let closing = try RawHTTPClient(port: port)
    try closing.send("GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    XCTAssertEqual(try closing.readResponse()?.closes, true)
    XCTAssertTrue(closing.waitUntilClosed())

    let old = try RawHTTPClient(port: port)
    try old.send("GET /b HTTP/1.0\r\n\r\n")
    XCTAssertEqual(try old.readResponse()?.closes, true)
    XCTAssertTrue(old.waitUntilClosed())

    let oldKeepAlive = try RawHTTPClient(port: port)
    for _ in 0..<2 {
      try oldKeepAlive.send("GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
      let response = try XCTUnwrap(try oldKeepAlive.readResponse())
      XCTAssertEqual(response.header("connection"), "keep-alive")
      XCTAssertEqual(response.bodyText, "GET /c ")
    }
  }

  func testPipelinedAnswersFollowRequestOrderWhenCompletedOutOfOrderOnOtherThreads() throws {
    let handler = DeferredHandler()
    let port = try start(handler)
    let client = try RawHTTPClient(port: port)
    let count = 6
    try client.send((0..<count).map { "GET /p/\($0) HTTP/1.1\r\nHost: t\r\n\r\n" }.joined())
    XCTAssertTrue(waitUntil { handler.count == count })
    // Answer the last first, each from its own thread.
    var threads: [OSThread] = []
    for index in (0..<count).reversed() {
      let (request, responder) = handler.take(index)
      let target = request.target
      threads.append(
        OSThread(name: "answer-\(index)") {
          responder.respond(HTTPResponse(status: 200, body: Array(target.utf8)))
        })
      threads.last!.join()  // strictly reverse order
    }
    for index in 0..<count {
      let response = try XCTUnwrap(try client.readResponse())
      XCTAssertEqual(response.bodyText, "/p/\(index)")
    }
  }

  func testPipelinedRequestsMaxStopsReadingUntilAnswersGoOut() throws {
    let handler = DeferredHandler()
    let port = try start(handler) { $0.pipelinedRequestsMax = 2 }
    let client = try RawHTTPClient(port: port)
    try client.send((0..<5).map { "GET /q/\($0) HTTP/1.1\r\n\r\n" }.joined())
    XCTAssertTrue(waitUntil { handler.count >= 2 })
    // A probe on a second connection is answered only after the loop processed the first batch.
    let probe = try RawHTTPClient(port: port)
    try probe.send("GET /probe HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count >= 3 })
    XCTAssertEqual(handler.take(2).request.target, "/probe")
    XCTAssertEqual(handler.count, 3, "only 2 pipelined requests may be outstanding")
    var answered = 0
    for next in 0..<5 {
      // Answer the pipelined requests as they reach the handler (skipping the probe at index 2).
      let index = next < 2 ? next : next + 1
      XCTAssertTrue(
        waitUntil { handler.count > index }, "request \(next) never reached the handler")
      let (request, responder) = handler.take(index)
      responder.respond(HTTPResponse(status: 200, body: Array(request.target.utf8)))
      XCTAssertEqual(try client.readResponse()?.bodyText, "/q/\(next)")
      answered += 1
    }
    XCTAssertEqual(answered, 5)
  }

  func testExpectContinueGets100ThenTheAnswer() throws {
    let port = try start(EchoHandler())
    let client = try RawHTTPClient(port: port)
    try client.send("PUT /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    let interim = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(interim.status, 100)
    try client.send("data")
    let response = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(response.status, 200)
    XCTAssertEqual(response.bodyText, "PUT /e data")
  }

  func testExpectContinueOverTheLimitIs413WithoutReadingTheBody() throws {
    let port = try start(EchoHandler()) { $0.bodyBytesMax = 1024 }
    let client = try RawHTTPClient(port: port)
    try client.send("PUT /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1025\r\n\r\n")
    let response = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(response.status, 413)
    XCTAssertTrue(response.closes)
    XCTAssertEqual(response.header("content-type"), "application/json; charset=utf-8")
    XCTAssertTrue(
      response.bodyText.hasPrefix(#"{"error":"payload_too_large","message":""#), response.bodyText)
    XCTAssertTrue(client.waitUntilClosed())
  }

  func testOversizeBodyIs413AndClosed() throws {
    let port = try start(EchoHandler()) { $0.bodyBytesMax = 1024 }
    let client = try RawHTTPClient(port: port)
    try client.send(
      Array("PUT /big HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".utf8)
        + [UInt8](repeating: 65, count: 200_000))
    let response = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(response.status, 413)
    XCTAssertTrue(response.closes)
    XCTAssertTrue(client.waitUntilClosed())
  }

  func testSlowHeadersGet408AndClose() throws {
    let port = try start(EchoHandler()) { $0.headerTimeoutMs = 200 }
    let client = try RawHTTPClient(port: port)
    let started = MonotonicClock.nowMilliseconds()
    try client.send("GET /slow HTTP/1.1\r\nHost: x\r\n")
    let response = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(response.status, 408)
    XCTAssertTrue(response.bodyText.contains("request_timeout"))
    XCTAssertGreaterThanOrEqual(MonotonicClock.nowMilliseconds() - started, 190)
    XCTAssertTrue(client.waitUntilClosed())
    // A connection that sends nothing at all is timed out the same way.
    let silent = try RawHTTPClient(port: port)
    XCTAssertEqual(try silent.readResponse()?.status, 408)
  }

  func testHeaderTimeoutDoesNotCutASlowBodyOnANewConnection() throws {
    let port = try start(EchoHandler()) { $0.headerTimeoutMs = 150 }
    let client = try RawHTTPClient(port: port)
    try client.send("PUT /slow-body HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    // Let the header deadline (measured from accept) pass: proving a timer does *not* fire takes
    // time. The head was complete in time, so the slow body must not get a 408.
    usleep(400_000)
    try client.send("cd")
    let response = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(response.status, 200)
    XCTAssertEqual(response.bodyText, "PUT /slow-body abcd")
  }

  func testHalfClosedClientGetsItsAnswersThenTheServerCloses() throws {
    let handler = DeferredHandler()
    let port = try start(handler) { $0.pipelinedRequestsMax = 1 }
    let client = try RawHTTPClient(port: port)
    try client.send("GET /h1 HTTP/1.1\r\n\r\nGET /h2 HTTP/1.1\r\n\r\n")
    client.socket.shutdownWrite()
    for index in 0..<2 {
      XCTAssertTrue(waitUntil { handler.count == index + 1 })
      handler.take(index).responder.respond(
        HTTPResponse(status: 200, body: Array("h\(index + 1)".utf8)))
      XCTAssertEqual(try client.readResponse()?.bodyText, "h\(index + 1)")
    }
    XCTAssertTrue(
      client.waitUntilClosed(), "the server must close once the half-closed client has its answers")
  }

  func testHeadAnswersCarryNoBody() throws {
    let port = try start(EchoHandler())
    let client = try RawHTTPClient(port: port)
    try client.send("HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n")
    // The HEAD answer announces the length it would have, without the bytes.
    let head = try XCTUnwrap(try client.readResponse(toHead: true))
    XCTAssertEqual(head.header("content-length"), "8")
    XCTAssertEqual(head.body.count, 0)
    XCTAssertEqual(try client.readResponse()?.bodyText, "GET /g ")
  }

  func testIdleKeepAliveConnectionIsClosed() throws {
    let port = try start(EchoHandler()) { $0.idleTimeoutMs = 200 }
    let client = try RawHTTPClient(port: port)
    XCTAssertEqual(try get(client, "/i").status, 200)
    XCTAssertTrue(client.waitUntilClosed())
  }

  func testConnectionsMaxIsEnforced() throws {
    let port = try start(EchoHandler()) { $0.connectionsMax = 2 }
    let first = try RawHTTPClient(port: port)
    let second = try RawHTTPClient(port: port)
    XCTAssertEqual(try get(first, "/1").status, 200)
    XCTAssertEqual(try get(second, "/2").status, 200)
    let third = try RawHTTPClient(port: port)
    let refused = try XCTUnwrap(try third.readResponse())
    XCTAssertEqual(refused.status, 503)
    XCTAssertTrue(refused.closes)
    XCTAssertTrue(third.waitUntilClosed())
    // The server counts the refusal after it has sent the answer and closed: wait for it.
    XCTAssertTrue(waitUntil { self.servers[0].statistics.connectionsRefusedTotal == 1 }, "one refusal counted")
    XCTAssertEqual(servers[0].statistics.connectionsOpen, 2)
    // Closing one makes room again.
    first.socket.close()
    XCTAssertTrue(
      waitUntil {
        guard let client = try? RawHTTPClient(port: port),
          let response = try? self.get(client, "/again")
        else { return false }
        return response.status == 200
      })
    XCTAssertEqual(try get(second, "/still").status, 200)
  }

  func testLateAnswerToAClosedConnectionIsDropped() throws {
    let handler = DeferredHandler()
    let port = try start(handler)
    let gone = try RawHTTPClient(port: port)
    try gone.send("GET /gone HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count == 1 })
    // A reset, so the server knows the connection is gone (after a mere FIN it would still answer:
    // the client may have only half-closed).
    gone.socket.closeWithReset()
    XCTAssertTrue(waitUntil { self.servers[0].statistics.connectionsOpen == 0 })
    // New connections, likely on the same descriptor number.
    let fresh = try RawHTTPClient(port: port)
    try fresh.send("GET /fresh HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count == 2 })
    handler.take(0).responder.respond(HTTPResponse(status: 200, body: Array("late".utf8)))
    handler.take(1).responder.respond(HTTPResponse(status: 200, body: Array("fresh".utf8)))
    XCTAssertEqual(try fresh.readResponse()?.bodyText, "fresh")
    XCTAssertTrue(waitUntil { self.servers[0].statistics.responsesDroppedTotal == 1 })
    try fresh.send("GET /next HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count == 3 })
    handler.take(2).responder.respond(HTTPResponse(status: 201))
    let next = try XCTUnwrap(try fresh.readResponse())
    XCTAssertEqual(next.status, 201)
    // Answering twice is ignored too.
    handler.take(2).responder.respond(HTTPResponse(status: 500))
    try fresh.send("GET /last HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count == 4 })
    handler.take(3).responder.respond(HTTPResponse(status: 202))
    XCTAssertEqual(try fresh.readResponse()?.status, 202)
  }

  func testGracefulShutdownFinishesAnInFlightRequest() throws {
    let handler = DeferredHandler()
    let server = HTTPServer(configuration: HTTPServerConfiguration(), handler: handler)
    let port = try server.start()
    let client = try RawHTTPClient(port: port)
    try client.send("GET /inflight HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count == 1 })
    let stopped = Locked(false)
    let stopper = OSThread(name: "stopper") {
      server.shutdown(gracePeriodMs: 10_000)
      stopped.withLock { $0 = true }
    }
    // The listener closes first: new connections are refused.
    XCTAssertTrue(waitUntil { (try? RawHTTPClient(port: port)) == nil })
    XCTAssertFalse(stopped.withLock { $0 }, "shutdown returned with a request in flight")
    handler.take(0).responder.respond(HTTPResponse(status: 200, body: Array("done".utf8)))
    let response = try XCTUnwrap(try client.readResponse())
    XCTAssertEqual(response.bodyText, "done")
    XCTAssertTrue(response.closes)
    XCTAssertTrue(client.waitUntilClosed())
    stopper.join()
    XCTAssertTrue(stopped.withLock { $0 })
  }

  func testShutdownGracePeriodBoundsAnUnansweredRequest() throws {
    let handler = DeferredHandler()
    let server = HTTPServer(configuration: HTTPServerConfiguration(), handler: handler)
    let port = try server.start()
    let client = try RawHTTPClient(port: port)
    try client.send("GET /never HTTP/1.1\r\n\r\n")
    XCTAssertTrue(waitUntil { handler.count == 1 })
    let started = MonotonicClock.nowMilliseconds()
    server.shutdown(gracePeriodMs: 100)
    XCTAssertLessThan(MonotonicClock.nowMilliseconds() - started, 3_000)
    XCTAssertTrue(client.waitUntilClosed())
    handler.take(0).responder.respond(HTTPResponse(status: 200))  // after the loop exited: dropped
  }

  func testServerKeepsServingAfterEveryBadInput() throws {
    let port = try start(EchoHandler()) {
      $0.requestLineBytesMax = 256
      $0.headerBytesMax = 512
      $0.headerCountMax = 8
      $0.bodyBytesMax = 64
    }
    let cases: [(String, Int)] = [
      ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),
      ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
      ("POST / HTTP/1.1\r\nContent-Length: x3\r\n\r\n", 400),
      ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
      ("GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400),
      ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
      ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400),
      ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX", 400),
      ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
      ("GET / HTTP/1.1\r\nA: x\0y\r\n\r\n", 400),
      ("GET / HTTP/1.1\r\nA: x\ry\r\n\r\n", 400),
      ("GET / HTTP/1.1\r\nA : x\r\n\r\n", 400),
      ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
      ("GET / HTTP/2.0\r\n\r\n", 505),
      ("G@T / HTTP/1.1\r\n\r\n", 400),
      ("GET /" + String(repeating: "u", count: 300) + " HTTP/1.1\r\n\r\n", 414),
      ("GET / HTTP/1.1\r\n" + String(repeating: "H: 1\r\n", count: 9) + "\r\n", 431),
      ("GET / HTTP/1.1\r\nBig: " + String(repeating: "h", count: 600) + "\r\n\r\n", 431),
      ("PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n" + String(repeating: "b", count: 65), 413),
    ]
    for (input, status) in cases {
      let client = try RawHTTPClient(port: port)
      // A good request first: the error answer must come after it, in order.
      try client.send("GET /before HTTP/1.1\r\n\r\n" + input)
      XCTAssertEqual(try client.readResponse()?.bodyText, "GET /before ", input.debugDescription)
      let response = try XCTUnwrap(try client.readResponse(), input.debugDescription)
      XCTAssertEqual(response.status, status, input.debugDescription)
      XCTAssertTrue(response.closes, input.debugDescription)
      XCTAssertEqual(response.header("content-type"), "application/json; charset=utf-8")
      XCTAssertTrue(response.bodyText.hasPrefix(#"{"error":""#), response.bodyText)
      XCTAssertTrue(client.waitUntilClosed(), input.debugDescription)
      let next = try RawHTTPClient(port: port)
      XCTAssertEqual(
        try get(next, "/after").status, 200, "not serving after \(input.debugDescription)")
    }
    let statistics = servers[0].statistics
    XCTAssertEqual(statistics.requestErrorsTotal, cases.count)
    XCTAssertEqual(statistics.requestsTotal, 2 * cases.count)
    XCTAssertEqual(statistics.connectionsAcceptedTotal, 2 * cases.count)
  }

  func testRandomGarbageConnectionsAllEndAndTheServerKeepsServing() throws {
    let port = try start(EchoHandler()) {
      $0.headerTimeoutMs = 300
      $0.idleTimeoutMs = 300
    }
    let seed: UInt64 = 0x6A4B_A6E
    var random = SplitMix64(seed: seed)
    for round in 0..<20 {
      let client = try RawHTTPClient(port: port)
      let garbage = (0..<Int.random(in: 1...2_000, using: &random)).map { _ in
        UInt8.random(in: 0...255, using: &random)
      }
      try client.send(garbage)
      XCTAssertTrue(client.waitUntilClosed(), "seed \(seed) round \(round): connection never ended")
    }
    let client = try RawHTTPClient(port: port)
    XCTAssertEqual(try get(client, "/alive").status, 200)
  }

  func testLargeResponseIsSentWholeThroughBackpressure() throws {
    let size = 4 * 1024 * 1024 + 17
    let port = try start(BigResponseHandler(size: size))
    let client = try RawHTTPClient(port: port)
    try client.send("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    for _ in 0..<2 {
      let response = try XCTUnwrap(try client.readResponse())
      XCTAssertEqual(response.body.count, size)
      XCTAssertEqual(response.body[size - 1], UInt8(truncatingIfNeeded: (size - 1) % 251))
    }
  }

  func testSeveralEventLoopsServeManyConnectionsAndShutDown() throws {
    let handler = DeferredHandler()
    let server = HTTPServer(
      configuration: {
        var c = HTTPServerConfiguration()
        c.eventLoopCount = 2
        return c
      }(), handler: handler)
    let port = try server.start()
    let clients = try (0..<8).map { _ in try RawHTTPClient(port: port) }
    for round in 0..<3 {
      for (index, client) in clients.enumerated() {
        try client.send(
          "GET /c/\(index)/r/\(round)/a HTTP/1.1\r\n\r\nGET /c/\(index)/r/\(round)/b HTTP/1.1\r\n\r\n"
        )
      }
      let expected = (round + 1) * clients.count * 2
      XCTAssertTrue(waitUntil { handler.count == expected })
      // Answer this round from another thread, last request first.
      let first = expected - clients.count * 2
      let answers = OSThread(name: "answers") {
        for index in (first..<expected).reversed() {
          let (request, responder) = handler.take(index)
          responder.respond(HTTPResponse(status: 200, body: Array(request.target.utf8)))
        }
      }
      answers.join()
      for (index, client) in clients.enumerated() {
        XCTAssertEqual(try client.readResponse()?.bodyText, "/c/\(index)/r/\(round)/a")
        XCTAssertEqual(try client.readResponse()?.bodyText, "/c/\(index)/r/\(round)/b")
      }
    }
    XCTAssertEqual(server.statistics.connectionsOpen, clients.count)
    server.shutdown(gracePeriodMs: 1_000)
    for client in clients { XCTAssertTrue(client.waitUntilClosed()) }
    XCTAssertEqual(server.statistics.connectionsOpen, 0)
  }

  func testStartReportsBindErrors() throws {
    let port = try start(EchoHandler())
    var configuration = HTTPServerConfiguration()
    configuration.port = port
    let clash = HTTPServer(configuration: configuration, handler: EchoHandler())
    XCTAssertThrowsError(try clash.start())
    configuration.port = 0
    configuration.host = "not-an-address"
    XCTAssertThrowsError(
      try HTTPServer(configuration: configuration, handler: EchoHandler()).start())
    configuration.host = "127.0.0.1"
    configuration.headerCountMax = 0
    XCTAssertThrowsError(
      try HTTPServer(configuration: configuration, handler: EchoHandler()).start())
    configuration.headerCountMax = 100
    configuration.eventLoopCount = 0
    XCTAssertThrowsError(
      try HTTPServer(configuration: configuration, handler: EchoHandler()).start())
  }
}
