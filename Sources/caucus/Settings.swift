import Consensus
import Directory
import Gateway
import Glibc
import Logging

struct SettingsError: Error, CustomStringConvertible {
  let description: String
}

/// Everything a node needs to start, after flags, the properties file and defaults are merged.
struct NodeSettings {
  var nodeID = NodeID(1)
  var rpcAddress = "127.0.0.1"
  var rpcPort: UInt16 = 6667
  var consensusAddress: String?
  var consensusPort: UInt16 = 40010
  var dataDirectory = "./caucus-data"
  var protocolName: String?
  var cluster: String?
  var join: String?
  var electionTimeoutMs: UInt32 = 1000
  var heartbeatIntervalMs: UInt32 = 100
  var valueBytesMax = 1 << 20
  var connectionsMax = 10_000
  var requestTimeoutMs: UInt32 = 10_000
  /// While the data directory is full, the engine's interval between checks for space.
  var outOfSpaceRetryMs: UInt32 = 1_000
  /// `/metrics` writes per-group series for at most this many groups (0: none).
  var metricsGroupsMax = GatewayConfiguration.metricsGroupsMaxDefault
  /// The largest backup a node exports (`GET /v1/groups/{group}/snapshot`), and so the least its
  /// peer client takes in one relayed answer.
  var backupBytesMax = GatewayLimits.snapshotExportBytesDefault
  /// Leader transfers one balance makes at most (`POST /v1/cluster/rebalance`, `?max=` up to it).
  var leaderBalanceTransfersMax = LeaderBalanceOptions().transfersMax
  /// How often the lowest-id node that answers balances leadership by itself (0: never).
  var leaderBalanceIntervalMs = LeaderBalanceOptions().intervalMs
  var logLevel = Logger.Level.info
  /// A file holding the cluster secret every node-to-node request proves (`PeerAuthenticator`).
  var clusterSecretFile: String?
  /// TLS on both ports: this node's certificate chain and key (PEM), both or neither (plain http).
  var tlsCertificateFile: String?
  var tlsKeyFile: String?
  /// The cluster CA (PEM): peers' certificates are verified with it, and clients' with `tlsClientAuth`.
  var tlsCAFile: String?
  /// Both ports require a client certificate that chains to `tlsCAFile`.
  var tlsClientAuth = false
  /// The client tokens file (`AccessTokens`); nil: client authentication is off.
  var authTokensFile: String?
  /// With tokens: whether `/metrics` and `/readyz` stay open (the default) or need a read token.
  var authMetrics = Permission.open
  var authReadyz = Permission.open
  /// Protocol options from the properties file (`<protocol>.<name>=value`), by protocol.
  var protocolOptions: [String: [String: String]] = [:]

  /// As many groups as a node can host (`raft.groupsMax` is at most 32768): a higher setting would
  /// mean the same.
  static let metricsGroupsMaxLimit = 32_768

  func engineOptions(for protocolName: String) -> [String: String] {
    var options = protocolOptions[protocolName] ?? [:]
    options["outOfSpaceRetryMs"] = options["outOfSpaceRetryMs"] ?? String(outOfSpaceRetryMs)
    if protocolName == "raft" {
      // Raft timing from the flags: a tick per heartbeat, an election timeout in ticks.
      options["tickIntervalMs"] = options["tickIntervalMs"] ?? String(heartbeatIntervalMs)
      options["electionTicks"] = options["electionTicks"] ?? String(electionTimeoutMs / heartbeatIntervalMs)
    }
    return options
  }

  /// Whether the effective protocol is raft (by its name or IoTDB's class name).
  var usesRaft: Bool { effectiveProtocol == "raft" || effectiveProtocol == IoTDBProtocolClassNames.ratis }
  /// Properties the file names that Caucus does not use (IoTDB files carry many); logged at start.
  var unknownProperties: [String] = []

  /// The protocol name: given, or `raft` with --cluster/--join, else `standalone`.
  var effectiveProtocol: String {
    protocolName ?? ((cluster != nil || join != nil) ? "raft" : "standalone")
  }

  /// Where other nodes reach this one's consensus port: `--advertise-consensus-endpoint`, else
  /// the bind address and port (a wildcard bind address reaches nothing: `validate` refuses it
  /// for a joining node, which records this endpoint in the directory).
  var consensusEndpoint: Endpoint {
    advertisedConsensusEndpoint ?? Endpoint(host: consensusAddress ?? rpcAddress, port: consensusPort)
  }
  var advertisedConsensusEndpoint: Endpoint?

  /// TLS is on (both ports, and every node-to-node request) when a certificate is given.
  var tlsEnabled: Bool { tlsCertificateFile != nil }

