import Consensus
import Directory

import HTTPServer
import JSON
import KeyValueStore
import Platform
import Synchronization

/// Errors a request can meet before or after the engine; each maps to one status and code of API.md.
enum GatewayError: Error {
  case notFound
  case methodNotAllowed(allowed: [String])
  case badRequest(String)
  case invalidJSON(String)
  case invalidGroupID(String)
  case invalidKey(String)
  case keyNotFound(KVBytes)
  case payloadTooLarge(String, limitBytes: Int)
  case notImplemented(String)
  case consensus(ConsensusError)
  /// A peer refused its part of an operation this node coordinates with a definite 4xx (say
  /// `409 group_limit_reached` from its `POST /v1/node/groups`): the answer keeps its status,
  /// code, message and context fields, and names the node.
  case refusedByPeer(node: NodeID, status: Int, code: String, message: String, context: [(String, JSONValue)])
  /// An error whose message gains `note`: what to do next, or what became of the rest of an
  /// operation on many peers.
  indirect case explained(GatewayError, note: String)
  case forwardLoop(hops: Int)
  /// No valid credentials (`401 unauthorized`, with `WWW-Authenticate: <challenge>`).
  case unauthorized(String, challenge: String)
  /// Valid credentials that do not reach this request: too low a role, or out of the token's
  /// scope (`403 forbidden`).
  case forbidden(String)
  case `internal`(String)
}

/// One request and its single answer. Answering twice is a programmer error caught here; the
/// completion may run on any thread.
final class Exchange: Sendable {
  let request: HTTPRequest
  /// The target's path, still percent-encoded.
  let path: Substring
  /// The target's query parameters, decoded once.
  let query: QueryParameters
  /// The route the method and path name, or why they name none (`Route.match`, once per request).
  let match: Result<Route, Route.Mismatch>
  /// Who the request comes from, or why it is refused (`AccessPolicy.admit`), decided once
  /// before it runs.
  let admission: Result<Caller, GatewayError>
  private let send: @Sendable (HTTPResponse, String) -> Void
  private let answered = Atomic<Bool>(false)
  /// Set before a deadline answers, so the engine's late completion is recognized and dropped.
  private let expired = Atomic<Bool>(false)
  /// How often the request looked for another member hosting its group (again only while it
  /// may still wait for a leader).
  private let located = Atomic<Int>(0)
  /// Whether a look found the group hosted elsewhere: then running out of time to find its
  /// leader is `503 no_leader`, never `404 group_not_found` (the group exists).
  private let foundElsewhere = Atomic<Bool>(false)
  /// Whether this node handed the request's write to the leader inside the consensus protocol:
  /// its answer then names this node in `X-Caucus-Forwarded-By`, as a relayed one does.
  private let forwardedInProtocol = Atomic<Bool>(false)

  let context: GatewayContext
  /// Runs the request again (after waiting for an election); set by the gateway.
  private let redispatch: @Sendable (Exchange) -> Void
  /// Until when a request that finds no leader waits for one before `503 no_leader`.
  private let noLeaderDeadlineMs: UInt64

  init(
    request: HTTPRequest, context: GatewayContext,
    admit: (HTTPRequest, Result<Route, Route.Mismatch>, QueryParameters) -> Result<Caller, GatewayError> = { _, _, _ in
      .success(.anyone)
    },
    redispatch: @escaping @Sendable (Exchange) -> Void, send: @escaping @Sendable (HTTPResponse, String) -> Void
  ) {
    self.context = context
    self.redispatch = redispatch
    self.noLeaderDeadlineMs = MonotonicClock.nowMilliseconds() + UInt64(context.noLeaderWaitMs)
    self.request = request
    if let mark = request.target.utf8.firstIndex(of: UInt8(ascii: "?")) {
      path = request.target[..<mark]
      query = QueryParameters(request.target[request.target.utf8.index(after: mark)...])
    } else {
      path = request.target[...]
      query = QueryParameters("")
    }
    match = Route.match(method: request.method, path: path)
    admission = admit(request, match, query)
    self.send = send
  }

  /// Who the request comes from; asked only of admitted requests.
  var caller: Caller {
    guard case .success(let caller) = admission else { preconditionFailure("a refused request does not run") }
    return caller
  }

