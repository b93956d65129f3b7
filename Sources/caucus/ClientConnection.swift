import ArgumentParser
import Glibc
import HTTPServer
import JSON
import PeerClient
import Platform

// The client side of `caucus` (`kv`, `group`, `peer`, `cluster`, and any command that talks to a
// running cluster over the HTTP API): the options every client command shares, one blocking
// request function with endpoint fail-over, and the printing of answers and errors.

/// The exit statuses of every client command; README "Command-line client" lists them.
enum ClientExitStatus {
  /// The server answered 2xx (and, for `kv get`, the key exists).
  static let ok: Int32 = 0
  /// A request that changes state may or may not have taken effect: the server said so
  /// (`504` with `indeterminate`), or a request was sent and its answer never came. A write
  /// with an Idempotency-Key can be retried with the same key (`--idempotency-key`).
  static let outcomeUnknown: Int32 = 5
  /// A server answered with an error (4xx, or 5xx but 503 from every endpoint tried); the
  /// server's `error: <code>: <message>` went to standard error.
  static let refused: Int32 = 1
  /// No endpoint answered (connection refused, unreachable, TLS handshake failed, timed out) or
  /// every one answered 503 before the deadline — nothing is known about the cluster.
  static let unreachable: Int32 = 3
  /// Bad flags or arguments, an unreadable file: ArgumentParser's own status for a usage error
  /// (EX_USAGE), kept so that every usage error of `caucus` has one status.
  static let usage: Int32 = ExitCode.validationFailure.rawValue
}

/// How a client command prints what it got.
enum ClientOutputFormat: String, ExpressibleByArgument, CaseIterable {
  /// Aligned columns or `name=value` lines for a person.
  case table
  /// The server's JSON answer (or a document the command composes), one document per line.
  case json
}

/// The options of every client command (`@OptionGroup var connection: ClientOptions`).
struct ClientOptions: ParsableArguments {
  /// Where a client command goes when neither --endpoints nor CAUCUS_ENDPOINTS says.
  static let defaultEndpoint = "http://127.0.0.1:6667"
  /// A command's whole deadline when --timeout-ms is not given: every endpoint tried within it.
  static let defaultTimeoutMs = 10_000
  /// Endpoints in one --endpoints list at most: each is tried at most once per request.
  static let endpointsMax = 64

  @Option(
    name: .long,
    help: ArgumentHelp(
      "Comma-separated node client URLs (http://host:port or https://host:port); tried in order, the next after a connection failure, a timeout or a 503. (default: $CAUCUS_ENDPOINTS, else \(defaultEndpoint))",
      valueName: "url,..."))
  var endpoints: String?

  @Option(
    name: .long,
    help: "Bearer token for nodes started with --auth-tokens-file; prefer CAUCUS_TOKEN, which stays out of the process list. (default: $CAUCUS_TOKEN)")
  var token: String?

  @Option(
    name: .long,
    help: ArgumentHelp(
      "CA certificate (PEM) that the nodes' TLS certificates chain to; every request then goes over https, an http:// endpoint included. (default: the system's CAs for https:// endpoints)",
      valueName: "file"))
  var cacert: String?

  @Option(name: .long, help: "table (for people) or json (the server's answer, one document per line).")
  var output: ClientOutputFormat = .table

  @Option(
    name: .long,
    help: "The command's deadline, fail-over included: each endpoint tried gets an equal share of what is left (a watch: each poll may take its wait plus this, per endpoint).")
  var timeoutMs: Int = defaultTimeoutMs

  /// A day: a longer deadline is a mistake (and the arithmetic on it must not overflow).
  static let timeoutMsMax = 24 * 60 * 60 * 1_000

  func validate() throws {
    guard (1...Self.timeoutMsMax).contains(timeoutMs) else {
      throw ValidationError("--timeout-ms must be 1...\(Self.timeoutMsMax), got \(timeoutMs)")
    }
    _ = try resolvedEndpoints()
  }

