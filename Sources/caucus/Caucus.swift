import ArgumentParser
import Consensus
import Gateway
import Glibc
import HTTPServer
import KeyValueStore
import Logging
import Platform
import StandaloneConsensus

let caucusVersion = "0.1.0"

@main
struct Caucus: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "caucus",
    abstract: "A consensus layer with an HTTP/JSON gateway.",
    version: caucusVersion,
    subcommands: [
      Serve.self, DevCluster.self, Torture.self, TokenCommand.self, KVCommand.self, GroupCommand.self, PeerCommand.self,
      ClusterCommand.self, BackupCommand.self, RestoreCommand.self,
    ],
    defaultSubcommand: Serve.self)
}

struct Serve: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run a node.",
    discussion: """
      With no options: a single standalone node on 127.0.0.1:6667 with data in ./caucus-data and \
      DataRegion-0 created on first start. Options override the properties file given with --config, \
      which accepts IoTDB's property names (rpc_address, rpc_port, internal_ip, consensus_port, \
      consensus_dir, data_node_consensus_protocol_class, config_node_group_address_list). \
      For torture tests only, CAUCUS_FAILPOINTS=name:action:hit,... arms crash and I/O-error \
      failpoints (see the README's "Failpoints").
      """)

  @Option(name: .long, help: "Properties file (key=value lines, # comments).")
  var config: String?
  @Option(name: .long, help: "This node's id, a positive integer. (default: 1)")
  var nodeId: UInt64?
  @Option(name: .long, help: "Client API bind address. (default: 127.0.0.1)")
  var rpcAddress: String?
  @Option(name: .long, help: "Client API port. (default: 6667)")
  var rpcPort: UInt16?
  @Option(name: .long, help: "This node's client URL as other nodes and redirects should use it. (default: http://<rpc address>:<rpc port>, https:// with TLS)")
  var clientUrl: String?
  @Option(name: .long, help: "Node-to-node bind address. (default: the rpc address)")
  var consensusAddress: String?
  @Option(name: .long, help: "Node-to-node port. (default: 40010)")
  var consensusPort: UInt16?
  @Option(
    name: .long,
    help: "Where other nodes reach this node's consensus port, host:port, when that is not the bind address (a wildcard such as 0.0.0.0, a NAT or a container's service name); a node joining with --join records it in the directory. (default: the consensus address and port)")
  var advertiseConsensusEndpoint: String?
  @Option(name: .long, help: "Data directory: WAL, snapshots, node identity. (default: ./caucus-data)")
  var dataDir: String?
  @Option(name: .customLong("protocol"), help: "standalone or raft (IoTDB class names accepted). (default: standalone)")
  var protocolName: String?
  @Option(name: .long, help: "The config-node group (the cluster directory's members): 1=host:cport,2=host:cport,... (at most 16; more nodes --join)")
  var cluster: String?
  @Option(
    name: .long,
    help: "Join an existing cluster through a member's consensus endpoint (host:port): register in its directory, retrying until it answers.")
  var join: String?
  @Option(name: .long, help: "Raft election timeout. (default: 1000)")
  var electionTimeoutMs: UInt32?
  @Option(name: .long, help: "Raft heartbeat interval. (default: 100)")
  var heartbeatIntervalMs: UInt32?
  @Option(name: .long, help: "Largest value a write may carry, bytes. (default: 1048576)")
  var valueBytesMax: Int?
  @Option(name: .long, help: "How long a request may wait for the engine before 504 timeout. (default: 10000)")
  var requestTimeoutMs: UInt32?
  @Option(name: .long, help: "Open client connections at most. (default: 10000)")
  var connectionsMax: Int?
  @Option(
    name: .long,
    help: "While the data directory is full, how often the node checks for space and reopens its storage (writes answer 507 meanwhile). (default: 1000)")
  var outOfSpaceRetryMs: UInt32?
  @Option(
    name: .long,
    help: "/metrics writes per-group series (caucus_group_*) for at most this many groups, the first in id order; 0: none. Per-node aggregates cover every group. (default: 100)")
  var metricsGroupsMax: Int?
  @Option(
    name: .long,
    help: "The largest backup GET /v1/groups/{group}/snapshot (caucus backup) answers, in bytes, 1 MiB to 2 GiB; it is built in memory, a few copies at once, and a larger one is 413. Give every node the same. (default: 67108864, 64 MiB)")
  var backupBytesMax: Int?
  @Option(
    name: .long,
    help: "Leadership transfers one leader balance (POST /v1/cluster/rebalance, or the automatic one) makes at most; ?max= may ask for fewer. (default: 100)")
  var leaderBalanceTransfersMax: Int?
  @Option(
    name: .long,
    help: "Balance leadership by itself this often, from the node with the lowest id among those that answer (give it to every node); 0: never. (default: 0)")
  var leaderBalanceIntervalMs: UInt32?
  @Option(
    name: .long,
    help: "A file holding the cluster secret (at least 16 bytes; openssl rand -hex 32): every node-to-node request carries its HMAC proof and the consensus port refuses requests without one. Give every node the same file.")
  var clusterSecretFile: String?
  @Option(
    name: .long,
    help: "TLS on the client and consensus ports and to peers: this node's certificate, then any intermediates (PEM; with --tls-key-file). The node's URLs become https://. SIGHUP reloads the certificate, key and CA files. (default: none, plain http)")
  var tlsCertFile: String?
  @Option(name: .long, help: "The private key of --tls-cert-file (PEM, unencrypted).")
  var tlsKeyFile: String?
  @Option(
    name: .long,
    help: "The cluster CA (PEM): peers' certificates are verified with it (needed by raft nodes with TLS), and client certificates with --tls-client-auth.")
  var tlsCaFile: String?
  @Flag(
    name: .long,
    help: "Both ports require a client certificate signed by --tls-ca-file (nodes present their own --tls-cert-file to each other).")
  var tlsClientAuth = false
  @Option(
    name: .long,
    help: """
      Client tokens (JSON: name, role read|write|admin, sha256 of the token, optional groups and keyPrefix; see caucus token): \
      every route but /healthz and /ui (the dashboard page; no data) then needs Authorization: Bearer <token> (401 without, 403 beyond its role or scope). \
      SIGHUP reloads it. Without it every route is open. In a cluster it needs --cluster-secret-file.
      """)
  var authTokensFile: String?
  @Option(name: .long, help: "With --auth-tokens-file: open (no token) or read (a read token) for /metrics. (default: open)")
  var authMetrics: String?
  @Option(name: .long, help: "With --auth-tokens-file: open (no token) or read (a read token) for /readyz. (default: open)")
  var authReadyz: String?
  @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical. (default: info)")
  var logLevel: String?

  func run() throws {
    let settings: NodeSettings
    do {
      settings = try NodeSettings.resolve(flags: self)
    } catch {
      throw ValidationError(error.description)
    }
    let code = runNode(settings)
    if code != 0 { throw ExitCode(code) }
  }
}

