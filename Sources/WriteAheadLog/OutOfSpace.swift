import Platform

// What the engines share about a full data directory (`WALError.isOutOfSpace`): the probe that
// tells them space has returned, and the metrics that show it.

/// Tells whether a file system that ran out of space has room again, by writing and deleting a
/// file in it. Statistics of free blocks would not do: the simulated disk has none, quotas and
/// reserved blocks make them lie, and the write is what the log will do next anyway.
public enum SpaceProbe {
  /// The probe's file, in the log's directory (`WriteAheadLog` recovery ignores it; a probe
  /// interrupted by a crash is truncated by the next one and deleted).
  public static let fileName = "space-probe.tmp"
  /// The probe writes in pieces of this size, so its buffer stays small whatever it checks for.
  static let writeBytesMax = 64 << 10

  /// Writes `bytes` zero bytes to `directory/space-probe.tmp`, then deletes the file. Throws the
  /// failure (`isOutOfSpace` while the file system is still full). The file is deleted on failure
  /// too, so a probe never keeps the space it found.
  public static func check(directory: String, bytes: Int, fileStore: any FileStore) throws(WALError) {
    precondition(bytes > 0, "a probe checks for some room")
    let path = directory + "/" + fileName
    do throws(SystemError) {
      try fileStore.makeDirectories(directory, durable: false)
      let file = try fileStore.open(path, mode: .writeCreateTruncate)
      defer { try? file.close() }
      let piece = [UInt8](repeating: 0, count: min(bytes, writeBytesMax))
      var written = 0
      while written < bytes {
        let length = min(piece.count, bytes - written)
        try file.write(all: length == piece.count ? piece : Array(piece[..<length]), at: UInt64(written))
        written += length
      }
      precondition(written == bytes, "the probe wrote what it checks for")
    } catch {
      try? fileStore.unlink(path)
      throw .io(error)
    }
    do throws(SystemError) {
      try fileStore.unlink(path)
    } catch {
      throw .io(error)
    }
  }
}

/// An engine's record of running out of space, for `/metrics`.
public struct OutOfSpaceStatistics: Sendable, Equatable {
  /// Writes are refused now because the data directory is full.
  public var outOfSpace = false
  /// Times storage ran out of space (each answered in-flight writes and stopped taking new ones).
  public var failures: UInt64 = 0
  /// Times the engine reopened its storage after space returned, without a restart.
  public var recoveries: UInt64 = 0

  public init() {}

  public func prometheusText() -> String {
    var text = Prometheus.metric(
      "caucus_storage_out_of_space", help: "1 while the data directory is full and writes are refused, else 0.",
      outOfSpace ? 1 : 0, type: "gauge")
    text += Prometheus.metric(
      "caucus_storage_out_of_space_failures_total",
      help: "Times storage ran out of space (ENOSPC or EDQUOT) and the engine stopped taking writes.", failures)
    text += Prometheus.metric(
      "caucus_storage_out_of_space_recoveries_total",
      help: "Times the engine reopened its storage after space returned, without a restart.", recoveries)
    return text
  }
}