  /// The endpoints as base URLs without a trailing `/`, in the order they are tried.
  func resolvedEndpoints() throws(ValidationError) -> [String] {
    let environment = getenv("CAUCUS_ENDPOINTS").map { String(cString: $0) }
    let list = endpoints ?? (environment?.isEmpty == false ? environment! : Self.defaultEndpoint)
    var resolved: [String] = []
    for item in list.split(separator: ",") {
      var url = String(item).trimmingCharacters(in: " ")
      if url.isEmpty { continue }
      guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
        throw ValidationError("endpoint '\(url)' must start with http:// or https://")
      }
      while url.hasSuffix("/") { url.removeLast() }
      guard url.split(separator: "/", omittingEmptySubsequences: false).count == 3 else {
        throw ValidationError("endpoint '\(url)' must be a node's base URL (scheme://host:port), without a path")
      }
      resolved.append(url)
    }
    guard !resolved.isEmpty else { throw ValidationError("--endpoints names no endpoint") }
    guard resolved.count <= Self.endpointsMax else {
      throw ValidationError("--endpoints names \(resolved.count) endpoints; at most \(Self.endpointsMax)")
    }
    return resolved
  }

  /// --token, else CAUCUS_TOKEN; nil when neither is set (or empty).
  var resolvedToken: String? {
    if let token, !token.isEmpty { return token }
    guard let environment = getenv("CAUCUS_TOKEN") else { return nil }
    let token = String(cString: environment).trimmingCharacters(in: " \t\r\n")
    return token.isEmpty ? nil : token
  }
}

/// No endpoint gave an answer within the deadline: what each attempt met, in order.
struct ClientUnreachable: Error, CustomStringConvertible {
  var attempts: [(endpoint: String, failure: String)]
  /// A request that changes state was sent and its answer never came (a timeout or a broken
  /// connection, not a refused one): it may have taken effect.
  var outcomeUnknown = false
  /// The client itself could not make the request or take its answer (an answer past its size
  /// limit, a request it cannot send): another endpoint would not do better.
  var failedHere = false
  var description: String {
    let tried = attempts.map { "\($0.endpoint): \($0.failure)" }.joined(separator: "; ")
    if outcomeUnknown { return "outcome_unknown: the request may or may not have taken effect (\(tried))" }
    if failedHere { return "client_failed: \(tried)" }
    return attempts.isEmpty
      ? "no endpoint reachable: the deadline passed before the first attempt"
      : "no endpoint reachable: " + tried
  }
}

/// A blocking HTTP client over `PeerClient` (libcurl) for one command: the endpoints, the token,
/// the output format and the deadline. Not for concurrent use: a command is one thread.
final class ClientConnection {
  let endpoints: [String]
  let token: String?
  let output: ClientOutputFormat
  /// The command's deadline (`--timeout-ms` from the start of the command).
  let deadlineNanoseconds: UInt64
  let timeoutMs: Int
  private let http: PeerClient
  /// The endpoint that answered last: a command of many requests (list --all, watch) starts
  /// there instead of trying a dead first endpoint again every time.
  private var preferred = 0

  /// A TCP connect longer than this on loopback or a LAN means the host is gone: move on.
  static let connectTimeoutMs = 1_000
  /// Client answers are JSON pages (a listing page stops at 4 MiB) or one value (1 MiB by
  /// default, configurable on the node): a bound well above both that still stops a confused
  /// endpoint from filling memory.
  static let responseBytesMax = 256 * 1024 * 1024

  init(_ options: ClientOptions) throws {
    endpoints = try options.resolvedEndpoints()
    token = options.resolvedToken
    output = options.output
    timeoutMs = options.timeoutMs
    deadlineNanoseconds = MonotonicClock.nowNanoseconds() + UInt64(options.timeoutMs) * 1_000_000
    var configuration = PeerClientConfiguration()
    configuration.timeoutMs = options.timeoutMs
    configuration.connectTimeoutMs = min(Self.connectTimeoutMs, options.timeoutMs)
    configuration.responseBytesMax = Self.responseBytesMax
    if let cacert = options.cacert { configuration.tls = PeerTLSConfiguration(caCertificateFile: cacert) }
    // Without --cacert an http:// URL stays plain: with https endpoints, a URL learnt from the
    // cluster must not take the token over plain http.
    refusesPlainURLs = options.cacert == nil && endpoints.contains { $0.hasPrefix("https://") }
    do { http = try PeerClient(configuration: configuration) } catch { throw ValidationError("\(error)") }
  }

  deinit { http.shutdown() }

