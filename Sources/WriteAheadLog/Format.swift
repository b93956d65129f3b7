import Checksum
// Byte layouts of segments, record frames and snapshots (see the format description at the top of
// WriteAheadLog.swift). Everything little-endian and fixed-width; pure functions over bytes.

enum SegmentFormat {
  static let magic: [UInt8] = Array("CAUCUSWL".utf8)
  /// Version 2 added sync markers (`FrameFormat.syncMarkerKind`). Version 1 segments (no markers)
  /// are still read; recovery applies version 1's stricter tail rule to them, and the log never
  /// appends to one (see `WriteAheadLog.recoverSegments`).
  static let version: UInt16 = 2
  static let versionOldestReadable: UInt16 = 1
  static let versionWithSyncMarkers: UInt16 = 2
  /// magic 8 | version u16 | reserved 6 (zero) | sequence u64 | reserved 8 (zero)
  static let headerBytes = 32
  static let filePrefix = "wal-"
  static let fileSuffix = ".log"
  static let temporarySuffix = ".tmp"

  static func fileName(sequence: UInt64) -> String {
    filePrefix + hex16(sequence) + fileSuffix
  }

  /// The sequence of a segment file name, nil if the name is not a segment's.
  static func sequence(fileName name: String) -> UInt64? {
    parseHex16(name, prefix: filePrefix, suffix: fileSuffix)
  }

  static func header(sequence: UInt64) -> [UInt8] {
    var bytes = magic
    appendLittleEndian(version, to: &bytes)
    bytes.append(contentsOf: [UInt8](repeating: 0, count: 6))
    appendLittleEndian(sequence, to: &bytes)
    bytes.append(contentsOf: [UInt8](repeating: 0, count: 8))
    precondition(bytes.count == headerBytes)
    return bytes
  }

  /// Checks a segment header; throws naming the file. Returns the segment's format version.
  @discardableResult
  static func checkHeader(_ bytes: UnsafeRawBufferPointer, file: String, sequence: UInt64)
    throws(WALError) -> UInt16
  {
    guard bytes.count >= headerBytes else {
      // Segments are created complete (temporary file, fsync, rename), so a short one was damaged.
      throw .corrupt(
        file: file, offset: 0,
        reason: "segment header incomplete: \(bytes.count) of \(headerBytes) bytes")
    }
    guard bytes.prefix(magic.count).elementsEqual(magic) else { throw .badMagic(file: file) }
    let version = readLittleEndian(bytes, at: 8, as: UInt16.self)
    guard (versionOldestReadable...Self.version).contains(version) else {
      throw .badVersion(file: file, found: version)
    }
    guard bytes[10..<16].allSatisfy({ $0 == 0 }) && bytes[24..<32].allSatisfy({ $0 == 0 }) else {
      throw .corrupt(file: file, offset: 10, reason: "reserved header bytes are not zero")
    }
    let found = readLittleEndian(bytes, at: 16, as: UInt64.self)
    guard found == sequence else {
      throw .corrupt(
        file: file, offset: 16, reason: "header says segment \(found), file name says \(sequence)")
    }
    return version
  }
}

enum FrameFormat {
  /// length u32 | crc32c u32
  static let headerBytes = 8
  /// kind u8 | group u64 | index u64 | term u64 (then the payload)
  static let recordFixedBytes = 25

  /// Kind byte of a sync marker: the log's own frame, never a `WALRecordKind` and never replayed.
  /// Group 0, index = the marker's own offset in its segment, term = the segment's sequence, no
  /// payload. It is written after a sync completed, with the next write to the segment, so finding
  /// it on disk proves every byte before it was synced (see `WriteAheadLog`, "Recovery").
  static let syncMarkerKind: UInt8 = 0xFF
  static let syncMarkerFrameBytes = headerBytes + recordFixedBytes

  /// Appends the frame of `record` to `buffer`. The caller checked the size against the limit.
  /// Hot path (every record written): the fixed fields are stored in place, no per-field appends.
  static func encode(_ record: WALRecord, into buffer: inout [UInt8], recordBytesMax: UInt32) {
    precondition(
      record.recordBytes <= Int(recordBytesMax), "record larger than recordBytesMax reached encode")
    encodeFrame(
      kind: record.kind.rawValue, group: record.group, index: record.index, term: record.term,
      payload: record.payload, into: &buffer)
  }

  /// Appends a sync marker for offset `offset` of segment `sequence` to `buffer`; `offset` is where
  /// the marker will lie in the segment.
  static func encodeSyncMarker(offset: UInt64, sequence: UInt64, into buffer: inout [UInt8]) {
    precondition(offset >= UInt64(SegmentFormat.headerBytes), "a marker follows the header")
    encodeFrame(
      kind: syncMarkerKind, group: 0, index: offset, term: sequence, payload: [], into: &buffer)
  }

