import XCTest

@testable import HTTPServer

/// A comparable summary of a parser event.
private enum Summary: Equatable, CustomStringConvertible {
  case continueExpected
  case request(
    method: String, target: String, minorVersion: Int, keepAlive: Bool, headers: [String],
    body: [UInt8])
  case failure(status: Int, code: String)

  init(_ event: HTTPParserEvent) {
    switch event {
    case .continueExpected:
      self = .continueExpected
    case .request(let parsed):
      self = .request(
        method: parsed.request.method, target: parsed.request.target,
        minorVersion: parsed.minorVersion,
        keepAlive: parsed.keepAlive,
        headers: parsed.request.headers.map { "\($0.name): \($0.value)" },
        body: parsed.request.body)
    case .failure(let error):
      self = .failure(status: error.status, code: error.code)
    }
  }

  var description: String {
    switch self {
    case .continueExpected: return "100-continue"
    case .request(let method, let target, let minor, let keepAlive, let headers, let body):
      return
        "\(method) \(target) HTTP/1.\(minor) keepAlive=\(keepAlive) \(headers) body=\(String(decoding: body, as: UTF8.self).prefix(40))"
    case .failure(let status, let code): return "failure \(status) \(code)"
    }
  }
}

private let smallLimits = HTTPParserLimits(
  requestLineBytesMax: 64, headerBytesMax: 128, headerCountMax: 4, bodyBytesMax: 32,
  chunkLineBytesMax: 16)

final class HTTPRequestParserTests: XCTestCase {
  /// Parses `text` all at once, byte by byte, and in 3-byte chunks; asserts the three agree and
  /// returns the events.
  private func parse(
    _ text: String, limits: HTTPParserLimits = HTTPParserLimits(HTTPServerConfiguration()),
    file: StaticString = #filePath, line: UInt = #line
  ) -> [Summary] {
    let bytes = Array(text.utf8)
    var whole = HTTPRequestParser(limits: limits)
    let allAtOnce = whole.parse(bytes).map(Summary.init)
    var single = HTTPRequestParser(limits: limits)
    var byteByByte: [Summary] = []
    for byte in bytes { byteByByte += single.parse([byte]).map(Summary.init) }
    var chunked = HTTPRequestParser(limits: limits)
    var inChunks: [Summary] = []
    var index = 0
    while index < bytes.count {
      inChunks += chunked.parse(Array(bytes[index..<min(bytes.count, index + 3)])).map(Summary.init)
      index += 3
    }
    XCTAssertEqual(allAtOnce, byteByByte, "all at once vs byte by byte", file: file, line: line)
    XCTAssertEqual(allAtOnce, inChunks, "all at once vs 3-byte chunks", file: file, line: line)
    return allAtOnce
  }

  private func assertFailure(
    _ text: String, status: Int, code: String? = nil, limits: HTTPParserLimits = smallLimits,
    file: StaticString = #filePath, line: UInt = #line
  ) {
    let events = parse(text, limits: limits, file: file, line: line)
    guard case .failure(let gotStatus, let gotCode)? = events.last else {
      XCTFail("expected failure \(status), got \(events)", file: file, line: line)
      return
    }
    XCTAssertEqual(gotStatus, status, "for \(text.debugDescription)", file: file, line: line)
    if let code { XCTAssertEqual(gotCode, code, file: file, line: line) }
  }

  private func assertRequest(
    _ text: String, limits: HTTPParserLimits = smallLimits, file: StaticString = #filePath,
    line: UInt = #line
  ) {
    let events = parse(text, limits: limits, file: file, line: line)
    guard events.count == 1, case .request = events[0] else {
      XCTFail("expected one request, got \(events)", file: file, line: line)
      return
    }
  }

  // MARK: Valid forms

  func testGetWithoutBody() {
    let events = parse("GET /v1/groups?scope=cluster HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    XCTAssertEqual(
      events,
      [
        .request(
          method: "GET", target: "/v1/groups?scope=cluster", minorVersion: 1, keepAlive: true,
          headers: ["host: a", "accept: */*"], body: [])
      ])
  }

  func testHeaderNamesAreLowercasedAndValuesTrimmed() {
    let events = parse("GET / HTTP/1.1\r\nX-Caucus-Hops:  2 \t\r\nCONTENT-TYPE:text/plain\r\n\r\n")
    XCTAssertEqual(
      events,
      [
        .request(
          method: "GET", target: "/", minorVersion: 1, keepAlive: true,
          headers: ["x-caucus-hops: 2", "content-type: text/plain"], body: [])
      ])
  }

