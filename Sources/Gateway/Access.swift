import Consensus
import HTTPServer
import JSON
import KeyValueStore
import PeerClient
import Platform

// Client authentication and authorization (issue 12, point 2). A node started with
// `--auth-tokens-file` answers every route but the open ones only to a request that carries
// `Authorization: Bearer <token>` of a token in that file (`401 unauthorized` otherwise), whose
// role is at least the route's permission and whose scope covers the route's group and keys
// (`403 forbidden` otherwise). Both are decided before the request does anything: no engine call,
// no directory access, no forwarding. Without the file every route is open, as before.

/// What a token may reach: some groups (exact ids, or prefixes written `DataRegion-1*`) and,
/// within them, only keys under a prefix. Nil fields do not restrict.
public struct AccessScope: Equatable, Sendable {
  /// Group patterns: `DataRegion-1` (exactly that group) or `DataRegion-1*` (every id starting
  /// `DataRegion-1`); nil: every group.
  public let groups: [String]?
  /// Keys this token may read and write start with this; nil: every key.
  public let keyPrefix: KVBytes?

  public static let unrestricted = AccessScope(groups: nil, keyPrefix: nil)

  public init(groups: [String]?, keyPrefix: KVBytes?) {
    self.groups = groups
    self.keyPrefix = keyPrefix
  }

  public var isUnrestricted: Bool { groups == nil && keyPrefix == nil }

  public func permits(group: GroupID) -> Bool {
    guard let groups else { return true }
    let id = group.description
    return groups.contains { pattern in
      pattern.hasSuffix("*") ? id.hasPrefix(pattern.dropLast()) : id == pattern
    }
  }

  public func permits(key: KVBytes) -> Bool {
    guard let keyPrefix else { return true }
    return key.starts(with: keyPrefix)
  }

  /// A listing or watch under `prefix` stays within the scope's keys.
  public func permits(prefix: KVBytes) -> Bool { permits(key: prefix) }

  var description: String {
    var parts: [String] = []
    if let groups { parts.append("groups \(groups.joined(separator: ", "))") }
    if let keyPrefix { parts.append("keys under '\(String(decoding: keyPrefix, as: UTF8.self))'") }
    return parts.isEmpty ? "everything" : parts.joined(separator: " and ")
  }
}

/// One entry of the tokens file: who (a name for logs and for identity through forwarding), the
/// role, the scope, and the SHA-256 of the token (the token itself is never stored).
public struct AccessToken: Equatable, Sendable {
  public let name: String
  /// `read`, `write` or `admin`.
  public let role: Permission
  public let scope: AccessScope
  /// SHA-256 of the token's UTF-8 bytes.
  public let sha256: [UInt8]

  public init(name: String, role: Permission, scope: AccessScope = .unrestricted, sha256: [UInt8]) {
    precondition(role != .open, "a token's role is read, write or admin")
    precondition(sha256.count == SHA256.digestBytes, "a SHA-256 digest")
    self.name = name
    self.role = role
    self.scope = scope
    self.sha256 = sha256
  }
}

public struct AccessTokensError: Error, Equatable, CustomStringConvertible {
  public let description: String
}

/// The tokens file, parsed and checked:
///
///     {"tokens": [
///       {"name": "ops", "role": "admin", "sha256": "<64 hex digits>"},
///       {"name": "app", "role": "write", "sha256": "…", "groups": ["DataRegion-1", "DataRegion-2*"], "keyPrefix": "users/"}
///     ]}
///
/// Names and hashes are unique; an unknown field is an error (a misspelt `"group"` must not
/// widen a token's reach silently).
public struct AccessTokens: Sendable {
  /// The largest tokens file read: a token list, not a database.
  public static let fileBytesMax = 4 << 20
  /// Entries at most.
  public static let tokensMax = 10_000
  /// A name is 1…64 of `A-Z a-z 0-9 . _ -` (it travels in a header when a request is forwarded).
  public static let nameBytesMax = 64
  /// Group patterns one token may list.
  public static let groupPatternsMax = 1_000

