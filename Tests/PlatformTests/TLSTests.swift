import Glibc
import Platform
import TLSTestSupport
import XCTest

/// TLSContext's checks of its files, and TLSSession pairs over a non-blocking socket pair: the
/// handshake, data both ways through partial writes, verification of either side, close_notify.
final class TLSTests: XCTestCase {
  private func file(_ name: String) throws -> String { try TestCertificates.path(name) }

  private func serverContext(requireClientCertificate: Bool = false) throws -> TLSContext {
    try TLSContext(
      server: TLSFiles(certificateChainFile: file("node.pem"), privateKeyFile: file("node.key"), caFile: file("ca.pem")),
      requireClientCertificate: requireClientCertificate)
  }

  private func clientContext(ca: String = "ca.pem", certificate: String? = nil) throws -> TLSContext {
    try TLSContext(
      client: TLSFiles(
        certificateChainFile: try certificate.map { try file($0 + ".pem") },
        privateKeyFile: try certificate.map { try file($0 + ".key") }, caFile: file(ca)))
  }

  private func message(_ body: () throws -> Void) -> String {
    do {
      try body()
      return "no error"
    } catch {
      return "\(error)"
    }
  }

  // MARK: Contexts

  func testAMissingFileIsRefusedNamingTheFileAndTheReason() throws {
    let text = message { _ = try TLSContext(server: TLSFiles(certificateChainFile: "/nonexistent/node.pem", privateKeyFile: try file("node.key"))) }
    XCTAssertTrue(text.contains("cannot read the certificate file /nonexistent/node.pem: No such file or directory"), text)
    let ca = message { _ = try TLSContext(client: TLSFiles(caFile: "/nonexistent/ca.pem")) }
    XCTAssertTrue(ca.contains("cannot read the CA file /nonexistent/ca.pem"), ca)
  }

  func testAKeyThatDoesNotMatchTheCertificateIsRefused() throws {
    let text = message {
      _ = try TLSContext(server: TLSFiles(certificateChainFile: try file("node.pem"), privateKeyFile: try file("client.key")))
    }
    XCTAssertTrue(text.contains("does not match the certificate"), text)
  }

  func testAFileThatIsNotPEMIsRefused() throws {
    let directory = try TestCertificates.directory()
    let notPEM = directory + "/not-pem.txt"
    XCTAssertEqual(TestCertificates.shell("echo 'hello' > '\(notPEM)'"), 0)
    let certificate = message { _ = try TLSContext(server: TLSFiles(certificateChainFile: notPEM, privateKeyFile: try file("node.key"))) }
    XCTAssertTrue(certificate.contains("no certificate could be loaded from \(notPEM)"), certificate)
    let key = message { _ = try TLSContext(server: TLSFiles(certificateChainFile: try file("node.pem"), privateKeyFile: notPEM)) }
    XCTAssertTrue(key.contains("no private key could be loaded from \(notPEM)"), key)
    let ca = message { _ = try TLSContext(client: TLSFiles(caFile: notPEM)) }
    XCTAssertTrue(ca.contains("no CA certificate could be loaded from \(notPEM)"), ca)
    let directoryAsFile = message { _ = try TLSContext(client: TLSFiles(caFile: directory)) }
    XCTAssertTrue(directoryAsFile.contains("is not a regular file"), directoryAsFile)
  }

  /// OpenSSL's default would prompt for the passphrase on the terminal, which would hang a node
  /// started by a service manager.
  func testAnEncryptedKeyIsRefusedWithoutAPrompt() throws {
    let encrypted = try TestCertificates.directory() + "/encrypted.key"
    XCTAssertEqual(
      TestCertificates.shell("openssl pkey -in '\(try file("node.key"))' -aes256 -passout pass:secret -out '\(encrypted)' 2>/dev/null"), 0)
    let text = message { _ = try TLSContext(server: TLSFiles(certificateChainFile: try file("node.pem"), privateKeyFile: encrypted)) }
    XCTAssertTrue(text.contains("no private key could be loaded from \(encrypted) (expected an unencrypted PEM key)"), text)
  }

