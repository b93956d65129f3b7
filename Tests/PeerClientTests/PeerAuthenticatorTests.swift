import Platform
import XCTest

@testable import PeerClient

/// The cluster secret's proof (`PeerAuthenticator`): what verifies, and every way it does not.
final class PeerAuthenticatorTests: XCTestCase {
  private let secret = Array("0123456789abcdef0123456789abcdef".utf8)
  private let now: UInt64 = 1_800_000_000_000

  private func signer(_ secret: [UInt8]? = nil, node: UInt64 = 2) throws -> PeerAuthenticator {
    try PeerAuthenticator(secret: secret ?? self.secret, node: node)
  }

  func testASignedRequestVerifiesAndNamesItsSender() throws {
    let header = try signer().headerValue(method: "POST", target: "/v1/raft/batch", identity: nil, body: [1, 2, 3], nowMs: now)
    XCTAssertTrue(header.hasPrefix("v2 node=2 ts=\(now) mac="), header)
    let verdict = try signer(node: 1).verify(method: "POST", target: "/v1/raft/batch", headerValue: header, identity: nil, body: [1, 2, 3], nowMs: now + 1_000)
    XCTAssertEqual(verdict, .success(2))
  }

  func testEveryAlterationIsRefused() throws {
    let receiver = try signer(node: 1)
    let header = try signer().headerValue(method: "POST", target: "/v1/node/groups", identity: nil, body: Array("{}".utf8), nowMs: now)
    func verdict(
      method: String = "POST", target: String = "/v1/node/groups", header: String?, identity: String? = nil, body: String = "{}",
      at: UInt64? = nil
    ) -> Result<UInt64, PeerAuthenticationError> {
      receiver.verify(method: method, target: target, headerValue: header, identity: identity, body: Array(body.utf8), nowMs: at ?? now)
    }
    XCTAssertEqual(verdict(header: header), .success(2))
    XCTAssertEqual(verdict(header: header, body: "{ }"), .failure(.badCode), "the body")
    XCTAssertEqual(verdict(target: "/v1/node/groups/x", header: header), .failure(.badCode), "the target")
    XCTAssertEqual(verdict(method: "DELETE", header: header), .failure(.badCode), "the method")
    XCTAssertEqual(verdict(header: header.replacingOccurrences(of: "node=2", with: "node=3")), .failure(.badCode), "the sender")
    XCTAssertEqual(verdict(header: header, identity: "admin"), .failure(.badCode), "an identity added")
    let relayed = try signer().headerValue(method: "POST", target: "/v1/node/groups", identity: "reader", body: Array("{}".utf8), nowMs: now)
    XCTAssertEqual(verdict(header: relayed, identity: "reader"), .success(2))
    XCTAssertEqual(verdict(header: relayed, identity: "admin"), .failure(.badCode), "the identity swapped")
    XCTAssertEqual(verdict(header: relayed), .failure(.badCode), "the identity removed")
    XCTAssertEqual(verdict(header: nil), .failure(.missing))
    for malformed in ["", "v2", "v1 " + header.dropFirst(3), "v2 node=2 ts=1 mac=00", "v2 node=0 ts=1 mac=" + String(repeating: "0", count: 64),
      "v2 node=2 ts=x mac=" + String(repeating: "0", count: 64), "v2 node=2 ts=1 mac=zz", "v2 node=2 ts=1 mac=0011"]
    {
      XCTAssertEqual(verdict(header: malformed), .failure(.malformed), malformed)
    }
    let other = try signer(Array("another secret, sixteen bytes+".utf8)).headerValue(
      method: "POST", target: "/v1/node/groups", identity: nil, body: Array("{}".utf8), nowMs: now)
    XCTAssertEqual(verdict(header: other), .failure(.badCode), "another secret")
  }

  func testAStaleOrFutureTimestampIsRefused() throws {
    let receiver = try signer(node: 1)
    let skew = PeerAuthenticator.clockSkewMsMax
    let header = try signer().headerValue(method: "GET", target: "/v1/node", identity: nil, body: [], nowMs: now)
    XCTAssertEqual(receiver.verify(method: "GET", target: "/v1/node", headerValue: header, identity: nil, body: [], nowMs: now + skew), .success(2))
    XCTAssertEqual(
      receiver.verify(method: "GET", target: "/v1/node", headerValue: header, identity: nil, body: [], nowMs: now + skew + 1),
      .failure(.clockSkew(ms: skew + 1)))
    XCTAssertEqual(
      receiver.verify(method: "GET", target: "/v1/node", headerValue: header, identity: nil, body: [], nowMs: now - skew - 1),
      .failure(.clockSkew(ms: skew + 1)))
  }

  func testShortSecretsAreRefusedAndAFileLosesItsSurroundingWhitespace() throws {
    XCTAssertThrowsError(try PeerAuthenticator(secret: Array("too short".utf8), node: 1))
    let path = NSTemporaryDirectory() + "caucus-secret-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: path) }
    try Data("  \(String(decoding: secret, as: UTF8.self))\n".utf8).write(to: URL(fileURLWithPath: path))
    XCTAssertEqual(try PeerAuthenticator.secret(fromFile: path), secret)
    XCTAssertThrowsError(try PeerAuthenticator.secret(fromFile: path + ".missing"))
  }

  func testTheTargetOfAnAbsoluteURL() {
    XCTAssertEqual(PeerAuthenticator.target(ofURL: "http://127.0.0.1:4001/v1/raft/batch"), "/v1/raft/batch")
    XCTAssertEqual(PeerAuthenticator.target(ofURL: "https://[::1]:4001/v1/groups/G/kv/k?raw=true"), "/v1/groups/G/kv/k?raw=true")
    XCTAssertEqual(PeerAuthenticator.target(ofURL: "http://host:1"), "/")
  }
}
