// TEMPORARY stub until the kv branch merges.
public enum KVCodec {
  public static func encode(_: KVCommand) -> [UInt8] { [] }
  public static func decodeCommand(_: [UInt8]) throws -> KVCommand { fatalError() }
  public static func encode(_: KVWriteOutcome) -> [UInt8] { [] }
  public static func decodeWriteOutcome(_: [UInt8]) throws -> KVWriteOutcome { fatalError() }
  public static func encode(queries: [KVQuery]) -> [UInt8] { [] }
  public static func decodeQueries(_: [UInt8]) throws -> [KVQuery] { fatalError() }
  public static func encode(results: [KVQueryResult]) -> [UInt8] { [] }
  public static func decodeQueryResults(_: [UInt8]) throws -> [KVQueryResult] { fatalError() }
}
import Consensus
public final class KeyValueStateMachine: StateMachine {
  public init(idempotencyEntriesMax: Int = 0) {}
  public func apply(index: UInt64, command: [UInt8]) -> [UInt8] { [] }
  public func query(_ request: [UInt8]) -> [UInt8] { [] }
  public func takeSnapshot() -> [UInt8] { [] }
  public func restore(snapshot: [UInt8]) throws {}
}
