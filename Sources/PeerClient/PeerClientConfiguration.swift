import Glibc

/// How the peer client speaks TLS: libcurl's own TLS (OpenSSL), configured here.
public struct PeerTLSConfiguration: Sendable, Equatable {
  /// The cluster CA (PEM): every peer's certificate must chain to it and name the host of the URL
  /// (libcurl's VERIFYPEER and VERIFYHOST 2); no other CA is trusted, not the system's.
  public var caCertificateFile: String
  /// This node's certificate (PEM) and its key, presented to peers that ask for one (those that
  /// require client certificates). Both or neither.
  public var clientCertificateFile: String?
  public var clientKeyFile: String?

  public init(caCertificateFile: String, clientCertificateFile: String? = nil, clientKeyFile: String? = nil) {
    self.caCertificateFile = caCertificateFile
    self.clientCertificateFile = clientCertificateFile
    self.clientKeyFile = clientKeyFile
  }
}

/// Everything the peer client bounds, with the reasoning for each default. Units are last in every
/// name. `validate()` runs in `PeerClient.init`.
public struct PeerClientConfiguration: Sendable, Equatable {
  /// Requests accepted by `send` but not yet handed to libcurl; one more is refused at once with
  /// `.overloaded`. A node sends one Raft batch per destination per loop turn plus forwarded
  /// client requests; a queue this deep means the peers are not keeping up, and failing fast lets
  /// callers shed load instead of piling up memory (each queued request holds its body).
  public var queuedRequestsMax: Int = 4_096
  /// Transfers running at once in the multi handle. Beyond it requests wait in the queue.
  /// One worker thread serves them all; 256 covers a fan-out to every node of a large cluster
  /// plus forwarded requests, while bounding buffers (each transfer holds its response).
  public var concurrentTransfersMax: Int = 256
  /// Open connections to one host:port at most (CURLMOPT_MAX_HOST_CONNECTIONS). Transfers over it
  /// wait inside libcurl for a connection (their timeout keeps running). Node-to-node traffic is a
  /// few streams per peer; 16 keeps concurrency without exhausting the peer's connection limit.
  public var connectionsPerHostMax: Int = 16
  /// Idle kept-alive connections cached for reuse, over all hosts (CURLMOPT_MAXCONNECTS); the
  /// least recently used beyond it are closed. Enough for `connectionsPerHostMax` to a few peers.
  public var idleConnectionsMax: Int = 64
  /// A kept-alive connection idle longer than this is not reused but closed (CURLOPT_MAXAGE_CONN,
  /// whole seconds). Below our HTTP server's 60 s `idleTimeoutMs`, so the client never picks a
  /// connection the peer is about to close (a request racing the peer's close would fail).
  public var connectionIdleSecondsMax: Int = 50
  /// Response body bytes accepted per request; a larger body (or announced Content-Length) aborts
  /// the transfer with `.tooLarge`. Snapshot chunks and Raft batches are bounded well below this;
  /// the limit stops a confused or hostile peer from exhausting memory.
  public var responseBytesMax: Int = 64 * 1024 * 1024
  /// Default whole-request deadline (queue time included) when a request sets none. Raft messages
  /// are worthless after a few election timeouts; forwarded client requests should fail before the
  /// client's own timeout.
  public var timeoutMs: Int = 5_000
  /// Default TCP connect deadline. A dead peer must fail fast so callers can try another node:
  /// loopback and LAN connects take well under a millisecond, so one second is generous.
  public var connectTimeoutMs: Int = 1_000
  /// Easy handles kept for reuse after their transfer (saves re-allocating curl state per request).
  public var idleHandlesMax: Int = 64
  /// TLS for every request (nil: plaintext HTTP). One switch for the whole client, as for the
  /// node: when its ports speak TLS, so do its peers'. Every request then goes over `https://`, a
  /// URL given as `http://` included (callers build URLs from `host:port` endpoints without
  /// knowing), libcurl refuses any plaintext protocol, and TLS 1.2 is the oldest accepted.
  public var tls: PeerTLSConfiguration? = nil

  public init() {}

  /// Checks every limit is positive and coherent; the message names the field and the value.
  public func validate() throws(PeerClientConfigurationError) {
    func positive(_ name: String, _ value: Int) throws(PeerClientConfigurationError) {
      if value <= 0 {
        throw PeerClientConfigurationError(message: "\(name) must be positive, got \(value)")
      }
    }
    try positive("queuedRequestsMax", queuedRequestsMax)
    try positive("concurrentTransfersMax", concurrentTransfersMax)
    try positive("connectionsPerHostMax", connectionsPerHostMax)
    try positive("idleConnectionsMax", idleConnectionsMax)
    try positive("connectionIdleSecondsMax", connectionIdleSecondsMax)
    try positive("responseBytesMax", responseBytesMax)
    try positive("timeoutMs", timeoutMs)
    try positive("connectTimeoutMs", connectTimeoutMs)
    try positive("idleHandlesMax", idleHandlesMax)
    if connectTimeoutMs > timeoutMs {
      throw PeerClientConfigurationError(
        message: "connectTimeoutMs (\(connectTimeoutMs)) must not exceed timeoutMs (\(timeoutMs))")
    }
    if let tls {
      guard (tls.clientCertificateFile == nil) == (tls.clientKeyFile == nil) else {
        throw PeerClientConfigurationError(
          message: "tls.clientCertificateFile and tls.clientKeyFile go together: give both or neither")
      }
      // libcurl would only say so at the first request, as a failed transfer.
      for (name, path) in [("caCertificateFile", tls.caCertificateFile), ("clientCertificateFile", tls.clientCertificateFile),
        ("clientKeyFile", tls.clientKeyFile)] {
        guard let path else { continue }
        guard access(path, R_OK) == 0 else {
          throw PeerClientConfigurationError(
            message: "tls.\(name) \(path) cannot be read: \(String(cString: strerror(errno)))")
        }
      }
    }
  }
}

public struct PeerClientConfigurationError: Error, Sendable, CustomStringConvertible {
  public let message: String
  public var description: String { message }
}
