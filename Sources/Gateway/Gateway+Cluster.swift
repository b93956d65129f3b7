import Consensus
import Directory
import HTTPServer
import JSON
import Logging
import Platform

/// Groups a node hosts and leads, as `GET /v1/node` and `GET /v1/cluster` show them.
struct GroupCounts: Equatable, Sendable {
  let hosted: Int
  let leading: Int

  /// This node's, from its engine.
  init(_ engine: any ConsensusEngine) {
    let groups = engine.allGroupIDs()
    hosted = groups.count
    leading = groups.reduce(0) { $0 + (engine.isLeader($1) ? 1 : 0) }
    precondition(leading <= hosted, "a node leads only groups it hosts")
  }

  /// A node's, from its group summaries (`GET /v1/groups`): the role it reports in each.
  init(summaries: [JSONValue]) {
    hosted = summaries.count
    leading = summaries.reduce(0) { $0 + ($1["role"]?.stringValue == "leader" ? 1 : 0) }
  }

  /// A node's, from its `GET /v1/node` document; nil when the document does not carry them.
  init?(nodeDocument: JSONValue) {
    guard let hosted = nodeDocument["groupCount"]?.unsignedIntegerValue,
      let leading = nodeDocument["leaderCount"]?.unsignedIntegerValue, leading <= hosted
    else { return nil }
    self.hosted = Int(hosted)
    self.leading = Int(leading)
  }
}

/// The cluster as its nodes describe themselves (`GET /v1/cluster`, `GET /v1/groups?scope=cluster`)
/// and leader balancing (`POST /v1/cluster/rebalance`, the automatic mode): each asks every node
/// for its own view over HTTP, one request per node, and puts the answers together.
extension Gateway {
  // MARK: Gathering

  /// Every member's answer to `GET target` (this node's is `local`), each within the forwarder's
  /// relay timeout: per member, its client URL and `decode` of its answer, nil when it did not
  /// answer 200 with something `decode` reads. Without a forwarder, only this node answers.
  func gather<Answer: Sendable>(
    _ members: [Peer], target: String, local: Answer?, decode: @escaping @Sendable ([UInt8]) -> Answer?,
    finish: @escaping @Sendable ([NodeID: (url: String, answer: Answer?)]) -> Void
  ) {
    precondition(!members.isEmpty, "a gathering asks at least one node")
    precondition(Set(members.map(\.node)).count == members.count, "a gathering asks each node once")
    let answers = Locked<[NodeID: (url: String, answer: Answer?)]>([:])
    let record: @Sendable (NodeID, String, Answer?) -> Void = { node, url, answer in
      let all: [NodeID: (url: String, answer: Answer?)]? = answers.withLock { answers in
        answers[node] = (url, answer)
        return answers.count == members.count ? answers : nil
      }
      if let all { finish(all) }
    }
    for member in members {
      if member.node == engine.localPeer.node {
        record(member.node, configuration.clientURL, local)
      } else if let forwarder = configuration.forwarder {
        forwarder.nodeLocal("GET", on: member, target: target, body: []) { status, body in
          record(member.node, forwarder.knownClientURL(of: member.node) ?? "", status == 200 ? decode(body) : nil)
        }
      } else {
        record(member.node, "", nil)
      }
    }
  }

  /// Every member's own `GET /v1/groups` (this node's from the engine): per member, its client
  /// URL and its group summaries (nil when it did not answer).
  func gatherGroupSummaries(
    _ members: [Peer], finish: @escaping @Sendable ([NodeID: (url: String, answer: [JSONValue]?)]) -> Void
  ) {
    var localWriter = JSONWriter()
    writeGroupSummaries(&localWriter)
    let localGroups = (try? JSONParser.parse(localWriter.bytes))?.arrayValue
    gather(members, target: "/v1/groups", local: localGroups, decode: { body in (try? JSONParser.parse(body))?["groups"]?.arrayValue }, finish: finish)
  }

  // MARK: The cluster view

