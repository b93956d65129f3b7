import Glibc
import Platform

/// Where the torture nodes live. With root, iproute2 and iptables: one network namespace per node,
/// each joined to a private bridge by a veth pair, so the nemesis can cut links (both ways or one
/// way) with iptables inside a node's namespace, drop a share of packets, and slow a link with tc.
/// Without them: every node on loopback, and no network faults.
///
/// The host keeps an address on the bridge, so the torture clients reach every node whatever the
/// partition (a partition cuts node-to-node traffic only), and nothing of the test subnet is routed
/// off the machine: the bridge's own route is more specific than any default route.
final class TortureNetwork {
  enum Mode: Equatable {
    case loopback(reason: String)
    case namespaces
  }

  let mode: Mode
  let nodes: Int
  /// Names this run's namespaces, bridge and veths apart from another run's (the process id).
  let tag: String
  /// `10.231.S`: node i is `10.231.S.(i+1)`, the host `10.231.S.254`.
  let subnetPrefix: String
  /// Every command's output (appended), for the reader of a failed run.
  let log: String
  /// Whether this kernel has tc's netem (delay, loss); without it, loss is iptables' `statistic`
  /// match and a slow link is a token bucket (tbf).
  private(set) var netemAvailable = false
  private(set) var tokenBucketAvailable = false
  private var created: [[String]] = []  // undo commands, run in reverse order

  static let ipCandidates = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
  static let iptablesCandidates = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
  static let tcCandidates = ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc"]
  /// How long one network command may take before the run gives up on it.
  static let commandSecondsMax: UInt64 = 20

  private let ip: String
  private let iptables: String
  private let tc: String

  private init(mode: Mode, nodes: Int, tag: String, subnetPrefix: String, log: String, ip: String, iptables: String, tc: String) {
    self.mode = mode
    self.nodes = nodes
    self.tag = tag
    self.subnetPrefix = subnetPrefix
    self.log = log
    self.ip = ip
    self.iptables = iptables
    self.tc = tc
  }

  /// Whether the host routes `10.231.S.0/24` already (another run's bridge, perhaps one a killed
  /// run left behind): two bridges with one subnet would misroute the nodes' traffic.
  static func subnetRouted(_ subnet: Int) -> Bool {
    guard let table = try? FileSystem.readFile("/proc/net/route") else { return false }
    // Destinations are hexadecimal in the kernel's (little-endian) byte order: 10.231.S.0 reads 00 S E7 0A.
    let byte = String(subnet, radix: 16, uppercase: true)
    let destination = "00" + (byte.count == 1 ? "0" : "") + byte + "E70A"
    return String(decoding: table, as: UTF8.self).split(separator: "\n").contains { line in
      let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
      return fields.count > 1 && fields[1] == destination
    }
  }

  /// The first subnet byte from `preferred` on (wrapping within 1...253) that the host does not
  /// route yet; nil when all are taken.
  static func freeSubnet(from preferred: Int) -> Int? {
    (0..<253).lazy.map { (preferred - 1 + $0) % 253 + 1 }.first { !subnetRouted($0) }
  }

  /// Sets up namespaces when it can; otherwise a loopback network whose `mode` says why not.
  /// `subnet` is the third byte of `10.231.S.0/24`.
  static func make(nodes: Int, subnet: Int, log: String, allowNamespaces: Bool) -> TortureNetwork {
    func loopback(_ reason: String) -> TortureNetwork {
      TortureNetwork(
        mode: .loopback(reason: reason), nodes: nodes, tag: "", subnetPrefix: "127.0.0", log: log, ip: "", iptables: "",
        tc: "")
    }
    guard allowNamespaces else { return loopback("--no-namespaces was given") }
    guard geteuid() == 0 else { return loopback("network namespaces need root") }
    guard let ip = ipCandidates.first(where: { access($0, X_OK) == 0 }) else { return loopback("iproute2's ip is not installed") }
    guard let iptables = iptablesCandidates.first(where: { access($0, X_OK) == 0 }) else {
      return loopback("iptables is not installed (scripts/install-deps.sh installs it)")
    }
    let tc = tcCandidates.first(where: { access($0, X_OK) == 0 }) ?? ""
    guard !subnetRouted(subnet) else { return loopback("the host already routes 10.231.\(subnet).0/24") }
    let network = TortureNetwork(
      mode: .namespaces, nodes: nodes, tag: String(getpid()), subnetPrefix: "10.231.\(subnet)", log: log, ip: ip,
      iptables: iptables, tc: tc)
    if let failure = network.build() {
      network.tearDown()
      return loopback(failure)
    }
    return network
  }

