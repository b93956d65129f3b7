import Foundation
import Glibc
import Platform
import TLSTestSupport
import XCTest

/// What a `caucus` client command did: its exit status, its standard output (bytes: `--raw`
/// writes values) and its standard error.
struct CommandResult {
  var status: Int32
  var standardOutput: [UInt8]
  var standardError: String
  var text: String { String(decoding: standardOutput, as: UTF8.self) }
  var lines: [String] { text.split(separator: "\n").map(String.init) }
  /// Each line of standard output as a JSON object (`--output json`).
  var documents: [[String: Any]] {
    lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
  }
}

/// Runs the built `caucus` with `arguments`, `input` on its standard input, and waits for it.
func caucus(_ arguments: [String], input: [UInt8] = [], environment: [String: String] = [:]) throws -> CommandResult {
  let process = try startCaucus(arguments, environment: environment)
  return process.finish(input: input)
}

/// A started `caucus` client command (a watch runs while the test writes); its output is
/// collected by a thread per pipe, so that neither pipe can fill and stall it.
final class RunningCommand {
  let process: Process
  private let inputPipe = Pipe()
  private let outputPipe = Pipe()
  private let errorPipe = Pipe()
  private let collected = Locked<(output: Data?, error: Data?)>((nil, nil))

  init(_ arguments: [String], environment: [String: String]) throws {
    process = Process()
    process.executableURL = URL(fileURLWithPath: try Paths.binary("caucus"))
    process.arguments = arguments
    // The test's own CAUCUS_* must not leak into a command that does not set them.
    var base = ProcessInfo.processInfo.environment
    base["CAUCUS_ENDPOINTS"] = nil
    base["CAUCUS_TOKEN"] = nil
    process.environment = base.merging(environment) { $1 }
    process.standardInput = inputPipe
    process.standardOutput = outputPipe
    process.standardError = errorPipe
    try process.run()
    let collected = self.collected
    let output = outputPipe.fileHandleForReading
    let error = errorPipe.fileHandleForReading
    Thread {
      let data = output.readDataToEndOfFile()
      collected.withLock { $0.output = data }
    }.start()
    Thread {
      let data = error.readDataToEndOfFile()
      collected.withLock { $0.error = data }
    }.start()
  }

  /// Writes `input`, closes standard input, waits for the exit and for both pipes to end.
  func finish(input: [UInt8] = []) -> CommandResult {
    if !input.isEmpty { inputPipe.fileHandleForWriting.write(Data(input)) }
    try? inputPipe.fileHandleForWriting.close()
    process.waitUntilExit()
    var result: (output: Data, error: Data)?
    waitUntil("the command's output to end") {
      result = collected.withLock { state in state.output.flatMap { output in state.error.map { (output, $0) } } }
      return result != nil
    }
    return CommandResult(
      status: process.terminationStatus, standardOutput: Array(result?.output ?? Data()),
      standardError: String(decoding: result?.error ?? Data(), as: UTF8.self))
  }
}

func startCaucus(_ arguments: [String], environment: [String: String] = [:]) throws -> RunningCommand {
  try RunningCommand(arguments, environment: environment)
}

/// A loopback listener that stands in for a sick node: it answers every request with `503
/// no_leader` (`answering`), or accepts connections and never answers (not `answering`: its
/// backlog completes the connect, nothing reads the request).
final class FakeEndpoint: @unchecked Sendable {
  let port: UInt16
  private let descriptor: Int32
  private let stopped = Locked(false)
  private var thread: Thread?

