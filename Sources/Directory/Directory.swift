import Consensus
import HTTPServer
import JSON
import KeyValueStore
import Logging
import PeerClient
import Platform
import Synchronization

// The cluster directory: the config-node group `PartitionRegion-0` (IoTDB's ConfigNode group, over
// `config_node_group_address_list`), a Raft group with the built-in key-value state machine whose
// entries describe the cluster:
//   nodes/<id>        → {"id","clientURL","consensusEndpoint"}
//   groups/<GroupID>  → {"id","peers":[{"id","endpoint"}],"deleting"?:true}
// Everything that reads or writes those records goes through this module; the gateway uses it
// to route requests for groups it does not host, to reserve a group's placement before creating
// it, to mark it before deleting it, and to register nodes.

/// How the directory reaches other nodes (the gateway's `LeaderForwarder`, over libcurl): it
/// sends requests to members' client APIs when this node cannot answer from its own replica,
/// and learns client URLs as records name them.
public protocol DirectoryTransport: Sendable {
  /// Records `node`'s client URL as the directory names it.
  func remember(clientURL: String, of node: NodeID)
  /// `peer`'s client URL, or nil when it cannot be learned.
  func clientURL(of peer: Peer, completion: @escaping @Sendable (String?) -> Void)
  /// What the node at a consensus endpoint says of itself (`GET /v1/node` on its consensus
  /// port), or nil when it does not answer with a node document.
  func describe(_ endpoint: Endpoint, completion: @escaping @Sendable (DirectoryNode?) -> Void)
  /// Sends one request to another node.
  func send(_ request: PeerRequest, completion: @escaping @Sendable (Result<PeerResponse, PeerError>) -> Void)
}

/// `404 group_not_found`: the node that answered does not host the group (as opposed to a
/// missing key, or no answer at all).
public func saysGroupNotHosted(status: Int, body: [UInt8]) -> Bool {
  status == 404 && (try? JSONParser.parse(body))?["error"]?.stringValue == "group_not_found"
}

/// A node as the directory records it (and as `GET /v1/node` on a consensus port describes it).
public struct DirectoryNode: Equatable, Sendable {
  public let id: NodeID
  /// `http://host:port` of the node's client API (`https://` when it speaks TLS).
  public let clientURL: String
  public let consensusEndpoint: Endpoint

  public init(id: NodeID, clientURL: String, consensusEndpoint: Endpoint) {
    precondition(DirectoryRecords.isClientURL(clientURL), "a node's client URL is http(s)://host:port")
    self.id = id
    self.clientURL = clientURL
    self.consensusEndpoint = consensusEndpoint
  }

  public var peer: Peer { Peer(node: id, endpoint: consensusEndpoint) }
}

/// A group as the directory records it: where its replicas live.
public struct DirectoryGroup: Equatable, Sendable {
  public let id: GroupID
  public let peers: [Peer]
  /// A `DELETE /v1/groups/{group}` marked the record before deleting any replica and has not
  /// removed it yet (it failed on some peer, or is still running): replicas of the group may
  /// remain on some of `peers`, and no creation may put fresh replicas beside them.
  public let deleting: Bool

  public init(id: GroupID, peers: [Peer], deleting: Bool = false) {
    precondition(!peers.isEmpty, "a group has at least one peer")
    precondition(Set(peers.map(\.node)).count == peers.count, "a group names each node once")
    self.id = id
    self.peers = peers
    self.deleting = deleting
  }
}

public struct DirectoryRecordError: Error, Equatable, CustomStringConvertible {
  public let description: String
}

/// The directory's keys and the JSON codec of its records. A record is checked when it is built
/// (the types' preconditions) and again when it is read back (the decoders), so a damaged or
/// hand-written entry is refused with what was expected, never half-used.
public enum DirectoryRecords {
  public static let nodesPrefix = "nodes/"
  public static let groupsPrefix = "groups/"
  /// A client URL is a short `http://host:port`; anything longer is not one.
  public static let clientURLBytesMax = 2048
  /// Peers one group record may name: Raft groups are small, and the record is read on every
  /// routing miss.
  public static let groupPeersMax = 16

  public static func key(node: NodeID) -> String { nodesPrefix + node.description }
  public static func key(group: GroupID) -> String { groupsPrefix + group.description }

  /// `http://` or `https://` (a node with TLS) followed by a printable, space-free authority (and
  /// optional path), no trailing slash.
  public static func isClientURL(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    let scheme = text.hasPrefix("http://") ? 7 : text.hasPrefix("https://") ? 8 : 0
    return scheme > 0 && bytes.count > scheme && bytes.count <= clientURLBytesMax && bytes.last != UInt8(ascii: "/")
      && bytes.allSatisfy { (0x21...0x7E).contains($0) }
  }

  public static func encode(_ node: DirectoryNode) -> [UInt8] {
    var writer = JSONWriter()
    write(node, to: &writer)
    return writer.bytes
  }

  public static func write(_ node: DirectoryNode, to writer: inout JSONWriter) {
    writer.beginObject()
    writer.member("id", node.id.rawValue)
    writer.member("clientURL", node.clientURL)
    writer.member("consensusEndpoint", node.consensusEndpoint.description)
    writer.endObject()
  }

  /// Throws for a group of more than `groupPeersMax` peers, which no record may name (the decoder
  /// refuses it): a caller answers that as an error, never by crashing the node.
  public static func encode(_ group: DirectoryGroup) throws(DirectoryRecordError) -> [UInt8] {
    guard group.peers.count <= groupPeersMax else {
      throw DirectoryRecordError(
        description: "group \(group.id) has \(group.peers.count) peers; a directory record names at most \(groupPeersMax)")
    }
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("id", group.id.description)
    writer.key("peers")
    write(group.peers, to: &writer)
    if group.deleting { writer.member("deleting", true) }
    writer.endObject()
    return writer.bytes
  }

