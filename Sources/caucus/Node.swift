import ClusterTransport
import Consensus
import Directory
import Gateway
import Glibc
import HTTPServer
import KeyValueStore
import Logging
import PeerClient
import Platform
import RaftConsensus
import StandaloneConsensus

/// The group a fresh node creates so that `curl -X PUT …/DataRegion-0/kv/hello -d world` works at once.
let defaultGroup = GroupID(.dataRegion, 0)

/// The exit status when `CAUCUS_FAILPOINTS` cannot be honoured (a usage error, not a crash).
let failpointsRefusedExitCode: Int32 = 2

/// The exit status when the tokens file (`--auth-tokens-file`) cannot be used at start.
let authTokensRefusedExitCode: Int32 = 2

/// Set when the cluster refuses a `--join` for good; the node then stops and exits 1.
private let joinRefused = Locked<String?>(nil)

/// Wires the modules, serves until SIGINT/SIGTERM, shuts down cleanly. Returns the exit code.
func runNode(_ settings: NodeSettings) -> Int32 {
  // Block the stop signals and SIGHUP (reload the tokens file) in every thread (threads inherit
  // the mask); the main thread waits for them with sigwait, so no handler runs at an arbitrary point.
  var awaitedSignals = sigset_t()
  sigemptyset(&awaitedSignals)
  sigaddset(&awaitedSignals, SIGINT)
  sigaddset(&awaitedSignals, SIGTERM)
  sigaddset(&awaitedSignals, SIGHUP)
  pthread_sigmask(SIG_BLOCK, &awaitedSignals, nil)
  ignoreBrokenPipeSignal()

  let level = settings.logLevel
  LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = level
    return handler
  }
  var logger = Logger(label: "caucus")
  logger[metadataKey: "node"] = "\(settings.nodeID)"
  for property in settings.unknownProperties {
    logger.warning("ignoring a property Caucus does not use", metadata: ["property": "\(property)"])
  }
  // Armed before anything touches the data directory or starts a thread that passes a point.
  let failpoints: [FailpointArming]
  do {
    failpoints = try Failpoints.armFromEnvironment()
  } catch {
    logger.critical("refusing to start: \(error)")
    return failpointsRefusedExitCode
  }
  if !failpoints.isEmpty {
    // Only a torture harness sets it: the node is meant to crash or fail its I/O on purpose.
    logger.critical(
      "FAILPOINTS ARMED: this node kills itself or fails its I/O on purpose; for torture tests only",
      metadata: [
        "variable": "\(Failpoints.environmentVariable)",
        "failpoints": "\(failpoints.map(\.description).joined(separator: ","))",
      ])
  }

  // TLS, when configured: one context for both ports, its files checked before anything listens.
  let tls: TLSContext?
  do {
    tls = try settings.makeTLSContext()
  } catch {
    logger.critical("cannot set up TLS; not starting", metadata: ["error": "\(error)"])
    return tlsRefusedExitCode
  }
  if let tls {
    logger.info(
      "TLS on the client and consensus ports",
      metadata: [
        "certificate": "\(settings.tlsCertificateFile ?? "")", "ca": "\(settings.tlsCAFile ?? "none")",
        "clientCertificates": "\(tls.requiresClientCertificate ? "required" : "not asked for")",
      ])
  }

  // Client authentication: a tokens file that cannot be used stops the start (status 2) before
  // anything listens; without one, every route is open, said loudly once.
  var access = AccessPolicy()
  access.metricsOpen = settings.authMetrics == .open
  access.readinessOpen = settings.authReadyz == .open
  if let path = settings.authTokensFile {
    do {
      access.tokens = try AccessTokenStore(path: path)
    } catch {
      logger.critical("refusing to start: \(error)")
      return authTokensRefusedExitCode
    }
    logger.info(
      "client authentication on",
      metadata: [
        "tokensFile": "\(path)", "tokens": "\(access.tokens?.tokens.tokens.count ?? 0)",
        "metrics": "\(settings.authMetrics)", "readyz": "\(settings.authReadyz)",
      ])
  } else {
    logger.warning(
      "CLIENT AUTHENTICATION IS OFF (no --auth-tokens-file): anyone who reaches the client API can read, write, delete and reconfigure every group",
      metadata: ["address": "\(settings.rpcAddress):\(settings.rpcPort)"])
  }

  var factory = ConsensusFactory()
  StandaloneConsensus.register(in: &factory, logger: Logger(label: "caucus.standalone"))
  // Raft needs the node-to-node side: a consensus-port server and the libcurl client.
  var cluster: ClusterLink?
  var initialPeers = [Peer(node: settings.nodeID, endpoint: settings.consensusEndpoint)]
  if settings.usesRaft {
    do {
      let link = try ClusterLink.start(settings, tls: tls)
      cluster = link
      initialPeers = link.members
      RaftConsensus.register(in: &factory, transport: link.transport, logger: Logger(label: "caucus.raft"))
    } catch {
      logger.critical("cannot start the raft protocol", metadata: ["error": "\(error)"])
      return 1
    }
  } else {
    factory.register("raft", aliases: [IoTDBProtocolClassNames.ratis]) { _ in
      throw ConsensusFactoryError.unavailable(name: "raft", reason: "it needs --cluster 1=host:port,2=host:port,…")
    }
  }

  let identity: NodeIdentity
  do {
    identity = try NodeIdentity.establish(directory: settings.dataDirectory, node: settings.nodeID)
  } catch {
    logger.critical("cannot use the data directory", metadata: ["directory": "\(settings.dataDirectory)", "error": "\(error)"])
    return 1
  }

  var registry = StateMachineRegistry()
  registry.registerDefault { _ in KeyValueStateMachine() }
  let localPeer = Peer(node: settings.nodeID, endpoint: settings.consensusEndpoint)
  let engine: any ConsensusEngine
  do {
    engine = try factory.makeEngine(
      settings.effectiveProtocol,
      config: ConsensusConfig(
        localPeer: localPeer, dataDirectory: settings.dataDirectory, registry: registry,
        options: settings.engineOptions(for: settings.usesRaft ? "raft" : "standalone")))
    try engine.start()
  } catch {
    logger.critical("cannot start the consensus engine", metadata: ["protocol": "\(settings.effectiveProtocol)", "error": "\(error)"])
    cluster?.stop()
    return 1
  }

  if identity.firstStart {
    // Every member of a new cluster creates the directory and the default group with the same
    // initial peers; a joined node hosts nothing until groups are created on it.
    let groups = cluster == nil ? [defaultGroup] : cluster?.join == nil ? [ClusterDirectory.group, defaultGroup] : []
    for group in groups {
      let created = waitForCompletion { engine.createPeer(group, peers: initialPeers, completion: $0) }
      if case .failure(let error) = created, error != .groupAlreadyExists(group) {
        logger.critical("cannot create a group of the new node", metadata: ["group": "\(group)", "error": "\(error)"])
        engine.stop()
        cluster?.stop()
        return 1
      }
    }
    do { try identity.markInitialized() } catch {
      logger.critical("cannot record the node identity", metadata: ["error": "\(error)"])
      engine.stop()
      return 1
    }
  }

  let forwarder = cluster.map { LeaderForwarder(localNode: settings.nodeID, client: $0.client) }
  let directory = cluster.map { link in
    ClusterDirectory(
      engine: engine, transport: forwarder, members: link.members,
      localNode: DirectoryNode(id: settings.nodeID, clientURL: settings.clientURL, consensusEndpoint: link.localEndpoint),
      logger: Logger(label: "caucus.directory"))
  }
  var gatewayConfiguration = GatewayConfiguration(
    clientURL: settings.clientURL, dataDirectory: settings.dataDirectory, version: caucusVersion,
    valueBytesMax: settings.valueBytesMax, requestTimeoutMs: settings.requestTimeoutMs,
    forwarder: forwarder, members: cluster?.members ?? [], directory: directory)
  gatewayConfiguration.metricsGroupsMax = settings.metricsGroupsMax
  gatewayConfiguration.snapshotExportBytesMax = settings.backupBytesMax
  gatewayConfiguration.peerAuthenticator = cluster?.client.authenticator
  gatewayConfiguration.access = access
  gatewayConfiguration.leaderBalance.transfersMax = settings.leaderBalanceTransfersMax
  gatewayConfiguration.leaderBalance.intervalMs = settings.leaderBalanceIntervalMs
  if let cluster {
    gatewayConfiguration.additionalMetrics = { [transport = cluster.transport, client = cluster.client] in
      transport.prometheusMetrics() + client.prometheusMetrics()
    }
  }
  // The servers whose TLS counters /metrics shows (the client port's joins once it exists).
  let tlsServers = Locked<[(port: String, server: HTTPServer)]>(cluster.map { [("consensus", $0.server)] } ?? [])
  if tls != nil {
    let earlier = gatewayConfiguration.additionalMetrics
    gatewayConfiguration.additionalMetrics = { (earlier?() ?? "") + tlsPrometheusMetrics(tlsServers.withLock { $0 }) }
  }
  if let bug = getenv(plantedBugEnvironmentVariable).map({ String(cString: $0) }) {
    // Only `caucus torture --plant-bug` sets it, to prove its checker catches the bug.
    guard bug == "local-reads" else {
      logger.critical("unknown planted bug", metadata: ["variable": "\(plantedBugEnvironmentVariable)", "value": "\(bug)"])
      engine.stop()
      cluster?.stop()
      return 1
    }
    gatewayConfiguration.plantedLocalReads = true
    Logger(label: "caucus").critical(
      "PLANTED BUG: linearizable reads are served locally (stale); this node is for torture tests only",
      metadata: ["variable": "\(plantedBugEnvironmentVariable)"])
  }
  let gateway = Gateway(engine: engine, configuration: gatewayConfiguration)
  // Other nodes run createPeer/deletePeer here over the consensus port.
  cluster?.handler.setGroupOperationsHandler(gateway)
  var serverConfiguration = HTTPServerConfiguration()
  serverConfiguration.host = settings.rpcAddress
  serverConfiguration.port = settings.rpcPort
  // Room for the largest value plus request framing; a larger body is refused by the server.
  serverConfiguration.bodyBytesMax = settings.valueBytesMax + 64 * 1024
  serverConfiguration.connectionsMax = settings.connectionsMax
  serverConfiguration.serverResponseHeaders = [("X-Caucus-Node", settings.nodeID.description)]
  serverConfiguration.tls = tls
  let server = HTTPServer(configuration: serverConfiguration, handler: gateway)
  let port: UInt16
  do {
    port = try server.start()
  } catch {
    logger.critical("cannot listen for clients", metadata: ["address": "\(settings.rpcAddress):\(settings.rpcPort)", "error": "\(error)"])
    engine.stop()
    return 1
  }
  tlsServers.withLock { $0.append(("client", server)) }
  logger.info(
    "serving",
    metadata: [
      "url": "\(settings.clientScheme)://\(settings.rpcAddress):\(port)", "protocol": "\(engine.protocolName)",
      "dataDir": "\(settings.dataDirectory)", "groups": "\(engine.allGroupIDs().map(\.description))",
    ])

  // Registration runs in the background, retrying until the directory takes it: a member's own
  // records on every start; a joined node registers again on every start (it keeps no list of
  // members on disk, it learns them from the answer).
  if let directory, let cluster {
    if let endpoint = cluster.join {
      directory.join(through: endpoint) { message in
        joinRefused.withLock { $0 = message }
        kill(getpid(), SIGTERM)  // the main thread's sigwait stops the node
      }
    } else {
      directory.registerMember(recording: [ClusterDirectory.group, defaultGroup])
    }
  }

  var received: Int32 = 0
  while true {
    sigwait(&awaitedSignals, &received)
    guard received == SIGHUP else { break }
    reloadTokens(access.tokens, logger)
    reloadTLS(settings, [server] + (cluster.map { [$0.server] } ?? []), logger)
  }
  let refusal = joinRefused.withLock { $0 }
  if let refusal {
    logger.critical("the cluster refused this node; stopping", metadata: ["reason": "\(refusal)"])
  } else {
    logger.info("stopping", metadata: ["signal": "\(received == SIGTERM ? "SIGTERM" : "SIGINT")"])
  }
  // Stop accepting, let in-flight requests finish, then sync and close the log.
  server.shutdown(gracePeriodMs: 5_000)
  directory?.stop()
  gateway.stop()
  engine.stop()
  cluster?.stop()
  logger.info("stopped")
  return refusal == nil ? 0 : 1
}

