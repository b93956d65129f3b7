import Consensus
import KeyValueStore

/// How far a caller must be trusted to use a route (issue 12). Roles order `read < write <
/// admin`; `open` routes need no credentials at all.
public enum Permission: Int, Comparable, Sendable, CaseIterable, CustomStringConvertible {
  /// Anyone: `GET /healthz` (and `/metrics`, `/readyz` when configured open).
  case open
  /// Reads data and state: keys, listings, watches, group and node status.
  case read
  /// Changes keys: puts, deletes, batches.
  case write
  /// Changes the cluster: groups, membership, leadership, snapshots, node registration.
  case admin

  public static func < (left: Permission, right: Permission) -> Bool { left.rawValue < right.rawValue }

  public var description: String {
    switch self {
    case .open: return "open"
    case .read: return "read"
    case .write: return "write"
    case .admin: return "admin"
    }
  }
}

/// One endpoint of the contract (API.md), with what its path names: the group, the key, the node.
/// `Route.match` is the only place a request's method and path are read to decide what it is;
/// everything that steers behaviour asks the route (its permission, whether it changes state,
/// whether it is about this node only), never a route name. The names exist only as labels for
/// metrics and logs (`Route.Name.rawValue`).
enum Route: Equatable, Sendable {
  case root
  case healthz
  case readyz
  case metrics
  /// `GET /ui`: the dashboard page (`Dashboard`), which reads the cluster through the API.
  case ui
  /// `GET /v1/node`.
  case node
  /// `POST /v1/node/groups`: createPeer on this node only (other nodes' coordinators use it).
  case nodeGroupsCreate
  /// `DELETE /v1/node/groups/{group}`: deletePeer on this node only.
  case nodeGroupsDelete(GroupID)
  /// `GET /v1/cluster`.
  case cluster
  /// `POST /v1/cluster/nodes`: a node registers (`--join`).
  case clusterNodesRegister
  /// `POST /v1/cluster/rebalance`.
  case clusterRebalance
  /// `GET /v1/groups`.
  case groupsList
  /// `POST /v1/groups`: the group is named in the body.
  case groupsCreate
  case groupGet(GroupID)
  case groupDelete(GroupID)
  /// `GET`/`HEAD /v1/groups/{group}/kv/{key}`, the key percent-decoded.
  case kvGet(GroupID, key: KVBytes)
  case kvPut(GroupID, key: KVBytes)
  case kvDelete(GroupID, key: KVBytes)
  /// `GET /v1/groups/{group}/kv?prefix=…`.
  case kvList(GroupID)
  /// `POST /v1/groups/{group}/write`: the keys are in the body.
  case write(GroupID)
  /// `POST /v1/groups/{group}/read`: the keys are in the body.
  case read(GroupID)
  /// `GET`/`HEAD /v1/groups/{group}/watch?prefix=…`.
  case watch(GroupID)
  case peersAdd(GroupID)
  case peersChange(GroupID)
  case peerRemove(GroupID, NodeID)
  case leaderGet(GroupID)
  case leaderTransfer(GroupID)
  /// `POST /v1/groups/{group}/snapshot`: compacts the log (triggerSnapshot).
  case snapshot(GroupID)
  /// `GET`/`HEAD /v1/groups/{group}/snapshot`: the group's whole state as a backup file.
  case snapshotExport(GroupID)

  /// The routes by name: metric and log labels, and the list tests iterate so that no route
  /// escapes them.
  enum Name: String, CaseIterable, Sendable {
    case root, healthz, readyz, metrics, ui, node
    case nodeGroupsCreate = "node_groups_create"
    case nodeGroupsDelete = "node_groups_delete"
    case cluster
    case clusterNodesRegister = "cluster_nodes_register"
    case clusterRebalance = "cluster_rebalance"
    case groupsList = "groups_list"
    case groupsCreate = "groups_create"
    case groupGet = "group_get"
    case groupDelete = "group_delete"
    case kvGet = "kv_get"
    case kvPut = "kv_put"
    case kvDelete = "kv_delete"
    case kvList = "kv_list"
    case write, read, watch
    case peersAdd = "peers_add"
    case peersChange = "peers_change"
    case peerRemove = "peer_remove"
    case leaderGet = "leader_get"
    case leaderTransfer = "leader_transfer"
    case snapshot
    case snapshotExport = "snapshot_export"

    /// The label of a request that matched no route.
    static let unmatchedLabel = "not_found"

