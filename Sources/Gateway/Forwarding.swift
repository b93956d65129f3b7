import Consensus
import Directory
import HTTPServer
import JSON
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
public final class LeaderForwarder: DirectoryTransport {
  /// Forwarded hops a request may take; past it the answer is `508 forward_loop`.
  public static let hopsMax = 2
  /// How long asking a peer for its client URL may take.
  public static let lookupTimeoutMs = 1_000
  /// Request headers that belong to one connection, not to the request: never relayed.
  static let hopByHopHeaders: Set<String> = [
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host", "expect",
    "proxy-connection", "x-caucus-hops", "x-caucus-forwarded-by",
    // Said by the relaying node itself, never passed on from its caller.
    "x-caucus-identity", "x-caucus-peer",
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

  /// Records `node`'s client URL as the cluster directory names it.
  public func remember(clientURL: String, of node: NodeID) {
    precondition(!clientURL.isEmpty, "a directory record has a client URL")
    clientURLs.withLock { $0[node] = clientURL }
  }

  /// `peer`'s client URL, or nil when its consensus port does not say.
  public func clientURL(of peer: Peer, completion: @escaping @Sendable (String?) -> Void) {
    if let known = knownClientURL(of: peer.node) { return completion(known) }
    describe(peer.endpoint) { [clientURLs] node in
      guard let node, node.id == peer.node else { return completion(nil) }
      clientURLs.withLock { $0[peer.node] = node.clientURL }
      completion(node.clientURL)
    }
  }

  /// What the node at a consensus endpoint says of itself (`GET /v1/node` on its consensus port),
  /// or nil when it does not answer with a node document.
  public func describe(_ endpoint: Endpoint, completion: @escaping @Sendable (DirectoryNode?) -> Void) {
    let request = PeerRequest(
      method: "GET", host: endpoint.host, port: endpoint.port, target: "/v1/node", timeoutMs: LeaderForwarder.lookupTimeoutMs)
    client.send(request) { result in
      guard case .success(let response) = result, response.status == 200 else { return completion(nil) }
      completion(try? DirectoryRecords.decodeNode(response.body))
    }
  }

  public func send(_ request: PeerRequest, completion: @escaping @Sendable (Result<PeerResponse, PeerError>) -> Void) {
    client.send(request, completion: completion)
  }

  /// Relays `request` to `baseURL` (the leader's client URL) and hands back its answer, or the
  /// client's error when there is none. `identity` names the caller this node admitted
  /// (`X-Caucus-Identity`, believed by the receiver only under the cluster secret's proof, which
  /// the client adds); the caller's `Authorization` travels too, for a receiver to check itself.
  func relay(
    _ request: HTTPRequest, to baseURL: String, hops: Int, identity: String?,
    completion: @escaping @Sendable (Result<HTTPResponse, PeerError>) -> Void
  ) {
    var headers = request.headers.filter { !LeaderForwarder.hopByHopHeaders.contains($0.name) }
    headers.append(("X-Caucus-Hops", String(hops + 1)))
    headers.append(("X-Caucus-Forwarded-By", localNode.description))
    if let identity { headers.append(("X-Caucus-Identity", identity)) }
    let forwarded = PeerRequest(
      method: request.method, url: baseURL + request.target, headers: headers, body: request.body, timeoutMs: relayTimeoutMs)
    client.send(forwarded) { [localNode] result in
      completion(
        result.map { response in
          var relayed = response.headers.filter { !LeaderForwarder.hopByHopHeaders.contains($0.name) }
          relayed.append(("X-Caucus-Forwarded-By", localNode.description))
          // A HEAD's answer came without its body: its Content-Length is the GET's, passed on.
          let headLength =
            request.method == "HEAD"
            ? response.headers.first { $0.name == "content-length" }.flatMap { Int($0.value) } : nil
          return HTTPResponse(
            status: response.status, headers: relayed, body: headLength == nil ? response.body : [], headContentLength: headLength)
        })
    }
  }

  /// Runs a group operation for other nodes (`POST /v1/node/groups`, `DELETE
  /// /v1/node/groups/{group}`: createPeer, deletePeer) on `peer` over its consensus port, and
  /// hands back the status it answered (0: unreachable).
  func groupOperation(
    _ method: String, on peer: Peer, target: String, body: [UInt8], completion: @escaping @Sendable (Int, [UInt8]) -> Void
  ) {
    precondition(target.hasPrefix("/v1/node/groups"), "the consensus port serves only the group operations")
    sendAnswered(
      PeerRequest(
        method: method, host: peer.endpoint.host, port: peer.endpoint.port, target: target,
        headers: answeredHereHeaders, body: body, timeoutMs: relayTimeoutMs), completion)
  }

  /// Runs a node-local request on `peer` through its client API (client URL looked up over its
  /// consensus port), and hands back the status it answered (0: unreachable).
  func nodeLocal(
    _ method: String, on peer: Peer, target: String, body: [UInt8], completion: @escaping @Sendable (Int, [UInt8]) -> Void
  ) {
    clientURL(of: peer) { [self] url in
      guard let url else { return completion(0, []) }
      sendAnswered(
        PeerRequest(method: method, url: url + target, headers: answeredHereHeaders, body: body, timeoutMs: relayTimeoutMs),
        completion)
    }
  }

  /// At the hop limit: the receiver answers for itself and never forwards or locates.
  private var answeredHereHeaders: [(name: String, value: String)] {
    [("Content-Type", HTTPResponse.jsonContentType), ("X-Caucus-Hops", String(LeaderForwarder.hopsMax))]
  }

  /// Sends `request` and hands back the status and body, or status 0 when there is no answer.
  private func sendAnswered(_ request: PeerRequest, _ completion: @escaping @Sendable (Int, [UInt8]) -> Void) {
    client.send(request) { result in
      switch result {
      case .success(let response): completion(response.status, response.body)
      case .failure: completion(0, [])
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

/// Finds the leader of a group this node does not host: its peers from the directory's record,
/// then the leader among them (each peer's `GET /v1/groups/{group}?forward=none`). A group the
/// directory has no record of (created before the directory existed) is looked for among the
/// directory's members, as before.
struct GroupLocator: Sendable {
  let forwarder: LeaderForwarder
  let directory: ClusterDirectory

  func locate(_ group: GroupID, _ completion: @escaping @Sendable (GroupLocation) -> Void) {
    directory.group(group) { [self] record in
      let local = forwarder.localNode
      // The record's peers first; then every other member, because a record read during a
      // membership change (or while the directory has no leader) can miss the peers that host
      // the group now.
      let recorded = record?.peers ?? []
      let others = directory.knownMembers.filter { member in !recorded.contains { $0.node == member.node } }
      askForLeader(group, among: (recorded + others).filter { $0.node != local }, local: local, completion)
    }
  }

  private func askForLeader(
    _ group: GroupID, among candidates: [Peer], local: NodeID, _ completion: @escaping @Sendable (GroupLocation) -> Void
  ) {
    guard !candidates.isEmpty else { return completion(.nowhere) }
    // `unsure`: a peer that did not answer, or not with "hosted" or "not hosted"; the group may be
    // there, so the answer is "no leader" (retry), never "nowhere" (a 404 says it does not exist).
    let answers = Locked<(remaining: Int, hosted: Bool, unsure: Bool, done: Bool)>((candidates.count, false, false, false))
    for candidate in candidates {
      forwarder.nodeLocal("GET", on: candidate, target: "/v1/groups/\(group)?forward=none", body: []) { status, body in
        // A peer hosting the group names its leader; the first such answer decides.
        let document = status == 200 ? try? JSONParser.parse(body) : nil
        let leaderID = document?["leader"]?.unsignedIntegerValue
        // A peer's stale view can name this node, which does not host the group: not a leader.
        let leader = (document?["peers"]?.arrayValue ?? []).lazy.compactMap(DirectoryRecords.decodePeer).first {
          $0.node.rawValue == leaderID && $0.node != local
        }
        let notHosted = saysGroupNotHosted(status: status, body: body)
        let decided: GroupLocation? = answers.withLock { state in
          state.remaining -= 1
          state.hosted = state.hosted || document != nil
          state.unsure = state.unsure || (document == nil && !notHosted)
          guard !state.done else { return nil }
          if let leader {
            state.done = true
            return .leader(leader)
          }
          guard state.remaining == 0 else { return nil }
          state.done = true
          return state.hosted || state.unsure ? .noLeader : .nowhere
        }
        if let decided { completion(decided) }
      }
    }
  }
}
