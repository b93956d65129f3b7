internal import COpenSSL  // internal: no OpenSSL type may appear in Platform's public API

// Hashing, message authentication, comparison and random bytes through OpenSSL 3's libcrypto (the
// COpenSSL shim). Only this file calls it for these; TLS will get its own file.
//
// Failures: drawing random bytes can fail on a healthy machine (no entropy source), so it throws
// `CryptoError`. Digest and HMAC calls cannot fail once the algorithms are fetched except when
// memory runs out, which Swift treats as fatal too; a failed fetch means OpenSSL is unusable here
// (a missing default provider, a broken OPENSSL_CONF) and stops the process with OpenSSL's reason.

/// An OpenSSL call that failed for a reason outside the program: thrown and answered, never a crash.
public struct CryptoError: Error, CustomStringConvertible, Sendable, Equatable {
  /// The OpenSSL function that failed, e.g. `RAND_bytes`.
  public let call: String
  /// OpenSSL's error queue for the failure, oldest first.
  public let reason: String

  public init(call: String, reason: String) {
    self.call = call
    self.reason = reason
  }

  public var description: String { "\(call) failed: \(reason)" }
}

/// SHA-256 (FIPS 180-4).
public enum SHA256 {
  /// Bytes in a digest.
  public static let digestBytes = 32

  /// The digest of `bytes`: 32 bytes. Contiguous collections ([UInt8], ArraySlice, a native
  /// String's `utf8`, buffer pointers) are hashed in place; any other is copied once.
  public static func hash(_ bytes: some Collection<UInt8>) -> [UInt8] {
    var hashing = Incremental()
    hashing.update(bytes)
    return hashing.finalize()
  }

  /// The digest of `bytes` as 64 lowercase hex digits.
  public static func hex(_ bytes: some Collection<UInt8>) -> String {
    Hex.encode(hash(bytes))
  }

  /// A digest of bytes given in pieces: `update` any number of times, then `finalize` once. The
  /// result equals `hash` of the pieces concatenated.
  public struct Incremental: ~Copyable {
    private let context: OpaquePointer

    public init() {
      guard let context = EVP_MD_CTX_new() else { crashOnOpenSSLFailure("EVP_MD_CTX_new") }
      self.context = context
      requireOpenSSL(EVP_DigestInit_ex2(context, sha256Algorithm, nil), "EVP_DigestInit_ex2")
    }

    deinit { EVP_MD_CTX_free(context) }

    public mutating func update(_ bytes: some Collection<UInt8>) {
      withContiguousBytes(bytes) { buffer in
        guard !buffer.isEmpty else { return }
        requireOpenSSL(EVP_DigestUpdate(context, buffer.baseAddress, buffer.count), "EVP_DigestUpdate")
      }
    }

    /// The digest of everything given to `update`: 32 bytes.
    public consuming func finalize() -> [UInt8] {
      [UInt8](unsafeUninitializedCapacity: SHA256.digestBytes) { digest, initializedCount in
        var length: UInt32 = 0
        requireOpenSSL(EVP_DigestFinal_ex(context, digest.baseAddress, &length), "EVP_DigestFinal_ex")
        precondition(length == SHA256.digestBytes, "EVP_DigestFinal_ex wrote \(length) bytes, expected 32")
        initializedCount = Int(length)
      }
    }
  }
}

/// HMAC with SHA-256 (RFC 2104; test vectors in RFC 4231).
public enum HMACSHA256 {
  /// Bytes in an authentication code.
  public static let codeBytes = 32

  /// The authentication code of `message` under `key`: 32 bytes. A key of any length is accepted
  /// (one longer than SHA-256's 64-byte block is hashed first, as RFC 2104 says); the message is
  /// authenticated in place when contiguous (see `SHA256.hash`).
  public static func authenticationCode(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
    var authenticating = Incremental(key: key)
    authenticating.update(message)
    return authenticating.finalize()
  }

  /// An authentication code of a message given in pieces (a header line, then a body) without
  /// joining them: `update` any number of times, then `finalize` once.
  public struct Incremental: ~Copyable {
    private let context: OpaquePointer

    public init(key: some Collection<UInt8>) {
      guard let context = EVP_MAC_CTX_new(hmacAlgorithm) else { crashOnOpenSSLFailure("EVP_MAC_CTX_new") }
      self.context = context
      withContiguousBytes(key) { key in
        // A NULL key means "keep the previous one" to EVP_MAC_init, so an empty key still passes
        // a valid address.
        var emptyKey: UInt8 = 0
        let result = withUnsafePointer(to: &emptyKey) { emptyKey in
          caucus_hmac_init(context, key.baseAddress ?? emptyKey, key.count, "SHA256")
        }
        requireOpenSSL(result, "EVP_MAC_init")
      }
    }

    deinit { EVP_MAC_CTX_free(context) }

