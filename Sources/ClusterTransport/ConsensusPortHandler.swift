import Consensus
import HTTPServer
import Logging
import PeerClient
import Platform

/// Everything a node serves on its consensus port: raft batches (the transport), `GET /v1/node`,
/// which tells other nodes this node's client URL (so they can forward and redirect to it), and
/// the node-to-node group operations (`POST /v1/node/groups`, `DELETE /v1/node/groups/{group}`:
/// createPeer and deletePeer on this node), which go to the gateway once it is set.
public final class ConsensusPortHandler: HTTPHandler {
  /// The path prefix of the group operations served for other nodes.
  public static let groupOperationsPath = "/v1/node/groups"

  private let transport: HTTPRaftTransport
  private let nodeDocument: [UInt8]
  /// The client API's handler for the group operations: set once the gateway exists (it is
  /// built after this port must already receive raft traffic).
  private let groupOperations = Locked<(any HTTPHandler)?>(nil)
  /// With a cluster secret: every request must carry its proof (`PeerAuthenticator`).
  private let authenticator: PeerAuthenticator?
  private let logger: Logger
  /// Refused requests, and when a refusal was last logged: at most one line per
  /// `refusalLogIntervalMs`, so a misconfigured or hostile sender cannot flood the log.
  private let refusals = Locked<(total: UInt64, lastLoggedMs: UInt64, unlogged: UInt64)>((0, 0, 0))
  public static let refusalLogIntervalMs: UInt64 = 10_000

  public init(
    transport: HTTPRaftTransport, node: NodeID, clientURL: String, consensusEndpoint: Endpoint,
    authenticator: PeerAuthenticator? = nil, logger: Logger = Logger(label: "caucus.consensus-port")
  ) {
    self.transport = transport
    self.authenticator = authenticator
    self.logger = logger
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("id", node.rawValue)
    writer.member("clientURL", clientURL)
    writer.member("consensusEndpoint", consensusEndpoint.description)
    writer.endObject()
    self.nodeDocument = writer.bytes
  }

  /// Serves the group operations with `handler` from now on (nil: `503 not_ready`).
  public func setGroupOperationsHandler(_ handler: (any HTTPHandler)?) {
    groupOperations.withLock { $0 = handler }
  }

  /// Requests refused for want of the cluster secret's proof.
  public var peerAuthenticationRefusals: UInt64 { refusals.withLock { $0.total } }

  public func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    if let authenticator {
      let verdict = authenticator.verify(
        method: request.method, target: request.target, headerValue: request.header(PeerAuthenticator.headerName),
        identity: request.header(PeerAuthenticator.identityHeaderName), body: request.body,
        nowMs: PeerAuthenticator.wallClockMilliseconds())
      if case .failure(let error) = verdict { return refuse(request, error, responder) }
    }
    if request.path == ConsensusPortHandler.groupOperationsPath
      || request.path.hasPrefix(ConsensusPortHandler.groupOperationsPath + "/")
    {
      guard let handler = groupOperations.withLock({ $0 }) else {
        return responder.respond(
          HTTPResponse.jsonError(
            status: 503, code: "not_ready", message: "this node is still starting; retry", headers: [("Retry-After", "1")]))
      }
      return handler.handle(request, responder: responder)
    }
    if request.path == "/v1/node" {
      guard request.method == "GET" || request.method == "HEAD" else {
        return responder.respond(
          HTTPResponse.jsonError(
            status: 405, code: "method_not_allowed", message: "/v1/node takes GET", headers: [("Allow", "GET, HEAD")]))
      }
      return responder.respond(HTTPResponse(status: 200, headers: [("Content-Type", HTTPResponse.jsonContentType)], body: nodeDocument))
    }
    transport.handle(request, responder: responder)
  }

  private func refuse(_ request: HTTPRequest, _ error: PeerAuthenticationError, _ responder: HTTPResponder) {
    let now = MonotonicClock.nowMilliseconds()
    let suppressed: UInt64? = refusals.withLock { state in
      state.total += 1
      guard state.lastLoggedMs == 0 || now - state.lastLoggedMs >= Self.refusalLogIntervalMs else {
        state.unlogged += 1
        return nil
      }
      defer {
        state.lastLoggedMs = now
        state.unlogged = 0
      }
      return state.unlogged
    }
    if let suppressed {
      logger.warning(
        "refused a request on the consensus port: peer authentication failed",
        metadata: [
          "reason": "\(error)", "method": "\(request.method)", "path": "\(request.path)",
          "refusedSinceLastLine": "\(suppressed)",
        ])
    }
    responder.respond(
      HTTPResponse.jsonError(
        status: 401, code: "unauthorized", message: "peer authentication failed: \(error)",
        headers: [("WWW-Authenticate", "Caucus-Peer")]))
  }
}