  public let tokens: [AccessToken]
  private let byHash: [[UInt8]: Int]
  private let byName: [String: Int]

  public init(_ tokens: [AccessToken]) throws(AccessTokensError) {
    var byHash: [[UInt8]: Int] = [:]
    var byName: [String: Int] = [:]
    for (position, token) in tokens.enumerated() {
      guard byName[token.name] == nil else { throw AccessTokensError(description: "the name '\(token.name)' is given twice") }
      guard byHash[token.sha256] == nil else {
        throw AccessTokensError(description: "tokens '\(tokens[byHash[token.sha256]!].name)' and '\(token.name)' have the same sha256")
      }
      byName[token.name] = position
      byHash[token.sha256] = position
    }
    self.tokens = tokens
    self.byHash = byHash
    self.byName = byName
  }

  /// The token whose hash is SHA-256(`bearer`). The table is keyed by hash: timing reveals at
  /// most something about the hash of what the caller sent, never about a stored token, since
  /// SHA-256 cannot be steered towards a chosen prefix; the found entry is then compared in
  /// constant time all the same.
  public func token(bearer: String) -> AccessToken? {
    let digest = SHA256.hash(Array(bearer.utf8))
    guard let position = byHash[digest] else { return nil }
    let token = tokens[position]
    return constantTimeEquals(token.sha256, digest) ? token : nil
  }

  public func token(named name: String) -> AccessToken? { byName[name].map { tokens[$0] } }

