import Consensus
import Foundation
@testable import Directory
@testable import Gateway
import HTTPServer
import Platform
import XCTest

/// A full data directory as the API shows it: `507 insufficient_storage` naming the directory,
/// with `Retry-After`; `/readyz` and `GET /v1/node` say why.
final class InsufficientStorageTests: XCTestCase {
  static let directory = "/srv/caucus/node-3"

  private func exchange(_ gateway: Gateway, _ method: String, _ target: String, body: String = "") -> Locked<[HTTPResponse]> {
    let responses = Locked<[HTTPResponse]>([])
    gateway.handle(
      HTTPRequest(method: method, target: target, headers: [], body: Array(body.utf8)),
      responder: HTTPResponder { response in responses.withLock { $0.append(response) } })
    return responses
  }

  private func json(_ response: HTTPResponse) throws -> [String: Any] {
    try XCTUnwrap(JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
  }

  private func makeGateway(_ engine: StalledEngine) -> Gateway {
    Gateway(
      engine: engine,
      configuration: GatewayConfiguration(
        clientURL: "http://127.0.0.1:1", dataDirectory: Self.directory, version: "test", requestTimeoutMs: 5_000))
  }

  func testAWriteRefusedForLackOfSpaceIs507WithTheDataDirectoryAndRetryAfter() throws {
    let engine = StalledEngine()
    let gateway = makeGateway(engine)
    defer { gateway.stop() }
    let responses = exchange(gateway, "PUT", "/v1/groups/DataRegion-0/kv/k", body: "v")
    let pending = engine.pendingWrites.withLock { $0 }
    XCTAssertEqual(pending.count, 1)
    pending[0](.failure(.outOfSpace(directory: Self.directory, retryAfterMs: 2_500)))
    let response = try XCTUnwrap(responses.withLock { $0.first })
    XCTAssertEqual(response.status, 507)
    XCTAssertTrue(response.headers.contains { $0.name == "Retry-After" && $0.value == "3" }, "rounded up to seconds")
    let body = try json(response)
    XCTAssertEqual(body["error"] as? String, "insufficient_storage")
    XCTAssertEqual(body["dataDir"] as? String, Self.directory)
    XCTAssertEqual(body["group"] as? String, "DataRegion-0")
    let message = try XCTUnwrap(body["message"] as? String)
    XCTAssertTrue(message.contains(Self.directory), message)
    XCTAssertTrue(message.contains("free space"), "says what to do: \(message)")
    XCTAssertNil(body["indeterminate"], "a refusal is definite: nothing was written")
  }

  func testOtherStorageFailuresStay503NotReady() throws {
    let engine = StalledEngine()
    let gateway = makeGateway(engine)
    defer { gateway.stop() }
    let responses = exchange(gateway, "PUT", "/v1/groups/DataRegion-0/kv/k", body: "v")
    engine.pendingWrites.withLock { $0 }[0](.failure(.storage("fdatasync: Input/output error (errno 5)")))
    let response = try XCTUnwrap(responses.withLock { $0.first })
    XCTAssertEqual(response.status, 503)
    XCTAssertEqual(try json(response)["error"] as? String, "not_ready")
  }

  func testReadinessAndNodeStatusNameAFullDataDirectory() throws {
    let engine = StalledEngine()
    let gateway = makeGateway(engine)
    defer { gateway.stop() }
    let ready = try XCTUnwrap(exchange(gateway, "GET", "/readyz").withLock { $0.first })
    XCTAssertEqual(ready.status, 200)
    XCTAssertEqual(
      (try json(try XCTUnwrap(exchange(gateway, "GET", "/v1/node").withLock { $0.first }))["storage"] as? [String: Any])?[
        "state"] as? String, "ok")

    engine.condition.withLock { $0 = .outOfSpace(directory: Self.directory, reason: "pwrite: No space left on device") }
    let notReady = try XCTUnwrap(exchange(gateway, "GET", "/readyz").withLock { $0.first })
    XCTAssertEqual(notReady.status, 503)
    let reasons = try XCTUnwrap(try json(notReady)["reasons"] as? [String])
    XCTAssertTrue(reasons.contains { $0.contains("out of space") && $0.contains(Self.directory) }, "\(reasons)")
    let node = try json(try XCTUnwrap(exchange(gateway, "GET", "/v1/node").withLock { $0.first }))
    let storage = try XCTUnwrap(node["storage"] as? [String: Any])
    XCTAssertEqual(storage["state"] as? String, "out_of_space")
    XCTAssertTrue((storage["message"] as? String)?.contains(Self.directory) == true, "\(storage)")
  }
}
