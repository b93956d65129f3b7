import Consensus
import HTTPServer

/// Everything a node serves on its consensus port: raft batches (the transport) and
/// `GET /v1/node`, which tells other nodes this node's client URL (so they can forward and
/// redirect to it). Node-to-node group operations will join here.
public final class ConsensusPortHandler: HTTPHandler {
  private let transport: HTTPRaftTransport
  private let nodeDocument: [UInt8]

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

  public func handle(_ request: HTTPRequest, responder: HTTPResponder) {
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
