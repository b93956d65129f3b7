@testable import ClusterTransport
import Consensus
import Foundation
import HTTPServer
import PeerClient
import Platform
import XCTest

/// A node's consensus port: an HTTP server whose handler is the transport.
final class TransportNode {
  let client: PeerClient
  let transport: HTTPRaftTransport
  let server: HTTPServer
  let port: UInt16
  let received = Locked<[[UInt8]]>([])

  init(_ id: UInt64, configuration: HTTPRaftTransportConfiguration = .init(), receive: Bool = true) throws {
    PeerClient.globalInit()
    var clientConfiguration = PeerClientConfiguration()
    clientConfiguration.connectTimeoutMs = 300
    client = try PeerClient(configuration: clientConfiguration)
    transport = try HTTPRaftTransport(localNode: NodeID(id), client: client, configuration: configuration)
    var serverConfiguration = HTTPServerConfiguration()
    serverConfiguration.bodyBytesMax = 8 << 20
    server = HTTPServer(configuration: serverConfiguration, handler: transport)
    port = try server.start()
    if receive {
      let received = self.received
      transport.setReceiver { batch in received.withLock { $0.append(batch) } }
    }
  }

  var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: port) }

  func stop() {
    server.shutdown(gracePeriodMs: 500)
    client.shutdown()
  }
}

func waitUntil(_ what: String, seconds: Double = 10, _ condition: () -> Bool) -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if condition() { return true }
    usleep(2_000)
  }
  XCTFail("timed out waiting for \(what)")
  return false
}

final class HTTPRaftTransportTests: XCTestCase {
  func testBatchesArriveWholeAndInOrderPerSender() throws {
    let a = try TransportNode(1)
    let b = try TransportNode(2)
    defer { a.stop(); b.stop() }
    let batches = (0..<50).map { index in [UInt8](repeating: UInt8(index), count: 1 + index * 97) + [0, 0xFF] }
    for batch in batches {
      a.transport.send(batch: batch, to: NodeID(2), endpoint: b.endpoint)
      // One in flight at a time keeps the order observable; the transport itself allows more.
      _ = waitUntil("delivery") { a.transport.statistics.batchesDelivered == a.transport.statistics.batchesSent }
    }
    XCTAssertEqual(b.received.withLock { $0 }, batches)
    XCTAssertEqual(a.transport.statistics.batchesFailed, 0)
    XCTAssertEqual(b.transport.statistics.batchesReceived, 50)
  }

  func testALargeBatchIsDeliveredQuickly() throws {
    let a = try TransportNode(1)
    let b = try TransportNode(2)
    defer { a.stop(); b.stop() }
    let batch = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    let started = Date()
    a.transport.send(batch: batch, to: NodeID(2), endpoint: b.endpoint)
    _ = waitUntil("the large batch") { b.received.withLock { $0.count } == 1 }
    XCTAssertLessThan(Date().timeIntervalSince(started), 0.9, "no Expect: 100-continue stall")
    XCTAssertEqual(b.received.withLock { $0.first }, batch)
  }

  func testADeadPeerFailsFastThenIsBackedOffWithoutConnectionAttempts() throws {
    var configuration = HTTPRaftTransportConfiguration()
    configuration.backoffMsMin = 400
    configuration.backoffMsMax = 400
    let a = try TransportNode(1, configuration: configuration)
    defer { a.stop() }
    let dead = Endpoint(host: "127.0.0.1", port: freePort())
    a.transport.send(batch: [1], to: NodeID(9), endpoint: dead)
    XCTAssertTrue(waitUntil("the failure") { a.transport.statistics.batchesFailed == 1 })
    // Within the backoff, batches to that peer are dropped at once.
    for _ in 0..<20 { a.transport.send(batch: [2], to: NodeID(9), endpoint: dead) }
    XCTAssertEqual(a.transport.statistics.batchesDropped, 20)
    XCTAssertEqual(a.transport.statistics.batchesSent, 1)
    XCTAssertEqual(a.client.statistics.requestsAcceptedTotal, 1)
  }

  /// `undelivered` is the host's licence to send a batch's forwarded writes again: called when
  /// nothing reached the receiver (refused connection, back-off, no receiver), never on delivery.
  func testUndeliveredIsCalledOnlyWhenTheBatchCertainlyDidNotArrive() throws {
    let a = try TransportNode(1)
    let b = try TransportNode(2)
    let idle = try TransportNode(3, receive: false)
    defer { a.stop(); b.stop(); idle.stop() }
    let undelivered = Locked<[String]>([])
    func send(_ name: String, to node: UInt64, _ endpoint: Endpoint) {
      a.transport.send(batch: [1], to: NodeID(node), endpoint: endpoint) { undelivered.withLock { $0.append(name) } }
    }
    send("delivered", to: 2, b.endpoint)
    XCTAssertTrue(waitUntil("delivery") { b.received.withLock { $0.count } == 1 })
    send("no receiver", to: 3, idle.endpoint)
    let dead = Endpoint(host: "127.0.0.1", port: freePort())
    send("refused", to: 9, dead)
    XCTAssertTrue(waitUntil("both failures") { undelivered.withLock { $0.count } == 2 })
    send("backed off", to: 9, dead)  // dropped at once: called before `send` returns
    XCTAssertEqual(undelivered.withLock { $0.last }, "backed off")
    XCTAssertTrue(waitUntil("every batch settled") { a.transport.statistics.batchesDelivered + a.transport.statistics.batchesFailed == 3 })
    XCTAssertEqual(Set(undelivered.withLock { $0 }), ["no receiver", "refused", "backed off"])
  }

