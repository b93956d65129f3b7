import ArgumentParser
import Glibc
import Gateway
import JSON
import Linearizability
import PeerClient
import Platform
import RaftCore

/// The environment variable through which `caucus torture --plant-bug` reaches its nodes.
let plantedBugEnvironmentVariable = "CAUCUS_TORTURE_PLANTED_BUG"

struct Torture: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "torture",
    abstract: "Run a cluster of real caucus processes under faults and check every client history.",
    discussion: """
      Starts --nodes processes of this executable in a fresh directory, each in its own network \
      namespace joined to a private bridge (as root with iproute2 and iptables; otherwise all on \
      loopback, without network faults, and it says so). It runs concurrent HTTP clients (put, \
      get, compare-and-set, two-key batches; through random nodes, proxied or redirected) on a \
      few keys in a few groups, and a nemesis that, one fault at a time with healing between, \
      kills a node with SIGKILL and restarts it (the leader half the time), pauses it with \
      SIGSTOP beyond the election timeout, partitions the network (a node cut off, the cluster \
      split in two, or a one-way cut), drops a share of packets, slows a node's link, restarts a \
      node with a crash failpoint or a failing fsync armed, or fills a node's disk (each node's \
      data on its own size-limited tmpfs, as root). Meanwhile \
      a second actor moves leaderships and removes and re-adds members, faults or not. At the \
      end it heals, reads every key through every node and checks each key's history for \
      linearizability. The last line is `torture: linearizable=yes|no ops=N faults=N \
      indeterminate=N`; a violation exits 1 and leaves the history and the nodes' logs in the \
      directory.
      """)

  @Option(help: "Nodes in the cluster: 3 or 5.")
  var nodes: Int = 3
  @Option(help: "Seconds of faults and client load.")
  var duration: Int = 60
  @Option(help: "Seed of the clients' and the nemesis' choices (default: from the clock; printed).")
  var seed: UInt64?
  @Option(help: "Concurrent clients, one operation outstanding each.")
  var clients: Int = 4
  @Option(help: "Keys the clients work on at a time, spread over the groups.")
  var keys: Int = 6
  @Option(help: "Groups the keys live in (DataRegion-0 and the ones the run creates), each on every node.")
  var groups: Int = 3
  @Option(help: "Operations on a set of keys before the clients move on to fresh keys: each key's history stays short enough to check (the check's memory grows with the square of a key's operations).")
  var operationsPerKeySet: Int = 1_000
  @Option(help: "The first node's client port (node i uses port + i - 1).")
  var rpcPort: UInt16 = 21_701
  @Option(help: "The first node's consensus port.")
  var consensusPort: UInt16 = 22_701
  @Option(help: "Where the nodes keep their data; must not exist (default: a new directory under /tmp).")
  var dataDir: String?
  @Flag(help: "Keep the data directory after a run without violation.")
  var keepData = false
  @Option(help: "The checker's bound on search states per key; past it (or past --check-memory-mb) a key is undecided, which fails the run.")
  var checkStatesMax: Int = 20_000_000
  @Option(help: "The checker's bound on the memory of one key's search, in MiB.")
  var checkMemoryMb: Int = 4_096
  @Option(help: "Check a history file a failing run wrote (history.txt) again, and exit: 0 when linearizable.")
  var check: String?
  @Option(help: "The faults the nemesis takes turns with, comma-separated, from: kill, pause, partition, loss, slow, crash-point, fsync-error, disk-full (default: all this machine supports; the network's need namespaces, disk-full a tmpfs).")
  var faults: String?
  @Option(help: "Each node's data directory is on its own tmpfs of this many MiB (as root), which the disk-full fault fills; 0: plain directories.")
  var diskMb: Int = 1_024
  @Flag(help: "Run every node on loopback even when network namespaces are available (no network faults).")
  var noNamespaces = false
  @Option(help: "The third byte of the nodes' subnet 10.231.S.0/24 (namespaces only; default from the process id, so concurrent runs differ).")
  var subnet: Int?
  @Option(help: "Plant a deliberately wrong rule in every node to prove the checker catches it: local-reads (linearizable reads served from any replica as it is).")
  var plantBug: String?

  func validate() throws {
    guard nodes == 3 || nodes == 5 else { throw ValidationError("--nodes must be 3 or 5") }
    guard (5...86_400).contains(duration) else { throw ValidationError("--duration must be 5 to 86400 seconds") }
    guard (1...64).contains(clients) else { throw ValidationError("--clients must be 1 to 64") }
    guard (1...64).contains(keys) else { throw ValidationError("--keys must be 1 to 64") }
    guard checkStatesMax >= 1, (1...1 << 20).contains(checkMemoryMb) else {
      throw ValidationError("--check-states-max must be positive and --check-memory-mb 1 to 1048576")
    }
    guard (1...16).contains(groups), groups <= keys else { throw ValidationError("--groups must be 1 to 16 and at most --keys") }
    guard diskMb == 0 || (64...65_536).contains(diskMb) else { throw ValidationError("--disk-mb must be 0 or 64 to 65536") }
    if let subnet, !(1...253).contains(subnet) { throw ValidationError("--subnet must be 1 to 253") }
    if let faults {
      for name in faults.split(separator: ",", omittingEmptySubsequences: false) where TortureFault(rawValue: String(name)) == nil {
        throw ValidationError("unknown fault '\(name)'; known: \(TortureFault.allCases.map(\.rawValue).joined(separator: ", "))")
      }
    }
    guard (10...20_000).contains(operationsPerKeySet) else {
      throw ValidationError("--operations-per-key-set must be 10 to 20000")
    }
    guard Int(rpcPort) + nodes <= 65_536, Int(consensusPort) + nodes <= 65_536 else {
      throw ValidationError("the ports run past 65535")
    }
    if let plantBug, plantBug != "local-reads" { throw ValidationError("unknown bug '\(plantBug)'; known: local-reads") }
  }

  func run() throws {
    if let check {
      let code = HistoryFile.check(path: check, statesMax: checkStatesMax, visitedBytesMax: checkMemoryMb << 20)
      if code != 0 { throw ExitCode(code) }
      return
    }
    let code = TortureRun(self).run()
    if code != 0 { throw ExitCode(code) }
  }
}

