import Consensus
import KeyValueStore
import Linearizability
import Logging
import Platform
import RaftConsensus
import RaftCore

/// A whole cluster in one process, driven by one seed, running the production host: every node
/// is a real `RaftConsensus` (driven turn by turn, no thread) with the real `RaftStorage` and
/// write-ahead log on a `SimulatedDisk`, the real key-value state machine, and a simulated
/// network with the transport's delivery contract (loss, duplication, reordering across batches,
/// partitions, snapshot chunks). Time is virtual. Clients issue put, get, compare-and-set and
/// batches through the `ConsensusEngine` API of any node (followers forward writes to the
/// leader); their histories are checked for linearizability per key. Raft's safety properties
/// are checked on every Ready the hosts execute (`Checker`), and no message may leave a node
/// before the term it carries is durable there.
///
/// A run: the safety phase (faults on: crashes, power loss at an fsync, partitions, loss,
/// membership changes, leader transfers, snapshots) for `safetyEvents` events, then the
/// liveness phase (faults off, every node up): each group must commit a write through a client,
/// and every replica apply it, within the liveness budget.
// @unchecked Sendable: one thread drives everything; the engines call their completions from
// `runDrivenTurn`, on that thread, so the `@Sendable` closures never run concurrently.
public final class ClusterSimulator: @unchecked Sendable {
  // MARK: Parameters derived from the seed

  struct Parameters: CustomStringConvertible {
    var dropPpm: Int
    var duplicatePpm: Int
    var delayMillisecondsMax: Int
    var crashPpm: Int
    var restartPpm: Int
    /// A node's fsync fails: it dies there, before the Ready it was persisting is durable (what
    /// it sent early is in flight).
    var crashAtSyncPpm: Int
    /// A node's fsync completes and the node dies at once: nothing it sends after the fsync
    /// (acknowledgements, votes, a new commit index) leaves.
    var crashAfterSyncPpm: Int
    /// Of the crashes, the share (per cent) aimed at a group's leader.
    var leaderCrashPercent: Int
    /// A leader dies right after persisting a Ready in which it was elected or advanced its
    /// commit index; half the time what that turn sent before its fsync is lost with it.
    var leaderCrashAtMilestonePpm: Int
    var partitionPpm: Int
    var healPpm: Int
    var clientOperationPpm: Int
    var membershipPpm: Int
    var transferPpm: Int
    var snapshotPpm: Int
    var snapshotEntriesThreshold: Int
    /// Snapshots above this many bytes stream in chunks (0: every snapshot streams).
    var snapshotInlineBytesMax: Int
    /// Bytes added to every value written, so snapshots span several chunks.
    var valuePaddingBytes: Int
    /// A node's fsync fails with EIO: it must stop taking writes (and is restarted).
    var fsyncFailurePpm: Int
    /// A node's disk fills up (ENOSPC past a little more than it holds) until a heal: it must
    /// refuse writes rather than acknowledge them, stay up (it is not restarted: the host leaves
    /// its groups and reopens its storage in-process), and recover once space returns.
    var diskFullPpm: Int
    /// The core's message limits: one-entry messages and a window of one make the
    /// interleavings of Figure 8 reachable (an old entry acknowledged apart from the new one).
    var entriesBytesPerMessageMax: Int
    var inflightMessagesMax: Int
    var preVote: Bool
    var checkQuorum: Bool
    /// The host's quiet period before an idle group quiesces (0: never), and clients that
    /// issue a twentieth of `clientOperationPpm`, so groups go idle (and quiesce) between writes.
    var quiesceAfterTicks: Int
    var quietClients: Bool

    var description: String {
      "drop=\(dropPpm)ppm duplicate=\(duplicatePpm)ppm delayMax=\(delayMillisecondsMax)ms crash=\(crashPpm)ppm "
        + "restart=\(restartPpm)ppm crashAtSync=\(crashAtSyncPpm)ppm crashAfterSync=\(crashAfterSyncPpm)ppm "
        + "leaderCrashes=\(leaderCrashPercent)% leaderMilestoneCrash=\(leaderCrashAtMilestonePpm)ppm partition=\(partitionPpm)ppm heal=\(healPpm)ppm "
        + "client=\(clientOperationPpm)ppm membership=\(membershipPpm)ppm transfer=\(transferPpm)ppm "
        + "snapshot=\(snapshotPpm)ppm/\(snapshotEntriesThreshold) inline=\(snapshotInlineBytesMax) "
        + "padding=\(valuePaddingBytes) fsyncEIO=\(fsyncFailurePpm)ppm diskFull=\(diskFullPpm)ppm msgBytes=\(entriesBytesPerMessageMax) "
        + "inflight=\(inflightMessagesMax) preVote=\(preVote) checkQuorum=\(checkQuorum) "
        + "quiesceAfter=\(quiesceAfterTicks) quietClients=\(quietClients)"
    }
  }