  /// `[{"id","endpoint"}, …]`, as group records and the `"members"` of a registration answer write peers.
  public static func write(_ peers: [Peer], to writer: inout JSONWriter) {
    writer.beginArray()
    for peer in peers {
      writer.beginObject()
      writer.member("id", peer.node.rawValue)
      writer.member("endpoint", peer.endpoint.description)
      writer.endObject()
    }
    writer.endArray()
  }

  public static func decodeNode(_ bytes: [UInt8]) throws(DirectoryRecordError) -> DirectoryNode {
    try decodeNode(try parse(bytes))
  }

  /// A node record, or the body of `POST /v1/cluster/nodes`; each field is checked on its own so
  /// the error names the one that is wrong.
  public static func decodeNode(_ json: JSONValue) throws(DirectoryRecordError) -> DirectoryNode {
    guard json.isObject else { throw DirectoryRecordError(description: "a node is a JSON object {\"id\",\"clientURL\",\"consensusEndpoint\"}") }
    guard let id = json["id"]?.unsignedIntegerValue, id > 0 else {
      throw DirectoryRecordError(description: "a node needs \"id\": a positive integer")
    }
    guard let url = json["clientURL"]?.stringValue else {
      throw DirectoryRecordError(description: "a node needs \"clientURL\": \"http://host:port\"")
    }
    guard isClientURL(url) else {
      throw DirectoryRecordError(description: "\"clientURL\" must look like http://host:port or https://host:port (no trailing slash), not '\(url.prefix(200))'")
    }
    guard let text = json["consensusEndpoint"]?.stringValue else {
      throw DirectoryRecordError(description: "a node needs \"consensusEndpoint\": \"host:port\"")
    }
    guard let endpoint = Endpoint(parsing: text) else {
      throw DirectoryRecordError(description: "\"consensusEndpoint\" must be host:port, not '\(text.prefix(200))'")
    }
    return DirectoryNode(id: NodeID(id), clientURL: url, consensusEndpoint: endpoint)
  }

  public static func decodeGroup(_ bytes: [UInt8]) throws(DirectoryRecordError) -> DirectoryGroup {
    let json = try parse(bytes)
    guard let text = json["id"]?.stringValue, let id = GroupID(text) else {
      throw DirectoryRecordError(description: "a group record needs \"id\": a group id")
    }
    guard let items = json["peers"]?.arrayValue, !items.isEmpty, items.count <= groupPeersMax else {
      throw DirectoryRecordError(description: "a group record needs \"peers\": 1 to \(groupPeersMax) peers")
    }
    var peers: [Peer] = []
    for item in items {
      guard let node = item["id"]?.unsignedIntegerValue, node > 0 else {
        throw DirectoryRecordError(description: "a peer needs \"id\": a positive integer")
      }
      guard let text = item["endpoint"]?.stringValue, let endpoint = Endpoint(parsing: text) else {
        throw DirectoryRecordError(description: "a peer needs \"endpoint\": host:port")
      }
      guard !peers.contains(where: { $0.node.rawValue == node }) else {
        throw DirectoryRecordError(description: "a group record names node \(node) twice")
      }
      peers.append(Peer(node: NodeID(node), endpoint: endpoint))
    }
    var deleting = false
    if let marker = json["deleting"] {
      guard case .bool(let value) = marker else { throw DirectoryRecordError(description: "a group record's \"deleting\" is true or false") }
      deleting = value
    }
    return DirectoryGroup(id: id, peers: peers, deleting: deleting)
  }

  /// `"members"` of the `POST /v1/cluster/nodes` answer: the directory group's peers.
  static func decodePeers(_ json: JSONValue?) -> [Peer] {
    (json?.arrayValue ?? []).compactMap(decodePeer)
  }

  /// One `{"id","endpoint"}` as `write(_:to:)` writes it (and a group's status lists its peers),
  /// or nil when it is not one.
  public static func decodePeer(_ item: JSONValue) -> Peer? {
    guard let node = item["id"]?.unsignedIntegerValue, node > 0, let text = item["endpoint"]?.stringValue,
      let endpoint = Endpoint(parsing: text)
    else { return nil }
    return Peer(node: NodeID(node), endpoint: endpoint)
  }

  private static func parse(_ bytes: [UInt8]) throws(DirectoryRecordError) -> JSONValue {
    do { return try JSONParser.parse(bytes) } catch { throw DirectoryRecordError(description: "the record is not JSON: \(error)") }
  }
}

/// Why a directory operation did not happen.
public enum DirectoryError: Error, Equatable, CustomStringConvertible {
  /// No member of the directory group answered usefully (no leader, unreachable, timeout).
  case unavailable(String)
  /// A write's precondition did not hold (someone else wrote the key first).
  case preconditionFailed
  /// `POST /v1/cluster/nodes`: the id is taken by a node at another consensus endpoint.
  case nodeAlreadyExists(DirectoryNode)
  /// The record cannot be written as it is (a group of more than `groupPeersMax` peers).
  case invalidRecord(String)
  /// `POST /v1/cluster/nodes`: `registeredNodesMax` nodes are registered already.
  case tooManyNodes(Int)

  public var description: String {
    switch self {
    case .unavailable(let reason): return "the cluster directory is unavailable: \(reason)"
    case .preconditionFailed: return "the directory entry changed concurrently"
    case .nodeAlreadyExists(let node): return "node \(node.id) is already registered at \(node.consensusEndpoint)"
    case .invalidRecord(let reason): return reason
    case .tooManyNodes(let count):
      return "the cluster has \(count) registered nodes, the most it takes (\(ClusterDirectory.registeredNodesMax)); delete a departed node's record (DELETE /v1/groups/PartitionRegion-0/kv/nodes/<id>) first"
    }
  }
}