  /// The scheme of this node's URLs: `https` with TLS.
  var clientScheme: String { tlsEnabled ? "https" : "http" }

  /// The URL other nodes and redirects use for this node's client API: `--client-url`, else
  /// derived from the rpc address (0.0.0.0 becomes 127.0.0.1, right only on one machine).
  var clientURL: String {
    if let advertisedClientURL { return advertisedClientURL }
    let host = rpcAddress == "0.0.0.0" ? "127.0.0.1" : rpcAddress
    return "\(clientScheme)://\(host):\(rpcPort)"
  }
  var advertisedClientURL: String?

  static func resolve(flags: Serve) throws(SettingsError) -> NodeSettings {
    var settings = NodeSettings()
    if let path = flags.config { try settings.apply(propertiesFile: path) }
    if let value = flags.nodeId {
      guard value > 0 else { throw SettingsError(description: "--node-id must be a positive integer") }
      settings.nodeID = NodeID(value)
    }
    if let value = flags.rpcAddress { settings.rpcAddress = value }
    if let value = flags.rpcPort { settings.rpcPort = value }
    if let value = flags.clientUrl { settings.advertisedClientURL = value }
    if let value = flags.consensusAddress { settings.consensusAddress = value }
    if let value = flags.advertiseConsensusEndpoint {
      guard let endpoint = Endpoint(parsing: value) else {
        throw SettingsError(description: "--advertise-consensus-endpoint must be host:port, not '\(value)'")
      }
      settings.advertisedConsensusEndpoint = endpoint
    }
    if let value = flags.consensusPort { settings.consensusPort = value }
    if let value = flags.dataDir { settings.dataDirectory = value }
    if let value = flags.protocolName { settings.protocolName = value }
    if let value = flags.cluster { settings.cluster = value }
    if let value = flags.join { settings.join = value }
    if let value = flags.electionTimeoutMs { settings.electionTimeoutMs = value }
    if let value = flags.heartbeatIntervalMs { settings.heartbeatIntervalMs = value }
    if let value = flags.valueBytesMax { settings.valueBytesMax = value }
    if let value = flags.connectionsMax { settings.connectionsMax = value }
    if let value = flags.requestTimeoutMs { settings.requestTimeoutMs = value }
    if let value = flags.outOfSpaceRetryMs { settings.outOfSpaceRetryMs = value }
    if let value = flags.metricsGroupsMax { settings.metricsGroupsMax = value }
    if let value = flags.backupBytesMax { settings.backupBytesMax = value }
    if let value = flags.clusterSecretFile { settings.clusterSecretFile = value }
    if let value = flags.authTokensFile { settings.authTokensFile = value }
    if let value = flags.authMetrics { settings.authMetrics = try openOrRead(value, name: "--auth-metrics") }
    if let value = flags.authReadyz { settings.authReadyz = try openOrRead(value, name: "--auth-readyz") }
    if let value = flags.leaderBalanceTransfersMax { settings.leaderBalanceTransfersMax = value }
    if let value = flags.leaderBalanceIntervalMs { settings.leaderBalanceIntervalMs = value }
    if let value = flags.tlsCertFile { settings.tlsCertificateFile = value }
    if let value = flags.tlsKeyFile { settings.tlsKeyFile = value }
    if let value = flags.tlsCaFile { settings.tlsCAFile = value }
    if flags.tlsClientAuth { settings.tlsClientAuth = true }
    if let value = flags.logLevel {
      guard let level = Logger.Level(rawValue: value) else {
        throw SettingsError(description: "--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
      }
      settings.logLevel = level
    }
    try settings.validate()
    return settings
  }

  func validate() throws(SettingsError) {
    guard rpcPort > 0 else { throw SettingsError(description: "the rpc port must be 1...65535") }
    if let url = advertisedClientURL {
      guard DirectoryRecords.isClientURL(url) else {
        throw SettingsError(description: "--client-url must look like http://host:port or https://host:port (no trailing slash)")
      }
    }
    guard consensusPort > 0 else { throw SettingsError(description: "the consensus port must be 1...65535") }
    let bindHost = consensusAddress ?? rpcAddress
    if join != nil, advertisedConsensusEndpoint == nil, ["0.0.0.0", "::", "[::]"].contains(bindHost) {
      throw SettingsError(
        description: "--join with the wildcard consensus address \(bindHost) would record \(bindHost):\(consensusPort) in the "
          + "directory, where no node can reach it: give --advertise-consensus-endpoint HOST:PORT (the address the others "
          + "reach this node's consensus port at, e.g. its service name in compose)")
    }
    guard !dataDirectory.isEmpty else { throw SettingsError(description: "the data directory must not be empty") }
    // A write's value travels in one log record (16 MiB at most, framing and batch overhead
    // included), so values stay well below it.
    guard (1...(8 << 20)).contains(valueBytesMax) else {
      throw SettingsError(description: "--value-bytes-max must be 1...8388608")
    }
    guard (1...1_000_000).contains(connectionsMax) else {
      throw SettingsError(description: "--connections-max must be 1...1000000")
    }
    guard (100...600_000).contains(requestTimeoutMs) else {
      throw SettingsError(description: "--request-timeout-ms must be 100...600000")
    }
    guard (10...600_000).contains(outOfSpaceRetryMs) else {
      throw SettingsError(description: "--out-of-space-retry-ms must be 10...600000")
    }
    guard ((1 << 20)...GatewayLimits.snapshotExportBytesLimit).contains(backupBytesMax) else {
      throw SettingsError(description: "--backup-bytes-max must be \(1 << 20)...\(GatewayLimits.snapshotExportBytesLimit)")
    }
    guard (0...NodeSettings.metricsGroupsMaxLimit).contains(metricsGroupsMax) else {
      throw SettingsError(description: "--metrics-groups-max must be 0...\(NodeSettings.metricsGroupsMaxLimit)")
    }
    guard (1...LeaderBalanceOptions.transfersMaxLimit).contains(leaderBalanceTransfersMax) else {
      throw SettingsError(description: "--leader-balance-transfers-max must be 1...\(LeaderBalanceOptions.transfersMaxLimit)")
    }
    guard leaderBalanceIntervalMs == 0 || (LeaderBalanceOptions.intervalMsMin...86_400_000).contains(leaderBalanceIntervalMs) else {
      throw SettingsError(
        description: "--leader-balance-interval-ms must be 0 (off) or \(LeaderBalanceOptions.intervalMsMin)...86400000")
    }
    guard heartbeatIntervalMs > 0, electionTimeoutMs >= 2 * heartbeatIntervalMs else {
      throw SettingsError(description: "the election timeout must be at least twice the heartbeat interval, both positive")
    }
    // Nodes prove their own requests to each other's client APIs (directory reads and writes,
    // relayed requests, cluster views) with the cluster secret; without it they would be refused,
    // and the consensus port would stay open to anyone anyway.
    if authTokensFile != nil && usesRaft && clusterSecretFile == nil {
      throw SettingsError(
        description: "--auth-tokens-file in a cluster needs --cluster-secret-file too: nodes prove their own requests to each other with it")
    }
    try validateTLS()
  }

  /// Which TLS settings go together (the files themselves are checked when the node builds its
  /// TLS context, before it listens).
  func validateTLS() throws(SettingsError) {
    guard (tlsCertificateFile == nil) == (tlsKeyFile == nil) else {
      throw SettingsError(description: "--tls-cert-file and --tls-key-file go together: give both (TLS on) or neither (plain http)")
    }
    guard tlsEnabled else {
      if tlsCAFile != nil || tlsClientAuth {
        throw SettingsError(description: "--tls-ca-file and --tls-client-auth need --tls-cert-file and --tls-key-file (TLS is off without them)")
      }
      return
    }
    if tlsClientAuth && tlsCAFile == nil {
      throw SettingsError(description: "--tls-client-auth needs --tls-ca-file: the CA that client certificates must be signed by")
    }
    if usesRaft && tlsCAFile == nil {
      throw SettingsError(description: "a raft node with TLS needs --tls-ca-file: the cluster CA its peers' certificates are verified with")
    }
    if let url = advertisedClientURL, !url.hasPrefix("https://") {
      throw SettingsError(description: "--client-url must start with https:// when TLS is on (--tls-cert-file), not '\(url)'")
    }
  }

  /// Reads `key=value` lines; IoTDB's names and Caucus's own (`node_id`, `data_dir`, …) are accepted.
  mutating func apply(propertiesFile path: String) throws(SettingsError) {
    guard let file = fopen(path, "r") else {
      throw SettingsError(description: "cannot read the properties file \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var lineNumber = 0
    var buffer = [CChar](repeating: 0, count: 8192)
    while fgets(&buffer, Int32(buffer.count), file) != nil {
      lineNumber += 1
      let line = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
      let trimmed = line.trimmingCharacters(in: " \t\r\n")
      if trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed.hasPrefix("!") { continue }
      guard let equals = trimmed.firstIndex(of: "=") else {
        throw SettingsError(description: "\(path):\(lineNumber): expected key=value, found '\(trimmed)'")
      }
      let key = String(trimmed[..<equals]).trimmingCharacters(in: " \t").replacingDashes
      let value = String(trimmed[trimmed.index(after: equals)...]).trimmingCharacters(in: " \t")
      try apply(key: key, value: value, location: "\(path):\(lineNumber)")
    }
  }

  private mutating func apply(key: String, value: String, location: String) throws(SettingsError) {
    func number<T: FixedWidthInteger>(_ type: T.Type) throws(SettingsError) -> T {
      guard let parsed = T(value) else { throw SettingsError(description: "\(location): \(key) must be an integer, not '\(value)'") }
      return parsed
    }
    switch key {
    case "node_id", "dn_data_node_id", "data_node_id":
      let id = try number(UInt64.self)
      guard id > 0 else { throw SettingsError(description: "\(location): node_id must be positive") }
      nodeID = NodeID(id)
    case "rpc_address", "dn_rpc_address": rpcAddress = value
    case "rpc_port", "dn_rpc_port": rpcPort = try number(UInt16.self)
    case "client_url": advertisedClientURL = value
    case "internal_ip", "dn_internal_address", "consensus_address": consensusAddress = value
    case "advertise_consensus_endpoint":
      guard let endpoint = Endpoint(parsing: value) else {
        throw SettingsError(description: "\(location): advertise_consensus_endpoint must be host:port, not '\(value)'")
      }
      advertisedConsensusEndpoint = endpoint
    case "consensus_port", "dn_data_region_consensus_port": consensusPort = try number(UInt16.self)
    case "consensus_dir", "dn_consensus_dir", "data_dir": dataDirectory = value
    case "data_node_consensus_protocol_class", "data_region_consensus_protocol_class",
      "schema_region_consensus_protocol_class", "config_node_consensus_protocol_class", "protocol":
      protocolName = value
    case "config_node_group_address_list", "cluster": cluster = value
    case "join": join = value
    case "election_timeout_ms": electionTimeoutMs = try number(UInt32.self)
    case "heartbeat_interval_ms": heartbeatIntervalMs = try number(UInt32.self)
    case "value_bytes_max": valueBytesMax = try number(Int.self)
    case "connections_max": connectionsMax = try number(Int.self)
    case "request_timeout_ms": requestTimeoutMs = try number(UInt32.self)
    case "out_of_space_retry_ms": outOfSpaceRetryMs = try number(UInt32.self)
    case "metrics_groups_max": metricsGroupsMax = try number(Int.self)
    case "backup_bytes_max": backupBytesMax = try number(Int.self)
    case "cluster_secret_file": clusterSecretFile = value
    case "auth_tokens_file": authTokensFile = value
    case "auth_metrics": authMetrics = try openOrRead(value, name: "\(location): auth_metrics")
    case "auth_readyz": authReadyz = try openOrRead(value, name: "\(location): auth_readyz")
    case "leader_balance_transfers_max": leaderBalanceTransfersMax = try number(Int.self)
    case "leader_balance_interval_ms": leaderBalanceIntervalMs = try number(UInt32.self)
    case "tls_cert_file": tlsCertificateFile = value
    case "tls_key_file": tlsKeyFile = value
    case "tls_ca_file": tlsCAFile = value
    case "tls_client_auth":
      guard let enabled = Bool(value) else { throw SettingsError(description: "\(location): tls_client_auth must be true or false, not '\(value)'") }
      tlsClientAuth = enabled
    case "log_level":
      guard let level = Logger.Level(rawValue: value) else { throw SettingsError(description: "\(location): unknown log_level '\(value)'") }
      logLevel = level
    default:
      if let dot = key.firstIndex(of: "."), ["standalone", "raft"].contains(String(key[..<dot])) {
        protocolOptions[String(key[..<dot]), default: [:]][String(key[key.index(after: dot)...])] = value
      } else {
        unknownProperties.append("\(location): \(key)")
      }
    }
  }
}

/// `open` (no token needed) or `read` (a read token), for `/metrics` and `/readyz`.
private func openOrRead(_ value: String, name: String) throws(SettingsError) -> Permission {
  switch value {
  case "open": return .open
  case "read": return .read
  default: throw SettingsError(description: "\(name) must be open or read, not '\(value)'")
  }
}

extension String {
  /// Drops leading and trailing characters made only of scalars in `set` (a CRLF pair is one
  /// Character in Swift, so membership is checked per scalar).
  func trimmingCharacters(in set: String) -> String {
    let scalars = Set(set.unicodeScalars)
    let isTrimmed = { (character: Character) in character.unicodeScalars.allSatisfy { scalars.contains($0) } }
    return String(self.drop(while: isTrimmed).reversed().drop(while: isTrimmed).reversed())
  }

  var replacingDashes: String { String(self.map { $0 == "-" ? "_" : $0 }) }
}
