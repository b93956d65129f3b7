import Consensus
import Directory
import HTTPServer
import JSON
import KeyValueStore
import Logging
import PeerClient
import Platform

public struct GatewayConfiguration: Sendable {
  /// This node's client URL, `http://host:port`, as other nodes and redirects name it.
  public var clientURL: String
  public var dataDirectory: String
  public var version: String
  /// The largest value a write may carry. The HTTP server's body limit sits a little above it so
  /// that an oversized value is answered by the gateway with the limit named.
  public var valueBytesMax: Int
  /// How long a stale read may wait for `minIndex` to be applied.
  public var readWaitMsMax: UInt32
  /// How long a request may wait for the engine before it is answered `504 timeout`
  /// (`indeterminate: true` for writes: the write may still be applied). Watches have their own.
  public var requestTimeoutMs: UInt32
  /// Relays requests for groups led elsewhere to their leader (multi-node protocols).
  public var forwarder: LeaderForwarder?
  /// The nodes this node knows (the static cluster list), so requests may name peers by id.
  public var members: [Peer] = []
  /// The cluster directory (`PartitionRegion-0`): nodes and group placement; nil for a single node.
  public var directory: ClusterDirectory?
  /// More Prometheus text for `/metrics` from the wiring (the node-to-node transport's counters).
  public var additionalMetrics: (@Sendable () -> String)?
  /// With a cluster secret: `POST /v1/cluster/nodes` (a node joining) needs its proof, as the
  /// consensus port does (`PeerAuthenticator`).
  public var peerAuthenticator: PeerAuthenticator?
  /// Who may use which route (`--auth-tokens-file`); off (every route open) by default.
  public var access = AccessPolicy()
  /// How long a request for a group with no leader waits for an election before `503 no_leader`.
  public var noLeaderWaitMs: UInt32 = 2_000
  /// `/metrics` writes per-group series for at most this many groups, the first in id order (0:
  /// none); per-node aggregates cover every group. A node may host ten thousand groups, about four
  /// series each: a scrape must not grow with them.
  public var metricsGroupsMax = GatewayConfiguration.metricsGroupsMaxDefault
  public static let metricsGroupsMaxDefault = 100
  /// How `POST /v1/cluster/rebalance`, and the automatic mode, move leadership.
  public var leaderBalance = LeaderBalanceOptions()
  /// The largest backup `GET /v1/groups/{group}/snapshot` answers (`413` past it); at most
  /// The largest backup `GET /v1/groups/{group}/snapshot` answers (`--backup-bytes-max`): 1 to
  /// `GatewayLimits.snapshotExportBytesLimit`, `GatewayLimits.snapshotExportBytesDefault` by default.
  public var snapshotExportBytesMax = GatewayLimits.snapshotExportBytesDefault
  /// A deliberately wrong rule, for proving `caucus torture` catches it: linearizable and lease
  /// reads are served from this node's replica as it is (stale reads). Package access: only the
  /// `caucus` executable sets it, and only when `caucus torture --plant-bug local-reads` asks.
  package var plantedLocalReads = false

  public init(
    clientURL: String, dataDirectory: String, version: String, valueBytesMax: Int = 1 << 20,
    readWaitMsMax: UInt32 = 10_000, requestTimeoutMs: UInt32 = 10_000, forwarder: LeaderForwarder? = nil,
    members: [Peer] = [], directory: ClusterDirectory? = nil
  ) {
    self.members = members
    self.directory = directory
    self.requestTimeoutMs = requestTimeoutMs
    self.forwarder = forwarder
    self.clientURL = clientURL
    self.dataDirectory = dataDirectory
    self.version = version
    self.valueBytesMax = valueBytesMax
    self.readWaitMsMax = readWaitMsMax
  }
}

/// Maps HTTP/JSON (the contract in API.md) to `ConsensusEngine` calls and engine errors to
/// statuses. Runs on the HTTP event loop: it never blocks; engine calls answer through completions.
public final class Gateway: HTTPHandler {
  public let engine: any ConsensusEngine
  public let configuration: GatewayConfiguration
  public let metrics = GatewayMetrics()
  /// The leader balance running here (at most one), and the counts of those that ran.
  let leaderBalance = LeaderBalanceState()
  private let startedAtNanoseconds = MonotonicClock.nowNanoseconds()
  private let nodeHeader: (name: String, value: String)
  private let context: GatewayContext
  /// Request deadlines (`504 timeout`), and the gateway's retries and periodic jobs.
  let deadlines = TimerWheel(name: "caucus-deadlines")
  /// Where backup exports run, `GatewayLimits.snapshotExportsQueuedMax` at most at a time.
  let exports = ExportWorker(queuedMax: GatewayLimits.snapshotExportsQueuedMax)
  /// Requests refused for want of credentials or permission, and when a refusal was last logged:
  /// at most one line per `refusalLogIntervalMs`, so a client retrying without a token cannot
  /// flood the log (every refusal is counted in `caucus_http_requests_total` by its status).
  private let refusals = Locked<(lastLoggedMs: UInt64, unlogged: UInt64)>((0, 0))
  static let refusalLogIntervalMs: UInt64 = 10_000
  let logger: Logger

  public init(engine: any ConsensusEngine, configuration: GatewayConfiguration) {
    self.engine = engine
    self.configuration = configuration
    let deadlines = self.deadlines
    var locate: (@Sendable (GroupID, @escaping @Sendable (GroupLocation) -> Void) -> Void)?
    if let forwarder = configuration.forwarder, let directory = configuration.directory {
      let locator = GroupLocator(forwarder: forwarder, directory: directory)
      locate = { group, completion in locator.locate(group, completion) }
    }
    let after: @Sendable (UInt32, @escaping @Sendable () -> Void) -> Void = { delayMs, action in
      deadlines.after(delayMs: delayMs, action)
    }
    self.context = GatewayContext(
      engine: engine, localClientURL: configuration.clientURL, forwarder: configuration.forwarder,
      noLeaderWaitMs: configuration.noLeaderWaitMs, after: after, locate: locate)
    self.nodeHeader = ("X-Caucus-Node", engine.localPeer.node.description)
    var logger = Logger(label: "caucus.gateway")
    logger[metadataKey: "node"] = "\(engine.localPeer.node)"
    self.logger = logger
    configuration.leaderBalance.validate()
    // The directory lists its nodes in one page of a member's key-value listing.
    precondition(ClusterDirectory.nodesMax <= GatewayLimits.listItemsMax, "a directory listing fits one page")
    // A follower relays a backup through a peer client that takes at most this much.
    precondition(
      (1...GatewayLimits.snapshotExportBytesLimit).contains(configuration.snapshotExportBytesMax),
      "snapshotExportBytesMax \(configuration.snapshotExportBytesMax) outside 1...\(GatewayLimits.snapshotExportBytesLimit)")
    scheduleAutomaticLeaderBalance()
  }

  public func handle(_ request: HTTPRequest, responder: HTTPResponder) {
    let started = MonotonicClock.nowNanoseconds()
    metrics.begin()
    let exchange = Exchange(
      request: request, context: context,
      admit: { [configuration] request, match, query in
        configuration.access.admit(request, match, query: query, peers: configuration.peerAuthenticator)
      },
      redispatch: { [self] exchange in run(exchange) }
    ) { [metrics, nodeHeader] response, label in
      var response = response
      // A relayed answer already names the node that produced it.
      if !response.headers.contains(where: { $0.name.lowercased() == "x-caucus-node" }) {
        response.headers.append(nodeHeader)
      }
      metrics.record(route: label, status: response.status, nanoseconds: MonotonicClock.nowNanoseconds() &- started)
      responder.respond(response)
    }
    // Refused before anything runs: no engine call, no directory access, no forwarding.
    if case .failure(let refusal) = exchange.admission {
      logRefusal(refusal, exchange)
      return exchange.fail(refusal)
    }
    run(exchange)
    if !exchange.isAnswered, let route = exchange.route, route.name.endsAtRequestDeadline {
      // Held weakly: a request answered in time is freed at once, not kept (body and all) until then.
      deadlines.after(delayMs: configuration.requestTimeoutMs) { [weak exchange] in
        exchange?.expire(group: route.group, indeterminate: route.changesState)
      }
    }
  }

  /// Serves one request (again, when it waited for a leader).
  private func run(_ exchange: Exchange) {
    do throws(GatewayError) {
      if let malformed = exchange.query.malformed {
        throw GatewayError.badRequest(
          "the query parameter '\(malformed.prefix(200))' has a malformed percent-escape or is not UTF-8")
      }
      switch exchange.match {
      case .failure(let mismatch): throw mismatch.error
      case .success(let route):
        if route.name.takesForwardMode { try parseForward(exchange) }
        try serve(route, exchange)
      }
    } catch {
      exchange.fail(error)
    }
  }