  /// Whether a plain `http://` URL outside `endpoints` is refused (`send(to:)`): the endpoints
  /// are https and nothing upgrades http to TLS.
  private let refusesPlainURLs: Bool

  /// Sends one request with fail-over and returns the first answer that is not a 503: each
  /// endpoint is tried at most once, in order from the one that answered last, within
  /// `deadlineNanoseconds` (the command's, unless given). A connection failure, a timeout, a
  /// transport error or a `503` moves to the next endpoint; any other answer is final (a node
  /// forwards to the group's leader itself). When every endpoint tried answered 503 the last
  /// 503 is returned (the cluster is there but cannot serve: the caller reports it as a refusal).
  /// `target` is the path and query, percent-encoded (`ClientConnection.encode`).
  ///
  /// A request that changes state (not GET or HEAD) whose attempt timed out or broke after it
  /// was sent may have taken effect: it moves to the next endpoint only when it carries an
  /// Idempotency-Key (the node applies it at most once), and when no final answer comes the
  /// failure says the outcome is unknown rather than that nothing answered.
  ///
  /// An attempt may take `attemptTimeoutMs` (a long poll's wait plus a margin) or, by default,
  /// an equal share of what is left of the deadline among the endpoints not yet tried (the last
  /// one all of it): a node that accepts connections but never answers must not use up the
  /// deadline of the ones after it. A connect fails within `connectTimeoutMs` in any case.
  func send(
    _ method: String, _ target: String, body: [UInt8] = [], headers: [(name: String, value: String)] = [],
    deadlineNanoseconds: UInt64? = nil, attemptTimeoutMs: Int? = nil
  ) throws(ClientUnreachable) -> PeerResponse {
    precondition(target.hasPrefix("/"), "a target is a path: \(target)")
    let deadline = deadlineNanoseconds ?? self.deadlineNanoseconds
    var requestHeaders = headers
    if let token { requestHeaders.append(("Authorization", "Bearer \(token)")) }
    var attempts: [(endpoint: String, failure: String)] = []
    var unavailable: PeerResponse?
    let changesState = method != "GET" && method != "HEAD"
    let retriesSafely = headers.contains { $0.name.lowercased() == "idempotency-key" }
    var possiblyApplied = false
    for offset in 0..<endpoints.count {
      let index = (preferred + offset) % endpoints.count
      let now = MonotonicClock.nowNanoseconds()
      guard now < deadline else { break }
      let remainingMs = max(1, Int((deadline - now) / 1_000_000))
      let attemptMs = min(remainingMs, attemptTimeoutMs ?? max(1, remainingMs / (endpoints.count - offset)))
      let request = PeerRequest(
        method: method, url: endpoints[index] + target, headers: requestHeaders, body: body,
        timeoutMs: attemptMs, connectTimeoutMs: min(Self.connectTimeoutMs, attemptMs))
      let result: Result<PeerResponse, PeerError> = waitForCompletion { completion in
        http.send(request, completion: completion)
      }
      switch result {
      case .success(let response) where response.status == 503:
        unavailable = response
        attempts.append((endpoints[index], "503 \(Self.errorCode(response) ?? "unavailable")"))
      case .success(let response):
        preferred = index
        return response
      case .failure(.connectFailed(let message)):
        attempts.append((endpoints[index], message))
      case .failure(.timeout(let message)), .failure(.transport(let message)):
        attempts.append((endpoints[index], message))
        if changesState {
          possiblyApplied = true
          guard retriesSafely else { throw ClientUnreachable(attempts: attempts, outcomeUnknown: true) }
        }
      case .failure(.tooLarge(let bytesMax)):
        // The answer came and was too large to take: a change it answers did take place or not.
        attempts.append((endpoints[index], "the answer is larger than the client takes (\(bytesMax) bytes)"))
        throw ClientUnreachable(attempts: attempts, outcomeUnknown: changesState, failedHere: true)
      case .failure(let error):
        // Invalid, overloaded, shutting down: not sent, and another endpoint would not do better.
        attempts.append((endpoints[index], error.description))
        throw ClientUnreachable(attempts: attempts, failedHere: true)
      }
    }
    if possiblyApplied { throw ClientUnreachable(attempts: attempts, outcomeUnknown: true) }
    if let unavailable { return unavailable }
    throw ClientUnreachable(attempts: attempts)
  }