  /// One step of virtual time: faults and client operations are drawn once per step.
  static let stepNanoseconds: UInt64 = 5_000_000
  static let tickMilliseconds: UInt64 = 10
  static let keysPerGroup = 3
  static let clientsMax = 4

  // MARK: State

  final class Node {
    let peer: Peer
    let disk: SimulatedDisk
    var engine: RaftConsensus?
    var observer: Observer?
    var transportReceiver: (@Sendable ([UInt8]) -> Void)?
    /// Incarnations started, for the seeds of the engine's jitter.
    var incarnation = 0
    init(peer: Peer, disk: SimulatedDisk) {
      self.peer = peer
      self.disk = disk
    }
  }

  /// A client with at most one operation outstanding (Jepsen's process).
  struct Client {
    var busy = false
    /// The node its outstanding operation went to: if that node crashes, the operation's
    /// outcome stays unknown and the client moves on.
    var node = 0
    /// The revision and value this client last read per (group, key): what its compare-and-set
    /// expects.
    var lastRead: [String: (revision: UInt64, value: [UInt8]?)] = [:]
  }

  struct Delivery {
    var from: Int
    var to: Int
    /// The batch's messages, decoded when it was sent: for the trace.
    var messages: [GroupMessage]
    /// The destination's incarnation when it was sent: a batch in flight to a node that
    /// crashes dies with its connection (it never reaches the next incarnation).
    var incarnation: Int
    /// The sender's turn (`turnsRun`): a node that loses power at that turn's fsync may lose what
    /// the turn handed to the network before it, too.
    var turn: Int
    var bytes: [UInt8]
  }

  public let options: SimulationOptions
  let parameters: Parameters
  private var random: SplitMix64
  private let clock = SimulatedClock()
  private var nodes: [Node] = []
  private var queue = EventQueue<Delivery>()
  private var blocked: Set<Int> = []  // from * 64 + to
  private let checker = CheckerBox()
  private let traceLog: TraceLog
  private var trace: TraceRing {
    get { traceLog.ring }
    set { traceLog.ring = newValue }
  }
  private var clients: [Client]
  private var history = History()
  private var valueCounter = 0
  private var healed = false
  /// Turns run by every node so far, and the turns whose sends a power loss took back.
  private var turnsRun = 0
  private var lostTurns: Set<Int> = []
  /// Per group, the liveness phase's write: where it went and the index it committed at (0
  /// while it waits).
  private var livenessMarkers: [GroupID: (node: Int, index: LogIndex)] = [:]
  private let groups: [GroupID]
  private let bootstrapVoters: [[Int]]

  public private(set) var events = 0
  public private(set) var crashes = 0
  public private(set) var messagesDelivered = 0
  public private(set) var coverage = Coverage()
  public private(set) var violation: Violation?

  public init(options: SimulationOptions) throws(SimulationError) {
    try options.validate()
    self.options = options
    var random = SplitMix64(seed: options.seed &* 0x2545_F491_4F6C_DD1D &+ 7)
    // Parameters added later draw from their own stream, so every earlier one keeps its value
    // for a given seed.
    var later = SplitMix64(seed: options.seed &* 0x9E37_79B9_7F4A_7C15 &+ 11)
    parameters = Parameters(
      dropPpm: random.pick([0, 20_000, 100_000, 250_000]),
      duplicatePpm: random.pick([0, 20_000, 60_000]),
      delayMillisecondsMax: random.pick([1, 5, 20, 60]),
      crashPpm: random.pick([0, 2_000, 8_000, 20_000]),
      restartPpm: random.pick([30_000, 100_000]),
      crashAtSyncPpm: random.pick([0, 500, 3_000]),
      crashAfterSyncPpm: random.pick([0, 500, 3_000]),
      leaderCrashPercent: random.pick([0, 50, 90]),
      leaderCrashAtMilestonePpm: random.pick([0, 20_000, 100_000, 300_000]),
      partitionPpm: random.pick([0, 5_000, 15_000]),
      healPpm: random.pick([20_000, 60_000]),
      clientOperationPpm: random.pick([100_000, 400_000, 900_000]),
      membershipPpm: random.pick([0, 5_000, 20_000]),
      transferPpm: random.pick([0, 3_000, 10_000]),
      snapshotPpm: random.pick([0, 10_000, 50_000]),
      snapshotEntriesThreshold: random.pick([8, 32, 10_000]),
      snapshotInlineBytesMax: random.pick([0, 4 << 20]),
      valuePaddingBytes: random.pick([0, 0, 1_000, 24_000]),
      fsyncFailurePpm: random.pick([0, 0, 300]),
      diskFullPpm: random.pick([0, 0, 2_000]),
      entriesBytesPerMessageMax: random.pick([1, 1, 64, 1 << 20]),
      inflightMessagesMax: random.pick([1, 4, 256]),
      preVote: random.below(4) != 0,
      checkQuorum: random.below(4) != 0,
      quiesceAfterTicks: later.pick([0, 2, 10, 30]),
      quietClients: later.below(3) == 0)
    self.random = random
    traceLog = TraceLog(ring: TraceRing(capacity: options.traceLinesMax))
    clients = Array(repeating: Client(), count: Self.clientsMax)
    groups = (0..<options.groups).map { GroupID(.dataRegion, UInt32($0)) }
    bootstrapVoters = (0..<options.groups).map { Self.bootstrapVoters(group: $0, nodes: options.nodes) }
    for index in 1...options.nodes {
      let peer = Peer(node: NodeID(UInt64(index)), endpoint: Endpoint(host: "n\(index)", port: 40_000 + UInt16(index)))
      nodes.append(Node(peer: peer, disk: SimulatedDisk(seed: options.seed &* 1_000_003 &+ UInt64(index))))
    }
    for index in 1...options.nodes { start(index) }
    // Groups start with their bootstrap voters; the other nodes join later through membership
    // changes (joinPeer, then addPeer at the leader), as an operator would add them.
    for (position, group) in groups.enumerated() {
      let voters = bootstrapVoters[position]
      let peers = voters.map { nodes[$0 - 1].peer }
      for voter in voters {
        nodes[voter - 1].engine!.createPeer(group, peers: peers) { _ in }
      }
    }
  }