/// Set by SIGINT or SIGTERM during a run: the clients and the nemesis stop early, and the run
/// still heals, checks and removes its namespaces. (A signal handler can only store a flag.)
nonisolated(unsafe) private var tortureInterrupted: sig_atomic_t = 0

/// What the nemesis can do to the cluster.
enum TortureFault: String, CaseIterable {
  case kill, pause, partition, loss, slow
  /// A restart with a crash failpoint armed (`CAUCUS_FAILPOINTS`): the node kills itself there.
  case crashPoint = "crash-point"
  /// A restart with the log's fsync failing (EIO): the node must stop taking writes.
  case fsyncError = "fsync-error"
  /// A node's disk filled to the last byte for a while: it must refuse writes (507) and recover.
  case diskFull = "disk-full"
}

/// One torture run: the processes, the network, the clients, the nemesis, the churn and the history.
final class TortureRun: @unchecked Sendable {
  // @unchecked Sendable: the mutable state is behind `state` (a lock), or set before the threads
  // start (`network`) and only read after they are joined.
  let options: Torture
  let seed: UInt64
  let directory: String
  let executable: String
  let http: PeerClient
  /// The groups the keys live in: `DataRegion-0`, which every cluster has, and the ones the run creates.
  let groups: [String]
  let started = MonotonicClock.nowNanoseconds()
  private var network: TortureNetwork!
  private var disks: TortureDisks!

  struct NodeState {
    var pid: pid_t = 0
    var paused = false
  }

  struct Shared {
    var nodes: [NodeState] = []
    var history = History()
    var faults: [String: Int] = [:]
    /// Membership changes and leader transfers: attempted, and answered 200.
    var churnTried: [String: Int] = [:]
    var churnDone: [String: Int] = [:]
    /// Writes refused `507 insufficient_storage` (a full disk).
    var insufficientStorageAnswers = 0
    /// Crash failpoints armed by the nemesis, and how many times the node died there.
    var crashPoints: [String: (armed: Int, reached: Int)] = [:]
    /// Requests answered 4xx that a valid request should never get: a client or server bug.
    var unexpected: [String] = []
    /// Operations the clients started, which picks the current set of keys, and every key used.
    var operationsStarted = 0
    var keysUsed: [String: String] = [:]  // key → group
  }

  let state: Locked<Shared>

  /// Bounds on the nemesis' and the churn's loops (a run ends at its deadline long before).
  static let faultsMax = 100_000
  static let churnMax = 100_000
  /// How long setting up (groups, members) and the final recovery may take.
  static let recoverySecondsMax = 90

  init(_ options: Torture) {
    self.options = options
    seed = options.seed ?? MonotonicClock.nowNanoseconds()
    directory = options.dataDir ?? "/tmp/caucus-torture-\(getpid())-\(seed % 1_000_000)"
    executable = (try? FileSystem.readLink("/proc/self/exe")) ?? CommandLine.arguments[0]
    groups = (0..<options.groups).map { "DataRegion-\($0)" }
    PeerClient.globalInit()
    var configuration = PeerClientConfiguration()
    configuration.timeoutMs = 5_000
    configuration.connectTimeoutMs = 1_000
    http = try! PeerClient(configuration: configuration)
    state = Locked(Shared(nodes: Array(repeating: NodeState(), count: options.nodes)))
  }

  private func say(_ text: String) {
    let centiseconds = (MonotonicClock.nowNanoseconds() - started) / 10_000_000
    let stamp = "\(centiseconds / 100).\(centiseconds % 100 < 10 ? "0" : "")\(centiseconds % 100)s"
    print(String(repeating: " ", count: max(0, 8 - stamp.count)) + stamp + " " + text)
    fflush(nil)
  }

  /// Before the deadline and not interrupted.
  private func running(_ deadline: UInt64, leaving milliseconds: Int = 0) -> Bool {
    tortureInterrupted == 0 && MonotonicClock.nowNanoseconds() + UInt64(milliseconds) * 1_000_000 < deadline
  }

  func run() -> Int32 {
    // Before anything is set up, so that an interruption always leads through the clean-up.
    signal(SIGINT) { _ in tortureInterrupted = 1 }
    signal(SIGTERM) { _ in tortureInterrupted = 1 }
    if let bug = options.plantBug { say("torture: PLANTED BUG \(bug): the checker must find a violation") }
    say(
      "torture: seed=\(seed) nodes=\(options.nodes) duration=\(options.duration)s clients=\(options.clients) keys=\(options.keys) groups=\(options.groups) directory=\(directory)"
    )
    guard !FileSystem.exists(directory) else {
      say("torture: \(directory) exists; give a fresh --data-dir")
      return 2
    }
    do {
      try FileSystem.makeDirectories(directory)
    } catch {
      say("torture: cannot create \(directory): \(error)")
      return 2
    }
    network = TortureNetwork.make(
      nodes: options.nodes, subnet: options.subnet ?? TortureNetwork.freeSubnet(from: Int(getpid() % 200) + 20) ?? 1,
      log: "\(directory)/network.log",
      allowNamespaces: !options.noNamespaces)
    say("torture: network: \(network.summary)")
    disks = TortureDisks.make(directory: directory, nodes: options.nodes, megabytes: options.diskMb, allowMounts: options.diskMb > 0)
    say("torture: disks: \(disks.summary)")
    guard let kinds = faultKinds() else { return stopAll(code: 2) }
    say("torture: faults: \(kinds.map(\.rawValue).joined(separator: ", "))")
    for index in 0..<options.nodes where !start(index) { return stopAll(code: 2) }
    guard waitUntilReady(seconds: Self.recoverySecondsMax), createGroups() else {
      say("torture: the cluster did not become ready within \(Self.recoverySecondsMax) s (logs in \(directory))")
      return stopAll(code: 2)
    }
    say("torture: cluster ready")
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(options.duration) * 1_000_000_000
    var threads: [OSThread] = []
    for client in 0..<options.clients {
      threads.append(OSThread(name: "torture-client-\(client)") { [self] in runClient(client, until: deadline) })
    }
    threads.append(OSThread(name: "torture-nemesis") { [self] in runNemesis(until: deadline, kinds: kinds) })
    threads.append(OSThread(name: "torture-churn") { [self] in runChurn(until: deadline) })
    for thread in threads { thread.join() }
    if tortureInterrupted != 0 { say("torture: interrupted; healing and checking what ran") }
    heal()
    // Members first: a node the churn removed may keep its replica (when the removal could not
    // delete it), which knows no leader and keeps the node unready until it is a member again.
    guard restoreMembers() else {
      say("torture: the cluster did not recover within \(Self.recoverySecondsMax) s after healing (logs in \(directory))")
      return stopAll(code: 1)
    }
    finalReads()
    let code = check()
    return stopAll(code: code)
  }

