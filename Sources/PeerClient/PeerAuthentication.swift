import Glibc
import Platform

/// The cluster secret's proof on node-to-node requests (issue 12, peer authentication).
///
/// With a secret configured, every request a node sends another (Raft batches, group operations,
/// `GET /v1/node`, forwarded client requests, a joining node's registration) carries
///
///     X-Caucus-Peer: v2 node=<sender id> ts=<unix ms> mac=<hex HMAC-SHA256>
///
/// over `caucus-peer-v2\n<METHOD>\n<target>\n<node>\n<ts>\n<identity>\n<body>` keyed with the
/// secret, where `<identity>` is the request's `X-Caucus-Identity` (the client a relaying node
/// admitted; empty when absent). The consensus port refuses any request without a valid one
/// (`401 unauthorized`, logged). The secret itself never travels; the MAC covers the body and
/// the identity, so neither a batch nor whose request a relayed one is can be altered in flight
/// (v1 left the identity out: a captured relay could be replayed as another token's); and a
/// request older (or newer) than `clockSkewMsMax` is refused, which bounds replays to that
/// window. Within it a captured request can be replayed unchanged on a plaintext network: TLS on
/// the consensus port closes that.
public struct PeerAuthenticator: Sendable {
  /// The header, lowercased as the HTTP parser hands names over.
  public static let headerName = "x-caucus-peer"
  /// How far a request's timestamp may be from the receiver's clock. Nodes of a cluster keep
  /// their clocks within seconds (NTP); a replay is possible only within this window.
  public static let clockSkewMsMax: UInt64 = 300_000
  /// The shortest secret accepted: 128 bits (`openssl rand -hex 32` gives 256).
  public static let secretBytesMin = 16
  /// The longest: a secret is a key, not a document.
  public static let secretBytesMax = 1_024

  private let secret: [UInt8]
  /// The id this node signs as.
  public let node: UInt64

  public init(secret: [UInt8], node: UInt64) throws(PeerAuthenticationError) {
    guard secret.count >= Self.secretBytesMin, secret.count <= Self.secretBytesMax else {
      throw .badSecret(
        "the cluster secret has \(secret.count) bytes; it needs \(Self.secretBytesMin) to \(Self.secretBytesMax) "
          + "(generate one with: openssl rand -hex 32)")
    }
    precondition(node != 0, "a node id")
    self.secret = secret
    self.node = node
  }

  /// Reads the secret from `path`: its content without surrounding whitespace (a trailing newline).
  public static func secret(fromFile path: String) throws(PeerAuthenticationError) -> [UInt8] {
    let bytes: [UInt8]
    do {
      bytes = try FileSystem.readFile(path)
    } catch {
      throw .badSecret("cannot read the cluster secret file \(path): \(error)")
    }
    var secret = ArraySlice(bytes)
    while let first = secret.first, Self.isWhitespace(first) { secret.removeFirst() }
    while let last = secret.last, Self.isWhitespace(last) { secret.removeLast() }
    return Array(secret)
  }

  private static func isWhitespace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }

  /// The header a relaying node names its client's token in; the MAC covers it.
  public static let identityHeaderName = "x-caucus-identity"

  /// The header value for a request this node sends at `nowMs` (wall clock, ms since the epoch);
  /// `identity`: its `X-Caucus-Identity`, when it has one.
  public func headerValue(method: String, target: String, identity: String?, body: [UInt8], nowMs: UInt64) -> String {
    let code = mac(method: method, target: target, node: node, timestamp: nowMs, identity: identity, body: body)
    return "\(Self.version) node=\(node) ts=\(nowMs) mac=\(Hex.encode(code))"
  }

  /// Checks a received request's header against its method, target, `X-Caucus-Identity` (nil when
  /// absent) and body; the sender's node id when it holds.
  public func verify(
    method: String, target: String, headerValue: String?, identity: String?, body: [UInt8], nowMs: UInt64
  ) -> Result<UInt64, PeerAuthenticationError> {
    guard let headerValue else { return .failure(.missing) }
    let fields = headerValue.split(separator: " ")
    guard fields.count == 4, fields[0] == Self.version, fields[1].hasPrefix("node="), fields[2].hasPrefix("ts="),
      fields[3].hasPrefix("mac="), let sender = UInt64(fields[1].dropFirst(5)), sender != 0,
      let timestamp = UInt64(fields[2].dropFirst(3)), let code = Hex.decode(fields[3].dropFirst(4)),
      code.count == HMACSHA256.codeBytes
    else { return .failure(.malformed) }
    let skew = timestamp > nowMs ? timestamp - nowMs : nowMs - timestamp
    guard skew <= Self.clockSkewMsMax else { return .failure(.clockSkew(ms: skew)) }
    let expected = mac(method: method, target: target, node: sender, timestamp: timestamp, identity: identity, body: body)
    guard constantTimeEquals(code, expected) else { return .failure(.badCode) }
    return .success(sender)
  }

  /// The proof's version: the first field of the header and part of what the MAC covers.
  static let version = "v2"

  private func mac(method: String, target: String, node: UInt64, timestamp: UInt64, identity: String?, body: [UInt8]) -> [UInt8] {
    var code = HMACSHA256.Incremental(key: secret)
    // Newlines cannot occur in a method, a target or a header value, so the fields cannot run
    // into one another.
    code.update(Array("caucus-peer-\(Self.version)\n\(method)\n\(target)\n\(node)\n\(timestamp)\n\(identity ?? "")\n".utf8))
    code.update(body)
    return code.finalize()
  }

  /// The wall clock in milliseconds since the epoch: what the timestamps count.
  public static func wallClockMilliseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return UInt64(spec.tv_sec) &* 1_000 &+ UInt64(spec.tv_nsec) / 1_000_000
  }

  /// The request target (path and query) of an absolute `http(s)://authority/target` URL.
  public static func target(ofURL url: String) -> String {
    guard let scheme = url.firstRange(of: "://") else { return url }
    guard let slash = url[scheme.upperBound...].firstIndex(of: "/") else { return "/" }
    return String(url[slash...])
  }
}

public enum PeerAuthenticationError: Error, Equatable, Sendable, CustomStringConvertible {
  case badSecret(String)
  case missing
  case malformed
  case clockSkew(ms: UInt64)
  case badCode

  public var description: String {
    switch self {
    case .badSecret(let reason): return reason
    case .missing: return "no X-Caucus-Peer header: the sender has no cluster secret"
    case .malformed: return "a malformed X-Caucus-Peer header"
    case .clockSkew(let ms):
      return "the request's timestamp is \(ms) ms from this node's clock (at most \(PeerAuthenticator.clockSkewMsMax))"
    case .badCode:
      return "the X-Caucus-Peer code does not match: the sender has another cluster secret, or the request was altered"
    }
  }
}