    /// What a caller needs to use the route. `/metrics` and `/readyz` need `read` here; a node
    /// may open them to anyone (`AccessPolicy.metricsOpen`, `readinessOpen`: the default). The
    /// dashboard page is open: it carries no data, and its own requests for the cluster and the
    /// groups need their routes' tokens.
    var permission: Permission {
      switch self {
      case .healthz, .ui: return .open
      case .root, .readyz, .metrics, .node, .cluster, .groupsList, .groupGet, .kvGet, .kvList, .read, .watch, .leaderGet,
        .snapshotExport:
        return .read
      case .kvPut, .kvDelete, .write: return .write
      case .nodeGroupsCreate, .nodeGroupsDelete, .clusterNodesRegister, .clusterRebalance, .groupsCreate, .groupDelete,
        .peersAdd, .peersChange, .peerRemove, .leaderTransfer, .snapshot:
        return .admin
      }
    }

    /// Whether a request may change state (a write, a group, membership, leadership, a
    /// snapshot, a registration): a relayed one that gets no answer is indeterminate.
    var changesState: Bool {
      switch self {
      case .root, .healthz, .readyz, .metrics, .ui, .node, .cluster, .groupsList, .groupGet, .kvGet, .kvList, .read,
        .watch, .leaderGet, .snapshotExport:
        return false
      case .nodeGroupsCreate, .nodeGroupsDelete, .clusterNodesRegister, .clusterRebalance, .groupsCreate, .groupDelete,
        .kvPut, .kvDelete, .write, .peersAdd, .peersChange, .peerRemove, .leaderTransfer, .snapshot:
        return true
      }
    }

    /// Whether the request is answered `504 timeout` at the gateway's request deadline if the
    /// engine has not answered by then (`indeterminate` when it changes state). Watches end at
    /// their own timeout; a balance bounds itself; the others answer without waiting on the engine.
    var endsAtRequestDeadline: Bool {
      switch self {
      case .kvPut, .kvDelete, .write, .groupsCreate, .groupDelete, .clusterNodesRegister, .nodeGroupsCreate,
        .nodeGroupsDelete, .peersAdd, .peersChange, .peerRemove, .leaderTransfer, .snapshot, .kvGet, .kvList, .read,
        .snapshotExport:
        return true
      case .root, .healthz, .readyz, .metrics, .ui, .node, .cluster, .clusterRebalance, .groupsList, .groupGet,
        .watch, .leaderGet:
        return false
      }
    }

    /// Routes only the cluster's own nodes use (a joining node's registration): with a cluster
    /// secret, a request without its valid proof is `401` whatever the tokens, tokens off included.
    var needsPeerProof: Bool { self == .clusterNodesRegister }

    /// Routes about this node only (`/v1/node/…`): never forwarded, never looked for elsewhere.
    var isNodeLocal: Bool { self == .node || self == .nodeGroupsCreate || self == .nodeGroupsDelete }

    /// Whether the route takes `?forward=`: every route about one group, which may be served by
    /// its leader elsewhere (the status and the deletion too: a group this node neither hosts nor
    /// finds recorded is looked for on the other members). Checked before serving: another value
    /// is `400 bad_request`. The other routes are never forwarded and ignore it (API.md).
    var takesForwardMode: Bool {
      switch self {
      case .groupGet, .groupDelete, .kvGet, .kvPut, .kvDelete, .kvList, .write, .read, .watch, .peersAdd, .peersChange,
        .peerRemove, .leaderGet, .leaderTransfer, .snapshot, .snapshotExport:
        return true
      case .root, .healthz, .readyz, .metrics, .ui, .node, .nodeGroupsCreate, .nodeGroupsDelete, .cluster,
        .clusterNodesRegister, .clusterRebalance, .groupsList, .groupsCreate:
        return false
      }
    }
  }

