import Foundation
import Glibc
import XCTest

/// A node whose data directory fills up (issue 10, point 3): it refuses writes with `507
/// insufficient_storage`, acknowledges nothing it did not fsync, keeps what it acknowledged, and
/// takes writes again once space returns, without a restart. The data directory is a small tmpfs
/// (tests run as root, here and in CI), filled but for a little room by a filler file.
final class DiskFullTests: XCTestCase {
  /// The file system's size: small, so that filling it takes few writes.
  static let fileSystemBytes = 8 << 20
  /// Room the filler leaves: a few hundred writes' worth.
  static let headroomBytes = 512 << 10
  static let valueBytes = 4 << 10
  /// Writes tried before the disk must be full (the room holds about 128 of them).
  static let writesUntilFullMax = 2_000
  /// Writes tried once the node refused one: none may be acknowledged.
  static let writesWhileFullCount = 20
  /// What the node is told: how often it checks for space while full.
  static let retryMs = 100
  static let group = "DataRegion-0"

  func testAStandaloneNodeRefusesWritesWhenItsDiskIsFullAndResumesWithoutARestart() throws {
    let fileSystem = try SmallFileSystem(label: "diskfull-standalone", bytes: Self.fileSystemBytes)
    defer { fileSystem.unmount() }
    let node = NodeProcess(dataDirectory: fileSystem.path)
    defer { node.kill(SIGKILL) }
    try node.start(["--out-of-space-retry-ms", String(Self.retryMs)])
    let processID = try XCTUnwrap(node.process?.processIdentifier)
    let client = try HTTPClient(port: node.port)
    XCTAssertEqual(try client.request("PUT", "/v1/groups/\(Self.group)/kv/first", text: "before the filler").status, 200)
    let filler = try fileSystem.fill(leavingBytes: Self.headroomBytes)

    // Write until the node refuses: everything it acknowledged must survive; what it answered
    // indeterminate may or may not have been applied.
    var acknowledged: [String: [UInt8]] = ["first": Array("before the filler".utf8)]
    var refusal: HTTPReply?
    let deadline = Date().addingTimeInterval(30)
    for number in 0..<Self.writesUntilFullMax where refusal == nil && Date() < deadline {
      let key = "k\(number)"
      let value = Self.value(number)
      let reply = try client.request("PUT", "/v1/groups/\(Self.group)/kv/\(key)", body: value)
      switch reply.status {
      case 200: acknowledged[key] = value
      case 504: XCTAssertEqual(reply.json["indeterminate"] as? Bool, true, "a write in flight when the disk filled: \(reply.text)")
      case 507: refusal = reply
      default: XCTFail("unexpected answer to a write while the disk fills: \(reply.status) \(reply.text)")
      }
    }
    let refused = try XCTUnwrap(refusal, "the node never answered 507 with \(Self.headroomBytes) bytes free:\n\(node.log())")
    XCTAssertGreaterThan(acknowledged.count, 10, "the room left took some writes before the disk filled")
    try checkInsufficientStorage(refused, dataDirectory: fileSystem.path)

    // While full: no write is acknowledged, the node says why, and reads go on.
    for number in 0..<Self.writesWhileFullCount {
      let reply = try client.request("PUT", "/v1/groups/\(Self.group)/kv/full\(number)", body: Self.value(number))
      XCTAssertEqual(reply.status, 507, "a write to a full disk: \(reply.text)")
    }
    let readiness = try client.request("GET", "/readyz")
    XCTAssertEqual(readiness.status, 503)
    XCTAssertTrue(readiness.text.contains("out of space") && readiness.text.contains(fileSystem.path), readiness.text)
    let nodeStatus = try client.request("GET", "/v1/node").json
    XCTAssertEqual((nodeStatus["storage"] as? [String: Any])?["state"] as? String, "out_of_space", "\(nodeStatus)")
    let metrics = try client.request("GET", "/metrics").text
    XCTAssertTrue(metrics.contains("\ncaucus_storage_out_of_space 1\n"), metrics)
    XCTAssertTrue(metrics.contains("\ncaucus_storage_out_of_space_failures_total 1\n"), metrics)
    try checkReadable(acknowledged, client, "while the disk is full")

    // Space returns: writes succeed again, in the same process, and nothing acknowledged is lost.
    try FileManager.default.removeItem(atPath: filler)
    var resumed = false
    waitUntil("a write to succeed after the filler was deleted", seconds: 20) {
      let reply = try? client.request("PUT", "/v1/groups/\(Self.group)/kv/after", text: "space returned")
      resumed = reply?.status == 200
      return resumed
    }
    guard resumed else { return XCTFail(node.log()) }
    acknowledged["after"] = Array("space returned".utf8)
    XCTAssertTrue(node.isRunning)
    XCTAssertEqual(node.process?.processIdentifier, processID, "the node resumed without a restart")
    try checkReadable(acknowledged, client, "after space returned")
    XCTAssertEqual(try client.request("GET", "/readyz").status, 200)
    let recovered = try client.request("GET", "/metrics").text
    XCTAssertTrue(recovered.contains("\ncaucus_storage_out_of_space 0\n"), recovered)
    XCTAssertTrue(recovered.contains("\ncaucus_storage_out_of_space_recoveries_total 1\n"), recovered)
  }