/// What `ClusterDirectory.reserve` found for a group about to be created.
public enum DirectoryReservation: Equatable, Sendable {
  /// The record was absent and is now written: this request creates the group.
  case reserved
  /// A record with the same peers exists: a retried creation (or an identical one racing it).
  /// Every replica of the group on those peers is this placement's (a DELETE marks the record
  /// before it deletes any), so the peers that lack one may get a fresh one.
  case recordedWithTheSamePeers
  /// A record names other peers: the group exists elsewhere, and nothing may be created.
  case recordedWithOtherPeers(DirectoryGroup)
  /// The record is marked by a DELETE that has not finished: replicas of an earlier life of the
  /// group may remain, and nothing may be created beside them until the DELETE is done.
  case deletionUnfinished(DirectoryGroup)

  public init(existing: DirectoryGroup, wanted: DirectoryGroup) {
    precondition(existing.id == wanted.id, "a reservation compares records of one group")
    precondition(!wanted.deleting, "a creation never asks for a record marked for deletion")
    if existing.deleting {
      self = .deletionUnfinished(existing)
    } else {
      self = Set(existing.peers) == Set(wanted.peers) ? .recordedWithTheSamePeers : .recordedWithOtherPeers(existing)
    }
  }
}

/// A background write of one directory key.
enum DirectoryWrite: Equatable, Sendable {
  case put([UInt8])
  /// Removes the key only while it still has `ifRevision` (the record a DELETE of the group
  /// found): a record written since belongs to a newer creation and is kept.
  case delete(ifRevision: UInt64)
}

/// Directory writes being retried in the background, at most one per key: a newer write of a key
/// replaces the pending one (latest wins; a removal supersedes a pending put), so a retry can
/// never write an old placement over a newer one, nor bring back a removed record. Each key's
/// writes run in one chain at a time, so they land in order. A value type that says what to do;
/// `ClusterDirectory.writeLatest` runs it.
struct PendingDirectoryWrites<Write: Sendable>: Sendable {
  enum Submitted: Equatable {
    /// No chain runs for the key: the caller starts one with this id.
    case start(chain: UInt64)
    /// The key's running chain writes this next, instead of what it had.
    case replaced
  }

  private struct Entry: Sendable {
    var write: Write
    var generation: UInt64
    let chain: UInt64
  }

  let keysMax: Int
  private var entries: [String: Entry] = [:]
  /// The pending keys, oldest chain first; the same keys as `entries`.
  private var order: [String] = []
  /// Numbers writes and chains; every submit takes the next.
  private var counter: UInt64 = 0

  init(keysMax: Int) {
    precondition(keysMax > 0, "at least one key may wait")
    self.keysMax = keysMax
  }

  var count: Int { entries.count }
  func isPending(_ key: String) -> Bool { entries[key] != nil }

  /// Takes `write` as the latest of `key`; `dropped` is the oldest key given up to stay within
  /// `keysMax` (its chain finds nothing more to write).
  mutating func submit(_ key: String, _ write: Write) -> (submitted: Submitted, dropped: String?) {
    counter += 1
    if var entry = entries[key] {
      entry.write = write
      entry.generation = counter
      entries[key] = entry
      return (.replaced, nil)
    }
    var dropped: String?
    if entries.count >= keysMax {
      let oldest = order.removeFirst()
      entries[oldest] = nil
      dropped = oldest
    }
    entries[key] = Entry(write: write, generation: counter, chain: counter)
    order.append(key)
    precondition(entries.count <= keysMax, "pending keys stay within keysMax")
    precondition(order.count == entries.count, "the order lists every pending key once")
    return (.start(chain: counter), dropped)
  }

  /// What chain `chain` writes next for `key`, and its generation; nil when the chain is over
  /// (its key was written or dropped, and maybe owned by a newer chain since).
  func next(_ key: String, chain: UInt64) -> (write: Write, generation: UInt64)? {
    guard let entry = entries[key], entry.chain == chain else { return nil }
    return (entry.write, entry.generation)
  }

  /// Chain `chain` wrote `generation` of `key`. Answers whether the chain is done: false when a
  /// newer write arrived meanwhile, which the chain writes next.
  mutating func written(_ key: String, chain: UInt64, generation: UInt64) -> Bool {
    guard let entry = entries[key], entry.chain == chain else { return true }
    guard entry.generation == generation else { return false }
    precondition(entry.generation <= counter, "a generation was handed out by submit")
    entries[key] = nil
    order.removeAll { $0 == key }  // at most keysMax keys
    return true
  }
}

/// One directory entry as read.
struct DirectoryEntry: Sendable {
  let key: String
  let value: [UInt8]
  let revision: UInt64
}

/// Reads and writes the directory for this node: locally when it hosts `PartitionRegion-0` (a
/// stale read for routing; a write when it leads), otherwise over HTTP through a member's client
/// API, which forwards to the directory's leader. Keeps a short-lived cache of the records it
/// read, and runs the background registrations (a member's own records, a `--join`).
public final class ClusterDirectory: Sendable {
  public static let group = GroupID(.partitionRegion, 0)
  /// How long one HTTP request to a member may take: it may wait for an election there.
  public static let requestTimeoutMs = 3_000
  /// How long a cached record is trusted: group placement changes rarely, and a stale entry only
  /// costs a wrong first try, which falls back to asking again.
  public static let cacheTTLMs: UInt64 = 2_000
  /// Records the cache holds at most; past it the cache is emptied (every entry is cheap to re-read).
  public static let cacheEntriesMax = 1024
  /// Background retries wait this long after the first failure, doubling up to `retryMsMax`.
  public static let retryMsMin: UInt32 = 100
  public static let retryMsMax: UInt32 = 5_000
  /// Nodes a directory listing returns at most (one page of the key-value listing).
  public static let nodesMax = 1_000
  /// Nodes `POST /v1/cluster/nodes` registers at most: every `GET /v1/cluster` asks each of them,
  /// and every routing miss may read their records. Checked against a (stale) listing before the
  /// write, so concurrent registrations can pass it by a few; the listing's `nodesMax` is well
  /// above it, so every registered node is still listed.
  public static let registeredNodesMax = 256
  /// Keys with a background write waiting to be retried, at most. Each is one small record, and
  /// while the directory is down every placement change of a group and every node's start adds
  /// one; past the limit the oldest is given up and logged (its record is written again on the
  /// next start of that node, or the next membership change of that group).
  public static let pendingWriteKeysMax = 256