struct DevCluster: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "dev-cluster",
    abstract: "Start a local raft cluster of real caucus processes on loopback; Ctrl-C stops them.",
    discussion: """
      Node i (from 1) serves clients on rpc-port + i - 1 and peers on consensus-port + i - 1, with \
      its data in <data-dir>/node-<i>. Restarting with the same data directory restarts the same cluster.
      """)

  @Option(name: .long, help: "How many nodes (1...9).")
  var nodes: Int = 3
  @Option(name: .long, help: "The first node's client port.")
  var rpcPort: UInt16 = 6667
  @Option(name: .long, help: "The first node's consensus port.")
  var consensusPort: UInt16 = 40010
  @Option(name: .long, help: "Where the nodes keep their data.")
  var dataDir: String = "./caucus-dev"
  @Option(name: .long, help: "Raft election timeout.")
  var electionTimeoutMs: UInt32 = 1000
  @Option(name: .long, help: "Raft heartbeat interval.")
  var heartbeatIntervalMs: UInt32 = 100

  func validate() throws {
    guard (1...9).contains(nodes) else { throw ValidationError("--nodes must be 1...9") }
    guard Int(rpcPort) + nodes <= 65536, Int(consensusPort) + nodes <= 65536 else {
      throw ValidationError("the ports run past 65535")
    }
  }

  func run() throws {
    let code = runDevCluster(self)
    if code != 0 { throw ExitCode(code) }
  }
}
