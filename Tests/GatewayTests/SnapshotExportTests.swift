import Consensus
import Foundation
@testable import Gateway
import HTTPServer
import KeyValueStore
import Platform
import StandaloneConsensus
import XCTest

/// `GET /v1/groups/{group}/snapshot` through the gateway on a standalone engine: the file decodes
/// to the group's keys at the index the headers name, and bad requests change nothing.
final class SnapshotExportTests: XCTestCase {
  private var fixture: StandaloneGateway!
  private var engine: StandaloneConsensus { fixture.engine }
  private var gateway: Gateway { fixture.gateway }

  override func setUpWithError() throws { fixture = try StandaloneGateway(label: "export") }
  override func tearDown() { fixture.stop() }

  private func send(_ method: String, _ target: String, _ body: [UInt8] = []) -> HTTPResponse {
    fixture.send(method, target, body: body)
  }

  func testTheExportIsTheGroupsStateAtTheIndexItNames() throws {
    XCTAssertEqual(send("PUT", "/v1/groups/DataRegion-0/kv/a/b", Array("slashes".utf8)).status, 200)
    XCTAssertEqual(send("PUT", "/v1/groups/DataRegion-0/kv/%FF%00", [0xFF, 0x00, 0x01]).status, 200)
    let last = send("PUT", "/v1/groups/DataRegion-0/kv/a/b", Array("again".utf8))
    XCTAssertEqual(last.status, 200)

    let answer = send("GET", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(answer.status, 200, String(decoding: answer.body, as: UTF8.self))
    let index = try XCTUnwrap(answer.header("X-Caucus-Index").flatMap { UInt64($0) })
    XCTAssertEqual(answer.header("X-Caucus-Index"), last.header("X-Caucus-Index"), "the last write's index")
    XCTAssertEqual(answer.header("Content-Type"), "application/octet-stream")
    XCTAssertEqual(answer.header("Content-Disposition"), "attachment; filename=\"DataRegion-0-\(index).caucus-backup\"")
    let backup = try KVBackup.decode(answer.body)
    XCTAssertEqual(backup.group, GroupID(.dataRegion, 0))
    XCTAssertEqual(backup.index, index)
    XCTAssertEqual(
      try backup.entries().map { [$0.key, $0.value] },
      [[Array("a/b".utf8), Array("again".utf8)], [[0xFF, 0x00], [0xFF, 0x00, 0x01]]])
    // A later export of an unchanged group is the same file.
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/snapshot?consistency=stale").body, answer.body)
  }

  /// A backup over the limit is `413 payload_too_large` naming the limit, not a partial file.
  func testABackupOverTheLimitIsRefusedWithTheLimit() throws {
    XCTAssertEqual(send("PUT", "/v1/groups/DataRegion-0/kv/big", Array(repeating: 0x61, count: 4096)).status, 200)
    var configuration = gateway.configuration
    configuration.snapshotExportBytesMax = 1024
    let limited = Gateway(engine: engine, configuration: configuration)
    defer { limited.stop() }
    let answer = fixture.send("GET", "/v1/groups/DataRegion-0/snapshot", to: limited)
    XCTAssertEqual(answer.status, 413, String(decoding: answer.body, as: UTF8.self))
    let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any])
    XCTAssertEqual(object["error"] as? String, "payload_too_large")
    XCTAssertEqual(object["limitBytes"] as? Int, 1024)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/snapshot").status, 200, "the default limit takes it")
    XCTAssertEqual(fixture.send("HEAD", "/v1/groups/DataRegion-0/snapshot", to: limited).status, 413, "HEAD as GET")
  }

  /// HEAD answers GET's status and headers, its Content-Length the backup's size, without building
  /// the backup (the state machine knows the size).
  func testHeadAnswersTheBackupsSizeAndHeaders() throws {
    XCTAssertEqual(send("PUT", "/v1/groups/DataRegion-0/kv/a", Array(repeating: 0x61, count: 3000)).status, 200)
    XCTAssertEqual(send("PUT", "/v1/groups/DataRegion-0/kv/%FF", [0x00]).status, 200)
    let get = send("GET", "/v1/groups/DataRegion-0/snapshot")
    let head = send("HEAD", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(head.status, 200)
    XCTAssertTrue(head.body.isEmpty)
    XCTAssertEqual(head.headContentLength, get.body.count)
    for name in ["X-Caucus-Index", "Content-Type", "Content-Disposition"] {
      XCTAssertEqual(head.header(name), get.header(name), name)
    }
  }

  func testBadRequestsAreRefusedAndChangeNothing() throws {
    let before = engine.status(GroupID(.dataRegion, 0))?.commitIndex
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/snapshot?consistency=sometimes").status, 400)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-0/snapshot?minIndex=x").status, 400)
    XCTAssertEqual(send("GET", "/v1/groups/DataRegion-3/snapshot").status, 404)
    XCTAssertEqual(send("GET", "/v1/groups/Nope-3/snapshot").status, 400)
    let wrongMethod = send("PUT", "/v1/groups/DataRegion-0/snapshot")
    XCTAssertEqual(wrongMethod.status, 405)
    XCTAssertEqual(engine.status(GroupID(.dataRegion, 0))?.commitIndex, before)
  }
}
