import Glibc
import HTTPServer
import Platform
import TLSTestSupport
import XCTest

@testable import PeerClient

/// libcurl's TLS against our HTTPS server: the node-to-node path when a cluster runs with TLS.
final class PeerClientTLSTests: PeerClientTestCase {
  private func file(_ name: String) throws -> String { try TestCertificates.path(name) }

  private func startTLSServer(
    host: String = "127.0.0.1", requireClientCertificate: Bool = false
  ) throws -> (HTTPServer, UInt16) {
    let context = try TLSContext(
      server: TLSFiles(certificateChainFile: file("node.pem"), privateKeyFile: file("node.key"), caFile: file("ca.pem")),
      requireClientCertificate: requireClientCertificate)
    return try startServer(EchoHandler()) {
      $0.host = host
      $0.tls = context
    }
  }

  private func makeTLSClient(ca: String = "ca.pem", certificate: String? = nil) throws -> PeerClient {
    let tls = PeerTLSConfiguration(
      caCertificateFile: try file(ca), clientCertificateFile: try certificate.map { try file($0 + ".pem") },
      clientKeyFile: try certificate.map { try file($0 + ".key") })
    return try makeClient { $0.tls = tls }
  }

  func testRequestsGoOverHTTPSVerifiedByTheClusterCAOnOneKeptAliveConnection() throws {
    let (server, port) = try startTLSServer()
    let client = try makeTLSClient()
    // An endpoint-built request says http://; the TLS client sends it as https://.
    for index in 0..<5 {
      let answer = try XCTUnwrap(
        response(
          roundTrip(
            client,
            PeerRequest(method: "POST", host: "127.0.0.1", port: port, target: "/n/\(index)", body: Array("body \(index)".utf8)))))
      XCTAssertEqual(answer.status, 200)
      XCTAssertEqual(answer.header("x-echo-target"), "/n/\(index)")
      XCTAssertEqual(answer.body, Array("body \(index)".utf8))
    }
    let byName = try XCTUnwrap(response(roundTrip(client, PeerRequest(method: "GET", url: "https://localhost:\(port)/by-name"))))
    XCTAssertEqual(byName.status, 200, "the certificate names localhost too")
    let statistics = client.statistics
    XCTAssertEqual(statistics.requestsCompletedTotal, 6)
    XCTAssertEqual(server.statistics.tlsHandshakesTotal, statistics.connectionsOpenedTotal)
    XCTAssertGreaterThanOrEqual(statistics.connectionsReusedTotal, 4, "kept-alive TLS connections are reused")
    XCTAssertEqual(server.statistics.tlsHandshakeFailuresTotal, 0)
  }

  func testAServerWhoseCertificateAnotherCASignedIsRefusedBeforeAnythingIsSent() throws {
    let (server, port) = try startTLSServer()
    let client = try makeTLSClient(ca: "other-ca.pem")
    let failure = error(roundTrip(client, PeerRequest(method: "POST", host: "127.0.0.1", port: port, target: "/x", body: [1])))
    guard case .connectFailed(let message) = failure else { return XCTFail("expected connectFailed, got \(String(describing: failure))") }
    XCTAssertTrue(message.contains("SSL certificate problem"), message)
    XCTAssertTrue(waitUntil { server.statistics.tlsHandshakeFailuresTotal == 1 })
    XCTAssertEqual(server.statistics.requestsTotal, 0)
  }

  /// VERIFYHOST 2: a certificate from the right CA but for another address is refused.
  func testACertificateForAnotherHostIsRefused() throws {
    let (_, port) = try startTLSServer(host: "127.0.0.2")
    let client = try makeTLSClient()
    let failure = error(roundTrip(client, PeerRequest(method: "GET", url: "http://127.0.0.2:\(port)/x")))
    guard case .connectFailed(let message) = failure else { return XCTFail("expected connectFailed, got \(String(describing: failure))") }
    XCTAssertTrue(message.contains("127.0.0.2"), message)
  }

  func testAServerRequiringClientCertificatesTakesTheNodesCertificateOnly() throws {
    let (server, port) = try startTLSServer(requireClientCertificate: true)
    let anonymous = try makeTLSClient()
    XCTAssertNotNil(error(roundTrip(anonymous, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/x"))))
    let foreign = try makeTLSClient(certificate: "other-client")
    XCTAssertNotNil(error(roundTrip(foreign, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/x"))))
    XCTAssertEqual(server.statistics.requestsTotal, 0)

    let node = try makeTLSClient(certificate: "node")
    let answer = try XCTUnwrap(response(roundTrip(node, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/x"))))
    XCTAssertEqual(answer.status, 200)
  }

  func testAPlaintextClientIsAnsweredThatThePortSpeaksTLS() throws {
    let (_, port) = try startTLSServer()
    let plain = try makeClient()
    let answer = try XCTUnwrap(response(roundTrip(plain, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/x"))))
    XCTAssertEqual(answer.status, 400)
    XCTAssertTrue(String(decoding: answer.body, as: UTF8.self).contains("tls_required"))
  }

  func testATLSClientRefusesAPlaintextServer() throws {
    let (_, port) = try startServer(EchoHandler())
    let client = try makeTLSClient()
    let failure = error(roundTrip(client, PeerRequest(method: "GET", host: "127.0.0.1", port: port, target: "/x")))
    guard case .connectFailed = failure else { return XCTFail("expected connectFailed, got \(String(describing: failure))") }
  }

  func testConfigurationRefusesUnreadableFilesAndAHalfClientCertificate() throws {
    var configuration = PeerClientConfiguration()
    configuration.tls = PeerTLSConfiguration(caCertificateFile: "/nonexistent/ca.pem")
    XCTAssertThrowsError(try configuration.validate()) {
      XCTAssertTrue("\($0)".contains("tls.caCertificateFile /nonexistent/ca.pem cannot be read: No such file"), "\($0)")
    }
    configuration.tls = PeerTLSConfiguration(caCertificateFile: try file("ca.pem"), clientCertificateFile: try file("node.pem"))
    XCTAssertThrowsError(try configuration.validate()) { XCTAssertTrue("\($0)".contains("give both or neither"), "\($0)") }
  }

  func testOnlyHTTPURLsAreUpgraded() {
    XCTAssertEqual(PeerWorker.upgradedToHTTPS("http://127.0.0.1:1/a?b=http://c"), "https://127.0.0.1:1/a?b=http://c")
    XCTAssertEqual(PeerWorker.upgradedToHTTPS("https://h:1/a"), "https://h:1/a")
    XCTAssertEqual(PeerWorker.upgradedToHTTPS("ftp://h/a"), "ftp://h/a", "left as it is: libcurl refuses it")
  }
}

/// Polls `condition` until it holds or `seconds` pass.
private func waitUntil(seconds: Double = 5, _ condition: () -> Bool) -> Bool { eventually(seconds: seconds, condition) }
