import Consensus
import HTTPServer
import PeerClient
import Platform
import RaftConsensus

/// Limits of the HTTP transport between nodes, each with its reason.
public struct HTTPRaftTransportConfiguration: Sendable {
  /// Batches on their way to one peer at once. Past it, new batches to that peer are dropped:
  /// Raft re-sends what matters, and a slow peer must not make the queue grow without bound.
  public var inFlightPerPeerMax = 8
  /// How long one batch may take to be delivered before it counts as failed.
  public var sendTimeoutMs = 2_000
  /// After a failed delivery, batches to that peer are dropped for this long, doubling on each
  /// further failure up to `backoffMsMax`, so a dead peer costs no connection attempts per batch.
  public var backoffMsMin = 50
  public var backoffMsMax = 2_000

  public init() {}

  public func validate() throws(ConsensusError) {
    guard inFlightPerPeerMax > 0 else { throw .invalidRequest("inFlightPerPeerMax must be positive") }
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

  private struct PeerState {
    var inFlight = 0
    var backoffMs = 0
    var blockedUntilMs: UInt64 = 0
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

  // MARK: Outbound

  public func send(batch: [UInt8], to node: NodeID, endpoint: Endpoint, undelivered: (@Sendable () -> Void)?) {
    precondition(!batch.isEmpty, "a batch has at least its header")
    let now = MonotonicClock.nowMilliseconds()
    let admitted: Bool = state.withLock { state in
      var peer = state.peers[node] ?? PeerState()
      defer { state.peers[node] = peer }
      guard now >= peer.blockedUntilMs, peer.inFlight < configuration.inFlightPerPeerMax else {
        state.statistics.batchesDropped += 1
        return false
      }
      peer.inFlight += 1
      state.statistics.batchesSent += 1
      return true
    }
    guard admitted else {
      undelivered?()
      return
    }
    let request = PeerRequest(
      method: "POST", host: endpoint.host, port: endpoint.port, target: HTTPRaftTransport.batchPath,
      headers: [("Content-Type", "application/octet-stream"), ("X-Caucus-From", localNode.description)],
      body: batch, timeoutMs: configuration.sendTimeoutMs)
    client.send(request) { [self] result in
      let delivered: Bool
      switch result {
      case .success(let response):
        delivered = (200..<300).contains(response.status)
        // Only a 2xx answer hands the body to the receiver (see `handle`).
        if !delivered { undelivered?() }
      case .failure(.connectFailed), .failure(.overloaded), .failure(.shuttingDown), .failure(.invalidRequest):
        // Nothing was sent (PeerError's contract).
        delivered = false
        undelivered?()
      case .failure:
        delivered = false  // it may have arrived
      }
      finish(node, delivered: delivered)
    }
  }

  private func finish(_ node: NodeID, delivered: Bool) {
    let now = MonotonicClock.nowMilliseconds()
    state.withLock { state in
      var peer = state.peers[node] ?? PeerState()
      precondition(peer.inFlight > 0, "a batch finishes once")
      peer.inFlight -= 1
      if delivered {
        peer.backoffMs = 0
        peer.blockedUntilMs = 0
        state.statistics.batchesDelivered += 1
      } else {
        peer.backoffMs = min(configuration.backoffMsMax, max(configuration.backoffMsMin, peer.backoffMs * 2))
        peer.blockedUntilMs = now + UInt64(peer.backoffMs)
        state.statistics.batchesFailed += 1
      }
      state.peers[node] = peer
    }
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
