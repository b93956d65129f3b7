import Glibc
import Platform

/// A request the parser could not accept: the status and JSON error code to answer with. The
/// connection is closed after answering: the framing of what follows cannot be trusted.
public struct HTTPParseError: Error, Sendable, Equatable, CustomStringConvertible {
  public let status: Int
  /// snake_case code for the JSON error body (API.md).
  public let code: String
  /// One human sentence.
  public let message: String

  public init(status: Int, code: String, message: String) {
    self.status = status
    self.code = code
    self.message = message
  }

  public var description: String { "\(status) \(code): \(message)" }

  public static func badRequest(_ message: String) -> HTTPParseError {
    HTTPParseError(status: 400, code: "bad_request", message: message)
  }
  static func uriTooLong(_ limit: Int) -> HTTPParseError {
    HTTPParseError(
      status: 414, code: "uri_too_long", message: "The request line is longer than \(limit) bytes.")
  }
  static func headersTooLarge(_ message: String) -> HTTPParseError {
    HTTPParseError(status: 431, code: "headers_too_large", message: message)
  }
  static func payloadTooLarge(_ limit: Int) -> HTTPParseError {
    HTTPParseError(
      status: 413, code: "payload_too_large",
      message: "The request body is larger than \(limit) bytes.")
  }
  static func versionNotSupported() -> HTTPParseError {
    HTTPParseError(
      status: 505, code: "http_version_not_supported",
      message: "Only HTTP/1.0 and HTTP/1.1 are supported.")
  }
  static func notImplemented(_ message: String) -> HTTPParseError {
    HTTPParseError(status: 501, code: "not_implemented", message: message)
  }
  /// The request head did not arrive in time (raised by the server, not the parser).
  public static func requestTimeout() -> HTTPParseError {
    HTTPParseError(
      status: 408, code: "request_timeout", message: "The request did not arrive in time.")
  }
}

/// A complete request with what the connection needs to know about it.
public struct HTTPParsedRequest: Sendable {
  public var request: HTTPRequest
  /// 0 for HTTP/1.0, 1 for HTTP/1.1.
  public var minorVersion: Int
  /// Whether the connection stays open after the answer (HTTP/1.1 unless `Connection: close`;
  /// HTTP/1.0 only with `Connection: keep-alive`).
  public var keepAlive: Bool
}

public enum HTTPParserEvent: Sendable {
  /// The head of a request with `Expect: 100-continue` and a body was accepted: answer
  /// `HTTP/1.1 100 Continue` (in order after earlier answers); the body follows.
  case continueExpected
  /// A complete request.
  case request(HTTPParsedRequest)
  /// Malformed or over a limit: answer `error.status` and close. The parser stays failed.
  case failure(HTTPParseError)
}

/// The limits the parser enforces (a subset of `HTTPServerConfiguration`, same meanings).
public struct HTTPParserLimits: Sendable, Equatable {
  public var requestLineBytesMax: Int
  public var headerBytesMax: Int
  public var headerCountMax: Int
  public var bodyBytesMax: Int
  public var chunkLineBytesMax: Int

  public init(
    requestLineBytesMax: Int, headerBytesMax: Int, headerCountMax: Int, bodyBytesMax: Int,
    chunkLineBytesMax: Int
  ) {
    self.requestLineBytesMax = requestLineBytesMax
    self.headerBytesMax = headerBytesMax
    self.headerCountMax = headerCountMax
    self.bodyBytesMax = bodyBytesMax
    self.chunkLineBytesMax = chunkLineBytesMax
  }

  public init(_ configuration: HTTPServerConfiguration) {
    self.init(
      requestLineBytesMax: configuration.requestLineBytesMax,
      headerBytesMax: configuration.headerBytesMax,
      headerCountMax: configuration.headerCountMax, bodyBytesMax: configuration.bodyBytesMax,
      chunkLineBytesMax: configuration.chunkLineBytesMax)
  }
}

