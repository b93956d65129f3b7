import Consensus
import Platform

/// How a `RaftConsensus` host exchanges message batches with the other nodes.
///
/// A batch is the bytes of one `WireCodec`-encoded `MessageBatch`: every message of every group
/// from this node to one destination node in one loop turn. The transport only moves bytes; the
/// host encodes, decodes and checks them.
///
/// Contract:
/// - `send` never blocks the caller on the network (the host calls it from its loop thread): a
///   transport queues, and under pressure drops. Raft tolerates loss (it retries appends, re-sends
///   heartbeats, re-runs elections), so dropping is always safe; blocking is not.
/// - `undelivered`, when given, is called once — on any thread, perhaps before `send` returns —
///   when the transport knows the batch never reached the receiver: dropped before it left (a
///   full queue, a peer in back-off, an isolated node), the connection refused, or the receiver
///   refused the batch. Never when it may have arrived. The host then sends the batch's forwarded
///   writes again, which it must never do with a batch that may have been delivered.
/// - Received batches go to the receiver, from any thread, in the order they arrived per sender
///   where the transport can say so. The receiver does not block (it decodes and enqueues).
/// - `setReceiver(nil)` stops delivery; after it returns, the old receiver is not called again.
///
/// The libcurl `PeerClient` (outbound, POST of the bytes to `endpoint`) together with an HTTP
/// route on the consensus port (inbound, the request body handed to the receiver) implement it
/// for real clusters; `InMemoryTransport` implements it for tests with several engines in one
/// process.
public protocol RaftTransport: AnyObject, Sendable {
  /// Hands `batch` to the network for `node` at its consensus `endpoint`. Never blocks.
  func send(batch: [UInt8], to node: NodeID, endpoint: Endpoint, undelivered: (@Sendable () -> Void)?)
  /// Sets (or, with nil, clears) the function that receives every inbound batch.
  func setReceiver(_ receive: (@Sendable ([UInt8]) -> Void)?)
}

extension RaftTransport {
  public func send(batch: [UInt8], to node: NodeID, endpoint: Endpoint) {
    send(batch: batch, to: node, endpoint: endpoint, undelivered: nil)
  }
}

/// A network of `InMemoryTransport`s in one process, for tests: delivery is synchronous on the
/// sender's thread (the receiver only enqueues), and a node can be cut off from all others.
public final class InMemoryNetwork: Sendable {
  private struct State {
    var receivers: [NodeID: @Sendable ([UInt8]) -> Void] = [:]
    var isolated: Set<NodeID> = []
    /// Links (from, to) whose batches wait, in order, for `resume`.
    var paused: [[NodeID]: [[UInt8]]] = [:]
    var batchesDelivered: UInt64 = 0
    var batchesDropped: UInt64 = 0
  }
  private let state = Locked(State())

  public init() {}

  /// The transport of `node` on this network.
  public func transport(for node: NodeID) -> InMemoryTransport { InMemoryTransport(network: self, node: node) }

  /// Drops every batch from or to `node` until `heal(node)`.
  public func isolate(_ node: NodeID) { state.withLock { _ = $0.isolated.insert(node) } }
  public func heal(_ node: NodeID) { state.withLock { _ = $0.isolated.remove(node) } }

  /// Batches from `from` to `to` wait, in order, until `resume(from:to:)`: a slow link.
  public func pause(from: NodeID, to: NodeID) { state.withLock { $0.paused[[from, to]] = $0.paused[[from, to]] ?? [] } }

  /// Delivers what waited on the link, in order (batches sent meanwhile queue behind it), then
  /// lets later batches through at once. A node gone by then loses them.
  public func resume(from: NodeID, to: NodeID) {
    while true {
      let next: ([UInt8], (@Sendable ([UInt8]) -> Void)?)? = state.withLock { state in
        guard var waiting = state.paused[[from, to]] else { return nil }
        guard !waiting.isEmpty else {
          state.paused[[from, to]] = nil
          return nil
        }
        let batch = waiting.removeFirst()
        state.paused[[from, to]] = waiting
        return (batch, state.receivers[to])
      }
      guard let (batch, receiver) = next else { return }
      receiver?(batch)
    }
  }

  public var batchesDelivered: UInt64 { state.withLock { $0.batchesDelivered } }
  public var batchesDropped: UInt64 { state.withLock { $0.batchesDropped } }

  fileprivate func setReceiver(_ node: NodeID, _ receive: (@Sendable ([UInt8]) -> Void)?) {
    state.withLock { $0.receivers[node] = receive }
  }

  fileprivate func deliver(_ batch: [UInt8], from: NodeID, to: NodeID) -> Bool {
    // nil: dropped; a nil receiver: waiting on a paused link.
    let outcome: (@Sendable ([UInt8]) -> Void)?? = state.withLock { state in
      guard !state.isolated.contains(from), !state.isolated.contains(to), let receiver = state.receivers[to] else {
        state.batchesDropped += 1
        return nil
      }
      state.batchesDelivered += 1
      if state.paused[[from, to]] != nil {
        state.paused[[from, to]]!.append(batch)
        return .some(nil)
      }
      return receiver
    }
    guard let outcome else { return false }
    // Outside the network's lock: the receiver takes the destination engine's lock.
    outcome?(batch)
    return true
  }
}

/// One node's end of an `InMemoryNetwork`.
public final class InMemoryTransport: RaftTransport {
  public let network: InMemoryNetwork
  public let node: NodeID

  init(network: InMemoryNetwork, node: NodeID) {
    self.network = network
    self.node = node
  }

  public func send(batch: [UInt8], to node: NodeID, endpoint: Endpoint, undelivered: (@Sendable () -> Void)?) {
    if !network.deliver(batch, from: self.node, to: node) { undelivered?() }
  }

  public func setReceiver(_ receive: (@Sendable ([UInt8]) -> Void)?) {
    network.setReceiver(node, receive)
  }
}
