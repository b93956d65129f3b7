/// The consensus group types of the design Caucus implements (IoTDB's `TConsensusGroupType`).
public enum GroupType: UInt8, CaseIterable, Sendable, CustomStringConvertible {
  case dataRegion = 1
  case schemaRegion = 2
  case partitionRegion = 3

  public var name: String {
    switch self {
    case .dataRegion: return "DataRegion"
    case .schemaRegion: return "SchemaRegion"
    case .partitionRegion: return "PartitionRegion"
    }
  }

  public var description: String { name }

  public init?(name: some StringProtocol) {
    guard let match = GroupType.allCases.first(where: { $0.name == name }) else { return nil }
    self = match
  }
}

/// A consensus group id, written `DataRegion-1`: a type and a non-negative number.
public struct GroupID: Hashable, Comparable, Sendable, CustomStringConvertible, LosslessStringConvertible {
  public let type: GroupType
  public let number: UInt32

  public init(_ type: GroupType, _ number: UInt32) {
    self.type = type
    self.number = number
  }

  /// Parses `<GroupType>-<n>`; `n` is decimal digits only (no sign, no spaces), at most UInt32.
  public init?(_ text: String) {
    self.init(utf8: text.utf8)
  }

  /// Parses the UTF-8 bytes of `<GroupType>-<n>` (the gateway's hot path: no String work).
  /// Inlinable so callers in other modules get a specialized copy, not generic dispatch.
  @inlinable
  public init?(utf8 text: some BidirectionalCollection<UInt8>) {
    guard let dash = text.lastIndex(of: UInt8(ascii: "-")) else { return nil }
    let name = text[..<dash]
    guard let type = GroupType.allCases.first(where: { $0.name.utf8.elementsEqual(name) }) else { return nil }
    let digits = text[text.index(after: dash)...]
    // Canonical numbers only: `DataRegion-01` would name the same group as `DataRegion-1`.
    guard !digits.isEmpty, digits.count <= 10, digits.count == 1 || digits.first != UInt8(ascii: "0") else { return nil }
    var number: UInt64 = 0
    for digit in digits {
      guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { return nil }
      number = number * 10 + UInt64(digit - UInt8(ascii: "0"))
    }
    guard number <= UInt64(UInt32.max) else { return nil }
    self.init(type, UInt32(number))
  }

  public var description: String { "\(type.name)-\(number)" }

  /// A fixed-width form for on-disk and wire formats: type in the high 32 bits, number below.
  public var packed: UInt64 { UInt64(type.rawValue) << 32 | UInt64(number) }

  public init?(packed: UInt64) {
    guard packed >> 40 == 0, let type = GroupType(rawValue: UInt8(truncatingIfNeeded: packed >> 32)) else {
      return nil
    }
    self.init(type, UInt32(truncatingIfNeeded: packed))
  }

  public static func < (lhs: GroupID, rhs: GroupID) -> Bool {
    (lhs.type.rawValue, lhs.number) < (rhs.type.rawValue, rhs.number)
  }
}

/// A node id: a positive integer, unique in the cluster.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: UInt64

  public init(_ rawValue: UInt64) {
    precondition(rawValue > 0, "node ids are positive")
    self.rawValue = rawValue
  }

  public init?(parsing text: some StringProtocol) {
    guard let value = UInt64(text), value > 0 else { return nil }
    self.rawValue = value
  }

  public var description: String { String(rawValue) }
  public static func < (lhs: NodeID, rhs: NodeID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// `host:port` of a node's consensus (node-to-node) or client address.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
  public let host: String
  public let port: UInt16

  public init(host: String, port: UInt16) {
    self.host = host
    self.port = port
  }

  /// A host name is at most 255 bytes (DNS), and so is every host we accept.
  public static let hostBytesMax = 255

  /// Parses `host:port`: the host as `isHost` accepts it, the port 1...65535. Every endpoint that
  /// arrives from outside (a request body, a flag, a directory record) is parsed here.
  public init?(parsing text: some StringProtocol) {
    guard let colon = text.lastIndex(of: ":") else { return nil }
    let host = String(text[..<colon])
    guard Endpoint.isHost(host), let port = UInt16(text[text.index(after: colon)...]), port > 0 else { return nil }
    self.init(host: host, port: port)
  }

  /// A DNS name or IPv4 literal (letters, digits, `-` and `.`), or a bracketed IPv6 literal
  /// (`[` hex digits, `:` and `.` `]`), non-empty and at most `hostBytesMax` bytes. Hosts are put
  /// into URLs (`http://host:port/…`) and request lines, so nothing that could end the authority
  /// (`/`, `?`, `#`, `@`, spaces) may pass.
  public static func isHost(_ host: String) -> Bool {
    let bytes = Array(host.utf8)
    guard !bytes.isEmpty, bytes.count <= hostBytesMax else { return false }
    if bytes.first == UInt8(ascii: "[") {
      guard bytes.count > 2, bytes.last == UInt8(ascii: "]") else { return false }
      return bytes.dropFirst().dropLast().allSatisfy { byte in
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte | 0x20)
          || byte == UInt8(ascii: ":") || byte == UInt8(ascii: ".")
      }
    }
    return bytes.allSatisfy { byte in
      (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
        || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
    }
  }

  public var description: String { "\(host):\(port)" }
}

/// A member of a group: a node at its consensus endpoint.
public struct Peer: Hashable, Sendable, CustomStringConvertible {
  public let node: NodeID
  public let endpoint: Endpoint

  public init(node: NodeID, endpoint: Endpoint) {
    self.node = node
    self.endpoint = endpoint
  }

  public var description: String { "\(node)@\(endpoint)" }
}
