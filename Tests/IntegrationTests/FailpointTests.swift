import Foundation
import Glibc
import Platform
import XCTest

/// Failpoints armed through `CAUCUS_FAILPOINTS` on real `caucus serve` processes (issue 10): the
/// node dies by SIGKILL exactly at the named point, or its WAL fsync fails with EIO; the cluster
/// serves on, and after a restart without the failpoint every acknowledged write is readable
/// through every node. Hits are chosen past what a start-up passes, so each point fires while
/// the test writes; a point that did nothing leaves the node running and fails the test.
final class FailpointProcessTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func tearDown() { removeNodes(nodes, directories) }

  // MARK: Refusing bad values

  func testABadValueRefusesToStartWithStatus2NamingTheVariableAndTheItem() throws {
    let binary = try Paths.binary("caucus")
    let refused: [(value: String, item: String)] = [
      ("no-such-point:crash:1", "no-such-point:crash:1"),
      ("snapshot-save:eio:1", "snapshot-save:eio:1"),
      ("wal-fsync:eio:0", "wal-fsync:eio:0"),
      ("wal-fsync:crash", "wal-fsync:crash"),
      ("wal-fsync:explode:3", "wal-fsync:explode:3"),
      ("wal-fsync:eio:1,wal-fsync:crash:2", "wal-fsync:crash:2"),
      ("wal-fsync:eio:1,", ""),
    ]
    for (value, item) in refused {
      let directory = temporaryDirectory("failpoint-refused")
      defer { try? FileManager.default.removeItem(atPath: directory) }
      let (status, output) = try runCommand(
        binary,
        ["serve", "--rpc-port", String(freePort()), "--consensus-port", String(freePort()), "--data-dir", directory + "/data"],
        environment: ["CAUCUS_FAILPOINTS": value])
      XCTAssertEqual(status, 2, "'\(value)': \(output)")
      XCTAssertTrue(output.contains("CAUCUS_FAILPOINTS: '\(item)'"), "'\(value)': \(output)")
      XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/data"), "'\(value)': refused before touching the data")
    }
  }

  // MARK: Crash points in a three-node cluster

  /// A follower dies after its fsync, before its acknowledgements leave.
  func testAFollowerKilledAfterItsFsyncBeforeItsAcknowledgementsLosesNoAcknowledgedWrite() throws {
    try crashOneNode(at: "raft-after-fsync-before-send", hit: 30, leading: false)
  }

  /// The leader dies with a turn's entries appended (and sent to the followers) but not fsynced.
  func testALeaderKilledAfterAppendingBeforeItsFsyncLosesNoAcknowledgedWrite() throws {
    try crashOneNode(at: "wal-after-append-before-fsync", hit: 40, leading: true)
  }

  /// The leader dies with writes applied and their clients not answered.
  func testALeaderKilledAfterApplyingBeforeAnsweringLosesNoAcknowledgedWrite() throws {
    try crashOneNode(at: "apply-after-apply-before-answer", hit: 20, leading: true)
  }

  /// A node dies halfway through writing a snapshot it was asked for; restarted, it drops the
  /// half-written file and snapshots again.
  func testANodeKilledWhileSavingASnapshotRestartsWithEveryAcknowledgedWrite() throws {
    try startCluster(label: "failpoint-save")
    let armed = 1
    try restart(armed, arming: "snapshot-save:crash:1")
    var acknowledged = Acknowledged()
    write(through: nodes[0], prefix: "saved", writesMax: 30, into: &acknowledged)
    XCTAssertEqual(acknowledged.values.count, 30)
    waitUntilApplied(acknowledged, on: [armed])
    let answer = try? HTTPClient(port: nodes[armed].port).request("POST", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertNotEqual(answer?.status, 200, "the node died before answering: \(answer?.text ?? "no answer")")
    assertKilled(armed, at: "snapshot-save")
    let files = try FileManager.default.contentsOfDirectory(atPath: directories[armed] + "/wal")
    XCTAssertTrue(files.contains { $0.hasPrefix("snapshot-") && $0.hasSuffix(".snap.tmp") }, "half written: \(files)")
    XCTAssertFalse(files.contains { $0.hasPrefix("snapshot-") && $0.hasSuffix(".snap") }, "never completed: \(files)")

    keepServing(through: [0, 2], prefix: "without", into: &acknowledged)
    try restartWithoutFailpoints(armed)
    assertEveryNodeServes(acknowledged)
    let again = try HTTPClient(port: nodes[armed].port).request("POST", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(again.status, 200, again.text)
    let after = try FileManager.default.contentsOfDirectory(atPath: directories[armed] + "/wal")
    XCTAssertFalse(after.contains { $0.hasSuffix(".snap.tmp") }, "recovery removed the half-written file: \(after)")
  }

  /// A follower that must be sent a snapshot dies after writing it, before the log records the
  /// install; restarted, it finishes the install from the file.
  func testAFollowerKilledWhileInstallingASnapshotFinishesTheInstallOnRestart() throws {
    try startCluster(label: "failpoint-install")
    let armed = 2
    XCTAssertEqual(nodes[armed].stop(), 0)
    var acknowledged = Acknowledged()
    keepServing(through: [0, 1], prefix: "missed", into: &acknowledged)
    // Both nodes holding the entries compact them away: whichever leads must send a snapshot.
    for index in [0, 1] {
      waitUntilApplied(acknowledged, on: [index])
      let snapshot = try HTTPClient(port: nodes[index].port).request("POST", "/v1/groups/DataRegion-0/snapshot")
      XCTAssertEqual(snapshot.status, 200, snapshot.text)
      XCTAssertGreaterThanOrEqual(snapshot.json["index"] as? Int ?? 0, acknowledged.indexMax)
    }
    nodes[armed].environment = ["CAUCUS_FAILPOINTS": "snapshot-install:crash:1"]
    // Not `start`: the snapshot may arrive, and the node die, before it answers /healthz.
    try nodes[armed].launch()
    assertKilled(armed, at: "snapshot-install")
    let files = try FileManager.default.contentsOfDirectory(atPath: directories[armed] + "/wal")
    XCTAssertTrue(files.contains { $0.hasPrefix("snapshot-") && $0.hasSuffix(".snap") }, "the file is complete: \(files)")

    keepServing(through: [0, 1], prefix: "meanwhile", into: &acknowledged)
    try restartWithoutFailpoints(armed)
    XCTAssertTrue(
      nodes[armed].log().contains("wrote the markers of snapshot installs a crash interrupted"),
      "recovery finished the install:\n\(nodes[armed].log().suffix(3000))")
    assertEveryNodeServes(acknowledged)
  }

  // MARK: Crash points of a standalone node

  func testAStandaloneNodeKilledAfterAppendingBeforeItsFsyncRestartsWithEveryAcknowledgedWrite() throws {
    try crashStandaloneNode(at: "wal-after-append-before-fsync")
  }

  func testAStandaloneNodeKilledAfterApplyingBeforeAnsweringRestartsWithEveryAcknowledgedWrite() throws {
    try crashStandaloneNode(at: "apply-after-apply-before-answer")
  }

  func testAStandaloneNodeKilledWhileSavingASnapshotRestartsWithEveryAcknowledgedWrite() throws {
    try crashStandaloneNode(at: "snapshot-save")
  }

  // MARK: EIO from the WAL's fsync

  /// Standalone: one fsync per write, so the failing fsync is the write in flight's.
  func testAStandaloneNodeWhoseWALFsyncFailsAcknowledgesNothingMoreAndRecoversOnRestart() throws {
    let directory = temporaryDirectory("failpoint-eio-standalone")
    directories.append(directory)
    nodes.append(NodeProcess(dataDirectory: directory))
    // The first start's group creation is fsync 1; writes 1 to 4 are fsyncs 2 to 5.
    let failure = try failWALFsync(hit: 6)
    XCTAssertEqual(failure.reply.status, 504, failure.reply.text)
    XCTAssertEqual(failure.reply.json["error"] as? String, "timeout")
    XCTAssertEqual(
      failure.reply.json["indeterminate"] as? Bool, true, "its records may be on disk: the outcome is unknown, not refused")
    XCTAssertEqual(failure.acknowledged.values.count, 4)
  }

  /// Raft (a one-node cluster): the engine stops at the failed fsync and refuses all work.
  func testARaftNodeWhoseWALFsyncFailsAcknowledgesNothingMoreAndRecoversOnRestart() throws {
    (nodes, directories) = clusterNodes(1, label: "failpoint-eio-raft")
    let failure = try failWALFsync(hit: 40)
    // The failing fsync carried a write (answered: outcome unknown) or only commit indexes (the
    // next write is refused).
    let code = failure.reply.json["error"] as? String
    XCTAssertTrue(code == "timeout" || code == "not_ready", failure.reply.text)
    if code == "timeout" { XCTAssertEqual(failure.reply.json["indeterminate"] as? Bool, true, failure.reply.text) }
  }

  // MARK: Helpers

  /// Writes acknowledged with 200: key → value, and the highest index among them.
  private struct Acknowledged {
    var values: [String: String] = [:]
    var indexMax = 0

    mutating func record(_ reply: HTTPReply?, key: String, value: String) -> Bool {
      guard let reply, reply.status == 200 else { return false }
      values[key] = value
      indexMax = max(indexMax, reply.json["index"] as? Int ?? 0)
      return true
    }
  }

  private func startCluster(label: String) throws {
    (nodes, directories) = clusterNodes(3, label: label)
    for node in nodes { try node.start() }
    _ = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
  }

  /// Stops `index` cleanly and starts it again with `failpoint` armed.
  private func restart(_ index: Int, arming failpoint: String) throws {
    XCTAssertEqual(nodes[index].stop(), 0)
    nodes[index].environment = ["CAUCUS_FAILPOINTS": failpoint]
    try nodes[index].start()
    XCTAssertTrue(nodes[index].log().contains("FAILPOINTS ARMED"), "the node says so at start")
  }

  private func restartWithoutFailpoints(_ index: Int) throws {
    nodes[index].environment = [:]
    try nodes[index].start()
  }

  /// Arms `failpoint:crash:hit` on one node (the leader-to-be, or a follower), writes until the
  /// node dies at the point, writes on through the others, restarts it without the failpoint,
  /// and reads every acknowledged write through every node.
  private func crashOneNode(at failpoint: String, hit: Int, leading: Bool) throws {
    try startCluster(label: "failpoint-\(failpoint)")
    let leader = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    let armed = leading ? 0 : (leader + 1) % 3
    try restart(armed, arming: "\(failpoint):crash:\(hit)")
    if leading {
      waitUntil("node \(armed + 1) to take the leadership") {
        let moved = try? HTTPClient(port: nodes[armed].port).request(
          "POST", "/v1/groups/DataRegion-0/leader", text: #"{"id":\#(armed + 1)}"#)
        return moved?.status == 200 || !nodes[armed].isRunning
      }
    }
    // Through the armed leader itself, or through the leader the armed follower acknowledges.
    let writer = try leading ? armed : XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2]))
    var acknowledged = Acknowledged()
    write(through: nodes[writer], prefix: "before", writesMax: 400, into: &acknowledged) { !nodes[armed].isRunning }
    assertKilled(armed, at: failpoint)

    let survivors = [0, 1, 2].filter { $0 != armed }
    keepServing(through: survivors, prefix: "without", into: &acknowledged)
    try restartWithoutFailpoints(armed)
    keepServing(through: [armed], prefix: "after", into: &acknowledged)
    assertEveryNodeServes(acknowledged)
  }

  /// A standalone node passes the write points once per write batch (one write at a time here:
  /// once per write) and `snapshot-save` once per snapshot asked for.
  private func crashStandaloneNode(at failpoint: String) throws {
    let directory = temporaryDirectory("failpoint-standalone")
    directories.append(directory)
    let node = NodeProcess(dataDirectory: directory)
    nodes.append(node)
    let snapshotting = failpoint == "snapshot-save"
    let hit = snapshotting ? 1 : 5
    node.environment = ["CAUCUS_FAILPOINTS": "\(failpoint):crash:\(hit)"]
    try node.start()
    var acknowledged = Acknowledged()
    write(through: node, prefix: "standalone", writesMax: 20, into: &acknowledged) { !node.isRunning }
    if snapshotting {
      XCTAssertEqual(acknowledged.values.count, 20)
      let answer = try? HTTPClient(port: node.port).request("POST", "/v1/groups/DataRegion-0/snapshot")
      XCTAssertNotEqual(answer?.status, 200, "the node died before answering: \(answer?.text ?? "no answer")")
    } else {
      XCTAssertEqual(acknowledged.values.count, hit - 1, "the write of batch \(hit) is where it died")
    }
    assertKilled(0, at: failpoint)
    try restartWithoutFailpoints(0)
    assertEveryNodeServes(acknowledged)
    XCTAssertEqual(try HTTPClient(port: node.port).request("POST", "/v1/groups/DataRegion-0/snapshot").status, 200)
  }

  /// Writes `<prefix>/<n>` through `node`, one at a time, until `stop` says so or `writesMax`
  /// were made. A write whose node dies under it is not acknowledged.
  private func write(
    through node: NodeProcess, prefix: String, writesMax: Int, into acknowledged: inout Acknowledged,
    until stop: () -> Bool = { false }
  ) {
    for sequence in 0..<writesMax {
      if stop() { return }
      let key = "\(prefix)/\(sequence)"
      let value = "\(prefix)-value-\(sequence)"
      let reply = try? HTTPClient(port: node.port).request("PUT", "/v1/groups/DataRegion-0/kv/\(key)", text: value)
      _ = acknowledged.record(reply, key: key, value: value)
    }
  }

  /// Ten writes through the `through` nodes in turn, each retried until acknowledged (an
  /// election may be running).
  private func keepServing(through: [Int], prefix: String, into acknowledged: inout Acknowledged) {
    let writes = 10
    for sequence in 0..<writes {
      let node = nodes[through[sequence % through.count]]
      let key = "\(prefix)/\(sequence)"
      let value = "\(prefix)-value-\(sequence)"
      var written = false
      waitUntil("write \(key) through the node on port \(node.port)") {
        let reply = try? HTTPClient(port: node.port).request("PUT", "/v1/groups/DataRegion-0/kv/\(key)", text: value)
        written = acknowledged.record(reply, key: key, value: value)
        return written
      }
      if !written { return }
    }
  }

  /// Waits until each of `indexes` has applied every acknowledged write to its own replica.
  private func waitUntilApplied(_ acknowledged: Acknowledged, on indexes: [Int]) {
    guard let key = acknowledged.values.keys.min() else { return }
    for index in indexes {
      waitUntil("node \(index + 1) to apply index \(acknowledged.indexMax)") {
        let reply = try? HTTPClient(port: nodes[index].port).request(
          "GET", "/v1/groups/DataRegion-0/kv/\(key)?consistency=stale&minIndex=\(acknowledged.indexMax)")
        return reply?.status == 200
      }
    }
  }

  /// Every acknowledged write, from each node's own replica and through each node to the leader.
  private func assertEveryNodeServes(_ acknowledged: Acknowledged, file: StaticString = #filePath, line: UInt = #line) {
    waitUntilApplied(acknowledged, on: Array(nodes.indices))
    for (index, node) in nodes.enumerated() {
      var wrong: [String] = []
      for (key, value) in acknowledged.values.sorted(by: { $0.key < $1.key }) {
        for query in ["consistency=stale&minIndex=\(acknowledged.indexMax)&raw=true", "raw=true"] {
          let reply = try? HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-0/kv/\(key)?\(query)")
          if reply?.status != 200 || reply?.text != value {
            wrong.append("\(key)?\(query): \(reply?.status ?? 0) \(reply?.text ?? "no answer")")
          }
        }
      }
      XCTAssertEqual(wrong, [], "acknowledged writes missing through node \(index + 1)", file: file, line: line)
    }
  }

  /// The node ended by SIGKILL, after saying which failpoint fired.
  private func assertKilled(_ index: Int, at failpoint: String, file: StaticString = #filePath, line: UInt = #line) {
    guard let process = nodes[index].waitForExit(file: file, line: line) else { return }
    XCTAssertEqual(process.terminationReason, .uncaughtSignal, "node \(index + 1) was killed", file: file, line: line)
    XCTAssertEqual(process.terminationStatus, SIGKILL, "by SIGKILL", file: file, line: line)
    XCTAssertTrue(
      nodes[index].log().contains("failpoint \(failpoint) fired"), "\(nodes[index].log().suffix(3000))", file: file,
      line: line)
  }

  /// Starts `nodes[0]` with `wal-fsync:eio:hit`, writes until a write is not acknowledged, and
  /// checks that from then on nothing is: writes are refused `503 not_ready` naming the storage
  /// failure, /readyz says not ready, the node stays up saying why. Then restarts it without the
  /// failpoint and reads every acknowledged write. Returns the first unacknowledged reply.
  private func failWALFsync(hit: Int) throws -> (reply: HTTPReply, acknowledged: Acknowledged) {
    let node = nodes[0]
    node.environment = ["CAUCUS_FAILPOINTS": "wal-fsync:eio:\(hit)"]
    try node.start()
    XCTAssertTrue(node.log().contains("FAILPOINTS ARMED"), node.log())
    var acknowledged = Acknowledged()
    var failure: HTTPReply?
    let writesMax = 200
    waitUntil("the node to take writes") {
      (try? HTTPClient(port: node.port).request("GET", "/readyz").status) == 200
    }
    for sequence in 0..<writesMax {
      let key = "durable/\(sequence)"
      let reply = try HTTPClient(port: node.port).request("PUT", "/v1/groups/DataRegion-0/kv/\(key)", text: "v\(sequence)")
      if !acknowledged.record(reply, key: key, value: "v\(sequence)") {
        failure = reply
        break
      }
    }
    let first = try XCTUnwrap(failure, "fsync \(hit) failed within \(writesMax) writes:\n\(node.log().suffix(3000))")
    XCTAssertNotNil(first.json["error"] as? String, "a JSON error: \(first.text)")
    XCTAssertTrue(node.log().contains("failpoint wal-fsync fired"), node.log())

    for sequence in 0..<3 {
      let later = try HTTPClient(port: node.port).request("PUT", "/v1/groups/DataRegion-0/kv/later/\(sequence)", text: "no")
      XCTAssertEqual(later.status, 503, later.text)
      XCTAssertEqual(later.json["error"] as? String, "not_ready", later.text)
      let message = later.json["message"] as? String ?? ""
      XCTAssertTrue(message.contains("storage failure") && message.contains("Input/output error"), later.text)
    }
    XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/readyz").status, 503)
    XCTAssertTrue(node.isRunning, "the node stays up, refusing work, until it is restarted")
    XCTAssertTrue(node.log().contains("storage failure; refusing"), "and it says why: \(node.log().suffix(3000))")

    _ = node.stop()
    node.environment = [:]
    try node.start()
    waitUntil("the restarted node to take writes") {
      (try? HTTPClient(port: node.port).request("GET", "/readyz").status) == 200
    }
    XCTAssertEqual(try HTTPClient(port: node.port).request("PUT", "/v1/groups/DataRegion-0/kv/again", text: "yes").status, 200)
    assertEveryNodeServes(acknowledged)
    return (first, acknowledged)
  }
}
