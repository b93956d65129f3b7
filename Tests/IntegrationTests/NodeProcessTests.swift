import Foundation
import Glibc
import Platform
import XCTest

/// Real `caucus` processes on loopback, driven over HTTP.
final class NodeProcessTests: XCTestCase {
  private var directories: [String] = []

  override func tearDown() {
    for directory in directories {
      try? FileManager.default.removeItem(atPath: directory)
      try? FileManager.default.removeItem(atPath: directory + ".log")
    }
  }

  private func freshNode(_ label: String) -> NodeProcess {
    let directory = temporaryDirectory(label)
    directories.append(directory)
    return NodeProcess(dataDirectory: directory)
  }

  /// Issue 2, "Done when": 32 concurrent clients write, the node is SIGKILLed and restarted, and
  /// every acknowledged write is there.
  func testEveryAcknowledgedWriteSurvivesSIGKILL() throws {
    let node = freshNode("sigkill")
    try node.start()
    let clients = 32
    let writesPerClient = 60
    let acknowledged = Locked<[String: String]>([:])
    let failures = Locked<[String]>([])
    // 32 real threads (a dispatch pool would run only as many clients as there are cores).
    let port = node.port
    let threads = (0..<clients).map { client in
      OSThread(name: "client-\(client)") {
        do {
          let http = try HTTPClient(port: port)
          for sequence in 0..<writesPerClient {
            let key = "client-\(client)/\(sequence)"
            let value = "value-\(client)-\(sequence)-\(String(repeating: "x", count: sequence % 7))"
            let reply = try http.request("PUT", "/v1/groups/DataRegion-0/kv/\(key)", text: value)
            guard reply.status == 200 else {
              failures.withLock { $0.append("\(key): \(reply.status) \(reply.text)") }
              continue
            }
            acknowledged.withLock { $0[key] = value }
          }
        } catch {
          failures.withLock { $0.append("client \(client): \(error)") }
        }
      }
    }
    for thread in threads { thread.join() }
    XCTAssertEqual(failures.withLock { $0 }, [])
    let written = acknowledged.withLock { $0 }
    XCTAssertEqual(written.count, clients * writesPerClient)

    node.kill(SIGKILL)
    try node.start()
    let http = try HTTPClient(port: node.port)
    var missing: [String] = []
    for (key, value) in written {
      let reply = try http.request("GET", "/v1/groups/DataRegion-0/kv/\(key)?raw=true")
      if reply.status != 200 || reply.text != value { missing.append("\(key): \(reply.status) \(reply.text)") }
    }
    XCTAssertEqual(missing, [], "acknowledged writes lost after SIGKILL")
    let status = try http.request("GET", "/v1/groups/DataRegion-0")
    XCTAssertEqual(status.json["appliedIndex"] as? Int, clients * writesPerClient)
    XCTAssertEqual(node.stop(), 0)
  }

  func testSIGTERMExitsZeroAndTheDataSurvives() throws {
    let node = freshNode("sigterm")
    try node.start()
    let http = try HTTPClient(port: node.port)
    XCTAssertEqual(try http.request("PUT", "/v1/groups/DataRegion-0/kv/k", text: "v").status, 200)
    XCTAssertEqual(node.stop(), 0, node.log())
    XCTAssertTrue(node.log().contains("stopped"), node.log())
    try node.start()
    XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-0/kv/k?raw=true").text, "v")
    XCTAssertEqual(node.stop(), 0)
  }

  func testTheDefaultGroupIsCreatedOnlyOnTheFirstStart() throws {
    let node = freshNode("first-start")
    try node.start()
    var http = try HTTPClient(port: node.port)
    XCTAssertEqual(try http.request("DELETE", "/v1/groups/DataRegion-0").status, 200)
    XCTAssertEqual(node.stop(), 0)
    try node.start()
    http = try HTTPClient(port: node.port)
    XCTAssertEqual(try http.request("GET", "/v1/groups/DataRegion-0").status, 404)
    XCTAssertEqual(node.stop(), 0)
  }

