// Embedding Caucus with a state machine of your own (after IoTDB's ConsensusExample): a counter
// replicated for every SchemaRegion group, written and read through the ConsensusEngine protocol.
// Usage: consensus-example [data-directory]
import Consensus
import Glibc
import Platform
import StandaloneConsensus

/// Adds each command's 8-byte little-endian delta to a running total. Deterministic.
final class CounterStateMachine: StateMachine {
  private var total: Int64 = 0

  func apply(index: UInt64, command: [UInt8]) -> [UInt8] {
    guard command.count == 8 else { return encode(total) }  // malformed: unchanged, deterministic
    total &+= decode(command)
    return encode(total)
  }

  func query(_ request: [UInt8]) -> [UInt8] { encode(total) }
  func takeSnapshot() -> [UInt8] { encode(total) }

  func restore(snapshot: [UInt8]) throws {
    guard snapshot.count == 8 else { throw ConsensusError.invalidRequest("a counter snapshot is 8 bytes") }
    total = decode(snapshot)
  }
}

func encode(_ value: Int64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: UInt64(bitPattern: value) >> ($0 * 8)) } }
func decode(_ bytes: [UInt8]) -> Int64 { Int64(bitPattern: bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << ($1.offset * 8) }) }

let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "./example-data"
var registry = StateMachineRegistry()
registry.register(.schemaRegion) { _ in CounterStateMachine() }

var factory = ConsensusFactory()
StandaloneConsensus.register(in: &factory)
let peer = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))
do {
  let engine = try factory.makeEngine(
    IoTDBProtocolClassNames.standalone, config: ConsensusConfig(localPeer: peer, dataDirectory: directory, registry: registry))
  try engine.start()
  let group = GroupID(.schemaRegion, 3)
  if !engine.allGroupIDs().contains(group) {
    try waitForCompletion { engine.createPeer(group, peers: [peer], completion: $0) }.get()
  }
  for delta: Int64 in [5, 10, -3] {
    let written = try waitForCompletion { engine.write(group, command: encode(delta), completion: $0) }.get()
    print("write +\(delta) at index \(written.index): total \(decode(written.response))")
  }
  let read = try waitForCompletion { engine.read(group, query: [], options: ReadOptions(), completion: $0) }.get()
  print("read at index \(read.index): total \(decode(read.response))")
  print("groups: \(engine.allGroupIDs().map(\.description).joined(separator: ", ")); leader of \(group): node \(engine.leader(group)!.node)")
  engine.stop()
} catch {
  print("consensus-example: \(error)")
  exit(1)
}