  func testContentLengthBody() {
    let events = parse(
      "PUT /v1/groups/DataRegion-1/kv/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    XCTAssertEqual(
      events,
      [
        .request(
          method: "PUT", target: "/v1/groups/DataRegion-1/kv/a", minorVersion: 1, keepAlive: true,
          headers: ["content-length: 5"], body: Array("hello".utf8))
      ])
  }

  func testBinaryBodyWithCRLFAndNULBytes() {
    var parser = HTTPRequestParser()
    let body: [UInt8] = [0, 13, 10, 13, 10, 255, 0]
    let events = parser.parse(Array("POST /x HTTP/1.1\r\nContent-Length: 7\r\n\r\n".utf8) + body)
      .map(Summary.init)
    XCTAssertEqual(
      events,
      [
        .request(
          method: "POST", target: "/x", minorVersion: 1, keepAlive: true,
          headers: ["content-length: 7"], body: body)
      ])
  }

  func testChunkedBodyWithExtensionsAndTrailers() {
    let text =
      "POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      + "5;name=value\r\nhello\r\n" + "1A ; x\r\n" + String(repeating: "z", count: 26) + "\r\n"
      + "0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
    let events = parse(text)
    XCTAssertEqual(
      events,
      [
        .request(
          method: "POST", target: "/w", minorVersion: 1, keepAlive: true,
          headers: ["transfer-encoding: chunked"],
          body: Array(("hello" + String(repeating: "z", count: 26)).utf8))
      ])
  }

  func testChunkedEmptyBody() {
    let events = parse("POST /w HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n")
    XCTAssertEqual(
      events,
      [
        .request(
          method: "POST", target: "/w", minorVersion: 1, keepAlive: true,
          headers: ["transfer-encoding: Chunked"], body: [])
      ])
  }

  func testPipelinedRequestsInOneBuffer() {
    let text =
      "GET /1 HTTP/1.1\r\n\r\n" + "PUT /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
      + "POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
      + "GET /4 HTTP/1.1\r\nConnection: close\r\n\r\n"
    let events = parse(text)
    XCTAssertEqual(
      events,
      [
        .request(
          method: "GET", target: "/1", minorVersion: 1, keepAlive: true, headers: [], body: []),
        .request(
          method: "PUT", target: "/2", minorVersion: 1, keepAlive: true,
          headers: ["content-length: 3"], body: Array("abc".utf8)),
        .request(
          method: "POST", target: "/3", minorVersion: 1, keepAlive: true,
          headers: ["transfer-encoding: chunked"], body: Array("xy".utf8)),
        .request(
          method: "GET", target: "/4", minorVersion: 1, keepAlive: false,
          headers: ["connection: close"], body: []),
      ])
  }

  func testEmptyLinesBeforeARequestAreSkipped() {
    let events = parse("\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    XCTAssertEqual(
      events,
      [
        .request(
          method: "GET", target: "/", minorVersion: 1, keepAlive: true, headers: [], body: [])
      ])
  }

  func testHTTP10DefaultsToCloseUnlessKeepAlive() {
    XCTAssertEqual(
      parse("GET / HTTP/1.0\r\n\r\n"),
      [
        .request(
          method: "GET", target: "/", minorVersion: 0, keepAlive: false, headers: [], body: [])
      ])
    XCTAssertEqual(
      parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
      [
        .request(
          method: "GET", target: "/", minorVersion: 0, keepAlive: true,
          headers: ["connection: Keep-Alive"], body: [])
      ])
    XCTAssertEqual(
      parse("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n"),
      [
        .request(
          method: "GET", target: "/", minorVersion: 1, keepAlive: false,
          headers: ["connection: upgrade, close"], body: [])
      ])
  }