  let engine: any ConsensusEngine
  let transport: (any DirectoryTransport)?
  /// This node, as it registers itself.
  public let localNode: DirectoryNode
  private let logger: Logger
  /// The directory group's members: the `--cluster` list, or what a `--join` learned.
  private let members: Locked<[Peer]>
  private let cache = Locked<[String: (entry: DirectoryEntry, expiresAtMs: UInt64)]>([:])
  private let timer = TimerWheel(name: "caucus-directory")
  private let stopped = Atomic<Bool>(false)
  private let pendingWrites = Locked(PendingDirectoryWrites<DirectoryWrite>(keysMax: ClusterDirectory.pendingWriteKeysMax))

  public init(
    engine: any ConsensusEngine, transport: (any DirectoryTransport)?, members: [Peer], localNode: DirectoryNode, logger: Logger
  ) {
    precondition(localNode.id == engine.localPeer.node, "the directory registers the engine's own node")
    self.engine = engine
    self.transport = transport
    self.members = Locked(members)
    self.localNode = localNode
    self.logger = logger
  }

  /// Stops background registrations; call before the engine stops.
  public func stop() {
    stopped.store(true, ordering: .releasing)
    timer.stop()
  }

  /// The directory group's members as this node knows them: its own replica's peers when it hosts
  /// one (membership may have changed since start), else the static or learned list.
  public var knownMembers: [Peer] {
    if let status = engine.status(ClusterDirectory.group) { return status.peers.map(\.peer) }
    return members.withLock { $0 }
  }

  var hostsDirectory: Bool { engine.status(ClusterDirectory.group) != nil }

  // MARK: Records

  /// Every registered node, or nil when the directory cannot be read.
  public func nodes(_ completion: @escaping @Sendable ([DirectoryNode]?) -> Void) {
    list(prefix: DirectoryRecords.nodesPrefix) { [self] result in
      guard case .success(let entries) = result else { return completion(nil) }
      let nodes = entries.compactMap { entry -> DirectoryNode? in
        guard let node = try? DirectoryRecords.decodeNode(entry.value) else {
          logger.warning("ignoring a directory entry that is not a node record", metadata: ["key": "\(entry.key)"])
          return nil
        }
        transport?.remember(clientURL: node.clientURL, of: node.id)
        return node
      }
      completion(nodes)
    }
  }

  /// Every recorded group, or nil when the directory cannot be read.
  public func groups(_ completion: @escaping @Sendable ([DirectoryGroup]?) -> Void) {
    list(prefix: DirectoryRecords.groupsPrefix) { [self] result in
      guard case .success(let entries) = result else { return completion(nil) }
      completion(entries.compactMap { entry in
        guard let group = try? DirectoryRecords.decodeGroup(entry.value) else {
          logger.warning("ignoring a directory entry that is not a group record", metadata: ["key": "\(entry.key)"])
          return nil
        }
        return group
      })
    }
  }

  /// `nodes/<id>`, from the cache or a (stale, when local) read; nil when absent or unreadable.
  public func node(_ id: NodeID, _ completion: @escaping @Sendable (DirectoryNode?) -> Void) {
    cachedGet(DirectoryRecords.key(node: id)) { [transport] entry in
      let node = entry.flatMap { try? DirectoryRecords.decodeNode($0.value) }
      if let node { transport?.remember(clientURL: node.clientURL, of: node.id) }
      completion(node)
    }
  }

  /// `groups/<id>`, from the cache or a (stale, when local) read; nil when absent or unreadable.
  public func group(_ id: GroupID, _ completion: @escaping @Sendable (DirectoryGroup?) -> Void) {
    cachedGet(DirectoryRecords.key(group: id)) { entry in
      completion(entry.flatMap { try? DirectoryRecords.decodeGroup($0.value) })
    }
  }

  /// Writes `groups/<id>`: the group's placement changed (a membership change). The latest
  /// placement wins: the write goes through `writeLatest`, so a retry of an older one never lands
  /// after it. `completion` has the first try's result; a failed write keeps being retried.
  public func record(_ group: DirectoryGroup, _ completion: @escaping @Sendable (Result<Void, DirectoryError>) -> Void) {
    let value: [UInt8]
    do { value = try DirectoryRecords.encode(group) } catch { return completion(.failure(.invalidRecord(error.description))) }
    writeLatest(DirectoryRecords.key(group: group.id), .put(value), completion)
  }

  /// Removes `groups/<id>` (after the group's replicas were deleted) if it still has `revision`,
  /// the one the DELETE found; supersedes a pending write of the record, and is retried like one.
  public func removeRecord(
    _ group: GroupID, ifRevision revision: UInt64, _ completion: @escaping @Sendable (Result<Void, DirectoryError>) -> Void
  ) {
    writeLatest(DirectoryRecords.key(group: group), .delete(ifRevision: revision), completion)
  }

  /// The revision of `groups/<id>` as the directory's leader has it: nil when there is no record.
  public func recordRevision(_ id: GroupID, _ completion: @escaping @Sendable (Result<UInt64?, DirectoryError>) -> Void) {
    get(DirectoryRecords.key(group: id), local: false) { result in completion(result.map { $0?.revision }) }
  }