  /// One request to `baseURL` (a node's client URL learnt from the cluster, outside
  /// `endpoints`), with the token, within what is left of the command's deadline; no fail-over.
  func send(to baseURL: String, _ method: String, _ target: String) -> Result<PeerResponse, PeerError> {
    precondition(target.hasPrefix("/"), "a target is a path: \(target)")
    if refusesPlainURLs && baseURL.hasPrefix("http://") {
      return .failure(.invalidRequest("\(baseURL) is plain http while --endpoints are https; not sent"))
    }
    let now = MonotonicClock.nowNanoseconds()
    guard now < deadlineNanoseconds else { return .failure(.timeout("the command's deadline passed")) }
    let remainingMs = max(1, Int((deadlineNanoseconds - now) / 1_000_000))
    var headers: [(name: String, value: String)] = []
    if let token { headers.append(("Authorization", "Bearer \(token)")) }
    let request = PeerRequest(
      method: method, url: baseURL + target, headers: headers, timeoutMs: remainingMs,
      connectTimeoutMs: min(Self.connectTimeoutMs, remainingMs))
    return waitForCompletion { completion in http.send(request, completion: completion) }
  }

  /// `send` for a command: no answer prints `error: no endpoint reachable…` and exits 3; an
  /// answer outside 2xx (and not in `accepting`) prints the server's error and exits 1; a change
  /// whose outcome is unknown (no answer after it was sent, or the server's `504` with
  /// `indeterminate`) prints why, the Idempotency-Key to retry with when it has one, and exits 5.
  func call(
    _ method: String, _ target: String, body: [UInt8] = [], headers: [(name: String, value: String)] = [],
    accepting: Set<Int> = [], deadlineNanoseconds: UInt64? = nil, attemptTimeoutMs: Int? = nil
  ) throws -> PeerResponse {
    let response: PeerResponse
    do {
      response = try send(
        method, target, body: body, headers: headers, deadlineNanoseconds: deadlineNanoseconds, attemptTimeoutMs: attemptTimeoutMs)
    } catch {
      printStandardError("error: \(error)")
      guard error.outcomeUnknown else {
        throw ExitCode(error.failedHere ? ClientExitStatus.refused : ClientExitStatus.unreachable)
      }
      Self.printRetryHint(headers)
      throw ExitCode(ClientExitStatus.outcomeUnknown)
    }
    guard (200..<300).contains(response.status) || accepting.contains(response.status) else {
      Self.printServerError(response)
      if response.status == 504, (try? JSONParser.parse(response.body))?["indeterminate"] == .bool(true) {
        Self.printRetryHint(headers)
        throw ExitCode(ClientExitStatus.outcomeUnknown)
      }
      throw ExitCode(ClientExitStatus.refused)
    }
    return response
  }

  /// After an unknown outcome: how to retry so that the write applies at most once.
  static func printRetryHint(_ headers: [(name: String, value: String)]) {
    guard let key = headers.first(where: { $0.name.lowercased() == "idempotency-key" })?.value else {
      printStandardError("note: it may or may not have taken effect; check before repeating it")
      return
    }
    printStandardError("note: it may or may not have been applied; repeat it with --idempotency-key \(key) to apply it at most once")
  }

  /// `error: <code>: <message>` on standard error, from the server's JSON error (the raw status
  /// and body when the answer is not one).
  static func printServerError(_ response: PeerResponse) {
    if let json = try? JSONParser.parse(response.body), let code = json["error"]?.stringValue {
      printStandardError("error: \(code): \(json["message"]?.stringValue ?? "(no message)")")
    } else {
      let text = String(decoding: response.body.prefix(512), as: UTF8.self).trimmingCharacters(in: " \t\r\n")
      printStandardError("error: http_\(response.status): \(text.isEmpty ? "(no body)" : text)")
    }
  }

  /// The `error` code of a JSON error answer.
  static func errorCode(_ response: PeerResponse) -> String? {
    (try? JSONParser.parse(response.body))?["error"]?.stringValue
  }

  /// The answer's JSON; an answer that is not JSON is the server's bug, reported as a refusal.
  func json(_ response: PeerResponse) throws -> JSONValue {
    do { return try JSONParser.parse(response.body) } catch {
      printStandardError("error: bad_response: the answer (\(response.status)) is not JSON: \(error)")
      throw ExitCode(ClientExitStatus.refused)
    }
  }