/// SIGHUP: reads the tokens file again. A file that cannot be used changes nothing: the node
/// keeps the tokens it had and says why.
private func reloadTokens(_ store: AccessTokenStore?, _ logger: Logger) {
  guard let store else {
    return logger.info("SIGHUP: nothing to reload (no --auth-tokens-file)")
  }
  do {
    let count = try store.reload()
    logger.notice("reloaded the tokens file", metadata: ["tokensFile": "\(store.path)", "tokens": "\(count)"])
  } catch {
    logger.error(
      "SIGHUP: the tokens file cannot be used; keeping the tokens loaded before",
      metadata: ["tokensFile": "\(store.path)", "error": "\(error)", "tokens": "\(store.tokens.tokens.count)"])
  }
}

/// SIGHUP, with TLS: reads the certificate, key and CA files again (each checked as at start) and
/// gives both ports the new context for new connections; the peer client reads the files for
/// each new connection anyway. Files that cannot be used change nothing: the node keeps serving
/// with the certificates it had and says why.
private func reloadTLS(_ settings: NodeSettings, _ servers: [HTTPServer], _ logger: Logger) {
  guard settings.tlsEnabled else { return }
  do {
    guard let context = try settings.makeTLSContext() else { return }
    for server in servers { server.replaceTLSContext(context) }
    logger.notice(
      "reloaded the TLS certificate; new connections use it",
      metadata: ["certificate": "\(settings.tlsCertificateFile ?? "")", "ca": "\(settings.tlsCAFile ?? "none")"])
  } catch {
    logger.error(
      "SIGHUP: the TLS files cannot be used; keeping the certificate loaded before",
      metadata: ["certificate": "\(settings.tlsCertificateFile ?? "")", "error": "\(error)"])
  }
}