/// An incremental HTTP/1.x request parser: a pure state machine on bytes, no I/O. Feed it bytes
/// with `append`, then call `next()` until it returns nil (it needs more bytes). Any split of the
/// same bytes into chunks yields the same events.
///
/// Strictness (each is a 400 unless noted): lines end in CRLF (bare LF or bare CR is refused);
/// empty lines before a request line are skipped; the request line is
/// `token SP target SP HTTP/d.d` (other versions: 505); header lines are `token ":" OWS value OWS`
/// with no whitespace before the colon, no obs-fold, no control bytes in the value except HTAB;
/// `Content-Length` is digits only, duplicates must agree; `Transfer-Encoding` with
/// `Content-Length` is refused; a `Transfer-Encoding` other than exactly `chunked` is 501; chunked
/// on HTTP/1.0 is refused; chunk sizes are hex (at most 15 digits) with optional extensions;
/// chunk data ends in CRLF; trailers are validated like headers and discarded. `Host` is not
/// required.
public struct HTTPRequestParser: Sendable {
  private enum State: Sendable {
    case requestLine
    case headers
    /// Content-Length body, or a chunk's data; `remaining` bytes still to come.
    case body(remaining: Int, chunked: Bool)
    case chunkSize
    case chunkDataEnd
    case trailers
    case failed
  }

  public let limits: HTTPParserLimits
  private var buffer: [UInt8] = []
  /// First unconsumed byte of `buffer`.
  private var position = 0
  /// Where the search for the next LF resumes (position ≤ scanPosition ≤ buffer.count), so a
  /// line fed byte by byte is scanned once.
  private var scanPosition = 0
  private var state: State = .requestLine

  // The request under construction.
  private var method = ""
  private var target = ""
  private var minorVersion = 1
  private var headers: [(name: String, value: String)] = []
  private var headerBytes = 0
  private var contentLength: Int? = nil
  private var transferEncodingSeen = false
  private var chunked = false
  private var transferEncodingUnsupported: String? = nil
  private var connectionClose = false
  private var connectionKeepAlive = false
  private var expectContinue = false
  private var body: [UInt8] = []

  public init(limits: HTTPParserLimits) {
    precondition(
      limits.requestLineBytesMax > 0 && limits.headerBytesMax > 0 && limits.headerCountMax > 0)
    precondition(limits.bodyBytesMax >= 0 && limits.chunkLineBytesMax > 0)
    self.limits = limits
  }

  public init(configuration: HTTPServerConfiguration = HTTPServerConfiguration()) {
    self.init(limits: HTTPParserLimits(configuration))
  }

  /// Bytes received but not yet consumed by a returned event.
  public var bufferedByteCount: Int { buffer.count - position }

  /// True while a request head is partly received (the header timeout runs).
  public var isReadingHead: Bool {
    switch state {
    case .requestLine: return position < buffer.count
    case .headers: return true
    default: return false
    }
  }

  /// True while a request's body is partly received.
  public var isReadingBody: Bool {
    switch state {
    case .body, .chunkSize, .chunkDataEnd, .trailers: return true
    default: return false
    }
  }

  public var hasFailed: Bool { if case .failed = state { return true } else { return false } }