  /// The matched route; nil when the request matched none.
  var route: Route? { try? match.get() }

  /// The metrics and log label: the route's name, or the endpoint's when the path got that far.
  var label: String {
    switch match {
    case .success(let route): return route.label
    case .failure(let mismatch): return mismatch.label
    }
  }

  func respond(_ response: HTTPResponse) {
    let (exchanged, _) = answered.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
    guard exchanged else {
      // Only a deadline may have answered first; the engine's late completion is then dropped.
      precondition(expired.load(ordering: .acquiring), "a request is answered once")
      return
    }
    var response = response
    // A relayed answer (the fallback) already carries it.
    if forwardedInProtocol.load(ordering: .acquiring),
      !response.headers.contains(where: { $0.name.lowercased() == "x-caucus-forwarded-by" })
    {
      response.headers.append(("X-Caucus-Forwarded-By", context.engine.localPeer.node.description))
    }
    send(response, label)
  }

  /// `?forward=`, already checked by `parseForward`; `proxy` when absent, and on routes that do
  /// not take it (they ignore it).
  var forwardMode: ForwardMode {
    guard route?.name.takesForwardMode == true else { return .proxy }
    return query["forward"].flatMap(ForwardMode.init(rawValue:)) ?? .proxy
  }

  /// How many nodes relayed this request to this one.
  var hops: Int { request.header("x-caucus-hops").flatMap { Int($0) } ?? 0 }

  /// How a write to `group` goes to the leader from here: inside the consensus protocol when this
  /// node hosts the group, knows another node leads it, and the caller asked for `proxy` with hops
  /// to spare (so that the hop limit means what it did); otherwise the engine refuses and `fail`
  /// takes the HTTP path (relay, redirect, hint, wait for an election, locate the group).
  func writeForwarding(_ group: GroupID) -> WriteForwarding {
    let engine = context.engine
    let inProtocol =
      context.forwarder != nil && forwardMode == .proxy && hops < LeaderForwarder.hopsMax
      && engine.leader(group).map { $0.node != engine.localPeer.node } == true
    // Set on every attempt: one that waited for an election may find this node leading.
    forwardedInProtocol.store(inProtocol, ordering: .releasing)
    return inProtocol ? .toLeader : .refuse
  }

  /// The deadline passed with no answer: answer `504 timeout` (unless the answer just came).
  func expire(group: GroupID?, indeterminate: Bool) {
    guard !answered.load(ordering: .acquiring) else { return }
    expired.store(true, ordering: .releasing)
    fail(.consensus(.timeout(indeterminate: indeterminate)), group: group)
  }

  var isAnswered: Bool { answered.load(ordering: .acquiring) }

  func respond(json body: [UInt8], status: Int = 200, headers: [(name: String, value: String)] = []) {
    respond(HTTPResponse(status: status, headers: headers + [jsonContentType], body: body))
  }

  /// The body as JSON; an empty or malformed body is `400 invalid_json`.
  func jsonBody() throws(GatewayError) -> JSONValue {
    guard !request.body.isEmpty else { throw .invalidJSON("the request needs a JSON body") }
    do {
      return try JSONParser.parse(request.body)
    } catch {
      throw .invalidJSON("the body is not valid JSON: \(error)")
    }
  }

  func fail(_ gatewayError: GatewayError, group: GroupID? = nil) {
    // Not the leader: forward, redirect or hint, as the caller asked (API.md "Leader forwarding").
    if case .consensus(.notLeader(_, let leader?)) = gatewayError, let forwarder = context.forwarder {
      return forward(to: leader, forwarder, group: group)
    }
    // A group this node does not host: find a member that does, and go to its leader. Node-local
    // routes (`/v1/node/…`) are about this node only and never leave it.
    if case .consensus(.groupNotFound(let missing)) = gatewayError, let forwarder = context.forwarder,
      let locate = context.locate, route?.name.isNodeLocal != true,
      // Requests from other nodes (forwarded, or a node asking where a group lives) never look
      // further: one node's question must not fan out across the cluster again.
      request.header("x-caucus-hops") == nil,
      located.wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue == 0
        || MonotonicClock.nowMilliseconds() < noLeaderDeadlineMs
    {
      return locate(missing) { [self] found in
        if case .nowhere = found {} else { foundElsewhere.store(true, ordering: .releasing) }
        switch found {
        case .leader(let leader): forward(to: leader, forwarder, group: missing)
        case .noLeader: fail(.consensus(.noLeader(missing)), group: missing)
        case .nowhere: answerError(gatewayError, group: group)
        }
      }
    }
    // No leader yet (an election is under way): wait briefly, then try the request again.
    if context.forwarder != nil, MonotonicClock.nowMilliseconds() < noLeaderDeadlineMs {
      switch gatewayError {
      case .consensus(.noLeader), .consensus(.notLeader(_, leader: nil)):
        return context.after(GatewayContext.noLeaderRetryMs) { [self] in redispatch(self) }
      default: break
      }
    }
    if case .consensus(.groupNotFound(let missing)) = gatewayError, foundElsewhere.load(ordering: .acquiring) {
      return answerError(.consensus(.noLeader(missing)), group: group)
    }
    answerError(gatewayError, group: group)
  }

