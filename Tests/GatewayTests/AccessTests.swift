import Consensus
import Directory
import Foundation
@testable import Gateway
import HTTPServer
import JSON
import KeyValueStore
import Logging
import PeerClient
import Platform
import StandaloneConsensus
import XCTest

/// The tokens file: its shape, each refusal naming what is wrong, and lookups by token and name.
final class AccessTokensTests: XCTestCase {
  private func parse(_ text: String) throws(AccessTokensError) -> AccessTokens { try AccessTokens.parse(Array(text.utf8)) }
  private let hash = SHA256.hex(Array("secret-token".utf8))

  func testAFileParsesIntoTokensFoundByTheirHashAndName() throws {
    let tokens = try parse(
      #"{"tokens":[{"name":"ops","role":"admin","sha256":"\#(hash)"},"#
        + #"{"name":"app.v2","role":"write","sha256":"\#(SHA256.hex(Array("other".utf8)).uppercased())","groups":["DataRegion-1","Schema*"],"keyPrefix":"users/"}]}"#)
    XCTAssertEqual(tokens.tokens.count, 2)
    XCTAssertEqual(tokens.token(bearer: "secret-token")?.name, "ops")
    XCTAssertEqual(tokens.token(bearer: "secret-token")?.role, .admin)
    XCTAssertNil(tokens.token(bearer: "secret-token "), "the token is compared exactly")
    XCTAssertNil(tokens.token(bearer: "nope"))
    let app = try XCTUnwrap(tokens.token(bearer: "other"))
    XCTAssertEqual(app.role, .write)
    XCTAssertTrue(app.scope.permits(group: GroupID(.dataRegion, 1)))
    XCTAssertFalse(app.scope.permits(group: GroupID(.dataRegion, 10)), "an exact id is not a prefix")
    XCTAssertTrue(app.scope.permits(group: GroupID(.schemaRegion, 42)))
    XCTAssertTrue(app.scope.permits(key: Array("users/alice".utf8)))
    XCTAssertFalse(app.scope.permits(key: Array("orders/1".utf8)))
    XCTAssertEqual(tokens.token(named: "app.v2"), app)
    // What `caucus token create` writes reads back the same.
    XCTAssertEqual(try AccessTokens.parse(AccessTokens.encode(tokens.tokens)).tokens, tokens.tokens)
  }

  func testAFileThatCannotBeUsedIsRefusedWithWhatIsWrong() {
    let other = SHA256.hex(Array("other".utf8))
    let cases: [(String, String)] = [
      ("", "not JSON"),
      ("[]", "{\"tokens\": [...]}"),
      (#"{"tokens":[],"extra":1}"#, "unknown field 'extra'"),
      (#"{"tokens":[{"name":"ops","role":"admin","sha256":"\#(hash)","group":["DataRegion-1"]}]}"#, "unknown field 'group'"),
      (#"{"tokens":[{"role":"admin","sha256":"\#(hash)"}]}"#, "\"name\""),
      (#"{"tokens":[{"name":"a b","role":"admin","sha256":"\#(hash)"}]}"#, "\"name\""),
      (#"{"tokens":[{"name":"ops","role":"root","sha256":"\#(hash)"}]}"#, "\"role\" of 'ops'"),
      (#"{"tokens":[{"name":"ops","role":"open","sha256":"\#(hash)"}]}"#, "\"role\" of 'ops'"),
      (#"{"tokens":[{"name":"ops","role":"read","sha256":"abc"}]}"#, "\"sha256\" of 'ops'"),
      (#"{"tokens":[{"name":"ops","role":"read","sha256":"\#(hash)","groups":[]}]}"#, "\"groups\" of 'ops'"),
      (#"{"tokens":[{"name":"ops","role":"read","sha256":"\#(hash)","groups":["Region-1"]}]}"#, "\"groups\" of 'ops'"),
      (#"{"tokens":[{"name":"ops","role":"read","sha256":"\#(hash)","groups":["Data*Region*"]}]}"#, "\"groups\" of 'ops'"),
      (#"{"tokens":[{"name":"ops","role":"read","sha256":"\#(hash)","keyPrefix":""}]}"#, "\"keyPrefix\" of 'ops'"),
      (
        #"{"tokens":[{"name":"ops","role":"read","sha256":"\#(hash)"},{"name":"ops","role":"read","sha256":"\#(other)"}]}"#,
        "'ops' is given twice"
      ),
      (
        #"{"tokens":[{"name":"a","role":"read","sha256":"\#(hash)"},{"name":"b","role":"read","sha256":"\#(hash)"}]}"#,
        "the same sha256"
      ),
    ]
    for (text, expected) in cases {
      do {
        _ = try parse(text)
        XCTFail("accepted: \(text)")
      } catch {
        XCTAssertTrue(error.description.contains(expected), "\(text): \(error.description) does not say \(expected)")
      }
    }
  }

  /// A reload swaps the tokens whole; a file that cannot be used keeps the old ones.
  func testAReloadSwapsTheTokensAndABadFileKeepsTheOldOnes() throws {
    let path = NSTemporaryDirectory() + "caucus-tokens-\(UUID().uuidString.prefix(8)).json"
    defer { try? FileManager.default.removeItem(atPath: path) }
    func write(_ tokens: [(String, String)]) throws {
      let list = tokens.map { #"{"name":"\#($0.0)","role":"read","sha256":"\#(SHA256.hex(Array($0.1.utf8)))"}"# }
      try Data(#"{"tokens":[\#(list.joined(separator: ","))]}"#.utf8).write(to: URL(fileURLWithPath: path))
    }
    try write([("first", "token-1")])
    let store = try AccessTokenStore(path: path)
    XCTAssertEqual(store.tokens.token(bearer: "token-1")?.name, "first")
    try write([("second", "token-2")])
    XCTAssertEqual(try store.reload(), 1)
    XCTAssertNil(store.tokens.token(bearer: "token-1"), "a token gone from the file is refused after the reload")
    XCTAssertEqual(store.tokens.token(bearer: "token-2")?.name, "second")
    try Data("{broken".utf8).write(to: URL(fileURLWithPath: path))
    XCTAssertThrowsError(try store.reload())
    XCTAssertEqual(store.tokens.token(bearer: "token-2")?.name, "second", "a bad file changes nothing")
    try FileManager.default.removeItem(atPath: path)
    XCTAssertThrowsError(try store.reload())
    XCTAssertEqual(store.tokens.token(bearer: "token-2")?.name, "second", "a missing file changes nothing")
    XCTAssertThrowsError(try AccessTokenStore(path: path), "a node does not start without its tokens file")
  }
}

/// Every route, refused: with no token, a wrong one, one of too low a role, and ones scoped to
/// other groups or other keys, each answer is `401`/`403` as the contract says and nothing
/// changes. The routes come from `Route.Name.allCases`, so a new route is covered by
/// construction. The node is a standalone engine hosting the directory group, so the directory's
/// records are part of the state compared.
final class AccessTests: XCTestCase {
  private var dataDirectory = ""
  private var engine: StandaloneConsensus!
  private var gateway: Gateway!
  private let local = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))
  private var secrets: [String: String] = [:]

  /// Tokens by name: `(role, groups, keyPrefix)`; each one's bearer is `secret-<name>`.
  private let definitions: [(String, Permission, [String]?, String?)] = [
    ("admin", .admin, nil, nil),
    ("writer", .write, nil, nil),
    ("reader", .read, nil, nil),
    ("admin-of-other-groups", .admin, ["DataRegion-5*", "SchemaRegion-9"], nil),
    ("admin-of-other-keys", .admin, nil, "elsewhere/"),
    ("writer-of-users", .write, ["DataRegion-0"], "users/"),
  ]

  override func setUpWithError() throws {
    dataDirectory = NSTemporaryDirectory() + "caucus-access-\(UUID().uuidString.prefix(8))"
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    engine = StandaloneConsensus(config: ConsensusConfig(localPeer: local, dataDirectory: dataDirectory, registry: registry))
    try engine.start()
    for group in [ClusterDirectory.group, GroupID(.dataRegion, 0)] {
      try waitForCompletion { self.engine.createPeer(group, peers: [self.local], completion: $0) }.get()
    }
    gateway = makeGateway()
    let seeded = send("PUT", "/v1/groups/DataRegion-0/kv/k", "v", token: "admin")
    XCTAssertEqual(seeded.status, 200, text(seeded))
  }

  override func tearDown() {
    gateway.stop()
    engine.stop()
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }

  private func makeGateway(operationalOpen: Bool = true, peers: PeerAuthenticator? = nil) -> Gateway {
    let tokens = definitions.map { name, role, groups, prefix in
      AccessToken(
        name: name, role: role, scope: AccessScope(groups: groups, keyPrefix: prefix.map { Array($0.utf8) }),
        sha256: SHA256.hash(Array("secret-\(name)".utf8)))
    }
    let directory = ClusterDirectory(
      engine: engine, transport: nil, members: [local],
      localNode: DirectoryNode(id: local.node, clientURL: "http://127.0.0.1:6667", consensusEndpoint: local.endpoint),
      logger: Logger(label: "test.directory"))
    var configuration = GatewayConfiguration(
      clientURL: "http://127.0.0.1:6667", dataDirectory: dataDirectory, version: "test", members: [local], directory: directory)
    configuration.access = AccessPolicy(tokens: AccessTokenStore(try! AccessTokens(tokens)))
    configuration.access.metricsOpen = operationalOpen
    configuration.access.readinessOpen = operationalOpen
    configuration.peerAuthenticator = peers
    return Gateway(engine: engine, configuration: configuration)
  }

  private func send(
    _ method: String, _ target: String, _ body: String = "", token: String? = nil, authorization: String? = nil,
    headers: [(name: String, value: String)] = [], to gateway: Gateway? = nil
  ) -> HTTPResponse {
    var all = headers
    if let token { all.append(("authorization", "Bearer secret-\(token)")) }
    if let authorization { all.append(("authorization", authorization)) }
    let request = HTTPRequest(method: method, target: target, headers: all, body: Array(body.utf8))
    let target = gateway ?? self.gateway!
    return waitForCompletion { done in target.handle(request, responder: HTTPResponder { done($0) }) }
  }

  private func text(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }
  private func code(_ response: HTTPResponse) -> String? {
    ((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any])?["error"] as? String
  }

  /// Everything a request could change: the groups, each one's indexes, peers and leader (its
  /// keys move its commit index), the directory's records among them.
  private func state() -> String {
    engine.allGroupIDs().map { group in
      guard let status = engine.status(group) else { return "\(group) gone" }
      return "\(group) commit=\(status.commitIndex) applied=\(status.appliedIndex) snapshot=\(status.snapshotIndex) "
        + "peers=\(status.peers.map(\.peer)) leader=\(status.leader.map(\.description) ?? "none")"
    }.joined(separator: "\n")
  }

  /// The answer a route gives a token scoped elsewhere: 403, except where the scope has nothing
  /// to say (`GET /`), where the answer is filtered (`GET /v1/groups`), and, for a token limited to
  /// other keys, where the route reads a group's status and no key.
  private func expectedForScoped(_ name: Route.Name, keysOnly: Bool) -> Int {
    switch name.scopeRule {
    case .none, .filtered: return 200
    case .group: return keysOnly ? 200 : 403
    case .unrestricted, .wholeGroup, .pathKey, .queryPrefix, .bodyKeys: return 403
    }
  }

  func testEveryRouteRefusesMissingWrongTooWeakAndOutOfScopeTokensAndChangesNothing() {
    let before = state()
    var checked = 0
    for name in Route.Name.allCases {
      let sample = sampleRequest(name)
      let label = "\(sample.method) \(sample.target)"
      guard !gateway.configuration.access.isOpen(name) else {
        let answer = send(sample.method, sample.target, sample.body)
        XCTAssertFalse([401, 403].contains(answer.status), "\(label) is open: \(text(answer))")
        continue
      }
      var attempts: [(what: String, token: String?, authorization: String?, status: Int)] = [
        ("no token", nil, nil, 401),
        ("a wrong token", nil, "Bearer secret-nobody", 401),
        ("another scheme", nil, "Basic YWRtaW46YWRtaW4=", 401),
        ("an empty bearer", nil, "Bearer ", 401),
        ("a token scoped to other groups", "admin-of-other-groups", nil, expectedForScoped(name, keysOnly: false)),
        ("a token scoped to other keys", "admin-of-other-keys", nil, expectedForScoped(name, keysOnly: true)),
      ]
      if name.permission >= .write { attempts.append(("a read token", "reader", nil, 403)) }
      if name.permission >= .admin { attempts.append(("a write token", "writer", nil, 403)) }
      for attempt in attempts {
        let answer = send(sample.method, sample.target, sample.body, token: attempt.token, authorization: attempt.authorization)
        let context = "\(label) with \(attempt.what): \(answer.status) \(text(answer))"
        XCTAssertEqual(answer.status, attempt.status, context)
        switch answer.status {
        case 401:
          XCTAssertEqual(code(answer), "unauthorized", context)
          XCTAssertTrue(answer.header("WWW-Authenticate")?.hasPrefix("Bearer realm=\"caucus\"") == true, context)
        case 403:
          XCTAssertEqual(code(answer), "forbidden", context)
        default:
          break
        }
        XCTAssertEqual(state(), before, "\(context) changed something")
        checked += 1
      }
    }
    let openCount = Route.Name.allCases.filter { gateway.configuration.access.isOpen($0) }.count
    XCTAssertEqual(openCount, 4, "/healthz, /ui, and /metrics and /readyz (open by default)")
    XCTAssertGreaterThan(checked, 6 * (Route.Name.allCases.count - openCount))
    // The listing is filtered to the token's groups: none of this node's.
    let listed = send("GET", "/v1/groups", token: "admin-of-other-groups")
    XCTAssertEqual(listed.status, 200)
    XCTAssertFalse(text(listed).contains("Region-0"), text(listed))
  }

  /// The control: the admin token passes every route (the samples would do something), and the
  /// refusals above were for want of credentials, not for a sample that could never work.
  func testAnAdminTokenPassesEveryRoute() {
    for name in Route.Name.allCases {
      let sample = sampleRequest(name, group: "DataRegion-0")
      let answer = send(sample.method, sample.target, sample.body, token: "admin")
      XCTAssertFalse([401, 403].contains(answer.status), "\(sample.method) \(sample.target): \(text(answer))")
    }
  }

  func testATokenScopedToAGroupAndAKeyPrefixReachesOnlyThose() {
    let token = "writer-of-users"
    XCTAssertEqual(send("PUT", "/v1/groups/DataRegion-0/kv/users/alice", "31", token: token).status, 200)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv/users/alice", token: token).status, 200)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv?prefix=users/", token: token).status, 200)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv?prefix=users/a", token: token).status, 200)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv", token: token).status, 403, "a listing of every key")
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv/k", token: token).status, 403)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0", token: token).status, 200, "its group's status")
    XCTAssertEqual(send("GET", "/v1/groups/PartitionRegion-0/kv/nodes/1", token: token).status, 403, "another group")
    let before = state()
    let mixed = send(
      "POST", "/v1/groups/DataRegion-0/write", #"{"ops":[{"op":"put","key":"users/bob","value":"1"},{"op":"delete","key":"k"}]}"#,
      token: token)
    XCTAssertEqual(mixed.status, 403, text(mixed))
    XCTAssertEqual(state(), before, "no operation of a refused batch ran")
    let reads = send(
      "POST", "/v1/groups/DataRegion-0/read", #"{"ops":[{"op":"get","key":"users/alice"},{"op":"list","prefix":""}]}"#, token: token)
    XCTAssertEqual(reads.status, 403, text(reads))
    XCTAssertEqual(
      send("POST", "/v1/groups/DataRegion-0/read", #"{"ops":[{"op":"list","prefix":"users/"}]}"#, token: token).status, 200)
    let listed = send("GET", "/v1/groups", token: token)
    XCTAssertTrue(text(listed).contains("DataRegion-0") && !text(listed).contains("PartitionRegion-0"), text(listed))
    XCTAssertEqual(send("POST", "/v1/groups", #"{"id":"DataRegion-0"}"#, token: "admin-of-other-groups").status, 403)
  }

  /// The backup export reads the whole group: a read token reaches it, a token limited to a key
  /// prefix never does (even one with the prefix of every key there), and a group-scoped token
  /// only for its groups.
  func testTheSnapshotExportNeedsReadAndATokenNotLimitedToKeys() {
    let target = "/v1/groups/DataRegion-0/snapshot"
    let read = send("GET", target, token: "reader")
    XCTAssertEqual(read.status, 200, text(read))
    XCTAssertEqual(read.header("Content-Type"), "application/octet-stream")
    XCTAssertEqual(Array(read.body.prefix(8)), Array("CAUCUSBK".utf8))
    XCTAssertEqual(send("HEAD", target, token: "reader").status, 200)
    for token in ["writer-of-users", "admin-of-other-keys"] {
      let refused = send("GET", target, token: token)
      XCTAssertEqual(refused.status, 403, "\(token): \(text(refused))")
      XCTAssertEqual(code(refused), "forbidden")
      XCTAssertTrue(text(refused).contains("the whole group"), text(refused))
    }
    XCTAssertEqual(send("GET", target, token: "admin-of-other-groups").status, 403)
    XCTAssertEqual(send("GET", target).status, 401)
  }

  /// Issue 13, point 5d: a key prefix named in base64 (`prefixBase64`, `keyBase64`) is held to the
  /// token's key prefix as its text form is: base64 is no way around the scope.
  func testAScopedTokenCannotGetAroundItsKeyPrefixWithBase64() {
    let token = "writer-of-users"
    func base64(_ text: String) -> String { String(decoding: Base64.encode(Array(text.utf8)), as: UTF8.self) }
    let inside = base64("users/"), outside = base64("elsewhere/"), everything = base64("")
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv?prefixBase64=\(inside)", token: token).status, 200)
    for prefix in [outside, everything] {
      let listing = send("GET", "/v1/groups/DataRegion-0/kv?prefixBase64=\(prefix)", token: token)
      XCTAssertEqual(listing.status, 403, "listing \(prefix): \(text(listing))")
      let watch = send("GET", "/v1/groups/DataRegion-0/watch?prefixBase64=\(prefix)&timeoutMs=0", token: token)
      XCTAssertEqual(watch.status, 403, "watching \(prefix): \(text(watch))")
      let read = send(
        "POST", "/v1/groups/DataRegion-0/read", #"{"ops":[{"op":"list","prefixBase64":"\#(prefix)"}]}"#, token: token)
      XCTAssertEqual(read.status, 403, "reading \(prefix): \(text(read))")
    }
    let before = state()
    let write = send(
      "POST", "/v1/groups/DataRegion-0/write", #"{"ops":[{"op":"put","keyBase64":"\#(base64("k"))","value":"x"}]}"#, token: token)
    XCTAssertEqual(write.status, 403, text(write))
    XCTAssertEqual(state(), before, "the refused write changed nothing")
    // A malformed base64 prefix is the caller's error (400), answered before any data is read.
    let malformed = send("GET", "/v1/groups/DataRegion-0/kv?prefixBase64=%25%25", token: token)
    XCTAssertEqual(malformed.status, 400, text(malformed))
    XCTAssertEqual(code(malformed), "invalid_key")
  }

  /// `/metrics` and `/readyz` open by default; configured to need a read token, they refuse
  /// none (401) and a scoped token (403: they are about the whole node), and answer a read token.
  func testMetricsAndReadinessCanRequireAReadToken() {
    XCTAssertEqual(send("GET", "/metrics").status, 200)
    XCTAssertEqual(send("GET", "/healthz").status, 200)
    let closed = makeGateway(operationalOpen: false)
    defer { closed.stop() }
    for target in ["/metrics", "/readyz"] {
      XCTAssertEqual(send("GET", target, to: closed).status, 401, target)
      XCTAssertEqual(send("GET", target, token: "admin-of-other-groups", to: closed).status, 403, target)
      XCTAssertEqual(send("GET", target, token: "reader", to: closed).status, 200, target)
    }
    XCTAssertEqual(send("GET", "/healthz", to: closed).status, 200, "/healthz is always open")
  }

  /// The dashboard page is open even where nothing else is (it carries no data); what it shows
  /// comes from `/v1/cluster` and the group routes, which need their tokens as ever.
  func testTheDashboardPageIsOpenAndItsDataIsNot() {
    let closed = makeGateway(operationalOpen: false)
    defer { closed.stop() }
    XCTAssertEqual(send("GET", "/ui", to: closed).status, 200)
    XCTAssertEqual(send("GET", "/v1/cluster", to: closed).status, 401)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0", to: closed).status, 401)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0", token: "reader", to: closed).status, 200)
  }

  /// Unknown paths and wrong methods answer 401 to a caller without credentials (the surface is
  /// not revealed), and their own error to one with a token.
  func testAMismatchNeedsCredentialsBeforeItsOwnError() {
    XCTAssertEqual(send("GET", "/v1/nowhere").status, 401)
    XCTAssertEqual(send("GET", "/v1/nowhere", token: "reader").status, 404)
    XCTAssertEqual(send("PATCH", "/v1/groups/DataRegion-0", token: "reader").status, 405)
    XCTAssertEqual(send("POST", "/healthz").status, 405, "an open endpoint's own error")
  }

  /// Another node's request, proven with the cluster secret, is the cluster's own: admitted
  /// without a token. A proof of another secret is no proof: the token is what counts then.
  func testAPeersProofAdmitsItsRequestAndABadProofDoesNot() throws {
    let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    let peers = try PeerAuthenticator(secret: secret, node: 2)
    let proving = makeGateway(peers: try PeerAuthenticator(secret: secret, node: 1))
    defer { proving.stop() }
    let target = "/v1/groups/DataRegion-0/kv/from-a-peer"
    let proof = peers.headerValue(method: "PUT", target: target, identity: nil, body: Array("v".utf8), nowMs: PeerAuthenticator.wallClockMilliseconds())
    XCTAssertEqual(send("PUT", target, "v", headers: [(PeerAuthenticator.headerName, proof)], to: proving).status, 200)
    let stranger = try PeerAuthenticator(secret: Array("another secret, another cluster".utf8), node: 2)
    let forged = stranger.headerValue(method: "PUT", target: target, identity: nil, body: Array("v".utf8), nowMs: PeerAuthenticator.wallClockMilliseconds())
    XCTAssertEqual(send("PUT", target, "v", headers: [(PeerAuthenticator.headerName, forged)], to: proving).status, 401)
    let otherBody = send("PUT", target, "changed", headers: [(PeerAuthenticator.headerName, proof)], to: proving)
    XCTAssertEqual(otherBody.status, 401, "a proof covers the body it was made for")
  }

  /// Registration is for the cluster's own nodes: with a cluster secret it needs the secret's
  /// proof even when no tokens are configured (where every other route is open).
  func testRegistrationNeedsThePeersProofEvenWithTokensOff() throws {
    let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    let joining = try PeerAuthenticator(secret: secret, node: 9)
    var configuration = gateway.configuration
    configuration.access = AccessPolicy()
    configuration.peerAuthenticator = try PeerAuthenticator(secret: secret, node: 1)
    let open = Gateway(engine: engine, configuration: configuration)
    defer { open.stop() }
    let target = "/v1/cluster/nodes"
    let body = #"{"id":9,"clientURL":"http://127.0.0.1:1","consensusEndpoint":"127.0.0.1:2"}"#
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/kv/k", to: open).status, 200, "tokens off: data routes are open")
    let before = state()
    let unproven = send("POST", target, body, to: open)
    XCTAssertEqual(unproven.status, 401, text(unproven))
    XCTAssertEqual(unproven.header("WWW-Authenticate"), "Caucus-Peer")
    let forged = try PeerAuthenticator(secret: Array("another secret, another cluster".utf8), node: 9).headerValue(
      method: "POST", target: target, identity: nil, body: Array(body.utf8), nowMs: PeerAuthenticator.wallClockMilliseconds())
    XCTAssertEqual(send("POST", target, body, headers: [(PeerAuthenticator.headerName, forged)], to: open).status, 401)
    XCTAssertEqual(state(), before, "nothing registered")
    let proof = joining.headerValue(
      method: "POST", target: target, identity: nil, body: Array(body.utf8), nowMs: PeerAuthenticator.wallClockMilliseconds())
    let proven = send("POST", target, body, headers: [(PeerAuthenticator.headerName, proof)], to: open)
    XCTAssertNotEqual(proven.status, 401, "a node of the cluster registers: \(text(proven))")
  }

  /// A request another node relays for a client is the client's, by the name the relaying node
  /// admitted (`X-Caucus-Identity`), with this node's role and scope for that name; without the
  /// name, the relayed Authorization is checked here; without a proof, neither header counts.
  func testARelayedRequestIsItsCallersByTheNameTheRelayingNodeAdmitted() throws {
    let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    let relaying = try PeerAuthenticator(secret: secret, node: 2)
    let serving = makeGateway(peers: try PeerAuthenticator(secret: secret, node: 1))
    defer { serving.stop() }
    let target = "/v1/groups/DataRegion-0/kv/relayed"
    /// `signedFor`: the identity the proof was made for, when another than the one sent.
    func relayed(identity: String?, token: String? = nil, proven: Bool = true, signedFor: String?? = nil) -> HTTPResponse {
      var headers: [(name: String, value: String)] = [("x-caucus-forwarded-by", "2"), ("x-caucus-hops", "1")]
      if let identity { headers.append(("x-caucus-identity", identity)) }
      if proven {
        let proof = relaying.headerValue(
          method: "PUT", target: target, identity: signedFor ?? identity, body: Array("v".utf8),
          nowMs: PeerAuthenticator.wallClockMilliseconds())
        headers.append((PeerAuthenticator.headerName, proof))
      }
      return send("PUT", target, "v", token: token, headers: headers, to: serving)
    }
    let before = state()
    XCTAssertEqual(relayed(identity: "reader").status, 403, "a read token relayed still cannot write")
    XCTAssertEqual(relayed(identity: "reader", token: "admin").status, 403, "the name decides, not a relayed token")
    XCTAssertEqual(relayed(identity: "admin-of-other-keys").status, 403, "the scope of the name applies")
    XCTAssertEqual(relayed(identity: "somebody").status, 401, "a name this node does not know")
    XCTAssertEqual(relayed(identity: nil).status, 401, "no name: the relayed Authorization is checked, and there is none")
    XCTAssertEqual(relayed(identity: nil, token: "reader").status, 403)
    XCTAssertEqual(relayed(identity: "admin", token: "reader", proven: false).status, 403, "without a proof the name means nothing")
    XCTAssertEqual(relayed(identity: "admin", proven: false).status, 401)
    // The proof covers the identity: a relay made for a read token, replayed as an admin's, is
    // no proof (and then, with no token of its own, unauthorized).
    XCTAssertEqual(relayed(identity: "admin", signedFor: "reader").status, 401, "the identity swapped")
    XCTAssertEqual(relayed(identity: "writer", signedFor: .some(nil)).status, 401, "an identity added to a proof made without one")
    XCTAssertEqual(state(), before, "nothing refused changed anything")
    XCTAssertEqual(relayed(identity: "writer").status, 200, "a write token relayed can write")
    XCTAssertEqual(relayed(identity: "@cluster").status, 200, "the relaying node's own request")
    XCTAssertEqual(relayed(identity: nil, token: "writer").status, 200)
  }
}