  var name: Name {
    switch self {
    case .root: return .root
    case .healthz: return .healthz
    case .readyz: return .readyz
    case .metrics: return .metrics
    case .ui: return .ui
    case .node: return .node
    case .nodeGroupsCreate: return .nodeGroupsCreate
    case .nodeGroupsDelete: return .nodeGroupsDelete
    case .cluster: return .cluster
    case .clusterNodesRegister: return .clusterNodesRegister
    case .clusterRebalance: return .clusterRebalance
    case .groupsList: return .groupsList
    case .groupsCreate: return .groupsCreate
    case .groupGet: return .groupGet
    case .groupDelete: return .groupDelete
    case .kvGet: return .kvGet
    case .kvPut: return .kvPut
    case .kvDelete: return .kvDelete
    case .kvList: return .kvList
    case .write: return .write
    case .read: return .read
    case .watch: return .watch
    case .peersAdd: return .peersAdd
    case .peersChange: return .peersChange
    case .peerRemove: return .peerRemove
    case .leaderGet: return .leaderGet
    case .leaderTransfer: return .leaderTransfer
    case .snapshot: return .snapshot
    case .snapshotExport: return .snapshotExport
    }
  }

  var permission: Permission { name.permission }
  var changesState: Bool { name.changesState }
  var label: String { name.rawValue }

  /// The group the path names, if any (`POST /v1/groups` names its group in the body).
  var group: GroupID? {
    switch self {
    case .nodeGroupsDelete(let group), .groupGet(let group), .groupDelete(let group), .kvGet(let group, _),
      .kvPut(let group, _), .kvDelete(let group, _), .kvList(let group), .write(let group), .read(let group),
      .watch(let group), .peersAdd(let group), .peersChange(let group), .peerRemove(let group, _),
      .leaderGet(let group), .leaderTransfer(let group), .snapshot(let group), .snapshotExport(let group):
      return group
    case .root, .healthz, .readyz, .metrics, .ui, .node, .nodeGroupsCreate, .cluster, .clusterNodesRegister,
      .clusterRebalance, .groupsList, .groupsCreate:
      return nil
    }
  }

  /// The key the path names, if any.
  var key: KVBytes? {
    switch self {
    case .kvGet(_, let key), .kvPut(_, let key), .kvDelete(_, let key): return key
    default: return nil
    }
  }

  /// A request that matched no route, or an endpoint it matched with something wrong (a method,
  /// a group id, a key): the error to answer, and the endpoint's name for the metrics when the
  /// path got that far.
  struct Mismatch: Error, Sendable {
    let error: GatewayError
    let name: Name?

    var label: String { name?.rawValue ?? Name.unmatchedLabel }
  }

  /// The route `method` and `path` (the target's path, still percent-encoded) name. Every route
  /// that takes GET takes HEAD as the same route (API.md: HEAD mirrors GET); the HTTP layer
  /// leaves out the body.
  static func match(method: String, path: Substring) -> Result<Route, Mismatch> {
    do throws(Mismatch) {
      if let route = try matchKey(method: method, path: path) { return .success(route) }
      return .success(try matchOther(method: method, path: path))
    } catch {
      return .failure(error)
    }
  }

  /// The hot path, `/v1/groups/<group>/kv/<key>`, matched on bytes without splitting the path;
  /// nil when the path is anything else.
  private static func matchKey(method: String, path: Substring) throws(Mismatch) -> Route? {
    let bytes = path.utf8
    let prefix = "/v1/groups/".utf8
    guard bytes.starts(with: prefix) else { return nil }
    let groupStart = bytes.index(bytes.startIndex, offsetBy: prefix.count)
    guard let slash = bytes[groupStart...].firstIndex(of: UInt8(ascii: "/")) else { return nil }
    let rest = bytes[bytes.index(after: slash)...]
    guard rest.starts(with: "kv/".utf8) else { return nil }
    let name: Name
    switch method {
    case "PUT": name = .kvPut
    case "DELETE": name = .kvDelete
    case "GET", "HEAD": name = .kvGet
    default: throw Mismatch(error: .methodNotAllowed(allowed: ["GET", "HEAD", "PUT", "DELETE"]), name: nil)
    }
    guard let group = GroupID(utf8: bytes[groupStart..<slash]) else {
      throw Mismatch(error: .invalidGroupID(String(decoding: bytes[groupStart..<slash].prefix(200), as: UTF8.self)), name: name)
    }
    let key: KVBytes
    do { key = try decodeKey(rest.dropFirst(3)) } catch { throw Mismatch(error: error, name: name) }
    switch name {
    case .kvPut: return .kvPut(group, key: key)
    case .kvDelete: return .kvDelete(group, key: key)
    default: return .kvGet(group, key: key)
    }
  }