  /// Marks `groups/<id>` as being deleted (`"deleting": true`) before a `DELETE /v1/groups/{group}`
  /// deletes any replica, and answers the marked record's revision (nil when there is no record),
  /// the one that DELETE removes once every replica is gone. Until then the record says that
  /// replicas of the group may remain on its peers, and a creation of the id is refused instead
  /// of putting fresh replicas beside them (see `DirectoryReservation.deletionUnfinished`). A
  /// record marked already (an earlier DELETE failed) is marked again, which gives it a revision
  /// of this DELETE's own. A damaged record is not marked, only its revision is answered.
  public func markDeleting(_ id: GroupID, _ completion: @escaping @Sendable (Result<UInt64?, DirectoryError>) -> Void) {
    let key = DirectoryRecords.key(group: id)
    get(key, local: false) { [self] result in
      switch result {
      case .failure(let error): return completion(.failure(error))
      case .success(nil): return completion(.success(nil))
      case .success(let entry?):
        // A damaged record (or one naming another group) names no peers to keep: it is removed
        // as found, unmarked, as before there were marks.
        guard let found = try? DirectoryRecords.decodeGroup(entry.value), found.id == id else {
          return completion(.success(entry.revision))
        }
        let marked: [UInt8]
        do { marked = try DirectoryRecords.encode(DirectoryGroup(id: id, peers: found.peers, deleting: true)) } catch {
          return completion(.failure(.invalidRecord("\(error)")))
        }
        precondition((try? DirectoryRecords.decodeGroup(marked))?.deleting == true, "the marked record reads back as marked")
        forget(key)
        put(key, marked, precondition: .revisionEquals(entry.revision)) { [self] result in
          switch result {
          case .failure(.preconditionFailed): return completion(.failure(.unavailable("the record of \(id) changed meanwhile; retry")))
          case .failure(let error): return completion(.failure(error))
          case .success: break
          }
          // The write does not say the revision it made: read it back, and accept it only while
          // the record is still the marked one.
          get(key, local: false) { result in
            switch result {
            case .failure(let error): completion(.failure(error))
            case .success(let written?) where written.value == marked: completion(.success(written.revision))
            case .success: completion(.failure(.unavailable("the record of \(id) changed meanwhile; retry")))
            }
          }
        }
      }
    }
  }

  /// Writes `groups/<id>` again, unchanged but with a new revision, if it still has the peers of
  /// `group`: a creation that reuses a record left by an earlier attempt makes it its own, so a
  /// pending removal by an earlier DELETE (conditional on the old revision) cannot take it away.
  public func renewRecord(_ group: DirectoryGroup, _ completion: @escaping @Sendable (Result<Void, DirectoryError>) -> Void) {
    let key = DirectoryRecords.key(group: group.id)
    get(key, local: false) { [self] result in
      switch result {
      case .failure(let error): return completion(.failure(error))
      case .success(nil): return completion(.failure(.unavailable("the record of \(group.id) disappeared meanwhile; retry")))
      case .success(let entry?):
        guard let recorded = try? DirectoryRecords.decodeGroup(entry.value), !recorded.deleting,
          Set(recorded.peers) == Set(group.peers)
        else {
          return completion(.failure(.unavailable("the record of \(group.id) changed meanwhile; retry")))
        }
        forget(key)
        put(key, entry.value, precondition: .revisionEquals(entry.revision)) { result in
          switch result {
          case .failure(.preconditionFailed): completion(.failure(.unavailable("the record of \(group.id) changed meanwhile; retry")))
          default: completion(result)
          }
        }
      }
    }
  }

  /// `groups/<id>` as the directory's leader has it (no cache, no stale read): nil when absent.
  public func recordedGroup(_ id: GroupID, _ completion: @escaping @Sendable (Result<DirectoryGroup?, DirectoryError>) -> Void) {
    get(DirectoryRecords.key(group: id), local: false) { result in
      switch result {
      case .failure(let error): completion(.failure(error))
      case .success(nil): completion(.success(nil))
      case .success(let entry?):
        do {
          let decoded = try DirectoryRecords.decodeGroup(entry.value)
          // The key names the group; a record naming another (written by hand) is damaged too.
          guard decoded.id == id else {
            return completion(
              .failure(.invalidRecord("the directory's record \(entry.key) names \(decoded.id); fix or delete the key")))
          }
          completion(.success(decoded))
        } catch {
          completion(.failure(.invalidRecord("the directory's record of \(id) is damaged (\(error)); fix or delete the key \(entry.key)")))
        }
      }
    }
  }

  /// Writes `groups/<id>` only if absent (a create-only put, the KV's `.absent` precondition), so
  /// of two creations of one id only one can go ahead. On a conflict the record is read back
  /// through the leader and compared by peers. Refused while a background write of the record is
  /// pending: the directory is about to change under it.
  public func reserve(_ group: DirectoryGroup, _ completion: @escaping @Sendable (Result<DirectoryReservation, DirectoryError>) -> Void) {
    let key = DirectoryRecords.key(group: group.id)
    guard !pendingWrites.withLock({ $0.isPending(key) }) else {
      return completion(.failure(.unavailable("an earlier change of \(group.id)'s record is still being written; retry")))
    }
    let value: [UInt8]
    do { value = try DirectoryRecords.encode(group) } catch { return completion(.failure(.invalidRecord(error.description))) }
    forget(key)
    put(key, value, precondition: .absent) { [self] result in
      switch result {
      case .success: completion(.success(.reserved))
      case .failure(.preconditionFailed):
        recordedGroup(group.id) { result in
          switch result {
          case .failure(let error): completion(.failure(error))
          // Removed again between the two requests: the caller's retry decides afresh.
          case .success(nil): completion(.failure(.unavailable("the record of \(group.id) changed concurrently; retry")))
          case .success(let existing?): completion(.success(DirectoryReservation(existing: existing, wanted: group)))
          }
        }
      case .failure(let error): completion(.failure(error))
      }
    }
  }

