import XCTest

@testable import KeyValueStore

final class OrderedBytesMapTests: XCTestCase {
  func testCompareBytesIsUnsignedLexicographic() {
    XCTAssertLessThan(compareBytes([0x00], [0xFF]), 0)
    XCTAssertLessThan(compareBytes([0x7F], [0x80]), 0, "bytes compare unsigned")
    XCTAssertLessThan(compareBytes(b("a"), b("a\u{0}")), 0, "a proper prefix sorts first")
    XCTAssertGreaterThan(compareBytes([0xFF, 0x00], [0xFF]), 0)
    XCTAssertEqual(compareBytes(b("abc"), b("abc")), 0)
    XCTAssertEqual(compareBytes([], []), 0)
    XCTAssertLessThan(compareBytes([], [0]), 0)
    // Differences inside and after the first eight-byte word, and in the tail.
    XCTAssertLessThan(compareBytes(b("user/1000000001"), b("user/1000000002")), 0)
    XCTAssertGreaterThan(
      compareBytes([0, 0, 0, 0, 0, 0, 0, 0x80], [0, 0, 0, 0, 0, 0, 0, 0x7F]), 0)
    XCTAssertLessThan(compareBytes([0x01] + [UInt8](repeating: 0xFF, count: 7), [0x02]), 0)
  }

  func testCompareBytesMatchesLexicographicOrderOnRandomPairs() {
    var random = SplitMix64(seed: 0xC0FFEE)
    for _ in 0..<20_000 {
      let shared = random.bytes(count: random.below(20))
      let alphabet: [UInt8] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]
      let left = shared + (0..<random.below(12)).map { _ in alphabet[random.below(alphabet.count)] }
      let right =
        shared + (0..<random.below(12)).map { _ in alphabet[random.below(alphabet.count)] }
      let expected = left == right ? 0 : (bytesLess(left, right) ? -1 : 1)
      XCTAssertEqual(compareBytes(left, right).signum(), expected, "\(left) vs \(right)")
      XCTAssertEqual(compareBytes(right, left).signum(), -expected)
    }
  }

  func testInsertGetUpdateRemove() {
    let map = OrderedBytesMap<Int>(minimumDegree: 2)
    XCTAssertNil(map.value(for: b("a")))
    XCTAssertNil(map.updateValue(1, for: b("a")))
    XCTAssertEqual(map.updateValue(2, for: b("a")), 1)
    XCTAssertEqual(map.value(for: b("a")), 2)
    XCTAssertEqual(map.count, 1)
    XCTAssertNil(map.removeValue(for: b("b")))
    XCTAssertEqual(map.removeValue(for: b("a")), 2)
    XCTAssertNil(map.value(for: b("a")))
    XCTAssertTrue(map.isEmpty)
    map.checkInvariants()
  }

  /// Random operations against a sorted-array model, for several node sizes, checking the tree's
  /// invariants, point lookups and ordered scans from random bounds along the way.
  func testRandomOperationsMatchSortedModel() {
    for degree in [2, 3, 4, 32] {
      var random = SplitMix64(seed: 0xB7EE_0000 + UInt64(degree))
      let map = OrderedBytesMap<UInt64>(minimumDegree: degree)
      var model: [(key: KVBytes, value: UInt64)] = []
      func modelIndex(_ key: KVBytes) -> (Int, Bool) {
        var low = 0
        var high = model.count
        while low < high {
          let middle = (low + high) / 2
          if bytesLess(model[middle].key, key) { low = middle + 1 } else { high = middle }
        }
        return (low, low < model.count && model[low].key == key)
      }
      // Small alphabet including 0x00 and 0xFF, short keys: many collisions and prefixes.
      let alphabet: [UInt8] = [0x00, 0x01, 0x61, 0x7F, 0x80, 0xFF]
      for step in 0..<6_000 {
        let key = (0..<(1 + random.below(4))).map { _ in alphabet[random.below(alphabet.count)] }
        let (index, found) = modelIndex(key)
        if random.below(3) == 0 {
          let removed = map.removeValue(for: key)
          XCTAssertEqual(removed, found ? model[index].value : nil)
          if found { model.remove(at: index) }
        } else {
          let value = random.next()
          let previous = map.updateValue(value, for: key)
          XCTAssertEqual(previous, found ? model[index].value : nil)
          if found { model[index].value = value } else { model.insert((key, value), at: index) }
        }
        XCTAssertEqual(map.count, model.count)
        if step % 100 == 0 {
          map.checkInvariants()
          var scanned: [(KVBytes, UInt64)] = []
          map.scan { key, value in
            scanned.append((key, value))
            return true
          }
          XCTAssertEqual(scanned.map(\.0), model.map(\.key), "degree \(degree) step \(step)")
          XCTAssertEqual(scanned.map(\.1), model.map(\.value))
          // Seek from a random bound, inclusive and exclusive, and stop after a few.
          let bound = (0..<random.below(3)).map { _ in alphabet[random.below(alphabet.count)] }
          for strictlyAfter in [false, true] {
            var seen: [KVBytes] = []
            map.scan(from: bound, strictlyAfter: strictlyAfter) { key, _ in
              seen.append(key)
              return seen.count < 5
            }
            let expected = model.map(\.key).filter {
              strictlyAfter ? bytesLess(bound, $0) : !bytesLess($0, bound)
            }.prefix(5)
            XCTAssertEqual(seen, Array(expected), "bound \(bound) strictlyAfter \(strictlyAfter)")
          }
        }
      }
      XCTAssertGreaterThan(model.count, 100, "the walk should grow a multi-level tree")
      for entry in model { XCTAssertEqual(map.value(for: entry.key), entry.value) }
      // Drain completely: exercises every merge and borrow path down to an empty root.
      for entry in model.reversed() where random.below(2) == 0 {
        XCTAssertEqual(map.removeValue(for: entry.key), entry.value)
        map.checkInvariants()
      }
      for entry in model { _ = map.removeValue(for: entry.key) }
      map.checkInvariants()
      XCTAssertTrue(map.isEmpty)
      XCTAssertNil(map.value(for: [0x61]))
    }
  }

  func testSequentialInsertsStayBalanced() {
    let map = OrderedBytesMap<Int>(minimumDegree: 4)
    for number in 0..<10_000 {
      var key = [UInt8](repeating: 0, count: 4)
      for shift in 0..<4 { key[3 - shift] = UInt8(truncatingIfNeeded: number >> (8 * shift)) }
      map.updateValue(number, for: key)
    }
    map.checkInvariants()
    var depth = 0
    var node = map.root
    while !node.isLeaf {
      node = node.children[0]
      depth += 1
    }
    // 10k keys with ≥ 4 children per internal node: depth ≤ log4(10k) ≈ 6.6.
    XCTAssertLessThanOrEqual(depth, 7)
    var previous = -1
    map.scan { _, value in
      XCTAssertEqual(value, previous + 1)
      previous = value
      return true
    }
    XCTAssertEqual(previous, 9_999)
  }
}
