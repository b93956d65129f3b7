import Foundation
import Glibc
import TLSTestSupport
import XCTest

/// What the curl command got: its exit status (0, or curl's error code), the HTTP status and the
/// body (`status` 0 when there was no answer), and its error message.
struct CurlReply {
  var exitStatus: Int32
  var status: Int
  var body: String
  var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]) ?? [:] }
}

/// The value of the sample `series` (name and labels) in a Prometheus text.
private func sample(_ metrics: String, _ series: String) -> Int? {
  let line = metrics.split(separator: "\n").first { $0.hasPrefix(series + " ") }
  return line.flatMap { Int($0.split(separator: " ").last ?? "") }
}

/// Real `caucus serve` processes with TLS on both ports, driven by the curl command verifying them
/// with the cluster CA, as an operator would.
final class TLSTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func tearDown() {
    removeNodes(nodes, directories)
    nodes = []
    directories = []
    super.tearDown()
  }

  private func file(_ name: String) throws -> String { try TestCertificates.path(name) }

  /// The flags that turn TLS on for a node.
  private func tlsFlags(clientAuth: Bool = false) throws -> [String] {
    ["--tls-cert-file", try file("node.pem"), "--tls-key-file", try file("node.key"), "--tls-ca-file", try file("ca.pem")]
      + (clientAuth ? ["--tls-client-auth"] : [])
  }

  /// curl with the cluster CA (and `certificate`'s .pem/.key as the client certificate).
  private func curl(
    _ method: String, _ url: String, body: String? = nil, ca: String = "ca.pem", certificate: String? = nil,
    extra: [String] = []
  ) throws -> CurlReply {
    var arguments = ["curl", "-sS", "--max-time", "10", "-X", method, "--cacert", try file(ca), "-w", "\n%{http_code}"]
    if let certificate { arguments += ["--cert", try file(certificate + ".pem"), "--key", try file(certificate + ".key")] }
    if let body { arguments += ["--data-binary", body] }
    let (status, output) = try runCommand("/usr/bin/env", arguments + extra + [url])
    var lines = output.components(separatedBy: "\n")
    let code = Int(lines.removeLast()) ?? 0
    return CurlReply(exitStatus: status, status: code, body: lines.joined(separator: "\n"))
  }

  private func url(_ node: NodeProcess, _ path: String, host: String = "127.0.0.1") -> String {
    "https://\(host):\(node.port)\(path)"
  }

  /// Starts `node` with TLS and waits until it answers /healthz over https.
  private func startTLS(_ node: NodeProcess, clientAuth: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
    let process = try node.launch(try tlsFlags(clientAuth: clientAuth))
    let certificate = clientAuth ? "client" : nil
    waitUntil("the TLS node on port \(node.port) to answer /healthz over https", file: file, line: line) {
      if !process.isRunning { return true }
      return (try? curl("GET", url(node, "/healthz"), certificate: certificate).status) == 200
    }
    XCTAssertTrue(process.isRunning, "caucus exited during start-up:\n\(node.log())", file: file, line: line)
  }

  private func standaloneNode(_ label: String) -> NodeProcess {
    let directory = temporaryDirectory(label)
    directories.append(directory)
    let node = NodeProcess(dataDirectory: directory)
    nodes.append(node)
    return node
  }

  // MARK: One node

  func testCurlWithTheClusterCAWritesAndReadsOnATLSNode() throws {
    let node = standaloneNode("tls-node")
    try startTLS(node)
    let put = try curl("PUT", url(node, "/v1/groups/DataRegion-0/kv/hello"), body: "world")
    XCTAssertEqual(put.status, 200, put.body)
    XCTAssertEqual(put.json["revision"] as? Int, 1)
    let get = try curl("GET", url(node, "/v1/groups/DataRegion-0/kv/hello", host: "localhost"))
    XCTAssertEqual(get.status, 200)
    XCTAssertEqual(get.json["value"] as? String, "world")
    let described = try curl("GET", url(node, "/v1/node"))
    XCTAssertEqual(described.json["clientURL"] as? String, "https://127.0.0.1:\(node.port)", "the node advertises https")
    XCTAssertTrue(node.log().contains("url=https://127.0.0.1:\(node.port)"), node.log())

    // A client trusting another CA refuses the node (curl's 60: the peer's certificate is not trusted).
    let distrusting = try curl("GET", url(node, "/healthz"), ca: "other-ca.pem")
    XCTAssertEqual(distrusting.exitStatus, 60, distrusting.body)

    // A plaintext request is answered, in plaintext, that the port speaks TLS; the node goes on.
    let plain = try HTTPClient(port: node.port).request("GET", "/v1/groups/DataRegion-0/kv/hello")
    XCTAssertEqual(plain.status, 400)
    XCTAssertEqual(plain.json["error"] as? String, "tls_required")
    XCTAssertEqual(plain.headers["connection"], "close")
    let plainCurl = try curl("GET", "http://127.0.0.1:\(node.port)/healthz")
    XCTAssertEqual(plainCurl.status, 400, "curl with http:// gets the same answer")
    XCTAssertEqual(try curl("GET", url(node, "/v1/groups/DataRegion-0/kv/hello")).json["value"] as? String, "world")

    let metrics = try curl("GET", url(node, "/metrics")).body
    XCTAssertTrue(metrics.contains("caucus_tls_plaintext_refused_total{port=\"client\"} 2"), metrics)
    // (At least the distrusting client's; the test's plaintext client also opens a connection it
    // closes without a byte, which counts too.)
    XCTAssertGreaterThanOrEqual(sample(metrics, "caucus_tls_handshake_failures_total{port=\"client\"}") ?? 0, 1, metrics)
    XCTAssertEqual(node.stop(), 0, "SIGTERM stops a TLS node cleanly")
  }

  /// The SHA-256 fingerprint of the certificate a TLS port presents, as openssl prints it.
  private func servedFingerprint(_ port: UInt16) throws -> String {
    let (_, output) = try runCommand(
      "/bin/sh",
      ["-c", "openssl s_client -connect 127.0.0.1:\(port) -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"])
    return output.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  private func fingerprint(ofFile path: String) throws -> String {
    try runCommand("/usr/bin/env", ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", path]).1
      .trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// Certificates rotate without a restart: SIGHUP reads the files again and new connections get
  /// the new certificate; files that cannot be used are refused and the node keeps serving with
  /// the certificate it had.
  func testSIGHUPReloadsTheCertificateAndABadOneChangesNothing() throws {
    let node = standaloneNode("tls-reload")
    let live = temporaryDirectory("tls-reload-files")
    directories.append(live)
    let (certificate, key) = (live + "/node.pem", live + "/node.key")
    for (from, to) in [("node.pem", certificate), ("node.key", key)] {
      XCTAssertEqual(TestCertificates.shell("cp '\(try file(from))' '\(to)'"), 0)
    }
    let process = try node.launch(["--tls-cert-file", certificate, "--tls-key-file", key, "--tls-ca-file", try file("ca.pem")])
    waitUntil("the TLS node to answer over https") {
      !process.isRunning || (try? curl("GET", url(node, "/healthz")).status) == 200
    }
    let original = try fingerprint(ofFile: try file("node.pem"))
    XCTAssertEqual(try servedFingerprint(node.port), original)

    // A new certificate from the same CA (another key, another serial), written over the files.
    let ca = try file("ca")
    let made = TestCertificates.shell(
      """
      cd '\(live)' && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out rotated.key 2>/dev/null \
        && openssl req -new -key rotated.key -subj /CN=rotated -out rotated.csr 2>/dev/null \
        && printf 'basicConstraints=critical,CA:FALSE\\nkeyUsage=critical,digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth,clientAuth\\nsubjectAltName=DNS:localhost,IP:127.0.0.1\\n' > rotated.ext \
        && openssl x509 -req -in rotated.csr -CA '\(ca).pem' -CAkey '\(ca).key' -set_serial 4242 -days 1 -extfile rotated.ext -out rotated.pem 2>/dev/null \
        && cp rotated.key node.key && cp rotated.pem node.pem
      """)
    XCTAssertEqual(made, 0, "openssl made the rotated certificate")
    let rotated = try fingerprint(ofFile: certificate)
    XCTAssertNotEqual(rotated, original)
    XCTAssertEqual(try servedFingerprint(node.port), original, "nothing changes before SIGHUP")
    node.signal(SIGHUP)
    waitUntil("the node to present the rotated certificate") { (try? servedFingerprint(node.port)) == rotated }
    XCTAssertEqual(try curl("PUT", url(node, "/v1/groups/DataRegion-0/kv/rotated"), body: "yes").status, 200)

    // A certificate file that is not one: refused on SIGHUP, and the node keeps the rotated one.
    XCTAssertEqual(TestCertificates.shell("echo 'not a certificate' > '\(certificate)'"), 0)
    node.signal(SIGHUP)
    waitUntil("the node to log that it kept its certificate") {
      node.log().contains("the TLS files cannot be used; keeping the certificate loaded before")
    }
    XCTAssertEqual(try servedFingerprint(node.port), rotated)
    XCTAssertEqual(try curl("GET", url(node, "/v1/groups/DataRegion-0/kv/rotated")).json["value"] as? String, "yes")
    XCTAssertTrue(process.isRunning)
  }

  func testWithClientAuthOnlyAClientCertificateFromTheClusterCAGetsIn() throws {
    let node = standaloneNode("tls-client-auth")
    try startTLS(node, clientAuth: true)
    let anonymous = try curl("GET", url(node, "/v1/groups/DataRegion-0/kv/a"))
    XCTAssertNotEqual(anonymous.exitStatus, 0, "refused without a certificate")
    XCTAssertEqual(anonymous.status, 0)
    let foreign = try curl("GET", url(node, "/v1/groups/DataRegion-0/kv/a"), certificate: "other-client")
    XCTAssertNotEqual(foreign.exitStatus, 0, "refused with a certificate another CA signed")
    let put = try curl("PUT", url(node, "/v1/groups/DataRegion-0/kv/a"), body: "1", certificate: "client")
    XCTAssertEqual(put.status, 200, put.body)
    XCTAssertEqual(try curl("GET", url(node, "/v1/groups/DataRegion-0/kv/a"), certificate: "client").json["value"] as? String, "1")
  }

  func testUnusableTLSFilesStopTheStartWithStatus2AndTheReason() throws {
    let node = standaloneNode("tls-refused")
    let cases: [([String], String)] = [
      (["--tls-cert-file", "/nonexistent/node.pem", "--tls-key-file", try file("node.key")],
       "cannot read the certificate file /nonexistent/node.pem: No such file or directory"),
      (["--tls-cert-file", try file("node.pem"), "--tls-key-file", try file("client.key")],
       "does not match the certificate in \(try file("node.pem"))"),
      (["--tls-cert-file", try file("node.pem"), "--tls-key-file", try file("node.key"), "--tls-ca-file", try file("other-ca.pem"),
        "--cluster", "1=127.0.0.1:\(node.consensusPort)"],
       "does not verify with the CA in \(try file("other-ca.pem"))"),
    ]
    for (flags, expected) in cases {
      try node.launch(flags)
      let ended = try XCTUnwrap(node.waitForExit(seconds: 30))
      XCTAssertEqual(ended.terminationStatus, 2, "\(flags)")
      XCTAssertTrue(node.log().contains(expected), "expected '\(expected)' in:\n\(node.log())")
    }
    // Flags that do not go together are a usage error, as every other bad setting.
    try node.launch(["--tls-cert-file", try file("node.pem")])
    XCTAssertEqual(try XCTUnwrap(node.waitForExit(seconds: 30)).terminationStatus, 64)
    XCTAssertTrue(node.log().contains("--tls-cert-file and --tls-key-file go together"), node.log())
  }

  // MARK: A cluster

  /// Three nodes with TLS on both ports and client certificates required, and the cluster secret
  /// besides (its HMAC proof rides inside TLS): the peers verify each other through the cluster CA
  /// (Raft batches, forwarded writes, the directory), elect a leader and replicate, and every URL
  /// they hand out says https.
  func testAThreeNodeClusterWithTLSElectsALeaderAndReplicates() throws {
    let (cluster, clusterDirectories) = clusterNodes(3, label: "tls-cluster")
    nodes = cluster
    directories = clusterDirectories
    let secret = try TestCertificates.directory() + "/cluster.secret"
    XCTAssertEqual(TestCertificates.shell("openssl rand -hex 32 > '\(secret)'"), 0)
    for node in cluster {
      node.extraArguments += ["--cluster-secret-file", secret]
      try startTLS(node, clientAuth: true)
    }

    var leader: Int?
    waitUntil("a leader all three agree on", seconds: 30) {
      let views = cluster.compactMap { node -> Int? in
        (try? curl("GET", url(node, "/v1/groups/DataRegion-0?forward=none"), certificate: "client"))?.json["leader"] as? Int
      }
      guard views.count == 3, let first = views.first, views.allSatisfy({ $0 == first }) else { return false }
      leader = first - 1
      return true
    }
    let leaderIndex = try XCTUnwrap(leader)
    let follower = (leaderIndex + 1) % 3

    let direct = try curl("PUT", url(cluster[leaderIndex], "/v1/groups/DataRegion-0/kv/direct"), body: "at-leader", certificate: "client")
    XCTAssertEqual(direct.status, 200, direct.body)
    // Through a follower: forwarded to the leader over the consensus port's TLS.
    let forwarded = try curl("PUT", url(cluster[follower], "/v1/groups/DataRegion-0/kv/forwarded"), body: "via-follower", certificate: "client")
    XCTAssertEqual(forwarded.status, 200, forwarded.body)

    for node in cluster {
      waitUntil("node on port \(node.port) to apply both writes") {
        let direct = try? curl("GET", url(node, "/v1/groups/DataRegion-0/kv/direct?consistency=stale"), certificate: "client")
        let forwarded = try? curl("GET", url(node, "/v1/groups/DataRegion-0/kv/forwarded?consistency=stale"), certificate: "client")
        return direct?.json["value"] as? String == "at-leader" && forwarded?.json["value"] as? String == "via-follower"
      }
    }

    let redirect = try curl(
      "GET", url(cluster[follower], "/v1/groups/DataRegion-0/kv/direct?forward=redirect"), certificate: "client",
      extra: ["-o", "/dev/null", "-w", "%{redirect_url}\n%{http_code}"])
    XCTAssertEqual(redirect.status, 307)
    XCTAssertTrue(
      redirect.body.hasPrefix("https://127.0.0.1:\(cluster[leaderIndex].port)/"), "a redirect to the leader's https URL: \(redirect.body)")

    let view = try curl("GET", url(cluster[0], "/v1/cluster?groups=false"), certificate: "client")
    let listed = try XCTUnwrap(view.json["nodes"] as? [[String: Any]], view.body)
    XCTAssertEqual(listed.count, 3)
    for entry in listed {
      XCTAssertEqual(entry["reachable"] as? Bool, true, "\(entry)")
      XCTAssertTrue((entry["clientURL"] as? String)?.hasPrefix("https://") ?? false, "\(entry)")
    }
    let metrics = try curl("GET", url(cluster[follower], "/metrics"), certificate: "client").body
    XCTAssertGreaterThan(sample(metrics, "caucus_tls_handshakes_total{port=\"consensus\"}") ?? 0, 0, "peers connected over TLS")

    // A fourth node joins through node 2's consensus endpoint (GET /v1/node there, then a
    // registration at node 2's https client URL), and a group is created on it through node 1,
    // which does not host it.
    let directory = temporaryDirectory("tls-join")
    directories.append(directory)
    let fourth = NodeProcess(dataDirectory: directory)
    fourth.extraArguments =
      ["--node-id", "4", "--join", "127.0.0.1:\(cluster[1].consensusPort)", "--cluster-secret-file", secret] + fastRaftTimings
    nodes.append(fourth)
    try startTLS(fourth, clientAuth: true)
    waitUntil("node 1 to list four reachable nodes") {
      let listed = (try? curl("GET", url(cluster[0], "/v1/cluster?groups=false"), certificate: "client"))?.json["nodes"] as? [[String: Any]]
      return listed?.count == 4 && listed?.allSatisfy { $0["reachable"] as? Bool == true } == true
    }
    let created = try curl("POST", url(cluster[0], "/v1/groups"), body: #"{"id":"DataRegion-7","peers":[2,3,4]}"#, certificate: "client")
    XCTAssertEqual(created.status, 201, created.body)
    let written = try curl("PUT", url(cluster[0], "/v1/groups/DataRegion-7/kv/k"), body: "v", certificate: "client")
    XCTAssertEqual(written.status, 200, written.body)
    waitUntil("the joined node to apply the write") {
      (try? curl("GET", url(fourth, "/v1/groups/DataRegion-7/kv/k?consistency=stale"), certificate: "client"))?.json["value"] as? String == "v"
    }
    for node in nodes {
      XCTAssertFalse(node.log().contains("certificate verify failed"), node.log())
    }
  }
}
