internal import COpenSSL  // internal: no OpenSSL type may appear in Platform's public API
import CPlatform
import Glibc

// TLS through OpenSSL 3's libssl (the COpenSSL shim), for servers on non-blocking sockets driven by
// an epoll loop: a `TLSContext` is built once from PEM files (the expensive part, and where every
// configuration mistake shows), and a `TLSSession` per connection runs on the connection's socket
// (SSL_set_fd) without ever blocking: each call does what the socket allows now and says what it
// waits for (`TLSResult`). libcurl does its own TLS for the node-to-node client; this is the server
// side, plus a client side for tests and tools.
//
// Buffers: OpenSSL reads exactly one record at a time from the socket (no read-ahead), so what it
// has not returned stays in the kernel's socket buffer, where a level-triggered epoll still reports
// it; a caller reading into at least `TLSSession.recordPlaintextBytesMax` bytes leaves nothing
// inside OpenSSL between calls. OpenSSL's own per-connection buffers hold one record each way and
// are released while a connection is idle (SSL_MODE_RELEASE_BUFFERS).

/// A TLS set-up or session failure, with what was expected and what to do: thrown and answered
/// (a node refuses to start with it), never a crash.
public struct TLSError: Error, CustomStringConvertible, Sendable, Equatable {
  public let message: String

  public init(_ message: String) { self.message = message }

  public var description: String { message }
}

/// The PEM files a context is built from; kept so the same context can be built again (a reload
/// after the files were replaced builds a new `TLSContext` from them).
public struct TLSFiles: Sendable, Equatable, CustomStringConvertible {
  /// This side's certificate, then any intermediate certificates (PEM). Required for a server.
  public var certificateChainFile: String?
  /// The certificate's private key (PEM, not encrypted: nobody is there to type a passphrase).
  public var privateKeyFile: String?
  /// The CA certificates (PEM) that peers' certificates must chain to: a server verifies client
  /// certificates with them (when it requires them), a client verifies the server.
  public var caFile: String?

  public init(certificateChainFile: String? = nil, privateKeyFile: String? = nil, caFile: String? = nil) {
    self.certificateChainFile = certificateChainFile
    self.privateKeyFile = privateKeyFile
    self.caFile = caFile
  }

  public var description: String {
    "certificate \(certificateChainFile ?? "none"), key \(privateKeyFile ?? "none"), CA \(caFile ?? "none")"
  }
}

/// One side's TLS settings, loaded and checked: OpenSSL's SSL_CTX. TLS 1.2 at least, no
/// renegotiation, OpenSSL's default cipher suites.
///
/// `@unchecked Sendable`: the SSL_CTX is configured completely in `init` and never changed after;
/// OpenSSL documents creating sessions (SSL_new) from one SSL_CTX on many threads as safe (the
/// context is reference counted and its session cache locked internally).
public final class TLSContext: @unchecked Sendable, CustomStringConvertible {
  public enum Role: Sendable, Equatable {
    case server
    case client
  }

  public let role: Role
  public let files: TLSFiles
  /// Server only: a client must present a certificate that chains to `files.caFile`, or the
  /// handshake fails.
  public let requiresClientCertificate: Bool
  private let context: OpaquePointer

  /// The oldest protocol version either side accepts.
  public static let minimumProtocolVersion = "TLSv1.2"

  /// A server context: its certificate chain and key (both required, and they must match), and
  /// with `requireClientCertificate` the CA that client certificates must chain to (required then).
  public convenience init(server files: TLSFiles, requireClientCertificate: Bool = false) throws(TLSError) {
    guard let certificate = files.certificateChainFile, let key = files.privateKeyFile else {
      throw TLSError("a TLS server needs a certificate chain file and a private key file")
    }
    if requireClientCertificate && files.caFile == nil {
      throw TLSError("requiring client certificates needs a CA file to verify them with")
    }
    try self.init(role: .server, files: files, requireClientCertificate: requireClientCertificate)
    try useCertificate(chainFile: certificate, keyFile: key)
  }

  /// A client context: verifies the server against `files.caFile` (required; only that CA is
  /// trusted, not the system's) and presents `certificateChainFile`/`privateKeyFile` when given
  /// (both or neither).
  public convenience init(client files: TLSFiles) throws(TLSError) {
    guard files.caFile != nil else { throw TLSError("a TLS client needs a CA file to verify servers with") }
    guard (files.certificateChainFile == nil) == (files.privateKeyFile == nil) else {
      throw TLSError("a client certificate needs its private key, and a key its certificate: give both or neither")
    }
    try self.init(role: .client, files: files, requireClientCertificate: false)
    if let certificate = files.certificateChainFile, let key = files.privateKeyFile {
      try useCertificate(chainFile: certificate, keyFile: key)
    }
  }

