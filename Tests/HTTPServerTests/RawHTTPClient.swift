import Glibc
import Platform
import XCTest

/// One parsed response as a test sees it. Header names lowercased.
struct RawResponse {
  var status: Int
  var headers: [(name: String, value: String)]
  var body: [UInt8]

  func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }
  var bodyText: String { String(decoding: body, as: UTF8.self) }
  var closes: Bool { header("connection")?.lowercased() == "close" }
}

enum RawHTTPClientError: Error {
  case timeout
  case malformed(String)
}

/// A tiny blocking HTTP client that speaks raw bytes over a real socket, so tests control exactly
/// what goes on the wire (pipelining, partial heads, malformed framing); over TLS after `startTLS`.
final class RawHTTPClient {
  let socket: Socket
  private var buffer: [UInt8] = []
  private var closedByPeer = false
  private var chunk = [UInt8](repeating: 0, count: 256 * 1024)
  /// The TLS session after `startTLS`; every later byte goes through it.
  private(set) var tls: TLSSession?
  /// Why the TLS session failed, when it did (the server refused it, say).
  private(set) var tlsFailure: String?

  init(port: UInt16, timeoutMs: Int = 5_000) throws {
    socket = try Socket.connect(
      to: SocketAddress(host: "127.0.0.1", port: port), timeoutMs: timeoutMs)
  }

  /// Runs a TLS handshake (blocking, within the socket's timeout); throws with the reason when
  /// it fails.
  func startTLS(_ context: TLSContext, serverName: String = "127.0.0.1") throws {
    let session = try context.makeSession(descriptor: socket.descriptor, serverName: serverName)
    let result = session.handshake()
    guard result == .done(0) else { throw RawHTTPClientError.malformed("TLS handshake: \(result)") }
    tls = session
  }

  func send(_ text: String) throws { try send(Array(text.utf8)) }
  func send(_ bytes: [UInt8]) throws {
    guard let tls else { return try socket.sendAll(bytes) }
    var offset = 0
    while offset < bytes.count {
      let result = bytes.withUnsafeBytes { tls.write(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
      guard case .done(let count) = result else {
        if case .failed(let reason) = result, tlsFailure == nil { tlsFailure = reason }
        throw RawHTTPClientError.malformed("TLS write: \(result)")
      }
      offset += count
    }
  }

  /// Reads more bytes into the buffer; false at end of stream (or reset). Throws on timeout.
  private func fill() throws -> Bool {
    if closedByPeer { return false }
    if let tls {
      let result = chunk.withUnsafeMutableBytes { tls.read(into: $0) }
      switch result {
      case .done(let count):
        buffer += chunk[0..<count]
        return true
      case .wantRead, .wantWrite: throw RawHTTPClientError.timeout
      case .closed:
        closedByPeer = true
        return false
      case .failed(let reason):
        if tlsFailure == nil { tlsFailure = reason }
        closedByPeer = true
        return false
      }
    }
    let count: Int?
    do {
      count = try chunk.withUnsafeMutableBytes { try socket.receive(into: $0) }
    } catch let error as SystemError where error.errno == ECONNRESET {
      closedByPeer = true
      return false
    }
    guard let count else { throw RawHTTPClientError.timeout }
    if count == 0 {
      closedByPeer = true
      return false
    }
    buffer += chunk[0..<count]
    return true
  }

  /// The next response (a `100 Continue` counts as one); nil when the server closed first.
  /// `toHead`: the answer to a HEAD request has no body whatever its Content-Length says.
  func readResponse(toHead: Bool = false) throws -> RawResponse? {
    while true {
      if let response = try takeResponse(toHead: toHead) { return response }
      if try !fill() { return nil }
    }
  }

  /// Reads until the server closes: true when it closed (FIN or reset) before the timeout.
  /// Bytes that arrive meanwhile are kept for `readResponse`.
  func waitUntilClosed() -> Bool {
    do {
      while try fill() {}
      return true
    } catch {
      return false
    }
  }

  private func takeResponse(toHead: Bool) throws -> RawResponse? {
    guard let headEnd = find([13, 10, 13, 10]) else { return nil }
    let head = String(decoding: buffer[0..<headEnd], as: UTF8.self)
    var lines = buffer[0..<headEnd].split(separator: 10).map {
      String(decoding: $0.filter { $0 != 13 }, as: UTF8.self)
    }
    let statusLine = lines.removeFirst().split(separator: " ", maxSplits: 2)
    guard statusLine.count >= 2, statusLine[0] == "HTTP/1.1", let status = Int(statusLine[1]) else {
      throw RawHTTPClientError.malformed(head)
    }
    var headers: [(name: String, value: String)] = []
    for line in lines {
      guard let colon = line.firstIndex(of: ":") else { throw RawHTTPClientError.malformed(line) }
      headers.append(
        (
          line[..<colon].lowercased(),
          String(line[line.index(after: colon)...].drop(while: { $0 == " " }))
        ))
    }
    let length =
      status < 200 || toHead
      ? 0 : Int(headers.first { $0.name == "content-length" }?.value ?? "0") ?? 0
    guard buffer.count >= headEnd + 4 + length else { return nil }
    let body = Array(buffer[(headEnd + 4)..<(headEnd + 4 + length)])
    buffer.removeFirst(headEnd + 4 + length)
    return RawResponse(status: status, headers: headers, body: body)
  }

  private func find(_ pattern: [UInt8]) -> Int? {
    guard buffer.count >= pattern.count else { return nil }
    for start in 0...(buffer.count - pattern.count) where buffer[start] == pattern[0] {
      if Array(buffer[start..<(start + pattern.count)]) == pattern { return start }
    }
    return nil
  }
}

/// Polls `condition` until it holds or `timeoutMs` passes; returns whether it held.
func waitUntil(timeoutMs: Int = 5_000, _ condition: () -> Bool) -> Bool {
  let deadline = MonotonicClock.nowMilliseconds() + UInt64(timeoutMs)
  while MonotonicClock.nowMilliseconds() < deadline {
    if condition() { return true }
    usleep(1_000)
  }
  return condition()
}