  private func logRefusal(_ refusal: GatewayError, _ exchange: Exchange) {
    let now = MonotonicClock.nowMilliseconds()
    let suppressed: UInt64? = refusals.withLock { state in
      guard state.lastLoggedMs == 0 || now - state.lastLoggedMs >= Self.refusalLogIntervalMs else {
        state.unlogged += 1
        return nil
      }
      defer { (state.lastLoggedMs, state.unlogged) = (now, 0) }
      return state.unlogged
    }
    guard let suppressed else { return }
    let (status, reason): (String, String)
    switch refusal {
    case .unauthorized(let message, _): (status, reason) = ("401", message)
    case .forbidden(let message): (status, reason) = ("403", message)
    default: (status, reason) = ("?", "\(refusal)")
    }
    logger.warning(
      "refused a request: not authorized",
      metadata: [
        "status": "\(status)", "route": "\(exchange.label)", "remote": "\(exchange.request.remoteAddress)",
        "reason": "\(reason)", "refusedSinceLastLine": "\(suppressed)",
      ])
  }

  /// Stops the gateway's deadline thread. Call after the HTTP server has stopped.
  public func stop() {
    deadlines.stop()
    exports.stop()
  }

  // MARK: Routing

  /// Hands a matched request to its handler.
  private func serve(_ route: Route, _ exchange: Exchange) throws(GatewayError) {
    switch route {
    case .root:
      exchange.respond(json: rootDocument())
    case .healthz:
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("status", "ok")
      writer.endObject()
      exchange.respond(json: writer.bytes)
    case .readyz:
      try readiness(exchange)
    case .metrics:
      let text =
        metrics.prometheusText() + engine.prometheusMetrics(groupSeriesMax: configuration.metricsGroupsMax)
        + leaderBalance.prometheusText() + (configuration.additionalMetrics?() ?? "")
        + processMetrics()
      exchange.respond(
        HTTPResponse(
          status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: Array(text.utf8)))
    case .ui:
      exchange.respond(HTTPResponse(status: 200, headers: Dashboard.headers, body: Dashboard.document))
    case .node:
      exchange.respond(json: nodeDocument())
    case .nodeGroupsCreate:
      try createGroup(exchange, nodeLocal: true)
    case .nodeGroupsDelete(let group):
      deleteGroup(group, exchange, nodeLocal: true)
    case .cluster:
      try clusterView(exchange)
    case .clusterNodesRegister:
      try registerNode(exchange)
    case .clusterRebalance:
      try rebalance(exchange)
    case .groupsList:
      if let scope = exchange.query["scope"], scope != "node" && scope != "cluster" {
        throw .badRequest("scope must be node or cluster, not '\(scope)'")
      }
      if exchange.query["scope"] == "cluster", configuration.forwarder != nil, configuration.directory != nil {
        return gatherGroups(exchange)
      }
      // Standalone: this node's groups are the whole directory, so both scopes list the same.
      exchange.respond(json: groupsDocument(exchange.caller.scope))
    case .groupsCreate:
      try createGroup(exchange, nodeLocal: false)
    case .groupGet(let group):
      guard let status = engine.status(group) else { throw .consensus(.groupNotFound(group)) }
      exchange.respond(json: statusDocument(status), headers: groupHeaders(status))
    case .groupDelete(let group):
      deleteGroup(group, exchange, nodeLocal: false)
    case .kvGet(let group, let key):
      try getKey(group, key, exchange)
    case .kvPut(let group, let key):
      try putKey(group, key, exchange)
    case .kvDelete(let group, let key):
      try deleteKey(group, key, exchange)
    case .kvList(let group):
      try listKeys(group, exchange)
    case .write(let group):
      try genericWrite(group, exchange)
    case .read(let group):
      try genericRead(group, exchange)
    case .watch(let group):
      try startWatch(group, exchange)
    case .peersAdd(let group):
      try addPeer(group, exchange)
    case .peersChange(let group):
      try changePeer(group, exchange)
    case .peerRemove(let group, let node):
      removePeer(group, node, exchange)
    case .leaderGet(let group):
      guard let status = engine.status(group) else { throw .consensus(.groupNotFound(group)) }
      guard status.leader != nil else { throw .consensus(.noLeader(group)) }
      respondLeader(group, status, exchange)
    case .leaderTransfer(let group):
      let body = try exchange.jsonBody()
      guard let id = body["id"]?.unsignedIntegerValue, id > 0 else { throw .badRequest("the body needs \"id\": the node id of the new leader") }
      engine.transferLeader(group, to: NodeID(id)) { [self] result in
        switch result {
        case .failure(let error): exchange.fail(.consensus(error))
        case .success: respondLeader(group, engine.status(group), exchange)
        }
      }
    case .snapshot(let group):
      engine.triggerSnapshot(group) { [self] result in
        switch result {
        case .failure(let error): exchange.fail(.consensus(error))
        case .success(let info):
          var writer = JSONWriter()
          writer.beginObject()
          writer.member("group", group.description)
          writer.member("index", info.index)
          writer.member("term", info.term)
          writer.member("bytes", info.bytes)
          writer.endObject()
          exchange.respond(json: writer.bytes, headers: leaderHeaders(group) + [("X-Caucus-Index", String(info.index))])
        }
      }
    case .snapshotExport(let group):
      try exportSnapshot(group, exchange)
    }
  }

  // MARK: Data plane

  private func putKey(_ group: GroupID, _ key: KVBytes, _ exchange: Exchange) throws(GatewayError) {
    let value = exchange.request.body
    guard value.count <= configuration.valueBytesMax else {
      throw .payloadTooLarge("the value is \(value.count) bytes; the limit is \(configuration.valueBytesMax)", limitBytes: configuration.valueBytesMax)
    }
    let precondition = try requestPrecondition(exchange.request)
    let command = KVCommand(
      operations: [.put(key: key, value: value, precondition: precondition)], idempotencyKey: try idempotencyKey(exchange.request))
    submit(group, command, exchange, etag: true) { index, results in
      guard case .put(let revision) = results.first else { return nil }
      var writer = JSONWriter(capacity: 96 + key.count)
      writer.beginObject()
      writer.member("group", group.description)
      writeKey(&writer, key)
      writer.member("revision", revision)
      writer.member("index", index)
      writer.endObject()
      return writer.bytes
    }
  }

  private func deleteKey(_ group: GroupID, _ key: KVBytes, _ exchange: Exchange) throws(GatewayError) {
    let precondition = try requestPrecondition(exchange.request)
    let command = KVCommand(operations: [.delete(key: key, precondition: precondition)], idempotencyKey: try idempotencyKey(exchange.request))
    submit(group, command, exchange) { index, results in
      guard case .delete(let deleted) = results.first else { return nil }
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("deleted", deleted)
      writer.member("index", index)
      writer.endObject()
      return writer.bytes
    }
  }

  private func genericWrite(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let body = try exchange.jsonBody()
    guard body.isObject, let items = body["ops"]?.arrayValue else {
      throw .badRequest("the body needs \"ops\": an array of {\"op\":\"put\"|\"delete\", \"key\", ...}")
    }
    guard !items.isEmpty else { throw .badRequest("\"ops\" is empty") }
    guard items.count <= KVLimits.operationsPerCommandMax else {
      throw .badRequest("\"ops\" has \(items.count) operations; the limit is \(KVLimits.operationsPerCommandMax)")
    }
    var operations: [KVOperation] = []
    var valueBytes = 0
    for (position, item) in items.enumerated() {
      guard item.isObject, let op = item["op"]?.stringValue else { throw .badRequest("ops[\(position)] needs \"op\"") }
      let key = try jsonKey(item, context: "ops[\(position)]")
      var precondition = KVPrecondition.none
      if let revision = item["ifRevision"] {
        guard let value = revision.unsignedIntegerValue else {
          throw .badRequest("ops[\(position)].ifRevision must be a non-negative integer")
        }
        precondition = value == 0 ? .absent : .revisionEquals(value)
      }
      switch op {
      case "put":
        let value = try jsonValue(item, context: "ops[\(position)]")
        valueBytes += value.count
        guard value.count <= configuration.valueBytesMax else {
          throw .payloadTooLarge(
            "ops[\(position)] value is \(value.count) bytes; the limit is \(configuration.valueBytesMax)",
            limitBytes: configuration.valueBytesMax)
        }
        operations.append(.put(key: key, value: value, precondition: precondition))
      case "delete":
        operations.append(.delete(key: key, precondition: precondition))
      default:
        throw .badRequest("ops[\(position)].op must be \"put\" or \"delete\", not \"\(op)\"")
      }
    }
    try exchange.authorize(
      keys: operations.map { operation in
        switch operation {
        case .put(let key, _, _), .delete(let key, _): return key
        }
      })
    let command = KVCommand(operations: operations, idempotencyKey: try idempotencyKey(exchange.request))
    let submitted = operations
    submit(group, command, exchange) { index, results in
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("index", index)
      writer.key("results")
      writer.beginArray()
      for (operation, result) in zip(submitted, results) {
        writer.beginObject()
        switch (operation, result) {
        case (.put(let key, _, _), .put(let revision)):
          writer.member("op", "put")
          writeKey(&writer, key)
          writer.member("revision", revision)
        case (.delete(let key, _), .delete(let deleted)):
          writer.member("op", "delete")
          writeKey(&writer, key)
          writer.member("deleted", deleted)
        default:
          return nil
        }
        writer.endObject()
      }
      writer.endArray()
      writer.endObject()
      return writer.bytes
    }
  }