  /// Adds received bytes. Body bytes go straight into the body when nothing else is buffered.
  public mutating func append(_ bytes: UnsafeRawBufferPointer) {
    if case .failed = state { return }
    var bytes = bytes
    if position == buffer.count {
      buffer.removeAll(keepingCapacity: true)
      position = 0
      scanPosition = 0
      if case .body(let remaining, let isChunked) = state, remaining > 0 {
        let taken = min(remaining, bytes.count)
        body.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<taken]))
        state = .body(remaining: remaining - taken, chunked: isChunked)
        bytes = UnsafeRawBufferPointer(rebasing: bytes[taken...])
      }
    } else if position > 0 && position >= buffer.count / 2 && position >= 4096 {
      buffer.removeSubrange(0..<position)
      scanPosition -= position
      position = 0
    }
    buffer.append(contentsOf: bytes)
  }

  public mutating func append(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { append($0) }
  }

  /// Appends `bytes` and returns every event they complete (for tests and simple callers).
  public mutating func parse(_ bytes: [UInt8]) -> [HTTPParserEvent] {
    append(bytes)
    var events: [HTTPParserEvent] = []
    while let event = next() { events.append(event) }
    return events
  }

  /// The next event, or nil when more bytes are needed (or after a failure).
  public mutating func next() -> HTTPParserEvent? {
    while true {
      switch state {
      case .failed:
        return nil

      case .requestLine:
        guard let lineFeed = findLineFeed() else {
          // The line may still grow; one byte over the limit is allowed for its CR.
          if buffer.count - position > limits.requestLineBytesMax + 1 {
            return fail(.uriTooLong(limits.requestLineBytesMax))
          }
          return nil
        }
        guard lineFeed > position, buffer[lineFeed - 1] == 13 else {
          return fail(.badRequest("The request line must end with CRLF."))
        }
        let lineEnd = lineFeed - 1
        if lineEnd == position {  // an empty line before the request line: skipped
          consume(through: lineFeed)
          continue
        }
        if lineEnd - position > limits.requestLineBytesMax {
          return fail(.uriTooLong(limits.requestLineBytesMax))
        }
        let start = position
        let parsed = buffer.withUnsafeBufferPointer {
          Self.parseRequestLine(UnsafeBufferPointer(rebasing: $0[start..<lineEnd]))
        }
        switch parsed {
        case .failure(let error):
          return fail(error)
        case .success(let line):
          method = line.method
          target = line.target
          minorVersion = line.minorVersion
        }
        consume(through: lineFeed)
        state = .headers

      case .headers:
        guard let lineFeed = findLineFeed() else {
          let pending = buffer.count - position
          if pending > 1 && headerBytes + pending + 1 > limits.headerBytesMax {
            return fail(
              .headersTooLarge(
                "The request headers are larger than \(limits.headerBytesMax) bytes."))
          }
          return nil
        }
        guard lineFeed > position, buffer[lineFeed - 1] == 13 else {
          return fail(.badRequest("Header lines must end with CRLF."))
        }
        let lineEnd = lineFeed - 1
        if lineEnd == position {
          consume(through: lineFeed)
          if let event = finishHead() { return event }
          continue
        }
        if let error = addHeaderLine(end: lineEnd, lineFeed: lineFeed, isTrailer: false) {
          return fail(error)
        }
        consume(through: lineFeed)

      case .body(let remaining, let isChunked):
        let available = buffer.count - position
        if remaining > 0 {
          if available == 0 { return nil }
          let taken = min(remaining, available)
          body.append(contentsOf: buffer[position..<(position + taken)])
          position += taken
          scanPosition = position
          state = .body(remaining: remaining - taken, chunked: isChunked)
          if taken < remaining { return nil }
        }
        if isChunked {
          state = .chunkDataEnd
          continue
        }
        return completeRequest()

      case .chunkSize:
        guard let lineFeed = findLineFeed() else {
          if buffer.count - position > limits.chunkLineBytesMax + 1 {
            return fail(
              .badRequest("A chunk-size line is longer than \(limits.chunkLineBytesMax) bytes."))
          }
          return nil
        }
        guard lineFeed > position, buffer[lineFeed - 1] == 13 else {
          return fail(.badRequest("A chunk-size line must end with CRLF."))
        }
        let lineEnd = lineFeed - 1
        if lineEnd - position > limits.chunkLineBytesMax {
          return fail(
            .badRequest("A chunk-size line is longer than \(limits.chunkLineBytesMax) bytes."))
        }
        let start = position
        let size = buffer.withUnsafeBufferPointer {
          Self.parseChunkSize(UnsafeBufferPointer(rebasing: $0[start..<lineEnd]))
        }
        guard let size else {
          return fail(.badRequest("A chunk size is not a valid hexadecimal number."))
        }
        consume(through: lineFeed)
        if size == 0 {
          headerBytes = 0
          headerCount = 0
          state = .trailers
          continue
        }
        if size > limits.bodyBytesMax - body.count {
          return fail(.payloadTooLarge(limits.bodyBytesMax))
        }
        body.reserveCapacity(body.count + size)
        state = .body(remaining: size, chunked: true)

      case .chunkDataEnd:
        let available = buffer.count - position
        if available == 0 { return nil }
        if buffer[position] != 13 {
          return fail(.badRequest("Chunk data must be followed by CRLF."))
        }
        if available == 1 { return nil }
        if buffer[position + 1] != 10 {
          return fail(.badRequest("Chunk data must be followed by CRLF."))
        }
        consume(through: position + 1)
        state = .chunkSize

      case .trailers:
        guard let lineFeed = findLineFeed() else {
          let pending = buffer.count - position
          if pending > 1 && headerBytes + pending + 1 > limits.headerBytesMax {
            return fail(
              .headersTooLarge(
                "The request trailers are larger than \(limits.headerBytesMax) bytes."))
          }
          return nil
        }
        guard lineFeed > position, buffer[lineFeed - 1] == 13 else {
          return fail(.badRequest("Trailer lines must end with CRLF."))
        }
        let lineEnd = lineFeed - 1
        if lineEnd == position {
          consume(through: lineFeed)
          return completeRequest()
        }
        if let error = addHeaderLine(end: lineEnd, lineFeed: lineFeed, isTrailer: true) {
          return fail(error)
        }
        consume(through: lineFeed)
      }
    }
  }

  // MARK: Steps

  private var headerCount = 0

  private mutating func fail(_ error: HTTPParseError) -> HTTPParserEvent {
    state = .failed
    buffer = []
    position = 0
    scanPosition = 0
    body = []
    return .failure(error)
  }

  /// Index of the next LF at or after `position`, or nil (the search resumes where it stopped).
  private mutating func findLineFeed() -> Int? {
    let from = scanPosition
    let count = buffer.count
    guard from < count else { return nil }
    let found: Int? = buffer.withUnsafeBufferPointer { pointer in
      guard let base = pointer.baseAddress, let hit = memchr(base + from, 10, count - from) else {
        return nil
      }
      return UnsafeRawPointer(hit) - UnsafeRawPointer(base)
    }
    if let found { return found }
    scanPosition = count
    return nil
  }

  private mutating func consume(through index: Int) {
    precondition(index >= position && index < buffer.count, "consume past the buffer")
    position = index + 1
    scanPosition = position
  }

  /// Validates and records one header (or trailer) line `buffer[position..<end]`.
  private mutating func addHeaderLine(end: Int, lineFeed: Int, isTrailer: Bool) -> HTTPParseError? {
    headerBytes += lineFeed + 1 - position
    if headerBytes > limits.headerBytesMax {
      return .headersTooLarge(
        "The request \(isTrailer ? "trailers are" : "headers are") larger than \(limits.headerBytesMax) bytes."
      )
    }
    headerCount += 1
    if headerCount > limits.headerCountMax {
      return .headersTooLarge(
        "The request has more than \(limits.headerCountMax) \(isTrailer ? "trailer" : "header") lines."
      )
    }
    let start = position
    let parsed = buffer.withUnsafeBufferPointer {
      Self.parseHeaderLine(UnsafeBufferPointer(rebasing: $0[start..<end]))
    }
    let header: (name: String, value: String)
    switch parsed {
    case .failure(let error): return error
    case .success(let value): header = value
    }
    if isTrailer { return nil }  // validated, then discarded: trailers never change framing
    switch header.name {
    case "content-length":
      guard let length = Self.parseContentLength(header.value) else {
        return .badRequest("Content-Length must be a non-negative decimal number.")
      }
      if let previous = contentLength, previous != length {
        return .badRequest("The request has differing Content-Length headers.")
      }
      contentLength = length
    case "transfer-encoding":
      if transferEncodingSeen || Self.lowercased(header.value) != "chunked" {
        transferEncodingUnsupported = header.value
      } else {
        chunked = true
      }
      transferEncodingSeen = true
    case "connection":
      for token in header.value.utf8.split(separator: UInt8(ascii: ",")) {
        let trimmed = Self.lowercased(String(decoding: token, as: UTF8.self).trimmingSpaces())
        if trimmed == "close" {
          connectionClose = true
        } else if trimmed == "keep-alive" {
          connectionKeepAlive = true
        }
      }
    case "expect":
      if Self.lowercased(header.value) == "100-continue" { expectContinue = true }
    default:
      break
    }
    headers.append(header)
    return nil
  }

  /// The head is complete: decide the framing.
  private mutating func finishHead() -> HTTPParserEvent? {
    if transferEncodingSeen && contentLength != nil {
      return fail(.badRequest("A request must not have both Content-Length and Transfer-Encoding."))
    }
    if transferEncodingSeen && minorVersion == 0 {
      return fail(.badRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request."))
    }
    if let unsupported = transferEncodingUnsupported {
      let shown = unsupported.count > 40 ? String(unsupported.prefix(40)) + "…" : unsupported
      return fail(
        .notImplemented(
          "Transfer-Encoding '\(jsonSafe(shown))' is not supported; only 'chunked' is."))
    }
    let continueEvent: HTTPParserEvent? =
      expectContinue && minorVersion == 1 ? .continueExpected : nil
    if chunked {
      headerCount = 0
      state = .chunkSize
      return continueEvent
    }
    let length = contentLength ?? 0
    if length > limits.bodyBytesMax { return fail(.payloadTooLarge(limits.bodyBytesMax)) }
    if length == 0 { return completeRequest() }
    body.reserveCapacity(length)
    state = .body(remaining: length, chunked: false)
    return continueEvent
  }

  private mutating func completeRequest() -> HTTPParserEvent {
    let keepAlive = minorVersion == 1 ? !connectionClose : (connectionKeepAlive && !connectionClose)
    let request = HTTPRequest(method: method, target: target, headers: headers, body: body)
    let event = HTTPParserEvent.request(
      HTTPParsedRequest(request: request, minorVersion: minorVersion, keepAlive: keepAlive))
    state = .requestLine
    headers = []
    headers.reserveCapacity(8)
    body = []
    headerBytes = 0
    headerCount = 0
    contentLength = nil
    transferEncodingSeen = false
    chunked = false
    transferEncodingUnsupported = nil
    connectionClose = false
    connectionKeepAlive = false
    expectContinue = false
    return event
  }

  // MARK: Byte-level parsing (static: no access to the parser's state)

  private struct RequestLine {
    var method: String
    var target: String
    var minorVersion: Int
  }

  private static func parseRequestLine(_ line: UnsafeBufferPointer<UInt8>) -> Result<
    RequestLine, HTTPParseError
  > {
    var index = 0
    let count = line.count
    while index < count && isTokenByte(line[index]) { index += 1 }
    guard index > 0, index < count, line[index] == 32 else {
      return .failure(
        .badRequest("The request line must be 'METHOD target HTTP/1.1' with a valid method token."))
    }
    let method = makeString(line, 0, index, lowercase: false)
    index += 1
    let targetStart = index
    while index < count && isTargetByte(line[index]) { index += 1 }
    guard index > targetStart, index < count, line[index] == 32 else {
      return .failure(.badRequest("The request target is missing or contains invalid bytes."))
    }
    let target = makeString(line, targetStart, index, lowercase: false)
    index += 1
    // HTTP-version = "HTTP/" DIGIT "." DIGIT, and nothing after it.
    guard count - index == 8,
      line[index] == 72, line[index + 1] == 84, line[index + 2] == 84, line[index + 3] == 80,
      line[index + 4] == 47,
      isDigit(line[index + 5]), line[index + 6] == 46, isDigit(line[index + 7])
    else {
      return .failure(
        .badRequest("The request line must end with an HTTP version such as HTTP/1.1."))
    }
    guard line[index + 5] == 49, line[index + 7] == 48 || line[index + 7] == 49 else {
      return .failure(.versionNotSupported())
    }
    return .success(
      RequestLine(method: method, target: target, minorVersion: Int(line[index + 7] - 48)))
  }

  private static func parseHeaderLine(_ line: UnsafeBufferPointer<UInt8>) -> Result<
    (name: String, value: String), HTTPParseError
  > {
    let count = line.count
    if line[0] == 32 || line[0] == 9 {
      return .failure(
        .badRequest("Folded header lines (starting with whitespace) are not accepted."))
    }
    var index = 0
    while index < count && isTokenByte(line[index]) { index += 1 }
    guard index < count else { return .failure(.badRequest("A header line has no colon.")) }
    if line[index] != 58 {
      if line[index] == 32 || line[index] == 9 {
        return .failure(
          .badRequest("Whitespace between a header name and the colon is not accepted."))
      }
      if line[index] == 0 || line[index] == 13 {
        return .failure(.badRequest("A header contains a NUL or a bare CR."))
      }
      return .failure(.badRequest("A header name contains an invalid byte or has no colon."))
    }
    guard index > 0 else { return .failure(.badRequest("A header line has an empty name.")) }
    let name = makeString(line, 0, index, lowercase: true)
    var valueStart = index + 1
    var valueEnd = count
    for position in valueStart..<count {
      let byte = line[position]
      if byte < 32 && byte != 9 || byte == 127 {
        return .failure(
          .badRequest(
            byte == 0 || byte == 13
              ? "A header contains a NUL or a bare CR." : "A header value contains a control byte.")
        )
      }
    }
    while valueStart < valueEnd && (line[valueStart] == 32 || line[valueStart] == 9) {
      valueStart += 1
    }
    while valueEnd > valueStart && (line[valueEnd - 1] == 32 || line[valueEnd - 1] == 9) {
      valueEnd -= 1
    }
    return .success((name: name, value: makeString(line, valueStart, valueEnd, lowercase: false)))
  }

  /// Hex size of a chunk-size line (`1a;name=value`); nil when malformed or over 15 digits.
  private static func parseChunkSize(_ line: UnsafeBufferPointer<UInt8>) -> Int? {
    var size = 0
    var index = 0
    let count = line.count
    while index < count, let digit = Hex.digitValue(line[index]).map(Int.init) {
      guard index < 15 else { return nil }
      size = size << 4 | digit
      index += 1
    }
    guard index > 0 else { return nil }
    // Optional chunk extensions: BWS ";" ..., visible bytes, spaces and tabs only.
    var rest = index
    while rest < count && (line[rest] == 32 || line[rest] == 9) { rest += 1 }
    if rest == count { return rest == index ? size : nil }  // trailing whitespace without ';'
    guard line[rest] == 59 else { return nil }
    for position in rest..<count
    where line[position] < 32 && line[position] != 9 || line[position] == 127 {
      return nil
    }
    return size
  }

  /// Decimal Content-Length (digits only, no sign, no spaces inside); nil when malformed or over
  /// `Int.max`.
  static func parseContentLength(_ value: String) -> Int? {
    var result = 0
    var digits = 0
    for byte in value.utf8 {
      guard isDigit(byte) else { return nil }
      let (multiplied, overflow1) = result.multipliedReportingOverflow(by: 10)
      let (added, overflow2) = multiplied.addingReportingOverflow(Int(byte - 48))
      if overflow1 || overflow2 { return nil }
      result = added
      digits += 1
    }
    return digits > 0 ? result : nil
  }

  @inline(__always) static func isDigit(_ byte: UInt8) -> Bool { byte >= 48 && byte <= 57 }

  /// tchar (RFC 9110 §5.6.2): ALPHA / DIGIT / "!#$%&'*+-.^_`|~".
  @inline(__always) static func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case 97...122, 65...90, 48...57: return true
    case 33, 35, 36, 37, 38, 39, 42, 43, 45, 46, 94, 95, 96, 124, 126: return true
    default: return false
    }
  }

  /// Request-target bytes: visible ASCII and (leniently) bytes ≥ 0x80; no spaces or controls.
  @inline(__always) static func isTargetByte(_ byte: UInt8) -> Bool { byte > 32 && byte != 127 }

  @inline(__always)
  static func makeString(
    _ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int, lowercase: Bool
  ) -> String {
    let count = end - start
    if !lowercase {
      return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
    }
    return String(unsafeUninitializedCapacity: count) { output in
      for index in 0..<count {
        let byte = bytes[start + index]
        output[index] = byte >= 65 && byte <= 90 ? byte | 0x20 : byte
      }
      return count
    }
  }

  static func lowercased(_ text: String) -> String {
    var bytes = Array(text.utf8)
    for index in bytes.indices where bytes[index] >= 65 && bytes[index] <= 90 {
      bytes[index] |= 0x20
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}

extension String {
  /// Without leading and trailing spaces and tabs (over the UTF-8 bytes: cheap on a hot path).
  public func trimmingSpaces() -> String {
    let bytes = Array(utf8)
    var start = 0
    var end = bytes.count
    while start < end && (bytes[start] == 32 || bytes[start] == 9) { start += 1 }
    while end > start && (bytes[end - 1] == 32 || bytes[end - 1] == 9) { end -= 1 }
    return String(decoding: bytes[start..<end], as: UTF8.self)
  }
}

/// Keeps a client-supplied fragment printable inside an error message.
private func jsonSafe(_ text: String) -> String {
  String(text.unicodeScalars.map { $0.value < 32 || $0.value == 127 ? "?" : Character($0) })
}