/// The data directory's record of which node owns it. A directory written by another node id is
/// refused, so a mistyped --node-id cannot mix two nodes' data.
struct NodeIdentity {
  let path: String
  let node: NodeID
  let firstStart: Bool

  static func establish(directory: String, node: NodeID) throws -> NodeIdentity {
    try FileSystem.makeDirectories(directory, durable: true)
    let path = directory + "/node-identity"
    if let text = readTextFile(path) {
      let fields = text.split(whereSeparator: { $0 == "\n" || $0 == "=" })
      guard fields.count >= 2, fields[0] == "node", let recorded = UInt64(fields[1]) else {
        throw SettingsError(description: "\(path) is not a node identity file (expected 'node=<id>')")
      }
      guard recorded == node.rawValue else {
        throw SettingsError(
          description: "\(directory) belongs to node \(recorded), not node \(node); pass --node-id \(recorded) or another --data-dir")
      }
      return NodeIdentity(path: path, node: node, firstStart: false)
    }
    return NodeIdentity(path: path, node: node, firstStart: true)
  }

  /// Written after the first start's setup, so a crash during setup repeats it.
  func markInitialized() throws {
    try writeTextFileDurably(path, "node=\(node.rawValue)\n")
  }
}

/// The node-to-node side of a raft node: the libcurl client, the HTTP transport and the
/// consensus-port server that receives batches.
struct ClusterLink {
  /// The directory group's members (`--cluster`); empty for a joined node until it learns them.
  let members: [Peer]
  /// The member a `--join` node registers through (its consensus endpoint).
  let join: Endpoint?
  let localEndpoint: Endpoint
  let client: PeerClient
  let transport: HTTPRaftTransport
  let server: HTTPServer
  let handler: ConsensusPortHandler