  /// `GET /v1/cluster`: every node with the groups it hosts and leads, as it reports them; a node
  /// that does not answer is listed unreachable. `?groups=false` leaves out each node's list of
  /// groups (ten thousand of them make a large answer) and asks each node only for its counts
  /// (`GET /v1/node`).
  func clusterView(_ exchange: Exchange) throws(GatewayError) {
    let listsGroups = try parseBool(exchange.query["groups"], name: "groups") ?? true
    clusterNodes { [self] members in
      guard listsGroups else {
        return gather(
          members, target: "/v1/node", local: GroupCounts(engine),
          decode: { body in (try? JSONParser.parse(body)).flatMap(GroupCounts.init(nodeDocument:)) }
        ) { [self] answers in
          exchange.respond(
            json: clusterDocument(members, urls: answers.mapValues(\.url), counts: answers.mapValues(\.answer), groups: nil))
        }
      }
      gatherGroupSummaries(members) { [self] answers in
        exchange.respond(
          json: clusterDocument(
            members, urls: answers.mapValues(\.url), counts: answers.mapValues { $0.answer.map(GroupCounts.init(summaries:)) },
            groups: answers.mapValues(\.answer)))
      }
    }
  }

  /// `{"nodes":[…]}`: per member, `counts` nil when it did not answer; `groups` nil when the
  /// lists are left out.
  private func clusterDocument(
    _ members: [Peer], urls: [NodeID: String], counts: [NodeID: GroupCounts?], groups: [NodeID: [JSONValue]?]?
  ) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.key("nodes")
    writer.beginArray()
    for member in members {
      let answered = counts[member.node] ?? nil
      writer.beginObject()
      writer.member("id", member.node.rawValue)
      writer.member("clientURL", urls[member.node] ?? "")
      writer.member("consensusEndpoint", member.endpoint.description)
      writer.member("reachable", answered != nil)
      writer.key("groupCount")
      if let answered { writer.number(answered.hosted) } else { writer.null() }
      writer.key("leaderCount")
      if let answered { writer.number(answered.leading) } else { writer.null() }
      if let groups {
        writer.key("groups")
        writer.value(.array((groups[member.node] ?? nil) ?? []))
      }
      writer.endObject()
    }
    writer.endArray()
    writer.endObject()
    return writer.bytes
  }

  /// `GET /v1/groups?scope=cluster`: every group any node hosts, once, as its leader (else any
  /// peer) describes it, and the groups the directory records that no node reported.
  func gatherGroups(_ exchange: Exchange) {
    clusterNodes { [self] members in
      gatherGroupSummaries(members) { [self] views in
        recordedGroups { [self] records in
          var chosen: [String: (summary: JSONValue, fromLeader: Bool)] = [:]
          for (node, view) in views.sorted(by: { $0.key < $1.key }) {
            for summary in view.answer ?? [] {
              guard let id = summary["id"]?.stringValue else { continue }
              let fromLeader = summary["leader"]?.unsignedIntegerValue == node.rawValue
              if chosen[id] == nil || (fromLeader && chosen[id]?.fromLeader == false) { chosen[id] = (summary, fromLeader) }
            }
          }
          // A group the directory records but none of whose peers answered is still listed.
          for record in records where chosen[record.id.description] == nil {
            chosen[record.id.description] = (unansweredSummary(record), false)
          }
          var writer = JSONWriter()
          writer.beginObject()
          writer.member("node", engine.localPeer.node.rawValue)
          writer.key("groups")
          writer.beginArray()
          let scope = exchange.caller.scope
          for id in chosen.keys.filter({ GroupID($0).map(scope.permits(group:)) ?? scope.isUnrestricted }).sorted(by: { (GroupID($0) ?? GroupID(.dataRegion, 0)) < (GroupID($1) ?? GroupID(.dataRegion, 0)) }) {
            writer.value(chosen[id]!.summary)
          }
          writer.endArray()
          writer.endObject()
          exchange.respond(json: writer.bytes)
        }
      }
    }
  }

  // MARK: Leader balancing

  /// `POST /v1/cluster/rebalance?max=N&dryRun=true`: balances leadership now, on this node
  /// (not forwarded), and answers what it did once every transfer it started is settled (within
  /// `balanceTimeoutMs`). Takes no body. `409 rebalance_in_progress` while a balance started here
  /// runs (the automatic mode's included).
  func rebalance(_ exchange: Exchange) throws(GatewayError) {
    guard exchange.request.body.isEmpty else {
      throw .badRequest("POST /v1/cluster/rebalance takes no body; give its options in the query (?max=N&dryRun=true)")
    }
    let limit = configuration.leaderBalance.transfersMax
    var transfersMax = limit
    if let text = exchange.query["max"] {
      guard let value = Int(text), (1...limit).contains(value) else {
        throw .badRequest("max must be an integer from 1 to \(limit) (this node's --leader-balance-transfers-max), not '\(text.prefix(100))'")
      }
      transfersMax = value
    }
    let dryRun = try parseBool(exchange.query["dryRun"], name: "dryRun") ?? false
    let started = balanceLeaders(transfersMax: transfersMax, dryRun: dryRun, requested: true) { report in
      exchange.respond(json: report.document())
    }
    guard started else {
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("error", "rebalance_in_progress")
      writer.member("message", "a leader balance started on this node is still running; wait for it to finish and ask again")
      writer.endObject()
      return exchange.respond(json: writer.bytes, status: 409, headers: [("Retry-After", "1")])
    }
  }

  /// Gathers every node's groups, plans the transfers, runs them (unless `dryRun`), logs what
  /// moved or failed, and hands the report to `completion`. Returns false, doing nothing, while
  /// another balance runs here. `requested`: by `POST /v1/cluster/rebalance`, else automatic.
  @discardableResult
  func balanceLeaders(
    transfersMax: Int, dryRun: Bool, requested: Bool, _ completion: @escaping @Sendable (LeaderBalanceReport) -> Void
  ) -> Bool {
    guard leaderBalance.begin() else { return false }
    let options = configuration.leaderBalance
    let deadlineMs = MonotonicClock.nowMilliseconds() + UInt64(options.balanceTimeoutMs)
    clusterNodes { [self] members in
      gatherGroupSummaries(members) { [self] answers in
        let view = ClusterLeadership(members: members, summaries: answers.compactMapValues(\.answer))
        let plan = LeaderBalancePlan(groups: view.groups, nodes: view.reachable, transfersMax: transfersMax)
        let finish: @Sendable ([TransferOutcome]) -> Void = { [self] outcomes in
          leaderBalance.end(outcomes)
          let report = LeaderBalanceReport(
            plan: plan, outcomes: outcomes, dryRun: dryRun, transfersMax: transfersMax, leaderless: view.leaderless,
            unreachable: view.unreachable)
          if report.moved + report.failed > 0 {
            logger.info(
              "balanced leadership",
              metadata: [
                "trigger": "\(requested ? "request" : "automatic")", "moved": "\(report.moved)", "failed": "\(report.failed)",
                "skipped": "\(report.skipped)", "balanced": "\(plan.balanced)", "leaders": "\(LeaderBalanceReport.text(report.after))",
              ])
          }
          completion(report)
        }
        guard !dryRun else { return finish([]) }
        let peers = Dictionary(uniqueKeysWithValues: members.map { ($0.node, $0) })
        LeaderTransferRun(
          plan.transfers, concurrentMax: options.transfersConcurrentMax, transferTimeoutMs: options.transferTimeoutMs,
          deadlineMs: deadlineMs,
          transfer: { [self] transfer, settle in
            guard let leader = peers[transfer.from] else { preconditionFailure("a transfer starts at a member that answered") }
            transferLeadership(transfer, at: leader, settle)
          },
          after: { [deadlines] delayMs, action in deadlines.after(delayMs: delayMs, action) },
          finish: finish
        ).start()
      }
    }
    return true
  }

  /// `POST /v1/groups/{group}/leader {"id": to}` at the group's leader, answered there (never
  /// forwarded: a leader that changed meanwhile answers `421 not_leader`, which fails the transfer).
  private func transferLeadership(
    _ transfer: LeaderTransfer, at leader: Peer, _ settle: @escaping @Sendable (TransferOutcome) -> Void
  ) {
    precondition(leader.node == transfer.from, "a transfer is asked of the group's leader")
    guard let forwarder = configuration.forwarder else {
      return settle(.failed(error: "unreachable", message: "this node runs alone; it reaches no other node"))
    }
    var body = JSONWriter()
    body.beginObject()
    body.member("id", transfer.to.rawValue)
    body.endObject()
    forwarder.nodeLocal("POST", on: leader, target: "/v1/groups/\(transfer.group)/leader?forward=none", body: body.bytes) {
      status, answer in
      if status == 200 { return settle(.moved) }
      guard status != 0 else { return settle(.failed(error: "unreachable", message: "node \(leader.node) did not answer")) }
      let document = try? JSONParser.parse(answer)
      settle(
        .failed(
          error: document?["error"]?.stringValue ?? "status_\(status)",
          message: document?["message"]?.stringValue ?? "node \(leader.node) answered \(status)"))
    }
  }

  // MARK: The automatic mode

  /// Every `intervalMs`, the node with the lowest id among those that answer balances leadership
  /// (a single balancer, so that balances do not undo each other); the others only ask the nodes
  /// of lower ids for `GET /v1/node`. Nothing when the interval is 0 or this node runs alone.
  func scheduleAutomaticLeaderBalance() {
    let intervalMs = configuration.leaderBalance.intervalMs
    guard intervalMs > 0, configuration.forwarder != nil else { return }
    deadlines.after(delayMs: intervalMs) { [self] in
      automaticLeaderBalance { [self] in scheduleAutomaticLeaderBalance() }
    }
  }

  private func automaticLeaderBalance(then next: @escaping @Sendable () -> Void) {
    clusterNodes { [self] members in
      let lower = members.filter { $0.node < engine.localPeer.node }
      let balance: @Sendable () -> Void = { [self] in
        let started = balanceLeaders(transfersMax: configuration.leaderBalance.transfersMax, dryRun: false, requested: false) { _ in
          next()
        }
        if !started { next() }  // a requested balance runs here now
      }
      guard !lower.isEmpty else { return balance() }
      gather(lower, target: "/v1/node", local: nil, decode: { body in (try? JSONParser.parse(body)).map { _ in true } }) { answers in
        // A node of a lower id answers: it is the balancer.
        if answers.values.contains(where: { $0.answer != nil }) { return next() }
        balance()
      }
    }
  }
}