  public static func isName(_ text: some StringProtocol) -> Bool {
    !text.isEmpty && text.utf8.count <= nameBytesMax
      && text.utf8.allSatisfy { byte in
        (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
          || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
      }
  }

  /// Reads and checks the tokens file at `path`.
  public static func load(path: String) throws(AccessTokensError) -> AccessTokens {
    let bytes: [UInt8]
    do { bytes = try FileSystem.readFile(path) } catch {
      throw AccessTokensError(description: "cannot read the tokens file \(path): \(error)")
    }
    do { return try parse(bytes) } catch { throw AccessTokensError(description: "the tokens file \(path): \(error)") }
  }

  public static func parse(_ bytes: [UInt8]) throws(AccessTokensError) -> AccessTokens {
    guard bytes.count <= fileBytesMax else { throw AccessTokensError(description: "it has \(bytes.count) bytes; the limit is \(fileBytesMax)") }
    let json: JSONValue
    do { json = try JSONParser.parse(bytes) } catch { throw AccessTokensError(description: "it is not JSON: \(error)") }
    guard case .object(let members) = json, let list = json["tokens"]?.arrayValue else {
      throw AccessTokensError(description: "it must be a JSON object {\"tokens\": [...]}")
    }
    for (name, _) in members where name != "tokens" {
      throw AccessTokensError(description: "unknown field '\(name.prefix(64))' at the top (only \"tokens\")")
    }
    guard list.count <= tokensMax else { throw AccessTokensError(description: "it lists \(list.count) tokens; the limit is \(tokensMax)") }
    var tokens: [AccessToken] = []
    for (position, item) in list.enumerated() {
      func fail(_ reason: String) -> AccessTokensError { AccessTokensError(description: "tokens[\(position)]: \(reason)") }
      guard case .object(let fields) = item else { throw fail("an entry is an object {\"name\",\"role\",\"sha256\",...}") }
      for (field, _) in fields where !["name", "role", "sha256", "groups", "keyPrefix"].contains(field) {
        throw fail("unknown field '\(field.prefix(64))' (fields: name, role, sha256, groups, keyPrefix)")
      }
      guard let name = item["name"]?.stringValue, isName(name) else {
        throw fail("\"name\" must be 1 to \(nameBytesMax) of A-Z a-z 0-9 . _ -")
      }
      let role: Permission
      switch item["role"]?.stringValue {
      case "read": role = .read
      case "write": role = .write
      case "admin": role = .admin
      default: throw fail("\"role\" of '\(name)' must be read, write or admin")
      }
      guard let hex = item["sha256"]?.stringValue, let digest = Hex.decode(hex), digest.count == SHA256.digestBytes else {
        throw fail("\"sha256\" of '\(name)' must be 64 hex digits: the SHA-256 of the token (caucus token hash)")
      }
      var groups: [String]?
      if let value = item["groups"] {
        guard let patterns = value.arrayValue, !patterns.isEmpty, patterns.count <= groupPatternsMax else {
          throw fail("\"groups\" of '\(name)' must be an array of 1 to \(groupPatternsMax) group ids or prefixes (DataRegion-1*)")
        }
        groups = try patterns.map { pattern throws(AccessTokensError) in
          guard let text = pattern.stringValue, isGroupPattern(text) else {
            throw fail("\"groups\" of '\(name)': each is a group id (DataRegion-1) or a prefix ending in * (DataRegion-1*, DataRegion-*)")
          }
          return text
        }
      }
      var keyPrefix: KVBytes?
      if let value = item["keyPrefix"] {
        guard let text = value.stringValue, !text.isEmpty, text.utf8.count <= KVLimits.keyBytesMax else {
          throw fail("\"keyPrefix\" of '\(name)' must be a string of 1 to \(KVLimits.keyBytesMax) bytes")
        }
        keyPrefix = Array(text.utf8)
      }
      tokens.append(AccessToken(name: name, role: role, scope: AccessScope(groups: groups, keyPrefix: keyPrefix), sha256: digest))
    }
    return try AccessTokens(tokens)
  }

  /// `DataRegion-1`, or a prefix of a group id followed by `*` (`DataRegion-1*`, `Data*`, `*`).
  static func isGroupPattern(_ text: String) -> Bool {
    if text.hasSuffix("*") {
      let prefix = text.dropLast()
      return !prefix.contains("*") && prefix.utf8.count <= 64
    }
    return GroupID(text) != nil
  }

  /// The file's text for `tokens`, one entry a line (what `caucus token create` writes).
  public static func encode(_ tokens: [AccessToken]) -> [UInt8] {
    var text = "{\"tokens\": [\n"
    for (position, token) in tokens.enumerated() {
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("name", token.name)
      writer.member("role", token.role.description)
      writer.member("sha256", Hex.encode(token.sha256))
      if let groups = token.scope.groups {
        writer.key("groups")
        writer.beginArray()
        for group in groups { writer.string(group) }
        writer.endArray()
      }
      if let prefix = token.scope.keyPrefix {
        writer.key("keyPrefix")
        writer.string(utf8: prefix)
      }
      writer.endObject()
      text += "  " + String(decoding: writer.bytes, as: UTF8.self) + (position + 1 < tokens.count ? ",\n" : "\n")
    }
    return Array((text + "]}\n").utf8)
  }
}

/// The tokens a node checks against, swapped whole on reload (SIGHUP).
public final class AccessTokenStore: Sendable {
  /// The file the tokens come from.
  public let path: String
  private let current: Locked<AccessTokens>

  /// Reads `path`; throws when it cannot be used (the node refuses to start).
  public init(path: String) throws(AccessTokensError) {
    self.path = path
    self.current = Locked(try AccessTokens.load(path: path))
  }

  /// A store over `tokens` (tests); `reload` reads `path`.
  public init(_ tokens: AccessTokens, path: String = "") {
    self.path = path
    self.current = Locked(tokens)
  }

  public var tokens: AccessTokens { current.withLock { $0 } }

