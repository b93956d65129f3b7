@testable import KeyValueStore

/// SplitMix64: a tiny, seeded, portable generator so every random test replays from its seed.
struct SplitMix64 {
  private var state: UInt64

  init(seed: UInt64) {
    state = seed
  }

  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// Uniform-enough in 0..<bound for test purposes.
  mutating func below(_ bound: Int) -> Int {
    precondition(bound > 0)
    return Int(next() % UInt64(bound))
  }

  mutating func bytes(count: Int) -> [UInt8] {
    (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
  }
}

/// The UTF-8 bytes of a string literal.
func b(_ string: String) -> KVBytes {
  Array(string.utf8)
}

/// Ascending unsigned-byte order, the reference for the ordered map.
func bytesLess(_ left: KVBytes, _ right: KVBytes) -> Bool {
  left.lexicographicallyPrecedes(right)
}