  /// The nodes group `group` is created over, by `group % 4`: every node; three (on five nodes;
  /// every node on three); one; two. They rotate with the group number. The other nodes join
  /// later through membership changes (as learners first), so one- and two-voter groups
  /// replicate to learners — the shape in which a one-voter leader elects itself and appends in
  /// one Ready.
  static func bootstrapVoters(group: Int, nodes: Int) -> [Int] {
    let count: Int
    switch group % 4 {
    case 0: count = nodes
    case 1: count = 3
    case 2: count = 1
    default: count = 2
    }
    return (0..<count).map { (group + $0) % nodes + 1 }
  }

  // MARK: Running

  public func run() -> SimulationResult {
    var step = 0
    while violation == nil && events < options.safetyEvents {
      advance(to: UInt64(step) * Self.stepNanoseconds)
      if violation == nil { chaos() }
      step += 1
    }
    if violation == nil { heal() }
    // Liveness: every group commits a write through a client and every member applies it.
    let livenessSteps = options.livenessTicksMax * Int(Self.tickMilliseconds * 1_000_000 / Self.stepNanoseconds)
    let deadline = step + livenessSteps
    while violation == nil && step < deadline {
      advance(to: UInt64(step) * Self.stepNanoseconds)
      driveLiveness()
      step += 1
      if livenessGap() == nil { break }
    }
    if violation == nil, let gap = livenessGap() {
      violation = Violation(property: "Liveness", detail: "after \(livenessSteps) healed steps: \(gap)")
    }
    if violation == nil { checkHistory() }
    for node in nodes {
      collectCoverage(of: node)
      // The engines hold completions that hold this simulator: let them go with the run.
      node.engine = nil
      node.observer = nil
      node.transportReceiver = nil
    }
    return SimulationResult(
      seed: options.seed, events: events, ticks: Int(clock.now / (Self.tickMilliseconds * 1_000_000)),
      messagesDelivered: messagesDelivered, entriesCommitted: checker.value.entriesCommitted,
      leadersElected: checker.value.leadersElected, crashes: crashes, coverage: coverage, violation: violation,
      trace: trace.lines, parameters: parameters.description)
  }

  /// Runs every delivery and every due turn up to virtual time `target`, in time order.
  private func advance(to target: UInt64) {
    while violation == nil {
      let nextTick = nodes.compactMap { $0.engine?.nextTickNanoseconds }.min() ?? UInt64.max
      let nextDelivery = queue.peekTime.map { UInt64($0) } ?? UInt64.max
      let next = min(nextTick, nextDelivery)
      guard next <= target else { break }
      clock.now = max(clock.now, next)
      if nextDelivery <= nextTick, let delivery = queue.pop() {
        deliver(delivery.payload)
      }
      for index in 1...options.nodes { runTurns(index) }
    }
    clock.now = max(clock.now, target)
    for index in 1...options.nodes { runTurns(index) }
  }

