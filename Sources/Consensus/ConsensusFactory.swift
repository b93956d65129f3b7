/// What every protocol needs to start.
public struct ConsensusConfig: Sendable {
  public var localPeer: Peer
  public var dataDirectory: String
  public var registry: StateMachineRegistry
  /// Protocol-specific settings by name (for example `walSegmentBytes`); unknown names are ignored
  /// by protocols that do not use them.
  public var options: [String: String]

  public init(localPeer: Peer, dataDirectory: String, registry: StateMachineRegistry, options: [String: String] = [:]) {
    self.localPeer = localPeer
    self.dataDirectory = dataDirectory
    self.registry = registry
    self.options = options
  }
}

/// Reads a protocol's numeric option (`ConsensusConfig.options`), checked against its range.
/// Nil when the option is not given; an out-of-range or non-numeric value is refused with a
/// message naming the option and the range.
public func protocolOption(
  _ options: [String: String], _ name: String, _ range: ClosedRange<UInt64>
) throws(ConsensusError) -> UInt64? {
  guard let text = options[name] else { return nil }
  guard let value = UInt64(text), range.contains(value) else {
    throw .invalidRequest("option \(name)=\(text) must be an integer in \(range.lowerBound)...\(range.upperBound)")
  }
  return value
}

public enum ConsensusFactoryError: Error, Equatable, Sendable, CustomStringConvertible {
  case unknownProtocol(name: String, accepted: [String])
  case unavailable(name: String, reason: String)

  public var description: String {
    switch self {
    case .unknownProtocol(let name, let accepted):
      return "unknown consensus protocol '\(name)'; accepted names: \(accepted.joined(separator: ", "))"
    case .unavailable(let name, let reason):
      return "consensus protocol '\(name)' is not available: \(reason)"
    }
  }
}

/// Builds an engine from a configured name (IoTDB's `ConsensusFactory`). Protocols are registered
/// by value, so the wiring (the executable or an embedding program) decides which exist.
public struct ConsensusFactory: Sendable {
  public typealias Builder = @Sendable (ConsensusConfig) throws -> any ConsensusEngine

  private var builders: [String: Builder] = [:]
  private var aliases: [String: String] = [:]

  public init() {}

  /// Registers `name` and its aliases (IoTDB's class names). Names are matched exactly.
  public mutating func register(_ name: String, aliases: [String] = [], builder: @escaping Builder) {
    precondition(builders[name] == nil, "protocol \(name) registered twice")
    builders[name] = builder
    for alias in aliases { self.aliases[alias] = name }
  }

  /// Every name accepted, canonical names first.
  public var acceptedNames: [String] { builders.keys.sorted() + aliases.keys.sorted() }

  /// The canonical name for `name` or an alias of it.
  public func canonicalName(_ name: String) throws(ConsensusFactoryError) -> String {
    if builders[name] != nil { return name }
    if let canonical = aliases[name] { return canonical }
    throw .unknownProtocol(name: name, accepted: acceptedNames)
  }

  public func makeEngine(_ name: String, config: ConsensusConfig) throws -> any ConsensusEngine {
    let canonical = try canonicalName(name)
    return try builders[canonical]!(config)
  }
}

/// IoTDB's class names for the built-in protocols, accepted as aliases.
public enum IoTDBProtocolClassNames {
  public static let standalone = "org.apache.iotdb.consensus.standalone.StandAloneConsensus"
  public static let simple = "org.apache.iotdb.consensus.simple.SimpleConsensus"
  public static let ratis = "org.apache.iotdb.consensus.ratis.RatisConsensus"
}