  // MARK: Processes

  private func url(_ index: Int, _ path: String) -> String {
    "http://\(network.address(index)):\(Int(options.rpcPort) + index)\(path)"
  }

  /// Starts node `index`, with `failpoints` armed (`CAUCUS_FAILPOINTS`; none unless given, even
  /// when this process has the variable).
  private func start(_ index: Int, failpoints: String = "") -> Bool {
    let members = (0..<options.nodes).map { "\($0 + 1)=\(network.address($0)):\(Int(options.consensusPort) + $0)" }
      .joined(separator: ",")
    let address = network.address(index)
    let arguments =
      network.launcher(index) + [
        executable, "serve", "--node-id", String(index + 1), "--rpc-address", address, "--rpc-port",
        String(Int(options.rpcPort) + index), "--consensus-address", address, "--consensus-port",
        String(Int(options.consensusPort) + index), "--data-dir", disks.dataDirectory(index), "--cluster", members,
      ]
    var environment = ["\(Failpoints.environmentVariable)=\(failpoints)"]
    if let bug = options.plantBug { environment.append("\(plantedBugEnvironmentVariable)=\(bug)") }
    // A process group of its own: a Ctrl-C at the terminal stops the run, not its nodes.
    guard
      let pid = spawn(arguments, log: "\(directory)/node-\(index + 1).log", environment: environment, ownProcessGroup: true)
    else {
      say("torture: cannot start node \(index + 1): \(String(cString: strerror(errno)))")
      return false
    }
    state.withLock { $0.nodes[index] = NodeState(pid: pid, paused: false) }
    return true
  }

  private func kill9(_ index: Int) {
    let pid = state.withLock { shared -> pid_t in
      let pid = shared.nodes[index].pid
      shared.nodes[index].pid = 0
      return pid
    }
    guard pid > 0 else { return }
    var status: Int32 = 0
    // Ended already, on its own: a crash no fault caused (a failed assertion, say).
    if waitpid(pid, &status, WNOHANG) == pid { return noteExit(index, status, expected: "running") }
    kill(pid, SIGKILL)
    _ = waitpid(pid, &status, 0)
  }

  /// How a node's process ended, in words; nil when it was a SIGKILL (ours, or a failpoint's).
  private static func unexpectedEnd(_ status: Int32) -> String? {
    let end = ProcessEnd(waitStatus: status)
    return end == .killed(signal: SIGKILL) ? nil : end.description
  }

  /// Records a node's process that ended otherwise than by SIGKILL while it should have been
  /// `expected`: the run fails on it.
  private func noteExit(_ index: Int, _ status: Int32, expected: String) {
    guard let how = Self.unexpectedEnd(status) else { return }
    say("torture: node \(index + 1) \(how) while it should have been \(expected) (see node-\(index + 1).log)")
    state.withLock { $0.unexpected.append("node \(index + 1) \(how) while it should have been \(expected)") }
  }

  /// Restarts every node whose process ended on its own (noting how), so the run goes on.
  private func reapCrashed() {
    for index in 0..<options.nodes {
      let pid = state.withLock { $0.nodes[index].pid }
      var status: Int32 = 0
      guard pid > 0, waitpid(pid, &status, WNOHANG) == pid else { continue }
      state.withLock { $0.nodes[index].pid = 0 }
      noteExit(index, status, expected: "running")
      _ = start(index)
    }
  }

  private func pause(_ index: Int, _ paused: Bool) {
    let pid = state.withLock { shared -> pid_t in
      shared.nodes[index].paused = paused
      return shared.nodes[index].pid
    }
    if pid > 0 { kill(pid, paused ? SIGSTOP : SIGCONT) }
  }

  /// Every link whole, every node running and not paused.
  private func heal() {
    reapCrashed()
    network.heal()
    for index in 0..<options.nodes {
      let (pid, paused) = state.withLock { ($0.nodes[index].pid, $0.nodes[index].paused) }
      if pid == 0 { _ = start(index) } else if paused { pause(index, false) }
    }
    say("torture: healed")
  }

  /// How long a node may take to stop after SIGTERM before it is killed.
  static let stopSecondsMax: UInt64 = 30

  private func stopAll(code: Int32) -> Int32 {
    var code = code
    let pids = state.withLock { shared in shared.nodes.map(\.pid) }
    for pid in pids where pid > 0 {
      kill(pid, SIGCONT)
      kill(pid, SIGTERM)
    }
    let deadline = MonotonicClock.nowNanoseconds() + Self.stopSecondsMax * 1_000_000_000
    for (index, pid) in pids.enumerated() where pid > 0 {
      var status: Int32 = 0
      while waitpid(pid, &status, WNOHANG) != pid {
        if MonotonicClock.nowNanoseconds() > deadline {
          say("torture: node \(index + 1) did not stop within \(Self.stopSecondsMax) s of SIGTERM; killing it")
          kill(pid, SIGKILL)
          _ = waitpid(pid, &status, 0)
          code = code == 0 ? 1 : code
          break
        }
        usleep(20_000)
      }
      // A node asked to stop exits 0; anything else is a failure of the run.
      let end = ProcessEnd(waitStatus: status)
      if end != .exited(0) && end != .killed(signal: SIGKILL) {
        say("torture: node \(index + 1) \(end.description) on SIGTERM (see node-\(index + 1).log)")
        code = code == 0 ? 1 : code
      }
    }
    http.shutdown()
    network?.tearDown()
    if let disks, disks.limited, code != 0 || options.keepData {
      // The tmpfs go with the run: keep a copy of what the nodes wrote, for the reader.
      for index in 0..<options.nodes {
        if let pid = spawn(["/bin/cp", "-a", disks.dataDirectory(index), "\(directory)/node-\(index + 1)"]) {
          var status: Int32 = 0
          _ = waitpid(pid, &status, 0)
        }
      }
    }
    disks?.tearDown()
    if code == 0 && !options.keepData { try? FileSystem.removeTree(directory) }
    return code
  }