  private static func matchOther(method: String, path: Substring) throws(Mismatch) -> Route {
    let segments = path.split(separator: "/", omittingEmptySubsequences: false)
    // segments[0] is "" for an absolute path.
    guard segments.first == "" else { throw Mismatch(error: .notFound, name: nil) }
    let parts = segments.dropFirst()
    // The name a failure is labelled with: set as soon as the path names an endpoint.
    var name: Name?

    func fail(_ error: GatewayError) -> Mismatch { Mismatch(error: error, name: name) }
    func allow(_ methods: String...) throws(Mismatch) {
      guard methods.contains(method) else { throw fail(.methodNotAllowed(allowed: methods)) }
    }
    func operational(_ route: Route) throws(Mismatch) -> Route {
      name = route.name
      guard parts.count == 1 else { throw fail(.notFound) }
      try allow("GET", "HEAD")
      return route
    }
    func group(_ text: Substring) throws(Mismatch) -> GroupID {
      do { return try parseGroup(text) } catch { throw fail(error) }
    }

    switch parts.first {
    case "": return try operational(.root)
    case "healthz": return try operational(.healthz)
    case "readyz": return try operational(.readyz)
    case "metrics": return try operational(.metrics)
    case "ui": return try operational(.ui)
    case "v1": break
    default: throw fail(.notFound)
    }

    let rest = Array(parts.dropFirst())
    guard let resource = rest.first else { throw fail(.notFound) }
    switch resource {
    case "node":
      if rest.count == 1 {
        name = .node
        try allow("GET", "HEAD")
        return .node
      }
      guard rest[1] == "groups" else { throw fail(.notFound) }
      if rest.count == 2 {
        name = .nodeGroupsCreate
        try allow("POST")
        return .nodeGroupsCreate
      }
      guard rest.count == 3 else { throw fail(.notFound) }
      name = .nodeGroupsDelete
      try allow("DELETE")
      return .nodeGroupsDelete(try group(rest[2]))
    case "cluster":
      name = .cluster
      if rest.count == 2 && rest[1] == "nodes" {
        name = .clusterNodesRegister
        try allow("POST")
        return .clusterNodesRegister
      }
      if rest.count == 2 && rest[1] == "rebalance" {
        name = .clusterRebalance
        try allow("POST")
        return .clusterRebalance
      }
      guard rest.count == 1 else { throw fail(.notFound) }
      try allow("GET", "HEAD")
      return .cluster
    case "groups":
      break
    default:
      throw fail(.notFound)
    }

    if rest.count == 1 {
      try allow("GET", "HEAD", "POST")
      return method == "POST" ? .groupsCreate : .groupsList
    }
    let id = try group(rest[1])
    if rest.count == 2 {
      try allow("GET", "HEAD", "DELETE")
      return method == "DELETE" ? .groupDelete(id) : .groupGet(id)
    }
    switch rest[2] {
    case "kv":
      // `/kv/<key>` is matched by `matchKey`.
      guard rest.count == 3 else { throw fail(.notFound) }
      name = .kvList
      try allow("GET", "HEAD")
      return .kvList(id)
    case "write":
      name = .write
      guard rest.count == 3 else { throw fail(.notFound) }
      try allow("POST")
      return .write(id)
    case "read":
      name = .read
      guard rest.count == 3 else { throw fail(.notFound) }
      try allow("POST")
      return .read(id)
    case "watch":
      name = .watch
      guard rest.count == 3 else { throw fail(.notFound) }
      try allow("GET", "HEAD")
      return .watch(id)
    case "peers":
      if rest.count == 3 {
        try allow("POST", "PUT")
        return method == "POST" ? .peersAdd(id) : .peersChange(id)
      }
      guard rest.count == 4 else { throw fail(.notFound) }
      name = .peerRemove
      try allow("DELETE")
      guard let node = NodeID(parsing: rest[3]) else {
        throw fail(.badRequest("node id '\(rest[3].prefix(200))' is not a positive integer"))
      }
      return .peerRemove(id, node)
    case "leader":
      guard rest.count == 3 else { throw fail(.notFound) }
      try allow("GET", "HEAD", "POST")
      return method == "POST" ? .leaderTransfer(id) : .leaderGet(id)
    case "snapshot":
      // The same path for two endpoints: POST compacts the log, GET exports the state.
      name = method == "POST" ? .snapshot : .snapshotExport
      guard rest.count == 3 else { throw fail(.notFound) }
      try allow("GET", "HEAD", "POST")
      return method == "POST" ? .snapshot(id) : .snapshotExport(id)
    default:
      throw fail(.notFound)
    }
  }
}
