import Foundation
import Glibc
import XCTest

/// `caucus torture` on real processes: bounded runs under kills, pauses, partitions, packet loss
/// and slow links stay linearizable, and the planted bug only the torture command can switch on (linearizable reads served
/// locally) is caught end to end. Longer runs are documented in the README.
final class TortureTests: XCTestCase {
  private struct Outcome {
    var directory: String
    var status: Int32
    var lastLine: String
    var output: String
  }

  /// Runs `caucus torture` with `arguments` on free ports and a fresh directory.
  private func torture(_ arguments: [String]) throws -> Outcome {
    let directory = temporaryDirectory("torture")
    addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
    // Six consecutive free ports: three client ports, then three consensus ports.
    let base = try XCTUnwrap(freePortRange(count: 6), "six consecutive free ports")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try Paths.binary("caucus"))
    process.arguments =
      ["torture", "--nodes", "3", "--rpc-port", String(base), "--consensus-port", String(base + 3),
       "--data-dir", directory + "/run"] + arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    let lastLine = printed.split(separator: "\n").last.map(String.init) ?? ""
    return Outcome(directory: directory, status: process.terminationStatus, lastLine: lastLine, output: printed)
  }

  /// Numbers of the summary line, `torture: linearizable=… ops=N faults=N indeterminate=N`.
  private func field(_ name: String, _ line: String) -> Int? {
    line.split(separator: " ").first { $0.hasPrefix(name + "=") }.flatMap { Int($0.dropFirst(name.count + 1)) }
  }

  /// Faults by kind from the summary line `torture: faults kill=N loss=N …; unexpected answers N`.
  private func faultCounts(_ output: String) -> [String: Int] {
    guard let line = output.split(separator: "\n").last(where: { $0.contains("torture: faults ") }),
      let list = line.split(separator: "torture: faults ").last?.split(separator: ";").first
    else { return [:] }
    var counts: [String: Int] = [:]
    for item in list.split(separator: " ") {
      let parts = item.split(separator: "=")
      if parts.count == 2, let count = Int(parts[1]) { counts[String(parts[0])] = count }
    }
    return counts
  }

  /// The bounded run CI keeps: kills, pauses and real network partitions (network namespaces,
  /// which need root: CI runs as root), with membership changes and leader transfers meanwhile.
  func testABoundedTortureUnderKillsPausesAndPartitionsIsLinearizable() throws {
    guard geteuid() == 0 || ProcessInfo.processInfo.environment["CI"] != nil else {
      throw XCTSkip("network partitions need network namespaces, which need root (CI runs this as root)")
    }
    let outcome = try torture(["--duration", "75", "--seed", "11", "--faults", "kill,pause,partition"])
    XCTAssertEqual(outcome.status, 0, outcome.output)
    XCTAssertTrue(outcome.output.contains("one network namespace per node"), outcome.output)
    XCTAssertTrue(outcome.lastLine.hasPrefix("torture: linearizable=yes "), outcome.lastLine)
    XCTAssertGreaterThan(field("ops", outcome.lastLine) ?? 0, 1_000, "the clients did work")
    // The kinds take turns in rounds, so six faults mean at least two of each.
    let faults = faultCounts(outcome.output)
    for kind in ["kill", "pause", "partition"] {
      XCTAssertGreaterThanOrEqual(faults[kind] ?? 0, 2, "\(kind) faults: \(faults)")
    }
    XCTAssertTrue(outcome.output.contains("churn: remove-peer"), "a member was removed during the run")
  }

  /// Packet loss, slow links and full disks (each node on its own small tmpfs).
  func testATortureUnderLossSlowLinksAndFullDisksIsLinearizable() throws {
    guard geteuid() == 0 || ProcessInfo.processInfo.environment["CI"] != nil else {
      throw XCTSkip("packet loss, slow links and size-limited disks need root (CI runs this as root)")
    }
    let outcome = try torture(["--duration", "30", "--seed", "13", "--faults", "loss,slow,disk-full", "--disk-mb", "64"])
    XCTAssertEqual(outcome.status, 0, outcome.output)
    XCTAssertTrue(outcome.lastLine.hasPrefix("torture: linearizable=yes "), outcome.lastLine)
    let faults = faultCounts(outcome.output)
    XCTAssertGreaterThanOrEqual(faults["loss"] ?? 0, 1, "loss faults: \(faults)")
    XCTAssertGreaterThanOrEqual(faults["slow"] ?? 0, 1, "slow faults: \(faults)")
    XCTAssertGreaterThanOrEqual(faults["disk-full"] ?? 0, 1, "disk-full faults: \(faults)")
    XCTAssertTrue(outcome.output.contains("'s disk full ("), outcome.output)
  }

  /// Restarts with a crash failpoint armed (the node dies there) and with a failing fsync (the
  /// node must stop taking writes): histories stay linearizable, and the points are reached.
  func testATortureUnderCrashPointsAndFsyncErrorsIsLinearizable() throws {
    let outcome = try torture(["--duration", "30", "--seed", "31", "--no-namespaces", "--faults", "crash-point,fsync-error"])
    XCTAssertEqual(outcome.status, 0, outcome.output)
    XCTAssertTrue(outcome.lastLine.hasPrefix("torture: linearizable=yes "), outcome.lastLine)
    let faults = faultCounts(outcome.output)
    XCTAssertGreaterThanOrEqual(faults["crash-point"] ?? 0, 1, "crash-point faults: \(faults)")
    XCTAssertGreaterThanOrEqual(faults["fsync-error"] ?? 0, 1, "fsync-error faults: \(faults)")
    XCTAssertTrue(outcome.output.contains("died at "), "a node died at its failpoint: \(outcome.output)")
  }

  func testOnLoopbackATortureSaysItHasNoPartitionsAndRefusesToFakeThem() throws {
    let refused = try torture(["--duration", "5", "--no-namespaces", "--faults", "partition"])
    XCTAssertEqual(refused.status, 2, refused.output)
    XCTAssertTrue(refused.output.contains("cannot do the fault partition"), refused.output)
    let outcome = try torture(["--duration", "15", "--seed", "14", "--no-namespaces"])
    XCTAssertEqual(outcome.status, 0, outcome.output)
    XCTAssertTrue(outcome.output.contains("loopback (--no-namespaces was given): no partitions"), outcome.output)
    XCTAssertTrue(outcome.lastLine.hasPrefix("torture: linearizable=yes "), outcome.lastLine)
    // No fault of the network's (the disks' may still happen: they need root, not namespaces).
    XCTAssertTrue(Set(faultCounts(outcome.output).keys).isDisjoint(with: ["partition", "loss", "slow"]), outcome.output)
    XCTAssertFalse(faultCounts(outcome.output).isEmpty, "the nemesis struck: \(outcome.output)")
  }

  func testThePlantedLocalReadsBugIsCaught() throws {
    let outcome = try torture(["--duration", "20", "--seed", "12", "--plant-bug", "local-reads"])
    XCTAssertEqual(outcome.status, 1, outcome.output)
    XCTAssertTrue(outcome.lastLine.hasPrefix("torture: linearizable=no "), outcome.lastLine)
    XCTAssertTrue(outcome.output.contains("the failing history is in"), outcome.output)
    // The history it wrote checks again to the same verdict.
    let check = Process()
    check.executableURL = URL(fileURLWithPath: try Paths.binary("caucus"))
    check.arguments = ["torture", "--check", outcome.directory + "/run/history.txt"]
    let printed = Pipe()
    check.standardOutput = printed
    try check.run()
    let text = String(decoding: printed.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    check.waitUntilExit()
    XCTAssertEqual(check.terminationStatus, 1, text)
    XCTAssertTrue(text.contains("torture: linearizable=no"), text)
  }
}