  /// Proposes `command` and answers with `render(index, results)`; preconditions and rejections
  /// become 412 / 400. `render` returns nil if the results do not fit the command (a bug: 500).
  /// At a follower, the engine hands the write to the leader and answers with its own apply
  /// outcome (`Exchange.writeForwarding`); a refusal takes `fail`'s HTTP path as before.
  private func submit(
    _ group: GroupID, _ command: KVCommand, _ exchange: Exchange, etag: Bool = false,
    render: @escaping @Sendable (UInt64, [KVOperationResult]) -> [UInt8]?
  ) {
    engine.write(group, command: KVCodec.encode(command), forwarding: exchange.writeForwarding(group)) { [self] result in
      switch result {
      case .failure(let error):
        exchange.fail(.consensus(error), group: group)
      case .success(let written):
        let decoded: KVWriteOutcome
        do { decoded = try KVCodec.decodeWriteOutcome(written.response) } catch {
          exchange.fail(.internal("the state machine answered with undecodable bytes: \(error)"))
          return
        }
        var headers = leaderHeaders(group)
        var outcome = decoded
        var index = written.index
        if case .replayed(let originalIndex, _, let original) = outcome {
          // A retry with a used Idempotency-Key: answer exactly as the first time, and say so.
          outcome = original
          index = originalIndex
          headers.append(("Idempotent-Replayed", "true"))
        }
        headers.append(("X-Caucus-Index", String(index)))
        switch outcome {
        case .applied(let results):
          guard let body = render(index, results) else {
            exchange.fail(.internal("the state machine's results do not match the command"))
            return
          }
          if etag, case .put(let revision) = results.first { headers.append(("ETag", "\"\(revision)\"")) }
          exchange.respond(json: body, headers: headers)
        case .preconditionFailed(let operationIndex, let key, let currentRevision):
          var writer = JSONWriter()
          writer.beginObject()
          writer.member("error", "precondition_failed")
          writer.member("message", "a precondition failed for operation \(operationIndex); nothing was applied")
          writer.member("operation", operationIndex)
          writer.member("group", group.description)
          writeKey(&writer, key)
          writer.key("currentRevision")
          if let currentRevision { writer.number(currentRevision) } else { writer.null() }
          writer.member("index", index)
          writer.endObject()
          exchange.respond(HTTPResponse(status: 412, headers: headers + [jsonContentType], body: writer.bytes))
        case .rejected(let reason):
          exchange.fail(.badRequest(reason))
        case .replayed:
          exchange.fail(.internal("a replayed outcome wraps another replayed outcome"))
        }
      }
    }
  }

  private func getKey(_ group: GroupID, _ key: KVBytes, _ exchange: Exchange) throws(GatewayError) {
    let query = exchange.query
    let options = try readOptions(query)
    let raw = try parseBool(query["raw"], name: "raw") ?? false
      || exchange.request.header("accept").map { $0.contains("application/octet-stream") } ?? false
    read(group, [.get(key: key)], options, exchange) { [self] index, results in
      guard case .get(let entry) = results.first else { throw GatewayError.internal("the read answered the wrong shape") }
      guard let entry else { throw GatewayError.keyNotFound(key) }
      var headers = leaderHeaders(group)
      headers.append(("X-Caucus-Index", String(index)))
      headers.append(("ETag", "\"\(entry.revision)\""))
      if raw {
        headers.append(("Content-Type", "application/octet-stream"))
        return HTTPResponse(status: 200, headers: headers, body: entry.value)
      }
      var writer = JSONWriter(capacity: 64 + entry.key.count + entry.value.count * 4 / 3)
      writer.beginObject()
      writeItemFields(&writer, entry)
      writer.endObject()
      headers.append(jsonContentType)
      return HTTPResponse(status: 200, headers: headers, body: writer.bytes)
    }
  }

  /// `GET /v1/groups/{group}/snapshot`: the group's whole state as a backup file (`KVBackup`).
  /// One read takes it, and the engine runs a query between two applies, so it is exactly the
  /// state at the index it names; a linearizable read (the default) reflects every write
  /// acknowledged before the request. Bounded by `snapshotExportBytesMax`: the state machine
  /// knows its snapshot's size before building it and refuses a larger one (`413`). The read and
  /// the encoding run on the export thread (`ExportWorker`), one export at a time.
  private func exportSnapshot(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let options = try readOptions(exchange.query)
    let bytesMax = configuration.snapshotExportBytesMax
    let frameBytes = UInt64(KVBackup.frameBytes(group: group))
    let payloadBytesMax = UInt64(bytesMax) - min(UInt64(bytesMax), frameBytes)
    let headers: @Sendable (UInt64) -> [(name: String, value: String)] = { [self] index in
      leaderHeaders(group) + [
        ("X-Caucus-Index", String(index)), ("Content-Type", "application/octet-stream"),
        ("Content-Disposition", "attachment; filename=\"\(KVBackup.fileName(group: group, index: index))\""),
      ]
    }
    let tooLarge: @Sendable (UInt64) -> GatewayError = { bytes in
      GatewayError.payloadTooLarge(
        "the backup of \(group) would be \(bytes) bytes; this node answers at most \(bytesMax) in one response "
          + "(--backup-bytes-max)",
        limitBytes: bytesMax)
    }
    // A HEAD needs only the size, which the state machine knows without building the snapshot
    // (a limit of 0 answers it): a read like any other, not an export.
    if exchange.request.method == "HEAD" {
      return read(group, [.snapshot(bytesMax: 0)], options, exchange) { index, results in
        guard case .snapshotTooLarge(let payloadBytes) = results.first else {
          throw GatewayError.internal("the read answered the wrong shape")
        }
        guard frameBytes + payloadBytes <= UInt64(bytesMax) else { throw tooLarge(frameBytes + payloadBytes) }
        return HTTPResponse(status: 200, headers: headers(index), headContentLength: Int(frameBytes + payloadBytes))
      }
    }
    let queries: [KVQuery] = [.snapshot(bytesMax: payloadBytesMax)]
    let accepted = exports.submit { [self] in
      let result = waitForCompletion { done in
        engine.read(group, query: KVCodec.encode(queries: queries), options: options, completion: done)
      }
      answerRead(result, group, queryCount: queries.count, exchange) { index, results in
        switch results.first {
        case .snapshotTooLarge(let payloadBytes):
          throw tooLarge(frameBytes + payloadBytes)
        case .snapshot(let payload):
          let bytes = KVBackup(group: group, index: index, payload: payload).encode()
          precondition(bytes.count <= bytesMax, "a backup of \(bytes.count) bytes passed the limit of \(bytesMax)")
          return HTTPResponse(status: 200, headers: headers(index), body: bytes)
        default:
          throw GatewayError.internal("the read answered the wrong shape")
        }
      }
    }
    guard accepted else {
      throw .explained(
        .consensus(.overloaded(retryAfterMs: 1_000)),
        note: "\(exports.queuedMax) backup exports are running or waiting on this node; retry shortly")
    }
  }

  private func listKeys(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let query = exchange.query
    let options = try readOptions(query)
    let prefix = try queryKeyBound(query, "prefix") ?? []
    let after = try queryKeyBound(query, "after")
    let limit = try parseCount(query["limit"], name: "limit", default: 100, max: GatewayLimits.listItemsMax)
    read(group, [.list(prefix: prefix, after: after, limit: limit)], options, exchange) { [self] index, results in
      guard case .list(let items, let more) = results.first else { throw GatewayError.internal("the read answered the wrong shape") }
      var writer = JSONWriter()
      writer.beginObject()
      writeItems(&writer, items, more: more)
      writer.member("index", index)
      writer.endObject()
      var headers = leaderHeaders(group)
      headers.append(("X-Caucus-Index", String(index)))
      headers.append(jsonContentType)
      return HTTPResponse(status: 200, headers: headers, body: writer.bytes)
    }
  }