  func testExpectContinueIsReportedBeforeTheBody() {
    XCTAssertEqual(
      parse("PUT /k HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
      [
        .continueExpected,
        .request(
          method: "PUT", target: "/k", minorVersion: 1, keepAlive: true,
          headers: ["expect: 100-continue", "content-length: 2"], body: Array("ok".utf8)),
      ])
    // No body, nothing to continue.
    XCTAssertEqual(
      parse("GET /k HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
      [
        .request(
          method: "GET", target: "/k", minorVersion: 1, keepAlive: true,
          headers: ["expect: 100-continue"], body: [])
      ])
    // Over the limit: refused before the body.
    var parser = HTTPRequestParser(limits: smallLimits)
    let events = parser.parse(
      Array("PUT /k HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 33\r\n\r\n".utf8)
    ).map(Summary.init)
    XCTAssertEqual(events, [.failure(status: 413, code: "payload_too_large")])
  }

  func testIdenticalDuplicateContentLengthIsAccepted() {
    XCTAssertEqual(
      parse("PUT /k HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok").count, 1)
  }

  func testStateFlagsFollowTheRequest() {
    var parser = HTTPRequestParser()
    XCTAssertFalse(parser.isReadingHead)
    _ = parser.parse(Array("GET / HT".utf8))
    XCTAssertTrue(parser.isReadingHead)
    _ = parser.parse(Array("TP/1.1\r\nContent-Length: 3\r\n\r\na".utf8))
    XCTAssertFalse(parser.isReadingHead)
    XCTAssertTrue(parser.isReadingBody)
    XCTAssertEqual(parser.parse(Array("bc".utf8)).count, 1)
    XCTAssertFalse(parser.isReadingBody)
    XCTAssertEqual(parser.bufferedByteCount, 0)
  }

  func testAFailedParserStaysFailed() {
    var parser = HTTPRequestParser()
    XCTAssertEqual(
      parser.parse(Array("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n".utf8)).map(Summary.init),
      [.failure(status: 400, code: "bad_request")])
    XCTAssertTrue(parser.hasFailed)
    XCTAssertEqual(parser.parse(Array("GET / HTTP/1.1\r\n\r\n".utf8)).count, 0)
  }

  func testRandomSplitsOfARandomPipelineGiveTheSameEvents() {
    let seed: UInt64 = 0x5EED_CAFE
    var random = SplitMix64(seed: seed)
    var stream: [UInt8] = []
    for index in 0..<40 {
      let body = (0..<Int.random(in: 0...300, using: &random)).map { _ in
        UInt8.random(in: 0...255, using: &random)
      }
      switch index % 4 {
      case 0:
        stream += Array(
          "GET /g/\(index)?q=\(index) HTTP/1.1\r\nHost: h\r\nX-N: \(index)\r\n\r\n".utf8)
      case 1:
        stream +=
          Array("PUT /p/\(index) HTTP/1.1\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
      case 2:
        stream += Array("POST /c/\(index) HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        var rest = body[...]
        while !rest.isEmpty {
          let size = min(rest.count, Int.random(in: 1...64, using: &random))
          stream +=
            Array("\(String(size, radix: 16));ext=\(index)\r\n".utf8) + rest.prefix(size) + [
              13, 10,
            ]
          rest = rest.dropFirst(size)
        }
        stream += Array("0\r\nTrailer: t\r\n\r\n".utf8)
      default:
        stream +=
          Array(
            "PUT /e/\(index) HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: \(body.count + 1)\r\n\r\n"
              .utf8) + body + [0]
      }
    }
    var whole = HTTPRequestParser()
    let expected = whole.parse(stream).map(Summary.init)
    XCTAssertEqual(
      expected.filter { if case .request = $0 { return true } else { return false } }.count, 40)
    for round in 0..<100 {
      var parser = HTTPRequestParser()
      var events: [Summary] = []
      var index = 0
      while index < stream.count {
        let end = min(stream.count, index + Int.random(in: 1...700, using: &random))
        events += parser.parse(Array(stream[index..<end])).map(Summary.init)
        index = end
      }
      XCTAssertEqual(events, expected, "seed \(seed) round \(round)")
      if events != expected { break }
    }
  }

  func testRandomMutationsNeverCrashAndSplitsAgree() {
    let seed: UInt64 = 0xBAD_F00D
    var random = SplitMix64(seed: seed)
    let samples = [
      "GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
      "PUT /k HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
      "POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n",
      "GET / HTTP/1.0\r\n\r\n",
    ].map { Array($0.utf8) }
    let interesting: [UInt8] = [0, 9, 10, 13, 32, 58, 59, 48, 102, 255, 65]
    for round in 0..<2_000 {
      var bytes = samples[Int.random(in: 0..<samples.count, using: &random)]
      for _ in 0..<Int.random(in: 1...4, using: &random) {
        let position = Int.random(in: 0..<bytes.count, using: &random)
        switch Int.random(in: 0..<3, using: &random) {
        case 0: bytes[position] = interesting.randomElement(using: &random)!
        case 1: bytes.insert(interesting.randomElement(using: &random)!, at: position)
        default: bytes.remove(at: position)
        }
      }
      var whole = HTTPRequestParser(limits: smallLimits)
      let expected = whole.parse(bytes).map(Summary.init)
      var pieces = HTTPRequestParser(limits: smallLimits)
      var events: [Summary] = []
      var index = 0
      while index < bytes.count {
        let end = min(bytes.count, index + Int.random(in: 1...9, using: &random))
        events += pieces.parse(Array(bytes[index..<end])).map(Summary.init)
        index = end
      }
      XCTAssertEqual(
        events, expected,
        "seed \(seed) round \(round): \(String(decoding: bytes, as: UTF8.self).debugDescription)")
      if events != expected { break }
    }
  }

  // MARK: Limits: exactly at the limit passes, one past fails

  func testRequestLineLimit() {
    // "GET /" + path + " HTTP/1.1" is exactly 64 bytes, then 65.
    let atLimit = "GET /" + String(repeating: "a", count: 64 - 14) + " HTTP/1.1"
    XCTAssertEqual(atLimit.utf8.count, 64)
    assertRequest(atLimit + "\r\n\r\n")
    let overLimit = "GET /" + String(repeating: "a", count: 65 - 14) + " HTTP/1.1"
    assertFailure(overLimit + "\r\n\r\n", status: 414, code: "uri_too_long")
    // Refused before the line ends.
    var parser = HTTPRequestParser(limits: smallLimits)
    XCTAssertEqual(
      parser.parse(Array(("GET /" + String(repeating: "a", count: 200)).utf8)).map(Summary.init),
      [.failure(status: 414, code: "uri_too_long")])
  }

  func testHeaderBytesLimit() {
    // Header section = header lines with CRLF: 4 lines of 32 bytes = 128 = the limit.
    let line30 = "X-A: " + String(repeating: "v", count: 25)  // 30 bytes + CRLF = 32
    XCTAssertEqual(line30.utf8.count + 2, 32)
    let atLimit = "GET / HTTP/1.1\r\n" + String(repeating: line30 + "\r\n", count: 4) + "\r\n"
    assertRequest(atLimit)
    let overLimit =
      "GET / HTTP/1.1\r\n" + String(repeating: line30 + "\r\n", count: 3) + line30 + "v\r\n\r\n"
    assertFailure(overLimit, status: 431, code: "headers_too_large")
  }

  func testHeaderCountLimit() {
    assertRequest("GET / HTTP/1.1\r\n" + String(repeating: "A: 1\r\n", count: 4) + "\r\n")
    assertFailure(
      "GET / HTTP/1.1\r\n" + String(repeating: "A: 1\r\n", count: 5) + "\r\n", status: 431,
      code: "headers_too_large")
  }

  func testContentLengthBodyLimit() {
    assertRequest(
      "PUT / HTTP/1.1\r\nContent-Length: 32\r\n\r\n" + String(repeating: "b", count: 32))
    assertFailure(
      "PUT / HTTP/1.1\r\nContent-Length: 33\r\n\r\n" + String(repeating: "b", count: 33),
      status: 413, code: "payload_too_large")
  }

  func testChunkedBodyLimit() {
    let sixteen = String(repeating: "c", count: 16)
    assertRequest(
      "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n\(sixteen)\r\n10\r\n\(sixteen)\r\n0\r\n\r\n"
    )
    assertFailure(
      "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n\(sixteen)\r\n11\r\n\(sixteen)c\r\n0\r\n\r\n",
      status: 413, code: "payload_too_large")
  }

  func testChunkLineLimit() {
    // "1;" + 14 bytes = 16 = the limit.
    assertRequest(
      "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + String(repeating: "e", count: 14)
        + "\r\nx\r\n0\r\n\r\n")
    assertFailure(
      "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + String(repeating: "e", count: 15)
        + "\r\nx\r\n0\r\n\r\n", status: 400)
  }

  func testTrailerLimits() {
    let head = "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    assertRequest(head + String(repeating: "T: 1\r\n", count: 4) + "\r\n")
    assertFailure(head + String(repeating: "T: 1\r\n", count: 5) + "\r\n", status: 431)
  }

  // MARK: Malformed framing and syntax

  func testAmbiguousFramingIsRefused() {
    assertFailure(
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400,
      code: "bad_request")
    assertFailure(
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", status: 400)
    assertFailure(
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", status: 400)
  }

  func testBadContentLengthIsRefused() {
    for value in ["abc", "-1", "+3", "3 3", "0x10", "", "99999999999999999999999", "1,1", "3a"] {
      assertFailure("POST / HTTP/1.1\r\nContent-Length: \(value)\r\n\r\n", status: 400)
    }
  }

  func testBadChunkSizesAreRefused() {
    let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assertFailure(head + "g\r\n", status: 400)  // not hex
    assertFailure(head + "\r\n", status: 400)  // empty
    assertFailure(head + "-1\r\n", status: 400)
    assertFailure(head + "1000000000000000\r\n", status: 400)  // 16 hex digits: overflow
    assertFailure(head + "5\r\nhelloXY", status: 400)  // data not followed by CRLF
    assertFailure(head + "5\r\nhello\rX", status: 400)
    assertFailure(head + "5\nhello\r\n", status: 400)  // bare LF after the size
    assertFailure(head + "5 x\r\nhello\r\n", status: 400)
  }

  func testUnsupportedTransferEncodingIsNotImplemented() {
    assertFailure(
      "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", status: 501, code: "not_implemented")
    assertFailure("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", status: 501)
    assertFailure(
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
      status: 501)
    assertFailure("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400)
  }

  func testMalformedHeadersAreRefused() {
    assertFailure("GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", status: 400)  // obs-fold (space)
    assertFailure("GET / HTTP/1.1\r\nA: 1\r\n\tfolded\r\n\r\n", status: 400)  // obs-fold (tab)
    assertFailure("GET / HTTP/1.1\r\nA: x\0y\r\n\r\n", status: 400)  // NUL in value
    assertFailure("GET / HTTP/1.1\r\nA\0: y\r\n\r\n", status: 400)  // NUL in name
    assertFailure("GET / HTTP/1.1\r\nA: x\ry\r\n\r\n", status: 400)  // CR without LF
    assertFailure("GET / HTTP/1.1\r\nA: x\u{1}y\r\n\r\n", status: 400)  // control byte
    assertFailure("GET / HTTP/1.1\r\nA : x\r\n\r\n", status: 400)  // whitespace before colon
    assertFailure("GET / HTTP/1.1\r\nA\t: x\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1.1\r\nNoColon\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1.1\r\n: empty-name\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1.1\r\nA(b): x\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1.1\nA: x\n\n", status: 400)  // bare LF line ends
    assertFailure("GET / HTTP/1.1\r\nA: x\n\r\n", status: 400)
  }

  func testUnknownVersionsAreNotSupported() {
    assertFailure("GET / HTTP/2.0\r\n\r\n", status: 505, code: "http_version_not_supported")
    assertFailure("GET / HTTP/1.2\r\n\r\n", status: 505)
    assertFailure("GET / HTTP/0.9\r\n\r\n", status: 505)
    assertFailure("GET / HTTP/1.10\r\n\r\n", status: 400)
    assertFailure("GET / http/1.1\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1\r\n\r\n", status: 400)
  }

  func testBadRequestLinesAreRefused() {
    assertFailure("G(T / HTTP/1.1\r\n\r\n", status: 400)  // bad method token
    assertFailure(" GET / HTTP/1.1\r\n\r\n", status: 400)
    assertFailure("GET  / HTTP/1.1\r\n\r\n", status: 400)  // two spaces
    assertFailure("GET /a b HTTP/1.1\r\n\r\n", status: 400)
    assertFailure("GET /\0 HTTP/1.1\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1.1 \r\n\r\n", status: 400)
    assertFailure("GET\r\n\r\n", status: 400)
    assertFailure("GET /\r\n\r\n", status: 400)
    assertFailure("GET / HTTP/1.1\r\r\n\r\n", status: 400)  // CR without LF
    assertFailure("GET / HTTP/1.1\n\r\n", status: 400)
  }

  func testErrorResponsesAreJSON() {
    let response = HTTPResponse.jsonError(
      status: 400, code: "bad_request", message: "Say \"hi\"\n\\ now.")
    XCTAssertEqual(response.status, 400)
    XCTAssertEqual(response.headers.first?.value, "application/json; charset=utf-8")
    XCTAssertEqual(
      String(decoding: response.body, as: UTF8.self),
      #"{"error":"bad_request","message":"Say \"hi\"\n\\ now."}"#)
    var writer = JSONWriter()
    writer.string("a\u{1}b\tc plain ü")
    XCTAssertEqual(String(decoding: writer.bytes, as: UTF8.self), "\"a\\u0001b\\tc plain ü\"")
  }

  func testResponseSerialization() {
    var output: [UInt8] = []
    HTTPResponse(
      status: 200, headers: [("X-A", "1"), ("content-length", "99")], body: Array("hi".utf8)
    )
    .serialize(into: &output, close: true, keepAliveHTTP10: false, omitBody: false)
    XCTAssertEqual(
      String(decoding: output, as: UTF8.self),
      "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
  }
}

/// A small seeded generator (SplitMix64) so a failing split can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
  private var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var value = state
    value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
    value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
    return value ^ (value >> 31)
  }
}