  static func start(_ settings: NodeSettings, tls: TLSContext?) throws -> ClusterLink {
    let members: [Peer]
    var join: Endpoint?
    let localEndpoint: Endpoint
    switch (settings.cluster, settings.join) {
    case (.some, .some):
      throw SettingsError(description: "give --cluster (a member of the directory group) or --join (a node joining through a member), not both")
    case (nil, nil):
      throw SettingsError(description: "the raft protocol needs --cluster 1=host:port,2=host:port,… or --join host:port")
    case (nil, .some(let text)):
      guard let endpoint = Endpoint(parsing: text) else {
        throw SettingsError(description: "--join must be a member's consensus endpoint host:port, not '\(text)'")
      }
      guard endpoint != settings.consensusEndpoint else {
        throw SettingsError(description: "--join names this node's own consensus endpoint; give a member's")
      }
      members = []
      join = endpoint
      localEndpoint = settings.consensusEndpoint
    case (.some(let list), nil):
      members = try parseClusterList(list)
      guard let local = members.first(where: { $0.node == settings.nodeID }) else {
        throw SettingsError(description: "--cluster does not name this node (--node-id \(settings.nodeID))")
      }
      localEndpoint = local.endpoint
    }
    PeerClient.globalInit()
    var clientConfiguration = PeerClientConfiguration()
    // Forwarded client requests ride these connections too: as many in parallel to the leader as
    // clients may have in flight here, or a follower caps the cluster's throughput.
    clientConfiguration.connectionsPerHostMax = 128
    clientConfiguration.idleConnectionsMax = 256
    // A follower relays the leader's backups: the largest answer is the largest backup (and a
    // little for its headers).
    clientConfiguration.responseBytesMax = max(clientConfiguration.responseBytesMax, settings.backupBytesMax + (64 << 10))
    var authenticator: PeerAuthenticator?
    if let path = settings.clusterSecretFile {
      do {
        authenticator = try PeerAuthenticator(secret: PeerAuthenticator.secret(fromFile: path), node: settings.nodeID.rawValue)
      } catch {
        throw SettingsError(description: "--cluster-secret-file: \(error)")
      }
    } else {
      Logger(label: "caucus").warning(
        "no cluster secret (--cluster-secret-file): any host that reaches the consensus port can append, vote, create groups and register nodes")
    }
    clientConfiguration.tls = settings.peerTLSConfiguration
    let client = try PeerClient(configuration: clientConfiguration, authenticator: authenticator)
    let transport = try HTTPRaftTransport(localNode: settings.nodeID, client: client)
    var configuration = HTTPServerConfiguration()
    configuration.host = settings.consensusAddress ?? settings.rpcAddress
    // A --cluster member listens where the list names it; a joining node on its own port (its
    // advertised endpoint may be another address's).
    configuration.port = join == nil ? localEndpoint.port : settings.consensusPort
    // Message batches carry entries and snapshots: far larger than a client value.
    configuration.bodyBytesMax = 64 << 20
    configuration.serverResponseHeaders = [("X-Caucus-Node", settings.nodeID.description)]
    configuration.tls = tls
    let handler = ConsensusPortHandler(
      transport: transport, node: settings.nodeID, clientURL: settings.clientURL, consensusEndpoint: localEndpoint,
      authenticator: authenticator)
    let server = HTTPServer(configuration: configuration, handler: handler)
    _ = try server.start()
    return ClusterLink(
      members: members, join: join, localEndpoint: localEndpoint, client: client, transport: transport, server: server,
      handler: handler)
  }

