import XCTest

@testable import KeyValueStore

#if canImport(Glibc)
  import Glibc
#endif

/// Throughput figures, not timed assertions. Skipped unless CAUCUS_KV_PERF=1 (CAUCUS_KV_PERF_KEYS
/// sets the key count, default 100k); run it optimized:
///   CAUCUS_KV_PERF=1 swift test -c release -Xswiftc -enable-testing --filter PerformanceCheck
final class PerformanceCheck: XCTestCase {
  func testPutsThenGets() throws {
    guard ProcessInfoLite.environment("CAUCUS_KV_PERF") == "1" else {
      throw XCTSkip("set CAUCUS_KV_PERF=1 to run the performance check")
    }
    let keyCount = ProcessInfoLite.environment("CAUCUS_KV_PERF_KEYS").flatMap { Int($0) } ?? 100_000
    var random = SplitMix64(seed: 1)
    var keys = (0..<keyCount).map { b("user/\(1_000_000_000 + $0)") }
    for index in stride(from: keys.count - 1, to: 0, by: -1) {
      keys.swapAt(index, random.below(index + 1))
    }
    let value = [UInt8](repeating: 0xAB, count: 100)
    let commands = keys.map {
      KVCodec.encode(KVCommand(operations: [.put(key: $0, value: value, precondition: .none)]))
    }
    let machine = KeyValueStateMachine()
    let clock = ContinuousClock()

    let putTime = clock.measure {
      for (offset, command) in commands.enumerated() {
        _ = machine.apply(index: UInt64(offset + 1), command: command)
      }
    }
    XCTAssertEqual(machine.count, keyCount)

    let queries = keys.map { KVCodec.encode(queries: [.get(key: $0)]) }
    var found = 0
    let getTime = clock.measure {
      for query in queries where machine.query(query).count > 20 { found += 1 }
    }
    XCTAssertEqual(found, keyCount)

    var typedFound = 0
    let typedGetTime = clock.measure {
      for key in keys where machine.get(key) != nil { typedFound += 1 }
    }
    XCTAssertEqual(typedFound, keyCount)

    var listed = 0
    let listTime = clock.measure {
      var after: KVBytes? = nil
      while true {
        let page = machine.list(prefix: b("user/"), after: after, limit: 1_000)
        listed += page.items.count
        guard page.more else { break }
        after = page.items.last!.key
      }
    }
    XCTAssertEqual(listed, keyCount)

    var snapshot: [UInt8] = []
    let snapshotTime = clock.measure { snapshot = machine.takeSnapshot() }
    let restored = KeyValueStateMachine()
    let restoreTime = clock.measure { try! restored.restore(snapshot: snapshot) }
    XCTAssertEqual(restored.count, keyCount)

    func rate(_ count: Int, _ duration: Duration) -> Int {
      let seconds =
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
      return Int(Double(count) / seconds)
    }
    print(
      """
      KV performance (\(keyCount) keys of 15 bytes, 100-byte values, random order):
        apply(put):  \(rate(keyCount, putTime)) ops/s (\(putTime))
        query(get):  \(rate(keyCount, getTime)) ops/s (\(getTime))
        get (typed): \(rate(keyCount, typedGetTime)) ops/s (\(typedGetTime))
        list pages of 1000: \(rate(keyCount, listTime)) keys/s (\(listTime))
        takeSnapshot: \(snapshot.count) bytes in \(snapshotTime); restore: \(restoreTime)
      """)
  }
}

/// getenv without Foundation.
enum ProcessInfoLite {
  static func environment(_ name: String) -> String? {
    #if canImport(Glibc)
      guard let value = getenv(name) else { return nil }
      return String(cString: value)
    #else
      return nil
    #endif
  }
}
