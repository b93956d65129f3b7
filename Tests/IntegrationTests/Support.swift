import Foundation
import Glibc
import Platform
import XCTest

/// Paths of the package and of the binaries `swift build` put beside this test bundle.
enum Paths {
  static let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
  }()

  static let buildDirectory: String = {
    let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    var url = URL(fileURLWithPath: executable)
    while url.pathComponents.count > 1 && !url.lastPathComponent.hasSuffix(".xctest") { url.deleteLastPathComponent() }
    url.deleteLastPathComponent()
    return url.path
  }()

  static func binary(_ name: String) throws -> String {
    let path = buildDirectory + "/" + name
    guard FileManager.default.isExecutableFile(atPath: path) else {
      throw HTTPClientError(description: "\(path) is not built; run `swift build` before `swift test` (scripts/test.sh does)")
    }
    return path
  }
}

func temporaryDirectory(_ label: String) -> String {
  let path = NSTemporaryDirectory() + "caucus-\(label)-\(UUID().uuidString.prefix(8))"
  try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

/// Ports handed out by `freePort` in this process: never handed out twice.
private let portsHandedOut = Locked<Set<UInt16>>([])

/// A port to start a node on: free now, below the kernel's ephemeral range and never handed out
/// before in this run. A port from the ephemeral range (what binding port 0 gives) can be taken,
/// before the node binds it, as the local port of another node's outgoing connection, and the
/// node then fails to start.
func freePort() -> UInt16 {
  var generator = SystemRandomNumberGenerator()
  for _ in 0..<1_000 {
    let candidate = UInt16.random(in: 20_000...32_000, using: &generator)
    let fresh = portsHandedOut.withLock { $0.insert(candidate).inserted }
    guard fresh, isFree(candidate) else { continue }
    return candidate
  }
  preconditionFailure("no free port in 20000...32000")
}

/// `count` consecutive ports, each free as `freePort` picks them: for the commands that number
/// their nodes' ports from a base (`dev-cluster`, `torture`).
func freePortRange(count: Int) -> UInt16? {
  for _ in 0..<50 {
    let candidate = freePort()
    guard Int(candidate) + count <= 32_000 else { continue }
    let rest = (1..<count).map { candidate + UInt16($0) }
    if rest.allSatisfy({ port in portsHandedOut.withLock { $0.insert(port).inserted } && isFree(port) }) {
      return candidate
    }
  }
  return nil
}

/// Whether a listener could bind `port` on loopback now.
func isFree(_ port: UInt16) -> Bool {
  let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard descriptor >= 0 else { return false }
  defer { close(descriptor) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
  address.sin_port = port.bigEndian
  let result = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  return result == 0
}

/// `count` nodes of one `--cluster` (ids 1…count) with short raft timings, not yet started, and
/// their data directories.
func clusterNodes(_ count: Int, label: String) -> (nodes: [NodeProcess], directories: [String]) {
  let consensusPorts = (0..<count).map { _ in freePort() }
  let cluster = consensusPorts.enumerated().map { "\($0.offset + 1)=127.0.0.1:\($0.element)" }.joined(separator: ",")
  var nodes: [NodeProcess] = []
  var directories: [String] = []
  for index in 0..<count {
    let directory = temporaryDirectory("\(label)-\(index + 1)")
    directories.append(directory)
    let node = NodeProcess(dataDirectory: directory, consensusPort: consensusPorts[index])
    node.extraArguments = ["--node-id", String(index + 1), "--cluster", cluster] + fastRaftTimings
    nodes.append(node)
  }
  return (nodes, directories)
}

/// Raft timings that keep elections in tests short.
let fastRaftTimings = ["--heartbeat-interval-ms", "20", "--election-timeout-ms", "200"]

/// Kills the nodes and removes their data directories and logs.
func removeNodes(_ nodes: [NodeProcess], _ directories: [String]) {
  for node in nodes { node.kill(SIGKILL) }
  for directory in directories {
    try? FileManager.default.removeItem(atPath: directory)
    try? FileManager.default.removeItem(atPath: directory + ".log")
  }
}

/// The leader of `group` as the `candidates` (indexes into `nodes`) agree on it, as an index
/// into `nodes`; nil (and a test failure) if they do not agree on one of them within `seconds`.
func agreedLeader(
  _ nodes: [NodeProcess], among candidates: [Int], group: String = "DataRegion-0", seconds: Double = 20,
  file: StaticString = #filePath, line: UInt = #line
) -> Int? {
  var found: Int?
  waitUntil("a leader every live node agrees on", seconds: seconds, file: file, line: line) {
    let views = candidates.compactMap { index -> Int? in
      guard let reply = try? HTTPClient(port: nodes[index].port).request("GET", "/v1/groups/\(group)?forward=none")
      else { return nil }
      return reply.json["leader"] as? Int
    }
    guard views.count == candidates.count, let first = views.first, views.allSatisfy({ $0 == first }),
      candidates.contains(first - 1)
    else { return false }
    found = first - 1
    return true
  }
  return found
}

/// Waits for `condition` up to `seconds`, polling; fails the test at the deadline.
func waitUntil(_ what: String, seconds: Double = 30, file: StaticString = #filePath, line: UInt = #line, _ condition: () -> Bool) {
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if condition() { return }
    usleep(20_000)
  }
  XCTFail("timed out after \(seconds) s waiting for \(what)", file: file, line: line)
}

/// A real `caucus serve` process on loopback.
/// Sendable: tests share it with worker threads that only read `port`.
final class NodeProcess: @unchecked Sendable {
  let port: UInt16
  let consensusPort: UInt16
  let dataDirectory: String
  private(set) var process: Process?
  let logPath: String
  /// Arguments every start adds (a cluster member's id, cluster list and timings).
  var extraArguments: [String] = []
  /// Environment variables every start adds to the test's own (failpoints).
  var environment: [String: String] = [:]

  init(dataDirectory: String, port: UInt16 = freePort(), consensusPort: UInt16 = freePort()) {
    self.port = port
    self.consensusPort = consensusPort
    self.dataDirectory = dataDirectory
    self.logPath = dataDirectory + ".log"
  }

  func start(_ extra: [String] = []) throws {
    let process = try launch(extra)
    waitUntil("the node on port \(port) to answer /healthz") {
      if !process.isRunning { return true }
      return (try? HTTPClient(port: port).request("GET", "/healthz").status) == 200
    }
    XCTAssertTrue(process.isRunning, "caucus exited during start-up:\n\(log())")
  }

  /// Starts the process without waiting for it to serve (it may be expected to exit).
  @discardableResult
  func launch(_ extra: [String] = []) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try Paths.binary("caucus"))
    process.arguments = [
      "serve", "--rpc-port", String(port), "--consensus-port", String(consensusPort), "--data-dir", dataDirectory,
    ] + extraArguments + extra
    if !environment.isEmpty {
      process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    _ = FileManager.default.createFile(atPath: logPath, contents: nil)
    let logFile = FileHandle(forWritingAtPath: logPath)!
    logFile.seekToEndOfFile()
    process.standardOutput = logFile
    process.standardError = logFile
    try process.run()
    self.process = process
    return process
  }

  var isRunning: Bool { process?.isRunning ?? false }

  /// Waits up to `seconds` for the process to end on its own; returns it, ended, to be asked
  /// how (nil, and a test failure, if it is still running).
  func waitForExit(seconds: Double = 30, file: StaticString = #filePath, line: UInt = #line) -> Process? {
    guard let process else { return nil }
    waitUntil("the node on port \(port) to exit", seconds: seconds, file: file, line: line) { !process.isRunning }
    guard !process.isRunning else { return nil }
    self.process = nil
    return process
  }

  func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

  /// Sends `signal` and returns at once (`kill` waits for the process to end).
  func signal(_ signal: Int32) {
    guard let process else { return }
    Glibc.kill(process.processIdentifier, signal)
  }

  func kill(_ signal: Int32) {
    guard let process else { return }
    Glibc.kill(process.processIdentifier, signal)
    process.waitUntilExit()
    self.process = nil
  }

  /// SIGTERM, and the exit status.
  func stop() -> Int32 {
    guard let process else { return -1 }
    process.terminate()
    process.waitUntilExit()
    self.process = nil
    return process.terminationStatus
  }

  deinit { if let process { Glibc.kill(process.processIdentifier, SIGKILL) } }
}

