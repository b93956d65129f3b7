extension HTTPResponse {
  public static let jsonContentType = "application/json; charset=utf-8"

  /// A JSON error answer per API.md: `{"error":"<code>","message":"<sentence>"}`.
  public static func jsonError(
    status: Int, code: String, message: String, headers: [(name: String, value: String)] = []
  ) -> HTTPResponse {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("error", code)
    writer.member("message", message)
    writer.endObject()
    return HTTPResponse(status: status, headers: [("Content-Type", jsonContentType)] + headers, body: writer.bytes)
  }

  /// The JSON error answer for a request the parser refused (or a server-side timeout).
  public static func jsonError(_ error: HTTPParseError) -> HTTPResponse {
    jsonError(status: error.status, code: error.code, message: error.message)
  }

  /// A JSON answer with an already-encoded body.
  public static func json(
    status: Int = 200, _ body: String, headers: [(name: String, value: String)] = []
  ) -> HTTPResponse {
    HTTPResponse(
      status: status, headers: [("Content-Type", jsonContentType)] + headers, body: Array(body.utf8)
    )
  }

  /// The standard reason phrase for `status` ("" when unknown: the status line stays valid).
  public static func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 100: return "Continue"
    case 200: return "OK"
    case 201: return "Created"
    case 202: return "Accepted"
    case 204: return "No Content"
    case 301: return "Moved Permanently"
    case 302: return "Found"
    case 304: return "Not Modified"
    case 307: return "Temporary Redirect"
    case 308: return "Permanent Redirect"
    case 400: return "Bad Request"
    case 401: return "Unauthorized"
    case 403: return "Forbidden"
    case 404: return "Not Found"
    case 405: return "Method Not Allowed"
    case 408: return "Request Timeout"
    case 409: return "Conflict"
    case 410: return "Gone"
    case 411: return "Length Required"
    case 412: return "Precondition Failed"
    case 413: return "Content Too Large"
    case 414: return "URI Too Long"
    case 415: return "Unsupported Media Type"
    case 417: return "Expectation Failed"
    case 421: return "Misdirected Request"
    case 422: return "Unprocessable Content"
    case 428: return "Precondition Required"
    case 429: return "Too Many Requests"
    case 431: return "Request Header Fields Too Large"
    case 500: return "Internal Server Error"
    case 501: return "Not Implemented"
    case 502: return "Bad Gateway"
    case 503: return "Service Unavailable"
    case 504: return "Gateway Timeout"
    case 505: return "HTTP Version Not Supported"
    case 507: return "Insufficient Storage"
    case 508: return "Loop Detected"
    default: return ""
    }
  }

  /// Whether the handler asked to close the connection (`Connection: close` among its headers).
  var asksToClose: Bool {
    for header in headers where HTTPResponse.equalsLowercase(header.name, "connection") {
      if HTTPResponse.equalsLowercase(header.value, "close") { return true }
    }
    return false
  }

  /// Appends the whole response (status line, headers, `Content-Length`, `Connection` when
  /// needed, body) to `output`, so it leaves in one send. Handler-supplied `Content-Length`,
  /// `Transfer-Encoding` and `Connection` headers are replaced by the server's own.
  /// `omitBody`: an answer to HEAD (headers only, Content-Length of the body it would have).
  func serialize(into output: inout [UInt8], close: Bool, keepAliveHTTP10: Bool, omitBody: Bool) {
    output.reserveCapacity(output.count + 128 + body.count)
    appendASCII("HTTP/1.1 ", to: &output)
    appendDecimal(status, to: &output)
    output.append(32)
    output.append(contentsOf: HTTPResponse.reasonPhrase(status).utf8)
    output.append(13)
    output.append(10)
    for header in headers {
      let name = header.name
      if HTTPResponse.equalsLowercase(name, "content-length")
        || HTTPResponse.equalsLowercase(name, "connection")
        || HTTPResponse.equalsLowercase(name, "transfer-encoding")
      {
        continue
      }
      output.append(contentsOf: name.utf8)
      output.append(58)
      output.append(32)
      output.append(contentsOf: header.value.utf8)
      output.append(13)
      output.append(10)
    }
    // 1xx and 204 carry no Content-Length (RFC 9110 §8.6); every other answer does.
    if status >= 200 && status != 204 {
      appendASCII("Content-Length: ", to: &output)
      appendDecimal(omitBody ? headContentLength ?? body.count : body.count, to: &output)
      output.append(13)
      output.append(10)
    }
    if close {
      appendASCII("Connection: close\r\n", to: &output)
    } else if keepAliveHTTP10 {
      appendASCII("Connection: keep-alive\r\n", to: &output)
    }
    output.append(13)
    output.append(10)
    if !omitBody && status != 204 && status != 304 { output.append(contentsOf: body) }
  }

  /// ASCII case-insensitive equality with an already-lowercase `lower`.
  @inline(__always)
  static func equalsLowercase(_ text: String, _ lower: StaticString) -> Bool {
    let utf8 = text.utf8
    guard utf8.count == lower.utf8CodeUnitCount else { return false }
    let expected = lower.utf8Start
    var index = 0
    for byte in utf8 {
      let folded = byte >= 65 && byte <= 90 ? byte | 0x20 : byte
      if folded != expected[index] { return false }
      index += 1
    }
    return true
  }
}

@inline(__always)
func appendASCII(_ text: StaticString, to output: inout [UInt8]) {
  output.append(
    contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
}

@inline(__always)
func appendDecimal(_ value: Int, to output: inout [UInt8]) {
  precondition(value >= 0, "negative decimal")
  if value < 10 {
    output.append(UInt8(48 + value))
    return
  }
  var digits:
    (
      UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
      UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8
    ) =
      (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
  var remaining = value
  var count = 0
  withUnsafeMutableBytes(of: &digits) { raw in
    while remaining > 0 {
      raw[19 - count] = UInt8(48 + remaining % 10)
      remaining /= 10
      count += 1
    }
    output.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[(20 - count)...]))
  }
}