  private init(role: Role, files: TLSFiles, requireClientCertificate: Bool) throws(TLSError) {
    self.role = role
    self.files = files
    self.requiresClientCertificate = requireClientCertificate
    ERR_clear_error()
    guard let context = SSL_CTX_new(role == .server ? TLS_server_method() : TLS_client_method()) else {
      throw TLSError("SSL_CTX_new failed: \(drainOpenSSLErrors())")
    }
    self.context = context
    guard caucus_ssl_ctx_set_min_proto_version(context, TLS1_2_VERSION) == 1 else {
      throw TLSError("cannot require TLS 1.2 or later: \(drainOpenSSLErrors())")
    }
    _ = SSL_CTX_set_options(context, caucus_ssl_op_no_renegotiation() | caucus_ssl_op_ignore_unexpected_eof())
    // Partial writes and a moving buffer: a write sends what the socket takes and is retried with
    // the rest later, from wherever the caller's buffer then is. Buffers released while idle.
    _ = caucus_ssl_ctx_set_mode(
      context,
      Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS))
    // A key file with a passphrase would make OpenSSL prompt on the terminal: refuse it instead.
    SSL_CTX_set_default_passwd_cb(context) { _, _, _, _ in 0 }
    // Sessions resumed from this server's cache must come from it (and OpenSSL refuses to resume
    // without this once client certificates are verified).
    let sessionContext = Array("caucus".utf8)
    _ = SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count))

    if let caFile = files.caFile {
      try Self.checkReadable(caFile, what: "CA file")
      guard SSL_CTX_load_verify_file(context, caFile) == 1 else {
        throw TLSError("no CA certificate could be loaded from \(caFile) (expected PEM certificates): \(drainOpenSSLErrors())")
      }
    }
    switch role {
    case .server:
      if requireClientCertificate, let caFile = files.caFile {
        // Tells clients which CAs are accepted, so one with several certificates picks the right one.
        if let names = SSL_load_client_CA_file(caFile) { SSL_CTX_set_client_CA_list(context, names) }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
      } else {
        SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
      }
    case .client:
      SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
    }
  }

  deinit { SSL_CTX_free(context) }

  public var description: String {
    "TLS \(role) (\(files)\(requiresClientCertificate ? ", client certificates required" : ""))"
  }

  private func useCertificate(chainFile: String, keyFile: String) throws(TLSError) {
    try Self.checkReadable(chainFile, what: "certificate file")
    try Self.checkReadable(keyFile, what: "private key file")
    ERR_clear_error()
    guard SSL_CTX_use_certificate_chain_file(context, chainFile) == 1 else {
      throw TLSError(
        "no certificate could be loaded from \(chainFile) (expected PEM: the certificate, then any intermediates): \(drainOpenSSLErrors())")
    }
    guard SSL_CTX_use_PrivateKey_file(context, keyFile, SSL_FILETYPE_PEM) == 1 else {
      // A key that loads but belongs to another certificate fails here already.
      let error = ERR_peek_last_error()
      if ERR_GET_LIB(error) == ERR_LIB_X509 && ERR_GET_REASON(error) == X509_R_KEY_VALUES_MISMATCH {
        throw TLSError("the private key in \(keyFile) does not match the certificate in \(chainFile): \(drainOpenSSLErrors())")
      }
      throw TLSError(
        "no private key could be loaded from \(keyFile) (expected an unencrypted PEM key): \(drainOpenSSLErrors())")
    }
    guard SSL_CTX_check_private_key(context) == 1 else {
      throw TLSError("the private key in \(keyFile) does not match the certificate in \(chainFile): \(drainOpenSSLErrors())")
    }
  }

  /// Checks that this context's own certificate chains to its CA file and is valid now: what a
  /// peer verifying it with the same CA will check. A cluster whose nodes verify each other with one
  /// CA cannot work otherwise, so a node says so at start rather than have every peer refuse it.
  public func checkOwnCertificateAgainstCA() throws(TLSError) {
    guard let certificateFile = files.certificateChainFile, let caFile = files.caFile else {
      throw TLSError("checking a certificate against the CA needs both files")
    }
    guard let certificate = SSL_CTX_get0_certificate(context), let store = SSL_CTX_get_cert_store(context),
      let verification = X509_STORE_CTX_new()
    else {
      throw TLSError("cannot check the certificate in \(certificateFile): \(drainOpenSSLErrors())")
    }
    defer { X509_STORE_CTX_free(verification) }
    ERR_clear_error()
    guard X509_STORE_CTX_init(verification, store, certificate, caucus_ssl_ctx_get0_chain_certs(context)) == 1 else {
      throw TLSError("cannot check the certificate in \(certificateFile): \(drainOpenSSLErrors())")
    }
    guard X509_verify_cert(verification) == 1 else {
      let reason = String(cString: X509_verify_cert_error_string(Int(X509_STORE_CTX_get_error(verification))))
      ERR_clear_error()
      throw TLSError(
        "the certificate in \(certificateFile) does not verify with the CA in \(caFile) (\(reason)); peers verifying it with that CA would refuse it")
    }
  }

  /// A clear message for a file OpenSSL would only call "system lib" about.
  private static func checkReadable(_ path: String, what: String) throws(TLSError) {
    let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else {
      throw TLSError("cannot read the \(what) \(path): \(String(cString: strerror(currentErrno())))")
    }
    defer { _ = Glibc.close(descriptor) }
    var status = stat()
    guard fstat(descriptor, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else {
      throw TLSError("the \(what) \(path) is not a regular file")
    }
  }

  /// A session on a connected socket (blocking or not); the caller keeps owning the descriptor and
  /// closes it after the session is done. `serverName` (client only): the name or IP address the
  /// server's certificate must be for; nil skips that check (the chain is still verified).
  public func makeSession(descriptor: Int32, serverName: String? = nil) throws(TLSError) -> TLSSession {
    precondition(descriptor >= 0, "makeSession: invalid descriptor \(descriptor)")
    precondition(role == .client || serverName == nil, "a server session has no server name to check")
    ERR_clear_error()
    guard let ssl = SSL_new(context) else { throw TLSError("SSL_new failed: \(drainOpenSSLErrors())") }
    let session = TLSSession(ssl: ssl)  // frees it on every path from here
    guard SSL_set_fd(ssl, descriptor) == 1 else { throw TLSError("SSL_set_fd failed: \(drainOpenSSLErrors())") }
    switch role {
    case .server:
      SSL_set_accept_state(ssl)
    case .client:
      SSL_set_connect_state(ssl)
      if let serverName {
        if SocketAddress(host: serverName, port: 0).ipv4() != nil && serverName != "localhost" {
          guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName) == 1 else {
            throw TLSError("cannot check the server's certificate for \(serverName): \(drainOpenSSLErrors())")
          }
        } else {
          guard SSL_set1_host(ssl, serverName) == 1, caucus_ssl_set_tlsext_host_name(ssl, serverName) == 1 else {
            throw TLSError("cannot check the server's certificate for \(serverName): \(drainOpenSSLErrors())")
          }
        }
      }
    }
    return session
  }
}

