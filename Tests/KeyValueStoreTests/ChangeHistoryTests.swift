import XCTest

@testable import KeyValueStore

final class ChangeHistoryTests: XCTestCase {
  func testRecordsPutsAndActualDeletesByPrefix() throws {
    let machine = KeyValueStateMachine()
    try machine.put(1, b("a/1"), b("x"))
    try machine.put(2, b("b/1"), b("y"))
    _ = try machine.write(
      3,
      [.delete(key: b("a/1"), precondition: .none), .delete(key: b("a/none"), precondition: .none)])
    _ = try machine.write(
      4, [.put(key: b("a/2"), value: b("z"), precondition: .revisionEquals(99))])
    let all = machine.changes(after: 0, prefix: [], limit: 100)
    XCTAssertNil(all.compactedBefore)
    XCTAssertEqual(
      all.events,
      [
        KVChangeEvent(index: 1, kind: .put, key: b("a/1"), value: b("x")),
        KVChangeEvent(index: 2, kind: .put, key: b("b/1"), value: b("y")),
        KVChangeEvent(index: 3, kind: .delete, key: b("a/1"), value: []),
      ])
    XCTAssertEqual(machine.changes(after: 1, prefix: b("a/"), limit: 100).events.map(\.index), [3])
    XCTAssertEqual(machine.changes(after: 3, prefix: [], limit: 100).events, [])
  }

  func testLimitNeverSplitsTheEventsOfOneIndex() throws {
    let machine = KeyValueStateMachine()
    try machine.put(1, b("k0"), [])
    _ = try machine.write(
      2, (1...3).map { .put(key: b("k\($0)"), value: [], precondition: .none) })
    try machine.put(3, b("k4"), [])
    let page = machine.changes(after: 0, prefix: [], limit: 2)
    XCTAssertEqual(page.events.map(\.index), [1, 2, 2, 2])
    XCTAssertEqual(machine.changes(after: 2, prefix: [], limit: 2).events.map(\.index), [3])
  }

  func testBoundedHistoryReportsCompaction() throws {
    let machine = KeyValueStateMachine(historyEntriesMax: 3)
    for index in 1...5 { try machine.put(UInt64(index), b("k\(index)"), []) }
    // Events 3, 4, 5 are retained: complete from index 3.
    XCTAssertEqual(machine.changes(after: 1, prefix: [], limit: 10).compactedBefore, 3)
    XCTAssertEqual(machine.changes(after: 0, prefix: [], limit: 10).events, [])
    let page = machine.changes(after: 2, prefix: [], limit: 10)
    XCTAssertNil(page.compactedBefore)
    XCTAssertEqual(page.events.map(\.index), [3, 4, 5])
  }

  func testByteBoundAndRestoreReset() throws {
    let machine = KeyValueStateMachine(historyEntriesMax: 100, historyBytesMax: 100)
    try machine.put(1, b("k"), [UInt8](repeating: 1, count: 50))
    try machine.put(2, b("k"), [UInt8](repeating: 2, count: 50))
    XCTAssertEqual(machine.changes(after: 0, prefix: [], limit: 10).compactedBefore, 2)
    try machine.put(3, b("k"), [UInt8](repeating: 3, count: 500))  // larger than the whole bound
    XCTAssertEqual(machine.changes(after: 2, prefix: [], limit: 10).compactedBefore, 4)
    XCTAssertEqual(machine.changes(after: 3, prefix: [], limit: 10).events, [])

    let restored = KeyValueStateMachine()
    try restored.restore(snapshot: machine.takeSnapshot())
    XCTAssertEqual(restored.changes(after: 0, prefix: [], limit: 10).compactedBefore, 4)
    try restored.put(4, b("new"), [])
    XCTAssertEqual(restored.changes(after: 3, prefix: [], limit: 10).events.map(\.index), [4])
  }
}
