import Glibc
import HTTPServer
import Platform
import TLSTestSupport
import XCTest

/// Answers at once: `<METHOD> <target> <body>`, or `size` bytes for `/large/<size>`.
private struct TLSEchoHandler: HTTPHandler {
  func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    if request.path.hasPrefix("/large/"), let size = Int(request.path.dropFirst(7)) {
      return responder.respond(HTTPResponse(status: 200, body: (0..<size).map { UInt8(truncatingIfNeeded: $0 % 251) }))
    }
    let text = "\(request.method) \(request.target) " + String(decoding: request.body, as: UTF8.self)
    responder.respond(HTTPResponse(status: 200, body: Array(text.utf8)))
  }
}

/// The server with a TLS context: handshakes on the event loop, HTTP over them with its usual
/// behaviour, and clean refusals of what is not TLS or not trusted.
final class HTTPServerTLSTests: XCTestCase {
  private var servers: [HTTPServer] = []

  override func tearDown() {
    for server in servers { server.shutdown(gracePeriodMs: 0) }
    servers = []
    super.tearDown()
  }

  private func file(_ name: String) throws -> String { try TestCertificates.path(name) }

  private func start(
    requireClientCertificate: Bool = false, _ configure: (inout HTTPServerConfiguration) -> Void = { _ in }
  ) throws -> (HTTPServer, UInt16) {
    var configuration = HTTPServerConfiguration()
    configuration.tls = try TLSContext(
      server: TLSFiles(certificateChainFile: file("node.pem"), privateKeyFile: file("node.key"), caFile: file("ca.pem")),
      requireClientCertificate: requireClientCertificate)
    configure(&configuration)
    let server = HTTPServer(configuration: configuration, handler: TLSEchoHandler())
    servers.append(server)
    return (server, try server.start())
  }

  private func clientContext(certificate: String? = nil) throws -> TLSContext {
    try TLSContext(
      client: TLSFiles(
        certificateChainFile: try certificate.map { try file($0 + ".pem") },
        privateKeyFile: try certificate.map { try file($0 + ".key") }, caFile: file("ca.pem")))
  }

  private func tlsClient(_ port: UInt16, certificate: String? = nil) throws -> RawHTTPClient {
    let client = try RawHTTPClient(port: port)
    try client.startTLS(clientContext(certificate: certificate))
    return client
  }

  func testKeepAliveAndPipelinedRequestsOverTLS() throws {
    let (server, port) = try start()
    let client = try tlsClient(port)
    XCTAssertEqual(client.tls?.protocolVersion, "TLSv1.3")
    for index in 0..<3 {
      try client.send("GET /n/\(index) HTTP/1.1\r\nHost: t\r\n\r\n")
      let response = try XCTUnwrap(client.readResponse())
      XCTAssertEqual(response.status, 200)
      XCTAssertEqual(response.bodyText, "GET /n/\(index) ")
      XCTAssertFalse(response.closes)
    }
    // Ten requests in one write, a body among them: ten answers, in order.
    var pipelined = ""
    for index in 0..<10 { pipelined += "GET /p/\(index) HTTP/1.1\r\nHost: t\r\n\r\n" }
    pipelined += "PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    try client.send(pipelined)
    for index in 0..<10 { XCTAssertEqual(try client.readResponse()?.bodyText, "GET /p/\(index) ") }
    XCTAssertEqual(try client.readResponse()?.bodyText, "PUT /k hello")
    XCTAssertEqual(server.statistics.tlsHandshakesTotal, 1)
    XCTAssertEqual(server.statistics.tlsHandshakeFailuresTotal, 0)
  }