  func testSnapshotsReleaseTheLogAndRestartRestoresFromThem() throws {
    let node = freshNode("snapshot")
    try node.start(["--config", try properties(["standalone.walSegmentBytes=65536"])])
    let http = try HTTPClient(port: node.port)
    let value = String(repeating: "v", count: 2000)
    for index in 0..<200 {
      XCTAssertEqual(try http.request("PUT", "/v1/groups/DataRegion-0/kv/k\(index)", text: value).status, 200)
    }
    let segmentsBefore = try walSegments(node)
    XCTAssertGreaterThan(segmentsBefore, 3)
    let snapshot = try http.request("POST", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(snapshot.status, 200, snapshot.text)
    XCTAssertEqual(snapshot.json["index"] as? Int, 200)
    XCTAssertLessThan(try walSegments(node), segmentsBefore)
    XCTAssertEqual(try http.request("PUT", "/v1/groups/DataRegion-0/kv/after", text: "snapshot").status, 200)
    node.kill(SIGKILL)
    try node.start()
    let again = try HTTPClient(port: node.port)
    XCTAssertEqual(try again.request("GET", "/v1/groups/DataRegion-0/kv/k0?raw=true").text, value)
    XCTAssertEqual(try again.request("GET", "/v1/groups/DataRegion-0/kv/after?raw=true").text, "snapshot")
    XCTAssertEqual(try again.request("GET", "/v1/groups/DataRegion-0").json["appliedIndex"] as? Int, 201)
    XCTAssertEqual(node.stop(), 0)
  }

  func testARefusedDataDirectoryAndAnUnknownProtocolStopStartUpWithAClearMessage() throws {
    let node = freshNode("identity")
    try node.start()
    XCTAssertEqual(node.stop(), 0)
    let caucus = try Paths.binary("caucus")
    let (status, output) = try runCommand(
      caucus, ["serve", "--node-id", "2", "--rpc-port", String(freePort()), "--data-dir", node.dataDirectory])
    XCTAssertNotEqual(status, 0)
    XCTAssertTrue(output.contains("belongs to node 1"), output)
    let (status2, output2) = try runCommand(
      caucus, ["serve", "--protocol", "paxos", "--rpc-port", String(freePort()), "--data-dir", node.dataDirectory])
    XCTAssertNotEqual(status2, 0)
    XCTAssertTrue(output2.contains("accepted names: raft, standalone"), output2)
  }

  /// Bug: a --cluster list of more than groupPeersMax members made every member crash at start
  /// (recording PartitionRegion-0 hit a precondition). Now start-up refuses it with a clear message.
  func testAClusterListLongerThanAGroupMayBeIsRefusedAtStart() throws {
    let list = (1...17).map { "\($0)=127.0.0.1:\(40_000 + $0)" }.joined(separator: ",")
    let (status, output) = try runCommand(
      try Paths.binary("caucus"),
      ["serve", "--protocol", "raft", "--node-id", "1", "--cluster", list, "--rpc-port", String(freePort()),
       "--data-dir", temporaryDirectory("cluster-limit")])
    XCTAssertNotEqual(status, 0)
    XCTAssertTrue(output.contains("--cluster names 17 members; the directory group has at most 16"), output)
  }

  /// Issue 11: `--metrics-groups-max` caps the per-group series of a scrape; the count of groups
  /// hosted covers them all, and the scrape says how many it left out.
  func testTheMetricsGroupsLimitCapsPerGroupSeriesAndABadLimitIsRefused() throws {
    let node = freshNode("metrics-groups")
    try node.start(["--metrics-groups-max", "1"])
    let http = try HTTPClient(port: node.port)
    for group in ["SchemaRegion-1", "DataRegion-5"] {
      XCTAssertEqual(try http.request("POST", "/v1/groups", text: #"{"id":"\#(group)"}"#).status, 201)
    }
    let text = try http.request("GET", "/metrics").text
    XCTAssertEqual(Prometheus.formatProblems(text), [], text)
    let series = text.split(separator: "\n").filter { $0.hasPrefix("caucus_group_applied_index{") }
    XCTAssertEqual(series, [#"caucus_group_applied_index{group="DataRegion-0"} 0"#], text)
    XCTAssertTrue(text.contains("\ncaucus_groups_metrics_omitted 2\n"), text)
    XCTAssertTrue(text.contains("\ncaucus_groups_hosted 3\n"), text)
    XCTAssertEqual(node.stop(), 0)

    let (status, output) = try runCommand(
      try Paths.binary("caucus"),
      ["serve", "--metrics-groups-max", "40000", "--rpc-port", String(freePort()), "--data-dir", node.dataDirectory])
    XCTAssertNotEqual(status, 0)
    XCTAssertTrue(output.contains("--metrics-groups-max must be 0...32768"), output)
  }

  /// `--backup-bytes-max` bounds the backup export: a group past it is 413 naming the limit, one
  /// within it is exported; a limit out of range stops the start.
  func testTheBackupLimitIsConfigurableAndEnforced() throws {
    let node = freshNode("backup-limit")
    try node.start(["--backup-bytes-max", String(1 << 20)])
    let http = try HTTPClient(port: node.port)
    let value = [UInt8](repeating: 0x61, count: 600 << 10)
    XCTAssertEqual(try http.request("PUT", "/v1/groups/DataRegion-0/kv/a", body: value).status, 200)
    XCTAssertEqual(try http.request("GET", "/v1/groups/DataRegion-0/snapshot").status, 200, "600 KiB fit in 1 MiB")
    XCTAssertEqual(try http.request("PUT", "/v1/groups/DataRegion-0/kv/b", body: value).status, 200)
    let refused = try http.request("GET", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(refused.status, 413, refused.text)
    XCTAssertEqual(refused.json["error"] as? String, "payload_too_large")
    XCTAssertEqual(refused.json["limitBytes"] as? Int, 1 << 20, refused.text)
    XCTAssertEqual(node.stop(), 0)

    let (status, output) = try runCommand(
      try Paths.binary("caucus"),
      ["serve", "--backup-bytes-max", "1000", "--rpc-port", String(freePort()), "--data-dir", node.dataDirectory])
    XCTAssertNotEqual(status, 0)
    XCTAssertTrue(output.contains("--backup-bytes-max must be 1048576...2147483648"), output)
  }

  func testBadInputGetsItsDocumentedErrorAndTheNodeKeepsServing() throws {
    let node = freshNode("bad-input")
    try node.start(["--value-bytes-max", "1024"])
    let cases: [(String, [UInt8], Int, String?)] = [
      ("bad group id", Array("GET /v1/groups/Nope-1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 400, "invalid_group_id"),
      ("unknown route", Array("GET /v2/things HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 404, "not_found"),
      ("wrong method", Array("PATCH /v1/groups HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".utf8), 405, "method_not_allowed"),
      ("bad json", Array("POST /v1/groups HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{{{".utf8), 400, "invalid_json"),
      ("empty key", Array("PUT /v1/groups/DataRegion-0/kv/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".utf8), 400, "invalid_key"),
      ("bad escape", Array("GET /v1/groups/DataRegion-0/kv/a%zz HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 400, "invalid_key"),
      ("long key", Array("GET /v1/groups/DataRegion-0/kv/\(String(repeating: "k", count: 4097)) HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 400, "invalid_key"),
      ("value too large", Array("PUT /v1/groups/DataRegion-0/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n\(String(repeating: "v", count: 2000))".utf8), 413, "payload_too_large"),
      ("body too large", Array("PUT /v1/groups/DataRegion-0/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n".utf8), 413, "payload_too_large"),
      ("bad consistency", Array("GET /v1/groups/DataRegion-0/kv/a?consistency=weird HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 400, "bad_request"),
      ("bad limit", Array("GET /v1/groups/DataRegion-0/kv?limit=0 HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 400, "bad_request"),
      ("bad forward", Array("GET /v1/groups/DataRegion-0/kv/a?forward=maybe HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 400, "bad_request"),
      ("bad if-match", Array("PUT /v1/groups/DataRegion-0/kv/a HTTP/1.1\r\nHost: x\r\nIf-Match: soon\r\nContent-Length: 1\r\n\r\nx".utf8), 400, "bad_request"),
      ("bad ops", Array("POST /v1/groups/DataRegion-0/write HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n{\"ops\":[{\"op\":\"explode\"}]}".utf8), 400, nil),
      ("missing group", Array("GET /v1/groups/DataRegion-77/kv/a HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 404, "group_not_found"),
      ("both framings", Array("POST /v1/groups HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8), 400, nil),
      ("bad version", Array("GET / HTTP/2.0\r\nHost: x\r\n\r\n".utf8), 505, nil),
      ("obs-fold", Array("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n".utf8), 400, nil),
      ("space before colon", Array("GET / HTTP/1.1\r\nHost : x\r\n\r\n".utf8), 400, nil),
      ("long target", Array("GET /\(String(repeating: "a", count: 70_000)) HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 414, "uri_too_long"),
      ("many headers", Array(("GET / HTTP/1.1\r\n" + (0..<500).map { "X-\($0): y\r\n" }.joined() + "\r\n").utf8), 431, "headers_too_large"),
    ]
    for (name, raw, expected, code) in cases {
      let http = try HTTPClient(port: node.port)
      let reply = try http.exchange(raw)
      XCTAssertEqual(reply.status, expected, "\(name): \(reply.text)")
      XCTAssertTrue(reply.headers["content-type"]?.hasPrefix("application/json") ?? false, "\(name): errors are JSON")
      if let code { XCTAssertEqual(reply.json["error"] as? String, code, name) }
      XCTAssertNotNil(reply.json["message"] as? String, "\(name): errors carry a message")
      XCTAssertEqual(reply.headers["x-caucus-node"], "1", "\(name): every answer names the node")
      XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/healthz").status, 200, "serving after \(name)")
    }
    let http = try HTTPClient(port: node.port)
    XCTAssertEqual(try http.request("GET", "/v1/groups/DataRegion-0/kv/a").status, 404, "bad input changed nothing")
    XCTAssertEqual(try http.request("GET", "/v1/groups/DataRegion-0").json["appliedIndex"] as? Int, 0)
    XCTAssertEqual(node.stop(), 0)
  }

  func testTheReadmeWalkThroughPasses() throws {
    let (status, output) = try runCommand(
      "/bin/bash", [Paths.packageRoot + "/scripts/smoke.sh"], environment: ["CAUCUS_BIN": try Paths.binary("caucus")])
    XCTAssertEqual(status, 0, output)
    XCTAssertTrue(output.contains("steps passed"), output)
  }

  func testTheConsensusExampleWritesReadsAndPersists() throws {
    let directory = temporaryDirectory("example")
    directories.append(directory)
    let example = try Paths.binary("consensus-example")
    let (status, output) = try runCommand(example, [directory])
    XCTAssertEqual(status, 0, output)
    XCTAssertTrue(output.contains("read at index 3: total 12"), output)
    let (again, output2) = try runCommand(example, [directory])
    XCTAssertEqual(again, 0, output2)
    XCTAssertTrue(output2.contains("read at index 6: total 24"), "the counter survives a restart:\n\(output2)")
  }

  func testTheOpenAPISpecIsValidAndCoversTheContract() throws {
    let (status, output) = try runCommand("/bin/bash", [Paths.packageRoot + "/scripts/validate-openapi.sh"])
    XCTAssertEqual(status, 0, output)
    XCTAssertTrue(output.contains("openapi.yaml: valid"), output)
  }

  private func properties(_ lines: [String]) throws -> String {
    let directory = temporaryDirectory("properties")
    directories.append(directory)
    let path = directory + "/caucus.properties"
    // Windows line endings, a trailing newline, blanks and comments: all of them must parse.
    try (["# test", "", "  ! also a comment"] + lines.map { "  \($0)  " } + [""]).joined(separator: "\r\n")
      .write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }

  private func walSegments(_ node: NodeProcess) throws -> Int {
    try FileManager.default.contentsOfDirectory(atPath: node.dataDirectory + "/wal").filter { $0.hasPrefix("wal-") }.count
  }
}


final class WatchTests: XCTestCase {
  func testAWatchAnswersWhenAWriteLandsUnderItsPrefixAndNotBefore() throws {
    let directory = temporaryDirectory("watch")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let node = NodeProcess(dataDirectory: directory)
    try node.start()
    defer { _ = node.stop() }
    let writer = try HTTPClient(port: node.port)
    XCTAssertEqual(try writer.request("PUT", "/v1/groups/DataRegion-0/kv/other/1", text: "x").status, 200)
    let from = try writer.request("GET", "/v1/groups/DataRegion-0").json["appliedIndex"] as! Int
    let answer = Locked<HTTPReply?>(nil)
    let port = node.port
    let watcher = OSThread(name: "watcher") {
      let reply = try? HTTPClient(port: port).request("GET", "/v1/groups/DataRegion-0/watch?prefix=jobs/&fromIndex=\(from)&timeoutMs=20000")
      answer.withLock { $0 = reply }
    }
    // A write outside the prefix must not wake the watch.
    XCTAssertEqual(try writer.request("PUT", "/v1/groups/DataRegion-0/kv/other/2", text: "y").status, 200)
    XCTAssertEqual(try writer.request("PUT", "/v1/groups/DataRegion-0/kv/jobs/7", text: "queued").status, 200)
    waitUntil("the watch to answer") { answer.withLock { $0 } != nil }
    watcher.join()
    let reply = try XCTUnwrap(answer.withLock { $0 })
    XCTAssertEqual(reply.status, 200, reply.text)
    let events = reply.json["events"] as? [[String: Any]] ?? []
    XCTAssertEqual(events.count, 1, reply.text)
    XCTAssertEqual(events.first?["key"] as? String, "jobs/7")
    XCTAssertEqual(events.first?["value"] as? String, "queued")
    XCTAssertEqual(events.first?["type"] as? String, "put")
    XCTAssertEqual(reply.json["index"] as? Int, from + 2)
  }

  func testAWatchWithNothingToReportAnswersEmptyAtItsTimeout() throws {
    let directory = temporaryDirectory("watch-timeout")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let node = NodeProcess(dataDirectory: directory)
    try node.start()
    defer { _ = node.stop() }
    let started = Date()
    let reply = try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-0/watch?timeoutMs=300")
    XCTAssertEqual(reply.status, 200)
    XCTAssertEqual((reply.json["events"] as? [Any])?.count, 0)
    XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.29, "it waited for the timeout")
    for bad in ["timeoutMs=-1", "timeoutMs=soon", "fromIndex=18446744073709551615", "fromIndex=-3", "prefix=%ZZ"] {
      XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-0/watch?\(bad)").status, 400, bad)
    }
  }
}