  private func forward(to leader: Peer, _ forwarder: LeaderForwarder, group: GroupID?) {
    let mode = forwardMode
    let hops = self.hops
    if mode != .none && hops >= LeaderForwarder.hopsMax {
      return answerError(.forwardLoop(hops: hops), group: group)
    }
    let unreachable = GatewayError.consensus(.noLeader(group ?? GroupID(.dataRegion, 0)))
    forwarder.clientURL(of: leader) { [self] url in
      guard let url else {
        // The leader does not answer (it may have just died): wait for an election, as with no leader.
        return fail(unreachable, group: group)
      }
      switch mode {
      case .none:
        answerError(.consensus(.notLeader(group ?? GroupID(.dataRegion, 0), leader: leader)), group: group)
      case .redirect:
        respond(HTTPResponse(status: 307, headers: [("Location", url + request.target)]))
      case .proxy:
        forwarder.relay(request, to: url, hops: hops, identity: caller.forwardedIdentity) { [self] result in
          switch result {
          case .success(let response) where saysGroupNotHosted(status: response.status, body: response.body):
            // The node we took for the leader no longer hosts the group (it was just removed):
            // nothing happened there; wait for the leader to be known here, as with no leader.
            fail(unreachable, group: group)
          case .success(let response):
            respond(response)
          case .failure(.connectFailed):
            // Never reached the old leader: nothing happened there; wait for the new one.
            fail(unreachable, group: group)
          case .failure:
            // Sent, but no answer: a write may or may not have been applied.
            let changesState = route?.changesState ?? true
            answerError(.consensus(.timeout(indeterminate: changesState)), group: group)
          }
        }
      }
    }
  }

