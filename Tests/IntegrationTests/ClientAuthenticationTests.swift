import Foundation
import Glibc
import Platform
import XCTest

/// A tokens file in the format `--auth-tokens-file` reads: `(name, role, token, extra fields)`.
func writeTokensFile(_ path: String, _ tokens: [(name: String, role: String, token: String, extra: String)]) throws {
  let entries = tokens.map { token in
    #"{"name":"\#(token.name)","role":"\#(token.role)","sha256":"\#(SHA256.hex(Array(token.token.utf8)))""#
      + (token.extra.isEmpty ? "" : "," + token.extra) + "}"
  }
  try Data(#"{"tokens":[\#(entries.joined(separator: ",\n"))]}"#.utf8).write(to: URL(fileURLWithPath: path))
}

func bearer(_ token: String) -> [String: String] { ["Authorization": "Bearer \(token)"] }

/// Client authentication on a real process: the start refuses a tokens file it cannot use,
/// SIGHUP swaps the tokens (and keeps them when the new file is bad), and without a file the
/// node says, once, that everything is open.
final class ClientAuthenticationTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var paths: [String] = []

  override func tearDown() { removeNodes(nodes, paths) }

  private func node(_ label: String) -> NodeProcess {
    let directory = temporaryDirectory(label)
    paths.append(directory)
    let node = NodeProcess(dataDirectory: directory)
    nodes.append(node)
    return node
  }

  private func tokensPath() -> String {
    let path = temporaryDirectory("tokens") + ".json"
    paths.append(path)
    return path
  }

  func testATokensFileThatCannotBeUsedStopsTheStartWithStatus2() throws {
    let path = tokensPath()
    try Data(#"{"tokens":[{"name":"ops","role":"root","sha256":"00"}]}"#.utf8).write(to: URL(fileURLWithPath: path))
    for (what, file) in [("a bad file", path), ("a missing file", path + ".missing")] {
      let starting = node("auth-bad")
      try starting.launch(["--auth-tokens-file", file])
      let ended = starting.waitForExit()
      XCTAssertEqual(ended?.terminationStatus, 2, "\(what): \(starting.log())")
      XCTAssertTrue(starting.log().contains("refusing to start"), starting.log())
      XCTAssertTrue(starting.log().contains(file), "the message names the file: \(starting.log())")
    }
  }

  func testTokensInAClusterNeedTheClusterSecret() throws {
    let path = tokensPath()
    try writeTokensFile(path, [("ops", "admin", "ops-token", "")])
    let member = node("auth-no-secret")
    try member.launch(["--cluster", "1=127.0.0.1:\(member.consensusPort)", "--auth-tokens-file", path])
    let ended = member.waitForExit()
    XCTAssertNotEqual(ended?.terminationStatus, 0)
    XCTAssertTrue(member.log().contains("--cluster-secret-file"), member.log())
  }

  func testWithoutATokensFileEverythingIsOpenAndTheStartSaysSoOnce() throws {
    let open = node("auth-off")
    try open.start()
    let client = try HTTPClient(port: open.port)
    XCTAssertEqual(try client.request("PUT", "/v1/groups/DataRegion-0/kv/k", text: "v").status, 200)
    XCTAssertEqual(try client.request("POST", "/v1/groups", text: #"{"id":"DataRegion-2"}"#).status, 201)
    XCTAssertEqual(open.log().components(separatedBy: "CLIENT AUTHENTICATION IS OFF").count - 1, 1, open.log())
  }

  func testSIGHUPReloadsTheTokensAndABadFileKeepsThem() throws {
    let path = tokensPath()
    try writeTokensFile(path, [("ops", "admin", "first-token", "")])
    let guarded = node("auth-reload")
    guarded.extraArguments = ["--auth-tokens-file", path]
    try guarded.start()
    let client = try HTTPClient(port: guarded.port)
    let put = { (token: String) in try client.request("PUT", "/v1/groups/DataRegion-0/kv/k", headers: bearer(token), body: Array("v".utf8)) }
    XCTAssertEqual(try client.request("PUT", "/v1/groups/DataRegion-0/kv/k", text: "v").status, 401)
    XCTAssertEqual(try put("first-token").status, 200)
    XCTAssertEqual(try put("second-token").status, 401)

    try writeTokensFile(path, [("ops", "admin", "second-token", "")])
    guarded.signal(SIGHUP)
    waitUntil("the node to take the new token") { (try? put("second-token").status) == 200 }
    XCTAssertEqual(try put("first-token").status, 401, "a token gone from the file is refused after SIGHUP")

    try Data("{not json".utf8).write(to: URL(fileURLWithPath: path))
    guarded.signal(SIGHUP)
    waitUntil("the node to log that it keeps its tokens") { guarded.log().contains("keeping the tokens loaded before") }
    XCTAssertEqual(try put("second-token").status, 200, "a bad file on reload changes nothing")
    XCTAssertTrue(guarded.isRunning)
    XCTAssertEqual(guarded.stop(), 0)
  }
}