/// What a `TLSSession` call did, or what it waits for.
public enum TLSResult: Sendable, Equatable {
  /// Done: for `read` and `write` the byte count (never 0), for `handshake` and `shutdown` 0.
  case done(Int)
  /// Call again once the socket is readable.
  case wantRead
  /// Call again once the socket is writable.
  case wantWrite
  /// The peer ended the stream (close_notify, or TCP's end of stream): nothing more will arrive.
  case closed
  /// The session cannot go on (a handshake refused, a verification failure, a reset); the reason
  /// names it. Close the socket; do not `shutdown`.
  case failed(String)
}

/// TLS on one connected socket: handshake, then decrypted reads and encrypted writes that never
/// block on a non-blocking socket. Not Sendable: one thread (the connection's event loop) owns it.
public final class TLSSession {
  /// A TLS record's largest plaintext: a `read` into at least this many bytes returns a whole
  /// record, leaving nothing inside OpenSSL (see the file's note on buffers).
  public static let recordPlaintextBytesMax = 16_384

  private let ssl: OpaquePointer
  /// A fatal error happened: OpenSSL forbids any further call but SSL_free.
  private var isBroken = false
  private var shutdownSent = false
  public private(set) var isHandshakeComplete = false

  fileprivate init(ssl: OpaquePointer) { self.ssl = ssl }

  deinit { SSL_free(ssl) }

  /// Runs the handshake as far as the socket allows: `.done(0)` once complete (peer verified as
  /// the context asks), `.wantRead`/`.wantWrite` to call again, `.failed`/`.closed` otherwise.
  public func handshake() -> TLSResult {
    if isHandshakeComplete { return .done(0) }
    guard !isBroken else { return .failed("the session already failed") }
    ERR_clear_error()
    let result = SSL_do_handshake(ssl)
    let savedErrno = currentErrno()
    if result == 1 {
      isHandshakeComplete = true
      return .done(0)
    }
    return failure(of: "handshake", errno: savedErrno)
  }