  /// `POST /v1/cluster/nodes`: records `node` unless its id is taken by a node at another consensus
  /// endpoint (a `--cluster` member or a registered node); answers the directory's nodes. The check
  /// and the write are one compare-and-set on the entry's revision, so two nodes racing for one
  /// id cannot both win.
  public func register(_ node: DirectoryNode, _ completion: @escaping @Sendable (Result<[DirectoryNode], DirectoryError>) -> Void) {
    if let member = knownMembers.first(where: { $0.node == node.id }), member.endpoint != node.consensusEndpoint {
      let existing = DirectoryNode(id: member.node, clientURL: node.clientURL, consensusEndpoint: member.endpoint)
      return completion(.failure(.nodeAlreadyExists(existing)))
    }
    let key = DirectoryRecords.key(node: node.id)
    get(key, local: false) { [self] result in
      switch result {
      case .failure(let error): completion(.failure(error))
      case .success(nil):
        // A new node: refused once registeredNodesMax are registered.
        nodes { [self] nodes in
          guard let nodes else { return completion(.failure(.unavailable("the node list could not be read"))) }
          guard nodes.count < ClusterDirectory.registeredNodesMax else {
            return completion(.failure(.tooManyNodes(nodes.count)))
          }
          write(node, precondition: .absent, completion)
        }
      case .success(let entry?):
        if let existing = try? DirectoryRecords.decodeNode(entry.value), existing.consensusEndpoint != node.consensusEndpoint {
          return completion(.failure(.nodeAlreadyExists(existing)))
        }
        write(node, precondition: .revisionEquals(entry.revision), completion)
      }
    }
  }

  /// `register`'s write of `nodes/<id>`, then the node list it answers.
  private func write(
    _ node: DirectoryNode, precondition: KVPrecondition, _ completion: @escaping @Sendable (Result<[DirectoryNode], DirectoryError>) -> Void
  ) {
    let key = DirectoryRecords.key(node: node.id)
    forget(key)
    put(key, DirectoryRecords.encode(node), precondition: precondition) { [self] result in
      if case .failure(let error) = result { return completion(.failure(error)) }
      nodes { nodes in
        guard let nodes else { return completion(.failure(.unavailable("the node list could not be read back"))) }
        completion(.success(nodes))
      }
    }
  }

  // MARK: Background registration

  /// A `--cluster` member's registration, on every start: `nodes/<self>`, and a record for each
  /// group created with the cluster (`PartitionRegion-0`, `DataRegion-0`) that this node hosts,
  /// written only if absent so a later change of placement is never overwritten. Retries with
  /// capped backoff until each is written; never blocks the caller. (This is also where records a
  /// full write queue gave up are written again: see `pendingWriteKeysMax`.)
  public func registerMember(recording groups: [GroupID]) {
    writeLatest(DirectoryRecords.key(node: localNode.id), .put(DirectoryRecords.encode(localNode))) { _ in }
    for id in groups {
      guard let status = engine.status(id) else { continue }
      let record = DirectoryGroup(id: id, peers: status.peers.map(\.peer))
      keepTrying("record \(id) in the cluster directory") { [self] done in
        reserve(record) { [self] result in
          switch result {
          case .success: done(nil)
          case .failure(.invalidRecord(let reason)):
            // Start-up refuses a --cluster list this large; a group grown past it is not recorded.
            logger.error("cannot record a group in the cluster directory", metadata: ["group": "\(id)", "reason": "\(reason)"])
            done(nil)
          case .failure(let error): done(error.description)
          }
        }
      }
    }
  }

  /// `--join ENDPOINT`: asks the member at that consensus endpoint for its client URL, registers
  /// this node there (`POST /v1/cluster/nodes`) and learns the directory's members from the
  /// answer. Retries with capped backoff until registered; `refused` is called (and retrying
  /// stops) when the cluster refuses this node for good (its id is taken).
  public func join(through endpoint: Endpoint, refused: @escaping @Sendable (String) -> Void) {
    guard let transport else { preconditionFailure("joining a cluster needs the node-to-node client") }
    keepTrying("join the cluster through \(endpoint)") { [self] done in
      transport.describe(endpoint) { [self] member in
        guard let member else { return done("\(endpoint) did not answer GET /v1/node on its consensus port") }
        transport.remember(clientURL: member.clientURL, of: member.id)
        let request = PeerRequest(
          method: "POST", url: member.clientURL + "/v1/cluster/nodes", headers: [("Content-Type", HTTPResponse.jsonContentType)],
          body: DirectoryRecords.encode(localNode), timeoutMs: ClusterDirectory.requestTimeoutMs * 2)
        transport.send(request) { [self] result in
          guard case .success(let response) = result else {
            return done("\(member.clientURL) did not answer POST /v1/cluster/nodes")
          }
          let json = try? JSONParser.parse(response.body)
          switch response.status {
          case 200:
            let learned = DirectoryRecords.decodePeers(json?["members"])
            guard !learned.isEmpty else { return done("\(member.clientURL) answered without the directory's members") }
            members.withLock { $0 = learned }
            logger.info(
              "joined the cluster", metadata: ["through": "\(member.clientURL)", "members": "\(learned.map(\.description))"])
            done(nil)
          case 409:
            let message = json?["message"]?.stringValue ?? "node \(localNode.id) is already registered elsewhere"
            refused(message)
            done(nil)
          default:
            done("\(member.clientURL) answered \(response.status): \(json?["message"]?.stringValue ?? "")")
          }
        }
      }
    }
  }

  /// Runs `operation` until it reports no failure (nil), waiting `retryMsMin` doubling to
  /// `retryMsMax` between tries; every failure is logged. Stops when the directory stops.
  /// Failed tries logged at info level before warnings start (about 1.5 s of retrying).
  static let quietRetries = 5

  private func keepTrying(
    _ what: String, attempt: Int = 1, _ operation: @escaping @Sendable (@escaping @Sendable (String?) -> Void) -> Void
  ) {
    guard !stopped.load(ordering: .acquiring) else { return }
    operation { [self] failure in
      guard let failure else { return }
      let delayMs = min(ClusterDirectory.retryMsMin << UInt32(min(attempt - 1, 16)), ClusterDirectory.retryMsMax)
      // The first tries fail as a matter of course while a new cluster elects its leaders.
      logger.log(
        level: attempt < ClusterDirectory.quietRetries ? .info : .warning,
        "cannot \(what) yet; will retry", metadata: ["reason": "\(failure)", "attempt": "\(attempt)", "retryInMs": "\(delayMs)"])
      timer.after(delayMs: delayMs) { [self] in keepTrying(what, attempt: attempt + 1, operation) }
    }
  }

