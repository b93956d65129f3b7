import Glibc
import HTTPServer
import PeerClient
import Platform
import XCTest

/// Forwards every request to a backend through a PeerClient, from the server's event-loop thread,
/// and answers when the backend has; records the longest time `handle` took.
final class ProxyHandler: HTTPHandler {
  let client: PeerClient
  let backendPort: UInt16
  let handleNanosecondsMax = Locked<UInt64>(0)

  init(client: PeerClient, backendPort: UInt16) {
    self.client = client
    self.backendPort = backendPort
  }

  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    let start = MonotonicClock.nowNanoseconds()
    client.send(
      PeerRequest(
        method: request.method, host: "127.0.0.1", port: backendPort, target: request.target,
        body: request.body)
    ) { result in
      switch result {
      case .success(let answer):
        responder.respond(
          HTTPResponse(status: answer.status, headers: [("X-Proxied", "1")], body: answer.body))
      case .failure(let error):
        responder.respond(HTTPResponse(status: 502, body: Array("\(error)".utf8)))
      }
    }
    let elapsed = MonotonicClock.nowNanoseconds() - start
    handleNanosecondsMax.withLock { $0 = max($0, elapsed) }
  }
}

final class PeerClientEventLoopTests: PeerClientTestCase {
  func testSendFromAnEventLoopHandlerForwardsFiftyConcurrentClients() throws {
    let (_, backendPort) = try startServer(EchoHandler())
    let proxyClient = try makeClient()
    let proxy = ProxyHandler(client: proxyClient, backendPort: backendPort)
    let (_, proxyPort) = try startServer(proxy)
    let loadClient = try makeClient { $0.connectionsPerHostMax = 64 }
    let results = Results()
    let concurrentClients = 50
    let rounds = 4
    for round in 0..<rounds {
      for client in 0..<concurrentClients {
        let index = round * concurrentClients + client
        loadClient.send(
          PeerRequest(
            method: "POST", host: "127.0.0.1", port: proxyPort, target: "/p/\(index)",
            body: Array("payload-\(index)".utf8)),
          completion: results.completion(index))
      }
      XCTAssertTrue(
        results.wait(count: (round + 1) * concurrentClients, seconds: 20),
        "round \(round): \(results.count) answered")
    }
    for (index, outcomes) in results.all {
      XCTAssertEqual(outcomes.count, 1)
      guard case .success(let answer) = outcomes[0] else {
        XCTFail("request \(index): \(outcomes[0])")
        continue
      }
      XCTAssertEqual(answer.status, 200, String(decoding: answer.body, as: UTF8.self))
      XCTAssertEqual(answer.header("x-proxied"), "1")
      XCTAssertEqual(answer.body, Array("payload-\(index)".utf8))
    }
    let handleMs = Double(proxy.handleNanosecondsMax.withLock { $0 }) / 1e6
    XCTAssertLessThan(handleMs, 20, "send() on the event loop must only enqueue")
    XCTAssertEqual(proxyClient.statistics.requestsCompletedTotal, concurrentClients * rounds)
  }

  func testCompletionMaySendAgain() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient()
    let results = Results()
    let chainLength = 20
    @Sendable func step(_ index: Int) {
      client.send(PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/\(index)")) {
        result in
        results.completion(index)(result)
        if index + 1 < chainLength { step(index + 1) }
      }
    }
    step(0)
    XCTAssertTrue(results.wait(count: chainLength, seconds: 10))
    XCTAssertEqual(client.statistics.requestsCompletedTotal, chainLength)
  }

  /// Not a timed test: prints loopback figures for the report.
  func testMeasureLoopbackThroughput() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeClient { $0.connectionsPerHostMax = 64 }
    let body = Array(repeating: UInt8(ascii: "x"), count: 100)
    let request = PeerRequest(
      method: "POST", host: "127.0.0.1", port: port, target: "/m", body: body)

    // Sequential: one request at a time, one kept-alive connection.
    let sequentialCount = 3_000
    let sequentialStart = MonotonicClock.nowNanoseconds()
    for _ in 0..<sequentialCount {
      guard case .success = roundTrip(client, request) else { return XCTFail("sequential failed") }
    }
    let sequentialSeconds = seconds(since: sequentialStart)

    // 64 in flight: every completion sends the next until the total is reached.
    let concurrentTotal = 20_000
    let inFlight = 64
    let sent = Locked(0)
    let done = Results()
    @Sendable func next() {
      let index = sent.withLock { sent -> Int? in
        guard sent < concurrentTotal else { return nil }
        sent += 1
        return sent - 1
      }
      guard let index else { return }
      client.send(request) { result in
        if case .failure(let error) = result { print("failure: \(error)") }
        done.completion(index % 64)(result)
        next()
      }
    }
    let concurrentStart = MonotonicClock.nowNanoseconds()
    for _ in 0..<inFlight { next() }
    XCTAssertTrue(done.wait(count: concurrentTotal, seconds: 60))
    let concurrentSeconds = seconds(since: concurrentStart)
    print(
      """
      PeerClient loopback: sequential \(Int(Double(sequentialCount) / sequentialSeconds)) round trips/s \
      (\(String(format: "%.1f", sequentialSeconds / Double(sequentialCount) * 1e6)) µs each); \
      64 concurrent \(Int(Double(concurrentTotal) / concurrentSeconds)) requests/s; \
      connections opened \(client.statistics.connectionsOpenedTotal)
      """)
  }
}