    public mutating func update(_ bytes: some Collection<UInt8>) {
      withContiguousBytes(bytes) { buffer in
        guard !buffer.isEmpty else { return }
        requireOpenSSL(EVP_MAC_update(context, buffer.baseAddress, buffer.count), "EVP_MAC_update")
      }
    }

    /// The code of everything given to `update`: 32 bytes.
    public consuming func finalize() -> [UInt8] {
      [UInt8](unsafeUninitializedCapacity: HMACSHA256.codeBytes) { code, initializedCount in
        var length = 0
        requireOpenSSL(EVP_MAC_final(context, code.baseAddress, &length, code.count), "EVP_MAC_final")
        precondition(length == HMACSHA256.codeBytes, "EVP_MAC_final wrote \(length) bytes, expected 32")
        initializedCount = length
      }
    }
  }
}

/// Whether `a` and `b` hold the same bytes, in a time that depends on their length only, not on
/// where they differ (CRYPTO_memcmp): for comparing a received MAC or token hash with the expected
/// one. Different lengths answer false at once; lengths are not secret (codes have a fixed size).
public func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  guard a.count == b.count else { return false }
  guard !a.isEmpty else { return true }
  return a.withUnsafeBytes { a in
    b.withUnsafeBytes { b in CRYPTO_memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 }
  }
}

/// The most bytes one `secureRandomBytes` call draws: draws are keys, tokens and nonces, tens of
/// bytes; a larger request is a programmer error.
public let secureRandomBytesMax = 65_536

/// `count` bytes from OpenSSL's cryptographically secure generator (RAND_bytes, seeded by the
/// kernel): for secrets, tokens and nonces. Throws when the generator cannot be seeded.
public func secureRandomBytes(_ count: Int) throws(CryptoError) -> [UInt8] {
  precondition(count >= 0, "secureRandomBytes: negative count \(count)")
  precondition(count <= secureRandomBytesMax, "secureRandomBytes: \(count) bytes is over \(secureRandomBytesMax)")
  var succeeded = true
  let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initializedCount in
    guard count > 0 else { return }
    succeeded = RAND_bytes(buffer.baseAddress, Int32(count)) == 1
    initializedCount = succeeded ? count : 0
  }
  guard succeeded else { throw CryptoError(call: "RAND_bytes", reason: drainOpenSSLErrors()) }
  precondition(bytes.count == count)
  return bytes
}

// MARK: - OpenSSL plumbing

// Fetched once: an algorithm passed by name or through EVP_sha256() is looked up in OpenSSL 3's
// provider store on every init, behind a lock. nonisolated(unsafe): fetched EVP_MD and EVP_MAC
// objects are immutable and documented as safe to share between threads; they live as long as the
// process.
nonisolated(unsafe) private let sha256Algorithm: OpaquePointer = {
  guard let algorithm = EVP_MD_fetch(nil, "SHA256", nil) else { crashOnOpenSSLFailure("EVP_MD_fetch(SHA256)") }
  return algorithm
}()

nonisolated(unsafe) private let hmacAlgorithm: OpaquePointer = {
  guard let algorithm = EVP_MAC_fetch(nil, "HMAC", nil) else { crashOnOpenSSLFailure("EVP_MAC_fetch(HMAC)") }
  return algorithm
}()

/// Calls `body` with `bytes` in place when the collection is contiguous, else with one copy.
@inline(__always)
private func withContiguousBytes<Result>(
  _ bytes: some Collection<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Result
) -> Result {
  if let result = bytes.withContiguousStorageIfAvailable(body) { return result }
  return Array(bytes).withUnsafeBufferPointer(body)
}

/// The most queued OpenSSL errors put into one message; the rest are cleared.
private let openSSLErrorsReportedMax = 8

/// This thread's OpenSSL error queue, oldest first, as one line; the queue is left empty so the
/// next failure reports only its own errors. (TLS.swift reports its failures with it too.)
func drainOpenSSLErrors() -> String {
  var reasons: [String] = []
  var buffer = [CChar](repeating: 0, count: 256)
  while reasons.count < openSSLErrorsReportedMax {
    let code = ERR_get_error()
    if code == 0 { break }
    ERR_error_string_n(code, &buffer, buffer.count)
    reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
  }
  ERR_clear_error()
  return reasons.isEmpty ? "no reason on OpenSSL's error queue" : reasons.joined(separator: "; ")
}

/// OpenSSL's functions answer 1 for success; anything else here is out of memory or an unusable
/// OpenSSL, neither of which a caller can answer.
@inline(__always)
private func requireOpenSSL(_ result: Int32, _ call: StaticString) {
  if result != 1 { crashOnOpenSSLFailure(call) }
}

private func crashOnOpenSSLFailure(_ call: StaticString) -> Never {
  fatalError(
    "\(call) failed: \(drainOpenSSLErrors()). Either memory ran out or OpenSSL 3 cannot load its"
      + " default provider: check the libssl3 package, and OPENSSL_CONF and OPENSSL_MODULES if set.")
}