struct HTTPReply {
  var status: Int
  var headers: [String: String]
  var body: [UInt8]
  var text: String { String(decoding: body, as: UTF8.self) }
  var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]) ?? [:] }
}

struct HTTPClientError: Error, CustomStringConvertible { let description: String }

/// A minimal blocking HTTP/1.1 client with keep-alive, for tests. Not thread-safe: one per thread.
final class HTTPClient {
  private let port: UInt16
  private var descriptor: Int32 = -1
  private var buffer: [UInt8] = []

  init(port: UInt16) throws {
    self.port = port
    try connect()
  }

  deinit { if descriptor >= 0 { close(descriptor) } }

  private func connect() throws {
    if descriptor >= 0 { close(descriptor) }
    buffer.removeAll()
    descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var timeout = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    address.sin_port = port.bigEndian
    let result = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard result == 0 else { throw HTTPClientError(description: "connect to \(port): errno \(errno)") }
  }

  func request(_ method: String, _ target: String, headers: [String: String] = [:], body: [UInt8] = []) throws -> HTTPReply {
    var head = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for (name, value) in headers { head += "\(name): \(value)\r\n" }
    head += "Content-Length: \(body.count)\r\n\r\n"
    return try exchange(Array(head.utf8) + body)
  }

  func request(_ method: String, _ target: String, text: String) throws -> HTTPReply {
    try request(method, target, body: Array(text.utf8))
  }

