import Foundation
import Glibc
import Platform
import XCTest

/// The cluster secret on real processes: nodes that share it form a cluster and relay through
/// each other; a request without its proof (or with another secret's) is refused with 401 and
/// changes nothing; a node holding another secret can neither append, vote nor register.
final class PeerAuthenticationTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []
  private let secret = "4f1c0e2a9b7d6c5e3a1f0e9d8c7b6a5f"

  override func tearDown() { removeNodes(nodes, directories) }

  private func secretFile(_ content: String) throws -> String {
    let path = temporaryDirectory("secret") + ".secret"
    directories.append(path)
    try Data((content + "\n").utf8).write(to: URL(fileURLWithPath: path))
    return path
  }

  /// A header as a node holding `secret` would sign it (the format of `PeerAuthenticator`, v2: the
  /// empty line is the absent `X-Caucus-Identity`).
  private func peerHeader(secret: String, node: Int, method: String, target: String, body: [UInt8]) -> String {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    let now = UInt64(spec.tv_sec) * 1_000 + UInt64(spec.tv_nsec) / 1_000_000
    let message = Array("caucus-peer-v2\n\(method)\n\(target)\n\(node)\n\(now)\n\n".utf8) + body
    let code = HMACSHA256.authenticationCode(key: Array(secret.utf8), message: message)
    return "v2 node=\(node) ts=\(now) mac=\(Hex.encode(code))"
  }

  private func startCluster(secrets: [String]) throws {
    (nodes, directories) = clusterNodes(3, label: "peer-auth")
    for (node, secret) in zip(nodes, secrets) {
      node.extraArguments += ["--cluster-secret-file", try secretFile(secret)]
      try node.start()
    }
  }

  func testNodesSharingTheSecretWorkAndUnprovenRequestsAreRefused() throws {
    try startCluster(secrets: [secret, secret, secret])
    let created = try HTTPClient(port: nodes[0].port).request("POST", "/v1/groups", text: #"{"id":"DataRegion-5","peers":[1,2,3]}"#)
    XCTAssertEqual(created.status, 201, created.text)
    var written: HTTPReply?
    waitUntil("a write relayed by node 2 to DataRegion-5's leader") {
      written = try? HTTPClient(port: nodes[1].port).request("PUT", "/v1/groups/DataRegion-5/kv/k", text: "v")
      return written?.status == 200
    }
    waitUntil("node 3 to apply it") {
      (try? HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/DataRegion-5/kv/k?consistency=stale&raw=true"))?.text == "v"
    }

    let consensus = try HTTPClient(port: nodes[0].consensusPort)
    let body = Array(#"{"id":"DataRegion-6","peers":[{"id":1,"endpoint":"127.0.0.1:1"}]}"#.utf8)
    let wrong = peerHeader(secret: "another-secret-another-secret", node: 2, method: "POST", target: "/v1/node/groups", body: body)
    let stale = peerHeader(secret: secret, node: 2, method: "POST", target: "/v1/node/groups", body: body)
      .replacingOccurrences(of: " ts=", with: " ts=1")  // a timestamp far in the future
    for (what, headers) in [("no proof", [:]), ("another secret", ["X-Caucus-Peer": wrong]), ("a bad timestamp", ["X-Caucus-Peer": stale])] {
      for (method, target, requestBody) in [
        ("GET", "/v1/node", [UInt8]()), ("POST", "/v1/raft/batch", [UInt8](repeating: 0, count: 40)),
        ("POST", "/v1/node/groups", body),
      ] {
        let reply = try consensus.request(method, target, headers: headers, body: requestBody)
        XCTAssertEqual(reply.status, 401, "\(what): \(method) \(target): \(reply.text)")
        XCTAssertEqual(reply.json["error"] as? String, "unauthorized", "\(what): \(method) \(target)")
      }
    }
    let signed = peerHeader(secret: secret, node: 2, method: "GET", target: "/v1/node", body: [])
    XCTAssertEqual(try consensus.request("GET", "/v1/node", headers: ["X-Caucus-Peer": signed]).status, 200, "the proof opens it")
    XCTAssertEqual(
      try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-6?forward=none").status, 404,
      "nothing was created")
    let registration = Array(#"{"id":9,"clientURL":"http://127.0.0.1:1","consensusEndpoint":"127.0.0.1:2"}"#.utf8)
    let refused = try HTTPClient(port: nodes[0].port).request("POST", "/v1/cluster/nodes", body: registration)
    XCTAssertEqual(refused.status, 401, refused.text)
    let listed = try HTTPClient(port: nodes[0].port).request("GET", "/v1/cluster?groups=false")
    XCTAssertEqual((listed.json["nodes"] as? [[String: Any]])?.compactMap { $0["id"] as? Int }, [1, 2, 3], "node 9 was not registered")
    XCTAssertTrue(try String(contentsOfFile: nodes[0].logPath, encoding: .utf8).contains("peer authentication failed"))
  }

  func testANodeWithAnotherSecretCanNeitherAppendNorVote() throws {
    try startCluster(secrets: [secret, secret, "a-different-secret-for-node-3!"])
    var written: HTTPReply?
    waitUntil("a write to DataRegion-0 through node 1 (nodes 1 and 2 are a quorum)") {
      written = try? HTTPClient(port: nodes[0].port).request("PUT", "/v1/groups/DataRegion-0/kv/k", text: "v")
      return written?.status == 200
    }
    // Node 3 campaigns for ever (it hears no leader); its votes are refused, so the leader stays.
    let leaderBefore = try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-0?forward=none").json["leader"]
      as? [String: Any]
    waitUntil("node 3 to have campaigned a few times (its log says so) and been refused") {
      ((try? String(contentsOfFile: nodes[0].logPath, encoding: .utf8)) ?? "").contains("peer authentication failed")
        && ((try? String(contentsOfFile: nodes[2].logPath, encoding: .utf8)) ?? "").contains("peer authentication failed")
    }
    let leaderAfter = try HTTPClient(port: nodes[0].port).request("GET", "/v1/groups/DataRegion-0?forward=none").json["leader"]
      as? [String: Any]
    XCTAssertEqual(leaderAfter?["id"] as? Int, leaderBefore?["id"] as? Int, "node 3 did not depose the leader")
    XCTAssertNotEqual(leaderAfter?["id"] as? Int, 3)
    let onThree = try HTTPClient(port: nodes[2].port).request("GET", "/v1/groups/DataRegion-0/kv/k?consistency=stale")
    XCTAssertEqual(onThree.status, 404, "node 3 never received the write: \(onThree.text)")
    // Without node 1, nodes 2 and 3 would be a quorum if node 3's votes counted: they do not, so
    // no write succeeds (each attempt waits out the gateway's wait for an election first).
    nodes[0].kill(SIGKILL)
    for attempt in 1...3 {
      let reply = try HTTPClient(port: nodes[1].port).request("PUT", "/v1/groups/DataRegion-0/kv/k\(attempt)", text: "v")
      XCTAssertNotEqual(reply.status, 200, "attempt \(attempt): node 2 was elected with node 3's vote: \(reply.text)")
    }
  }
}