  private func answerError(_ explainedError: GatewayError, group: GroupID?) {
    var headers: [(name: String, value: String)] = [jsonContentType]
    var writer = JSONWriter()
    writer.beginObject()
    var gatewayError = explainedError
    var note = ""
    while case .explained(let inner, let more) = gatewayError {
      gatewayError = inner
      note = more + note
    }
    func code(_ status: Int, _ code: String, _ message: String) -> Int {
      writer.member("error", code)
      writer.member("message", message + note)
      return status
    }
    let status: Int
    switch gatewayError {
    case .notFound:
      status = code(404, "not_found", "no route matches \(request.method) \(path)")
    case .methodNotAllowed(let allowed):
      headers.append(("Allow", allowed.joined(separator: ", ")))
      status = code(405, "method_not_allowed", "\(request.method) is not allowed here; allowed: \(allowed.joined(separator: ", "))")
    case .badRequest(let message):
      status = code(400, "bad_request", message)
    case .invalidJSON(let message):
      status = code(400, "invalid_json", message)
    case .invalidGroupID(let text):
      status = code(400, "invalid_group_id", "'\(text)' is not a group id; expected <DataRegion|SchemaRegion|PartitionRegion>-<n>, e.g. DataRegion-1")
    case .invalidKey(let message):
      status = code(400, "invalid_key", message)
    case .keyNotFound(let key):
      status = code(404, "key_not_found", "the key does not exist")
      writeKey(&writer, key)
    case .payloadTooLarge(let message, let limitBytes):
      status = code(413, "payload_too_large", message)
      writer.member("limitBytes", limitBytes)
    case .notImplemented(let message):
      status = code(501, "not_implemented", message)
    case .unauthorized(let message, let challenge):
      headers.append(("WWW-Authenticate", challenge))
      status = code(401, "unauthorized", message)
    case .forbidden(let message):
      status = code(403, "forbidden", message)
    case .internal(let message):
      status = code(500, "internal", message)
    case .refusedByPeer(let node, let refusedStatus, let refusedCode, let message, let context):
      precondition((400..<500).contains(refusedStatus), "only a peer's definite refusal (4xx) is passed on")
      status = code(refusedStatus, refusedCode, message)
      for (name, value) in context where !["error", "message", "node", "group"].contains(name) {
        writer.key(name)
        writer.value(value)
      }
      writer.member("node", node.rawValue)
    case .explained: preconditionFailure("the notes were taken off above")
    case .forwardLoop(let hops):
      status = code(508, "forward_loop", "the request was already forwarded \(hops) times; the cluster's view of the leader is changing")
    case .consensus(let error):
      switch error {
      case .groupAlreadyExists: status = code(409, "group_already_exists", error.description)
      case .groupNotFound: status = code(404, "group_not_found", error.description)
      case .illegalPeerNumber: status = code(400, "illegal_peer_num", error.description)
      case .peerAlreadyInGroup: status = code(409, "peer_already_in_group", error.description)
      case .peerNotInGroup: status = code(404, "peer_not_in_group", error.description)
      case .notLeader(_, let leader):
        status = code(421, "not_leader", error.description)
        writer.key("leader")
        if let leader {
          writer.beginObject()
          writer.member("id", leader.node.rawValue)
          writer.member("url", context.clientURL(of: leader))
          writer.endObject()
        } else {
          writer.null()
        }
      case .noLeader:
        headers.append(("Retry-After", "1"))
        status = code(503, "no_leader", error.description)
      case .overloaded(let retryAfterMs):
        headers.append(("Retry-After", String(max(1, (retryAfterMs + 999) / 1000))))
        status = code(503, "overloaded", error.description)
      case .timeout(let indeterminate):
        status = code(504, "timeout", error.description)
        writer.member("indeterminate", indeterminate)
      case .notSupported(let message):
        status = code(400, "bad_request", message)
      case .shuttingDown:
        headers.append(("Retry-After", "1"))
        status = code(503, "not_ready", error.description)
      case .storage:
        headers.append(("Retry-After", "1"))
        status = code(503, "not_ready", error.description)
      case .outOfSpace(let directory, let retryAfterMs):
        // 507 (RFC 4918): the server cannot store what the request needs; it passes when space
        // returns, so the client may retry after the engine's next attempt.
        headers.append(("Retry-After", String(max(1, (retryAfterMs + 999) / 1000))))
        status = code(507, "insufficient_storage", error.description)
        writer.member("dataDir", directory)
      case .invalidRequest(let message):
        status = code(400, "bad_request", message)
      case .groupLimitReached(let node, let limit, _):
        // 409, not 503: the node is not failing, the request conflicts with what it hosts; it
        // passes only when an operator deletes groups there or raises the limit.
        status = code(409, "group_limit_reached", error.description)
        writer.member("node", node.rawValue)
        writer.member("limit", limit)
      }
    }
    if let group {
      writer.member("group", group.description)
      headers.append(contentsOf: context.groupHeaders(group))
    }
    writer.endObject()
    respond(HTTPResponse(status: status, headers: headers, body: writer.bytes))
  }
}

/// What error answers need to know about the node: the engine (leader, index) and client URLs.
struct GatewayContext: Sendable {
  let engine: any ConsensusEngine
  let localClientURL: String
  /// Relays requests to other nodes' leaders; nil for a single node.
  let forwarder: LeaderForwarder?
  /// How long a request waits for an election before `503 no_leader`.
  let noLeaderWaitMs: UInt32
  /// Runs an action later, off the event loop.
  let after: @Sendable (UInt32, @escaping @Sendable () -> Void) -> Void
  /// Finds the leader of a group this node does not host, asking the other members; nil alone.
  let locate: (@Sendable (GroupID, @escaping @Sendable (GroupLocation) -> Void) -> Void)?
  /// How often a request waiting for a leader tries again.
  static let noLeaderRetryMs: UInt32 = 50

