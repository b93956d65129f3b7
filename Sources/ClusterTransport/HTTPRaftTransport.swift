import Consensus
import HTTPServer
import PeerClient
import Platform
import RaftConsensus

/// Limits of the HTTP transport between nodes, each with its reason.
public struct HTTPRaftTransportConfiguration: Sendable {
  /// Batches on their way to one peer at once. Past it, new batches wait in the peer's queue.
  public var inFlightPerPeerMax = 8
  /// Batches waiting for one of those slots, per peer. Past it (or `queuedBytesPerPeerMax`),
  /// new batches to that peer are dropped: Raft re-sends what matters, and a slow peer must not
  /// make the queue grow without bound. Queueing rather than dropping at once matters under
  /// load: a dropped append costs the leader a probe round trip and a re-send.
  public var queuedBatchesPerPeerMax = 64
  public var queuedBytesPerPeerMax = 64 << 20
  /// How long one batch may take to be delivered before it counts as failed.
  public var sendTimeoutMs = 2_000
  /// After a failed delivery, batches to that peer are dropped for this long, doubling on each
  /// further failure up to `backoffMsMax`, so a dead peer costs no connection attempts per batch.
  public var backoffMsMin = 50
  public var backoffMsMax = 2_000

  public init() {}

  public func validate() throws(ConsensusError) {
    guard inFlightPerPeerMax > 0 else { throw .invalidRequest("inFlightPerPeerMax must be positive") }
    guard queuedBatchesPerPeerMax >= 0, queuedBytesPerPeerMax >= 0 else {
      throw .invalidRequest("queuedBatchesPerPeerMax and queuedBytesPerPeerMax must not be negative")
    }
    guard sendTimeoutMs > 0 else { throw .invalidRequest("sendTimeoutMs must be positive") }
    guard backoffMsMin > 0, backoffMsMax >= backoffMsMin else {
      throw .invalidRequest("backoffMsMin must be positive and at most backoffMsMax")
    }
  }
}

/// Counters for metrics and tests.
public struct HTTPRaftTransportStatistics: Sendable, Equatable {
  public var batchesSent: UInt64 = 0
  public var batchesDelivered: UInt64 = 0
  public var batchesFailed: UInt64 = 0
  public var batchesDropped: UInt64 = 0
  /// Batches that waited in a peer's queue for an in-flight slot.
  public var batchesQueued: UInt64 = 0
  public var batchesReceived: UInt64 = 0
  public var batchesRefused: UInt64 = 0
}

/// Raft message batches between nodes over HTTP on the consensus port: outbound as
/// `POST /v1/raft/batch` through the libcurl `PeerClient` (non-blocking, keep-alive), inbound
/// through this type's `HTTPHandler` conformance on the node's consensus-port server.
///
/// Never blocks the caller: `send` takes a lock, counts, and hands the bytes to the client.
public final class HTTPRaftTransport: RaftTransport, HTTPHandler {
  /// The route batches are posted to.
  public static let batchPath = "/v1/raft/batch"

  /// A batch accepted for a peer: posted at once, or queued until an in-flight slot frees.
  struct Outbound: Sendable {
    let batch: [UInt8]
    let endpoint: Endpoint
    let undelivered: (@Sendable () -> Void)?
  }

  struct PeerState {
    var inFlight = 0
    var backoffMs = 0
    var blockedUntilMs: UInt64 = 0
    /// FIFO; the front is `queue[queueHead]` (popping from the front stays O(1)).
    var queue: [Outbound] = []
    var queueHead = 0
    var queuedBytes = 0
    var queuedCount: Int { queue.count - queueHead }

    mutating func popQueued() -> Outbound? {
      guard queueHead < queue.count else { return nil }
      let next = queue[queueHead]
      queueHead += 1
      queuedBytes -= next.batch.count
      if queueHead == queue.count {
        queue.removeAll(keepingCapacity: true)
        queueHead = 0
      } else if queueHead >= 16 && queueHead * 2 >= queue.count {
        // Under steady load the queue may never empty: drop the sent prefix (it still holds the
        // batches' bytes) so the array stays within twice the queue's limit.
        queue.removeFirst(queueHead)
        queueHead = 0
      }
      return next
    }
  }

  private struct State {
    var peers: [NodeID: PeerState] = [:]
    var receiver: (@Sendable ([UInt8]) -> Void)?
    var statistics = HTTPRaftTransportStatistics()
  }

  public let localNode: NodeID
  public let configuration: HTTPRaftTransportConfiguration
  private let client: PeerClient
  private let state = Locked(State())

  public init(localNode: NodeID, client: PeerClient, configuration: HTTPRaftTransportConfiguration = .init()) throws {
    try configuration.validate()
    self.localNode = localNode
    self.client = client
    self.configuration = configuration
  }

  public var statistics: HTTPRaftTransportStatistics { state.withLock { $0.statistics } }

  /// The counters in Prometheus text format.
  public func prometheusMetrics() -> String {
    let statistics = self.statistics
    var text = ""
    for (name, help, value) in [
      ("sent", "Batches posted to peers.", statistics.batchesSent),
      ("delivered", "Batches peers answered 2xx.", statistics.batchesDelivered),
      ("failed", "Batches that failed or timed out (the peer is then backed off).", statistics.batchesFailed),
      ("dropped", "Batches dropped: peer backed off, or its in-flight slots and queue full.", statistics.batchesDropped),
      ("queued", "Batches that waited in a peer's queue for an in-flight slot.", statistics.batchesQueued),
      ("received", "Batches received from peers and handed to the engine.", statistics.batchesReceived),
      ("refused", "Requests on the consensus port refused (wrong route, method, empty body, not ready).", statistics.batchesRefused),
    ] {
      text += Prometheus.metric("caucus_transport_batches_\(name)_total", help: help, value)
    }
    return text
  }