  /// Every node answers `/readyz` (it serves, and knows a leader of its groups).
  private func waitUntilReady(seconds: Int) -> Bool {
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(seconds) * 1_000_000_000
    while MonotonicClock.nowNanoseconds() < deadline {
      let ready = (0..<options.nodes).allSatisfy { index in
        if case .success(let response) = send("GET", url(index, "/readyz")), response.status == 200 { return true }
        return false
      }
      if ready { return true }
      usleep(200_000)
    }
    return false
  }

  /// The one node group `index` (≥ 1) is created on; the others join it. A group's initial voters
  /// can never rejoin it once removed (a rule of the engine: their bootstrap would be ambiguous),
  /// so the churn moves only the members that joined.
  private func pinnedNode(ofGroup index: Int) -> Int { (index - 1) % options.nodes }

  /// Creates the groups after `DataRegion-0` (all nodes its initial voters): each on its pinned
  /// node, the others added (201/200, or 409 when a retry finds it done).
  private func createGroups() -> Bool {
    for (index, group) in groups.enumerated().dropFirst() {
      let body = Array("{\"id\":\"\(group)\",\"peers\":[\(pinnedNode(ofGroup: index) + 1)]}".utf8)
      guard retry(seconds: Self.recoverySecondsMax, { send("POST", url(0, "/v1/groups"), body: body) }, until: [201, 409])
      else {
        say("torture: cannot create \(group)")
        return false
      }
    }
    return restoreMembers()
  }

  /// Every node a member of every group again (the churn may have left one out), within the deadline.
  private func restoreMembers() -> Bool {
    for (index, group) in groups.enumerated().dropFirst() {
      for node in 0..<options.nodes where node != pinnedNode(ofGroup: index) {
        let body = Array("{\"id\":\(node + 1)}".utf8)
        guard
          retry(
            seconds: Self.recoverySecondsMax,
            { send("POST", url(pinnedNode(ofGroup: index), "/v1/groups/\(group)/peers"), body: body) }, until: [200, 409])
        else {
          say("torture: cannot make node \(node + 1) a member of \(group) again")
          return false
        }
      }
    }
    return waitUntilReady(seconds: Self.recoverySecondsMax)
  }

  /// Sends until the answer is one of `statuses` or the time is up (then says the last answer).
  private func retry(seconds: Int, _ request: () -> Result<PeerResponse, PeerError>, until statuses: Set<Int>) -> Bool {
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(seconds) * 1_000_000_000
    var last = "nothing"
    while MonotonicClock.nowNanoseconds() < deadline {
      let result = request()
      if case .success(let response) = result, statuses.contains(response.status) { return true }
      last = describe(result)
      usleep(200_000)
    }
    say("torture: gave up after \(seconds) s; the last answer: \(last)")
    return false
  }

  // MARK: HTTP

  private func send(
    _ method: String, _ target: String, body: [UInt8] = [], headers: [(name: String, value: String)] = []
  ) -> Result<PeerResponse, PeerError> {
    waitForCompletion { completion in
      http.send(PeerRequest(method: method, url: target, headers: headers, body: body), completion: completion)
    }
  }

  /// Sends, following one `307` to the leader (redirect mode).
  private func sendFollowing(
    _ method: String, _ target: String, body: [UInt8] = [], headers: [(name: String, value: String)] = []
  ) -> Result<PeerResponse, PeerError> {
    let first = send(method, target, body: body, headers: headers)
    guard case .success(let response) = first, response.status == 307, let location = response.header("Location") else {
      return first
    }
    return send(method, location, body: body, headers: headers)
  }

  // MARK: Clients

  /// What one answer means for the history.
  private enum Outcome {
    case output(KeyValueModel.Output)
    /// Certainly no effect: refused before anything was proposed (why, for the report).
    case refused(String)
    /// It may or may not have taken effect.
    case unknown
  }

  /// The group of key slot `slot`: slots go round the groups.
  private func group(ofSlot slot: Int) -> String { groups[slot % groups.count] }

  private func runClient(_ client: Int, until deadline: UInt64) {
    var random = SplitMix64(seed: seed &+ UInt64(client) &* 0x9E37_79B9_7F4A_7C15)
    var lastRead: [String: (revision: UInt64, value: [UInt8]?)] = [:]
    var counter = 0
    let operationsMax = 10_000_000
    var operations = 0
    while operations < operationsMax && running(deadline) {
      operations += 1
      let node = Int(random.next() % UInt64(options.nodes))
      let slot = Int(random.next() % UInt64(options.keys))
      let keySet = state.withLock { shared -> Int in
        shared.operationsStarted += 1
        return shared.operationsStarted / options.operationsPerKeySet
      }
      let key = "k\(keySet).\(slot)"
      let group = group(ofSlot: slot)
      let mode = random.next() % 3 == 0 ? "redirect" : "proxy"
      let path = "/v1/groups/\(group)/kv/\(key)?forward=\(mode)"
      counter += 1
      let value = Array("c\(client)v\(counter)".utf8)
      let call = MonotonicClock.nowNanoseconds() - started
      state.withLock { $0.keysUsed[key] = group }
      switch random.next() % 5 {
      case 0, 1:
        let handle = state.withLock { $0.history.start(key: key, client: client, input: .put(value), call: call) }
        record(handle, classifyWrite(sendFollowing("PUT", url(node, path), body: value), "PUT \(url(node, path))") { _ in .written })
      case 2:
        let handle = state.withLock { $0.history.start(key: key, client: client, input: .get, call: call) }
        let result = sendFollowing("GET", url(node, path))
        if case .success(let response) = result, response.status == 200 || isKeyNotFound(response) {
          let read = response.status == 200 ? parseEntry(response.body) : nil
          lastRead[key] = (read?.revision ?? 0, read?.value)
          record(handle, .output(.value(read?.value)))
        } else {
          record(handle, .refused("read: \(describe(result))"))  // a read that did not answer has no effect
          if case .success(let response) = result, (400..<500).contains(response.status), response.status != 421 {
            state.withLock {
              $0.unexpected.append(
                "GET \(url(node, path)) at \(Double((MonotonicClock.nowNanoseconds() - started) / 10_000_000) / 100) s: \(describe(result))")
            }
          }
        }
      case 3:
        let known = lastRead[key]
        let precondition: (name: String, value: String) =
          known.map { $0.value == nil ? ("If-None-Match", "*") : ("If-Match", "\"\($0.revision)\"") }
          ?? ("If-None-Match", "*")
        let handle = state.withLock {
          $0.history.start(key: key, client: client, input: .compareAndSet(expected: known?.value, new: value), call: call)
        }
        let result = sendFollowing("PUT", url(node, path), body: value, headers: [precondition])
        record(handle, classifyWrite(result, "PUT \(url(node, path)) (\(precondition.name))") { status in .swapped(status == 200) })
      default:
        // A batch writes two keys of the same group (a batch is one group's entry).
        let otherSlot = slot + groups.count < options.keys ? slot + groups.count : slot % groups.count
        let other = "k\(keySet).\(otherSlot)"
        guard other != key else { continue }
        state.withLock { $0.keysUsed[other] = group }
        let second = Array("c\(client)v\(counter)b".utf8)
        let body = Array(
          "{\"ops\":[{\"op\":\"put\",\"key\":\"\(key)\",\"value\":\"\(String(decoding: value, as: UTF8.self))\"},{\"op\":\"put\",\"key\":\"\(other)\",\"value\":\"\(String(decoding: second, as: UTF8.self))\"}]}".utf8)
        let handles = state.withLock { shared in
          [
            shared.history.start(key: key, client: client, input: .put(value), call: call),
            shared.history.start(key: other, client: client, input: .put(second), call: call),
          ]
        }
        let target = url(node, "/v1/groups/\(group)/write?forward=\(mode)")
        let outcome = classifyWrite(sendFollowing("POST", target, body: body), "POST \(target)") {
          _ in .written
        }
        for handle in handles { record(handle, outcome) }
      }
    }
  }

