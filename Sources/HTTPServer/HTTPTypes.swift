/// A parsed HTTP/1.1 request, handed to the handler. Header names are lowercased ASCII.
public struct HTTPRequest: Sendable {
  public var method: String
  /// The request target as sent (`/v1/groups/DataRegion-1/kv/a%2Fb?consistency=stale`).
  public var target: String
  /// The target's path, still percent-encoded.
  public var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0] }
  /// The target's query string without `?`, still percent-encoded ("" when absent).
  public var query: Substring {
    guard let mark = target.firstIndex(of: "?") else { return "" }
    return target[target.index(after: mark)...]
  }
  public var headers: [(name: String, value: String)]
  public var body: [UInt8]
  /// The client's peer address, `host:port`, for logs.
  public var remoteAddress: String

  public init(method: String, target: String, headers: [(name: String, value: String)], body: [UInt8], remoteAddress: String = "") {
    self.method = method
    self.target = target
    self.headers = headers
    self.body = body
    self.remoteAddress = remoteAddress
  }

  /// The first value of header `name` (give it lowercased).
  public func header(_ name: String) -> String? {
    headers.first(where: { $0.name == name })?.value
  }
}

public struct HTTPResponse: Sendable {
  public var status: Int
  /// Extra headers. The server adds `Content-Length` and, when it closes, `Connection: close`.
  public var headers: [(name: String, value: String)]
  public var body: [UInt8]
  /// For an answer to HEAD whose body is not at hand (a relayed HEAD, answered without one by
  /// the node that had it): the `Content-Length` the GET's body would have. Nil: `body.count`.
  public var headContentLength: Int?

  public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = [], headContentLength: Int? = nil) {
    precondition(headContentLength == nil || (body.isEmpty && headContentLength! >= 0), "a HEAD length stands for a body not sent")
    self.status = status
    self.headers = headers
    self.body = body
    self.headContentLength = headContentLength
  }

  /// The first value of header `name`, whatever its case (a response's names are as written).
  public func header(_ name: String) -> String? {
    let lowercased = name.lowercased()
    return headers.first(where: { $0.name.lowercased() == lowercased })?.value
  }
}

/// Answers one request, exactly once, from any thread. Answers on one connection go out in
/// request order even when completed out of order (pipelining).
public struct HTTPResponder: Sendable {
  private let send: @Sendable (HTTPResponse) -> Void

  public init(_ send: @escaping @Sendable (HTTPResponse) -> Void) { self.send = send }

  public func respond(_ response: HTTPResponse) { send(response) }
}

/// What the server calls for every complete request, on its event-loop thread. It must not block:
/// work that waits (disk, network, consensus) completes later through the responder.
public protocol HTTPHandler: Sendable {
  func handle(_ request: HTTPRequest, responder: HTTPResponder)
}
