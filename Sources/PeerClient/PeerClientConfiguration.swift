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
  }
}

public struct PeerClientConfigurationError: Error, Sendable, CustomStringConvertible {
  public let message: String
  public var description: String { message }
}
