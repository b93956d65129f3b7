// TEMPORARY stub until the http branch merges.
public struct HTTPServerConfiguration: Sendable { public var host = "127.0.0.1"; public var port: UInt16 = 0; public var bodyBytesMax = 1 << 20; public var connectionsMax = 10_000; public init() {} }
public final class HTTPServer: Sendable {
  public init(configuration: HTTPServerConfiguration, handler: any HTTPHandler) {}
  public func start() throws -> UInt16 { 0 }
  public func shutdown(gracePeriodMs: Int) {}
}