  /// `X-Caucus-Leader` when a leader is known, and `X-Caucus-Index` (the applied index).
  func groupHeaders(_ group: GroupID) -> [(name: String, value: String)] {
    guard let status = engine.status(group) else { return [] }
    var headers: [(name: String, value: String)] = [("X-Caucus-Index", String(status.appliedIndex))]
    if let leader = status.leader { headers.append(("X-Caucus-Leader", leader.node.description)) }
    return headers
  }

  /// A peer's client URL. Standalone knows only its own; the cluster directory will know the rest.
  func clientURL(of peer: Peer) -> String {
    peer.node == engine.localPeer.node ? localClientURL : forwarder?.knownClientURL(of: peer.node) ?? ""
  }
}

/// The query string's parameters, percent-decoded (`+` stays `+`: RFC 3986, not HTML forms).
/// A name given twice keeps its first value.
struct QueryParameters: Sendable {
  private var values: [(String, String)] = []
  private(set) var malformed: String?

  init(_ query: Substring) {
    guard !query.isEmpty else { return }
    for pair in query.split(separator: "&") {
      let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
      guard let name = percentDecode(parts[0].utf8).flatMap({ String(validating: $0, as: UTF8.self) }),
        let value = percentDecode((parts.count > 1 ? parts[1] : "").utf8).flatMap({ String(validating: $0, as: UTF8.self) })
      else {
        malformed = String(pair)
        continue
      }
      values.append((name, value))
    }
  }

  subscript(name: String) -> String? { values.first(where: { $0.0 == name })?.1 }
}

/// Decodes `%XX` escapes; nil on a malformed escape.
func percentDecode(_ encoded: some Collection<UInt8>) -> [UInt8]? {
  var output: [UInt8] = []
  output.reserveCapacity(encoded.count)
  var iterator = encoded.makeIterator()
  while let byte = iterator.next() {
    if byte == UInt8(ascii: "%") {
      guard let high = iterator.next().flatMap(Hex.digitValue), let low = iterator.next().flatMap(Hex.digitValue) else { return nil }
      output.append(high << 4 | low)
    } else {
      output.append(byte)
    }
  }
  return output
}

func parseGroup(_ text: Substring) throws(GatewayError) -> GroupID {
  guard let group = GroupID(String(text)) else { throw .invalidGroupID(String(text.prefix(200))) }
  return group
}

func parseForward(_ exchange: Exchange) throws(GatewayError) {
  if let forward = exchange.query["forward"], !["proxy", "redirect", "none"].contains(forward) {
    throw .badRequest("forward must be proxy, redirect or none, not '\(forward.prefix(200))'")
  }
}

func decodeKey(_ encoded: some Collection<UInt8>) throws(GatewayError) -> KVBytes {
  guard let key = percentDecode(encoded) else { throw .invalidKey("the key has a malformed percent-escape") }
  guard !key.isEmpty else { throw .invalidKey("the key is empty") }
  guard key.count <= KVLimits.keyBytesMax else {
    throw .invalidKey("the key is \(key.count) bytes; the limit is \(KVLimits.keyBytesMax)")
  }
  return key
}

/// `If-Match: "<rev>"` → revision must equal; `If-None-Match: *` → key must be absent.
func requestPrecondition(_ request: HTTPRequest) throws(GatewayError) -> KVPrecondition {
  let ifMatch = request.header("if-match")
  let ifNoneMatch = request.header("if-none-match")
  if ifMatch != nil && ifNoneMatch != nil { throw .badRequest("give If-Match or If-None-Match, not both") }
  if let ifNoneMatch {
    guard ifNoneMatch.trimmingSpaces() == "*" else { throw .badRequest("If-None-Match supports only *") }
    return .absent
  }
  if let ifMatch {
    var text = Substring(ifMatch.trimmingSpaces())
    if text.hasPrefix("W/") { text = text.dropFirst(2) }
    if text.count >= 2, text.first == "\"", text.last == "\"" { text = text.dropFirst().dropLast() }
    guard let revision = UInt64(text) else {
      throw .badRequest("If-Match must be a revision in quotes, e.g. If-Match: \"42\"")
    }
    // Revision 0 names a key that does not exist, as `ifRevision: 0` does.
    return revision == 0 ? .absent : .revisionEquals(revision)
  }
  return .none
}

