import Foundation
import Glibc
import XCTest

/// Backup and restore on a 3-node raft cluster of real processes: the snapshot export through a
/// follower, `caucus backup` and `caucus restore` into a new group, `--resume`, the refusal of a
/// group in use, and a corrupt file.
final class BackupTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []
  private var files: [String] = []

  override func setUpWithError() throws {
    (nodes, directories) = clusterNodes(3, label: "backup")
    for node in nodes { try node.start() }
  }

  override func tearDown() {
    removeNodes(nodes, directories)
    for file in files { try? FileManager.default.removeItem(atPath: file) }
  }

  private var endpoints: String { nodes.map { "http://127.0.0.1:\($0.port)" }.joined(separator: ",") }

  private func caucus(_ arguments: [String]) throws -> (Int32, String) {
    try runCommand(try Paths.binary("caucus"), arguments)
  }

  private func temporaryFile(_ label: String) -> String {
    let path = NSTemporaryDirectory() + "caucus-\(label)-\(UUID().uuidString.prefix(8)).caucus-backup"
    files.append(path)
    return path
  }

  /// Writes the keys every test backs up: text, keys with '/', an empty value, a binary value, a
  /// key that is not UTF-8, a deleted key, and (`many`) enough keys and bytes for several
  /// batches. Returns the index of the last write.
  @discardableResult
  private func writeKeys(through port: UInt16, many: Bool = false) throws -> Int {
    let client = try HTTPClient(port: port)
    let batch = try client.request(
      "POST", "/v1/groups/DataRegion-0/write",
      text: #"{"ops":[{"op":"put","key":"a/b/c","value":"slashes"},{"op":"put","key":"plain","value":"text"},"#
        + #"{"op":"put","key":"empty","value":""},{"op":"put","key":"gone","value":"soon"}]}"#)
    XCTAssertEqual(batch.status, 200, batch.text)
    XCTAssertEqual(try client.request("PUT", "/v1/groups/DataRegion-0/kv/bin/value", body: [0xFF, 0x00, 0xFE, 0x80]).status, 200)
    XCTAssertEqual(try client.request("PUT", "/v1/groups/DataRegion-0/kv/%FF%01raw", text: "binary key").status, 200)
    var last = try client.request("DELETE", "/v1/groups/DataRegion-0/kv/gone")
    XCTAssertEqual(last.status, 200, last.text)
    if many {
      // 1500 small keys that are not UTF-8 (more than one batch of 1024, and more than a
      // listing page, which then ends on such a key) and three values of 300 KiB (more than one
      // batch of 512 KiB).
      for chunk in stride(from: 0, to: 1500, by: 750) {
        let ops = (chunk..<chunk + 750).map { number in
          let key = Data([0xFF, 0xFE] + Array("many/\(number)".utf8)).base64EncodedString()
          return #"{"op":"put","keyBase64":"\#(key)","value":"value \#(number)"}"#
        }
        last = try client.request("POST", "/v1/groups/DataRegion-0/write", text: #"{"ops":[\#(ops.joined(separator: ","))]}"#)
        XCTAssertEqual(last.status, 200, last.text)
      }
      for number in 0..<3 {
        last = try client.request(
          "PUT", "/v1/groups/DataRegion-0/kv/large/\(number)", body: Array(repeating: UInt8(ascii: "a") + UInt8(number), count: 300 * 1024))
        XCTAssertEqual(last.status, 200, last.text)
      }
    }
    return try XCTUnwrap(last.json["index"] as? Int)
  }

  /// Every key of `group` with its value (`key`/`keyBase64` and `value`/`valueBase64` as the
  /// listing gives them), read page by page from the node on `port`.
  private func contents(of group: String, port: UInt16) throws -> [String: String] {
    let client = try HTTPClient(port: port)
    var found: [String: String] = [:]
    var after: String?
    for _ in 0..<100 {
      let target = "/v1/groups/\(group)/kv?limit=1000" + (after.map { "&" + $0 } ?? "")
      let page = try client.request("GET", target)
      XCTAssertEqual(page.status, 200, page.text)
      let items = page.json["items"] as? [[String: Any]] ?? []
      for item in items {
        let key = (item["key"] as? String).map { "text:" + $0 } ?? "base64:" + (item["keyBase64"] as? String ?? "?")
        found[key] = (item["value"] as? String).map { "text:" + $0 } ?? "base64:" + (item["valueBase64"] as? String ?? "?")
      }
      guard page.json["more"] as? Bool == true, let last = items.last else { return found }
      // A key that is not UTF-8 is named in base64 (`afterBase64`).
      after = (last["key"] as? String).map { "after=" + $0.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }
        ?? "afterBase64=" + (last["keyBase64"] as? String ?? "").addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
    }
    XCTFail("the listing of \(group) did not end")
    return found
  }

  /// The header fields of a backup file as its format says (README "Backup and restore"): read
  /// here independently of the implementation's decoder.
  private func header(of bytes: [UInt8]) throws -> (version: Int, group: String, index: UInt64, kind: String) {
    XCTAssertEqual(Array(bytes.prefix(8)), Array("CAUCUSBK".utf8), "the magic")
    func integer(_ range: Range<Int>) -> UInt64 { bytes[range].reduce(0) { $0 << 8 | UInt64($1) } }
    let version = Int(integer(8..<10))
    let groupLength = Int(integer(10..<12))
    let group = String(decoding: bytes[12..<(12 + groupLength)], as: UTF8.self)
    let index = integer((12 + groupLength)..<(20 + groupLength))
    let kindLength = Int(bytes[20 + groupLength])
    let kind = String(decoding: bytes[(21 + groupLength)..<(21 + groupLength + kindLength)], as: UTF8.self)
    let payloadLength = integer((21 + groupLength + kindLength)..<(29 + groupLength + kindLength))
    XCTAssertEqual(UInt64(bytes.count), 29 + UInt64(groupLength + kindLength) + payloadLength + 4, "the lengths add up")
    return (version, group, index, kind)
  }

  func testASnapshotThroughAFollowerIsForwardedToTheLeaderAndNamesItsIndex() throws {
    let leaderIndex = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    let follower = [0, 1, 2].first { $0 != leaderIndex }!
    let written = try writeKeys(through: nodes[leaderIndex].port)

    let reply = try HTTPClient(port: nodes[follower].port).request("GET", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(reply.status, 200, reply.text)
    XCTAssertEqual(reply.headers["x-caucus-forwarded-by"], String(follower + 1), "relayed by the follower")
    XCTAssertEqual(reply.headers["x-caucus-node"], String(leaderIndex + 1), "answered by the leader")
    XCTAssertEqual(reply.headers["content-type"], "application/octet-stream")
    let index = try XCTUnwrap(reply.headers["x-caucus-index"].flatMap { UInt64($0) })
    XCTAssertGreaterThanOrEqual(index, UInt64(written), "a linearizable read sees every acknowledged write")
    XCTAssertEqual(reply.headers["content-disposition"], "attachment; filename=\"DataRegion-0-\(index).caucus-backup\"")
    let fields = try header(of: reply.body)
    XCTAssertEqual(fields.version, 1)
    XCTAssertEqual(fields.group, "DataRegion-0")
    XCTAssertEqual(fields.index, index, "the file names the index of the header")
    XCTAssertEqual(fields.kind, "kv")
    let body = String(decoding: reply.body, as: UTF8.self)
    XCTAssertTrue(body.contains("a/b/c") && body.contains("slashes") && body.contains("binary key"), "the keys are in it")

    // Other reads' conventions: ?forward=none at a follower is a hint, a stale read is local.
    let none = try HTTPClient(port: nodes[follower].port).request("GET", "/v1/groups/DataRegion-0/snapshot?forward=none")
    XCTAssertEqual(none.status, 421, none.text)
    let stale = try HTTPClient(port: nodes[follower].port).request(
      "GET", "/v1/groups/DataRegion-0/snapshot?consistency=stale&minIndex=\(index)")
    XCTAssertEqual(stale.status, 200, stale.text)
    XCTAssertNil(stale.headers["x-caucus-forwarded-by"])
    XCTAssertEqual(try HTTPClient(port: nodes[follower].port).request("GET", "/v1/groups/DataRegion-0/snapshot?consistency=x").status, 400)
    XCTAssertEqual(try HTTPClient(port: nodes[follower].port).request("GET", "/v1/groups/DataRegion-9/snapshot").status, 404)
  }

  func testBackupThenRestoreIntoANewGroupAndResumeAndARefusedGroupInUse() throws {
    let leaderIndex = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    let follower = [0, 1, 2].first { $0 != leaderIndex }!
    try writeKeys(through: nodes[leaderIndex].port, many: true)
    let source = try contents(of: "DataRegion-0", port: nodes[leaderIndex].port)
    XCTAssertEqual(source.count, 5 + 1500 + 3)

    let file = temporaryFile("backup")
    let (backupStatus, backupOutput) = try caucus([
      "backup", "--endpoints", "http://127.0.0.1:\(nodes[follower].port)", "--group", "DataRegion-0", "--file", file,
    ])
    XCTAssertEqual(backupStatus, 0, backupOutput)
    XCTAssertTrue(backupOutput.contains("backed up \(source.count) keys of DataRegion-0"), backupOutput)
    let bytes = Array(try XCTUnwrap(FileManager.default.contents(atPath: file)))
    XCTAssertEqual(try header(of: bytes).group, "DataRegion-0")
    XCTAssertFalse(FileManager.default.fileExists(atPath: file + ".tmp"), "the temporary file was renamed")

    // Into a new group on all three nodes, through every endpoint.
    let restore = ["restore", "--endpoints", endpoints, "--group", "DataRegion-7", "--file", file, "--output", "json"]
    let (restoreStatus, restoreOutput) = try caucus(restore + ["--peers", "1,2,3"])
    XCTAssertEqual(restoreStatus, 0, restoreOutput)
    let summary = try XCTUnwrap(
      try JSONSerialization.jsonObject(with: Data(restoreOutput.utf8)) as? [String: Any], restoreOutput)
    XCTAssertEqual(summary["keys"] as? Int, source.count)
    XCTAssertEqual(summary["replayed"] as? Int, 0)
    XCTAssertEqual(summary["sourceGroup"] as? String, "DataRegion-0")
    let batches = try XCTUnwrap(summary["batches"] as? Int)
    XCTAssertGreaterThanOrEqual(batches, 4, "1500 keys need two batches, 900 KiB of values two more")
    XCTAssertLessThanOrEqual(batches, 8)
    // Every node holds the restored group, with every key and value of the source.
    let leaderOfRestored = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2], group: "DataRegion-7"))
    XCTAssertEqual(try contents(of: "DataRegion-7", port: nodes[leaderOfRestored].port), source)
    for node in nodes {
      let status = try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-7?forward=none")
      XCTAssertEqual(status.status, 200, status.text)
    }

    // Again without --resume: the group holds keys, so nothing is written.
    let before = try HTTPClient(port: nodes[leaderOfRestored].port).request("GET", "/v1/groups/DataRegion-7").json["commitIndex"] as? Int
    let (refusedStatus, refusedOutput) = try caucus(restore)
    XCTAssertEqual(refusedStatus, 1, refusedOutput)
    XCTAssertTrue(refusedOutput.contains("group_in_use"), refusedOutput)
    let after = try HTTPClient(port: nodes[leaderOfRestored].port).request("GET", "/v1/groups/DataRegion-7").json["commitIndex"] as? Int
    XCTAssertEqual(after, before, "a refused restore wrote nothing")

    // With --resume (what a rerun after a failure does): every batch is answered as applied
    // before, and the contents are the same, without duplicates or errors.
    let (resumedStatus, resumedOutput) = try caucus(restore + ["--resume"])
    XCTAssertEqual(resumedStatus, 0, resumedOutput)
    let resumed = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(resumedOutput.utf8)) as? [String: Any], resumedOutput)
    XCTAssertEqual(resumed["keys"] as? Int, source.count)
    XCTAssertEqual(resumed["batches"] as? Int, batches)
    XCTAssertEqual(resumed["replayed"] as? Int, batches, "each batch applied once, on the first run")
    XCTAssertEqual(try contents(of: "DataRegion-7", port: nodes[follower].port), source, "read through any node")

    // A key changed in the restored group since: --resume does not overwrite it, and the
    // read-back names the difference (exit 4).
    XCTAssertEqual(try HTTPClient(port: nodes[leaderOfRestored].port).request("PUT", "/v1/groups/DataRegion-7/kv/plain", text: "changed").status, 200)
    let (differentStatus, differentOutput) = try caucus(restore + ["--resume"])
    XCTAssertEqual(differentStatus, 4, differentOutput)
    XCTAssertTrue(differentOutput.contains("verify_failed") && differentOutput.contains("'plain'"), differentOutput)
  }

  /// A restore that dies after its second batch (the `restore-after-batch` failpoint: SIGKILL)
  /// leaves a group holding part of the backup. A rerun without --resume is refused; with
  /// --resume the two batches applied are answered as applied before, the rest are applied, and
  /// the group is the backup.
  func testARestoreThatDiedPartwayIsFinishedByResume() throws {
    let leaderIndex = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    try writeKeys(through: nodes[leaderIndex].port, many: true)
    let source = try contents(of: "DataRegion-0", port: nodes[leaderIndex].port)
    let file = temporaryFile("partial")
    let (backupStatus, backupOutput) = try caucus(["backup", "--endpoints", endpoints, "--group", "DataRegion-0", "--file", file])
    XCTAssertEqual(backupStatus, 0, backupOutput)

    let restore = ["restore", "--endpoints", endpoints, "--group", "DataRegion-6", "--peers", "1,2,3", "--file", file]
    let (diedStatus, diedOutput) = try runCommand(
      try Paths.binary("caucus"), restore, environment: ["CAUCUS_FAILPOINTS": "restore-after-batch:crash:2"])
    XCTAssertEqual(diedStatus, SIGKILL, diedOutput)
    XCTAssertTrue(diedOutput.contains("failpoint restore-after-batch fired"), diedOutput)
    let partial = try contents(of: "DataRegion-6", port: nodes[leaderIndex].port)
    XCTAssertGreaterThan(partial.count, 0, "two batches were applied")
    XCTAssertLessThan(partial.count, source.count, "the rest were not")
    for (key, value) in partial { XCTAssertEqual(source[key], value, key) }

    let (refusedStatus, refusedOutput) = try caucus(restore)
    XCTAssertEqual(refusedStatus, 1, refusedOutput)
    XCTAssertTrue(refusedOutput.contains("group_in_use"), refusedOutput)
    XCTAssertEqual(try contents(of: "DataRegion-6", port: nodes[leaderIndex].port), partial, "the refused rerun wrote nothing")

    let (resumedStatus, resumedOutput) = try caucus(restore + ["--resume", "--output", "json"])
    XCTAssertEqual(resumedStatus, 0, resumedOutput)
    let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(resumedOutput.utf8)) as? [String: Any], resumedOutput)
    XCTAssertEqual(summary["replayed"] as? Int, 2, "the batches the first run applied are not applied again")
    XCTAssertEqual(summary["keys"] as? Int, source.count)
    XCTAssertEqual(try contents(of: "DataRegion-6", port: nodes[leaderIndex].port), source)
  }

  func testACorruptBackupFileIsRefusedAndCreatesNothing() throws {
    let leaderIndex = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    try writeKeys(through: nodes[leaderIndex].port)
    let file = temporaryFile("corrupt")
    let (backupStatus, backupOutput) = try caucus(["backup", "--endpoints", endpoints, "--group", "DataRegion-0", "--file", file])
    XCTAssertEqual(backupStatus, 0, backupOutput)
    var bytes = Array(try XCTUnwrap(FileManager.default.contents(atPath: file)))
    bytes[bytes.count / 2] ^= 0x01
    XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(bytes)))

    let (status, output) = try caucus(["restore", "--endpoints", endpoints, "--group", "DataRegion-8", "--peers", "1,2,3", "--file", file])
    XCTAssertEqual(status, 65, output)
    XCTAssertTrue(output.contains("bad_backup") && output.contains("corrupt") && output.contains("nothing was restored"), output)
    for node in nodes {
      let reply = try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-8?forward=none")
      XCTAssertEqual(reply.status, 404, "node \(node.port) has no DataRegion-8: \(reply.text)")
    }
    // A file that is not a backup at all.
    let (notStatus, notOutput) = try caucus(["restore", "--endpoints", endpoints, "--group", "DataRegion-8", "--file", nodes[0].logPath])
    XCTAssertEqual(notStatus, 65, notOutput)
    XCTAssertTrue(notOutput.contains("not a Caucus backup"), notOutput)
  }
}