  // MARK: Background writes

  /// Writes `write` to `key` now and, while it fails, again in the background, until it is
  /// written or a newer write of the key replaces it (`PendingDirectoryWrites`: one pending write
  /// per key, latest wins). `firstTry` gets the first try's result; a write queued behind a
  /// running chain reports that it was queued.
  private func writeLatest(
    _ key: String, _ write: DirectoryWrite, _ firstTry: @escaping @Sendable (Result<Void, DirectoryError>) -> Void
  ) {
    forget(key)
    let (submitted, dropped) = pendingWrites.withLock { $0.submit(key, write) }
    if let dropped {
      logger.warning(
        "too many directory records wait to be written; giving up the oldest (a node's own record is written again on its next start, a group's on its next membership change)",
        metadata: ["key": "\(dropped)", "pendingWriteKeysMax": "\(ClusterDirectory.pendingWriteKeysMax)"])
    }
    guard case .start(let chain) = submitted else {
      return firstTry(.failure(.unavailable("an earlier write of \(key) is being retried; this one replaces it")))
    }
    writePending(key, chain: chain, attempt: 1, firstTry)
  }

  /// One try of chain `chain` for `key`: writes the key's latest pending write; on success the key
  /// is done unless a newer write arrived meanwhile (written next, at once); on failure it waits
  /// `retryMsMin` doubling to `retryMsMax`. Stops when the directory stops or the chain lost its key.
  private func writePending(
    _ key: String, chain: UInt64, attempt: Int, _ firstTry: (@Sendable (Result<Void, DirectoryError>) -> Void)?
  ) {
    guard !stopped.load(ordering: .acquiring), let next = pendingWrites.withLock({ $0.next(key, chain: chain) }) else {
      firstTry?(.failure(.unavailable("the directory stopped, or a newer write of \(key) took over")))
      return
    }
    let written: @Sendable (Result<Void, DirectoryError>) -> Void = { [self] result in
      switch result {
      case .success:
        let done = pendingWrites.withLock { $0.written(key, chain: chain, generation: next.generation) }
        // After the bookkeeping: a caller told "written" may write the key again at once.
        firstTry?(result)
        if !done { writePending(key, chain: chain, attempt: 1, nil) }
      case .failure(let error):
        firstTry?(result)
        let delayMs = min(ClusterDirectory.retryMsMin << UInt32(min(attempt - 1, 16)), ClusterDirectory.retryMsMax)
        logger.log(
          level: attempt < ClusterDirectory.quietRetries ? .info : .warning,
          "cannot write a directory record yet; will retry",
          metadata: ["key": "\(key)", "reason": "\(error)", "attempt": "\(attempt)", "retryInMs": "\(delayMs)"])
        timer.after(delayMs: delayMs) { [self] in writePending(key, chain: chain, attempt: attempt + 1, nil) }
      }
    }
    switch next.write {
    case .put(let value): put(key, value, precondition: .none, written)
    case .delete(let revision):
      delete(key, ifRevision: revision) { result in
        // Written since the DELETE read it: a newer creation's record, not ours to remove.
        if case .failure(.preconditionFailed) = result { return written(.success(())) }
        written(result)
      }
    }
  }

  // MARK: Entries

  private func cachedGet(_ key: String, _ completion: @escaping @Sendable (DirectoryEntry?) -> Void) {
    let now = MonotonicClock.nowMilliseconds()
    if let cached = cache.withLock({ $0[key] }), cached.expiresAtMs > now { return completion(cached.entry) }
    get(key, local: true) { [cache] result in
      guard case .success(let entry?) = result else { return completion(nil) }
      cache.withLock { cache in
        if cache.count >= ClusterDirectory.cacheEntriesMax { cache.removeAll() }
        cache[key] = (entry, MonotonicClock.nowMilliseconds() + ClusterDirectory.cacheTTLMs)
      }
      completion(entry)
    }
  }

  private func forget(_ key: String) { _ = cache.withLock { $0.removeValue(forKey: key) } }

  /// Reads one entry: `local` reads this node's replica (stale) when it hosts one; otherwise the
  /// read is linearizable, through the leader.
  func get(_ key: String, local: Bool, _ completion: @escaping @Sendable (Result<DirectoryEntry?, DirectoryError>) -> Void) {
    readLocally(.get(key: Array(key.utf8)), stale: local) { [self] results in
      if let results {
        guard case .get(let entry) = results.first else { return completion(.failure(.unavailable("the state machine answered the wrong shape"))) }
        return completion(.success(entry.map { DirectoryEntry(key: key, value: $0.value, revision: $0.revision) }))
      }
      let consistency = local ? "&consistency=stale" : ""
      remote("GET", "/kv/\(key)?raw=true\(consistency)") { response in
        guard let response else { return completion(.failure(.unavailable("no directory member answered"))) }
        switch response.status {
        case 200:
          let revision = response.header("etag").flatMap { UInt64($0.filter(\.isNumber)) } ?? 0
          completion(.success(DirectoryEntry(key: key, value: response.body, revision: revision)))
        case 404: completion(.success(nil))
        default: completion(.failure(.unavailable("a member answered \(response.status)")))
        }
      }
    }
  }

  private func list(prefix: String, _ completion: @escaping @Sendable (Result<[DirectoryEntry], DirectoryError>) -> Void) {
    let limit = ClusterDirectory.nodesMax
    readLocally(.list(prefix: Array(prefix.utf8), after: nil, limit: limit), stale: true) { [self] results in
      if let results {
        guard case .list(let items, _) = results.first else { return completion(.failure(.unavailable("the state machine answered the wrong shape"))) }
        return completion(.success(items.map { DirectoryEntry(key: String(decoding: $0.key, as: UTF8.self), value: $0.value, revision: $0.revision) }))
      }
      remote("GET", "/kv?prefix=\(prefix)&limit=\(limit)&consistency=stale") { response in
        guard let response, response.status == 200, let items = (try? JSONParser.parse(response.body))?["items"]?.arrayValue else {
          return completion(.failure(.unavailable("no directory member listed \(prefix)")))
        }
        completion(.success(items.compactMap { item in
          guard let key = item["key"]?.stringValue, let value = item["value"]?.stringValue else { return nil }
          return DirectoryEntry(key: key, value: Array(value.utf8), revision: item["revision"]?.unsignedIntegerValue ?? 0)
        }))
      }
    }
  }

