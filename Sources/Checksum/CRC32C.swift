/// CRC-32C (Castagnoli; reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF),
/// the checksum of every WAL record and snapshot and of the key-value store's snapshots. Table-driven slicing-by-8: eight bytes per step
/// through eight 256-entry tables, since it runs over every byte the log writes and reads.
/// Check value: crc32c("123456789") == 0xE3069283.
public enum CRC32C {
  /// The reflected Castagnoli polynomial.
  public static let polynomial: UInt32 = 0x82F6_3B78

  /// 8 tables of 256 entries, flat: table k at [k * 256 ..< (k + 1) * 256].
  /// Table 0 is the classic byte-at-a-time table; table k advances a byte through k more zero bytes.
  static let tables: [UInt32] = {
    var tables = [UInt32](repeating: 0, count: 8 * 256)
    for byte in 0..<256 {
      var crc = UInt32(byte)
      for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ polynomial : crc >> 1 }
      tables[byte] = crc
    }
    for table in 1..<8 {
      for byte in 0..<256 {
        let previous = tables[(table - 1) * 256 + byte]
        tables[table * 256 + byte] = (previous >> 8) ^ tables[Int(previous & 0xFF)]
      }
    }
    return tables
  }()

  /// The CRC-32C of `bytes`, continuing from `crc` (the result of a previous call over the bytes
  /// before these; 0 to start).
  public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32
  {
    update(crc: crc, bytes)
  }

  /// The CRC-32C of a byte array.
  public static func checksum(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0) }
  }

  /// The CRC-32C of `bytes[range]`.
  public static func checksum(_ bytes: [UInt8], range: Range<Int>) -> UInt32 {
    precondition(range.lowerBound >= 0, "checksum range starts before the buffer")
    precondition(range.upperBound <= bytes.count, "checksum range ends after the buffer")
    return bytes.withUnsafeBytes { checksum(UnsafeRawBufferPointer(rebasing: $0[range])) }
  }

  static func update(crc initial: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return initial }
    return tables.withUnsafeBufferPointer { table in
      var crc = ~initial
      var offset = 0
      let count = bytes.count
      // Eight bytes per step, little-endian load (unaligned loads are fine on every target).
      while count - offset >= 8 {
        let word =
          UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
          ^ UInt64(crc)
        let low = UInt32(truncatingIfNeeded: word)
        let high = UInt32(truncatingIfNeeded: word >> 32)
        crc =
          table[7 * 256 + Int(low & 0xFF)]
          ^ table[6 * 256 + Int((low >> 8) & 0xFF)]
          ^ table[5 * 256 + Int((low >> 16) & 0xFF)]
          ^ table[4 * 256 + Int(low >> 24)]
          ^ table[3 * 256 + Int(high & 0xFF)]
          ^ table[2 * 256 + Int((high >> 8) & 0xFF)]
          ^ table[1 * 256 + Int((high >> 16) & 0xFF)]
          ^ table[Int(high >> 24)]
        offset += 8
      }
      while offset < count {
        let byte = base.load(fromByteOffset: offset, as: UInt8.self)
        crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
        offset += 1
      }
      return ~crc
    }
  }
}