  /// A write's answer: 200 (and 412 for a compare-and-set) are outputs; refusals before any
  /// proposal (no connection, 421, 503, 307 not followed) have no effect; a timeout, a 504 or a
  /// broken connection may have taken effect.
  private func classifyWrite(
    _ result: Result<PeerResponse, PeerError>, _ request: String, output: (Int) -> KeyValueModel.Output
  ) -> Outcome {
    switch result {
    case .failure(.connectFailed), .failure(.overloaded), .failure(.shuttingDown), .failure(.invalidRequest):
      return .refused(describe(result))
    case .failure:
      return .unknown
    case .success(let response):
      switch response.status {
      case 200: return .output(output(200))
      case 412: return .output(output(412))
      case 507:
        state.withLock { $0.insufficientStorageAnswers += 1 }
        return .refused(describe(result))
      case 307, 421, 503: return .refused(describe(result))
      case 504, 500, 502, 508: return .unknown
      default:
        state.withLock {
          $0.unexpected.append(
            "\(request) at \(Double((MonotonicClock.nowNanoseconds() - started) / 10_000_000) / 100) s: status \(response.status) \(response.header("X-Caucus-Forwarded-By").map { "(forwarded by node \($0)) " } ?? "")\(String(decoding: response.body.prefix(200), as: UTF8.self))")
        }
        return .refused(describe(result))
      }
    }
  }

  /// An answer in a few words, for reports.
  private func describe(_ result: Result<PeerResponse, PeerError>) -> String {
    switch result {
    case .failure(let error): return "\(error)"
    case .success(let response):
      return "\(response.status) \(String(decoding: response.body.prefix(120), as: UTF8.self))"
    }
  }

  private func record(_ handle: Int, _ outcome: Outcome) {
    let returned = MonotonicClock.nowNanoseconds() - started
    state.withLock { shared in
      switch outcome {
      case .output(let output): shared.history.finish(handle, output: output, at: returned)
      case .refused(let reason): shared.history.discard(handle, reason: reason)
      case .unknown: shared.history.leaveUnknown(handle)
      }
    }
  }

  /// A 404 that says the key is absent (not, say, that the group is not on the node asked).
  private func isKeyNotFound(_ response: PeerResponse) -> Bool {
    response.status == 404 && (try? JSONParser.parse(response.body))?["error"]?.stringValue == "key_not_found"
  }

  /// `{"key":…,"value":"…","revision":N}` as this run writes it (plain ASCII values).
  private func parseEntry(_ body: [UInt8]) -> (value: [UInt8], revision: UInt64)? {
    let text = String(decoding: body, as: UTF8.self)
    guard let valueStart = text.firstRange(of: "\"value\":\""),
      let valueEnd = text[valueStart.upperBound...].firstIndex(of: "\""),
      let revisionStart = text.firstRange(of: "\"revision\":")
    else { return nil }
    let digits = text[revisionStart.upperBound...].prefix { $0.isNumber }
    guard let revision = UInt64(digits) else { return nil }
    return (Array(text[valueStart.upperBound..<valueEnd].utf8), revision)
  }

  // MARK: Nemesis

  /// The faults asked for (all by default) that this machine supports; nil, having said why, when
  /// one asked for explicitly is not supported.
  private func faultKinds() -> [TortureFault]? {
    let asked = options.faults.map { $0.split(separator: ",").compactMap { TortureFault(rawValue: String($0)) } }
    var kinds: [TortureFault] = []
    for kind in asked ?? TortureFault.allCases where !kinds.contains(kind) {
      let supported: Bool
      switch kind {
      case .kill, .pause, .crashPoint, .fsyncError: supported = true
      case .partition, .loss: supported = network.usesNamespaces
      case .slow: supported = network.usesNamespaces && network.canSlow
      case .diskFull: supported = disks.limited
      }
      if supported {
        kinds.append(kind)
      } else if asked != nil {
        say("torture: this machine cannot do the fault \(kind.rawValue) (network: \(network.summary))")
        return nil
      }
    }
    return kinds
  }