  func testASlowPeerCannotHoldMoreThanItsInFlightAndQueueLimits() throws {
    var configuration = HTTPRaftTransportConfiguration()
    configuration.inFlightPerPeerMax = 3
    configuration.queuedBatchesPerPeerMax = 4
    let a = try TransportNode(1, configuration: configuration)
    let b = try TransportNode(2, receive: false)
    defer { a.stop(); b.stop() }
    // A slow peer: its receiver holds its event loop until the test lets it go.
    let gate = ConditionLock()
    let open = Locked(false)
    let received = b.received
    b.transport.setReceiver { batch in
      gate.withLock { while !open.withLock({ $0 }) { gate.wait() } }
      received.withLock { $0.append(batch) }
    }
    let dropped = Locked<[UInt8]>([])
    for index in 0..<10 {
      a.transport.send(batch: [UInt8(index)], to: NodeID(2), endpoint: b.endpoint) {
        dropped.withLock { $0.append(UInt8(index)) }
      }
    }
    let statistics = a.transport.statistics
    XCTAssertEqual(statistics.batchesSent, 3, "ten sends to a stalled peer: three in flight")
    XCTAssertEqual(statistics.batchesQueued, 4, "four wait for a slot")
    XCTAssertEqual(statistics.batchesDropped, 3, "the rest are dropped")
    XCTAssertEqual(dropped.withLock { $0 }, [7, 8, 9], "and reported undelivered at once")
    gate.withLock {
      open.withLock { $0 = true }
      gate.broadcast()
    }
    XCTAssertTrue(waitUntil("the admitted batches") { b.received.withLock { $0.count } == 7 })
    XCTAssertEqual(Set(b.received.withLock { $0 }.map { $0[0] }), Set(0..<7), "the queued ones follow as slots free")
    XCTAssertEqual(a.transport.statistics.batchesSent, 7)
  }

  /// A peer's queue that never empties under steady load still drops what it sent: its storage
  /// stays bounded (it holds the batches' bytes).
  func testAQueueThatNeverEmptiesKeepsItsStorageBounded() {
    var peer = HTTPRaftTransport.PeerState()
    let endpoint = Endpoint(host: "127.0.0.1", port: 1)
    func push(_ byte: UInt8) {
      peer.queue.append(HTTPRaftTransport.Outbound(batch: [byte], endpoint: endpoint, undelivered: nil))
      peer.queuedBytes += 1
    }
    for index in 0..<64 { push(UInt8(index)) }
    for round in 0..<10_000 {
      XCTAssertEqual(peer.popQueued()?.batch, [UInt8(truncatingIfNeeded: round)], "FIFO")
      push(UInt8(truncatingIfNeeded: round + 64))
      XCTAssertLessThanOrEqual(peer.queue.count, 2 * 64 + 16, "round \(round)")
    }
    XCTAssertEqual(peer.queuedCount, 64)
    XCTAssertEqual(peer.queuedBytes, 64)
  }

  func testBadInputOnTheConsensusPortIsRefusedAndTheNodeKeepsReceiving() throws {
    let b = try TransportNode(2)
    let idle = try TransportNode(3, receive: false)
    defer { b.stop(); idle.stop() }
    let client = b.client
    func call(_ method: String, _ target: String, _ body: [UInt8], port: UInt16) -> PeerResponse? {
      try? waitForCompletion { client.send(PeerRequest(method: method, host: "127.0.0.1", port: port, target: target, body: body), completion: $0) }.get()
    }
    XCTAssertEqual(call("GET", HTTPRaftTransport.batchPath, [], port: b.port)?.status, 405)
    XCTAssertEqual(call("POST", "/v1/raft/other", [1], port: b.port)?.status, 404)
    XCTAssertEqual(call("POST", HTTPRaftTransport.batchPath, [], port: b.port)?.status, 400)
    XCTAssertEqual(call("POST", HTTPRaftTransport.batchPath, [1], port: idle.port)?.status, 503, "no receiver yet")
    XCTAssertEqual(b.transport.statistics.batchesRefused, 3)
    // Garbage is the host's to judge: the transport hands it over as it came.
    XCTAssertEqual(call("POST", HTTPRaftTransport.batchPath, [0xDE, 0xAD], port: b.port)?.status, 204)
    XCTAssertEqual(b.received.withLock { $0 }, [[0xDE, 0xAD]])
  }
}

func freePort() -> UInt16 {
  let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(descriptor) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
  _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
  return UInt16(bigEndian: address.sin_port)
}
