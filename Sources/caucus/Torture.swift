import ArgumentParser
import Glibc
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
      Starts --nodes processes of this executable on loopback in a fresh directory, runs concurrent \
      HTTP clients (put, get, compare-and-set, two-key batches; through random nodes, proxied or \
      redirected) against a few keys, and a nemesis that, one fault at a time with healing between, \
      kills a node with SIGKILL and restarts it (the leader half the time), pauses it with SIGSTOP \
      beyond the election timeout, or moves the leadership with a leader transfer. At the end it heals, reads every key through every node and \
      checks each key's history for linearizability. The last line is \
      `torture: linearizable=yes|no ops=N faults=N indeterminate=N`; a violation exits 1 and \
      leaves the history and the nodes' logs in the directory. Network partitions (namespaces) \
      are not in this version: it says so and runs without them.
      """)

  @Option(help: "Nodes in the cluster: 3 or 5.")
  var nodes: Int = 3
  @Option(help: "Seconds of faults and client load.")
  var duration: Int = 60
  @Option(help: "Seed of the clients' and the nemesis' choices (default: from the clock; printed).")
  var seed: UInt64?
  @Option(help: "Concurrent clients, one operation outstanding each.")
  var clients: Int = 4
  @Option(help: "Keys the clients work on at a time.")
  var keys: Int = 3
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
  @Option(help: "Check a history file a failing run wrote (history.txt) again, and exit: 0 when linearizable.")
  var check: String?
  @Option(help: "Plant a deliberately wrong rule in every node to prove the checker catches it: local-reads (linearizable reads served from any replica as it is).")
  var plantBug: String?

  func validate() throws {
    guard nodes == 3 || nodes == 5 else { throw ValidationError("--nodes must be 3 or 5") }
    guard (5...86_400).contains(duration) else { throw ValidationError("--duration must be 5 to 86400 seconds") }
    guard (1...64).contains(clients) else { throw ValidationError("--clients must be 1 to 64") }
    guard (1...64).contains(keys) else { throw ValidationError("--keys must be 1 to 64") }
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
      let code = HistoryFile.check(path: check)
      if code != 0 { throw ExitCode(code) }
      return
    }
    let code = TortureRun(self).run()
    if code != 0 { throw ExitCode(code) }
  }
}

/// One torture run: the processes, the clients, the nemesis and the history.
final class TortureRun: @unchecked Sendable {
  // @unchecked Sendable: the mutable state is behind `state` (a lock), or set before the threads
  // start and only read after they are joined.
  let options: Torture
  let seed: UInt64
  let directory: String
  let executable: String
  let http: PeerClient
  let group = "DataRegion-0"
  let started = MonotonicClock.nowNanoseconds()

  struct NodeState {
    var pid: pid_t = 0
    var paused = false
  }

  struct Shared {
    var nodes: [NodeState] = []
    var history = History()
    var faults: [String: Int] = [:]
    /// Requests answered 4xx that a valid request should never get: a client or server bug.
    var unexpected: [String] = []
    /// Operations the clients started, which picks the current set of keys, and every key used.
    var operationsStarted = 0
    var keysUsed: Set<String> = []
  }

  let state: Locked<Shared>

  init(_ options: Torture) {
    self.options = options
    seed = options.seed ?? MonotonicClock.nowNanoseconds()
    directory = options.dataDir ?? "/tmp/caucus-torture-\(getpid())-\(seed % 1_000_000)"
    executable = (try? FileSystem.readLink("/proc/self/exe")) ?? CommandLine.arguments[0]
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

  func run() -> Int32 {
    if let bug = options.plantBug { say("torture: PLANTED BUG \(bug): the checker must find a violation") }
    say("torture: seed=\(seed) nodes=\(options.nodes) duration=\(options.duration)s clients=\(options.clients) keys=\(options.keys) directory=\(directory)")
    say("torture: network partitions need network namespaces, which this version does not set up: running without partitions")
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
    for index in 0..<options.nodes where !start(index) { return stopAll(code: 2) }
    guard waitUntilReady(seconds: 60) else {
      say("torture: the cluster did not become ready within 60 s (logs in \(directory))")
      return stopAll(code: 2)
    }
    say("torture: cluster ready")
    let deadline = MonotonicClock.nowNanoseconds() + UInt64(options.duration) * 1_000_000_000
    var threads: [OSThread] = []
    for client in 0..<options.clients {
      threads.append(OSThread(name: "torture-client-\(client)") { [self] in runClient(client, until: deadline) })
    }
    threads.append(OSThread(name: "torture-nemesis") { [self] in runNemesis(until: deadline) })
    for thread in threads { thread.join() }
    heal()
    guard waitUntilReady(seconds: 60) else {
      say("torture: the cluster did not recover within 60 s after healing (logs in \(directory))")
      return stopAll(code: 1)
    }
    finalReads()
    let code = check()
    return stopAll(code: code)
  }

  // MARK: Processes

  private func url(_ index: Int, _ path: String) -> String { "http://127.0.0.1:\(Int(options.rpcPort) + index)\(path)" }

  private func start(_ index: Int) -> Bool {
    let members = (0..<options.nodes).map { "\($0 + 1)=127.0.0.1:\(Int(options.consensusPort) + $0)" }.joined(separator: ",")
    let arguments = [
      executable, "serve", "--node-id", String(index + 1), "--rpc-port", String(Int(options.rpcPort) + index),
      "--consensus-port", String(Int(options.consensusPort) + index), "--data-dir", "\(directory)/node-\(index + 1)",
      "--cluster", members,
    ]
    if let bug = options.plantBug { setenv(plantedBugEnvironmentVariable, bug, 1) }
    guard let pid = spawn(arguments, log: "\(directory)/node-\(index + 1).log") else {
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
    kill(pid, SIGKILL)
    var status: Int32 = 0
    _ = waitpid(pid, &status, 0)
  }

  private func pause(_ index: Int, _ paused: Bool) {
    let pid = state.withLock { shared -> pid_t in
      shared.nodes[index].paused = paused
      return shared.nodes[index].pid
    }
    if pid > 0 { kill(pid, paused ? SIGSTOP : SIGCONT) }
  }

  /// Every node running and not paused.
  private func heal() {
    for index in 0..<options.nodes {
      let (pid, paused) = state.withLock { ($0.nodes[index].pid, $0.nodes[index].paused) }
      if pid == 0 { _ = start(index) } else if paused { pause(index, false) }
    }
    say("torture: healed")
  }

  private func stopAll(code: Int32) -> Int32 {
    let pids = state.withLock { shared in shared.nodes.map(\.pid) }
    for pid in pids where pid > 0 {
      kill(pid, SIGCONT)
      kill(pid, SIGTERM)
    }
    for pid in pids where pid > 0 {
      var status: Int32 = 0
      _ = waitpid(pid, &status, 0)
    }
    http.shutdown()
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

  private func runClient(_ client: Int, until deadline: UInt64) {
    var random = SplitMix64(seed: seed &+ UInt64(client) &* 0x9E37_79B9_7F4A_7C15)
    var lastRead: [String: (revision: UInt64, value: [UInt8]?)] = [:]
    var counter = 0
    let operationsMax = 10_000_000
    var operations = 0
    while operations < operationsMax && MonotonicClock.nowNanoseconds() < deadline {
      operations += 1
      let node = Int(random.next() % UInt64(options.nodes))
      let slot = Int(random.next() % UInt64(options.keys))
      let keySet = state.withLock { shared -> Int in
        shared.operationsStarted += 1
        return shared.operationsStarted / options.operationsPerKeySet
      }
      let key = "k\(keySet).\(slot)"
      let mode = random.next() % 3 == 0 ? "redirect" : "proxy"
      let path = "/v1/groups/\(group)/kv/\(key)?forward=\(mode)"
      counter += 1
      let value = Array("c\(client)v\(counter)".utf8)
      let call = MonotonicClock.nowNanoseconds() - started
      state.withLock { _ = $0.keysUsed.insert(key) }
      switch random.next() % 5 {
      case 0, 1:
        let handle = state.withLock { $0.history.start(key: key, client: client, input: .put(value), call: call) }
        record(handle, classifyWrite(sendFollowing("PUT", url(node, path), body: value)) { _ in .written })
      case 2:
        let handle = state.withLock { $0.history.start(key: key, client: client, input: .get, call: call) }
        let result = sendFollowing("GET", url(node, path))
        if case .success(let response) = result, response.status == 200 || response.status == 404 {
          let read = response.status == 200 ? parseEntry(response.body) : nil
          lastRead[key] = (read?.revision ?? 0, read?.value)
          record(handle, .output(.value(read?.value)))
        } else {
          record(handle, .refused("read: \(describe(result))"))  // a read that did not answer has no effect
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
        record(handle, classifyWrite(result) { status in .swapped(status == 200) })
      default:
        let other = "k\(keySet).\((slot + 1) % options.keys)"
        guard other != key else { continue }
        state.withLock { _ = $0.keysUsed.insert(other) }
        let second = Array("c\(client)v\(counter)b".utf8)
        let body = Array(
          "{\"ops\":[{\"op\":\"put\",\"key\":\"\(key)\",\"value\":\"\(String(decoding: value, as: UTF8.self))\"},{\"op\":\"put\",\"key\":\"\(other)\",\"value\":\"\(String(decoding: second, as: UTF8.self))\"}]}".utf8)
        let handles = state.withLock { shared in
          [
            shared.history.start(key: key, client: client, input: .put(value), call: call),
            shared.history.start(key: other, client: client, input: .put(second), call: call),
          ]
        }
        let outcome = classifyWrite(sendFollowing("POST", url(node, "/v1/groups/\(group)/write?forward=\(mode)"), body: body)) {
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
    _ result: Result<PeerResponse, PeerError>, output: (Int) -> KeyValueModel.Output
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
      case 307, 421, 503: return .refused(describe(result))
      case 504, 500, 502, 508: return .unknown
      default:
        state.withLock {
          $0.unexpected.append("status \(response.status): \(String(decoding: response.body.prefix(200), as: UTF8.self))")
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

  private func runNemesis(until deadline: UInt64) {
    var random = SplitMix64(seed: seed ^ 0xFA17_0000_0000_0001)
    let faultsMax = 100_000
    for _ in 0..<faultsMax {
      let pauseMilliseconds = 1_000 + Int(random.next() % 2_000)
      guard MonotonicClock.nowNanoseconds() + UInt64(pauseMilliseconds) * 3_000_000 < deadline else { break }
      usleep(UInt32(pauseMilliseconds) * 1_000)
      let target: Int
      var role = ""
      if random.next() % 2 == 0, let leader = currentLeader() {
        target = leader
        role = " (the leader)"
      } else {
        target = Int(random.next() % UInt64(options.nodes))
      }
      let faultMilliseconds = 1_500 + Int(random.next() % 2_000)
      let action = random.next() % 5
      if action == 4 {
        // A leader transfer through a random node (the gateway routes it to the leader).
        let through = Int(random.next() % UInt64(options.nodes))
        let body = Array("{\"id\":\(target + 1)}".utf8)
        let result = send("POST", url(through, "/v1/groups/\(group)/leader"), body: body)
        let status = (try? result.get().status).map(String.init) ?? "no answer"
        say("nemesis: transfer leadership to node \(target + 1) through node \(through + 1): \(status)")
        state.withLock { $0.faults["transfer", default: 0] += 1 }
      } else if action % 2 == 0 {
        say("nemesis: kill -9 node \(target + 1)\(role)")
        kill9(target)
        usleep(UInt32(faultMilliseconds) * 1_000)
        say("nemesis: restart node \(target + 1)")
        _ = start(target)
        state.withLock { $0.faults["kill", default: 0] += 1 }
      } else {
        say("nemesis: SIGSTOP node \(target + 1)\(role) for \(faultMilliseconds) ms")
        pause(target, true)
        usleep(UInt32(faultMilliseconds) * 1_000)
        pause(target, false)
        say("nemesis: SIGCONT node \(target + 1)")
        state.withLock { $0.faults["pause", default: 0] += 1 }
      }
    }
  }

  /// The leader of the group as some running node reports it (0-based), if any.
  private func currentLeader() -> Int? {
    for index in 0..<options.nodes {
      let (pid, paused) = state.withLock { ($0.nodes[index].pid, $0.nodes[index].paused) }
      guard pid > 0, !paused, case .success(let response) = send("GET", url(index, "/v1/groups/\(group)")),
        response.status == 200
      else { continue }
      let text = String(decoding: response.body, as: UTF8.self)
      guard let leader = text.firstRange(of: "\"leader\":") else { continue }
      let digits = text[leader.upperBound...].prefix { $0.isNumber }
      if let id = Int(digits), (1...options.nodes).contains(id) { return id - 1 }
    }
    return nil
  }

  // MARK: Checking

  /// Every key through every node, linearizable, after healing: the last word on what survived.
  private func finalReads() {
    let keys = state.withLock { $0.keysUsed.sorted() }
    for key in keys {
      for index in 0..<options.nodes {
        let call = MonotonicClock.nowNanoseconds() - started
        let handle = state.withLock { $0.history.start(key: key, client: 1_000 + index, input: .get, call: call) }
        let result = send("GET", url(index, "/v1/groups/\(group)/kv/\(key)"))
        if case .success(let response) = result, response.status == 200 || response.status == 404 {
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
      switch LinearizabilityChecker.check(KeyValueModel.self, history) {
      case .linearizable: continue
      case .undecided:
        say("torture: the history of \(key) is too large to decide")
        linearizable = false
      case .notLinearizable:
        linearizable = false
        failing.append("# key \(key): no linearization. Refused operations (no effect) are comments.")
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
    say("torture: faults \(kinds.isEmpty ? "none" : kinds); unexpected answers \(shared.unexpected.count)")
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

  static func check(path: String) -> Int32 {
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
      let verdict = LinearizabilityChecker.check(KeyValueModel.self, byKey[key]!)
      print("torture: key \(key): \(byKey[key]!.count) operations, \(verdict)")
      if verdict != .linearizable { linearizable = false }
    }
    print("torture: linearizable=\(linearizable ? "yes" : "no") ops=\(byKey.values.reduce(0) { $0 + $1.count })")
    return linearizable ? 0 : 1
  }
}