  /// One fault at a time, healed before the next. The kinds take turns in shuffled rounds, so a
  /// run of N faults has at least N / kinds of each.
  private func runNemesis(until deadline: UInt64, kinds: [TortureFault]) {
    var random = SplitMix64(seed: seed ^ 0xFA17_0000_0000_0001)
    var round: [TortureFault] = []
    for _ in 0..<Self.faultsMax {
      reapCrashed()
      let pauseMilliseconds = 1_000 + Int(random.next() % 2_000)
      // The last seconds stay quiet, so a run ends with a cluster that served for a while.
      guard running(deadline, leaving: pauseMilliseconds * 3) else { break }
      usleep(UInt32(pauseMilliseconds) * 1_000)
      // Every draw happens whatever the cluster answers, so a seed gives the same faults.
      let aimAtLeader = random.next() % 2 == 0
      let leaderGroup = groups[Int(random.next() % UInt64(groups.count))]
      let anyNode = Int(random.next() % UInt64(options.nodes))
      let faultMilliseconds = 1_500 + Int(random.next() % 3_000)
      if round.isEmpty {
        round = kinds
        for index in stride(from: round.count - 1, to: 0, by: -1) { round.swapAt(index, Int(random.next() % UInt64(index + 1))) }
      }
      let fault = round.removeLast()
      var target = anyNode
      var role = ""
      if aimAtLeader, let leader = currentLeader(of: leaderGroup) {
        target = leader
        role = " (a leader)"
      }
      switch fault {
      case .kill:
        say("nemesis: kill -9 node \(target + 1)\(role)")
        kill9(target)
        usleep(UInt32(faultMilliseconds) * 1_000)
        say("nemesis: restart node \(target + 1)")
        _ = start(target)
      case .pause:
        say("nemesis: SIGSTOP node \(target + 1)\(role) for \(faultMilliseconds) ms")
        pause(target, true)
        usleep(UInt32(faultMilliseconds) * 1_000)
        pause(target, false)
        say("nemesis: SIGCONT node \(target + 1)")
      case .partition:
        say("nemesis: partition: \(partition(around: target, &random)) for \(faultMilliseconds) ms")
        usleep(UInt32(faultMilliseconds) * 1_000)
        network.heal()
        say("nemesis: partition healed")
      case .loss:
        let percent = 10 + Int(random.next() % 31)
        say("nemesis: every node drops \(percent) % of the packets from the others for \(faultMilliseconds) ms")
        for index in 0..<options.nodes { network.loseInbound(index, percent: percent) }
        usleep(UInt32(faultMilliseconds) * 1_000)
        network.heal()
        say("nemesis: loss healed")
      case .crashPoint:
        crashAtAPoint(target, role: role, faultMilliseconds: faultMilliseconds, &random)
      case .fsyncError:
        let hit = 1 + Int(random.next() % 50)
        say("nemesis: restart node \(target + 1)\(role) whose log fsync number \(hit) fails (EIO)")
        kill9(target)
        _ = start(target, failpoints: "wal-fsync:eio:\(hit)")
        usleep(UInt32(faultMilliseconds) * 1_000)
        // Start-up fsyncs what recovery kept: when that is the failing fsync, the node refuses to
        // start (status 1, "cannot start the consensus engine"), which is right.
        if reapIfExited(target, allowedStatus: 1) { say("nemesis: node \(target + 1) refused to start: its first fsync failed") }
        kill9(target)
        _ = start(target)
        say("nemesis: restart node \(target + 1) with a working fsync")
      case .diskFull:
        let taken = disks.fill(target)
        say("nemesis: node \(target + 1)\(role)'s disk full (\(taken / 1_048_576) MiB taken) for \(faultMilliseconds) ms")
        usleep(UInt32(faultMilliseconds) * 1_000)
        disks.free(target)
        say("nemesis: node \(target + 1)'s disk has room again")
      case .slow:
        let delayMs = 50 + Int(random.next() % 150)
        say("nemesis: slow link out of node \(target + 1)\(role) (\(delayMs) ms) for \(faultMilliseconds) ms")
        network.slow(target, delayMs: delayMs)
        usleep(UInt32(faultMilliseconds) * 1_000)
        network.heal()
        say("nemesis: slow link healed")
      }
      state.withLock { $0.faults[fault.rawValue, default: 0] += 1 }
    }
  }

  /// The ports node `index` listens on: clients', and its peers'.
  private func listeningPorts(_ index: Int) -> [UInt16] {
    [UInt16(Int(options.rpcPort) + index), UInt16(Int(options.consensusPort) + index)]
  }

  /// Restarts `target` with one crash failpoint armed, helps it get there (snapshots), waits for
  /// it to die there (or kills it when it does not), and restarts it clean.
  private func crashAtAPoint(_ target: Int, role: String, faultMilliseconds: Int, _ random: inout SplitMix64) {
    let point = Failpoints.names[Int(random.next() % UInt64(Failpoints.names.count))]
    // The turn points pass many times a second under load; the snapshot points once a snapshot.
    let hit = point.hasPrefix("snapshot") ? 1 : 1 + Int(random.next() % 200)
    say("nemesis: restart node \(target + 1)\(role) to crash at \(point) (pass \(hit))")
    kill9(target)
    if point == "snapshot-install" {
      // The others compact what it misses, so whichever leads must send it a snapshot.
      for other in 0..<options.nodes where other != target {
        for group in groups { _ = send("POST", url(other, "/v1/groups/\(group)/snapshot")) }
      }
    }
    _ = start(target, failpoints: "\(point):crash:\(hit)")
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(faultMilliseconds * 2) * 1_000_000
    var died = false
    var snapshotAsked = false
    while !died && MonotonicClock.nowNanoseconds() < deadline {
      if point == "snapshot-save" && !snapshotAsked,
        case .success(let response) = send("POST", url(target, "/v1/groups/\(groups[0])/snapshot")), response.status != 0
      {
        snapshotAsked = true
      }
      usleep(50_000)
      died = reapIfExited(target)
    }
    if died {
      say("nemesis: node \(target + 1) died at \(point); restart it")
    } else {
      say("nemesis: node \(target + 1) did not reach \(point) in time; kill -9 and restart it")
      kill9(target)
    }
    state.withLock { $0.crashPoints[point, default: (0, 0)].armed += 1 }
    if died { state.withLock { $0.crashPoints[point, default: (0, 0)].reached += 1 } }
    _ = start(target)
  }