  private func genericRead(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let body = try exchange.jsonBody()
    guard body.isObject, let items = body["ops"]?.arrayValue else {
      throw .badRequest("the body needs \"ops\": an array of {\"op\":\"get\"|\"list\", ...}")
    }
    guard !items.isEmpty, items.count <= GatewayLimits.readOperationsMax else {
      throw .badRequest("\"ops\" needs 1 to \(GatewayLimits.readOperationsMax) operations")
    }
    var options = ReadOptions()
    if let consistency = body["consistency"] {
      guard let text = consistency.stringValue, let parsed = ReadConsistency(rawValue: text) else {
        throw .badRequest("\"consistency\" must be linearizable, lease or stale")
      }
      options.consistency = parsed
    }
    if let minIndex = body["minIndex"] {
      guard let value = minIndex.unsignedIntegerValue else { throw .badRequest("\"minIndex\" must be a non-negative integer") }
      options.minIndex = value
    }
    var queries: [KVQuery] = []
    for (position, item) in items.enumerated() {
      guard item.isObject, let op = item["op"]?.stringValue else { throw .badRequest("ops[\(position)] needs \"op\"") }
      switch op {
      case "get":
        queries.append(.get(key: try jsonKey(item, context: "ops[\(position)]")))
      case "list":
        let prefix = try jsonKeyBound(item, "prefix", context: "ops[\(position)]") ?? []
        let after = try jsonKeyBound(item, "after", context: "ops[\(position)]")
        var limit = 100
        if let value = item["limit"] {
          guard let number = value.unsignedIntegerValue, number >= 1, number <= UInt64(GatewayLimits.listItemsMax) else {
            throw .badRequest("ops[\(position)].limit must be an integer from 1 to \(GatewayLimits.listItemsMax)")
          }
          limit = Int(number)
        }
        queries.append(.list(prefix: prefix, after: after, limit: limit))
      default:
        throw .badRequest("ops[\(position)].op must be \"get\" or \"list\", not \"\(op)\"")
      }
    }
    try exchange.authorize(
      keys: queries.map { query in
        switch query {
        case .get(let key): return key
        case .snapshot: return []  // every key (before a `return prefix`, which would modify the next `case`)
        case .list(let prefix, _, _), .changes(_, let prefix, _): return prefix
        }
      })
    let asked = queries
    read(group, asked, options, exchange) { [self] index, results in
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("index", index)
      writer.key("results")
      writer.beginArray()
      for (query, result) in zip(asked, results) {
        writer.beginObject()
        switch (query, result) {
        case (.get(let key), .get(let entry)):
          writer.member("op", "get")
          if let entry {
            writer.member("found", true)
            writeItemFields(&writer, entry)
          } else {
            writer.member("found", false)
            writeKey(&writer, key)
          }
        case (.list, .list(let items, let more)):
          writer.member("op", "list")
          writeItems(&writer, items, more: more)
        default:
          throw GatewayError.internal("the read answered the wrong shape")
        }
        writer.endObject()
      }
      writer.endArray()
      writer.endObject()
      var headers = leaderHeaders(group)
      headers.append(("X-Caucus-Index", String(index)))
      headers.append(jsonContentType)
      return HTTPResponse(status: 200, headers: headers, body: writer.bytes)
    }
  }

  private func read(
    _ group: GroupID, _ queries: [KVQuery], _ options: ReadOptions, _ exchange: Exchange,
    render: @escaping @Sendable (UInt64, [KVQueryResult]) throws -> HTTPResponse
  ) {
    engine.read(group, query: KVCodec.encode(queries: queries), options: options) { [self] result in
      answerRead(result, group, queryCount: queries.count, exchange, render: render)
    }
  }

  /// Answers a read of `queryCount` queries with `render`'s response, or its failure.
  private func answerRead(
    _ result: Result<ReadResult, ConsensusError>, _ group: GroupID, queryCount: Int, _ exchange: Exchange,
    render: (UInt64, [KVQueryResult]) throws -> HTTPResponse
  ) {
    switch result {
    case .failure(let error):
      exchange.fail(.consensus(error), group: group)
    case .success(let read):
      do {
        let results = try KVCodec.decodeQueryResults(read.response)
        guard results.count == queryCount else { throw GatewayError.internal("the read answered \(results.count) results for \(queryCount) queries") }
        exchange.respond(try render(read.index, results))
      } catch let error as GatewayError {
        exchange.fail(error, group: group)
      } catch {
        exchange.fail(.internal("the state machine answered with undecodable bytes: \(error)"))
      }
    }
  }

  // MARK: Watch

  /// A long poll: answers as soon as the group has changes with index > `fromIndex` under the
  /// prefix, or at the timeout with no events. Each round is a read that waits (inside the engine,
  /// not on the event loop) until the applied index passes the last index seen.
  private func startWatch(_ group: GroupID, _ exchange: Exchange) throws(GatewayError) {
    let query = exchange.query
    let prefix = try queryKeyBound(query, "prefix") ?? []
    var timeoutMs = GatewayLimits.watchTimeoutMsDefault
    if let text = query["timeoutMs"] {
      guard let value = UInt64(text) else { throw .badRequest("timeoutMs must be a non-negative integer, not '\(text)'") }
      timeoutMs = Int(min(value, UInt64(GatewayLimits.watchTimeoutMsMax)))  // longer asks are clamped
    }
    let fromIndex: UInt64
    if let text = query["fromIndex"] {
      // UInt64.max would leave no index to wait for.
      guard let value = UInt64(text), value < UInt64.max else {
        throw .badRequest("fromIndex must be an integer from 0 to \(UInt64.max - 1), not '\(text)'")
      }
      fromIndex = value
    } else {
      guard let status = engine.status(group) else { throw .consensus(.groupNotFound(group)) }
      fromIndex = status.appliedIndex
    }
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(timeoutMs) * 1_000_000
    pollWatch(group, prefix: prefix, from: fromIndex, deadline: deadline, exchange)
  }

  private func pollWatch(_ group: GroupID, prefix: KVBytes, from: UInt64, deadline: UInt64, _ exchange: Exchange) {
    let now = MonotonicClock.nowNanoseconds()
    guard now < deadline else {
      respondWatch(group, events: [], index: max(from, engine.status(group)?.appliedIndex ?? from), exchange)
      return
    }
    let waitMs = UInt32(min((deadline - now + 999_999) / 1_000_000, UInt64(UInt32.max)))
    let limit = GatewayLimits.listItemsMax
    let options = ReadOptions(consistency: .stale, minIndex: from + 1, waitMs: waitMs)
    engine.read(group, query: KVCodec.encode(queries: [.changes(after: from, prefix: prefix, limit: limit)]), options: options) {
      [self] result in
      switch result {
      case .failure(.timeout):
        respondWatch(group, events: [], index: max(from, engine.status(group)?.appliedIndex ?? from), exchange)
      case .failure(let error):
        exchange.fail(.consensus(error), group: group)
      case .success(let read):
        guard let results = try? KVCodec.decodeQueryResults(read.response),
          case .changes(let events, let compactedBefore) = results.first
        else {
          exchange.fail(.internal("the state machine did not answer the changes query"))
          return
        }
        if let compactedBefore {
          var writer = JSONWriter()
          writer.beginObject()
          writer.member("error", "compacted")
          writer.member("message", "changes after index \(from) are no longer retained; re-read the keys and watch from index \(compactedBefore - 1)")
          writer.member("oldestIndex", compactedBefore)
          writer.endObject()
          exchange.respond(HTTPResponse(status: 410, headers: leaderHeaders(group) + [jsonContentType], body: writer.bytes))
        } else if events.isEmpty {
          pollWatch(group, prefix: prefix, from: max(from, read.index), deadline: deadline, exchange)
        } else {
          // A full page resumes from its last event; otherwise everything up to the read index was seen.
          let index = events.count >= limit ? events[events.count - 1].index : read.index
          respondWatch(group, events: events, index: index, exchange)
        }
      }
    }
  }

  private func respondWatch(_ group: GroupID, events: [KVChangeEvent], index: UInt64, _ exchange: Exchange) {
    var writer = JSONWriter()
    writer.beginObject()
    writer.key("events")
    writer.beginArray()
    for event in events {
      writer.beginObject()
      writer.member("type", event.kind == .put ? "put" : "delete")
      if event.kind == .put {
        writeItemFields(&writer, KVEntry(key: event.key, value: event.value, revision: event.revision))
      } else {
        writeKey(&writer, event.key)
        writer.member("revision", event.revision)
      }
      writer.endObject()
    }
    writer.endArray()
    writer.member("index", index)
    writer.endObject()
    var headers = leaderHeaders(group)
    headers.append(("X-Caucus-Index", String(index)))
    exchange.respond(json: writer.bytes, headers: headers)
  }

  private func readOptions(_ query: QueryParameters) throws(GatewayError) -> ReadOptions {
    var options = ReadOptions(waitMs: configuration.readWaitMsMax)
    if let text = query["consistency"] {
      guard let consistency = ReadConsistency(rawValue: text) else {
        throw .badRequest("consistency must be linearizable, lease or stale, not '\(text)'")
      }
      options.consistency = consistency
    }
    if configuration.plantedLocalReads { options.consistency = .stale }
    if let text = query["minIndex"] {
      guard let value = UInt64(text) else { throw .badRequest("minIndex must be a non-negative integer, not '\(text)'") }
      options.minIndex = value
    }
    return options
  }

  // MARK: Groups