  /// Decrypted bytes into `buffer`: `.done(n)` with 1 ≤ n ≤ one record's plaintext, or what it
  /// waits for. Runs (or finishes) the handshake first if needed.
  public func read(into buffer: UnsafeMutableRawBufferPointer) -> TLSResult {
    precondition(buffer.count > 0, "TLSSession.read needs room")
    guard !isBroken else { return .failed("the session already failed") }
    ERR_clear_error()
    var count = 0
    let succeeded = SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &count) == 1
    let savedErrno = currentErrno()
    if succeeded {
      precondition(count > 0 && count <= buffer.count, "SSL_read_ex read \(count) of \(buffer.count)")
      isHandshakeComplete = true
      return .done(count)
    }
    return failure(of: "read", errno: savedErrno)
  }

  /// Encrypts and sends from `bytes`: `.done(n)` with the bytes taken (possibly fewer than given:
  /// call again with the rest, or with the same bytes and more after a `.wantWrite`).
  public func write(_ bytes: UnsafeRawBufferPointer) -> TLSResult {
    guard bytes.count > 0 else { return .done(0) }
    guard !isBroken else { return .failed("the session already failed") }
    ERR_clear_error()
    var count = 0
    let succeeded = SSL_write_ex(ssl, bytes.baseAddress, bytes.count, &count) == 1
    let savedErrno = currentErrno()
    if succeeded {
      precondition(count > 0 && count <= bytes.count, "SSL_write_ex wrote \(count) of \(bytes.count)")
      isHandshakeComplete = true
      return .done(count)
    }
    return failure(of: "write", errno: savedErrno)
  }

  /// Sends close_notify (once; best effort: `.wantWrite` means the socket had no room and the
  /// caller may simply close). Does not wait for the peer's. Before the handshake completed, or
  /// after a failure, it sends nothing.
  public func shutdown() -> TLSResult {
    guard isHandshakeComplete, !isBroken else { return .done(0) }
    if shutdownSent { return .done(0) }
    ERR_clear_error()
    let result = SSL_shutdown(ssl)
    let savedErrno = currentErrno()
    if result >= 0 {
      shutdownSent = true
      return .done(0)
    }
    return failure(of: "shutdown", errno: savedErrno)
  }

  /// The negotiated protocol ("TLSv1.3"), once the handshake is done.
  public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

  /// The peer's certificate subject (`/CN=…`), when it presented one (and it verified: an
  /// unverified one fails the handshake).
  public var peerCertificateSubject: String? {
    guard let certificate = SSL_get0_peer_certificate(ssl), let name = X509_get_subject_name(certificate) else {
      return nil
    }
    var buffer = [CChar](repeating: 0, count: 512)
    guard X509_NAME_oneline(name, &buffer, Int32(buffer.count)) != nil else { return nil }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  /// Maps a failed SSL call to its result; fatal errors mark the session broken.
  private func failure(of call: String, errno savedErrno: Int32) -> TLSResult {
    let code = SSL_get_error(ssl, 0)
    switch code {
    case SSL_ERROR_WANT_READ:
      return .wantRead
    case SSL_ERROR_WANT_WRITE:
      return .wantWrite
    case SSL_ERROR_ZERO_RETURN:
      return .closed
    case SSL_ERROR_SYSCALL:
      isBroken = true
      let queued = drainOpenSSLErrors(orNil: true)
      if savedErrno == 0 && queued == nil { return .closed }  // end of stream where none was expected
      let reason = savedErrno != 0 ? String(cString: strerror(savedErrno)) : (queued ?? "")
      return .failed("TLS \(call): \(reason)")
    case SSL_ERROR_SSL:
      isBroken = true
      var reason = "TLS \(call) failed: \(drainOpenSSLErrors())"
      let verification = SSL_get_verify_result(ssl)
      if verification != X509_V_OK {
        reason += " (certificate verification: \(String(cString: X509_verify_cert_error_string(verification))))"
      }
      return .failed(reason)
    default:
      isBroken = true
      return .failed("TLS \(call) failed: SSL_get_error \(code): \(drainOpenSSLErrors())")
    }
  }
}

/// `drainOpenSSLErrors`, but nil when the queue was empty.
private func drainOpenSSLErrors(orNil: Bool) -> String? {
  guard ERR_peek_error() != 0 else { return nil }
  return drainOpenSSLErrors()
}