  private static func encodeFrame(
    kind: UInt8, group: UInt64, index: UInt64, term: UInt64, payload: [UInt8],
    into buffer: inout [UInt8]
  ) {
    let recordBytes = recordFixedBytes + payload.count
    let start = buffer.count
    buffer.append(contentsOf: repeatElement(0, count: headerBytes + recordFixedBytes))
    buffer.append(contentsOf: payload)
    precondition(buffer.count - start == headerBytes + recordBytes, "frame size")
    buffer.withUnsafeMutableBytes { raw in
      let body = start + headerBytes
      raw.storeBytes(of: UInt32(recordBytes).littleEndian, toByteOffset: start, as: UInt32.self)
      raw.storeBytes(of: kind, toByteOffset: body, as: UInt8.self)
      raw.storeBytes(of: group.littleEndian, toByteOffset: body + 1, as: UInt64.self)
      raw.storeBytes(of: index.littleEndian, toByteOffset: body + 9, as: UInt64.self)
      raw.storeBytes(of: term.littleEndian, toByteOffset: body + 17, as: UInt64.self)
      let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[body..<(body + recordBytes)]))
      raw.storeBytes(of: crc.littleEndian, toByteOffset: start + 4, as: UInt32.self)
    }
  }

  /// A decoded frame: the record's fixed fields, where its payload lies, and where the next frame
  /// starts.
  struct Frame {
    var kind: WALRecordKind
    var group: UInt64
    var index: UInt64
    var term: UInt64
    var payload: Range<Int>
    var next: Int
  }

  /// A decoded sync marker's fields, and where the next frame starts.
  struct SyncMarker {
    var group: UInt64
    var offset: UInt64
    var sequence: UInt64
    var next: Int

    /// Whether this marker was written where it was found, in this segment: a copy elsewhere (a
    /// stale block, a payload that holds a frame) proves nothing about what precedes it.
    func isGenuine(at found: Int, sequence segment: UInt64) -> Bool {
      group == 0 && offset == UInt64(found) && sequence == segment
    }
  }

  enum Decoding {
    case valid(Frame)
    /// CRC-valid sync marker; whether it belongs where it was found is `SyncMarker.isGenuine`.
    case syncMarker(SyncMarker)
    /// Damaged or incomplete: a torn tail if nothing valid follows, corruption otherwise.
    case invalid(reason: String)
    /// CRC-valid but of a kind this build does not know: never a torn write.
    case unknownKind(UInt8)
    /// CRC-valid, whole, but longer than recordBytesMax (the limit was lowered): never a torn write.
    case oversized(length: UInt32)
  }

  /// Whether a genuine sync marker of segment `sequence` starts at `offset`. The cheap checks
  /// (length, kind, offset field) come first: recovery tries every byte offset of a damaged tail.
  static func isGenuineSyncMarker(
    _ bytes: UnsafeRawBufferPointer, at offset: Int, end: Int, sequence: UInt64
  ) -> Bool {
    guard offset + syncMarkerFrameBytes <= end,
      readLittleEndian(bytes, at: offset, as: UInt32.self) == UInt32(recordFixedBytes),
      bytes[offset + headerBytes] == syncMarkerKind,
      readLittleEndian(bytes, at: offset + headerBytes + 9, as: UInt64.self) == UInt64(offset)
    else {
      return false
    }
    let decoding = decode(bytes, at: offset, end: end, recordBytesMax: UInt32(recordFixedBytes))
    guard case .syncMarker(let marker) = decoding else { return false }
    return marker.isGenuine(at: offset, sequence: sequence)
  }

  /// Decodes the frame at `offset`, reading nothing at or past `end`.
  static func decode(
    _ bytes: UnsafeRawBufferPointer, at offset: Int, end: Int, recordBytesMax: UInt32
  ) -> Decoding {
    precondition(offset >= 0 && offset <= end, "decode offset outside the buffer")
    precondition(end <= bytes.count, "decode end outside the buffer")
    let remaining = end - offset
    guard remaining >= headerBytes else {
      return .invalid(reason: "incomplete frame header: \(remaining) of \(headerBytes) bytes")
    }
    let length = readLittleEndian(bytes, at: offset, as: UInt32.self)
    guard length >= UInt32(recordFixedBytes) else {
      return .invalid(reason: "record length \(length) is below the minimum \(recordFixedBytes)")
    }
    guard Int(length) <= remaining - headerBytes else {
      if length > recordBytesMax {
        return .invalid(reason: "record length \(length) exceeds recordBytesMax \(recordBytesMax)")
      }
      return .invalid(
        reason: "incomplete record: length \(length), \(remaining - headerBytes) bytes present")
    }
    let recordStart = offset + headerBytes
    let recordEnd = recordStart + Int(length)
    let stored = readLittleEndian(bytes, at: offset + 4, as: UInt32.self)
    let computed = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[recordStart..<recordEnd]))
    guard length <= recordBytesMax else {
      // A whole, CRC-valid record over the limit was written, not torn: the limit was lowered.
      if stored == computed { return .oversized(length: length) }
      return .invalid(reason: "record length \(length) exceeds recordBytesMax \(recordBytesMax)")
    }
    guard stored == computed else {
      return .invalid(reason: "CRC mismatch: stored \(hex8(stored)), computed \(hex8(computed))")
    }
    let kindByte = bytes[recordStart]
    if kindByte == syncMarkerKind {
      guard length == UInt32(recordFixedBytes) else {
        return .invalid(reason: "sync marker with a payload (record length \(length))")
      }
      return .syncMarker(
        SyncMarker(
          group: readLittleEndian(bytes, at: recordStart + 1, as: UInt64.self),
          offset: readLittleEndian(bytes, at: recordStart + 9, as: UInt64.self),
          sequence: readLittleEndian(bytes, at: recordStart + 17, as: UInt64.self),
          next: recordEnd))
    }
    guard let kind = WALRecordKind(rawValue: kindByte) else { return .unknownKind(kindByte) }
    let frame = Frame(
      kind: kind,
      group: readLittleEndian(bytes, at: recordStart + 1, as: UInt64.self),
      index: readLittleEndian(bytes, at: recordStart + 9, as: UInt64.self),
      term: readLittleEndian(bytes, at: recordStart + 17, as: UInt64.self),
      payload: (recordStart + recordFixedBytes)..<recordEnd,
      next: recordEnd)
    // Read back: the frame is exactly header + length and lies inside the scanned range.
    precondition(frame.next - offset == headerBytes + Int(length), "decoded frame size")
    precondition(
      frame.payload.count == Int(length) - recordFixedBytes && frame.next <= end, "decoded payload")
    return .valid(frame)
  }
}

