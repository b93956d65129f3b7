import Glibc
import Platform
import XCTest

final class SocketTests: XCTestCase {
  func testAddressParsing() {
    XCTAssertNotNil(SocketAddress(host: "127.0.0.1", port: 80).ipv4())
    XCTAssertNotNil(SocketAddress(host: "0.0.0.0", port: 0).ipv4())
    XCTAssertNotNil(SocketAddress(host: "localhost", port: 1).ipv4())
    XCTAssertNil(SocketAddress(host: "256.0.0.1", port: 80).ipv4())
    XCTAssertNil(SocketAddress(host: "example.com", port: 80).ipv4())
    XCTAssertEqual(SocketAddress(host: "10.0.0.1", port: 8080).description, "10.0.0.1:8080")
  }

  func testListenConnectAcceptAndExchangeBytes() throws {
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    let address = try listener.localAddress()
    XCTAssertNotEqual(address.port, 0)
    XCTAssertNil(try listener.accept(), "nothing pending yet: a non-blocking accept reports none")
    let client = try Socket.connect(to: address, timeoutMs: 2_000)
    var accepted: (Socket, SocketAddress)? = nil
    let epoll = try Epoll()
    try epoll.add(listener.descriptor, events: .readable, token: 7)
    var tokens: [UInt64] = []
    epoll.wait(timeoutMs: 2_000) { tokens.append($0.token) }
    XCTAssertEqual(tokens, [7])
    accepted = try listener.accept()
    let (server, peer) = try XCTUnwrap(accepted)
    XCTAssertEqual(peer.host, "127.0.0.1")
    try server.setNoDelay()

    try client.sendAll(Array("ping".utf8))
    var buffer = [UInt8](repeating: 0, count: 16)
    try epoll.add(server.descriptor, events: .readable, token: 9)
    var events: [EpollEvent] = []
    epoll.wait(timeoutMs: 2_000) { events.append($0) }
    XCTAssertEqual(events.map(\.token), [9])
    XCTAssertTrue(events[0].events.contains(.readable))
    let count = try buffer.withUnsafeMutableBytes { try server.receive(into: $0) }
    XCTAssertEqual(count, 4)
    XCTAssertEqual(Array(buffer[0..<4]), Array("ping".utf8))
    XCTAssertNil(
      try buffer.withUnsafeMutableBytes { try server.receive(into: $0) },
      "non-blocking: would block")

    let sent = try Array("pong".utf8).withUnsafeBytes { try server.send($0) }
    XCTAssertEqual(sent, 4)
    let received = try buffer.withUnsafeMutableBytes { try client.receive(into: $0) }
    XCTAssertEqual(received, 4)

    server.shutdownWrite()
    XCTAssertEqual(
      try buffer.withUnsafeMutableBytes { try client.receive(into: $0) }, 0,
      "end of stream after shutdown")
    server.close()
    server.close()  // twice is harmless
    XCTAssertFalse(server.isOpen)
  }

  func testSendToAClosedPeerThrowsInsteadOfKillingTheProcess() throws {
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    let client = try Socket.connect(to: try listener.localAddress(), timeoutMs: 2_000)
    var accepted: (Socket, SocketAddress)? = nil
    let deadline = MonotonicClock.nowMilliseconds() + 2_000
    while accepted == nil && MonotonicClock.nowMilliseconds() < deadline {
      accepted = try listener.accept()
      if accepted == nil { usleep(1_000) }
    }
    let (server, _) = try XCTUnwrap(accepted)
    // Unread data at close makes the kernel reset the connection.
    try client.sendAll([1, 2, 3])
    server.close()
    var failed = false
    for _ in 0..<100 where !failed {
      do {
        try client.sendAll([UInt8](repeating: 0, count: 1024))
      } catch {
        failed = true
      }
    }
    XCTAssertTrue(failed, "sending to a reset connection must fail with EPIPE/ECONNRESET")
  }

  func testConnectToAClosedPortThrows() throws {
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    let address = try listener.localAddress()
    listener.close()
    XCTAssertThrowsError(try Socket.connect(to: address)) { error in
      XCTAssertEqual((error as? SystemError)?.errno, ECONNREFUSED)
    }
  }

  func testListenOnABusyPortThrows() throws {
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    XCTAssertThrowsError(try Socket.listen(on: try listener.localAddress())) { error in
      XCTAssertEqual((error as? SystemError)?.errno, EADDRINUSE)
    }
  }
}

final class EventFDTests: XCTestCase {
  func testSignalsCoalesceAndWakeEpoll() throws {
    let wake = try EventFD()
    let epoll = try Epoll()
    try epoll.add(wake.descriptor, events: .readable, token: 1)
    XCTAssertEqual(epoll.wait(timeoutMs: 0) { _ in }, 0, "not signalled yet")
    XCTAssertEqual(wake.drain(), 0)
    let thread = OSThread(name: "signaller") {
      wake.signal()
      wake.signal()
    }
    thread.join()
    var tokens: [UInt64] = []
    epoll.wait(timeoutMs: 2_000) { tokens.append($0.token) }
    XCTAssertEqual(tokens, [1])
    XCTAssertEqual(wake.drain(), 2)
    XCTAssertEqual(epoll.wait(timeoutMs: 0) { _ in }, 0, "drained")
  }

  func testEpollModifyAndRemove() throws {
    let wake = try EventFD()
    let epoll = try Epoll()
    try epoll.add(wake.descriptor, events: [], token: 5)
    wake.signal()
    XCTAssertEqual(epoll.wait(timeoutMs: 0) { _ in }, 0, "no interest registered")
    try epoll.modify(wake.descriptor, events: .readable, token: 6)
    var tokens: [UInt64] = []
    epoll.wait(timeoutMs: 1_000) { tokens.append($0.token) }
    XCTAssertEqual(tokens, [6])
    try epoll.remove(wake.descriptor)
    XCTAssertEqual(epoll.wait(timeoutMs: 0) { _ in }, 0)
  }
}
