import ClusterTransport
import Consensus
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

/// Wires the modules, serves until SIGINT/SIGTERM, shuts down cleanly. Returns the exit code.
func runNode(_ settings: NodeSettings) -> Int32 {
  // Block the stop signals in every thread (threads inherit the mask); the main thread waits for
  // them with sigwait, so no handler runs at an arbitrary point.
  var stopSignals = sigset_t()
  sigemptyset(&stopSignals)
  sigaddset(&stopSignals, SIGINT)
  sigaddset(&stopSignals, SIGTERM)
  pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
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

  var factory = ConsensusFactory()
  StandaloneConsensus.register(in: &factory, logger: Logger(label: "caucus.standalone"))
  // Raft needs the node-to-node side: a consensus-port server and the libcurl client.
  var cluster: ClusterLink?
  var initialPeers = [Peer(node: settings.nodeID, endpoint: settings.consensusEndpoint)]
  if settings.usesRaft {
    do {
      let link = try ClusterLink.start(settings)
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
    // Every member of a new cluster creates the default group with the same initial peers.
    let created = waitForCompletion { engine.createPeer(defaultGroup, peers: initialPeers, completion: $0) }
    if case .failure(let error) = created, error != .groupAlreadyExists(defaultGroup) {
      logger.critical("cannot create the default group", metadata: ["group": "\(defaultGroup)", "error": "\(error)"])
      engine.stop()
      return 1
    }
    do { try identity.markInitialized() } catch {
      logger.critical("cannot record the node identity", metadata: ["error": "\(error)"])
      engine.stop()
      return 1
    }
  }

  let gateway = Gateway(
    engine: engine,
    configuration: GatewayConfiguration(
      clientURL: settings.clientURL, dataDirectory: settings.dataDirectory, version: caucusVersion,
      valueBytesMax: settings.valueBytesMax, requestTimeoutMs: settings.requestTimeoutMs,
      forwarder: cluster.map { LeaderForwarder(localNode: settings.nodeID, client: $0.client) },
      members: cluster?.members ?? []))
  var serverConfiguration = HTTPServerConfiguration()
  serverConfiguration.host = settings.rpcAddress
  serverConfiguration.port = settings.rpcPort
  // Room for the largest value plus request framing; a larger body is refused by the server.
  serverConfiguration.bodyBytesMax = settings.valueBytesMax + 64 * 1024
  serverConfiguration.connectionsMax = settings.connectionsMax
  serverConfiguration.serverResponseHeaders = [("X-Caucus-Node", settings.nodeID.description)]
  let server = HTTPServer(configuration: serverConfiguration, handler: gateway)
  let port: UInt16
  do {
    port = try server.start()
  } catch {
    logger.critical("cannot listen for clients", metadata: ["address": "\(settings.rpcAddress):\(settings.rpcPort)", "error": "\(error)"])
    engine.stop()
    return 1
  }
  logger.info(
    "serving",
    metadata: [
      "url": "http://\(settings.rpcAddress):\(port)", "protocol": "\(engine.protocolName)",
      "dataDir": "\(settings.dataDirectory)", "groups": "\(engine.allGroupIDs().map(\.description))",
    ])

  var received: Int32 = 0
  sigwait(&stopSignals, &received)
  logger.info("stopping", metadata: ["signal": "\(received == SIGTERM ? "SIGTERM" : "SIGINT")"])
  // Stop accepting, let in-flight requests finish, then sync and close the log.
  server.shutdown(gracePeriodMs: 5_000)
  gateway.stop()
  engine.stop()
  cluster?.stop()
  logger.info("stopped")
  return 0
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
  let members: [Peer]
  let client: PeerClient
  let transport: HTTPRaftTransport
  let server: HTTPServer

  static func start(_ settings: NodeSettings) throws -> ClusterLink {
    guard settings.join == nil else {
      throw SettingsError(description: "--join is not available yet; start every member with the same --cluster list")
    }
    guard let list = settings.cluster else {
      throw SettingsError(description: "the raft protocol needs --cluster 1=host:port,2=host:port,…")
    }
    let members = try parseClusterList(list)
    guard let local = members.first(where: { $0.node == settings.nodeID }) else {
      throw SettingsError(description: "--cluster does not name this node (--node-id \(settings.nodeID))")
    }
    PeerClient.globalInit()
    var clientConfiguration = PeerClientConfiguration()
    // Forwarded client requests ride these connections too: as many in parallel to the leader as
    // clients may have in flight here, or a follower caps the cluster's throughput.
    clientConfiguration.connectionsPerHostMax = 128
    clientConfiguration.idleConnectionsMax = 256
    let client = try PeerClient(configuration: clientConfiguration)
    let transport = try HTTPRaftTransport(localNode: settings.nodeID, client: client)
    var configuration = HTTPServerConfiguration()
    configuration.host = settings.consensusAddress ?? settings.rpcAddress
    configuration.port = local.endpoint.port
    // Message batches carry entries and snapshots: far larger than a client value.
    configuration.bodyBytesMax = 64 << 20
    configuration.serverResponseHeaders = [("X-Caucus-Node", settings.nodeID.description)]
    let handler = ConsensusPortHandler(
      transport: transport, node: settings.nodeID, clientURL: settings.clientURL, consensusEndpoint: local.endpoint)
    let server = HTTPServer(configuration: configuration, handler: handler)
    _ = try server.start()
    return ClusterLink(members: members, client: client, transport: transport, server: server)
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
  return peers
}