  /// `POST /v1/groups` (in a cluster: on every peer, recorded in the directory) or, `nodeLocal`,
  /// `POST /v1/node/groups` (on this node only; a joining replica's `bootstrapVoters` allowed).
  private func createGroup(_ exchange: Exchange, nodeLocal: Bool) throws(GatewayError) {
    let body = try exchange.jsonBody()
    guard body.isObject, let idText = body["id"]?.stringValue else {
      throw .badRequest("the body needs \"id\": a group id such as \"DataRegion-1\"")
    }
    let group = try parseGroup(Substring(idText))
    try exchange.authorize(group: group)
    // A replica joining an existing group (the leader's addPeer/changePeer asks for it).
    var bootstrapVoters: [NodeID]?
    if let voters = body["bootstrapVoters"] {
      guard nodeLocal else {
        throw .badRequest("\"bootstrapVoters\" belongs to the node-local route POST /v1/node/groups")
      }
      guard let array = voters.arrayValue, !array.isEmpty, array.count <= DirectoryRecords.groupPeersMax else {
        throw .badRequest("\"bootstrapVoters\" must be an array of 1 to \(DirectoryRecords.groupPeersMax) node ids")
      }
      bootstrapVoters = try array.map { value throws(GatewayError) in
        guard let id = value.unsignedIntegerValue, id > 0 else { throw .badRequest("bootstrap voters are positive node ids") }
        return NodeID(id)
      }
      guard body["peers"] != nil else { throw .badRequest("a joining replica needs \"peers\": the group's members and this node") }
    }
    guard let items = body["peers"] else { return createGroup(group, [engine.localPeer], exchange, nodeLocal: nodeLocal) }
    guard let array = items.arrayValue else { throw .badRequest("\"peers\" must be an array of node ids or peers") }
    guard !array.isEmpty else {
      throw .consensus(.illegalPeerNumber(count: 0, reason: "\"peers\" is empty; omit it to create the group on this node alone"))
    }
    // The protocol's own limit (standalone: one replica) before any look-up or record.
    if let peersMax = engine.groupPeersMax, array.count > peersMax {
      throw .consensus(
        .illegalPeerNumber(
          count: array.count, reason: "a \(engine.protocolName) group has at most \(peersMax) peer(s); use the raft protocol to replicate"))
    }
    guard array.count <= DirectoryRecords.groupPeersMax else {
      throw .badRequest("\"peers\" names \(array.count) peers; the limit is \(DirectoryRecords.groupPeersMax)")
    }
    let specifications = try array.map { value throws(GatewayError) in try parsePeerSpecification(value) }
    guard Set(specifications.map(\.node)).count == specifications.count else { throw .badRequest("\"peers\" names a node twice") }
    resolvePeers(specifications) { [self, bootstrapVoters] result in
      switch result {
      case .failure(let error): exchange.fail(error)
      case .success(let peers): createGroup(group, peers, bootstrapVoters: bootstrapVoters, exchange, nodeLocal: nodeLocal)
      }
    }
  }

  private func createGroup(
    _ group: GroupID, _ peers: [Peer], bootstrapVoters: [NodeID]? = nil, _ exchange: Exchange, nodeLocal: Bool
  ) {
    // POST /v1/groups in a cluster: the directory's record first (a single node keeps none).
    guard !nodeLocal, let directory = configuration.directory else {
      return createReplicas(
        group, peers, bootstrapVoters: bootstrapVoters, placementRecorded: false, exchange, nodeLocal: nodeLocal)
    }
    reservePlacement(group, peers, directory, exchange) { [self] in
      createReplicas(group, peers, placementRecorded: true, exchange, nodeLocal: false)
    }
  }

  /// Claims `groups/<group>` for `peers` before any replica is created: a fresh replica created
  /// beside a live group (a node of another placement, or one the group was never created on)
  /// would start a second group of the same id whose higher term truncates the real one's log.
  /// So:
  /// - a record with other peers → 409, and nothing is created;
  /// - a record marked by a DELETE that has not finished → 409: replicas of the group's earlier
  ///   life may remain on some peers, and fresh ones beside them could form a quorum of empty
  ///   logs (or be overwritten by them);
  /// - a record with the same peers → a retry (of a creation that timed out, or that some peer
  ///   refused or missed): no peer is asked whether it hosts the group, since every replica on
  ///   those peers is this placement's (a DELETE marks the record before it deletes any); the
  ///   record is renewed and `create` runs on every peer, where those that have their replica
  ///   answer 409, which counts as done. So a retry answers what the first attempt would have;
  /// - no record → every peer is asked whether it hosts the group already (groups created before
  ///   the directory existed, or by hand on the node-local route, have no record): any does →
  ///   409, none → the record is written only if absent (the KV's create-only put, so a
  ///   concurrent creation of the id is decided by the directory), then `create` runs.
  /// A directory or a peer that does not answer → 503 and nothing is created.
  private func reservePlacement(
    _ group: GroupID, _ peers: [Peer], _ directory: ClusterDirectory, _ exchange: Exchange,
    create: @escaping @Sendable () -> Void
  ) {
    let wanted = DirectoryGroup(id: group, peers: peers)
    let decide: @Sendable (Result<DirectoryReservation, DirectoryError>) -> Void = { [self] result in
      switch result {
      case .success(.reserved), .success(.recordedWithTheSamePeers): create()
      case .success(.recordedWithOtherPeers(let existing)):
        exchange.fail(.consensus(.groupAlreadyExists(group)))
        logger.info(
          "refused to create a group the directory records on other peers",
          metadata: ["group": "\(group)", "recorded": "\(existing.peers.map(\.description))", "asked": "\(peers.map(\.description))"])
      case .success(.deletionUnfinished(let existing)):
        let nodes = existing.peers.map(\.node.description).joined(separator: ", ")
        exchange.fail(
          .explained(
            .consensus(.groupAlreadyExists(group)),
            note: "; a DELETE of it has not finished, so replicas of it may remain on node(s) \(nodes): "
              + "retry DELETE /v1/groups/\(group) until it answers 200, then create it again"))
        logger.info(
          "refused to create a group whose deletion has not finished",
          metadata: ["group": "\(group)", "recorded": "\(existing.peers.map(\.description))"])
      case .failure(.invalidRecord(let reason)): exchange.fail(.badRequest(reason))
      case .failure(let error): exchange.fail(.consensus(.storage("\(error); nothing was created, retry the request")))
      }
    }
    directory.recordedGroup(group) { [self] result in
      switch result {
      case .failure(let error): return decide(.failure(error))
      case .success(let existing?):
        let reservation = DirectoryReservation(existing: existing, wanted: wanted)
        guard case .recordedWithTheSamePeers = reservation else { return decide(.success(reservation)) }
        // Renewing the record makes it this creation's, so that a pending removal conditional on
        // an older revision leaves it alone; it fails if the record changed meanwhile.
        directory.renewRecord(wanted) { decide($0.map { reservation }) }
      case .success(nil):
        // Fresh replicas beside one that exists with no record (created before the directory,
        // or by hand) would form a quorum of empty logs beside it: go ahead only when none of
        // the peers hosts the group.
        hostingPeers(group, peers) { [self] hosting in
          guard let hosting else {
            return decide(.failure(.unavailable("not every peer answered whether it hosts \(group) already")))
          }
          guard hosting.isEmpty else {
            logger.info(
              "refused to create a group some of its peers already host",
              metadata: ["group": "\(group)", "hosting": "\(hosting.map(\.description))"])
            return exchange.fail(.consensus(.groupAlreadyExists(group)))
          }
          directory.reserve(wanted, decide)
        }
      }
    }
  }

  /// The peers that host a replica of `group` (this node's engine, the others'
  /// `GET /v1/groups/{group}?forward=none`: 200 hosts; 404 does not, nor 421, a node that does
  /// not host it but names where it lives); nil when one did not answer.
  private func hostingPeers(_ group: GroupID, _ peers: [Peer], _ completion: @escaping @Sendable ([NodeID]?) -> Void) {
    let answers = Locked<(remaining: Int, hosting: [NodeID], unanswered: Bool)>((peers.count, [], false))
    for peer in peers {
      let answered: @Sendable (Bool?) -> Void = { hosts in
        let done: (hosting: [NodeID], unanswered: Bool)? = answers.withLock { state in
          state.remaining -= 1
          if hosts == true { state.hosting.append(peer.node) }
          if hosts == nil { state.unanswered = true }
          return state.remaining == 0 ? (state.hosting, state.unanswered) : nil
        }
        if let done { completion(done.unanswered ? nil : done.hosting.sorted()) }
      }
      if peer.node == engine.localPeer.node {
        answered(engine.status(group) != nil)
      } else if let forwarder = configuration.forwarder {
        forwarder.nodeLocal("GET", on: peer, target: "/v1/groups/\(group)?forward=none", body: []) { status, _ in
          answered(status == 200 ? true : status == 404 || status == 421 ? false : nil)
        }
      } else {
        answered(nil)
      }
    }
  }