  var usesNamespaces: Bool { mode == .namespaces }

  /// The address node `index` (0-based) listens on.
  func address(_ index: Int) -> String { usesNamespaces ? "\(subnetPrefix).\(index + 1)" : "127.0.0.1" }

  func namespace(_ index: Int) -> String { "caucus-\(tag)-n\(index + 1)" }

  /// What to put before a node's command line so that it runs in its namespace.
  func launcher(_ index: Int) -> [String] { usesNamespaces ? [ip, "netns", "exec", namespace(index)] : [] }

  private var bridge: String { "cxb\(tag)" }
  private func hostVeth(_ index: Int) -> String { "cx\(tag)h\(index + 1)" }

  /// Runs one command to completion (bounded), its output appended to the log; true on exit 0.
  @discardableResult
  private func run(_ arguments: [String]) -> Bool {
    appendToLog("$ " + arguments.joined(separator: " ") + "\n")
    guard let pid = spawn(arguments, log: log) else {
      appendToLog("cannot start: \(String(cString: strerror(errno)))\n")
      return false
    }
    let deadline = MonotonicClock.nowNanoseconds() + Self.commandSecondsMax * 1_000_000_000
    var status: Int32 = 0
    while waitpid(pid, &status, WNOHANG) == 0 {
      if MonotonicClock.nowNanoseconds() > deadline {
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
        appendToLog("timed out after \(Self.commandSecondsMax) s\n")
        return false
      }
      usleep(5_000)
    }
    return ProcessEnd(waitStatus: status) == .exited(0)
  }