  /// True (and the node marked down) when node `index`'s process has exited.
  private func reapIfExited(_ index: Int, allowedStatus: Int32? = nil) -> Bool {
    let pid = state.withLock { $0.nodes[index].pid }
    guard pid > 0 else { return true }
    var status: Int32 = 0
    guard waitpid(pid, &status, WNOHANG) == pid else { return false }
    state.withLock { $0.nodes[index].pid = 0 }
    let exitedAsAllowed = allowedStatus.map { ProcessEnd(waitStatus: status) == .exited($0) } ?? false
    if !exitedAsAllowed { noteExit(index, status, expected: "running or killed by its failpoint") }
    return true
  }

  /// Cuts the network around `target` one of three ways; says which.
  private func partition(around target: Int, _ random: inout SplitMix64) -> String {
    let others = (0..<options.nodes).filter { $0 != target }
    switch random.next() % 3 {
    case 0:
      for other in others {
        network.cut(from: target, to: other)
        network.cut(from: other, to: target)
      }
      return "node \(target + 1) cut off"
    case 1:
      // A minority with the target, the rest a majority; every link between them cut both ways.
      var rest = others
      for index in stride(from: rest.count - 1, to: 0, by: -1) {
        rest.swapAt(index, Int(random.next() % UInt64(index + 1)))
      }
      let minority = [target] + rest.prefix(options.nodes / 2 - 1)
      let majority = rest.dropFirst(options.nodes / 2 - 1)
      for a in minority {
        for b in majority {
          network.cut(from: a, to: b)
          network.cut(from: b, to: a)
        }
      }
      let names = { (nodes: [Int]) in nodes.sorted().map { String($0 + 1) }.joined(separator: ",") }
      return "{\(names(minority))} | {\(names(Array(majority)))}"
    default:
      if random.next() % 2 == 0 {
        for other in others { network.cutRequests(from: target, to: other, answeringFrom: listeningPorts(target)) }
        return "one way: node \(target + 1)'s messages reach no one (the others' reach it)"
      }
      for other in others { network.cutRequests(from: other, to: target, answeringFrom: listeningPorts(other)) }
      return "one way: no one's messages reach node \(target + 1) (its reach them)"
    }
  }

  /// Leader transfers and membership changes, faults or not: one every few seconds. A group has
  /// at most one member out at a time; the next change of that group puts it back.
  private func runChurn(until deadline: UInt64) {
    var random = SplitMix64(seed: seed ^ 0xC4A2_0000_0000_0002)
    var removed: [String: Int] = [:]  // group → the node taken out
    for _ in 0..<Self.churnMax {
      let waitMilliseconds = 2_000 + Int(random.next() % 3_000)
      guard running(deadline, leaving: waitMilliseconds * 2) else { break }
      usleep(UInt32(waitMilliseconds) * 1_000)
      let groupIndex = Int(random.next() % UInt64(groups.count))
      let group = groups[groupIndex]
      let through = Int(random.next() % UInt64(options.nodes))
      var node = Int(random.next() % UInt64(options.nodes))
      // DataRegion-0's members are all initial voters: only its leadership moves.
      let movable = groupIndex > 0 && node != pinnedNode(ofGroup: groupIndex)
      let kind: String
      let result: Result<PeerResponse, PeerError>
      if let out = removed[group] {
        kind = "add-peer"
        node = out
        result = send("POST", url(through, "/v1/groups/\(group)/peers"), body: Array("{\"id\":\(out + 1)}".utf8))
        // 409: it is a member (an earlier answer that did not arrive took effect).
        if case .success(let response) = result, response.status == 200 || response.status == 409 { removed[group] = nil }
      } else if random.next() % 2 == 0 || !movable {
        kind = "transfer"
        result = send("POST", url(through, "/v1/groups/\(group)/leader"), body: Array("{\"id\":\(node + 1)}".utf8))
      } else {
        kind = "remove-peer"
        result = send("DELETE", url(through, "/v1/groups/\(group)/peers/\(node + 1)"))
        // Whatever the answer, the node may be out now: the next change of the group re-adds it.
        removed[group] = node
      }
      let status = (try? result.get().status) ?? 0
      say("churn: \(kind) node \(node + 1) of \(group) through node \(through + 1): \(status == 200 ? "200" : describe(result))")
      state.withLock {
        $0.churnTried[kind, default: 0] += 1
        if status == 200 { $0.churnDone[kind, default: 0] += 1 }
      }
    }
  }

  /// The leader of `group` as some running node reports it (0-based), if any.
  private func currentLeader(of group: String) -> Int? {
    for index in 0..<options.nodes {
      let (pid, paused) = state.withLock { ($0.nodes[index].pid, $0.nodes[index].paused) }
      guard pid > 0, !paused, case .success(let response) = send("GET", url(index, "/v1/groups/\(group)")),
        response.status == 200, let status = try? JSONParser.parse(response.body),
        let leader = status["leader"]?.unsignedIntegerValue, (1...UInt64(options.nodes)).contains(leader)
      else { continue }
      return Int(leader) - 1
    }
    return nil
  }

  // MARK: Checking

  /// Every key through every node, linearizable, after healing: the last word on what survived.
  private func finalReads() {
    let keys = state.withLock { $0.keysUsed.sorted { $0.key < $1.key } }
    for (key, group) in keys {
      for index in 0..<options.nodes {
        let call = MonotonicClock.nowNanoseconds() - started
        let handle = state.withLock { $0.history.start(key: key, client: 1_000 + index, input: .get, call: call) }
        let result = send("GET", url(index, "/v1/groups/\(group)/kv/\(key)"))
        if case .success(let response) = result, response.status == 200 || isKeyNotFound(response) {
          record(handle, .output(.value(response.status == 200 ? parseEntry(response.body)?.value : nil)))
        } else {
          record(handle, .refused("final read failed"))
          state.withLock { $0.unexpected.append("final read of \(key) at node \(index + 1) failed: \(result)") }
        }
      }
    }
  }