  func testAClusterNodeWithAFullDiskRefusesWritesWhileTheOthersServeAndCatchesUpWhenSpaceReturns() throws {
    let fileSystem = try SmallFileSystem(label: "diskfull-cluster", bytes: Self.fileSystemBytes)
    defer { fileSystem.unmount() }
    let (nodes, directories) = clusterNodes(3, label: "diskfull-cluster")
    // Node 3 keeps its data on the small file system.
    let full = NodeProcess(dataDirectory: fileSystem.path, consensusPort: nodes[2].consensusPort)
    full.extraArguments = nodes[2].extraArguments
    let members = [nodes[0], nodes[1], full]
    defer { removeNodes(members, directories) }
    for node in members { try node.start(["--out-of-space-retry-ms", String(Self.retryMs)]) }
    let healthy = try HTTPClient(port: nodes[0].port)
    let fullClient = try HTTPClient(port: full.port)
    waitUntil("the cluster to elect a leader of \(Self.group)") {
      (try? healthy.request("PUT", "/v1/groups/\(Self.group)/kv/first", text: "before the filler").status) == 200
    }
    let processID = try XCTUnwrap(full.process?.processIdentifier)
    let filler = try fileSystem.fill(leavingBytes: Self.headroomBytes)

    // Writes through a healthy node fill node 3's disk as it replicates them.
    var acknowledged: [String: [UInt8]] = ["first": Array("before the filler".utf8)]
    let deadline = Date().addingTimeInterval(30)
    var number = 0
    while number < Self.writesUntilFullMax && Date() < deadline {
      defer { number += 1 }
      if number % 16 == 0, Self.storageState(fullClient) == "out_of_space" { break }
      let key = "k\(number)"
      let reply = try healthy.request("PUT", "/v1/groups/\(Self.group)/kv/\(key)", body: Self.value(number))
      if reply.status == 200 { acknowledged[key] = Self.value(number) }
    }
    XCTAssertEqual(Self.storageState(fullClient), "out_of_space", "node 3's disk never filled:\n\(full.log())")

    // The full node refuses writes sent to it; the other two still commit.
    let refused = try fullClient.request("PUT", "/v1/groups/\(Self.group)/kv/refused", body: Self.value(0))
    try checkInsufficientStorage(refused, dataDirectory: fileSystem.path)
    var servedWhileFull = 0
    waitUntil("the healthy nodes to commit writes while node 3 is full") {
      let key = "while-full-\(servedWhileFull)"
      if (try? healthy.request("PUT", "/v1/groups/\(Self.group)/kv/\(key)", text: key).status) == 200 {
        acknowledged[key] = Array(key.utf8)
        servedWhileFull += 1
      }
      return servedWhileFull >= 5
    }
    XCTAssertEqual(Self.storageState(fullClient), "out_of_space")

    // Space returns: node 3 reopens its storage in the same process and catches up.
    try FileManager.default.removeItem(atPath: filler)
    waitUntil("node 3 to reopen its storage", seconds: 20) { Self.storageState(fullClient) == "ok" }
    XCTAssertEqual(full.process?.processIdentifier, processID, "node 3 resumed without a restart")
    let lastKey = "after-space-returned"
    let last = try healthy.request("PUT", "/v1/groups/\(Self.group)/kv/\(lastKey)", text: lastKey)
    XCTAssertEqual(last.status, 200, last.text)
    acknowledged[lastKey] = Array(lastKey.utf8)
    let lastIndex = try XCTUnwrap(last.json["index"] as? Int)
    for (key, value) in acknowledged {
      let reply = try fullClient.request(
        "GET", "/v1/groups/\(Self.group)/kv/\(key)?consistency=stale&minIndex=\(lastIndex)&raw=true")
      XCTAssertEqual(reply.status, 200, "node 3 after catching up, \(key): \(reply.text)")
      XCTAssertEqual(reply.body, value, "node 3 after catching up, \(key)")
    }
  }

