import Consensus
import Foundation
@testable import Gateway
import HTTPServer
import KeyValueStore
import Platform
import StandaloneConsensus

/// A standalone engine over a fresh data directory with `groups` created, and a gateway over it
/// (`configure` adjusts its configuration): where the gateway tests that need a real engine but no
/// cluster start. `stop()` in tearDown.
final class StandaloneGateway {
  static let local = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))
  let dataDirectory: String
  let engine: StandaloneConsensus
  let gateway: Gateway

  init(
    label: String, groups: [GroupID] = [GroupID(.dataRegion, 0)], configure: (inout GatewayConfiguration) -> Void = { _ in }
  ) throws {
    dataDirectory = NSTemporaryDirectory() + "caucus-\(label)-\(UUID().uuidString.prefix(8))"
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    let engine = StandaloneConsensus(
      config: ConsensusConfig(localPeer: Self.local, dataDirectory: dataDirectory, registry: registry))
    try engine.start()
    for group in groups {
      try waitForCompletion { engine.createPeer(group, peers: [Self.local], completion: $0) }.get()
    }
    self.engine = engine
    var configuration = GatewayConfiguration(
      clientURL: "http://127.0.0.1:6667", dataDirectory: dataDirectory, version: "test", members: [Self.local])
    configure(&configuration)
    gateway = Gateway(engine: engine, configuration: configuration)
  }

  /// One request through `gateway` (this fixture's unless given), waited for.
  func send(
    _ method: String, _ target: String, body: [UInt8] = [], headers: [(name: String, value: String)] = [],
    to gateway: Gateway? = nil
  ) -> HTTPResponse {
    let request = HTTPRequest(method: method, target: target, headers: headers, body: body)
    let gateway = gateway ?? self.gateway
    return waitForCompletion { done in gateway.handle(request, responder: HTTPResponder { done($0) }) }
  }

  func stop() {
    gateway.stop()
    engine.stop()
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }
}