  // MARK: Outbound

  public func send(batch: [UInt8], to node: NodeID, endpoint: Endpoint, undelivered: (@Sendable () -> Void)?) {
    precondition(!batch.isEmpty, "a batch has at least its header")
    let now = MonotonicClock.nowMilliseconds()
    let outbound = Outbound(batch: batch, endpoint: endpoint, undelivered: undelivered)
    enum Admission { case post, queued, dropped }
    let admission: Admission = state.withLock { state in
      var peer = state.peers[node] ?? PeerState()
      defer { state.peers[node] = peer }
      guard now >= peer.blockedUntilMs else {
        state.statistics.batchesDropped += 1
        return .dropped
      }
      if peer.inFlight < configuration.inFlightPerPeerMax {
        peer.inFlight += 1
        state.statistics.batchesSent += 1
        return .post
      }
      guard peer.queuedCount < configuration.queuedBatchesPerPeerMax,
        peer.queuedBytes + batch.count <= configuration.queuedBytesPerPeerMax
      else {
        state.statistics.batchesDropped += 1
        return .dropped
      }
      peer.queue.append(outbound)
      peer.queuedBytes += batch.count
      state.statistics.batchesQueued += 1
      return .queued
    }
    switch admission {
    case .post: post(outbound, to: node)
    case .queued: break
    case .dropped: undelivered?()
    }
  }

  /// Posts one batch that holds an in-flight slot of `node`.
  private func post(_ outbound: Outbound, to node: NodeID) {
    let undelivered = outbound.undelivered
    let request = PeerRequest(
      method: "POST", host: outbound.endpoint.host, port: outbound.endpoint.port, target: HTTPRaftTransport.batchPath,
      headers: [("Content-Type", "application/octet-stream"), ("X-Caucus-From", localNode.description)],
      body: outbound.batch, timeoutMs: configuration.sendTimeoutMs)
    client.send(request) { [self] result in
      let delivered: Bool
      switch result {
      case .success(let response):
        delivered = (200..<300).contains(response.status)
        // Only a 2xx answer hands the body to the receiver (see `handle`).
        if !delivered { undelivered?() }
      case .failure(.connectFailed), .failure(.overloaded), .failure(.invalidRequest):
        // Nothing was sent (PeerError's contract).
        delivered = false
        undelivered?()
      case .failure(.shuttingDown):
        // The client also fails requests already on the wire with this: the batch may have
        // arrived, so its forwards must not be sent again (the engine stops first anyway).
        delivered = false
      case .failure:
        delivered = false  // it may have arrived
      }
      finish(node, delivered: delivered)
    }
  }

  /// Frees the batch's slot, and hands it to the next queued batch; after a failure the queue is
  /// dropped (the peer is backed off, so its batches would only wait to fail).
  private func finish(_ node: NodeID, delivered: Bool) {
    let now = MonotonicClock.nowMilliseconds()
    let (next, dropped): (Outbound?, [Outbound]) = state.withLock { state in
      var peer = state.peers[node] ?? PeerState()
      defer { state.peers[node] = peer }
      precondition(peer.inFlight > 0, "a batch finishes once")
      peer.inFlight -= 1
      if delivered {
        peer.backoffMs = 0
        peer.blockedUntilMs = 0
        state.statistics.batchesDelivered += 1
        guard let next = peer.popQueued() else { return (nil, []) }
        peer.inFlight += 1
        state.statistics.batchesSent += 1
        return (next, [])
      }
      peer.backoffMs = min(configuration.backoffMsMax, max(configuration.backoffMsMin, peer.backoffMs * 2))
      peer.blockedUntilMs = now + UInt64(peer.backoffMs)
      state.statistics.batchesFailed += 1
      var dropped: [Outbound] = []
      while let queued = peer.popQueued() { dropped.append(queued) }
      state.statistics.batchesDropped += UInt64(dropped.count)
      return (nil, dropped)
    }
    // Outside the lock: posting and the host's callbacks may take other locks.
    for outbound in dropped { outbound.undelivered?() }
    if let next { post(next, to: node) }
  }

  // MARK: Inbound

  public func setReceiver(_ receive: (@Sendable ([UInt8]) -> Void)?) {
    state.withLock { $0.receiver = receive }
  }

  /// Serves `POST /v1/raft/batch`: the body goes to the receiver as it is (the host decodes and
  /// checks it). Anything else on the consensus port is answered with a JSON error.
  public func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    guard request.path == HTTPRaftTransport.batchPath else {
      return refuse(responder, 404, "not_found", "no route matches \(request.method) \(request.path.prefix(200)) on the consensus port")
    }
    guard request.method == "POST" else {
      return refuse(responder, 405, "method_not_allowed", "\(HTTPRaftTransport.batchPath) takes POST", headers: [("Allow", "POST")])
    }
    guard !request.body.isEmpty else {
      return refuse(responder, 400, "bad_request", "a raft batch needs a body")
    }
    guard let receiver = state.withLock({ state -> (@Sendable ([UInt8]) -> Void)? in
      if state.receiver != nil { state.statistics.batchesReceived += 1 }
      return state.receiver
    }) else {
      return refuse(responder, 503, "not_ready", "this node is not accepting raft traffic yet")
    }
    receiver(request.body)
    responder.respond(HTTPResponse(status: 204))
  }

  private func refuse(
    _ responder: HTTPResponder, _ status: Int, _ code: String, _ message: String,
    headers: [(name: String, value: String)] = []
  ) {
    state.withLock { $0.statistics.batchesRefused += 1 }
    responder.respond(HTTPResponse.jsonError(status: status, code: code, message: message, headers: headers))
  }
}
