import RaftCore

/// A leader's memory of the forwarded proposals it answered, per sending node: a batch that
/// arrives twice (the transport may duplicate: a resend after a lost response) must not append
/// its writes twice, or a write could take effect twice around another (found by the cluster
/// simulator: a compare-and-set applied, then refused on its duplicate, and answered "refused").
/// A repeated request id gets the first answer again. Request ids are unique per sending
/// incarnation (`RaftConsensus.open` starts them at a random base), and a duplicate never
/// outlives the connection it came on, so a bounded window per node suffices. Loop only.
struct ForwardWindow {
  private var answers: [ReplicaID: [UInt64: ForwardedProposal.Body]] = [:]
  /// Per node, its remembered request ids, oldest first (a ring of `perNodeMax`).
  private var order: [ReplicaID: (ids: [UInt64], next: Int)] = [:]
  let perNodeMax: Int

  init(perNodeMax: Int) {
    precondition(perNodeMax >= 1, "a window of at least one")
    self.perNodeMax = perNodeMax
  }

  /// The answer given to `requestID` from `node`, if it is still remembered.
  func answer(from node: ReplicaID, requestID: UInt64) -> ForwardedProposal.Body? { answers[node]?[requestID] }

  mutating func remember(from node: ReplicaID, requestID: UInt64, answer: ForwardedProposal.Body) {
    precondition(answers[node]?[requestID] == nil, "one answer per request")
    var ring = order[node] ?? ([], 0)
    if ring.ids.count < perNodeMax {
      ring.ids.append(requestID)
    } else {
      answers[node]![ring.ids[ring.next]] = nil
      ring.ids[ring.next] = requestID
      ring.next = (ring.next + 1) % perNodeMax
    }
    order[node] = ring
    answers[node, default: [:]][requestID] = answer
    precondition(answers[node]!.count == ring.ids.count, "the window holds each remembered id once")
  }
}