/// Who leads which group and who may take over, from every node's group summaries.
struct ClusterLeadership {
  /// The groups with a leader that says so, with their candidates: the other voters in the
  /// leader's membership that answered and host the group.
  private(set) var groups: [BalancedGroup] = []
  /// The nodes that answered, in id order; the others receive no leadership.
  let reachable: [NodeID]
  let unreachable: [NodeID]
  /// Groups no answering node leads: left alone (an election is due or under way).
  private(set) var leaderless = 0

  init(members: [Peer], summaries: [NodeID: [JSONValue]]) {
    reachable = members.map(\.node).filter { summaries[$0] != nil }.sorted()
    unreachable = members.map(\.node).filter { summaries[$0] == nil }.sorted()
    var hosts: [GroupID: Set<NodeID>] = [:]
    // The leader a group's summaries name by role, with its term and voters; a deposed leader
    // that has not heard of its successor yet has an older term.
    var leaders: [GroupID: (node: NodeID, term: UInt64, voters: [NodeID])] = [:]
    for node in reachable {
      for summary in summaries[node] ?? [] {
        guard let text = summary["id"]?.stringValue, let group = GroupID(text) else { continue }
        hosts[group, default: []].insert(node)
        guard summary["role"]?.stringValue == "leader" else { continue }
        let term = summary["term"]?.unsignedIntegerValue ?? 0
        if let known = leaders[group], known.term >= term { continue }
        let voters = (summary["peers"]?.arrayValue ?? []).compactMap { peer -> NodeID? in
          guard peer["learner"] != .bool(true), let id = peer["id"]?.unsignedIntegerValue, id > 0 else { return nil }
          return NodeID(id)
        }
        leaders[group] = (node, term, voters)
      }
    }
    for (group, hostedBy) in hosts.sorted(by: { $0.key < $1.key }) {
      guard let leader = leaders[group] else {
        leaderless += 1
        continue
      }
      var candidates: [NodeID] = []
      for voter in leader.voters where voter != leader.node && hostedBy.contains(voter) && !candidates.contains(voter) {
        candidates.append(voter)
      }
      // A membership no directory record can name cannot be real: leave the group alone.
      guard candidates.count < DirectoryRecords.groupPeersMax else { continue }
      groups.append(BalancedGroup(id: group, leader: leader.node, candidates: candidates))
    }
  }
}