  /// Reads the file again and swaps it in; a file that cannot be used changes nothing (the old
  /// tokens stay) and is the error. Answers how many tokens are in force.
  @discardableResult
  public func reload() throws(AccessTokensError) -> Int {
    let fresh = try AccessTokens.load(path: path)
    current.withLock { $0 = fresh }
    return fresh.tokens.count
  }
}

/// Who a request comes from, as the gateway admitted it.
enum Caller: Sendable, Equatable {
  /// Authentication is off (no tokens file), or the route is open: anyone.
  case anyone
  /// Another node of the cluster, proven by the cluster secret (`X-Caucus-Peer`).
  case cluster(node: UInt64)
  case token(AccessToken)

  var role: Permission {
    switch self {
    case .anyone, .cluster: return .admin
    case .token(let token): return token.role
    }
  }

  var scope: AccessScope {
    if case .token(let token) = self { return token.scope }
    return .unrestricted
  }

  /// What a relayed request says of its caller (`X-Caucus-Identity`), which the receiving node
  /// believes only under the cluster secret's proof; nil: nothing was checked here (authentication
  /// off), and the receiver checks the relayed `Authorization` itself.
  var forwardedIdentity: String? {
    switch self {
    case .anyone: return nil
    case .cluster: return AccessPolicy.clusterIdentity
    case .token(let token): return token.name
    }
  }

  /// For logs.
  var name: String {
    switch self {
    case .anyone: return "anyone"
    case .cluster(let node): return "node \(node)"
    case .token(let token): return token.name
    }
  }
}

/// How a route's scope is checked against a scoped token.
enum ScopeRule: Sendable {
  /// Says nothing about groups or keys (`GET /`): any token.
  case none
  /// About the whole node or cluster: only an unrestricted token.
  case unrestricted
  /// `GET /v1/groups`: any token; the answer lists only the groups in its scope.
  case filtered
  /// Reads a group's status (not its keys): the group must be in scope.
  case group
  /// Acts on the whole group (create, delete, membership, leadership, snapshot) or reads all of
  /// it (the backup export): the group must be in scope and the token not restricted to some
  /// keys. `POST /v1/groups` names the group in its body, which the handler checks.
  case wholeGroup
  /// The key in the path.
  case pathKey
  /// `?prefix=` (listing, watch): the prefix must lie within the token's keys.
  case queryPrefix
  /// The keys in the body (`/write`, `/read`): the handler checks each before anything runs.
  case bodyKeys
}

extension Route.Name {
  var scopeRule: ScopeRule {
    switch self {
    case .root, .healthz, .ui: return .none
    case .readyz, .metrics, .node, .nodeGroupsCreate, .nodeGroupsDelete, .cluster, .clusterNodesRegister, .clusterRebalance:
      return .unrestricted
    case .groupsList: return .filtered
    case .groupGet, .leaderGet: return .group
    case .groupsCreate, .groupDelete, .peersAdd, .peersChange, .peerRemove, .leaderTransfer, .snapshot, .snapshotExport:
      return .wholeGroup
    case .kvGet, .kvPut, .kvDelete: return .pathKey
    case .kvList, .watch: return .queryPrefix
    case .write, .read: return .bodyKeys
    }
  }
}

/// The node's access rules: the tokens (nil: authentication off), which routes are open, and the
/// cluster secret that proves other nodes' requests.
public struct AccessPolicy: Sendable {
  /// Nil: every route is open (the local quick start).
  public var tokens: AccessTokenStore?
  /// Whether `/metrics` and `/readyz` need no token even with tokens configured (scrapers and
  /// probes; the default), or a read token (`--auth-metrics read`, `--auth-readyz read`).
  /// `/healthz` is always open.
  public var metricsOpen = true
  public var readinessOpen = true

  public init(tokens: AccessTokenStore? = nil) { self.tokens = tokens }

  var isOn: Bool { tokens != nil }

  /// `WWW-Authenticate` of a `401` (RFC 6750): no credentials, or credentials that are not valid.
  static let bearerChallenge = #"Bearer realm="caucus""#
  static let invalidTokenChallenge = #"Bearer realm="caucus", error="invalid_token""#