  private func appendToLog(_ text: String) {
    let descriptor = open(log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    guard descriptor >= 0 else { return }
    _ = Array(text.utf8).withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    close(descriptor)
  }

  private func inNamespace(_ index: Int, _ arguments: [String]) -> [String] {
    [ip, "netns", "exec", namespace(index)] + arguments
  }

  /// Creates the bridge, the namespaces and the links; nil on success, else why not.
  private func build() -> String? {
    guard run([ip, "link", "add", bridge, "type", "bridge"]) else { return "cannot create a bridge (see \(log))" }
    created.append([ip, "link", "del", bridge])
    guard run([ip, "addr", "add", "\(subnetPrefix).254/24", "dev", bridge]), run([ip, "link", "set", bridge, "up"]) else {
      return "cannot address the bridge (see \(log))"
    }
    // A host whose FORWARD policy drops (Docker sets one) would drop bridged frames that its
    // iptables sees; this rule keeps the bridge's own traffic flowing.
    if run([iptables, "-I", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]) {
      created.append([iptables, "-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"])
    }
    for index in 0..<nodes {
      guard run([ip, "netns", "add", namespace(index)]) else { return "cannot create a network namespace (see \(log))" }
      created.append([ip, "netns", "del", namespace(index)])
      guard run([ip, "link", "add", hostVeth(index), "type", "veth", "peer", "name", "eth0", "netns", namespace(index)]),
        run([ip, "link", "set", hostVeth(index), "master", bridge, "up"]),
        run([ip, "-n", namespace(index), "link", "set", "lo", "up"]),
        run([ip, "-n", namespace(index), "addr", "add", "\(address(index))/24", "dev", "eth0"]),
        run([ip, "-n", namespace(index), "link", "set", "eth0", "up"])
      else { return "cannot link namespace \(namespace(index)) to the bridge (see \(log))" }
      guard run(inNamespace(index, [iptables, "-L", "INPUT", "-n"])) else {
        return "iptables does not work in a network namespace here (see \(log))"
      }
    }
    if !tc.isEmpty {
      if run(inNamespace(0, [tc, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms"])) {
        netemAvailable = true
      } else if run(inNamespace(0, [tc, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "100ms"])) {
        tokenBucketAvailable = true
      }
      run(inNamespace(0, [tc, "qdisc", "del", "dev", "eth0", "root"]))
    }
    return nil
  }

  /// Packets from node `from` no longer reach node `to` (dropped on arrival in `to`'s namespace).
  func cut(from: Int, to: Int) {
    precondition(usesNamespaces && from != to, "a cut needs namespaces and two nodes")
    run(inNamespace(to, [iptables, "-A", "INPUT", "-s", address(from), "-j", "DROP"]))
  }

  /// What node `from` sends as a client (its requests, on connections it opened) no longer
  /// reaches node `to`, while `from`'s answers (from its listening `ports`) to `to`'s requests
  /// still do: one way at the level of messages. (Dropping every packet one way would stall TCP
  /// both ways: a cut one way for packets is a cut both ways for connections.)
  func cutRequests(from: Int, to: Int, answeringFrom ports: [UInt16]) {
    precondition(usesNamespaces && from != to, "a cut needs namespaces and two nodes")
    for port in ports {
      run(inNamespace(to, [iptables, "-A", "INPUT", "-s", address(from), "-p", "tcp", "--sport", String(port), "-j", "ACCEPT"]))
    }
    run(inNamespace(to, [iptables, "-A", "INPUT", "-s", address(from), "-j", "DROP"]))
  }

  /// Node `index` drops `percent` % of the packets other nodes send it.
  func loseInbound(_ index: Int, percent: Int) {
    precondition(usesNamespaces && (1...99).contains(percent), "loss needs namespaces and a share")
    let probability = String(Double(percent) / 100)
    for other in 0..<nodes where other != index {
      run(
        inNamespace(index, [
          iptables, "-A", "INPUT", "-s", address(other), "-m", "statistic", "--mode", "random", "--probability",
          probability, "-j", "DROP",
        ]))
    }
  }

  /// Node `index`'s outgoing link becomes slow: netem's delay when the kernel has it, else a
  /// narrow token bucket (queueing delay). False when neither exists.
  @discardableResult
  func slow(_ index: Int, delayMs: Int) -> Bool {
    precondition(usesNamespaces, "a slow link needs namespaces")
    if netemAvailable {
      return run(
        inNamespace(index, [tc, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "\(delayMs)ms", "\(delayMs / 2)ms"]))
    }
    if tokenBucketAvailable {
      return run(
        inNamespace(index, [tc, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "256kbit", "burst", "16kbit", "latency", "\(delayMs * 4)ms"]))
    }
    return false
  }

  var canSlow: Bool { netemAvailable || tokenBucketAvailable }

  /// Every link whole again: no drop rules, no queueing discipline.
  func heal() {
    guard usesNamespaces else { return }
    for index in 0..<nodes {
      run(inNamespace(index, [iptables, "-F", "INPUT"]))
      if canSlow { run(inNamespace(index, [tc, "qdisc", "del", "dev", "eth0", "root"])) }
    }
  }

  /// Removes everything `build` made (namespaces take their veths with them).
  func tearDown() {
    for command in created.reversed() { run(command) }
    created.removeAll()
  }

  /// One line for the run's header.
  var summary: String {
    switch mode {
    case .loopback(let reason): return "loopback (\(reason)): no partitions, packet loss or slow links"
    case .namespaces:
      let slowing = netemAvailable ? "netem delay" : tokenBucketAvailable ? "a token bucket (this kernel has no netem)" : "nothing (no tc qdisc)"
      return "one network namespace per node on bridge \(bridge), \(subnetPrefix).0/24; partitions and loss by iptables, slow links by \(slowing)"
    }
  }
}