  /// Prints a JSON document on one line (`--output json`) or `table` (`--output table`).
  func emit(json document: [UInt8], table: () -> String) {
    switch output {
    case .json: printStandardOutput(Self.oneLine(document))
    case .table:
      let text = table()
      if !text.isEmpty { printStandardOutput(text.hasSuffix("\n") ? String(text.dropLast()) : text) }
    }
  }

  /// The document without the line breaks a server may put around it, so that each is one line.
  static func oneLine(_ document: [UInt8]) -> String {
    if let parsed = try? JSONParser.parse(document) {
      var writer = JSONWriter()
      writer.value(parsed)
      return String(decoding: writer.bytes, as: UTF8.self)
    }
    return String(decoding: document, as: UTF8.self).trimmingCharacters(in: "\r\n")
  }

  // MARK: Targets

  /// Bytes kept as they are in a path segment or query value (RFC 3986 unreserved); every other
  /// byte is percent-encoded, `/` included, so that libcurl never normalizes a key's `.` or `..`
  /// segments and the node decodes exactly the bytes given.
  static func encode(_ text: String) -> String { encode(bytes: Array(text.utf8)) }

  static func encode(bytes: [UInt8]) -> String {
    let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
    var encoded: [UInt8] = []
    encoded.reserveCapacity(bytes.count)
    for byte in bytes {
      switch byte {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
        UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
        encoded.append(byte)
      default:
        encoded += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
      }
    }
    return String(decoding: encoded, as: UTF8.self)
  }

  /// `path?name=value&…` with the values encoded; nil values are left out.
  static func target(_ path: String, _ query: [(String, String?)] = []) -> String {
    let parameters = query.compactMap { name, value in value.map { "\(name)=\(encode($0))" } }
    return parameters.isEmpty ? path : path + "?" + parameters.joined(separator: "&")
  }

  /// `/v1/groups/<group>` + `rest`, the group encoded.
  static func groupPath(_ group: String, _ rest: String = "") -> String {
    "/v1/groups/" + encode(group) + rest
  }
}

// MARK: Printing

/// A line on standard output (flushed: a watch's lines must reach a pipe as they happen).
func printStandardOutput(_ line: String) {
  writeAll(1, Array((line + "\n").utf8))
}

/// A line on standard error.
func printStandardError(_ line: String) {
  writeAll(2, Array((line + "\n").utf8))
}

/// Writes every byte to `descriptor` (retrying short writes and EINTR); a closed pipe ends the
/// command quietly, as for any Unix filter.
func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) {
  var written = 0
  while written < bytes.count {
    let count = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, bytes.count - written) }
    if count < 0 && errno == EINTR { continue }
    guard count > 0 else { exit(errno == EPIPE ? 0 : ClientExitStatus.refused) }
    written += count
  }
}

/// Rows as aligned columns under `header` (two spaces between columns; the last is not padded);
/// the header line is left out when not `withHeader` (a listing's later pages).
func formatTable(_ header: [String], _ rows: [[String]], withHeader: Bool = true) -> String {
  var widths = header.map(\.count)
  for row in rows {
    precondition(row.count == header.count, "a row of \(row.count) cells under \(header.count) columns")
    for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) }
  }
  return ((withHeader ? [header] : []) + rows).map { row in
    row.enumerated().map { column, cell in
      column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
    }.joined(separator: "  ")
  }.joined(separator: "\n")
}

/// A JSON value as a table cell: strings bare, integers without a fraction, null as `-`, arrays
/// and objects as compact JSON.
func cellText(_ value: JSONValue?) -> String {
  guard let value else { return "-" }
  switch value {
  case .null: return "-"
  case .bool(let flag): return flag ? "true" : "false"
  case .string(let text): return text
  case .number(let number):
    if let integer = value.unsignedIntegerValue { return String(integer) }
    if number.rounded(.towardZero) == number, abs(number) < 9_007_199_254_740_992 { return String(Int(number)) }
    return String(number)
  case .array, .object:
    var writer = JSONWriter()
    writer.value(value)
    return String(decoding: writer.bytes, as: UTF8.self)
  }
}