  private func check() -> Int32 {
    let shared = state.withLock { $0 }
    var linearizable = true
    var operations = 0
    var unknown = 0
    var failing: [String] = []
    for key in shared.history.keys {
      let history = shared.history.operations(for: key)
      operations += history.count
      unknown += history.filter { $0.returned == nil }.count
      let verdict = LinearizabilityChecker.check(
        KeyValueModel.self, history, statesMax: options.checkStatesMax, visitedBytesMax: options.checkMemoryMb << 20)
      switch verdict {
      case .linearizable: continue
      case .undecided, .notLinearizable:
        // Undecided is a failure too: a history with no linearization can take the whole search
        // to refute. It goes in the file, to be checked again with larger bounds.
        linearizable = false
        let why = verdict == .undecided ? "too large to decide within the bounds" : "no linearization"
        say("torture: the history of \(key): \(why)")
        failing.append("# key \(key): \(why). Refused operations (no effect) are comments.")
        for (operation, refusal) in shared.history.report(for: key).sorted(by: { $0.0.call < $1.0.call }) {
          failing.append(HistoryFile.line(key: key, operation, refusal: refusal))
        }
      }
    }
    for line in shared.unexpected.prefix(20) { say("torture: unexpected answer: \(line)") }
    if !failing.isEmpty {
      let path = directory + "/history.txt"
      let text = HistoryFile.header + failing.joined(separator: "\n") + "\n"
      do {
        let file = try File.open(path, mode: .writeCreateTruncate)
        try file.write(all: Array(text.utf8), at: 0)
        try file.close()
        say("torture: the failing history is in \(path)")
      } catch {
        say("torture: could not write \(path): \(error)")
      }
    }
    let faults = shared.faults.values.reduce(0, +)
    let kinds = shared.faults.keys.sorted().map { "\($0)=\(shared.faults[$0]!)" }.joined(separator: " ")
    say("torture: faults \(kinds.isEmpty ? "none" : kinds); unexpected answers \(shared.unexpected.count); writes refused for a full disk (507) \(shared.insufficientStorageAnswers)")
    let churn = shared.churnTried.keys.sorted().map { "\($0)=\(shared.churnDone[$0, default: 0])/\(shared.churnTried[$0]!)" }
    say("torture: churn (answered 200 / tried) \(churn.isEmpty ? "none" : churn.joined(separator: " "))")
    if !shared.crashPoints.isEmpty {
      let points = shared.crashPoints.keys.sorted().map { "\($0)=\(shared.crashPoints[$0]!.reached)/\(shared.crashPoints[$0]!.armed)" }
      say("torture: crash points (died there / armed) \(points.joined(separator: " "))")
    }
    print("torture: linearizable=\(linearizable ? "yes" : "no") ops=\(operations) faults=\(faults) indeterminate=\(unknown)")
    fflush(nil)
    return linearizable && shared.unexpected.isEmpty ? 0 : 1
  }
}

/// The failing history a torture run writes, one operation a line, and its re-check
/// (`caucus torture --check FILE`). A line is
/// `key client call-ns return-ns|- put VALUE - ok|?`, `… get - - VALUE|∅`, or
/// `… cas EXPECTED|∅ NEW swapped|refused|?`; `#` starts a comment (refused operations, which
/// had no effect, are kept as comments for the reader).
enum HistoryFile {
  typealias Operation = HistoryOperation<KeyValueModel.Input, KeyValueModel.Output>

  static let header = "# caucus torture history; re-check with: caucus torture --check <this file>\n"

  private static func text(_ value: [UInt8]?) -> String { value.map { String(decoding: $0, as: UTF8.self) } ?? "∅" }

  static func line(key: String, _ operation: Operation, refusal: String?) -> String {
    let returned = operation.returned.map(String.init) ?? "-"
    let fields: String
    switch operation.input {
    case .put(let value): fields = "put \(text(value)) -"
    case .get: fields = "get - -"
    case .compareAndSet(let expected, let new): fields = "cas \(text(expected)) \(text(new))"
    case .delete: fields = "delete - -"
    }
    let output: String
    switch operation.output {
    case nil: output = "?"
    case .written?: output = "ok"
    case .value(let value)?: output = text(value)
    case .swapped(let done)?: output = done ? "swapped" : "refused"
    }
    let line = "\(key) \(operation.client) \(operation.call) \(returned) \(fields) \(output)"
    return refusal.map { "# \(line)  (refused: \($0))" } ?? line
  }

  /// Parses one non-comment line; nil when it is not one.
  static func parse(_ line: Substring) -> (key: String, operation: Operation)? {
    let fields = line.split(separator: " ")
    guard fields.count == 8, let client = Int(fields[1]), let call = UInt64(fields[2]) else { return nil }
    let returned = fields[3] == "-" ? nil : UInt64(fields[3])
    guard fields[3] == "-" || returned != nil else { return nil }
    func value(_ field: Substring) -> [UInt8]? { field == "∅" ? nil : Array(field.utf8) }
    let input: KeyValueModel.Input
    var output: KeyValueModel.Output?
    switch fields[4] {
    case "put":
      input = .put(Array(fields[5].utf8))
      output = fields[7] == "ok" ? .written : nil
    case "get":
      input = .get
      output = .value(value(fields[7]))
    case "cas":
      input = .compareAndSet(expected: value(fields[5]), new: Array(fields[6].utf8))
      output = fields[7] == "?" ? nil : .swapped(fields[7] == "swapped")
    case "delete":
      input = .delete
      output = fields[7] == "ok" ? .written : nil
    default:
      return nil
    }
    if returned == nil { output = nil }
    return (String(fields[0]), Operation(client: client, input: input, output: output, call: call, returned: returned))
  }

  static func check(path: String, statesMax: Int, visitedBytesMax: Int) -> Int32 {
    let bytes: [UInt8]
    do { bytes = try FileSystem.readFile(path) } catch {
      print("torture: cannot read \(path): \(error)")
      return 2
    }
    var byKey: [String: [Operation]] = [:]
    for (number, line) in String(decoding: bytes, as: UTF8.self).split(separator: "\n").enumerated() {
      let trimmed = line.drop { $0 == " " }
      if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
      guard let (key, operation) = parse(trimmed) else {
        print("torture: \(path):\(number + 1) is not a history line: \(line.prefix(120))")
        return 2
      }
      byKey[key, default: []].append(operation)
    }
    var linearizable = true
    for key in byKey.keys.sorted() {
      let verdict = LinearizabilityChecker.check(
        KeyValueModel.self, byKey[key]!, statesMax: statesMax, visitedBytesMax: visitedBytesMax)
      print("torture: key \(key): \(byKey[key]!.count) operations, \(verdict)")
      if verdict != .linearizable { linearizable = false }
    }
    print("torture: linearizable=\(linearizable ? "yes" : "no") ops=\(byKey.values.reduce(0) { $0 + $1.count })")
    return linearizable ? 0 : 1
  }
}