func idempotencyKey(_ request: HTTPRequest) throws(GatewayError) -> String? {
  guard let key = request.header("idempotency-key") else { return nil }
  guard !key.isEmpty, key.utf8.count <= GatewayLimits.idempotencyKeyBytesMax,
    key.utf8.allSatisfy({ (0x21...0x7E).contains($0) })
  else {
    throw .badRequest("Idempotency-Key must be 1 to \(GatewayLimits.idempotencyKeyBytesMax) printable ASCII characters")
  }
  return key
}

/// `"key"` (UTF-8 text) or `"keyBase64"` (any bytes) of a JSON operation.
func jsonKey(_ item: JSONValue, context: String) throws(GatewayError) -> KVBytes {
  guard let key = try jsonKeyBound(item, "key", context: context) else {
    throw .invalidKey("\(context) needs \"key\" (text) or \"keyBase64\"")
  }
  guard !key.isEmpty else { throw .invalidKey("\(context).key must not be empty") }
  return key
}

/// A key or key bound of a JSON operation, named as text (`name`) or as base64 (`nameBase64`, for
/// keys that are not UTF-8, as listings answer them), never both; nil when neither is given.
func jsonKeyBound(_ item: JSONValue, _ name: String, context: String) throws(GatewayError) -> KVBytes? {
  func text(_ field: String) throws(GatewayError) -> String? {
    guard let value = item[field] else { return nil }
    guard let text = value.stringValue else { throw .badRequest("\(context).\(field) must be a string") }
    return text
  }
  return try keyBound(text: try text(name), base64: try text(name + "Base64"), name: "\(context).\(name)")
}

/// A key or key bound of the query string: `?name=` (text) or `?nameBase64=` (padded base64 of any
/// bytes), never both; nil when neither is given.
func queryKeyBound(_ query: QueryParameters, _ name: String) throws(GatewayError) -> KVBytes? {
  try keyBound(text: query[name], base64: query[name + "Base64"], name: name)
}

/// The one decoding behind `jsonKeyBound` and `queryKeyBound`: at most `KVLimits.keyBytesMax` bytes.
func keyBound(text: String?, base64: String?, name: String) throws(GatewayError) -> KVBytes? {
  let bytes: KVBytes
  switch (text, base64) {
  case (nil, nil): return nil
  case (.some(let text), nil): bytes = Array(text.utf8)
  case (nil, .some(let encoded)):
    guard let decoded = Base64.decode(Array(encoded.utf8)) else {
      throw .invalidKey("\(name)Base64 must be padded base64 (RFC 4648, + and /)")
    }
    bytes = decoded
  case (.some, .some): throw .invalidKey("give \(name) or \(name)Base64, not both")
  }
  guard bytes.count <= KVLimits.keyBytesMax else {
    throw .invalidKey("\(name) is \(bytes.count) bytes; the limit is \(KVLimits.keyBytesMax)")
  }
  return bytes
}

/// `"value"` (UTF-8 text) or `"valueBase64"` of a JSON put.
func jsonValue(_ item: JSONValue, context: String) throws(GatewayError) -> KVBytes {
  switch (item["value"], item["valueBase64"]) {
  case (.some(let value), nil):
    guard let text = value.stringValue else { throw .badRequest("\(context).value must be a string") }
    return Array(text.utf8)
  case (nil, .some(let encoded)):
    guard let text = encoded.stringValue, let bytes = Base64.decode(Array(text.utf8)) else {
      throw .badRequest("\(context).valueBase64 must be padded base64")
    }
    return bytes
  case (nil, nil): throw .badRequest("\(context) needs \"value\" or \"valueBase64\"")
  default: throw .badRequest("\(context) has both \"value\" and \"valueBase64\"")
  }
}

func parseBool(_ text: String?, name: String) throws(GatewayError) -> Bool? {
  guard let text else { return nil }
  switch text {
  case "true", "1", "": return true
  case "false", "0": return false
  default: throw .badRequest("\(name) must be true or false, not '\(text)'")
  }
}

func parseCount(_ text: String?, name: String, default value: Int, max: Int) throws(GatewayError) -> Int {
  guard let text else { return value }
  guard let number = Int(text), number >= 1, number <= max else {
    throw .badRequest("\(name) must be an integer from 1 to \(max), not '\(text)'")
  }
  return number
}