/// What a leader balance did, as `POST /v1/cluster/rebalance` answers it.
struct LeaderBalanceReport: Sendable {
  let plan: LeaderBalancePlan
  /// One per planned transfer; none for a dry run.
  let outcomes: [TransferOutcome]
  let dryRun: Bool
  let transfersMax: Int
  let leaderless: Int
  let unreachable: [NodeID]

  init(
    plan: LeaderBalancePlan, outcomes: [TransferOutcome], dryRun: Bool, transfersMax: Int, leaderless: Int, unreachable: [NodeID]
  ) {
    precondition(dryRun ? outcomes.isEmpty : outcomes.count == plan.transfers.count, "one outcome per transfer run")
    self.plan = plan
    self.outcomes = outcomes
    self.dryRun = dryRun
    self.transfersMax = transfersMax
    self.leaderless = leaderless
    self.unreachable = unreachable
  }

  var moved: Int { outcomes.filter { $0 == .moved }.count }
  var skipped: Int { outcomes.filter { $0 == .skipped }.count }
  var failed: Int { outcomes.count - moved - skipped }

  /// The leader counts `before` with the transfers that moved applied (not read again).
  var after: [NodeID: Int] {
    var counts = plan.before
    for (transfer, outcome) in zip(plan.transfers, outcomes) where outcome == .moved {
      counts[transfer.from, default: 0] -= 1
      counts[transfer.to, default: 0] += 1
    }
    return counts
  }