  /// Runs node `index`'s turns while it has work now (bounded: a turn applies at most a Ready's
  /// worth of entries per group).
  private func runTurns(_ index: Int) {
    let turnsMax = 64
    for _ in 0..<turnsMax {
      guard violation == nil, let engine = nodes[index - 1].engine, engine.hasDrivenWork(now: clock.now) else { return }
      events += 1
      turnsRun += 1
      let running = engine.runDrivenTurn()
      if let failure = nodes[index - 1].observer?.violation {
        violation = failure
        return
      }
      if !running || nodes[index - 1].disk.crashRequested {
        if nodes[index - 1].disk.crashRequested {
          coverage.crashesAtSync += 1
          // What the turn sent before its fsync sat in the dying node's socket buffers: lost
          // or not (the interleavings of Figure 8 need a leader whose last turn said nothing).
          if random.below(2) == 0 { lostTurns.insert(turnsRun) }
        }
        crash(index, reason: nodes[index - 1].disk.crashRequested ? "power lost during an fsync" : "storage failed")
        return
      }
    }
  }

  // MARK: Nodes

  private func start(_ index: Int) {
    let node = nodes[index - 1]
    node.incarnation += 1
    var engineOptions = RaftConsensusOptions()
    engineOptions.tickIntervalMs = Self.tickMilliseconds
    engineOptions.electionTicks = 10
    engineOptions.heartbeatTicks = 1
    engineOptions.proposalTimeoutMs = 5_000
    engineOptions.membershipChangeTimeoutMs = 10_000
    engineOptions.snapshotEntriesThreshold = UInt64(parameters.snapshotEntriesThreshold)
    engineOptions.seed = options.seed &* 31 &+ UInt64(index) &* 1_000_003 &+ UInt64(node.incarnation) &* 7_919
    engineOptions.wal.segmentBytesMax = 64 << 10
    engineOptions.plantedBug = options.plantedBug?.bug
    engineOptions.snapshotInlineBytesMax = parameters.snapshotInlineBytesMax
    engineOptions.entriesBytesPerMessageMax = parameters.entriesBytesPerMessageMax
    engineOptions.inflightMessagesMax = parameters.inflightMessagesMax
    engineOptions.preVote = parameters.preVote
    engineOptions.checkQuorum = parameters.checkQuorum
    engineOptions.quiesceAfterTicks = parameters.quiesceAfterTicks
    engineOptions.snapshotChunkBytes = WireLimits.snapshotChunkBytesMin
    // A full disk is probed every 5 ticks, for the smallest room: a disk filled to a little more
    // than it held often has that much, so nodes reopen, fill up and reopen again.
    engineOptions.outOfSpaceRetryMs = 5 * Self.tickMilliseconds
    engineOptions.outOfSpaceProbeBytes = 4_096
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in KeyValueStateMachine() }
    let transport = SimulatedTransport(simulator: self, node: index)
    let observer = Observer(node: index, checker: checker, trace: traceLog, clock: clock)
    let engine = RaftConsensus(
      config: ConsensusConfig(localPeer: node.peer, dataDirectory: "/n\(index)", registry: registry),
      options: engineOptions, transport: transport, logger: Logger(label: "sim") { _ in SwiftLogNoOpLogHandler() },
      clock: clock, fileStore: node.disk)
    engine.readyObserver = observer
    observer.onLeaderMilestone = { [unowned self, unowned node] in
      guard !healed, !node.disk.crashRequested, random.chance(ppm: parameters.leaderCrashAtMilestonePpm) else { return }
      node.disk.losePowerNow()
    }
    let injectedFailures = node.disk.fsyncFailures + node.disk.spaceFailures
    do {
      try engine.startDriven()
    } catch {
      if node.disk.crashRequested || node.disk.fsyncFailures + node.disk.spaceFailures > injectedFailures {
        // A fault the disk injected during recovery (power lost at one of its fsyncs): the node
        // is down again; a later restart tries anew.
        trace.append(.note(time: now, text: "n\(index) failed to recover on a faulty disk: \(error)"))
        node.disk.crash()
        return
      }
      violation = Violation(property: "Recovery", detail: "n\(index) failed to start from its disk: \(error)")
      return
    }
    node.engine = engine
    node.observer = observer
  }

  /// Kills node `index`: its disk loses what was not durable, its engine is gone (its waiting
  /// callers never hear back: their outcome is unknown).
  private func crash(_ index: Int, reason: String) {
    let node = nodes[index - 1]
    guard node.engine != nil else { return }
    collectCoverage(of: node)
    trace.append(.note(time: now, text: "crash n\(index) (\(reason))"))
    crashes += 1
    node.engine = nil
    node.observer = nil
    node.transportReceiver = nil
    node.disk.crash()
    // Callers waiting on the dead engine never hear back: their operations stay unknown.
    for client in clients.indices where clients[client].busy && clients[client].node == index {
      clients[client].busy = false
    }
  }

  /// Adds what a node's observer counted to the run's coverage, before the observer goes (a
  /// crash, or the end of the run).
  private func collectCoverage(of node: Node) {
    if let statistics = node.engine?.outOfSpaceStatistics {
      coverage.outOfSpaceStops += Int(statistics.failures)
      coverage.outOfSpaceRecoveries += Int(statistics.recoveries)
    }
    if let statistics = node.engine?.quiescenceStatistics {
      coverage.quiescences += Int(statistics.quiescences)
      coverage.wakesLeaderLost += Int(statistics.wakesLeaderLost)
    }
    guard let observer = node.observer else { return }
    coverage.snapshotsInstalled += observer.snapshotsInstalled
    coverage.unsyncedHardStates += observer.unsyncedHardStates
  }

  private func restart(_ index: Int) {
    trace.append(.restart(time: now, node: index))
    start(index)
  }

  private var now: Int { Int(clock.now / 1_000_000) }

  // MARK: Network

  fileprivate func send(_ bytes: [UInt8], from: Int, to: Int, undelivered: (@Sendable () -> Void)?) {
    // A node whose disk chose this moment to lose power sends nothing more.
    if nodes[from - 1].disk.crashRequested { return }
    // Every batch goes through the real codec; its messages may not outrun their term's
    // durability at the sender.
    let batch: MessageBatch
    do {
      batch = try WireCodec.decodeBatch(bytes)
    } catch {
      violation = Violation(property: "Wire Codec", detail: "n\(from)→n\(to) sent a batch that does not decode: \(error)")
      return
    }
    for item in batch.allMessages {
      let durableTerm = nodes[from - 1].observer?.durableTerms[item.group] ?? 0
      if let failure = checker.value.sent(item.message, node: from, group: item.group, durableTerm: durableTerm) {
        violation = failure
        return
      }
    }
    for chunk in batch.snapshotChunks {
      let durableTerm = nodes[from - 1].observer?.durableTerms[chunk.group] ?? 0
      let message = Message(kind: .snapshot, from: chunk.from, to: chunk.to, term: chunk.term)
      if let failure = checker.value.sent(message, node: from, group: chunk.group, durableTerm: durableTerm) {
        violation = failure
        return
      }
    }
    coverage.snapshotChunksSent += batch.snapshotChunks.count
    guard to >= 1 && to <= options.nodes, !blocked.contains(from * 64 + to) else {
      // Refused at once, as a connection to a cut-off peer is: the transport may say so.
      trace.append(.drop(time: now, from: from, to: to, messages: batch.messages.count, reason: "partition"))
      undelivered?()
      return
    }
    if !healed && random.chance(ppm: parameters.dropPpm) {
      trace.append(.drop(time: now, from: from, to: to, messages: batch.messages.count, reason: "loss"))
      return
    }
    let copies = !healed && random.chance(ppm: parameters.duplicatePpm) ? 2 : 1
    for _ in 0..<copies {
      let delay = UInt64(1 + random.below(parameters.delayMillisecondsMax)) * 1_000_000
      queue.push(
        time: Int(clock.now + delay),
        Delivery(
          from: from, to: to, messages: batch.allMessages, incarnation: nodes[to - 1].incarnation, turn: turnsRun,
          bytes: bytes))
    }
  }

  private func deliver(_ delivery: Delivery) {
    events += 1
    guard !blocked.contains(delivery.from * 64 + delivery.to), !lostTurns.contains(delivery.turn),
      let engine = nodes[delivery.to - 1].engine,
      nodes[delivery.to - 1].incarnation == delivery.incarnation
    else { return }
    messagesDelivered += 1
    for item in delivery.messages {
      let routine =
        !options.traceHeartbeats && (item.message.kind == .heartbeat || item.message.kind == .heartbeatResponse)
        && item.message.context == 0
      if !routine {
        trace.append(.deliver(time: now, from: delivery.from, to: delivery.to, group: item.group, message: item.message))
      }
    }
    _ = engine
    nodes[delivery.to - 1].transportReceiver?(delivery.bytes)
    _ = engine
  }

  // MARK: Faults and workload

  private func chaos() {
    let count = options.nodes
    if random.chance(ppm: parameters.crashPpm) {
      let alive = (1...count).filter { nodes[$0 - 1].engine != nil }
      if random.below(100) < parameters.leaderCrashPercent, let leader = leader(of: random.pick(groups)) {
        crash(leader, reason: "killed, a leader")
      } else if !alive.isEmpty {
        crash(random.pick(alive), reason: "killed")
      }
    }
    if random.chance(ppm: parameters.restartPpm) {
      let dead = (1...count).filter { nodes[$0 - 1].engine == nil }
      if !dead.isEmpty { restart(random.pick(dead)) }
    }
    for node in nodes {
      node.disk.crashAtSyncPpm = parameters.crashAtSyncPpm
      node.disk.crashAfterSyncPpm = parameters.crashAfterSyncPpm
      node.disk.fsyncFailurePpm = parameters.fsyncFailurePpm
    }
    if random.chance(ppm: parameters.partitionPpm) { partition() }
    if random.chance(ppm: parameters.healPpm) && !blocked.isEmpty {
      blocked = []
      trace.append(.partition(time: now, description: "healed"))
    }
    if random.chance(ppm: parameters.diskFullPpm) {
      let node = random.pick(nodes)
      node.disk.capacityBytes = node.disk.bytesStored + random.below(64 << 10)
      coverage.disksFilled += 1
      trace.append(.note(time: now, text: "n\(node.peer.node) disk full at \(node.disk.capacityBytes) bytes"))
    }
    if random.chance(ppm: parameters.healPpm) {
      for node in nodes where node.disk.capacityBytes != Int.max {
        node.disk.capacityBytes = Int.max
        trace.append(.note(time: now, text: "n\(node.peer.node) disk has space again"))
      }
    }
    let clientPpm = parameters.quietClients ? parameters.clientOperationPpm / 20 : parameters.clientOperationPpm
    for client in 0..<clients.count where !clients[client].busy && random.chance(ppm: clientPpm) {
      issue(client: client)
    }
    if random.chance(ppm: parameters.membershipPpm) { changeMembership() }
    if random.chance(ppm: parameters.transferPpm) { transferLeadership() }
    if random.chance(ppm: parameters.snapshotPpm) {
      let index = 1 + random.below(count)
      if let engine = nodes[index - 1].engine {
        let group = random.pick(groups)
        engine.triggerSnapshot(group) { _ in }
      }
    }
  }

  private func partition() {
    let all = Array(1...options.nodes)
    var description: String
    switch random.below(3) {
    case 0:
      var side = Set<Int>()
      for node in all where random.below(2) == 0 { side.insert(node) }
      for a in all { for b in all where side.contains(a) != side.contains(b) { blocked.insert(a * 64 + b) } }
      description = "split \(side.sorted()) | \(all.filter { !side.contains($0) })"
    case 1:
      let a = random.pick(all)
      let b = random.pick(all.filter { $0 != a })
      blocked.insert(a * 64 + b)
      description = "one-way n\(a)↛n\(b)"
    default:
      let lonely = random.pick(all)
      for other in all where other != lonely {
        blocked.insert(lonely * 64 + other)
        blocked.insert(other * 64 + lonely)
      }
      description = "isolate n\(lonely)"
    }
    coverage.partitions += 1
    trace.append(.partition(time: now, description: description))
  }

  private func heal() {
    healed = true
    blocked = []
    for node in nodes {
      node.disk.crashAtSyncPpm = 0
      node.disk.crashAfterSyncPpm = 0
      node.disk.fsyncFailurePpm = 0
      node.disk.capacityBytes = Int.max
    }
    trace.append(.partition(time: now, description: "healed for the liveness phase"))
    for index in 1...options.nodes where nodes[index - 1].engine == nil { restart(index) }
  }

  /// The node that leads `group`, as the nodes themselves report it (the highest term wins).
  private func leader(of group: GroupID) -> Int? {
    var best: (node: Int, term: UInt64)?
    for index in 1...options.nodes {
      guard let engine = nodes[index - 1].engine, let status = engine.status(group), status.role == .leader else { continue }
      if status.term >= best?.term ?? 0 { best = (index, status.term) }
    }
    return best?.node
  }

  // MARK: Clients

  private func issue(client: Int) {
    let alive = (1...options.nodes).filter { nodes[$0 - 1].engine != nil }
    guard !alive.isEmpty else { return }
    let group = random.pick(groups)
    // Usually the leader; sometimes any node (a follower forwards writes, refuses reads).
    let index = random.below(3) == 0 ? random.pick(alive) : (leader(of: group) ?? random.pick(alive))
    let engine = nodes[index - 1].engine!
    let key = "k\(random.below(Self.keysPerGroup))"
    let historyKey = "\(group)/\(key)"
    clients[client].busy = true
    clients[client].node = index
    let call = clock.now
    switch random.below(5) {
    case 0, 1:
      let value = nextValue(client)
      let command = KVCodec.encode(KVCommand(operations: [.put(key: Array(key.utf8), value: value, precondition: .none)]))
      let operation = history.start(key: historyKey, client: client, input: .put(value), call: call)
      engine.write(group, command: command, forwarding: .toLeader) { [self] result in
        finishWrite(client, operation, result) { _ in .written }
      }
    case 2:
      let operation = history.start(key: historyKey, client: client, input: .get, call: call)
      let query = KVCodec.encode(queries: [.get(key: Array(key.utf8))])
      engine.read(group, query: query, options: ReadOptions(consistency: .linearizable)) { [self] result in
        clients[client].busy = false
        guard case .success(let read) = result,
          let results = try? KVCodec.decodeQueryResults(read.response), results.count == 1,
          case .get(let entry) = results[0]
        else { return history.discard(operation) }
        clients[client].lastRead[historyKey] = (entry?.revision ?? 0, entry?.value)
        coverage.readsServed += 1
        history.finish(operation, output: .value(entry?.value), at: clock.now)
      }
    case 3:
      let value = nextValue(client)
      let known = clients[client].lastRead[historyKey]
      let precondition: KVPrecondition = known.map { $0.value == nil ? .absent : .revisionEquals($0.revision) } ?? .absent
      let command = KVCodec.encode(KVCommand(operations: [.put(key: Array(key.utf8), value: value, precondition: precondition)]))
      let operation = history.start(
        key: historyKey, client: client, input: .compareAndSet(expected: known?.value, new: value), call: call)
      engine.write(group, command: command, forwarding: .toLeader) { [self] result in
        finishWrite(client, operation, result) { outcome in
          if case .preconditionFailed = outcome { return .swapped(false) }
          return .swapped(true)
        }
      }
    default:
      // An atomic batch over two keys: checked per key (linearizability is local).
      let other = "k\((Int(key.dropFirst())! + 1) % Self.keysPerGroup)"
      let first = nextValue(client)
      let second = nextValue(client)
      let command = KVCodec.encode(
        KVCommand(operations: [
          .put(key: Array(key.utf8), value: first, precondition: .none),
          .put(key: Array(other.utf8), value: second, precondition: .none),
        ]))
      let operations = [
        history.start(key: historyKey, client: client, input: .put(first), call: call),
        history.start(key: "\(group)/\(other)", client: client, input: .put(second), call: call),
      ]
      engine.write(group, command: command, forwarding: .toLeader) { [self] result in
        clients[client].busy = false
        for operation in operations { finishWrite(nil, operation, result) { _ in .written } }
      }
    }
  }

  private func nextValue(_ client: Int) -> [UInt8] {
    valueCounter += 1
    let name = Array("c\(client)v\(valueCounter)".utf8)
    guard parameters.valuePaddingBytes > 0 else { return name }
    // Padding after a separator the model's report cuts off.
    return name + [0x7C] + [UInt8](repeating: 0x2E, count: parameters.valuePaddingBytes)
  }

  /// Records a write's outcome: its output when it applied, nothing (dropped) when it
  /// certainly did not, unknown when it may have.
  private func finishWrite(
    _ client: Int?, _ operation: Int, _ result: Result<WriteResult, ConsensusError>,
    output: (KVWriteOutcome) -> KeyValueModel.Output
  ) {
    if let client { clients[client].busy = false }
    switch result {
    case .success(let written):
      guard let outcome = try? KVCodec.decodeWriteOutcome(written.response) else {
        violation = Violation(property: "Client", detail: "a write's answer does not decode")
        return
      }
      if case .rejected(let reason) = outcome {
        violation = Violation(property: "Client", detail: "a valid write was rejected: \(reason)")
        return
      }
      history.finish(operation, output: output(outcome), at: clock.now)
    case .failure(let error):
      switch error {
      // A write refused because the disk is full was never proposed: a definite failure, which
      // the history check holds the host to.
      case .notLeader, .noLeader, .overloaded, .groupNotFound, .timeout(indeterminate: false), .invalidRequest,
        .outOfSpace:
        history.discard(operation, reason: "\(error)")
      default:
        history.leaveUnknown(operation)
      }
    }
  }

  // MARK: Membership, transfers

  private func changeMembership() {
    let group = random.pick(groups)
    guard let leaderIndex = leader(of: group), let status = nodes[leaderIndex - 1].engine?.status(group) else { return }
    let members = Set(status.peers.map { Int($0.peer.node.rawValue) })
    let outsiders = (1...options.nodes).filter { !members.contains($0) && nodes[$0 - 1].engine != nil }
    let voters = status.peers.filter { !$0.learner }.map { Int($0.peer.node.rawValue) }
    if !outsiders.isEmpty && random.below(2) == 0 {
      let joiner = random.pick(outsiders)
      let voterIDs = status.bootstrapVoters
      let allPeers = nodes.map(\.peer)
      trace.append(.note(time: now, text: "g\(group.packed) add n\(joiner) at leader n\(leaderIndex)"))
      nodes[joiner - 1].engine!.joinPeer(group, peers: allPeers, bootstrapVoters: voterIDs) { [self] result in
        // Only a node that hosts a replica is added, as the gateway does: created now (durable),
        // or hosted already.
        switch result {
        case .success, .failure(.groupAlreadyExists):
          nodes[leaderIndex - 1].engine?.addPeer(group, peer: nodes[joiner - 1].peer) { _ in }
        case .failure:
          break
        }
      }
      coverage.membershipChanges += 1
    } else if voters.count > 1 || status.peers.count > voters.count {
      let target = random.pick(status.peers.map { Int($0.peer.node.rawValue) })
      guard target != leaderIndex else { return }
      trace.append(.note(time: now, text: "g\(group.packed) remove n\(target) at leader n\(leaderIndex)"))
      nodes[leaderIndex - 1].engine!.removePeer(group, node: NodeID(UInt64(target))) { _ in }
      coverage.membershipChanges += 1
    }
  }

  private func transferLeadership() {
    let group = random.pick(groups)
    guard let leaderIndex = leader(of: group), let status = nodes[leaderIndex - 1].engine?.status(group) else { return }
    let voters = status.peers.filter { !$0.learner }.map { Int($0.peer.node.rawValue) }.filter { $0 != leaderIndex }
    guard !voters.isEmpty else { return }
    let target = random.pick(voters)
    trace.append(.note(time: now, text: "g\(group.packed) transfer n\(leaderIndex) → n\(target)"))
    nodes[leaderIndex - 1].engine!.transferLeader(group, to: NodeID(UInt64(target))) { _ in }
    coverage.transfersStarted += 1
  }

  // MARK: Liveness

  private func driveLiveness() {
    for group in groups where livenessMarkers[group] == nil {
      guard let index = leader(of: group), let engine = nodes[index - 1].engine else { continue }
      let command = KVCodec.encode(
        KVCommand(operations: [.put(key: Array("live".utf8), value: Array("\(group)".utf8), precondition: .none)]))
      livenessMarkers[group] = (index, 0)
      engine.write(group, command: command) { [self] result in
        if case .success(let written) = result {
          livenessMarkers[group] = (index, written.index)
        } else {
          livenessMarkers[group] = nil
        }
      }
    }
  }

  private func livenessGap() -> String? {
    for group in groups {
      guard let marker = livenessMarkers[group], marker.index > 0 else { return "\(group) has not committed a write" }
      guard let status = nodes[marker.node - 1].engine?.status(group) else { return "\(group) lost its leader" }
      for peer in status.peers {
        let member = Int(peer.peer.node.rawValue)
        guard let applied = nodes[member - 1].engine?.status(group)?.appliedIndex else {
          return "\(group) member n\(member) is down"
        }
        if applied < marker.index { return "\(group) member n\(member) applied \(applied) < \(marker.index)" }
      }
    }
    return nil
  }

  // MARK: History

  private func checkHistory() {
    for key in history.keys {
      let operations = history.operations(for: key)
      coverage.clientOperations += operations.count
      switch LinearizabilityChecker.check(KeyValueModel.self, operations) {
      case .linearizable: continue
      case .undecided: coverage.historiesUndecided += 1
      case .notLinearizable:
        let lines = history.report(for: key).map { operation, dropped in
          "c\(operation.client) \(operation.input) → \(dropped.map { "dropped: \($0)" } ?? operation.output.map { "\($0)" } ?? "?") "
            + "[\(operation.call / 1_000_000)ms, \(operation.returned.map { "\($0 / 1_000_000)ms" } ?? "∞"))"
        }
        violation = Violation(
          property: "Linearizability", detail: "\(key) has no linearization:\n" + lines.joined(separator: "\n"))
        return
      }
    }
  }
}

/// The simulator's virtual clock, shared by every node (one thread; `@unchecked Sendable`).
final class SimulatedClock: NanosecondClock, @unchecked Sendable {
  var now: UInt64 = 0
  func nowNanoseconds() -> UInt64 { now }
}

/// One node's end of the simulated network.
final class SimulatedTransport: RaftTransport, @unchecked Sendable {
  unowned let simulator: ClusterSimulator
  let node: Int
  init(simulator: ClusterSimulator, node: Int) {
    self.simulator = simulator
    self.node = node
  }
  func send(batch: [UInt8], to node: NodeID, endpoint: Endpoint, undelivered: (@Sendable () -> Void)?) {
    simulator.send(batch, from: self.node, to: Int(node.rawValue), undelivered: undelivered)
  }
  func setReceiver(_ receive: (@Sendable ([UInt8]) -> Void)?) {
    simulator.setReceiver(node: node, receive)
  }
}

extension ClusterSimulator {
  fileprivate func setReceiver(node: Int, _ receive: (@Sendable ([UInt8]) -> Void)?) {
    nodes[node - 1].transportReceiver = receive
  }
}

/// The checker, shared by the nodes' observers (one thread).
final class CheckerBox {
  var value = Checker()
}