  /// Sends raw bytes and reads one response (until Content-Length, or close).
  func exchange(_ raw: [UInt8]) throws -> HTTPReply {
    try send(raw)
    return try readResponse()
  }

  func send(_ raw: [UInt8]) throws {
    var offset = 0
    while offset < raw.count {
      let sent = raw[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      guard sent > 0 else { throw HTTPClientError(description: "send: errno \(errno)") }
      offset += sent
    }
  }

  private func fill() throws -> Bool {
    var chunk = [UInt8](repeating: 0, count: 65536)
    let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
    if count < 0 { throw HTTPClientError(description: "recv: errno \(errno)") }
    if count == 0 { return false }
    buffer.append(contentsOf: chunk[..<count])
    return true
  }

  func readResponse() throws -> HTTPReply {
    let separator: [UInt8] = [13, 10, 13, 10]
    var headerEnd: Int?
    while headerEnd == nil {
      if buffer.count >= 4 {
        headerEnd = (0...(buffer.count - 4)).first { buffer[$0..<$0 + 4].elementsEqual(separator) }
      }
      if headerEnd == nil {
        guard try fill() else { throw HTTPClientError(description: "connection closed before a response") }
      }
    }
    let head = String(decoding: buffer[..<headerEnd!], as: UTF8.self)
    var lines = head.components(separatedBy: "\r\n")
    let statusLine = lines.removeFirst().split(separator: " ")
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw HTTPClientError(description: "bad status line: \(head)") }
    var headers: [String: String] = [:]
    for line in lines {
      guard let colon = line.firstIndex(of: ":") else { continue }
      headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    buffer.removeFirst(headerEnd! + 4)
    if status == 100 { return try readResponse() }
    if status == 204 || status == 304 { return HTTPReply(status: status, headers: headers, body: []) }
    if let length = headers["content-length"].flatMap(Int.init) {
      while buffer.count < length { guard try fill() else { throw HTTPClientError(description: "closed mid-body") } }
      let body = Array(buffer[..<length])
      buffer.removeFirst(length)
      if headers["connection"] == "close" { try connect() }
      return HTTPReply(status: status, headers: headers, body: body)
    }
    while try fill() {}
    let body = buffer
    try connect()
    return HTTPReply(status: status, headers: headers, body: body)
  }
}

/// Runs a command, returns its exit status and combined output.
func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: executable)
  process.arguments = arguments
  process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
  let pipe = Pipe()
  process.standardOutput = pipe
  process.standardError = pipe
  try process.run()
  let output = pipe.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return (process.terminationStatus, String(decoding: output, as: UTF8.self))
}