  /// `1=3 2=3 3=2`, for logs.
  static func text(_ counts: [NodeID: Int]) -> String {
    counts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
  }

  func document() -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("dryRun", dryRun)
    writer.member("transfersMax", transfersMax)
    writer.member("moved", moved)
    writer.member("failed", failed)
    writer.member("skipped", skipped)
    writer.member("balanced", plan.balanced)
    for (name, counts) in [("before", plan.before), ("planned", plan.planned), ("after", after)] {
      writer.key(name)
      writer.beginObject()
      for (node, count) in counts.sorted(by: { $0.key < $1.key }) { writer.member(node.description, count) }
      writer.endObject()
    }
    writer.member("leaderless", leaderless)
    writer.key("unreachable")
    writer.beginArray()
    for node in unreachable { writer.number(node.rawValue) }
    writer.endArray()
    writer.key("transfers")
    writer.beginArray()
    for (position, transfer) in plan.transfers.enumerated() {
      writer.beginObject()
      writer.member("group", transfer.group.description)
      writer.member("from", transfer.from.rawValue)
      writer.member("to", transfer.to.rawValue)
      switch dryRun ? nil : outcomes[position] {
      case nil: writer.member("outcome", "planned")
      case .moved: writer.member("outcome", "moved")
      case .skipped: writer.member("outcome", "skipped")
      case .failed(let error, let message):
        writer.member("outcome", "failed")
        writer.member("error", error)
        writer.member("message", message)
      }
      writer.endObject()
    }
    writer.endArray()
    writer.endObject()
    return writer.bytes
  }
}
