import Consensus
import HTTPServer
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

  public init(transport: HTTPRaftTransport, node: NodeID, clientURL: String, consensusEndpoint: Endpoint) {
    self.transport = transport
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

  public func handle(_ request: HTTPRequest, responder: HTTPResponder) {
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
}
