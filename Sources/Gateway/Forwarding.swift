import Consensus
import HTTPServer
import PeerClient
import Platform

/// How a node answers a request for a group it does not lead (`?forward=`, API.md).
enum ForwardMode: String {
  /// Relay the request to the leader and its answer back (the default).
  case proxy
  /// `307 Temporary Redirect` to the same request at the leader's client address.
  case redirect
  /// `421 not_leader` with the leader hint.
  case none
}

/// Relays requests to a group's leader over the libcurl `PeerClient`. A leader is known by its
/// consensus endpoint; its client URL is asked once from that endpoint (`GET /v1/node` on the
/// consensus port) and remembered.
public final class LeaderForwarder: Sendable {
  /// Forwarded hops a request may take; past it the answer is `508 forward_loop`.
  public static let hopsMax = 2
  /// How long asking a peer for its client URL may take.
  public static let lookupTimeoutMs = 1_000
  /// Request headers that belong to one connection, not to the request: never relayed.
  static let hopByHopHeaders: Set<String> = [
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host", "expect",
    "proxy-connection", "x-caucus-hops", "x-caucus-forwarded-by",
  ]

  let localNode: NodeID
  let client: PeerClient
  /// How long a relayed request may take.
  let relayTimeoutMs: Int
  private let clientURLs = Locked<[NodeID: String]>([:])

  public init(localNode: NodeID, client: PeerClient, relayTimeoutMs: Int = 10_000) {
    self.localNode = localNode
    self.client = client
    self.relayTimeoutMs = relayTimeoutMs
  }

  func knownClientURL(of node: NodeID) -> String? { clientURLs.withLock { $0[node] } }

  /// `peer`'s client URL, or nil when its consensus port does not say.
  func clientURL(of peer: Peer, completion: @escaping @Sendable (String?) -> Void) {
    if let known = knownClientURL(of: peer.node) { return completion(known) }
    let request = PeerRequest(
      method: "GET", host: peer.endpoint.host, port: peer.endpoint.port, target: "/v1/node",
      timeoutMs: LeaderForwarder.lookupTimeoutMs)
    client.send(request) { [clientURLs] result in
      guard case .success(let response) = result, response.status == 200,
        let json = try? JSONParser.parse(response.body), let url = json["clientURL"]?.stringValue, !url.isEmpty
      else { return completion(nil) }
      clientURLs.withLock { $0[peer.node] = url }
      completion(url)
    }
  }

  /// Relays `request` to `baseURL` (the leader's client URL) and hands back its answer, or the
  /// client's error when there is none.
  func relay(
    _ request: HTTPRequest, to baseURL: String, hops: Int,
    completion: @escaping @Sendable (Result<HTTPResponse, PeerError>) -> Void
  ) {
    var headers = request.headers.filter { !LeaderForwarder.hopByHopHeaders.contains($0.name) }
    headers.append(("X-Caucus-Hops", String(hops + 1)))
    headers.append(("X-Caucus-Forwarded-By", localNode.description))
    let forwarded = PeerRequest(
      method: request.method, url: baseURL + request.target, headers: headers, body: request.body, timeoutMs: relayTimeoutMs)
    client.send(forwarded) { [localNode] result in
      completion(
        result.map { response in
          var relayed = response.headers.filter { !LeaderForwarder.hopByHopHeaders.contains($0.name) }
          relayed.append(("X-Caucus-Forwarded-By", localNode.description))
          return HTTPResponse(status: response.status, headers: relayed, body: response.body)
        })
    }
  }

  /// Runs a node-local group operation (`POST /v1/node/groups`, `DELETE /v1/node/groups/{group}`)
  /// on `peer` through its client API, and hands back the status it answered (0: unreachable).
  func nodeLocal(
    _ method: String, on peer: Peer, target: String, body: [UInt8], completion: @escaping @Sendable (Int, [UInt8]) -> Void
  ) {
    clientURL(of: peer) { [client, relayTimeoutMs] url in
      guard let url else { return completion(0, []) }
      // At the hop limit: the receiver answers for itself and never forwards or locates.
      let request = PeerRequest(
        method: method, url: url + target,
        headers: [("Content-Type", HTTPResponse.jsonContentType), ("X-Caucus-Hops", String(LeaderForwarder.hopsMax))],
        body: body, timeoutMs: relayTimeoutMs)
      client.send(request) { result in
        switch result {
        case .success(let response): completion(response.status, response.body)
        case .failure: completion(0, [])
        }
      }
    }
  }
}

/// Finds which member leads a group this node does not host, by asking the other members for
/// their groups (`GET /v1/groups?forward=none` on their client API). Until the cluster directory
/// exists this is how a node outside a group routes to it.
struct GroupLocator: Sendable {
  let forwarder: LeaderForwarder
  let members: [Peer]
  let local: NodeID

  func locate(_ group: GroupID, _ completion: @escaping @Sendable (GroupLocation) -> Void) {
    let others = members.filter { $0.node != local }
    guard !others.isEmpty else { return completion(.nowhere) }
    let answers = Locked<(remaining: Int, hosted: Bool, done: Bool)>((others.count, false, false))
    for member in others {
      forwarder.nodeLocal("GET", on: member, target: "/v1/groups/\(group)?forward=none", body: []) { [members] status, body in
        // A member hosting the group names its leader; the first such answer decides.
        var leader: Peer?
        let document = status == 200 ? try? JSONParser.parse(body) : nil
        if let id = document?["leader"]?.unsignedIntegerValue {
          leader = members.first { $0.node.rawValue == id }
        }
        let decided: GroupLocation? = answers.withLock { state in
          state.remaining -= 1
          state.hosted = state.hosted || document != nil
          guard !state.done else { return nil }
          if let leader {
            state.done = true
            return .leader(leader)
          }
          guard state.remaining == 0 else { return nil }
          state.done = true
          return state.hosted ? .noLeader : .nowhere
        }
        if let decided { completion(decided) }
      }
    }
  }
}

/// Where a group this node does not host lives.
enum GroupLocation: Sendable {
  case leader(Peer)
  /// Members host it, but none knows a leader yet.
  case noLeader
  case nowhere
}