  init(answering: Bool) throws {
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0), backlog: 64)
    port = try listener.localAddress().port
    let descriptor = listener.release()
    self.descriptor = descriptor
    guard answering else { return }
    let stopped = self.stopped
    let thread = Thread {
      while !stopped.withLock({ $0 }) {
        let connection = accept(descriptor, nil, nil)
        guard connection >= 0 else { continue }
        // The request: read up to the end of its headers (a small body comes with them).
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while request.firstRange(of: Array("\r\n\r\n".utf8)) == nil {
          let count = read(connection, &buffer, buffer.count)
          guard count > 0 else { break }
          request += buffer[0..<count]
        }
        let body = #"{"error":"no_leader","message":"no leader is known for the group"}"#
        let response =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
          + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        _ = Array(response.utf8).withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
        close(connection)
      }
    }
    thread.start()
    self.thread = thread
  }

  var url: String { "http://127.0.0.1:\(port)" }

  /// Stops answering: the accept loop ends at its next connection (one is made to wake it).
  func stop() {
    stopped.withLock { $0 = true }
    if thread != nil { _ = try? HTTPClient(port: port) }
    shutdown(descriptor, Int32(SHUT_RDWR))
    close(descriptor)
  }
}

/// The `caucus kv/group/peer/cluster` client against real nodes: a standalone node for the data
/// commands, output formats, exit statuses and fail-over; an auth-enabled node for --token.
final class CLITests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var paths: [String] = []
  private var fakes: [FakeEndpoint] = []

  override func tearDown() {
    for fake in fakes { fake.stop() }
    removeNodes(nodes, paths)
  }

  private func standalone(_ label: String, _ extra: [String] = []) throws -> NodeProcess {
    let directory = temporaryDirectory(label)
    paths.append(directory)
    let node = NodeProcess(dataDirectory: directory)
    node.extraArguments = extra
    nodes.append(node)
    try node.start()
    return node
  }

  private func url(_ node: NodeProcess) -> String { "http://127.0.0.1:\(node.port)" }

  func testPutGetDeleteInBothOutputsAndTheExitStatusOfEveryKindOfFailure() throws {
    let node = try standalone("cli-kv")
    let endpoints = ["--endpoints", url(node)]
    let put = try caucus(["kv", "put", "colour", "green"] + endpoints)
    XCTAssertEqual(put.status, 0, put.standardError)
    XCTAssertEqual(put.lines, ["key=colour", "revision=1", "index=1"])
    let get = try caucus(["kv", "get", "colour"] + endpoints)
    XCTAssertEqual(get.lines, ["key=colour", "revision=1", "value=green"])
    let json = try caucus(["kv", "get", "colour", "--output", "json", "--consistency", "stale"] + endpoints)
    XCTAssertEqual(json.lines.count, 1, json.text)
    XCTAssertEqual(json.documents.first?["value"] as? String, "green")
    XCTAssertEqual(json.documents.first?["revision"] as? Int, 1)

    // Compare-and-set and create-only map onto If-Match / If-None-Match: a mismatch is 412.
    let stale = try caucus(["kv", "put", "colour", "blue", "--if-revision", "7"] + endpoints)
    XCTAssertEqual(stale.status, 1)
    XCTAssertTrue(stale.standardError.hasPrefix("error: precondition_failed: "), stale.standardError)
    XCTAssertEqual(try caucus(["kv", "put", "colour", "blue", "--if-revision", "1"] + endpoints).status, 0)
    let again = try caucus(["kv", "put", "colour", "red", "--create-only"] + endpoints)
    XCTAssertEqual(again.status, 1)
    XCTAssertTrue(again.standardError.contains("precondition_failed"), again.standardError)
    XCTAssertEqual(try caucus(["kv", "get", "colour", "--raw"] + endpoints).text, "blue")

    let deleted = try caucus(["kv", "del", "colour", "--output", "json"] + endpoints)
    XCTAssertEqual(deleted.documents.first?["deleted"] as? Bool, true, deleted.text)
    XCTAssertEqual(try caucus(["kv", "del", "colour"] + endpoints).lines.first, "deleted=false")

    // A missing key: status 1 and the server's code and message on standard error, nothing on
    // standard output.
    let missing = try caucus(["kv", "get", "colour"] + endpoints)
    XCTAssertEqual(missing.status, 1)
    XCTAssertEqual(missing.text, "")
    XCTAssertTrue(missing.standardError.hasPrefix("error: key_not_found: "), missing.standardError)
    let badGroup = try caucus(["kv", "get", "k", "-g", "Nonsense-1"] + endpoints)
    XCTAssertEqual(badGroup.status, 1)
    XCTAssertTrue(badGroup.standardError.hasPrefix("error: invalid_group_id: "), badGroup.standardError)
    // Usage errors: ArgumentParser's status 64, before any request.
    XCTAssertEqual(try caucus(["kv", "put", "only-a-key"] + endpoints).status, 64)
    XCTAssertEqual(try caucus(["kv", "get", "k", "--endpoints", "127.0.0.1:1"]).status, 64)
    XCTAssertEqual(try caucus(["kv", "put", "k", "v", "--create-only", "--if-revision", "1"] + endpoints).status, 64)
    // The environment names the endpoints when --endpoints does not.
    XCTAssertEqual(try caucus(["kv", "put", "via-env", "yes"], environment: ["CAUCUS_ENDPOINTS": url(node)]).status, 0)
    XCTAssertEqual(try caucus(["kv", "get", "via-env", "--raw"], environment: ["CAUCUS_ENDPOINTS": url(node)]).text, "yes")
  }

  func testListPagesFollowedWithAllAndKeysThatNeedEncoding() throws {
    let node = try standalone("cli-list")
    let endpoints = ["--endpoints", url(node)]
    // Keys with '/', '..', spaces, '?', '%' and '#' reach the node as they are (percent-encoded).
    let keys = ["p/a", "p/b/../c", "p/d e", "p/f?g=h", "p/100%", "p/#x", "p/z"].sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    for key in keys { XCTAssertEqual(try caucus(["kv", "put", key, "v:" + key] + endpoints).status, 0, key) }
    XCTAssertEqual(try caucus(["kv", "put", "q/outside", "x"] + endpoints).status, 0)
    for key in keys { XCTAssertEqual(try caucus(["kv", "get", key, "--raw"] + endpoints).text, "v:" + key, key) }

    let page = try caucus(["kv", "list", "--prefix", "p/", "--limit", "3"] + endpoints)
    XCTAssertEqual(page.status, 0, page.standardError)
    XCTAssertEqual(page.lines.count, 4, page.text)  // the header and three rows
    XCTAssertTrue(page.lines[0].hasPrefix("KEY"), page.text)
    XCTAssertTrue(page.standardError.contains("--all"), "says there is more: \(page.standardError)")
    let all = try caucus(["kv", "list", "--prefix", "p/", "--limit", "3", "--all"] + endpoints)
    XCTAssertEqual(all.status, 0, all.standardError)
    XCTAssertEqual(all.lines.count, 1 + keys.count, all.text)
    XCTAssertEqual(all.lines.dropFirst().map { $0.components(separatedBy: "  ").first ?? "" }, keys, all.text)
    XCTAssertEqual(all.standardError, "")

    let pages = try caucus(["kv", "list", "--prefix", "p/", "--limit", "3", "--all", "--output", "json"] + endpoints)
    XCTAssertEqual(pages.documents.count, 3, "one line per page: \(pages.text)")
    XCTAssertEqual(pages.documents.map { $0["more"] as? Bool }, [true, true, false])
    let listed = pages.documents.flatMap { ($0["items"] as? [[String: Any]] ?? []).compactMap { $0["key"] as? String } }
    XCTAssertEqual(listed, keys)
    let after = try caucus(["kv", "list", "--prefix", "p/", "--after", keys[4], "--output", "json"] + endpoints)
    XCTAssertEqual((after.documents.first?["items"] as? [[String: Any]])?.compactMap { $0["key"] as? String }, Array(keys[5...]))

    // Keys that are not UTF-8 come back as keyBase64; --all carries on past them (afterBase64).
    let http = try HTTPClient(port: node.port)
    for suffix in ["%FF%01", "%FF%02", "%FF%03"] {
      XCTAssertEqual(try http.request("PUT", "/v1/groups/DataRegion-0/kv/b" + suffix, text: "x").status, 200)
    }
    let binary = try caucus(["kv", "list", "--prefix", "b", "--limit", "1", "--all"] + endpoints)
    XCTAssertEqual(binary.status, 0, binary.standardError)
    XCTAssertEqual(binary.lines.dropFirst().map { $0.components(separatedBy: " ").first ?? "" },
      ["base64:Yv8B", "base64:Yv8C", "base64:Yv8D"], binary.text)
    // One page at a time: the hint names the option that continues, --after-base64 for such a key.
    let first = try caucus(["kv", "list", "--prefix", "b", "--limit", "1"] + endpoints)
    XCTAssertTrue(first.standardError.contains("--after-base64 Yv8B"), first.standardError)
    let second = try caucus(["kv", "list", "--prefix", "b", "--limit", "1", "--after-base64", "Yv8B"] + endpoints)
    XCTAssertEqual(second.lines.dropFirst().map { $0.components(separatedBy: " ").first ?? "" }, ["base64:Yv8C"], second.text)
    XCTAssertEqual(try caucus(["kv", "list", "--after", "a", "--after-base64", "Yv8B"] + endpoints).status, 64, "not both")
    // A text key with a quote is quoted for the shell.
    XCTAssertEqual(try caucus(["kv", "put", "o'brien", "x"] + endpoints).status, 0)
    XCTAssertEqual(try caucus(["kv", "put", "o'connor", "x"] + endpoints).status, 0)
    let quoted = try caucus(["kv", "list", "--prefix", "o'", "--limit", "1"] + endpoints)
    XCTAssertTrue(quoted.standardError.contains(#"--after 'o'\''brien'"#), quoted.standardError)
  }

  func testABinaryValueGoesInThroughAFileOrStandardInputAndComesBackRaw() throws {
    let node = try standalone("cli-binary")
    let endpoints = ["--endpoints", url(node)]
    let bytes = (0...255).map { UInt8($0) } + [0xFF, 0xFE, 0x00]
    let file = temporaryDirectory("cli-value") + "/value.bin"
    paths.append(file)
    try Data(bytes).write(to: URL(fileURLWithPath: file))
    XCTAssertEqual(try caucus(["kv", "put", "blob", "--value-file", file] + endpoints).status, 0)
    let raw = try caucus(["kv", "get", "blob", "--raw"] + endpoints)
    XCTAssertEqual(raw.status, 0, raw.standardError)
    XCTAssertEqual(raw.standardOutput, bytes)
    let table = try caucus(["kv", "get", "blob"] + endpoints)
    XCTAssertTrue(table.lines.contains("valueBase64=" + Data(bytes).base64EncodedString()), table.text)
    XCTAssertTrue(try caucus(["kv", "list"] + endpoints).text.contains("base64:"), "a listing marks base64")

    let piped = try caucus(["kv", "put", "piped", "--value-file", "-"] + endpoints, input: Array(bytes.reversed()))
    XCTAssertEqual(piped.status, 0, piped.standardError)
    XCTAssertEqual(try caucus(["kv", "get", "piped", "--raw"] + endpoints).standardOutput, Array(bytes.reversed()))
    XCTAssertEqual(try caucus(["kv", "put", "k", "--value-file", file + ".missing"] + endpoints).status, 64)
  }

  func testWatchPrintsEachEventAndStopsAfterCount() throws {
    let node = try standalone("cli-watch")
    let endpoints = ["--endpoints", url(node)]
    for (key, value) in [("w/a", "1"), ("other", "x"), ("w/b", "2")] {
      XCTAssertEqual(try caucus(["kv", "put", key, value] + endpoints).status, 0)
    }
    // The history from index 0: both w/ writes, in order, then the exit.
    let history = try caucus(["kv", "watch", "--prefix", "w/", "--from-index", "0", "--count", "2"] + endpoints)
    XCTAssertEqual(history.status, 0, history.standardError)
    XCTAssertEqual(history.lines, ["put w/a revision=1 value=1", "put w/b revision=3 value=2"])

    // Live: the watch starts after index 3 and sees a put and a delete made while it waits.
    let watch = try startCaucus(["kv", "watch", "--prefix", "w/", "--from-index", "3", "--count", "2", "--output", "json"] + endpoints)
    XCTAssertEqual(try caucus(["kv", "put", "w/c", "3"] + endpoints).status, 0)
    XCTAssertEqual(try caucus(["kv", "del", "w/a"] + endpoints).status, 0)
    waitUntil("the watch to end after two events") { !watch.process.isRunning }
    let live = watch.finish()
    XCTAssertEqual(live.status, 0, live.standardError)
    XCTAssertEqual(live.documents.map { $0["type"] as? String }, ["put", "delete"], live.text)
    XCTAssertEqual(live.documents.map { $0["key"] as? String }, ["w/c", "w/a"])
    XCTAssertEqual(live.documents.first?["value"] as? String, "3")
  }

  func testFailOverPassesDeadRefusingAndSilentEndpointsAndNoneAnsweringIsStatus3() throws {
    let node = try standalone("cli-failover")
    XCTAssertEqual(try caucus(["kv", "put", "k", "v", "--endpoints", url(node)]).status, 0)
    let dead = "http://127.0.0.1:\(freePort())"
    let unavailable = try FakeEndpoint(answering: true)
    let silent = try FakeEndpoint(answering: false)
    fakes += [unavailable, silent]

    // A dead port, a node answering 503 and one that never answers are each passed over.
    for first in [dead, unavailable.url, silent.url] {
      let read = try caucus(["kv", "get", "k", "--raw", "--timeout-ms", "4000", "--endpoints", first + "," + url(node)])
      XCTAssertEqual(read.status, 0, "\(first): \(read.standardError)")
      XCTAssertEqual(read.text, "v", first)
    }
    let write = try caucus(["kv", "put", "k", "w", "--endpoints", "\(dead),\(unavailable.url),\(url(node))"])
    XCTAssertEqual(write.status, 0, write.standardError)

    // Nobody answers: status 3, naming every endpoint tried.
    let nobody = try caucus(["kv", "get", "k", "--timeout-ms", "3000", "--endpoints", "\(dead),\(silent.url)"])
    XCTAssertEqual(nobody.status, 3)
    XCTAssertTrue(nobody.standardError.hasPrefix("error: no endpoint reachable: "), nobody.standardError)
    XCTAssertTrue(nobody.standardError.contains(dead) && nobody.standardError.contains(silent.url), nobody.standardError)
    // Only 503s: the cluster is there but cannot serve, a refusal (status 1) with its code.
    let refused = try caucus(["kv", "get", "k", "--endpoints", "\(dead),\(unavailable.url)"])
    XCTAssertEqual(refused.status, 1)
    XCTAssertTrue(refused.standardError.hasPrefix("error: no_leader: "), refused.standardError)
  }

  /// A change sent to a node that never answers may have taken effect. A write, which carries its
  /// Idempotency-Key, goes on to the next endpoint (applied at most once); a change without one
  /// (group delete) is not re-sent; when no answer comes the outcome is unknown (status 5, not 3)
  /// and a write's key is printed, to repeat it with.
  func testAChangeSentWithoutAnAnswerIsAnUnknownOutcomeNotUnreachable() throws {
    let node = try standalone("cli-unknown")
    let silent = try FakeEndpoint(answering: false)
    fakes.append(silent)
    let lost = try caucus(["kv", "put", "k", "v1", "--timeout-ms", "2000", "--endpoints", silent.url])
    XCTAssertEqual(lost.status, 5, lost.standardError)
    XCTAssertTrue(lost.standardError.hasPrefix("error: outcome_unknown: "), lost.standardError)
    let marker = "--idempotency-key "
    let hint = try XCTUnwrap(lost.standardError.range(of: marker), lost.standardError)
    let key = String(lost.standardError[hint.upperBound...].prefix { !$0.isWhitespace })
    XCTAssertTrue(key.hasPrefix("cli-"), lost.standardError)
    let repeated = try caucus(["kv", "put", "k", "v1", "--idempotency-key", key, "--output", "json", "--endpoints", url(node)])
    XCTAssertEqual(repeated.status, 0, repeated.standardError)
    let again = try caucus(["kv", "put", "k", "v1", "--idempotency-key", key, "--output", "json", "--endpoints", url(node)])
    XCTAssertEqual(again.text, repeated.text, "the repeat with the same key is answered, not applied again")

    let passed = try caucus(["kv", "put", "k", "v2", "--timeout-ms", "4000", "--endpoints", "\(silent.url),\(url(node))"])
    XCTAssertEqual(passed.status, 0, passed.standardError)

    let deletion = try caucus(["group", "delete", "DataRegion-0", "--timeout-ms", "4000", "--endpoints", "\(silent.url),\(url(node))"])
    XCTAssertEqual(deletion.status, 5, deletion.standardError)
    XCTAssertTrue(deletion.standardError.contains("outcome_unknown"), deletion.standardError)
    XCTAssertEqual(try caucus(["kv", "get", "k", "--raw", "--endpoints", url(node)]).text, "v2", "the delete was not re-sent")
  }

  func testCACertTurnsTLSOnAndAnUntrustedCertificateIsNoAnswer() throws {
    let directory = temporaryDirectory("cli-tls")
    paths.append(directory)
    let node = NodeProcess(dataDirectory: directory)
    nodes.append(node)
    let ca = try TestCertificates.path("ca.pem")
    let process = try node.launch([
      "--tls-cert-file", try TestCertificates.path("node.pem"), "--tls-key-file", try TestCertificates.path("node.key"),
      "--tls-ca-file", ca,
    ])
    let https = ["--endpoints", "https://127.0.0.1:\(node.port)", "--cacert", ca]
    waitUntil("the TLS node to answer the client") {
      !process.isRunning || (try? caucus(["cluster", "status"] + https).status) == 0
    }
    XCTAssertTrue(process.isRunning, node.log())
    XCTAssertEqual(try caucus(["kv", "put", "k", "secure"] + https).status, 0)
    XCTAssertEqual(try caucus(["kv", "get", "k", "--raw"] + https).text, "secure")
    // An http:// endpoint goes over https too once --cacert is given.
    XCTAssertEqual(try caucus(["kv", "get", "k", "--raw", "--cacert", ca, "--endpoints", "http://127.0.0.1:\(node.port)"]).text, "secure")
    // Without the cluster CA the certificate is not trusted: no answer, status 3.
    let untrusted = try caucus(["kv", "get", "k", "--endpoints", "https://127.0.0.1:\(node.port)"])
    XCTAssertEqual(untrusted.status, 3, untrusted.standardError)
    XCTAssertTrue(untrusted.standardError.hasPrefix("error: no endpoint reachable: "), untrusted.standardError)
  }

  func testTheTokenComesFromTheFlagOrTheEnvironment() throws {
    let tokens = temporaryDirectory("cli-tokens") + "/tokens.json"
    paths.append(tokens)
    try writeTokensFile(tokens, [("writer", "write", "cli-secret-token", ""), ("reader", "read", "cli-read-token", "")])
    let node = try standalone("cli-auth", ["--auth-tokens-file", tokens])
    let endpoints = ["--endpoints", url(node)]
    let anonymous = try caucus(["kv", "put", "k", "v"] + endpoints)
    XCTAssertEqual(anonymous.status, 1)
    XCTAssertTrue(anonymous.standardError.hasPrefix("error: unauthorized: "), anonymous.standardError)
    XCTAssertEqual(try caucus(["kv", "put", "k", "v", "--token", "cli-secret-token"] + endpoints).status, 0)
    let read = try caucus(["kv", "get", "k", "--raw"] + endpoints, environment: ["CAUCUS_TOKEN": "cli-read-token"])
    XCTAssertEqual(read.status, 0, read.standardError)
    XCTAssertEqual(read.text, "v")
    let forbidden = try caucus(["kv", "put", "k", "w"] + endpoints, environment: ["CAUCUS_TOKEN": "cli-read-token"])
    XCTAssertEqual(forbidden.status, 1)
    XCTAssertTrue(forbidden.standardError.hasPrefix("error: forbidden: "), forbidden.standardError)
  }
}

/// The group, peer and cluster commands on a three-node raft cluster.
final class CLIClusterTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "cli-cluster")
    for node in nodes { try node.start() }
  }

  override func tearDown() { removeNodes(nodes, directories) }

  private func endpoints(_ indexes: [Int]) -> [String] {
    ["--endpoints", indexes.map { "http://127.0.0.1:\(nodes[$0].port)" }.joined(separator: ",")]
  }

  /// `group status` as JSON, through node `through`.
  private func status(_ group: String, through: Int) throws -> [String: Any] {
    let result = try caucus(["group", "status", group, "--output", "json"] + endpoints([through]))
    XCTAssertEqual(result.status, 0, result.standardError)
    return try XCTUnwrap(result.documents.first, result.text)
  }

  func testGroupLifecycleMembershipAndClusterStatus() throws {
    let dataLeader = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    // A follower answers a group's status with its own view, where the peers' progress is
    // unknown: the command asks the leader (found through the cluster) instead.
    XCTAssertEqual(try caucus(["kv", "put", "k", "v"] + endpoints([dataLeader])).status, 0)
    let follower = (dataLeader + 1) % 3
    let viewed = try status("DataRegion-0", through: follower)
    XCTAssertEqual(viewed["role"] as? String, "leader")
    let progress = (viewed["peers"] as? [[String: Any]])?.compactMap { $0["matchIndex"] as? Int } ?? []
    XCTAssertEqual(progress.count, 3, "\(viewed)")
    XCTAssertTrue(progress.allSatisfy { $0 > 0 }, "every peer's progress, as the leader knows it: \(viewed)")
    let cluster = try caucus(["cluster", "status"] + endpoints([1]))
    XCTAssertEqual(cluster.status, 0, cluster.standardError)
    XCTAssertEqual(cluster.lines.first?.split(separator: " ", omittingEmptySubsequences: true).map(String.init),
      ["ID", "CLIENT-URL", "REACHABLE", "GROUPS", "LEADERS"])
    XCTAssertEqual(cluster.lines.count, 4, cluster.text)
    for (index, node) in nodes.enumerated() {
      XCTAssertTrue(cluster.lines.contains { $0.hasPrefix("\(index + 1) ") && $0.contains("http://127.0.0.1:\(node.port)") && $0.contains("true") },
        cluster.text)
    }

    // Health asks every endpoint itself: all ready is 0; a dead one is a row of its own and 1.
    let healthy = try caucus(["cluster", "health"] + endpoints([0, 1, 2]))
    XCTAssertEqual(healthy.status, 0, healthy.text + healthy.standardError)
    XCTAssertEqual(healthy.lines.filter { $0.contains(" true ") || $0.hasSuffix(" -") }.count, 3, healthy.text)
    let deadEndpoint = "http://127.0.0.1:\(freePort())"
    let unhealthy = try caucus(["cluster", "health", "--output", "json", "--endpoints", "\(deadEndpoint),http://127.0.0.1:\(nodes[0].port)"])
    XCTAssertEqual(unhealthy.status, 1, unhealthy.text)
    XCTAssertEqual(unhealthy.documents.map { $0["ready"] as? Bool }, [false, true], unhealthy.text)

    // A planned balance moves nothing and says what it would do; json is the node's report.
    let plan = try caucus(["cluster", "rebalance", "--dry-run", "--output", "json"] + endpoints([1]))
    XCTAssertEqual(plan.status, 0, plan.standardError)
    let report = try XCTUnwrap(plan.documents.first, plan.text)
    XCTAssertEqual(report["moved"] as? Int, 0, plan.text)
    XCTAssertTrue(((report["transfers"] as? [[String: Any]]) ?? []).allSatisfy { $0["outcome"] as? String == "planned" }, plan.text)
    let planTable = try caucus(["cluster", "rebalance", "--dry-run"] + endpoints([1]))
    XCTAssertTrue(planTable.lines.contains("moved=0"), planTable.text)
    XCTAssertEqual(try caucus(["cluster", "rebalance", "--max", "0"] + endpoints([1])).status, 64)

    // Created on nodes 1 and 2 through node 3, the first endpoint dead.
    let dead = "http://127.0.0.1:\(freePort())"
    let created = try caucus(["group", "create", "DataRegion-7", "--peers", "1,2", "--endpoints", "\(dead),http://127.0.0.1:\(nodes[2].port)"])
    XCTAssertEqual(created.status, 0, created.standardError)
    XCTAssertTrue(created.text.contains("id=DataRegion-7"), created.text)
    let leader = try XCTUnwrap(agreedLeader(nodes, among: [0, 1], group: "DataRegion-7"))
    let table = try caucus(["group", "status", "DataRegion-7"] + endpoints([2]))
    XCTAssertTrue(table.lines.contains { $0.hasPrefix("PEER") && $0.contains("MATCH-INDEX") && $0.contains("LAST-CONTACT-MS") }, table.text)
    XCTAssertEqual(table.lines.filter { $0.contains(" leader ") }.count, 1, "one peer row says leader: \(table.text)")
    XCTAssertEqual(table.lines.filter { $0.contains(" follower ") }.count, 1, table.text)
    let listed = try caucus(["group", "list", "--cluster", "--output", "json"] + endpoints([2]))
    let ids = (listed.documents.first?["groups"] as? [[String: Any]])?.compactMap { $0["id"] as? String } ?? []
    XCTAssertTrue(ids.contains("DataRegion-7") && ids.contains("DataRegion-0"), listed.text)

    // Leadership moves where it is asked to.
    let target = 1 - leader
    let moved = try caucus(["group", "transfer-leader", "DataRegion-7", "--to", String(target + 1)] + endpoints([2]))
    XCTAssertEqual(moved.status, 0, moved.standardError)
    XCTAssertEqual(agreedLeader(nodes, among: [0, 1], group: "DataRegion-7"), target)

    XCTAssertEqual(try caucus(["kv", "put", "k", "v", "-g", "DataRegion-7"] + endpoints([2])).status, 0)
    let snapshot = try caucus(["group", "snapshot", "DataRegion-7", "--output", "json"] + endpoints([target]))
    XCTAssertEqual(snapshot.status, 0, snapshot.standardError)
    XCTAssertNotNil(snapshot.documents.first?["index"] as? Int, snapshot.text)

    // Membership: node 3 in, out (twice: the second is peer_not_in_group), and in again by a change.
    let peerIDs = { () throws -> [Int] in
      (try self.status("DataRegion-7", through: target)["peers"] as? [[String: Any]])?.compactMap { $0["id"] as? Int }.sorted() ?? []
    }
    let added = try caucus(["peer", "add", "DataRegion-7", "3"] + endpoints([0]))
    XCTAssertEqual(added.status, 0, added.standardError)
    XCTAssertEqual(try peerIDs(), [1, 2, 3])
    XCTAssertEqual(try caucus(["kv", "get", "k", "--raw", "-g", "DataRegion-7", "--consistency", "stale"] + endpoints([2])).text, "v")
    let removed = try caucus(["peer", "remove", "DataRegion-7", "3"] + endpoints([0]))
    XCTAssertEqual(removed.status, 0, removed.standardError)
    XCTAssertEqual(try peerIDs(), [1, 2])
    let absent = try caucus(["peer", "remove", "DataRegion-7", "3"] + endpoints([0]))
    XCTAssertEqual(absent.status, 1)
    XCTAssertTrue(absent.standardError.hasPrefix("error: peer_not_in_group: "), absent.standardError)
    let changed = try caucus(["peer", "change", "DataRegion-7", "--peers", "1,2,3"] + endpoints([1]))
    XCTAssertEqual(changed.status, 0, changed.standardError)
    XCTAssertEqual(try peerIDs(), [1, 2, 3])

    let deleted = try caucus(["group", "delete", "DataRegion-7"] + endpoints([0]))
    XCTAssertEqual(deleted.status, 0, deleted.standardError)
    let gone = try caucus(["group", "status", "DataRegion-7"] + endpoints([0]))
    XCTAssertEqual(gone.status, 1)
    XCTAssertTrue(gone.standardError.hasPrefix("error: group_not_found: "), gone.standardError)
  }
}
