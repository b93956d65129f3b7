import XCTest

@testable import KeyValueStore

/// The state machine against an obviously-correct model (a dictionary, sorted on demand) over a
/// seeded random stream of batches with preconditions: every outcome, and the listing, must match.
final class ModelTests: XCTestCase {
  struct Model {
    var entries: [KVBytes: (value: KVBytes, revision: UInt64)] = [:]

    mutating func apply(index: UInt64, _ operations: [KVOperation]) -> KVWriteOutcome {
      for (position, operation) in operations.enumerated() {
        let (key, condition): (KVBytes, KVPrecondition)
        switch operation {
        case .put(let k, _, let c): (key, condition) = (k, c)
        case .delete(let k, let c): (key, condition) = (k, c)
        }
        let current = entries[key]?.revision
        let failed: Bool
        switch condition {
        case .none: failed = false
        case .absent: failed = current != nil
        case .revisionEquals(let revision): failed = current != revision
        }
        if failed {
          return .preconditionFailed(operationIndex: position, key: key, currentRevision: current)
        }
      }
      return .applied(
        operations.map { operation in
          switch operation {
          case .put(let key, let value, _):
            entries[key] = (value, index)
            return .put(revision: index)
          case .delete(let key, _):
            return .delete(deleted: entries.removeValue(forKey: key) != nil)
          }
        })
    }

    func list(prefix: KVBytes, after: KVBytes?, limit: Int) -> (items: [KVEntry], more: Bool) {
      let matching = entries.keys
        .filter { key in key.starts(with: prefix) && (after.map { bytesLess($0, key) } ?? true) }
        .sorted(by: bytesLess)
      let items = matching.prefix(limit).map {
        KVEntry(key: $0, value: entries[$0]!.value, revision: entries[$0]!.revision)
      }
      return (Array(items), matching.count > limit)
    }
  }

  func testOutcomesAndListingsMatchTheModel() throws {
    var stream = CommandStream(seed: 0x30DE1)
    let machine = KeyValueStateMachine()
    var model = Model()
    for index in UInt64(1)...6_000 {
      var operations: [KVOperation] = []
      for _ in 0..<(1 + stream.random.below(3)) {
        let key = stream.key()
        let condition = stream.precondition()
        operations.append(
          stream.random.below(3) == 0
            ? .delete(key: key, precondition: condition)
            : .put(
              key: key, value: stream.random.bytes(count: stream.random.below(4)),
              precondition: condition))
      }
      stream.recentRevisions.append(index)
      if stream.recentRevisions.count > 16 { stream.recentRevisions.removeFirst() }
      XCTAssertEqual(
        try machine.write(index, operations), model.apply(index: index, operations),
        "index \(index)")
      if index % 50 == 0 {
        XCTAssertEqual(machine.count, model.entries.count)
        let prefix = Array(stream.key().prefix(stream.random.below(3)))
        let after: KVBytes? = stream.random.below(2) == 0 ? stream.key() : nil
        let limit = stream.random.below(20)
        let expected = model.list(prefix: prefix, after: after, limit: limit)
        let actual = machine.list(prefix: prefix, after: after, limit: limit)
        XCTAssertEqual(
          actual.items, expected.items,
          "prefix \(prefix) after \(String(describing: after)) limit \(limit)")
        XCTAssertEqual(actual.more, expected.more)
      }
    }
    machine.checkInvariants()
  }
}
