// TEMPORARY stub until the wal branch merges.
public struct WALOptions: Sendable { public var segmentBytesMax: UInt64 = 64 << 20; public var recordBytesMax: UInt32 = 16 << 20; public init() {} }
public enum WALRecordKind: UInt8, Sendable { case entry = 1, hardState = 2, groupCreated = 3, groupDeleted = 4 }
public struct WALRecord: Sendable, Equatable { public var kind: WALRecordKind; public var group: UInt64; public var index: UInt64; public var term: UInt64; public var payload: [UInt8]
  public init(kind: WALRecordKind, group: UInt64, index: UInt64, term: UInt64, payload: [UInt8]) { self.kind = kind; self.group = group; self.index = index; self.term = term; self.payload = payload } }
public struct WALSnapshot: Sendable, Equatable { public var group: UInt64; public var index: UInt64; public var term: UInt64; public var data: [UInt8]
  public init(group: UInt64, index: UInt64, term: UInt64, data: [UInt8]) { self.group = group; self.index = index; self.term = term; self.data = data } }
public struct WALStatistics: Sendable { public static let syncLatencyBucketBounds: [Double] = []; public var recordsAppended: UInt64 = 0; public var bytesAppended: UInt64 = 0; public var syncs: UInt64 = 0; public var syncNanosecondsTotal: UInt64 = 0; public var syncLatencyBuckets: [UInt64] = []; public var segments = 0; public init() {} }
public final class WriteAheadLog {
  public init(directory: String, options: WALOptions = .init()) throws {}
  public func replay(_ visit: (WALRecord) throws -> Void) throws {}
  public func append(_ records: [WALRecord]) throws {}
  public func sync() throws {}
  public func writeSnapshot(_ snapshot: WALSnapshot) throws {}
  public func loadSnapshot(group: UInt64) throws -> WALSnapshot? { nil }
  public func deleteSnapshot(group: UInt64) throws {}
  public func snapshotGroups() throws -> [UInt64] { [] }
  public func releaseSegments(coveredIndex: [UInt64: UInt64]) throws -> Int { 0 }
  public var statistics: WALStatistics { .init() }
  public func close() throws {}
}