  func stop() {
    server.shutdown(gracePeriodMs: 1_000)
    client.shutdown()
  }
}

/// Parses `1=host:port,2=host:port,…` (IoTDB's `config_node_group_address_list`; a bare
/// `host:port` list takes ids by position).
func parseClusterList(_ text: String) throws -> [Peer] {
  var peers: [Peer] = []
  for (position, item) in text.split(separator: ",").enumerated() {
    let parts = item.split(separator: "=", maxSplits: 1)
    let idText = parts.count == 2 ? parts[0] : Substring(String(position + 1))
    let endpointText = parts.count == 2 ? parts[1] : parts[0]
    guard let node = NodeID(parsing: String(idText).trimmingCharacters(in: " ")) else {
      throw SettingsError(description: "--cluster: '\(idText)' is not a positive node id")
    }
    guard let endpoint = Endpoint(parsing: String(endpointText).trimmingCharacters(in: " ")) else {
      throw SettingsError(description: "--cluster: '\(endpointText)' is not host:port")
    }
    guard !peers.contains(where: { $0.node == node }) else { throw SettingsError(description: "--cluster names node \(node) twice") }
    peers.append(Peer(node: node, endpoint: endpoint))
  }
  guard !peers.isEmpty else { throw SettingsError(description: "--cluster is empty") }
  // The members form the directory group, whose record names at most groupPeersMax peers.
  guard peers.count <= DirectoryRecords.groupPeersMax else {
    throw SettingsError(
      description:
        "--cluster names \(peers.count) members; the directory group has at most \(DirectoryRecords.groupPeersMax) (add further nodes with --join)")
  }
  return peers
}
