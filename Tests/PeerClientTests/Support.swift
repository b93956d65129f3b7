import Glibc
import HTTPServer
import PeerClient
import Platform
import XCTest

/// Answers at once with the request echoed: body as received, method, target and a few request
/// headers as `x-echo-…` response headers.
struct EchoHandler: HTTPHandler {
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    responder.respond(
      HTTPResponse(
        status: request.path.hasPrefix("/status/") ? Int(request.path.dropFirst(8)) ?? 200 : 200,
        headers: [
          ("X-Echo-Method", request.method),
          ("X-Echo-Target", request.target),
          ("X-Echo-Test", request.header("x-test") ?? "-"),
          ("X-Echo-Expect", request.header("expect") ?? "-"),
          ("X-Echo-Length", request.header("content-length") ?? "-"),
        ],
        body: request.body))
  }
}

/// Answers the first request; on the second, stops the whole server without answering (a peer
/// killed after it took the request).
final class DyingHandler: HTTPHandler {
  let received = Locked(0)
  let server = Locked<HTTPServer?>(nil)
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    let count = received.withLock { count -> Int in
      count += 1
      return count
    }
    if count == 1 { return responder.respond(HTTPResponse(status: 200)) }
    // Off the event loop: shutdown joins it.
    let server = self.server.withLock { $0 }
    _ = OSThread(name: "dying-handler") { server?.shutdown(gracePeriodMs: 0) }
  }
}

/// Never answers; keeps every responder so the connection stays open and waiting.
final class SilentHandler: HTTPHandler {
  let responders = Locked<[HTTPResponder]>([])
  var count: Int { responders.withLock { $0.count } }
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    responders.withLock { $0.append(responder) }
  }
}

/// Answers every request with `size` bytes.
struct SizedResponseHandler: HTTPHandler {
  let body: [UInt8]
  init(size: Int) {
    var body = [UInt8](repeating: 0, count: size)
    body.withUnsafeMutableBufferPointer { bytes in
      for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index % 251) }
    }
    self.body = body
  }
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    responder.respond(HTTPResponse(status: 200, body: body))
  }
}

/// Collects one result per send; waits for them with a deadline.
final class Results: Sendable {
  private let lock = ConditionLock()
  private let values = Locked<[Int: [Result<PeerResponse, PeerError>]]>([:])

  func completion(_ index: Int) -> @Sendable (Result<PeerResponse, PeerError>) -> Void {
    { result in
      self.lock.withLock {
        self.values.withLock { $0[index, default: []].append(result) }
        self.lock.broadcast()
      }
    }
  }

  var count: Int { values.withLock { $0.values.reduce(0) { $0 + $1.count } } }
  var all: [Int: [Result<PeerResponse, PeerError>]] { values.withLock { $0 } }

  /// Waits until `count` results arrived or `seconds` passed; true when they arrived.
  func wait(count: Int, seconds: Double) -> Bool {
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(seconds * 1e9)
    return lock.withLock {
      while self.count < count {
        if !lock.wait(untilNanoseconds: deadline) { return self.count >= count }
      }
      return true
    }
  }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(seconds: Double, _ condition: () -> Bool) -> Bool {
  let deadline = MonotonicClock.nowNanoseconds() + UInt64(seconds * 1e9)
  while MonotonicClock.nowNanoseconds() < deadline {
    if condition() { return true }
    usleep(1_000)
  }
  return condition()
}

func seconds(since startNanoseconds: UInt64) -> Double {
  Double(MonotonicClock.nowNanoseconds() - startNanoseconds) / 1e9
}

/// Bytes 0...255 repeated, NULs included.
func binaryBytes(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7) } }

class PeerClientTestCase: XCTestCase {
  private var servers: [HTTPServer] = []
  private var clients: [PeerClient] = []

  override func tearDown() {
    for client in clients { client.shutdown() }
    for server in servers { server.shutdown(gracePeriodMs: 0) }
    clients = []
    servers = []
    super.tearDown()
  }

  func startServer(
    _ handler: any HTTPHandler, _ configure: (inout HTTPServerConfiguration) -> Void = { _ in }
  ) throws -> (HTTPServer, UInt16) {
    var configuration = HTTPServerConfiguration()
    configure(&configuration)
    let server = HTTPServer(configuration: configuration, handler: handler)
    servers.append(server)
    return (server, try server.start())
  }

  func makeClient(_ configure: (inout PeerClientConfiguration) -> Void = { _ in }) throws
    -> PeerClient
  {
    var configuration = PeerClientConfiguration()
    configure(&configuration)
    let client = try PeerClient(configuration: configuration)
    clients.append(client)
    return client
  }

  /// Sends one request and waits (at most `seconds`) for its result.
  func roundTrip(
    _ client: PeerClient, _ request: PeerRequest, seconds: Double = 10,
    file: StaticString = #filePath, line: UInt = #line
  ) -> Result<PeerResponse, PeerError>? {
    let results = Results()
    client.send(request, completion: results.completion(0))
    guard results.wait(count: 1, seconds: seconds) else {
      XCTFail("no result within \(seconds) s", file: file, line: line)
      return nil
    }
    return results.all[0]?.first
  }

  func response(
    _ result: Result<PeerResponse, PeerError>?, file: StaticString = #filePath, line: UInt = #line
  ) -> PeerResponse? {
    switch result {
    case .success(let response): return response
    case .failure(let error):
      XCTFail("expected a response, got \(error)", file: file, line: line)
      return nil
    case nil: return nil
    }
  }

  func error(
    _ result: Result<PeerResponse, PeerError>?, file: StaticString = #filePath, line: UInt = #line
  ) -> PeerError? {
    switch result {
    case .success(let response):
      XCTFail("expected an error, got status \(response.status)", file: file, line: line)
      return nil
    case .failure(let error): return error
    case nil: return nil
    }
  }
}
