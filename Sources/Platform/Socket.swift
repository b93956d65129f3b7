import CPlatform
import Glibc

/// An IPv4 address and port, e.g. `127.0.0.1:8080`.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
  public var host: String
  public var port: UInt16

  public init(host: String, port: UInt16) {
    self.host = host
    self.port = port
  }

  public var description: String { "\(host):\(port)" }

  /// The `sockaddr_in` for a dotted-quad IPv4 host ("127.0.0.1", "0.0.0.0"); nil when the host is
  /// not one ("localhost" is accepted as 127.0.0.1).
  public func ipv4() -> sockaddr_in? {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    let text = host == "localhost" ? "127.0.0.1" : host
    let parsed = text.withCString { inet_pton(AF_INET, $0, &address.sin_addr) }
    return parsed == 1 ? address : nil
  }

  init(_ address: sockaddr_in) {
    var copy = address.sin_addr
    var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
    let converted = inet_ntop(AF_INET, &copy, &text, socklen_t(text.count))
    precondition(converted != nil, "inet_ntop of an IPv4 address cannot fail")
    host = String(
      decoding: text.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    port = UInt16(bigEndian: address.sin_port)
  }
}

/// An owned TCP socket descriptor (IPv4), closed on deinit unless `close()` was called.
/// Not Sendable: one thread owns it (pass the raw descriptor if it must move).
public final class Socket {
  public private(set) var descriptor: Int32

  /// Takes ownership of an open descriptor.
  public init(descriptor: Int32) {
    precondition(descriptor >= 0, "invalid descriptor \(descriptor)")
    self.descriptor = descriptor
  }

  deinit { if descriptor >= 0 { _ = Glibc.close(descriptor) } }

  public var isOpen: Bool { descriptor >= 0 }

  /// Closes the descriptor now. Safe to call twice.
  public func close() {
    guard descriptor >= 0 else { return }
    _ = Glibc.close(descriptor)  // Linux always releases the descriptor, even on EINTR.
    descriptor = -1
  }

  /// Closes abortively (SO_LINGER 0): the peer gets a reset instead of an end of stream.
  public func closeWithReset() {
    guard descriptor >= 0 else { return }
    var option = linger(l_onoff: 1, l_linger: 0)
    _ = setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    close()
  }

  /// Gives up ownership: the caller closes the returned descriptor.
  public func release() -> Int32 {
    let fd = descriptor
    descriptor = -1
    return fd
  }

  // MARK: Creating