enum SnapshotFormat {
  static let magic: [UInt8] = Array("CAUCUSSN".utf8)
  static let version: UInt16 = 1
  /// magic 8 | version u16 | reserved 6 (zero) | body length u64 | crc32c u32 of the body | reserved 4
  static let headerBytes = 32
  /// group u64 | index u64 | term u64 (then the data)
  static let bodyFixedBytes = 24
  static let filePrefix = "snapshot-"
  static let fileSuffix = ".snap"

  static func fileName(group: UInt64) -> String { filePrefix + hex16(group) + fileSuffix }

  static func group(fileName name: String) -> UInt64? {
    parseHex16(name, prefix: filePrefix, suffix: fileSuffix)
  }

  /// Header plus the body's fixed fields; the data follows them in the file.
  static func encodePrefix(_ snapshot: WALSnapshot) -> [UInt8] {
    var fixed: [UInt8] = []
    fixed.reserveCapacity(bodyFixedBytes)
    appendLittleEndian(snapshot.group, to: &fixed)
    appendLittleEndian(snapshot.index, to: &fixed)
    appendLittleEndian(snapshot.term, to: &fixed)
    let crc = snapshot.data.withUnsafeBytes { data in
      CRC32C.checksum(data, continuing: fixed.withUnsafeBytes { CRC32C.checksum($0) })
    }
    var bytes = magic
    appendLittleEndian(version, to: &bytes)
    bytes.append(contentsOf: [UInt8](repeating: 0, count: 6))
    appendLittleEndian(UInt64(bodyFixedBytes + snapshot.data.count), to: &bytes)
    appendLittleEndian(crc, to: &bytes)
    bytes.append(contentsOf: [UInt8](repeating: 0, count: 4))
    precondition(bytes.count == headerBytes, "snapshot header size")
    bytes.append(contentsOf: fixed)
    return bytes
  }
}

// MARK: - Little-endian helpers

@inline(__always)
func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to buffer: inout [UInt8]) {
  withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
}

@inline(__always)
func readLittleEndian<T: FixedWidthInteger>(
  _ bytes: UnsafeRawBufferPointer, at offset: Int, as type: T.Type
) -> T {
  precondition(
    offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "read outside the buffer")
  return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
}

func hex16(_ value: UInt64) -> String {
  let digits = String(value, radix: 16)
  return String(repeating: "0", count: 16 - digits.count) + digits
}

func hex8(_ value: UInt32) -> String {
  let digits = String(value, radix: 16)
  return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
}

/// `prefix` + exactly 16 lowercase hex digits + `suffix` → the number; anything else → nil.
func parseHex16(_ name: String, prefix: String, suffix: String) -> UInt64? {
  guard name.hasPrefix(prefix), name.hasSuffix(suffix) else { return nil }
  let digits = name.dropFirst(prefix.count).dropLast(suffix.count)
  guard digits.count == 16,
    digits.allSatisfy({ ("0"..."9").contains($0) || ("a"..."f").contains($0) })
  else {
    return nil
  }
  return UInt64(digits, radix: 16)
}
