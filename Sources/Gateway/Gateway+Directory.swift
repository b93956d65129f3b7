import Consensus
import Directory
import HTTPServer
import JSON
import Logging
import PeerClient

/// A peer as a request names it: complete, or by node id only (the endpoint comes from the directory).
enum PeerSpecification {
  case peer(Peer)
  case id(NodeID)

  var node: NodeID {
    switch self {
    case .peer(let peer): return peer.node
    case .id(let node): return node
    }
  }
}

/// The gateway's uses of the cluster directory (Directory.swift): registering nodes, naming peers
/// by id, recording where groups live, and listing the cluster's nodes.
extension Gateway {
  /// `POST /v1/cluster/nodes` `{"id","clientURL","consensusEndpoint"}`: registers a node (a
  /// `--join`) and answers the directory's nodes and members. The body is checked in full before
  /// anything is read or written. With a cluster secret only a proven node gets here
  /// (`Route.Name.needsPeerProof`, checked with every other admission in `AccessPolicy.admit`).
  func registerNode(_ exchange: Exchange) throws(GatewayError) {
    let body = try exchange.jsonBody()
    let node: DirectoryNode
    do { node = try DirectoryRecords.decodeNode(body) } catch { throw .badRequest(error.description) }
    guard let directory = configuration.directory else {
      throw .badRequest("this node is not part of a cluster (it runs without --cluster or --join); nodes cannot join it")
    }
    directory.register(node) { result in
      switch result {
      case .failure(.nodeAlreadyExists(let existing)):
        var writer = JSONWriter()
        writer.beginObject()
        writer.member("error", "node_already_exists")
        writer.member(
          "message",
          "node \(existing.id) is already registered at \(existing.consensusEndpoint), not \(node.consensusEndpoint); give this node another --node-id")
        writer.member("id", existing.id.rawValue)
        writer.member("consensusEndpoint", existing.consensusEndpoint.description)
        writer.endObject()
        exchange.respond(json: writer.bytes, status: 409)
      case .failure(.tooManyNodes(let count)):
        exchange.fail(.badRequest(DirectoryError.tooManyNodes(count).description))
      case .failure(let error):
        exchange.fail(.consensus(.storage("\(error); retry the request")))
      case .success(let nodes):
        var writer = JSONWriter()
        writer.beginObject()
        writer.key("nodes")
        writer.beginArray()
        for node in nodes { DirectoryRecords.write(node, to: &writer) }
        writer.endArray()
        writer.key("members")
        DirectoryRecords.write(directory.knownMembers, to: &writer)
        writer.endObject()
        exchange.respond(json: writer.bytes)
      }
    }
  }

  /// Peers named by id get their endpoints from the directory (`nodes/<id>`), so a group may
  /// include a joined node; this node and the static members are known without asking when the
  /// directory does not answer.
  func resolvePeers(
    _ specifications: [PeerSpecification], _ completion: @escaping @Sendable (Result<[Peer], GatewayError>) -> Void
  ) {
    resolvePeers(specifications[...], resolved: [], completion)
  }

  private func resolvePeers(
    _ remaining: ArraySlice<PeerSpecification>, resolved: [Peer],
    _ completion: @escaping @Sendable (Result<[Peer], GatewayError>) -> Void
  ) {
    guard let first = remaining.first else { return completion(.success(resolved)) }
    let continueWith: @Sendable (Peer) -> Void = { [self] peer in resolvePeers(remaining.dropFirst(), resolved: resolved + [peer], completion) }
    if case .peer(let peer) = first { return continueWith(peer) }
    let node = first.node
    if node == engine.localPeer.node { return continueWith(engine.localPeer) }
    guard let directory = configuration.directory else {
      guard let member = knownPeer(node) else { return completion(.failure(.badRequest(unknownNodeMessage(node)))) }
      return continueWith(member)
    }
    directory.node(node) { [self] record in
      guard let peer = record?.peer ?? knownPeer(node) else { return completion(.failure(.badRequest(unknownNodeMessage(node)))) }
      continueWith(peer)
    }
  }

  private func unknownNodeMessage(_ node: NodeID) -> String {
    "node \(node) is not in the cluster directory; start it with --join, or give {\"id\", \"endpoint\"}"
  }

  /// Records `groups/<group>`'s new placement after a membership change, then answers. A record
  /// that cannot be written now is retried in the background (latest placement wins): the change
  /// is done, and until it is recorded a node outside the group may first ask a former peer.
  func recordInDirectory(_ group: GroupID, _ peers: [Peer], then answer: @escaping @Sendable () -> Void) {
    guard let directory = configuration.directory else { return answer() }
    directory.record(DirectoryGroup(id: group, peers: peers)) { [logger] result in
      if case .failure(.invalidRecord(let reason)) = result {
        logger.error("the group's placement cannot be recorded", metadata: ["group": "\(group)", "reason": "\(reason)"])
      }
      answer()
    }
  }

  /// Removes `groups/<group>` after the group's replicas were deleted, if it still has `revision`
  /// (the one found before deleting them), then answers. A removal that cannot be done now is
  /// retried in the background: until then the record only sends a lookup to peers that answer
  /// "not hosted", and a new creation of the id makes the record its own (a new revision), which
  /// the pending removal then leaves alone.
  func forgetInDirectory(_ group: GroupID, ifRevision revision: UInt64, then answer: @escaping @Sendable () -> Void) {
    guard let directory = configuration.directory else { return answer() }
    directory.removeRecord(group, ifRevision: revision) { _ in answer() }
  }

  /// The group's peers: this node's replica's when it hosts one, else the directory's record,
  /// else none known.
  func placement(of group: GroupID, _ completion: @escaping @Sendable ([Peer]) -> Void) {
    if let status = engine.status(group) { return completion(status.peers.map(\.peer)) }
    guard let directory = configuration.directory else { return completion([]) }
    directory.group(group) { record in completion(record?.peers ?? []) }
  }

  /// Every node of the cluster: the directory's nodes, with the directory's members and this node
  /// added when missing (not registered yet, or the directory is unreachable), by id.
  func clusterNodes(_ completion: @escaping @Sendable ([Peer]) -> Void) {
    let fallback = (configuration.directory?.knownMembers ?? configuration.members) + [engine.localPeer]
    guard let directory = configuration.directory else { return completion(Gateway.merge([], fallback)) }
    directory.nodes { nodes in completion(Gateway.merge((nodes ?? []).map(\.peer), fallback)) }
  }

  /// Every group the directory records (none when it cannot be read, or on a single node).
  func recordedGroups(_ completion: @escaping @Sendable ([DirectoryGroup]) -> Void) {
    guard let directory = configuration.directory else { return completion([]) }
    directory.groups { completion($0 ?? []) }
  }

  /// The summary of a recorded group none of whose peers answered: `"role": "unknown"`.
  func unansweredSummary(_ record: DirectoryGroup) -> JSONValue {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("id", record.id.description)
    writer.member("protocol", engine.protocolName)
    writer.member("role", "unknown")
    writer.key("leader")
    writer.null()
    writer.member("term", 0)
    writer.member("commitIndex", 0)
    writer.member("appliedIndex", 0)
    writer.key("peers")
    DirectoryRecords.write(record.peers, to: &writer)
    writer.endObject()
    return (try? JSONParser.parse(writer.bytes)) ?? .null
  }

  private static func merge(_ first: [Peer], _ second: [Peer]) -> [Peer] {
    var byNode: [NodeID: Peer] = [:]
    for peer in first + second where byNode[peer.node] == nil { byNode[peer.node] = peer }
    return byNode.values.sorted { $0.node < $1.node }
  }
}
