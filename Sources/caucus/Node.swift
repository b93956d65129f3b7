import Consensus
import Gateway
import Glibc
import HTTPServer
import KeyValueStore
import Logging
import Platform
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
  factory.register("raft", aliases: [IoTDBProtocolClassNames.ratis]) { _ in
    throw ConsensusFactoryError.unavailable(
      name: "raft", reason: "the multi-node raft protocol is not in this build yet; use --protocol standalone")
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
        localPeer: localPeer, dataDirectory: settings.dataDirectory, registry: registry, options: settings.engineOptions))
    try engine.start()
  } catch {
    logger.critical("cannot start the consensus engine", metadata: ["protocol": "\(settings.effectiveProtocol)", "error": "\(error)"])
    return 1
  }

  if identity.firstStart {
    let created = waitForCompletion { engine.createPeer(defaultGroup, peers: [localPeer], completion: $0) }
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
      valueBytesMax: settings.valueBytesMax, requestTimeoutMs: settings.requestTimeoutMs))
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