  /// Answers the query from this node's replica (nil: not hosted here, or only the leader may
  /// answer and this node is not it).
  private func readLocally(_ query: KVQuery, stale: Bool, _ completion: @escaping @Sendable ([KVQueryResult]?) -> Void) {
    guard hostsDirectory, stale || engine.isLeader(ClusterDirectory.group) else { return completion(nil) }
    let options = ReadOptions(consistency: stale ? .stale : .linearizable, waitMs: UInt32(ClusterDirectory.requestTimeoutMs))
    engine.read(ClusterDirectory.group, query: KVCodec.encode(queries: [query]), options: options) { result in
      guard case .success(let read) = result, let results = try? KVCodec.decodeQueryResults(read.response) else { return completion(nil) }
      completion(results)
    }
  }

  private func put(
    _ key: String, _ value: [UInt8], precondition: KVPrecondition, _ completion: @escaping @Sendable (Result<Void, DirectoryError>) -> Void
  ) {
    write(.put(key: Array(key.utf8), value: value, precondition: precondition), method: "PUT", key: key, body: value, completion)
  }

  private func delete(
    _ key: String, ifRevision revision: UInt64, _ completion: @escaping @Sendable (Result<Void, DirectoryError>) -> Void
  ) {
    write(.delete(key: Array(key.utf8), precondition: .revisionEquals(revision)), method: "DELETE", key: key, body: [], completion)
  }

  /// One write, by this node's engine when it leads the directory, else through a member.
  private func write(
    _ operation: KVOperation, method: String, key: String, body: [UInt8],
    _ completion: @escaping @Sendable (Result<Void, DirectoryError>) -> Void
  ) {
    precondition(key.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "?") && $0 != UInt8(ascii: "%") }, "directory keys need no escaping")
    var conditions: [(name: String, value: String)] = []
    let precondition: KVPrecondition
    switch operation {
    case .put(_, _, let condition), .delete(_, let condition): precondition = condition
    }
    switch precondition {
    case .none: break
    case .absent: conditions.append(("If-None-Match", "*"))
    case .revisionEquals(let revision): conditions.append(("If-Match", "\"\(revision)\""))
    }
    let headers = conditions
    let viaMember: @Sendable () -> Void = { [self] in
      remote(method, "/kv/\(key)", headers: headers, body: body) { response in
        switch response?.status {
        case 200: completion(.success(()))
        case 412: completion(.failure(.preconditionFailed))
        case let status: completion(.failure(.unavailable(status.map { "a member answered \($0)" } ?? "no directory member answered")))
        }
      }
    }
    guard engine.isLeader(ClusterDirectory.group) else { return viaMember() }
    let command = KVCodec.encode(KVCommand(operations: [operation], idempotencyKey: nil))
    engine.write(ClusterDirectory.group, command: command) { result in
      switch result {
      case .failure(.notLeader), .failure(.noLeader): viaMember()  // lost the lead meanwhile
      case .failure(let error): completion(.failure(.unavailable("\(error)")))
      case .success(let written):
        switch try? KVCodec.decodeWriteOutcome(written.response) {
        case .applied?: completion(.success(()))
        case .preconditionFailed?: completion(.failure(.preconditionFailed))
        default: completion(.failure(.unavailable("the directory's state machine refused the write")))
        }
      }
    }
  }

  /// Sends `method /v1/groups/PartitionRegion-0<suffix>` to the directory's leader when this
  /// node's replica knows it, else to each other member in turn, until one answers with anything
  /// but "no leader / not hosted / unreachable". Sent at one hop, so the member forwards to its
  /// leader at most once and never goes looking further.
  private func remote(
    _ method: String, _ suffix: String, headers: [(name: String, value: String)] = [], body: [UInt8] = [],
    _ completion: @escaping @Sendable (PeerResponse?) -> Void
  ) {
    guard let transport else { return completion(nil) }
    let local = engine.localPeer.node
    var candidates: [Peer] = []
    if let leader = engine.leader(ClusterDirectory.group), leader.node != local { candidates.append(leader) }
    for member in knownMembers where member.node != local && !candidates.contains(member) { candidates.append(member) }
    let request = (method, "/v1/groups/\(ClusterDirectory.group)" + suffix, headers + [("X-Caucus-Hops", "1")], body)
    ClusterDirectory.tryInTurn(candidates[...], transport, request, completion)
  }

  private static func tryInTurn(
    _ candidates: ArraySlice<Peer>, _ transport: any DirectoryTransport,
    _ request: (method: String, target: String, headers: [(name: String, value: String)], body: [UInt8]),
    _ completion: @escaping @Sendable (PeerResponse?) -> Void
  ) {
    guard let candidate = candidates.first else { return completion(nil) }
    let next: @Sendable () -> Void = { tryInTurn(candidates.dropFirst(), transport, request, completion) }
    transport.clientURL(of: candidate) { url in
      guard let url else { return next() }
      let peerRequest = PeerRequest(
        method: request.method, url: url + request.target, headers: request.headers, body: request.body,
        timeoutMs: ClusterDirectory.requestTimeoutMs)
      transport.send(peerRequest) { result in
        guard case .success(let response) = result else { return next() }
        // A member that does not host the directory, has no leader, or is part of a loop: ask the next.
        let notHosted = saysGroupNotHosted(status: response.status, body: response.body)
        if notHosted || [421, 503, 504, 508].contains(response.status) { return next() }
        completion(response)
      }
    }
  }
}
