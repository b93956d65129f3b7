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

/// The caller's identity through forwarding, on a real cluster sharing the secret: node 3 does
/// not host `DataRegion-5` and relays requests for it to the group's leader, naming the token it
/// admitted; the leader applies its own entry of that name. Node 3's tokens file differs from
/// the others' on purpose: `app` has another hash there (the same identity), `demoted` a higher
/// role, and `only-here` exists nowhere else.
final class ForwardedIdentityTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var paths: [String] = []
  private let secret = "4f1c0e2a9b7d6c5e3a1f0e9d8c7b6a5f"

  override func tearDown() { removeNodes(nodes, paths) }

  private func file(_ label: String) -> String {
    let directory = temporaryDirectory(label)
    paths.append(directory)
    return directory + "/file"
  }

  func testARelayedRequestKeepsItsCallersIdentityAndTheServingNodeDecides() throws {
    let common: [(name: String, role: String, token: String, extra: String)] = [
      ("ops", "admin", "admin-token", ""), ("writer", "write", "writer-token", ""), ("reader", "read", "reader-token", ""),
    ]
    let everywhere = file("tokens-a")
    try writeTokensFile(everywhere, common + [("app", "write", "app-token-a", ""), ("demoted", "read", "demoted-token", "")])
    let onNode3 = file("tokens-b")
    try writeTokensFile(
      onNode3,
      common + [("app", "write", "app-token-b", ""), ("demoted", "write", "demoted-token", ""), ("only-here", "write", "only-here-token", "")])
    let secretPath = file("secret")
    try Data((secret + "\n").utf8).write(to: URL(fileURLWithPath: secretPath))
    let directories: [String]
    (nodes, directories) = clusterNodes(3, label: "identity")
    paths += directories
    for (index, node) in nodes.enumerated() {
      node.extraArguments += ["--cluster-secret-file", secretPath, "--auth-tokens-file", index == 2 ? onNode3 : everywhere]
      try node.start()
    }
    let first = try HTTPClient(port: nodes[0].port)
    var created: HTTPReply?
    waitUntil("DataRegion-5 created on nodes 1 and 2") {
      created = try? first.request(
        "POST", "/v1/groups", headers: bearer("admin-token"), body: Array(#"{"id":"DataRegion-5","peers":[1,2]}"#.utf8))
      return created?.status == 201
    }
    let third = try HTTPClient(port: nodes[2].port)
    func put(_ key: String, _ token: String?, _ query: String = "") throws -> HTTPReply {
      try third.request(
        "PUT", "/v1/groups/DataRegion-5/kv/\(key)\(query)", headers: token.map(bearer) ?? [:], body: Array("v".utf8))
    }
    var written: HTTPReply?
    waitUntil("a write token's PUT relayed by node 3") {
      written = try? put("by-writer", "writer-token")
      return written?.status == 200
    }
    XCTAssertEqual(written?.headers["x-caucus-forwarded-by"], "3", "node 3 relayed it")

    let app = try put("by-app", "app-token-b")
    XCTAssertEqual(app.status, 200, "the leader knows 'app' by name, though by another hash: \(app.text)")
    let demoted = try put("by-demoted", "demoted-token")
    XCTAssertEqual(demoted.status, 403, "node 3 let it through, the leader's file says read: \(demoted.text)")
    XCTAssertEqual(demoted.headers["x-caucus-forwarded-by"], "3", "refused by the leader, not by node 3")
    XCTAssertNotEqual(demoted.headers["x-caucus-node"], "3")
    let stranger = try put("by-stranger", "only-here-token")
    XCTAssertEqual(stranger.status, 401, stranger.text)
    XCTAssertEqual(stranger.headers["x-caucus-forwarded-by"], "3")
    let reader = try put("by-reader", "reader-token")
    XCTAssertEqual(reader.status, 403, reader.text)
    XCTAssertNil(reader.headers["x-caucus-forwarded-by"], "refused at node 3, never forwarded")
    XCTAssertEqual(try put("by-nobody", nil).status, 401)
    for key in ["by-demoted", "by-stranger", "by-reader", "by-nobody"] {
      let read = try first.request("GET", "/v1/groups/DataRegion-5/kv/\(key)", headers: bearer("reader-token"))
      XCTAssertEqual(read.status, 404, "\(key) was not written: \(read.text)")
    }
    XCTAssertEqual(try first.request("GET", "/v1/groups/DataRegion-5/kv/by-app", headers: bearer("reader-token")).status, 200)

    // A redirect: the client sends its token again, to the leader.
    let redirected = try put("by-redirect", "writer-token", "?forward=redirect")
    XCTAssertEqual(redirected.status, 307, redirected.text)
    let location = try XCTUnwrap(redirected.headers["location"])
    let leaderPort = try XCTUnwrap(UInt16(location.split(separator: ":")[2].prefix { $0.isNumber }))
    let target = String(location.drop { $0 != "/" }.dropFirst(2).drop { $0 != "/" })
    let leader = try HTTPClient(port: leaderPort)
    XCTAssertEqual(try leader.request("PUT", target, body: Array("v".utf8)).status, 401, "without the token again")
    XCTAssertEqual(try leader.request("PUT", target, headers: bearer("writer-token"), body: Array("v".utf8)).status, 200)

    // The identity and forwarding headers from a client (no cluster secret) mean nothing.
    let forged = try leader.request(
      "POST", "/v1/groups/DataRegion-5/snapshot",
      headers: bearer("reader-token").merging(["X-Caucus-Identity": "ops", "X-Caucus-Forwarded-By": "3"]) { $1 })
    XCTAssertEqual(forged.status, 403, forged.text)
  }
}