  func testLargeBodiesBothWaysGoThroughRecordsAndPartialWrites() throws {
    let (_, port) = try start()
    let client = try tlsClient(port)
    let size = 5 * 1024 * 1024
    try client.send("GET /large/\(size) HTTP/1.1\r\nHost: t\r\n\r\n")
    let response = try XCTUnwrap(client.readResponse())
    XCTAssertEqual(response.body.count, size)
    XCTAssertTrue(response.body.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset % 251) })
    let body = String(repeating: "x", count: 1_000_000)
    try client.send("PUT /big HTTP/1.1\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
    XCTAssertEqual(try client.readResponse()?.body.count, "PUT /big ".utf8.count + body.utf8.count)
  }

  func testAPlaintextRequestOnTheTLSPortIsAnswered400InPlaintextAndTheServerKeepsServing() throws {
    let (server, port) = try start()
    let plain = try RawHTTPClient(port: port)
    try plain.send("GET /v1/node HTTP/1.1\r\nHost: t\r\n\r\n")
    let refusal = try XCTUnwrap(try plain.readResponse())
    XCTAssertEqual(refusal.status, 400)
    XCTAssertTrue(refusal.closes)
    XCTAssertTrue(refusal.header("content-type")?.hasPrefix("application/json") ?? false)
    XCTAssertTrue(refusal.bodyText.contains("\"error\":\"tls_required\""), refusal.bodyText)
    XCTAssertTrue(refusal.bodyText.contains("use https://"), refusal.bodyText)
    XCTAssertTrue(plain.waitUntilClosed(), "the server closes after the refusal")
    XCTAssertEqual(server.statistics.tlsPlaintextRefusedTotal, 1)

    let client = try tlsClient(port)
    try client.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
    XCTAssertEqual(try client.readResponse()?.bodyText, "GET /after ")
  }

  func testBytesThatAreNeitherHTTPNorTLSAreClosedAndCounted() throws {
    let (server, port) = try start()
    let garbage = try RawHTTPClient(port: port)
    try garbage.send([0, 1, 2, 3] + Array("not a handshake\r\n\r\n".utf8))
    XCTAssertTrue(garbage.waitUntilClosed())
    XCTAssertNil(try garbage.readResponse(), "nothing is answered")
    XCTAssertTrue(waitUntil { server.statistics.tlsHandshakeFailuresTotal == 1 })
    let client = try tlsClient(port)
    try client.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
    XCTAssertEqual(try client.readResponse()?.status, 200)
  }

  /// A client that connects and never finishes its handshake (nothing sent, or a ClientHello cut
  /// short) is closed at `tlsHandshakeTimeoutMs`, not held until the idle timeout.
  func testAHandshakeThatDoesNotFinishIsClosedAtItsDeadline() throws {
    let (server, port) = try start { $0.tlsHandshakeTimeoutMs = 200 }
    let silent = try RawHTTPClient(port: port)
    let partial = try RawHTTPClient(port: port)
    try partial.send([0x16, 0x03, 0x01, 0x02])  // a record header promising a ClientHello
    let started = MonotonicClock.nowMilliseconds()
    XCTAssertTrue(silent.waitUntilClosed())
    XCTAssertTrue(partial.waitUntilClosed())
    let elapsed = MonotonicClock.nowMilliseconds() - started
    XCTAssertGreaterThanOrEqual(elapsed, 150)
    XCTAssertLessThan(elapsed, 3_000, "closed by the handshake deadline, not a later timeout")
    XCTAssertTrue(waitUntil { server.statistics.tlsHandshakeFailuresTotal == 2 })
    XCTAssertTrue(waitUntil { server.statistics.connectionsOpen == 0 })
  }

  func testAServerRequiringClientCertificatesRefusesAClientWithoutOne() throws {
    let (server, port) = try start(requireClientCertificate: true)
    // TLS 1.3: the client finishes its side before the server has checked it; the server's
    // refusal (an alert, then the close) arrives where the answer would be, or fails the write.
    let anonymous = try RawHTTPClient(port: port)
    if (try? anonymous.startTLS(clientContext())) != nil {
      if (try? anonymous.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")) != nil {
        XCTAssertNil(try anonymous.readResponse(), "no answer without a certificate")
      }
      XCTAssertNotNil(anonymous.tlsFailure, "the session ended in a failure")
    }
    XCTAssertTrue(waitUntil { server.statistics.tlsHandshakeFailuresTotal == 1 })

    let client = try tlsClient(port, certificate: "client")
    try client.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    XCTAssertEqual(try client.readResponse()?.bodyText, "GET /x ")
    XCTAssertEqual(server.statistics.tlsHandshakesTotal, 1)
  }

  func testConfigurationRefusesAClientContextAndASmallReadBuffer() throws {
    var configuration = HTTPServerConfiguration()
    configuration.tls = try clientContext()
    XCTAssertThrowsError(try configuration.validate()) { XCTAssertTrue("\($0)".contains("must be a server context")) }
    configuration.tls = try TLSContext(server: TLSFiles(certificateChainFile: file("node.pem"), privateKeyFile: file("node.key")))
    configuration.readBufferBytes = 4096
    XCTAssertThrowsError(try configuration.validate()) { XCTAssertTrue("\($0)".contains("at least 16384 with TLS")) }
  }

  /// At `connectionsMax` a plaintext server answers 503; a TLS port's client could not read that,
  /// so the extra connection is closed without a byte, and the open one goes on.
  func testOverConnectionsMaxATLSPortClosesTheExtraConnectionWithoutAPlaintextAnswer() throws {
    let (server, port) = try start { $0.connectionsMax = 1 }
    let first = try tlsClient(port)
    XCTAssertTrue(waitUntil { server.statistics.connectionsOpen == 1 })
    let extra = try RawHTTPClient(port: port)
    XCTAssertTrue(extra.waitUntilClosed())
    XCTAssertNil(try extra.readResponse(), "no plaintext 503 on a TLS port")
    XCTAssertEqual(server.statistics.connectionsRefusedTotal, 1)
    try first.send("GET /still HTTP/1.1\r\nHost: t\r\n\r\n")
    XCTAssertEqual(try first.readResponse()?.bodyText, "GET /still ")
  }

  /// Shutdown closes connections still in their handshake at once (they have no request to finish).
  func testShutdownClosesHandshakingConnections() throws {
    let (server, port) = try start()
    let silent = try RawHTTPClient(port: port)
    XCTAssertTrue(waitUntil { server.statistics.connectionsOpen == 1 })
    let started = MonotonicClock.nowMilliseconds()
    server.shutdown(gracePeriodMs: 5_000)
    XCTAssertLessThan(MonotonicClock.nowMilliseconds() - started, 2_000)
    XCTAssertTrue(silent.waitUntilClosed())
  }
}