  /// createPeer: on every peer for `POST /v1/groups` (after `reservePlacement`), else on this node.
  /// `POST /v1/groups` is idempotent: a group this node hosts already with exactly `peers` (ids
  /// and endpoints, as a set) is answered as its creation was (a retry after a timeout). The
  /// node-local route keeps its `409`: the leader's join path tells "created" from "had one" by it.
  private func createReplicas(
    _ group: GroupID, _ peers: [Peer], bootstrapVoters: [NodeID]? = nil, placementRecorded: Bool, _ exchange: Exchange,
    nodeLocal: Bool
  ) {
    if !nodeLocal, let forwarder = configuration.forwarder,
      peers.contains(where: { $0.node != engine.localPeer.node })
    {
      return createEverywhere(group, peers, forwarder, placementRecorded: placementRecorded, exchange)
    }
    let created: @Sendable (Result<Void, ConsensusError>) -> Void = { [self] result in
      switch result {
      case .failure(.groupAlreadyExists) where !nodeLocal && hosts(group, withExactly: peers):
        answerCreated(group, exchange)
      case .failure(let error): exchange.fail(.consensus(error))
      case .success: answerCreated(group, exchange)
      }
    }
    if let bootstrapVoters {
      engine.joinPeer(group, peers: peers, bootstrapVoters: bootstrapVoters, completion: created)
    } else {
      engine.createPeer(group, peers: peers, completion: created)
    }
  }

  /// Whether this node's replica of `group` has exactly `peers`, compared as sets of ids and endpoints.
  private func hosts(_ group: GroupID, withExactly peers: [Peer]) -> Bool {
    guard let status = engine.status(group) else { return false }
    return Set(status.peers.map(\.peer)) == Set(peers)
  }

  /// `201` with this node's replica's status: the answer to a creation, first or retried.
  private func answerCreated(_ group: GroupID, _ exchange: Exchange) {
    guard let status = engine.status(group) else {
      return exchange.fail(.consensus(.groupNotFound(group)))
    }
    exchange.respond(
      json: statusDocument(status), status: 201, headers: groupHeaders(status) + [("Location", "/v1/groups/\(group)")])
  }

  /// `DELETE /v1/groups/{group}` (on every peer, the directory's record marked first) or,
  /// `nodeLocal`, `DELETE /v1/node/groups/{group}` (this node's replica only).
  private func deleteGroup(_ group: GroupID, _ exchange: Exchange, nodeLocal: Bool) {
    if nodeLocal {
      // The deletion of a removed peer's replica, asked by the leader that removed it, bounded by
      // the end of the leader's log once the removal applied: a replica whose log goes further was
      // added back since, holds a member's durable state, and is never deleted (409).
      let index = exchange.query["ifLogEndsAtIndex"]
      let term = exchange.query["ifLogEndsAtTerm"]
      guard (index == nil) == (term == nil) else {
        return exchange.fail(.badRequest("ifLogEndsAtIndex and ifLogEndsAtTerm go together"))
      }
      if let index, let term {
        guard let index = UInt64(index), let term = UInt64(term) else {
          return exchange.fail(.badRequest("ifLogEndsAtIndex and ifLogEndsAtTerm are non-negative integers"))
        }
        return deleteLocally(group, exchange, recordRevision: nil, ifLogEndsBy: LogPosition(index: index, term: term))
      }
    }
    // DELETE /v1/groups/{group}: deletePeer on every peer of the group.
    guard !nodeLocal, let forwarder = configuration.forwarder else {
      return deleteLocally(group, exchange, recordRevision: nil)
    }
    let deleteFound: @Sendable (UInt64?) -> Void = { [self] revision in
      placement(of: group) { [self] peers in
        guard peers.contains(where: { $0.node != engine.localPeer.node }) else {
          return deleteLocally(group, exchange, recordRevision: revision)
        }
        deleteEverywhere(group, peers, forwarder, exchange, recordRevision: revision)
      }
    }
    guard let directory = configuration.directory else { return deleteFound(nil) }
    // The record is marked before any replica is deleted, so that until it is removed no creation
    // puts fresh replicas beside ones this DELETE has not reached (it may fail on some peer).
    // The marked record is the one to remove afterwards, and only it: a record written after the
    // replicas are gone belongs to a new creation of the id.
    directory.markDeleting(group) { result in
      switch result {
      case .success(let revision): deleteFound(revision)
      case .failure(.invalidRecord(let reason)): exchange.fail(.badRequest(reason))
      case .failure(let error):
        exchange.fail(.consensus(.storage("\(error); nothing was deleted, retry the request")))
      }
    }
  }

  private func deleteLocally(
    _ group: GroupID, _ exchange: Exchange, recordRevision: UInt64?, ifLogEndsBy: LogPosition? = nil
  ) {
    engine.deletePeer(group, ifLogEndsBy: ifLogEndsBy) { [self] result in
      switch result {
      // A recorded group whose only replica is gone already (an earlier DELETE got this far):
      // what is left is its record, which the answer removes (only DELETE /v1/groups/{group}
      // has a record's revision).
      case .failure(.groupNotFound) where recordRevision != nil:
        answerDeleted(group, exchange, recordRevision: recordRevision)
      case .failure(let error): exchange.fail(.consensus(error))
      case .success: answerDeleted(group, exchange, recordRevision: recordRevision)
      }
    }
  }

  /// The answer to a deletion; `DELETE /v1/groups/{group}` (not the node-local route, which has
  /// no `recordRevision`) first removes the group's directory record, if it still has that revision.
  private func answerDeleted(_ group: GroupID, _ exchange: Exchange, recordRevision: UInt64?) {
    let answer: @Sendable () -> Void = {
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("id", group.description)
      writer.member("deleted", true)
      writer.endObject()
      exchange.respond(json: writer.bytes)
    }
    if let recordRevision {
      forgetInDirectory(group, ifRevision: recordRevision, then: answer)
    } else {
      answer()
    }
  }

  func answerMembership(_ result: Result<Void, ConsensusError>, _ group: GroupID, _ exchange: Exchange) {
    switch result {
    case .failure(let error): exchange.fail(.consensus(error))
    case .success:
      guard let status = engine.status(group) else {
        exchange.fail(.consensus(.groupNotFound(group)))
        return
      }
      exchange.respond(json: statusDocument(status), headers: groupHeaders(status))
    }
  }

  /// This node or a static member, by id.
  func knownPeer(_ node: NodeID) -> Peer? {
    if node == engine.localPeer.node { return engine.localPeer }
    return configuration.members.first { $0.node == node }
  }

  func parsePeerSpecification(_ value: JSONValue) throws(GatewayError) -> PeerSpecification {
    if let id = value.unsignedIntegerValue {
      guard id > 0 else { throw .badRequest("node ids are positive integers") }
      return .id(NodeID(id))
    }
    guard value.isObject, let id = value["id"]?.unsignedIntegerValue, id > 0 else {
      throw .badRequest("a peer is a node id or {\"id\": <node id>, \"endpoint\": \"host:port\"}")
    }
    guard let endpointText = value["endpoint"] else { return .id(NodeID(id)) }
    guard let text = endpointText.stringValue, let endpoint = Endpoint(parsing: text) else {
      throw .badRequest("a peer's endpoint is \"host:port\"")
    }
    return .peer(Peer(node: NodeID(id), endpoint: endpoint))
  }

  /// createPeer on every peer: this node's engine for itself, `POST /v1/node/groups` on the others.
  /// - 201 when every peer created its replica or had one: in a cluster `reservePlacement` ran
  ///   first, so the peers are the group's recorded ones and a replica a peer had is this
  ///   group's (a retry finishing what an earlier attempt began). Without a recorded placement,
  ///   every peer having one already is `409`: nothing says whose replicas those are.
  /// - A peer's definite refusal (a 4xx such as `409 group_limit_reached`) is the answer, with
  ///   its status, code and context, and a note on what the other peers did.
  /// - Otherwise `503 not_ready` naming the peers that did not answer or failed in a way that
  ///   may pass; retrying the same request is safe.
  /// The peers that created their replica keep it in every case, as does the directory its
  /// record: the same request, retried, creates the rest.
  private func createEverywhere(
    _ group: GroupID, _ peers: [Peer], _ forwarder: LeaderForwarder, placementRecorded: Bool, _ exchange: Exchange
  ) {
    // The same document is the node-local request body and, for a group this node does not
    // host, the answer's summary.
    let body = Gateway.groupDocument(group, peers)
    let summary = Gateway.groupDocument(group, peers, protocolName: engine.protocolName)
    fanOut(peers, exchange, local: { [engine] done in
      engine.createPeer(group, peers: peers) { done(ReplicaCreation($0)) }
    }, remote: { peer, done in
      forwarder.groupOperation("POST", on: peer, target: "/v1/node/groups", body: body) { status, answer in
        done(ReplicaCreation(node: peer.node, status: status, body: answer))
      }
    }) { [self] outcomes in
      let done = outcomes.filter { $0.value.isDone }.map(\.key).sorted()
      let undone = outcomes.filter { !$0.value.isDone }.sorted { $0.key < $1.key }
      precondition(done.count + undone.count == peers.count, "every peer's outcome is counted once")
      if let (node, refusal) = undone.lazy.compactMap({ entry in entry.value.refusal.map { (entry.key, $0) } }).first {
        let kept =
          done.isEmpty
          ? "; no replica of \(group) exists"
          : "; \(group) has replicas on node(s) \(Gateway.list(done)), which keep them"
            + (placementRecorded ? ", and its directory record" : "")
        logger.warning(
          "a peer refused to create its replica of a group",
          metadata: ["group": "\(group)", "refusedBy": "\(node)", "created": "\(done.map(\.description))"])
        return exchange.fail(
          .explained(
            refusal,
            note: kept + ": the same request, retried once node \(node) can host the group, creates the rest, "
              + "and DELETE /v1/groups/\(group) removes what exists"),
          group: group)
      }
      guard undone.isEmpty else {
        let reasons = undone.map { "\($0.key) (\($0.value.failure ?? "failed"))" }.joined(separator: ", ")
        return exchange.fail(
          .consensus(.storage("group \(group) was not created on node(s) \(reasons); retry the request")))
      }
      if !placementRecorded && outcomes.values.allSatisfy({ if case .existed = $0 { true } else { false } }) {
        return exchange.fail(.consensus(.groupAlreadyExists(group)))
      }
      precondition(done.count == peers.count, "a creation is answered 201 only when every peer hosts its replica")
      let body = engine.status(group).map(statusDocument) ?? summary
      exchange.respond(json: body, status: 201, headers: [("Location", "/v1/groups/\(group)")])
    }
  }