  func testMissingPiecesAreRefused() throws {
    XCTAssertTrue(message { _ = try TLSContext(server: TLSFiles(certificateChainFile: try file("node.pem"))) }.contains("needs a certificate chain file and a private key"))
    XCTAssertTrue(
      message {
        _ = try TLSContext(
          server: TLSFiles(certificateChainFile: try file("node.pem"), privateKeyFile: try file("node.key")), requireClientCertificate: true)
      }.contains("needs a CA file"))
    XCTAssertTrue(message { _ = try TLSContext(client: TLSFiles()) }.contains("needs a CA file"))
    XCTAssertTrue(
      message { _ = try TLSContext(client: TLSFiles(certificateChainFile: try file("client.pem"), caFile: try file("ca.pem"))) }
        .contains("give both or neither"))
  }

  // MARK: Sessions

  /// Two connected non-blocking sockets, closed when the test ends.
  private func socketPair() -> (Int32, Int32) {
    var descriptors: [Int32] = [-1, -1]
    let result = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &descriptors)
    precondition(result == 0, "socketpair failed: errno \(errno)")
    addTeardownBlock { _ = close(descriptors[0]); _ = close(descriptors[1]) }
    return (descriptors[0], descriptors[1])
  }

  /// Drives both handshakes until both are done or one fails (bounded: a loop of non-blocking calls).
  private func handshake(_ client: TLSSession, _ server: TLSSession) -> (client: TLSResult, server: TLSResult) {
    var clientResult = TLSResult.wantWrite
    var serverResult = TLSResult.wantRead
    for _ in 0..<100 {
      if clientResult != .done(0) { clientResult = client.handshake() }
      if serverResult != .done(0) { serverResult = server.handshake() }
      if case .failed = clientResult { break }
      if case .failed = serverResult { break }
      if clientResult == .done(0) && serverResult == .done(0) { break }
    }
    return (clientResult, serverResult)
  }

  /// Sends all of `bytes` from `sender` while `receiver` reads, alternating (so a full socket
  /// buffer makes the writer wait, as on an event loop); returns what was received.
  private func transfer(_ bytes: [UInt8], from sender: TLSSession, to receiver: TLSSession) -> [UInt8] {
    var received: [UInt8] = []
    var offset = 0
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: TLSSession.recordPlaintextBytesMax, alignment: 16)
    defer { buffer.deallocate() }
    for _ in 0..<100_000 where received.count < bytes.count {
      if offset < bytes.count {
        let result = bytes.withUnsafeBytes { sender.write(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
        switch result {
        case .done(let count): offset += count
        case .wantWrite: break
        default: XCTFail("write: \(result)"); return received
        }
      }
      let result = receiver.read(into: buffer)
      switch result {
      case .done(let count): received += UnsafeRawBufferPointer(rebasing: buffer[0..<count])
      case .wantRead: break
      default: XCTFail("read: \(result)"); return received
      }
    }
    return received
  }

  func testHandshakeThenDataBothWaysThenCloseNotify() throws {
    let (clientSocket, serverSocket) = socketPair()
    let client = try clientContext().makeSession(descriptor: clientSocket, serverName: "localhost")
    let server = try serverContext().makeSession(descriptor: serverSocket)
    XCTAssertEqual(server.handshake(), .wantRead, "nothing from the client yet")
    let results = handshake(client, server)
    XCTAssertEqual(results.client, .done(0))
    XCTAssertEqual(results.server, .done(0))
    XCTAssertTrue(client.isHandshakeComplete && server.isHandshakeComplete)
    XCTAssertEqual(client.protocolVersion, "TLSv1.3")
    XCTAssertEqual(client.peerCertificateSubject, "/CN=caucus-node")
    XCTAssertNil(server.peerCertificateSubject, "no client certificate was asked for")

    let request = Array("GET / HTTP/1.1\r\n\r\n".utf8)
    XCTAssertEqual(transfer(request, from: client, to: server), request)
    // Far more than the socket pair buffers: the writer sees .wantWrite and goes on later.
    let large = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    XCTAssertEqual(transfer(large, from: server, to: client), large)

    XCTAssertEqual(server.shutdown(), .done(0))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 100, alignment: 1)
    defer { buffer.deallocate() }
    XCTAssertEqual(client.read(into: buffer), .closed, "close_notify ends the client's stream")
  }

  func testAnEndOfStreamWithoutCloseNotifyReadsAsClosed() throws {
    let (clientSocket, serverSocket) = socketPair()
    let client = try clientContext().makeSession(descriptor: clientSocket, serverName: "127.0.0.1")
    let server = try serverContext().makeSession(descriptor: serverSocket)
    XCTAssertEqual(handshake(client, server).server, .done(0))
    Glibc.shutdown(clientSocket, Int32(SHUT_WR))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 100, alignment: 1)
    defer { buffer.deallocate() }
    XCTAssertEqual(server.read(into: buffer), .closed)
  }

  func testAClientTrustingAnotherCARefusesTheServer() throws {
    let (clientSocket, serverSocket) = socketPair()
    let client = try clientContext(ca: "other-ca.pem").makeSession(descriptor: clientSocket, serverName: "localhost")
    let server = try serverContext().makeSession(descriptor: serverSocket)
    guard case .failed(let reason) = handshake(client, server).client else { return XCTFail("the client accepted the server") }
    // (The server sends its CA after its certificate, OpenSSL's automatic chain: a root the client
    // does not trust.)
    XCTAssertTrue(reason.contains("certificate verify failed"), reason)
    XCTAssertTrue(reason.contains("self-signed certificate in certificate chain"), reason)
  }

  func testAClientChecksTheServerNameOrAddress() throws {
    for (name, accepted) in [("localhost", true), ("127.0.0.1", true), ("example.com", false), ("10.0.0.1", false)] {
      let (clientSocket, serverSocket) = socketPair()
      let client = try clientContext().makeSession(descriptor: clientSocket, serverName: name)
      let server = try serverContext().makeSession(descriptor: serverSocket)
      let result = handshake(client, server).client
      if accepted {
        XCTAssertEqual(result, .done(0), name)
      } else {
        guard case .failed(let reason) = result else { XCTFail("\(name) was accepted"); continue }
        XCTAssertTrue(reason.contains("mismatch"), "\(name): \(reason)")
      }
    }
  }

  func testAServerRequiringClientCertificatesTakesOnlyThoseFromItsCA() throws {
    for (certificate, subject) in [(nil, nil), ("client", "/CN=caucus-client"), ("other-client", nil)] as [(String?, String?)] {
      let (clientSocket, serverSocket) = socketPair()
      let client = try clientContext(certificate: certificate).makeSession(descriptor: clientSocket, serverName: "localhost")
      let server = try serverContext(requireClientCertificate: true).makeSession(descriptor: serverSocket)
      let result = handshake(client, server).server
      if let subject {
        XCTAssertEqual(result, .done(0), certificate ?? "none")
        XCTAssertEqual(server.peerCertificateSubject, subject)
        XCTAssertEqual(transfer(Array("ping".utf8), from: client, to: server), Array("ping".utf8))
      } else {
        guard case .failed(let reason) = result else { XCTFail("\(certificate ?? "no certificate") was accepted"); continue }
        XCTAssertTrue(
          reason.contains(certificate == nil ? "peer did not return a certificate" : "certificate verify failed"),
          "\(certificate ?? "none"): \(reason)")
      }
    }
  }

  func testAFailedSessionStaysFailedAndSendsNoCloseNotify() throws {
    let (clientSocket, serverSocket) = socketPair()
    let client = try clientContext(ca: "other-ca.pem").makeSession(descriptor: clientSocket, serverName: "localhost")
    let server = try serverContext().makeSession(descriptor: serverSocket)
    guard case .failed = handshake(client, server).client else { return XCTFail("the client accepted the server") }
    guard case .failed = client.handshake() else { return XCTFail("a failed session went on") }
    XCTAssertEqual(client.shutdown(), .done(0), "nothing to send after a failure")
  }
}

/// A node checks at start that peers verifying its certificate with the cluster CA will take it.
final class TLSOwnCertificateTests: XCTestCase {
  func testTheNodeCertificateVerifiesWithItsCAAndNotWithAnother() throws {
    let certificate = try TestCertificates.path("node.pem")
    let key = try TestCertificates.path("node.key")
    let good = try TLSContext(server: TLSFiles(certificateChainFile: certificate, privateKeyFile: key, caFile: TestCertificates.path("ca.pem")))
    XCTAssertNoThrow(try good.checkOwnCertificateAgainstCA())
    let other = try TestCertificates.path("other-ca.pem")
    let bad = try TLSContext(server: TLSFiles(certificateChainFile: certificate, privateKeyFile: key, caFile: other))
    XCTAssertThrowsError(try bad.checkOwnCertificateAgainstCA()) { error in
      XCTAssertTrue("\(error)".contains("does not verify with the CA in \(other) (unable to get local issuer certificate)"), "\(error)")
    }
  }
}