  // MARK: Helpers

  static func value(_ number: Int) -> [UInt8] {
    let prefix = Array("value \(number) ".utf8)
    return prefix + [UInt8](repeating: UInt8(ascii: "x"), count: valueBytes - prefix.count)
  }

  static func storageState(_ client: HTTPClient) -> String? {
    guard let reply = try? client.request("GET", "/v1/node") else { return nil }
    return (reply.json["storage"] as? [String: Any])?["state"] as? String
  }

  func checkInsufficientStorage(_ reply: HTTPReply, dataDirectory: String, file: StaticString = #filePath, line: UInt = #line) throws {
    XCTAssertEqual(reply.status, 507, reply.text, file: file, line: line)
    XCTAssertEqual(reply.json["error"] as? String, "insufficient_storage", reply.text, file: file, line: line)
    XCTAssertEqual(reply.json["dataDir"] as? String, dataDirectory, reply.text, file: file, line: line)
    let message = try XCTUnwrap(reply.json["message"] as? String, file: file, line: line)
    XCTAssertTrue(message.contains(dataDirectory), "the message names the data directory: \(message)", file: file, line: line)
    XCTAssertTrue(message.contains("free space"), "the message says what to do: \(message)", file: file, line: line)
    XCTAssertNotNil(reply.headers["retry-after"], "507 carries Retry-After", file: file, line: line)
  }

  func checkReadable(_ acknowledged: [String: [UInt8]], _ client: HTTPClient, _ when: String) throws {
    for (key, value) in acknowledged.sorted(by: { $0.key < $1.key }) {
      let reply = try client.request("GET", "/v1/groups/\(Self.group)/kv/\(key)?raw=true")
      XCTAssertEqual(reply.status, 200, "\(when), acknowledged \(key): \(reply.text)")
      XCTAssertEqual(reply.body, value, "\(when), acknowledged \(key)")
    }
  }
}

/// A tmpfs of a fixed size mounted on a fresh directory, for one node's data.
final class SmallFileSystem {
  let path: String

  init(label: String, bytes: Int) throws {
    path = temporaryDirectory(label)
    let (status, output) = Self.run(["mount", "-t", "tmpfs", "-o", "size=\(bytes)", "tmpfs", path])
    guard status == 0 else {
      try? FileManager.default.removeItem(atPath: path)
      XCTFail(
        "mounting a \(bytes)-byte tmpfs on \(path) failed (status \(status)): \(output). These tests need root "
          + "(CAP_SYS_ADMIN) to mount a size-limited file system; run them as root, as CI does.")
      throw SmallFileSystemError(description: "mount failed: \(output)")
    }
  }

  /// Bytes an unprivileged writer may still use.
  func freeBytes() -> Int {
    var statistics = statvfs()
    guard statvfs(path, &statistics) == 0 else { return 0 }
    return Int(statistics.f_bavail) * Int(statistics.f_frsize)
  }

  /// Writes a filler file that leaves about `leavingBytes` free; returns its path.
  func fill(leavingBytes: Int) throws -> String {
    let filler = path + "/filler"
    let bytes = freeBytes() - leavingBytes
    guard bytes > 0 else { throw SmallFileSystemError(description: "only \(freeBytes()) bytes free on \(path)") }
    guard FileManager.default.createFile(atPath: filler, contents: Data(count: bytes)) else {
      throw SmallFileSystemError(description: "cannot write \(bytes) bytes to \(filler)")
    }
    return filler
  }

  func unmount() {
    let (status, output) = Self.run(["umount", "-l", path])
    if status != 0 { XCTFail("unmounting \(path) failed: \(output)") }
    try? FileManager.default.removeItem(atPath: path)
    try? FileManager.default.removeItem(atPath: path + ".log")
  }

  static func run(_ arguments: [String]) -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { return (-1, "\(error)") }
    process.waitUntilExit()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return (process.terminationStatus, output)
  }
}

struct SmallFileSystemError: Error, CustomStringConvertible { let description: String }
