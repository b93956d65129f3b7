/// One node-to-node HTTP request. Value type: it crosses from the sending thread to the worker.
public struct PeerRequest: Sendable {
  /// `GET`, `HEAD`, `POST`, `PUT`, `DELETE`, `PATCH` or any other token (sent as is).
  public var method: String
  /// Absolute `http://host:port/target` URL (sent as `https://` by a client configured with TLS).
  public var url: String
  /// Extra request headers, sent in order. `Content-Length` is set from `body`; an empty `Expect:`
  /// is always added so large bodies are not held back waiting for `100 Continue`.
  public var headers: [(name: String, value: String)]
  /// Sent verbatim (binary-safe) for every method but GET and HEAD; POST, PUT and PATCH send it
  /// even when empty (`Content-Length: 0`).
  public var body: [UInt8]
  /// Whole request deadline, counted from `send` (time waiting in the queue included); nil takes
  /// the client's `timeoutMs`.
  public var timeoutMs: Int?
  /// TCP connect deadline (only when no kept-alive connection can be reused); nil takes the
  /// client's `connectTimeoutMs`.
  public var connectTimeoutMs: Int?

  public init(
    method: String, url: String, headers: [(name: String, value: String)] = [], body: [UInt8] = [],
    timeoutMs: Int? = nil, connectTimeoutMs: Int? = nil
  ) {
    self.method = method
    self.url = url
    self.headers = headers
    self.body = body
    self.timeoutMs = timeoutMs
    self.connectTimeoutMs = connectTimeoutMs
  }

  /// A request to `http://host:port` + `target` (`target` starts with `/`, percent-encoded).
  public init(
    method: String, host: String, port: UInt16, target: String,
    headers: [(name: String, value: String)] = [], body: [UInt8] = [],
    timeoutMs: Int? = nil, connectTimeoutMs: Int? = nil
  ) {
    let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    self.init(
      method: method, url: "http://\(authority)\(target)", headers: headers, body: body,
      timeoutMs: timeoutMs, connectTimeoutMs: connectTimeoutMs)
  }
}

/// A complete response. Any HTTP status is a response, not an error: 4xx/5xx are the caller's
/// to interpret.
public struct PeerResponse: Sendable {
  public var status: Int
  /// Header names lowercased ASCII, values trimmed, in arrival order (final response only, never
  /// the headers of an interim `100 Continue`).
  public var headers: [(name: String, value: String)]
  public var body: [UInt8]

  public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
    self.status = status
    self.headers = headers
    self.body = body
  }

  /// The first value of header `name` (give it lowercased).
  public func header(_ name: String) -> String? {
    headers.first(where: { $0.name == name })?.value
  }
}

/// Why a request produced no response.
public enum PeerError: Error, Sendable, Equatable, CustomStringConvertible {
  /// No connection to the peer: refused, unreachable, name not resolved, the connect did not
  /// finish within the connect timeout, or the TLS handshake failed (the message says why: an
  /// untrusted certificate, say). The peer is likely down or misconfigured; nothing was sent (a
  /// connect that fails after the request went out on an earlier, kept-alive connection is
  /// `transport`).
  case connectFailed(String)
  /// The request's deadline passed after connecting (the peer may have processed it).
  case timeout(String)
  /// The response body (or its announced Content-Length) exceeded `responseBytesMax`.
  case tooLarge(bytesMax: Int)
  /// `queuedRequestsMax` requests were already waiting: refused at once, nothing was sent.
  case overloaded(queuedRequestsMax: Int)
  /// The client is shutting down or shut down; the request was not completed.
  case shuttingDown
  /// The request could not be built (bad URL, method or header).
  case invalidRequest(String)
  /// Any other libcurl failure, with curl's message (connection reset, malformed response, …).
  case transport(String)

  public var description: String {
    switch self {
    case .connectFailed(let message): return "peer connect failed: \(message)"
    case .timeout(let message): return "peer request timed out: \(message)"
    case .tooLarge(let bytesMax):
      return "peer response larger than responseBytesMax (\(bytesMax) bytes)"
    case .overloaded(let queuedRequestsMax):
      return
        "peer client overloaded: \(queuedRequestsMax) requests already queued (queuedRequestsMax)"
    case .shuttingDown: return "peer client is shutting down"
    case .invalidRequest(let message): return "invalid peer request: \(message)"
    case .transport(let message): return "peer transport error: \(message)"
    }
  }
}

/// Counters for metrics; every field only grows.
public struct PeerClientStatistics: Sendable, Equatable {
  /// Requests accepted by `send` (not refused as overloaded, shutting down or invalid).
  public var requestsAcceptedTotal = 0
  /// Requests refused at once by `send` (`.overloaded`).
  public var requestsRefusedTotal = 0
  /// Transfers handed to libcurl.
  public var requestsStartedTotal = 0
  /// Requests that ended with a response (any status).
  public var requestsCompletedTotal = 0
  /// Accepted requests that ended with an error (including `.shuttingDown`).
  public var requestsFailedTotal = 0
  /// New TCP connections opened (sum of CURLINFO_NUM_CONNECTS).
  public var connectionsOpenedTotal = 0
  /// Completed transfers that ran on a kept-alive connection (opened none).
  public var connectionsReusedTotal = 0

  public init() {}
}