  static func list(_ nodes: [NodeID]) -> String { nodes.map(\.description).joined(separator: ", ") }

  /// `{"id","protocol"?,"peers":[<peer>],"bootstrapVoters"?:[<node id>]}`: the body of the
  /// node-local creation (with `bootstrapVoters`, of a joining replica) and a group's summary.
  static func groupDocument(
    _ group: GroupID, _ peers: [Peer], protocolName: String? = nil, bootstrapVoters: [NodeID]? = nil
  ) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("id", group.description)
    if let protocolName { writer.member("protocol", protocolName) }
    writer.key("peers")
    DirectoryRecords.write(peers, to: &writer)
    if let bootstrapVoters {
      writer.key("bootstrapVoters")
      writer.beginArray()
      for voter in bootstrapVoters { writer.number(voter.rawValue) }
      writer.endArray()
    }
    writer.endObject()
    return writer.bytes
  }

  /// deletePeer on every peer of the group: this node's engine, `DELETE /v1/node/groups/{group}`
  /// on the others.
  private func deleteEverywhere(
    _ group: GroupID, _ peers: [Peer], _ forwarder: LeaderForwarder, _ exchange: Exchange,
    recordRevision: UInt64?
  ) {
    fanOut(peers, exchange, local: { [engine] done in
      engine.deletePeer(group) { result in
        switch result {
        case .success: done(200)
        case .failure(.groupNotFound): done(404)
        case .failure: done(0)
        }
      }
    }, remote: { peer, done in
      forwarder.groupOperation("DELETE", on: peer, target: "/v1/node/groups/\(group)", body: []) { status, _ in done(status) }
    }) { [self] statuses in
      let failed = statuses.filter { $0.value != 200 && $0.value != 404 }.map(\.key).sorted()
      guard failed.isEmpty else {
        return exchange.fail(
          .consensus(.storage("group \(group) was not deleted on node(s) \(failed.map(\.description).joined(separator: ", ")); retry the request")))
      }
      answerDeleted(group, exchange, recordRevision: recordRevision)
    }
  }

  /// Runs one operation per peer (local or remote) and calls `finish` once with every peer's
  /// outcome (a status, or what `ReplicaCreation` makes of it).
  func fanOut<Outcome: Sendable>(
    _ peers: [Peer], _ exchange: Exchange,
    local: @escaping @Sendable (@escaping @Sendable (Outcome) -> Void) -> Void,
    remote: @escaping @Sendable (Peer, @escaping @Sendable (Outcome) -> Void) -> Void,
    finish: @escaping @Sendable ([NodeID: Outcome]) -> Void
  ) {
    let outcomes = Locked<[NodeID: Outcome]>([:])
    let expected = peers.count
    for peer in peers {
      let record: @Sendable (Outcome) -> Void = { outcome in
        let all: [NodeID: Outcome]? = outcomes.withLock { outcomes in
          outcomes[peer.node] = outcome
          return outcomes.count == expected ? outcomes : nil
        }
        if let all { finish(all) }
      }
      if peer.node == engine.localPeer.node { local(record) } else { remote(peer, record) }
    }
  }

  // MARK: Documents

  private func rootDocument() -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("name", "caucus")
    writer.member("version", configuration.version)
    writer.member("node", engine.localPeer.node.rawValue)
    writer.member("protocol", engine.protocolName)
    writer.key("links")
    writer.beginObject()
    for (name, link) in [
      ("node", "/v1/node"), ("groups", "/v1/groups"), ("cluster", "/v1/cluster"), ("health", "/healthz"),
      ("ready", "/readyz"), ("metrics", "/metrics"), ("dashboard", "/ui"),
    ] {
      writer.member(name, link)
    }
    writer.endObject()
    writer.endObject()
    return writer.bytes
  }

  private func nodeDocument() -> [UInt8] {
    var writer = JSONWriter()
    writeNodeFields(&writer)
    return writer.bytes
  }

  private func writeNodeFields(_ writer: inout JSONWriter) {
    writer.beginObject()
    writer.member("id", engine.localPeer.node.rawValue)
    writer.member("clientURL", configuration.clientURL)
    writer.member("consensusEndpoint", engine.localPeer.endpoint.description)
    writer.member("protocol", engine.protocolName)
    writer.member("version", configuration.version)
    writer.member("uptimeSeconds", (MonotonicClock.nowNanoseconds() - startedAtNanoseconds) / 1_000_000_000)
    writer.member("dataDir", configuration.dataDirectory)
    let counts = GroupCounts(engine)
    writer.member("groupCount", counts.hosted)
    writer.member("leaderCount", counts.leading)
    let storage = engine.storageCondition
    writer.key("storage")
    writer.beginObject()
    writer.member("state", storage.name)
    if let message = Self.storageMessage(storage) { writer.member("message", message) }
    writer.endObject()
    writer.endObject()
  }

  /// What an operator reads about storage that does not work (nil when it does).
  static func storageMessage(_ condition: StorageCondition) -> String? {
    switch condition {
    case .ok: return nil
    case .outOfSpace(let directory, let reason):
      return "the data directory \(directory) is out of space (\(reason)); writes are refused until space is "
        + "freed there, then the node resumes by itself"
    case .failed(let reason):
      return "storage failed (\(reason)); the node refuses work until it is restarted"
    }
  }

  /// `GET /v1/groups` on this node: the groups it hosts that `scope` reaches.
  private func groupsDocument(_ scope: AccessScope) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("node", engine.localPeer.node.rawValue)
    writer.key("groups")
    writeGroupSummaries(&writer, scope: scope)
    writer.endObject()
    return writer.bytes
  }

  func writeGroupSummaries(_ writer: inout JSONWriter, scope: AccessScope = .unrestricted) {
    writer.beginArray()
    for group in engine.allGroupIDs() where scope.permits(group: group) {
      guard let status = engine.status(group) else { continue }
      writer.beginObject()
      writeSummaryFields(&writer, status)
      writer.key("peers")
      writer.beginArray()
      for peer in status.peers {
        writer.beginObject()
        writer.member("id", peer.peer.node.rawValue)
        writer.member("endpoint", peer.peer.endpoint.description)
        // Which members may take leadership (a leader balance hands it to voters only).
        writer.member("learner", peer.learner)
        writer.endObject()
      }
      writer.endArray()
      writer.endObject()
    }
    writer.endArray()
  }

  func writeSummaryFields(_ writer: inout JSONWriter, _ status: GroupStatus) {
    writer.member("id", status.id.description)
    writer.member("protocol", status.protocolName)
    writer.member("role", status.role.rawValue)
    writer.key("leader")
    if let leader = status.leader { writer.number(leader.node.rawValue) } else { writer.null() }
    writer.member("term", status.term)
    writer.member("commitIndex", status.commitIndex)
    writer.member("appliedIndex", status.appliedIndex)
  }

  func statusDocument(_ status: GroupStatus) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writeSummaryFields(&writer, status)
    writer.member("snapshotIndex", status.snapshotIndex)
    writer.member("quiesced", status.quiesced)
    writer.member("logEntries", status.logEntries)
    writer.member("logBytes", status.logBytes)
    writer.key("peers")
    writer.beginArray()
    for peer in status.peers {
      writer.beginObject()
      writer.member("id", peer.peer.node.rawValue)
      writer.member("endpoint", peer.peer.endpoint.description)
      writer.member("learner", peer.learner)
      writer.member("matchIndex", peer.matchIndex)
      writer.member("nextIndex", peer.nextIndex)
      writer.member("lag", peer.lag)
      writer.key("lastContactMs")
      if let contact = peer.lastContactMs { writer.number(contact) } else { writer.null() }
      writer.member("state", peer.state.rawValue)
      if let sent = peer.snapshotBytesSent { writer.member("snapshotBytesSent", sent) }
      if let total = peer.snapshotBytesTotal { writer.member("snapshotBytesTotal", total) }
      writer.endObject()
    }
    writer.endArray()
    writer.key("bootstrapVoters")
    writer.beginArray()
    for voter in status.bootstrapVoters { writer.number(voter.rawValue) }
    writer.endArray()
    writer.endObject()
    return writer.bytes
  }

  /// Answers `{"id","url","term","local"}` about `group`'s leader. A leader on another node is
  /// named by its client URL, from the directory or asked of its consensus port; `url` is null
  /// only when neither says (the leader's node is unreachable and not in the directory).
  private func respondLeader(_ group: GroupID, _ status: GroupStatus?, _ exchange: Exchange) {
    guard let leader = status?.leader, leader.node != engine.localPeer.node, let forwarder = configuration.forwarder else {
      let url = status?.leader.flatMap { $0.node == engine.localPeer.node ? configuration.clientURL : nil }
      return exchange.respond(json: leaderDocument(status, url: url), headers: leaderHeaders(group))
    }
    forwarder.clientURL(of: leader) { [self] url in
      exchange.respond(json: leaderDocument(status, url: url), headers: leaderHeaders(group))
    }
  }

  private func leaderDocument(_ status: GroupStatus?, url: String?) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.key("id")
    if let leader = status?.leader { writer.number(leader.node.rawValue) } else { writer.null() }
    writer.key("url")
    if let url { writer.string(url) } else { writer.null() }
    writer.member("term", status?.term ?? 0)
    writer.member("local", status?.leader?.node == engine.localPeer.node)
    writer.endObject()
    return writer.bytes
  }

  private func readiness(_ exchange: Exchange) throws(GatewayError) {
    var reasons: [String] = []
    if let storage = Self.storageMessage(engine.storageCondition) {
      reasons.append(storage)
    } else if !engine.isReady {
      reasons.append("storage is not recovered or the engine is not running")
    }
    let groups: [GroupID]
    if let text = exchange.query["group"] {
      let group = try parseGroup(Substring(text))
      guard engine.status(group) != nil else { throw .consensus(.groupNotFound(group)) }
      groups = [group]
    } else {
      groups = engine.allGroupIDs()
    }
    for group in groups where engine.leader(group) == nil { reasons.append("group \(group) has no leader") }
    var writer = JSONWriter()
    writer.beginObject()
    if reasons.isEmpty {
      writer.member("status", "ready")
    } else {
      writer.member("error", "not_ready")
      writer.member("message", reasons.joined(separator: "; "))
      writer.key("reasons")
      writer.beginArray()
      for reason in reasons { writer.string(reason) }
      writer.endArray()
    }
    writer.endObject()
    exchange.respond(
      json: writer.bytes, status: reasons.isEmpty ? 200 : 503, headers: reasons.isEmpty ? [] : [("Retry-After", "1")])
  }

  private func processMetrics() -> String {
    var text = "# HELP caucus_uptime_seconds Seconds since the gateway started.\n# TYPE caucus_uptime_seconds gauge\n"
    text += "caucus_uptime_seconds \((MonotonicClock.nowNanoseconds() - startedAtNanoseconds) / 1_000_000_000)\n"
    if let rss = residentSetBytes() {
      text += "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n"
      text += "process_resident_memory_bytes \(rss)\n"
    }
    return text
  }

  // MARK: Headers

  private func leaderHeaders(_ group: GroupID) -> [(name: String, value: String)] {
    guard let leader = engine.leader(group) else { return [] }
    return [("X-Caucus-Leader", leader.node.description)]
  }

  func groupHeaders(_ status: GroupStatus) -> [(name: String, value: String)] {
    var headers: [(name: String, value: String)] = [("X-Caucus-Index", String(status.appliedIndex))]
    if let leader = status.leader { headers.append(("X-Caucus-Leader", leader.node.description)) }
    return headers
  }
}

