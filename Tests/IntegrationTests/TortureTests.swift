import Foundation
import Glibc
import XCTest

/// `caucus torture` on real processes: a bounded run under kills and pauses stays linearizable,
/// and the planted bug only the torture command can switch on (linearizable reads served
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

  func testABoundedTortureUnderKillsAndPausesIsLinearizable() throws {
    let outcome = try torture(["--duration", "20", "--seed", "11"])
    XCTAssertEqual(outcome.status, 0, outcome.output)
    XCTAssertTrue(outcome.lastLine.hasPrefix("torture: linearizable=yes "), outcome.lastLine)
    XCTAssertGreaterThan(field("ops", outcome.lastLine) ?? 0, 500, "the clients did work")
    XCTAssertGreaterThanOrEqual(field("faults", outcome.lastLine) ?? 0, 2, "the nemesis struck")
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