  /// A listening, non-blocking, close-on-exec socket bound to `address` with SO_REUSEADDR.
  /// Port 0 picks a free port: read it back with `localAddress()`.
  public static func listen(on address: SocketAddress, backlog: Int32 = 1024) throws(SystemError)
    -> Socket
  {
    guard var socketAddress = address.ipv4() else {
      throw SystemError(
        call: "inet_pton", errno: EINVAL, context: "'\(address.host)' is not an IPv4 address")
    }
    let fd = try syscall("socket") {
      Glibc.socket(
        AF_INET,
        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
        0)
    }
    let socket = Socket(descriptor: fd)
    try socket.setOption(SOL_SOCKET, SO_REUSEADDR, 1)
    try withUnsafePointer(to: &socketAddress) { (pointer) throws(SystemError) in
      try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(SystemError) in
        _ = try syscall("bind", context: "\(address)") {
          Glibc.bind(fd, raw, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
    }
    try syscall("listen", context: "\(address)") { Glibc.listen(fd, backlog) }
    return socket
  }

  /// A blocking connection to `address`. `timeoutMs` bounds every later send/receive (0: none).
  public static func connect(to address: SocketAddress, timeoutMs: Int = 0) throws(SystemError)
    -> Socket
  {
    guard var socketAddress = address.ipv4() else {
      throw SystemError(
        call: "inet_pton", errno: EINVAL, context: "'\(address.host)' is not an IPv4 address")
    }
    let fd = try syscall("socket") {
      Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    let socket = Socket(descriptor: fd)
    try withUnsafePointer(to: &socketAddress) { (pointer) throws(SystemError) in
      try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(SystemError) in
        _ = try syscall("connect", context: "\(address)") {
          Glibc.connect(fd, raw, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
    }
    if timeoutMs > 0 { try socket.setTimeouts(milliseconds: timeoutMs) }
    return socket
  }

  /// Accepts one pending connection as a non-blocking, close-on-exec socket; nil when none is
  /// pending. Throws on operating errors (EMFILE, ECONNABORTED, ...): the listener stays usable.
  public func accept() throws(SystemError) -> (Socket, SocketAddress)? {
    var peer = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let fd: Int32
    do {
      fd = try withUnsafeMutablePointer(to: &peer) { (pointer) throws(SystemError) in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(SystemError) in
          try syscall("accept4") {
            accept4(
              descriptor, raw, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            )
          }
        }
      }
    } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
      return nil
    }
    return (Socket(descriptor: fd), SocketAddress(peer))
  }

  // MARK: Options

  public func setOption(_ level: Int32, _ name: Int32, _ value: Int32) throws(SystemError) {
    var value = value
    try syscall("setsockopt", context: "level \(level) name \(name)") {
      setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }
  }

  /// Disables Nagle's algorithm: small responses leave at once.
  public func setNoDelay() throws(SystemError) {
    try setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1)
  }

  public func setNonBlocking(_ nonBlocking: Bool = true) throws(SystemError) {
    let fd = descriptor
    let flags = try syscall("fcntl", context: "F_GETFL") { fcntl(fd, F_GETFL) }
    let wanted = nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
    try syscall("fcntl", context: "F_SETFL") { fcntl(fd, F_SETFL, wanted) }
  }

  /// SO_RCVTIMEO and SO_SNDTIMEO for blocking sockets: a timed-out call reports "would block".
  public func setTimeouts(milliseconds: Int) throws(SystemError) {
    var time = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
    let fd = descriptor
    for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
      try syscall("setsockopt", context: "timeout") {
        setsockopt(fd, SOL_SOCKET, option, &time, socklen_t(MemoryLayout<timeval>.size))
      }
    }
  }

  /// The bound local address (after `listen` on port 0, the chosen port).
  public func localAddress() throws(SystemError) -> SocketAddress {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let fd = descriptor
    try withUnsafeMutablePointer(to: &address) { (pointer) throws(SystemError) in
      try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(SystemError) in
        _ = try syscall("getsockname") { getsockname(fd, raw, &length) }
      }
    }
    return SocketAddress(address)
  }

  // MARK: I/O

  /// Sends what the kernel takes now (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
  /// Returns the bytes sent, or nil when the socket would block. Throws EPIPE, ECONNRESET, ...
  public func send(_ bytes: UnsafeRawBufferPointer) throws(SystemError) -> Int? {
    guard bytes.count > 0 else { return 0 }
    let fd = descriptor
    do {
      return try syscall("send") {
        Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
      }
    } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
      return nil
    }
  }

  /// Receives into `buffer`: the byte count, 0 at end of stream, nil when it would block (or a
  /// blocking socket's receive timeout passed).
  public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
    precondition(buffer.count > 0, "receive needs room")
    let fd = descriptor
    do {
      return try syscall("recv") { Glibc.recv(fd, buffer.baseAddress, buffer.count, 0) }
    } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
      return nil
    }
  }

  /// Copies the bytes waiting to be received into `buffer` without consuming them (MSG_PEEK): the
  /// byte count, 0 at end of stream, nil when none are waiting. For deciding how to read a new
  /// connection (a TLS port looks at the first byte before the handshake takes the socket).
  public func peek(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
    precondition(buffer.count > 0, "peek needs room")
    let fd = descriptor
    do {
      return try syscall("recv", context: "MSG_PEEK") { Glibc.recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_PEEK)) }
    } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
      return nil
    }
  }

  /// For blocking sockets: sends all of `bytes` or throws (ETIMEDOUT when a send timeout passed).
  public func sendAll(_ bytes: [UInt8]) throws(SystemError) {
    var offset = 0
    while offset < bytes.count {
      let result = bytes.withUnsafeBytes { raw in
        Result { () throws(SystemError) in
          try send(UnsafeRawBufferPointer(rebasing: raw[offset...]))
        }
      }
      let sent = try result.get()
      guard let sent else {
        throw SystemError(call: "send", errno: ETIMEDOUT, context: "send timeout")
      }
      offset += sent
    }
  }

  /// Shuts down the writing side: the peer reads end of stream after the bytes already sent.
  public func shutdownWrite() {
    _ = Glibc.shutdown(descriptor, Int32(SHUT_WR))
  }
}
