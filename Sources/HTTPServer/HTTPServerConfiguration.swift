import Platform

/// Everything the HTTP server bounds, with the reasoning for each default. Units are last in
/// every name. `validate()` runs in `HTTPServer.start()`.
public struct HTTPServerConfiguration: Sendable {
  /// IPv4 address to bind ("127.0.0.1" for loopback only, "0.0.0.0" for every interface).
  public var host: String = "127.0.0.1"
  /// TCP port; 0 lets the kernel pick one (`start()` returns it).
  public var port: UInt16 = 0
  /// Headers added to the answers the server writes itself (framing errors, timeouts, the
  /// too-many-connections refusal), so they carry what the handler's answers carry (for Caucus,
  /// `X-Caucus-Node`).
  public var serverResponseHeaders: [(name: String, value: String)] = []
  /// listen(2) backlog: connections the kernel queues before we accept them.
  public var listenBacklog: Int32 = 1024

  /// Request line (`GET /path HTTP/1.1`, without CRLF) longest accepted; over it: 414
  /// `uri_too_long`. 8 KiB is what most servers accept; keys are at most 4 KiB percent-encoded.
  public var requestLineBytesMax: Int = 8 * 1024
  /// Header section (every header line with its CRLF, not the request line nor the final empty
  /// line) largest accepted; over it: 431 `headers_too_large`. Also bounds a chunked body's trailers.
  public var headerBytesMax: Int = 64 * 1024
  /// Header lines accepted per request (and trailer lines per chunked body); over it: 431.
  public var headerCountMax: Int = 100
  /// Body bytes accepted per request (Content-Length or the sum of chunks); over it: 413
  /// `payload_too_large`, answered before reading the body. Values are at most 1 MiB; the rest
  /// is slack for JSON envelopes and base64 (the Gateway applies its own, tighter limits).
  public var bodyBytesMax: Int = 1024 * 1024 + 64 * 1024
  /// A chunk-size line (hex size plus extensions) longest accepted; over it: 400.
  public var chunkLineBytesMax: Int = 4 * 1024

  /// Open client connections at most; one more is accepted, answered 503 and closed at once,
  /// so clients see a clear answer instead of a hanging connect.
  public var connectionsMax: Int = 10_000
  /// A request's head (request line and headers) must arrive within this time from its first
  /// byte (or from accept for a new connection); otherwise 408 `request_timeout` and close.
  /// Defends against slowloris clients holding connections with a trickle of header bytes.
  public var headerTimeoutMs: Int = 10_000
  /// A keep-alive connection with no request in progress and nothing to send is closed after
  /// this long idle; a body that makes no progress for this long gets 408 and close.
  public var idleTimeoutMs: Int = 60_000
  /// Requests read but not yet answered per connection; at the limit the server stops reading
  /// that connection (TCP backpressure) until answers go out. Bounds memory per pipelining client.
  public var pipelinedRequestsMax: Int = 64
  /// Response bytes buffered per connection (unsent, or answered out of order and waiting for an
  /// earlier answer); over it, the server stops reading new requests from that connection until
  /// the client reads. A single larger response is still sent whole.
  public var responseBufferBytesMax: Int = 4 * 1024 * 1024
  /// After answering an error with `Connection: close`, the server shuts down its writing side and
  /// discards what the client still sends for at most this long before closing, so the client
  /// reads the error instead of a connection reset.
  public var lingerTimeoutMs: Int = 2_000
  /// Event-loop threads, each with its own epoll and connections (accepts are spread among
  /// them). One by default: on 2 cores the load generator, the consensus thread and one loop
  /// already fill the machine; more helps when handlers do real work on the loop. At most 64.
  public var eventLoopCount: Int = 1
  /// Bytes read from a socket per recv(2) (one reusable buffer per event loop). With TLS, at
  /// least a record's plaintext (`TLSSession.recordPlaintextBytesMax`, 16 KiB).
  public var readBufferBytes: Int = 64 * 1024

  /// A server context (`TLSContext(server:)`) makes this an HTTPS server: every connection starts
  /// with a TLS handshake, then HTTP runs over it exactly as without, every limit above unchanged.
  /// A plaintext HTTP request on the port is answered `400 tls_required` in plaintext and closed.
  /// nil: plaintext HTTP.
  public var tls: TLSContext? = nil
  /// A TLS connection must finish its handshake within this time from accept, or it is closed
  /// (nothing can be answered before the handshake). A handshake takes two round trips; ten
  /// seconds covers a slow link, and bounds how long a client that never finishes one (a scanner,
  /// a slowloris on the handshake) holds a connection. After it, `headerTimeoutMs` runs for the
  /// first request's head.
  public var tlsHandshakeTimeoutMs: Int = 10_000

  public init() {}

  /// Checks every limit is positive and coherent; the message names the field and the value.
  public func validate() throws(HTTPServerConfigurationError) {
    func positive(_ name: String, _ value: Int) throws(HTTPServerConfigurationError) {
      if value <= 0 {
        throw HTTPServerConfigurationError(message: "\(name) must be positive, got \(value)")
      }
    }
    try positive("requestLineBytesMax", requestLineBytesMax)
    try positive("headerBytesMax", headerBytesMax)
    try positive("headerCountMax", headerCountMax)
    try positive("chunkLineBytesMax", chunkLineBytesMax)
    try positive("connectionsMax", connectionsMax)
    try positive("headerTimeoutMs", headerTimeoutMs)
    try positive("idleTimeoutMs", idleTimeoutMs)
    try positive("pipelinedRequestsMax", pipelinedRequestsMax)
    try positive("responseBufferBytesMax", responseBufferBytesMax)
    try positive("lingerTimeoutMs", lingerTimeoutMs)
    try positive("readBufferBytes", readBufferBytes)
    try positive("listenBacklog", Int(listenBacklog))
    try positive("eventLoopCount", eventLoopCount)
    try positive("tlsHandshakeTimeoutMs", tlsHandshakeTimeoutMs)
    if let tls {
      guard tls.role == .server else {
        throw HTTPServerConfigurationError(message: "tls must be a server context, got \(tls)")
      }
      guard readBufferBytes >= TLSSession.recordPlaintextBytesMax else {
        throw HTTPServerConfigurationError(
          message: "readBufferBytes must be at least \(TLSSession.recordPlaintextBytesMax) with TLS (a record's plaintext), got \(readBufferBytes)")
      }
    }
    if eventLoopCount > 64 {
      throw HTTPServerConfigurationError(
        message: "eventLoopCount must be at most 64, got \(eventLoopCount)")
    }
    if bodyBytesMax < 0 {
      throw HTTPServerConfigurationError(
        message: "bodyBytesMax must not be negative, got \(bodyBytesMax)")
    }
  }
}

public struct HTTPServerConfigurationError: Error, Sendable, CustomStringConvertible {
  public let message: String
  public var description: String { message }
}