/// Limits the gateway enforces on requests, beyond the HTTP server's framing limits.
public enum GatewayLimits {
  /// Items one listing page may return (`limit`): bounds the response size and the time a read holds the group.
  public static let listItemsMax = 1000
  /// Length of an `Idempotency-Key` (printable ASCII): ids are remembered per group, so they are kept small.
  public static let idempotencyKeyBytesMax = 128
  /// A watch answers with no events after this long unless the caller asks otherwise (`timeoutMs`).
  public static let watchTimeoutMsDefault = 30_000
  /// The longest a watch may be held open: bounds how long a connection and a read waiter are
  /// tied up. Longer asks are clamped to it.
  public static let watchTimeoutMsMax = 60_000
  /// Operations in one generic read: with list pages bounded in bytes by the state machine, this
  /// bounds the size of one answer.
  public static let readOperationsMax = 128
  /// The largest backup one `GET /v1/groups/{group}/snapshot` answers by default: the whole state
  /// is built in memory (it lives there anyway), and a follower relays the leader's answer through
  /// its peer client, which takes at least as much (`PeerClientConfiguration.responseBytesMax`;
  /// a node raises it with `--backup-bytes-max`).
  public static let snapshotExportBytesDefault = 64 << 20
  /// The most `--backup-bytes-max` may allow: the whole backup is built in memory, a few copies
  /// of it at once.
  public static let snapshotExportBytesLimit = 2 << 30
  /// Backup exports running or waiting on one node at most: each may hold a few copies of up to
  /// `GatewayConfiguration.snapshotExportBytesMax`; one more is `503 overloaded`.
  public static let snapshotExportsQueuedMax = 2
}

let jsonContentType = (name: "Content-Type", value: HTTPResponse.jsonContentType)

/// Writes `"key"` when the key is UTF-8, else `"keyBase64"`.
func writeKey(_ writer: inout JSONWriter, _ key: KVBytes) { writer.textOrBase64Member("key", key) }

/// `"items": [...]` and `"more"` of a listing page.
func writeItems(_ writer: inout JSONWriter, _ items: [KVEntry], more: Bool) {
  writer.key("items")
  writer.beginArray()
  for item in items {
    writer.beginObject()
    writeItemFields(&writer, item)
    writer.endObject()
  }
  writer.endArray()
  writer.member("more", more)
}

/// `"key"`, `"value"` or `"valueBase64"`, `"revision"` of an item.
func writeItemFields(_ writer: inout JSONWriter, _ entry: KVEntry) {
  writeKey(&writer, entry.key)
  writer.textOrBase64Member("value", entry.value)
  writer.member("revision", entry.revision)
}

func residentSetBytes() -> UInt64? {
  guard let bytes = try? FileSystem.readFile("/proc/self/statm") else { return nil }
  let text = String(decoding: bytes, as: UTF8.self)
  let fields = text.split(separator: " ")
  guard fields.count > 1, let pages = UInt64(fields[1]) else { return nil }
  return pages * 4096
}

/// What became of one peer's replica when a group was created on it (`POST /v1/groups`, and the
/// joining replica of a membership change), from its engine's answer or its `POST /v1/node/groups`.
enum ReplicaCreation: Sendable {
  case created
  /// The peer has a replica of the group already (`409 group_already_exists`).
  case existed
  /// The peer refused for good (a 4xx: its group limit, a bad peer list): the error to answer.
  case refused(GatewayError)
  /// No answer, or a failure that may pass (storage, shutting down, overloaded, any 5xx): why.
  case failed(String)

  /// This node's engine's answer.
  init(_ result: Result<Void, ConsensusError>) {
    switch result {
    case .success: self = .created
    case .failure(.groupAlreadyExists): self = .existed
    case .failure(let error):
      switch error {
      case .groupLimitReached, .illegalPeerNumber, .invalidRequest, .notSupported: self = .refused(.consensus(error))
      default: self = .failed(error.description)
      }
    }
  }

  /// Another node's answer to `POST /v1/node/groups` (status 0: none). A 4xx is a refusal only
  /// with a JSON error body; 408 (the request was cut off) and 429 may pass.
  init(node: NodeID, status: Int, body: [UInt8]) {
    let answer = try? JSONParser.parse(body)
    let code = answer?["error"]?.stringValue
    switch status {
    case 201: self = .created
    case 409 where code == "group_already_exists": self = .existed
    case 400..<500 where status != 408 && status != 429:
      guard let code, let message = answer?["message"]?.stringValue, case .object(let context)? = answer else {
        self = .failed("it answered \(status) without an error body")
        return
      }
      self = .refused(.refusedByPeer(node: node, status: status, code: code, message: message, context: context))
    case 0: self = .failed("no answer")
    default: self = .failed("it answered \(status)" + (code.map { " \($0)" } ?? ""))
    }
  }

  /// The peer hosts its replica now.
  var isDone: Bool {
    switch self {
    case .created, .existed: return true
    case .refused, .failed: return false
    }
  }

  var refusal: GatewayError? {
    if case .refused(let error) = self { return error }
    return nil
  }

  var failure: String? {
    if case .failed(let reason) = self { return reason }
    return nil
  }
}
