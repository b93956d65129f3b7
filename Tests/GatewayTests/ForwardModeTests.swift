import Consensus
import Foundation
@testable import Gateway
import HTTPServer
import KeyValueStore
import Platform
import StandaloneConsensus
import XCTest

/// Issue 13, point 5c: `?forward=` is checked on every route that may be forwarded (the group's
/// routes, its status and its deletion among them) and answered `400 bad_request` naming the
/// allowed values when it is not one of them; the routes that are never forwarded ignore it.
final class ForwardModeTests: XCTestCase {
  private var dataDirectory = ""
  private var engine: StandaloneConsensus!
  private let local = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))

  override func setUpWithError() throws {
    dataDirectory = NSTemporaryDirectory() + "caucus-forward-\(UUID().uuidString.prefix(8))"
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    engine = StandaloneConsensus(config: ConsensusConfig(localPeer: local, dataDirectory: dataDirectory, registry: registry))
    try engine.start()
    try waitForCompletion { self.engine.createPeer(GroupID(.dataRegion, 0), peers: [self.local], completion: $0) }.get()
  }

  override func tearDown() {
    engine.stop()
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }

  private func send(_ gateway: Gateway, _ method: String, _ target: String, _ body: String) -> HTTPResponse {
    waitForCompletion { done in
      gateway.handle(
        HTTPRequest(method: method, target: target, headers: [], body: Array(body.utf8)), responder: HTTPResponder { done($0) })
    }
  }

  private func withForward(_ target: String, _ mode: String) -> String {
    target + (target.contains("?") ? "&" : "?") + "forward=" + mode
  }

  /// The routes that may reach another node's leader: every route about one group (its status
  /// and deletion too: a group this node neither hosts nor finds recorded is looked for on the
  /// others). The rest (operational, node-local, cluster, the group list and creation) never are.
  private let forwarded: Set<Route.Name> = [
    .groupGet, .groupDelete, .kvGet, .kvPut, .kvDelete, .kvList, .write, .read, .watch, .peersAdd, .peersChange,
    .peerRemove, .leaderGet, .leaderTransfer, .snapshot, .snapshotExport,
  ]

  func testTheRoutesThatMayBeForwardedTakeForward() {
    for name in Route.Name.allCases {
      XCTAssertEqual(name.takesForwardMode, forwarded.contains(name), "\(name)")
    }
  }

  func testABogusForwardIsBadRequestNamingTheModesOnEveryRouteThatTakesIt() throws {
    let gateway = Gateway(
      engine: engine,
      configuration: GatewayConfiguration(
        clientURL: "http://127.0.0.1:6667", dataDirectory: dataDirectory, version: "test", members: [local]))
    defer { gateway.stop() }
    for name in Route.Name.allCases {
      let sample = sampleRequest(name)
      let target = withForward(sample.target, "bogus")
      let answer = send(gateway, sample.method, target, sample.body)
      let body = String(decoding: answer.body, as: UTF8.self)
      let object = (try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any]
      if forwarded.contains(name) {
        XCTAssertEqual(answer.status, 400, "\(sample.method) \(target): \(body)")
        XCTAssertEqual(object?["error"] as? String, "bad_request", "\(sample.method) \(target)")
        let message = object?["message"] as? String ?? ""
        XCTAssertTrue(
          message.contains("proxy") && message.contains("redirect") && message.contains("none") && message.contains("bogus"),
          "\(sample.method) \(target): \(message)")
      } else {
        // Ignored: the answer is the route's own, whatever it is, never a complaint about it.
        XCTAssertFalse(body.contains("forward must be"), "\(sample.method) \(target): \(body)")
      }
    }
  }

  func testTheThreeModesAreAcceptedOnEveryRouteThatTakesThem() throws {
    let gateway = Gateway(
      engine: engine,
      configuration: GatewayConfiguration(
        clientURL: "http://127.0.0.1:6667", dataDirectory: dataDirectory, version: "test", members: [local]))
    defer { gateway.stop() }
    for name in Route.Name.allCases where forwarded.contains(name) && !name.changesState {
      let sample = sampleRequest(name)
      for mode in ["proxy", "redirect", "none"] {
        let target = withForward(sample.target, mode)
        let answer = send(gateway, sample.method, target, sample.body)
        XCTAssertFalse(
          String(decoding: answer.body, as: UTF8.self).contains("forward must be"), "\(sample.method) \(target)")
      }
    }
  }
}