  func isOpen(_ name: Route.Name) -> Bool {
    name.permission == .open || (name == .metrics && metricsOpen) || (name == .readyz && readinessOpen)
  }

  /// Decides who `request` comes from and whether it may use what it matched, before anything
  /// runs: `401 unauthorized` without valid credentials, `403 forbidden` when the role or scope
  /// does not reach. A request that matched no route needs valid credentials too (unless the
  /// endpoint it named is open), so that callers without them learn nothing of the surface.
  func admit(
    _ request: HTTPRequest, _ match: Result<Route, Route.Mismatch>, query: QueryParameters, peers: PeerAuthenticator?
  ) -> Result<Caller, GatewayError> {
    if case .success(let route) = match, route.name.needsPeerProof, let peers {
      switch Self.proof(request, peers) {
      case .success(let node): return .success(.cluster(node: node))
      case .failure(let error):
        return .failure(
          .unauthorized(
            "\(route.label) is for the cluster's own nodes: it needs the cluster secret's proof (X-Caucus-Peer): \(error)",
            challenge: "Caucus-Peer"))
      }
    }
    guard let tokens else { return .success(.anyone) }
    let name: Route.Name?
    switch match {
    case .success(let route): name = route.name
    case .failure(let mismatch): name = mismatch.name
    }
    if let name, isOpen(name) { return .success(.anyone) }
    let caller: Caller
    switch authenticate(request, tokens.tokens, peers: peers) {
    case .failure(let error): return .failure(error)
    case .success(let found): caller = found
    }
    guard case .success(let route) = match else { return .success(caller) }  // the mismatch is the answer
    if let refusal = Self.authorize(route, caller, query: query) { return .failure(refusal) }
    return .success(caller)
  }

  /// Whether `request` carries the cluster secret's valid proof (`X-Caucus-Peer`): its sender.
  static func proof(_ request: HTTPRequest, _ peers: PeerAuthenticator) -> Result<UInt64, PeerAuthenticationError> {
    peers.verify(
      method: request.method, target: request.target, headerValue: request.header(PeerAuthenticator.headerName),
      identity: request.header(PeerAuthenticator.identityHeaderName), body: request.body,
      nowMs: PeerAuthenticator.wallClockMilliseconds())
  }

  /// The identity of a request a node makes for itself (the directory, a cluster view): not a
  /// token name (`@` is not allowed in one).
  static let clusterIdentity = "@cluster"

  /// The caller's credentials: another node's proof, else a bearer token.
  ///
  /// A request proven with the cluster secret (`X-Caucus-Peer`) comes from a node of the
  /// cluster. One that node relays for a client (`X-Caucus-Forwarded-By`) is the client's: its
  /// `X-Caucus-Identity` names the token the relaying node admitted, and this node applies its
  /// own entry of that name (role and scope), so the node that serves the request decides with
  /// its own tokens file; without the header (the relaying node checks no tokens) the relayed
  /// `Authorization` is checked here as any client's. Any other proven request is the node's
  /// own (`cluster`). Without a valid proof, the identity and forwarding headers mean nothing.
  func authenticate(_ request: HTTPRequest, _ tokens: AccessTokens, peers: PeerAuthenticator?) -> Result<Caller, GatewayError> {
    if let peers, request.header(PeerAuthenticator.headerName) != nil {
      if case .success(let node) = Self.proof(request, peers) {
        guard request.header("x-caucus-forwarded-by") != nil else { return .success(.cluster(node: node)) }
        // A relaying node names its caller (a token's name, or `clusterIdentity`) in this
        // header, which the proof covers.
        if let identity = request.header(PeerAuthenticator.identityHeaderName) {
          if identity == Self.clusterIdentity { return .success(.cluster(node: node)) }
          guard let token = tokens.token(named: identity) else {
            return .failure(
              .unauthorized(
                "node \(node) relayed this request for the token '\(identity.prefix(64))', which this node does not know "
                  + "(the nodes' tokens files differ: give every node the same file and send it SIGHUP)",
                challenge: Self.invalidTokenChallenge))
          }
          return .success(.token(token))
        }
      }
    }
    guard let header = request.header("authorization") else {
      return .failure(.unauthorized("this node requires a token: send Authorization: Bearer <token>", challenge: Self.bearerChallenge))
    }
    let fields = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
    guard fields.count == 2, fields[0].lowercased() == "bearer" else {
      return .failure(.unauthorized("the Authorization header must be Bearer <token>", challenge: Self.invalidTokenChallenge))
    }
    let bearer = String(fields[1]).trimmingSpaces()
    guard let token = tokens.token(bearer: bearer) else {
      return .failure(
        .unauthorized(
          "the token is not one this node knows (revoked, mistyped, or for another cluster)", challenge: Self.invalidTokenChallenge))
    }
    return .success(.token(token))
  }

  /// Nil when `caller` may use `route` as far as the path and query say; else `403 forbidden`.
  static func authorize(_ route: Route, _ caller: Caller, query: QueryParameters) -> GatewayError? {
    let name = route.name
    guard caller.role >= name.permission else {
      return .forbidden("\(route.label) needs the \(name.permission) role; the token '\(caller.name)' has \(caller.role)")
    }
    let scope = caller.scope
    guard !scope.isUnrestricted else { return nil }
    func outside(_ what: String) -> GatewayError {
      .forbidden("the token '\(caller.name)' may use \(scope.description); \(what) is outside it")
    }
    if let group = route.group, !scope.permits(group: group) { return outside("group \(group)") }
    switch name.scopeRule {
    case .none, .filtered, .group, .bodyKeys:
      return nil
    case .unrestricted:
      return .forbidden("\(route.label) is about the whole node or cluster; the token '\(caller.name)' is limited to \(scope.description)")
    case .wholeGroup:
      guard scope.keyPrefix == nil else { return outside("the whole group (it holds keys of every prefix)") }
      return nil
    case .pathKey:
      guard let key = route.key, scope.permits(key: key) else {
        return outside("the key '\(String(decoding: (route.key ?? []).prefix(200), as: UTF8.self))'")
      }
      return nil
    case .queryPrefix:
      // The prefix the handler will read, in either of its forms (a scoped token must not get
      // around its key prefix by naming the prefix in base64).
      let prefix: KVBytes
      do throws(GatewayError) {
        prefix = try queryKeyBound(query, "prefix") ?? []
      } catch {
        return error
      }
      guard scope.permits(prefix: prefix) else {
        return outside("the prefix '\(String(decoding: prefix.prefix(200), as: UTF8.self))' (give ?prefix= within it)")
      }
      return nil
    }
  }
}

extension Exchange {
  /// Refuses (`403 forbidden`) a group named in the body outside the caller's scope.
  func authorize(group: GroupID) throws(GatewayError) {
    let scope = caller.scope
    guard scope.permits(group: group) else {
      throw .forbidden("the token '\(caller.name)' may use \(scope.description); group \(group) is outside it")
    }
    guard route?.name.scopeRule != .wholeGroup || scope.keyPrefix == nil else {
      throw .forbidden("the token '\(caller.name)' may use \(scope.description); the whole group \(group) is outside it")
    }
  }

  /// Refuses (`403 forbidden`) keys and prefixes named in the body outside the caller's scope.
  func authorize(keys: [KVBytes]) throws(GatewayError) {
    let scope = caller.scope
    for key in keys where !scope.permits(key: key) {
      throw .forbidden(
        "the token '\(caller.name)' may use \(scope.description); the key or prefix '\(String(decoding: key.prefix(200), as: UTF8.self))' is outside it")
    }
  }
}
