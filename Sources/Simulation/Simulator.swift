import RaftCore

/// A whole cluster in one process, driven by one seed: virtual time, a simulated network and
/// disks, crashes and restarts, and a checker that runs after every event.
public final class Simulator {
  // MARK: Parameters derived from the seed

  struct Parameters: CustomStringConvertible {
    var dropPpm: Int
    var duplicatePpm: Int
    var delayUnitsMax: Int
    var crashPpm: Int
    var restartPpm: Int
    var tornWritePpm: Int
    /// A leader crashes right after persisting a Ready in which it was elected or advanced its
    /// commit index, before any of that Ready's messages leave (Figure 8's interleavings).
    var leaderCrashMidReadyPpm: Int
    /// A replica just elected leader crashes while persisting the Ready that made it leader:
    /// what the Ready allowed to leave early is sent, nothing of it is durable (power lost
    /// during the fsync). One-voter groups elect themselves in that very Ready.
    var leaderCrashBeforePersistPpm: Int
    var partitionPpm: Int
    var healPpm: Int
    var proposePpm: Int
    var configChangePpm: Int
    var transferPpm: Int
    var compactPpm: Int
    var readPpm: Int
    var compactAfterEntries: Int
    var maxEntriesBytesPerMessage: Int
    var maxInflightMessages: Int
    var preVote: Bool
    var checkQuorum: Bool

    var description: String {
      "drop=\(dropPpm)ppm duplicate=\(duplicatePpm)ppm delayMax=\(delayUnitsMax)u crash=\(crashPpm)ppm "
        + "restart=\(restartPpm)ppm torn=\(tornWritePpm)ppm leaderCrash=\(leaderCrashMidReadyPpm)ppm "
        + "leaderCrashBeforePersist=\(leaderCrashBeforePersistPpm)ppm partition=\(partitionPpm)ppm heal=\(healPpm)ppm "
        + "propose=\(proposePpm)ppm confchange=\(configChangePpm)ppm transfer=\(transferPpm)ppm "
        + "compact=\(compactPpm)ppm/\(compactAfterEntries) read=\(readPpm)ppm "
        + "msgBytes=\(maxEntriesBytesPerMessage) inflight=\(maxInflightMessages) "
        + "preVote=\(preVote) checkQuorum=\(checkQuorum)"
    }
  }

  /// Virtual time units per tick: deliveries happen between ticks.
  static let unitsPerTick = 10
  static let electionTicks = 10

  struct Disk {
    var hardState = HardState()
    /// A hard state written without an fsync (`Ready.mustSync` false: only its commit moved): a
    /// crash loses it (the worst case), the group's next synced Ready keeps it.
    var unsyncedHardState: HardState? = nil
    var snapshot: Snapshot? = nil
    var entries: [Entry] = []

    mutating func append(_ new: [Entry]) {
      guard let first = new.first else { return }
      let base = snapshot?.index ?? 0
      let keep = Int(first.index) - Int(base) - 1
      precondition(keep >= 0 && keep <= entries.count, "disk append leaves a gap at \(first.index)")
      entries.removeSubrange(keep...)
      entries.append(contentsOf: new)
    }

    mutating func install(_ snapshot: Snapshot) {
      let base = self.snapshot?.index ?? 0
      if snapshot.index > base {
        let drop = min(entries.count, Int(snapshot.index - base))
        // Entries after the snapshot stay only if they continue it; restore() replaced the log.
        entries.removeFirst(drop)
        if let first = entries.first, first.index != snapshot.index + 1 { entries = [] }
      }
      self.snapshot = snapshot
    }
  }

  struct Machine {
    var applied: LogIndex = 0
    var digest: UInt64 = 0

    init() {}
    init(snapshot: Snapshot?) {
      guard let snapshot else { return }
      precondition(snapshot.data.count == 16, "simulated snapshots hold applied index and digest")
      var index: UInt64 = 0
      var digest: UInt64 = 0
      for shift in 0..<8 {
        index |= UInt64(snapshot.data[shift]) << UInt64(8 * shift)
        digest |= UInt64(snapshot.data[8 + shift]) << UInt64(8 * shift)
      }
      precondition(index == snapshot.index, "snapshot data does not match its index")
      applied = index
      self.digest = digest
    }

    var snapshotData: [UInt8] {
      var bytes: [UInt8] = []
      for shift in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: applied >> UInt64(8 * shift))) }
      for shift in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: digest >> UInt64(8 * shift))) }
      return bytes
    }

    mutating func apply(_ entry: Entry) {
      precondition(entry.index == applied + 1, "apply out of order: \(entry.index) after \(applied)")
      var next = Digest(digest)
      next.add(Digest.of(entry))
      digest = next.value
      applied = entry.index
    }
  }

  struct Replica {
    var raft: Raft?
    var disk = Disk()
    var machine = Machine()
    var role: Role = .follower
    var term: Term = 0
  }

  enum Event {
    case tick
    case deliver(from: Int, to: Int, bytes: [UInt8])
  }

  // MARK: State

  public let options: SimulationOptions
  let parameters: Parameters
  private var random: SplitMix64
  private var queue = EventQueue<Event>()
  private var now = 0
  private var alive: [Bool]
  private var replicas: [[Replica]]  // [node][group]
  private var bootstrap: [ConfigState]  // per group
  private var blocked: Set<Int> = []  // from * 16 + to
  private var checker = Checker()
  private var trace: TraceRing
  private var restarts = 0
  private var proposalCounter: UInt64 = 0
  private var pendingReads: [UInt64: (group: UInt64, minimumIndex: LogIndex)] = [:]
  private var healed = false
  private var livenessBudget = 0
  private var livenessMarkers: [UInt64: (term: Term, index: LogIndex)] = [:]

  public private(set) var events = 0
  public private(set) var ticks = 0
  public private(set) var messagesDelivered = 0
  public private(set) var crashes = 0
  public private(set) var coverage = Coverage()
  public private(set) var violation: Violation? = nil

  public init(options: SimulationOptions) throws(SimulationError) {
    try options.validate()
    self.options = options
    var random = SplitMix64(seed: options.seed &* 0x2545_F491_4F6C_DD1D &+ 1)
    let delay = random.pick([3, 10, 25, 60])
    parameters = Parameters(
      dropPpm: random.pick([0, 20_000, 100_000, 250_000]),
      duplicatePpm: random.pick([0, 20_000, 60_000]),
      delayUnitsMax: delay,
      crashPpm: random.pick([0, 4_000, 15_000]),
      restartPpm: random.pick([50_000, 150_000]),
      tornWritePpm: random.pick([0, 2_000, 10_000]),
      leaderCrashMidReadyPpm: random.pick([0, 50_000, 150_000, 400_000]),
      leaderCrashBeforePersistPpm: random.pick([0, 100_000, 300_000]),
      partitionPpm: random.pick([0, 10_000, 30_000]),
      healPpm: random.pick([30_000, 100_000]),
      proposePpm: random.pick([100_000, 400_000, 900_000]),
      configChangePpm: random.pick([0, 10_000, 40_000]),
      transferPpm: random.pick([0, 5_000, 20_000]),
      compactPpm: random.pick([0, 20_000, 100_000]),
      readPpm: random.pick([0, 50_000]),
      compactAfterEntries: random.pick([4, 16, 64]),
      maxEntriesBytesPerMessage: random.pick([1, 1, 64, 1 << 20]),
      maxInflightMessages: random.pick([1, 4, 256]),
      preVote: random.below(4) != 0,
      checkQuorum: random.below(4) != 0)
    self.random = random
    alive = Array(repeating: true, count: options.nodes + 1)
    replicas = Array(repeating: Array(repeating: Replica(), count: options.groups), count: options.nodes + 1)
    bootstrap = (0..<options.groups).map { group in Simulator.bootstrapMembership(group: group, nodes: options.nodes) }
    trace = TraceRing(capacity: options.traceLinesMax)
    for node in 1...options.nodes { start(node: node) }
    queue.push(time: Simulator.unitsPerTick, .tick)
  }

  /// The membership group `group` starts with, by `group % 4`: every node a voter; three voters
  /// (on five nodes; every node on three); one voter; two voters. The voters rotate with the
  /// group number, and the other nodes of the smaller groups start as learners, so one- and
  /// two-voter groups replicate to learners from the start (the shape in which a one-voter
  /// leader elects itself and appends in one Ready).
  static func bootstrapMembership(group: Int, nodes: Int) -> ConfigState {
    let voterCount: Int
    switch group % 4 {
    case 0: voterCount = nodes
    case 1: voterCount = 3
    case 2: voterCount = 1
    default: voterCount = 2
    }
    let all = (0..<nodes).map { ReplicaID((group + $0) % nodes + 1) }
    return ConfigState(voters: Array(all.prefix(voterCount)), learners: Array(all.dropFirst(voterCount)))
  }

  // MARK: Running

  /// Runs the safety phase (faults on), then the liveness phase (healed), and reports.
  public func run() -> SimulationResult {
    while violation == nil && events < options.safetyEvents, let next = queue.pop() {
      process(next)
    }
    if violation == nil { heal() }
    livenessBudget = options.livenessTicksMax + backlogEntries() * worstTicksPerEntry
    let deadline = ticks + livenessBudget
    while violation == nil && ticks < deadline, let next = queue.pop() {
      process(next)
      if case .tick = next.payload, livenessReached() { break }
    }
    if violation == nil && !livenessReached() {
      violation = Violation(property: "Liveness", detail: livenessReport())
    }
    return SimulationResult(
      seed: options.seed, events: events, ticks: ticks, messagesDelivered: messagesDelivered,
      entriesCommitted: checker.entriesCommitted, leadersElected: checker.leadersElected, crashes: crashes,
      coverage: coverage,
      violation: violation, trace: trace.lines, parameters: parameters.description)
  }

  private func process(_ next: (time: Int, payload: Event)) {
    now = next.time
    events += 1
    switch next.payload {
    case .tick:
      ticks += 1
      for node in 1...options.nodes where alive[node] {
        for group in 0..<options.groups {
          replicas[node][group].raft!.tick()
        }
        flush(node: node)
        if violation != nil { return }
      }
      if healed {
        driveLiveness()
        // Hosts keep compacting their logs after the faults stop, as a real host would; a
        // replica far behind then catches up from a snapshot rather than entry by entry.
        if random.chance(ppm: parameters.compactPpm) {
          let node = 1 + random.below(options.nodes)
          compact(node: node, group: random.below(options.groups))
        }
      } else {
        chaos()
      }
      queue.push(time: now + Simulator.unitsPerTick, .tick)
    case .deliver(let from, let to, let bytes):
      deliver(from: from, to: to, bytes: bytes)
    }
  }

  // MARK: Nodes

  private func raftConfig(node: Int) -> RaftConfig {
    var config = RaftConfig(id: ReplicaID(node))
    config.electionTicks = Simulator.electionTicks
    config.heartbeatTicks = 1
    config.preVote = parameters.preVote
    config.checkQuorum = parameters.checkQuorum
    config.maxEntriesBytesPerMessage = parameters.maxEntriesBytesPerMessage
    config.maxInflightMessages = parameters.maxInflightMessages
    config.maxInflightBytes = 1 << 20
    // Twice the worst one-way delay, in ticks, plus slack: the round trip of this network.
    config.stalledHeartbeatsBeforeProbe = 2 * parameters.delayUnitsMax / Simulator.unitsPerTick + 3
    // About 25 simulated commands: proposals outrun the slowest network settings, and a
    // leader must refuse them rather than build a backlog no replica can catch up with.
    config.maxUncommittedEntriesBytes = 256
    config.plantedBug = options.plantedBug?.bug
    return config
  }

  private func start(node: Int) {
    for group in 0..<options.groups {
      let disk = replicas[node][group].disk
      let restored = RestoredState(
        hardState: disk.hardState, snapshot: disk.snapshot, entries: disk.entries, bootstrapConfig: bootstrap[group])
      let seed = options.seed &* 31 &+ UInt64(node) &* 1_000_003 &+ UInt64(group) &* 7919 &+ UInt64(restarts)
      let raft: Raft
      do {
        raft = try Raft(config: raftConfig(node: node), random: SplitMix64(seed: seed), restored: restored)
      } catch {
        preconditionFailure("simulated raft config is invalid: \(error)")
      }
      replicas[node][group].raft = raft
      replicas[node][group].machine = Machine(snapshot: disk.snapshot)
      replicas[node][group].role = .follower
      checker.restarted(node: node, group: UInt64(group), raft: raft)
    }
    alive[node] = true
  }

  private func crash(node: Int, torn: Bool) {
    trace.append(.crash(time: now, node: node, torn: torn))
    crashes += 1
    alive[node] = false
    for group in 0..<options.groups {
      replicas[node][group].raft = nil
      replicas[node][group].machine = Machine()
      replicas[node][group].disk.unsyncedHardState = nil
    }
  }

  private func restart(node: Int) {
    restarts += 1
    trace.append(.restart(time: now, node: node))
    start(node: node)
  }

  // MARK: The host loop (a reference host: Ready → persist → send → apply → advance)

  private func flush(node: Int) {
    var outgoing: [Int: [GroupMessage]] = [:]
    for group in 0..<options.groups {
      var rounds = 0
      while alive[node], replicas[node][group].raft!.hasReady {
        rounds += 1
        precondition(rounds <= 64, "a replica produced more than 64 Readies in a row")
        if !handleReady(node: node, group: group, outgoing: &outgoing) { return }
        if violation != nil { return }
      }
    }
    send(from: node, outgoing)
  }

  /// Step 2 for the hard state: durable now when the Ready must sync (with any earlier unsynced
  /// one), else only written.
  private func persist(_ ready: Ready, node: Int, group: Int) {
    var durable: HardState?
    if ready.mustSync {
      durable = ready.hardState ?? replicas[node][group].disk.unsyncedHardState
      replicas[node][group].disk.unsyncedHardState = nil
    } else if let hardState = ready.hardState {
      coverage.unsyncedHardStates += 1
      replicas[node][group].disk.unsyncedHardState = hardState
    }
    if let durable {
      replicas[node][group].disk.hardState = durable
      checker.persisted(node: node, group: UInt64(group), hardState: durable)
    }
  }

  /// Executes one Ready; returns false if the node crashed in the middle of it.
  private func handleReady(node: Int, group: Int, outgoing: inout [Int: [GroupMessage]]) -> Bool {
    var raft = replicas[node][group].raft!
    let ready = raft.ready()
    let groupID = UInt64(group)
    let wasLeader = replicas[node][group].role == .leader && replicas[node][group].term == ready.term
    if ready.role != replicas[node][group].role || ready.term != replicas[node][group].term {
      replicas[node][group].role = ready.role
      replicas[node][group].term = ready.term
      trace.append(
        .role(time: now, node: node, group: groupID, role: ready.role, term: ready.term, lastIndex: raft.lastIndex,
          committed: raft.committed))
    }
    if !healed && ready.role == .leader && !wasLeader && random.chance(ppm: parameters.leaderCrashBeforePersistPpm) {
      // Step 1 only: what may leave before persistence leaves; the fsync never completes.
      for message in ready.messages {
        outgoing[Int(message.to), default: []].append(GroupMessage(group: groupID, message: message))
      }
      send(from: node, outgoing)
      outgoing = [:]
      coverage.leaderCrashesBeforePersist += 1
      crash(node: node, torn: true)
      return false
    }
    // Checked from here on: a Ready lost before its fsync made no leader and no entry anywhere
    // (nothing of its term left the node, which `Checker.sent` checks), so the replica may win
    // the same term again after its restart.
    if let failure = checker.check(ready: ready, node: node, group: groupID, raft: raft) {
      violation = failure
      return false
    }
    let crashMidReady =
      !healed && ready.role == .leader && (!wasLeader || ready.hardState != nil)
      && random.chance(ppm: parameters.leaderCrashMidReadyPpm)
    if crashMidReady {
      // A leader that was just elected or just advanced its commit index persists this Ready,
      // then dies before anything of it leaves (the interleavings of Figure 8).
      if let snapshot = ready.snapshot { replicas[node][group].disk.install(snapshot) }
      replicas[node][group].disk.append(ready.entries)
      persist(ready, node: node, group: group)
      send(from: node, outgoing)
      outgoing = [:]
      coverage.leaderCrashesMidReady += 1
      crash(node: node, torn: false)
      return false
    }
    // 1. Messages that may leave before persistence.
    for message in ready.messages {
      outgoing[Int(message.to), default: []].append(GroupMessage(group: groupID, message: message))
    }
    // 2. Persist; a disk fault tears the write and the node crashes before it is durable.
    if !healed && random.chance(ppm: parameters.tornWritePpm) && (!ready.entries.isEmpty || ready.hardState != nil) {
      if !ready.entries.isEmpty {
        let kept = random.below(ready.entries.count)
        if ready.snapshot == nil { replicas[node][group].disk.append(Array(ready.entries.prefix(kept))) }
      }
      send(from: node, outgoing)
      outgoing = [:]
      coverage.tornWrites += 1
      crash(node: node, torn: true)
      return false
    }
    if let snapshot = ready.snapshot { replicas[node][group].disk.install(snapshot) }
    replicas[node][group].disk.append(ready.entries)
    persist(ready, node: node, group: group)
    // 3. Messages that promise durability.
    for message in ready.messagesAfterPersist {
      outgoing[Int(message.to), default: []].append(GroupMessage(group: groupID, message: message))
    }
    // 4. Apply.
    if let snapshot = ready.snapshot {
      coverage.snapshotsInstalled += 1
      replicas[node][group].machine = Machine(snapshot: snapshot)
      if let failure = checker.applied(
        node: node, group: groupID, index: snapshot.index, stateDigest: replicas[node][group].machine.digest)
      {
        violation = failure
        return false
      }
    }
    for entry in ready.committedEntries {
      if entry.kind == .configChange { coverage.configChangesApplied += 1 }
      replicas[node][group].machine.apply(entry)
      if let failure = checker.applied(
        node: node, group: groupID, index: entry.index, stateDigest: replicas[node][group].machine.digest)
      {
        violation = failure
        return false
      }
    }
    // 5. Reads: the read point must cover everything committed before the read was asked.
    coverage.readsServed += ready.readStates.count
    for read in ready.readStates {
      if let pending = pendingReads.removeValue(forKey: read.context), read.index < pending.minimumIndex {
        violation = Violation(
          property: "Read Safety",
          detail: "n\(node) g\(group) read \(read.context) at index \(read.index) misses committed \(pending.minimumIndex)")
        return false
      }
    }
    raft.advance(ready)
    replicas[node][group].raft = raft
    return true
  }

  // MARK: Network

  private func isBlocked(_ from: Int, _ to: Int) -> Bool { blocked.contains(from * 16 + to) }

  private func send(from node: Int, _ outgoing: [Int: [GroupMessage]]) {
    for destination in outgoing.keys.sorted() {
      let messages = outgoing[destination]!
      for item in messages {
        let durableTerm = replicas[node][Int(item.group)].disk.hardState.term
        if let failure = checker.sent(item.message, node: node, group: item.group, durableTerm: durableTerm) {
          violation = failure
          return
        }
      }
      // Every simulated message goes through the real wire codec.
      let bytes = WireCodec.encode(MessageBatch(fromNode: UInt64(node), toNode: UInt64(destination), messages: messages))
      var lost = false
      if isBlocked(node, destination) {
        trace.append(.drop(time: now, from: node, to: destination, messages: messages.count, reason: "partition"))
        lost = true
      } else if !healed && random.chance(ppm: parameters.dropPpm) {
        trace.append(.drop(time: now, from: node, to: destination, messages: messages.count, reason: "loss"))
        lost = true
      } else {
        queue.push(time: now + 1 + random.below(parameters.delayUnitsMax), .deliver(from: node, to: destination, bytes: bytes))
        if !healed && random.chance(ppm: parameters.duplicatePpm) {
          queue.push(
            time: now + 1 + random.below(parameters.delayUnitsMax), .deliver(from: node, to: destination, bytes: bytes))
        }
      }
      // The transport reports snapshot delivery to the sender (Raft paper §7).
      for item in messages where item.message.kind == .snapshot {
        if alive[node], var raft = replicas[node][Int(item.group)].raft {
          raft.reportSnapshot(to: item.message.to, failed: lost)
          replicas[node][Int(item.group)].raft = raft
        }
      }
    }
  }

  private func deliver(from: Int, to: Int, bytes: [UInt8]) {
    guard alive[to] else { return }
    if isBlocked(from, to) {
      trace.append(.drop(time: now, from: from, to: to, messages: 0, reason: "partition in flight"))
      return
    }
    let batch: MessageBatch
    do {
      batch = try WireCodec.decodeBatch(bytes)
    } catch {
      violation = Violation(property: "Wire Codec", detail: "a batch n\(from)→n\(to) failed to decode: \(error)")
      return
    }
    for item in batch.messages {
      let message = item.message
      guard item.group < UInt64(options.groups) else { continue }
      messagesDelivered += 1
      let routine =
        !options.traceHeartbeats && (message.kind == .heartbeat || message.kind == .heartbeatResponse)
        && message.context == 0
      if !routine {
        trace.append(
        .deliver(time: now, from: from, to: to, group: item.group, message: message))
      }
      replicas[to][Int(item.group)].raft!.step(message)
    }
    flush(node: to)
  }

  // MARK: Faults and workload (safety phase)

  private func leaderNode(group: Int) -> Int? {
    var best: (node: Int, term: Term)? = nil
    for node in 1...options.nodes where alive[node] {
      let raft = replicas[node][group].raft!
      if raft.role == .leader && raft.term >= (best?.term ?? 0) { best = (node, raft.term) }
    }
    return best?.node
  }

  private func chaos() {
    let nodes = options.nodes
    if random.chance(ppm: parameters.crashPpm) {
      let candidates = (1...nodes).filter { alive[$0] }
      if !candidates.isEmpty { crash(node: random.pick(candidates), torn: false) }
    }
    if random.chance(ppm: parameters.restartPpm) {
      let candidates = (1...nodes).filter { !alive[$0] }
      if !candidates.isEmpty { restart(node: random.pick(candidates)) }
    }
    if random.chance(ppm: parameters.partitionPpm) { partition() }
    if random.chance(ppm: parameters.healPpm) && !blocked.isEmpty {
      blocked = []
      trace.append(.partition(time: now, description: "healed"))
    }
    for group in 0..<options.groups {
      if random.chance(ppm: parameters.proposePpm) { propose(group: group) }
      if random.chance(ppm: parameters.configChangePpm) { changeMembership(group: group) }
      if random.chance(ppm: parameters.transferPpm) { transfer(group: group) }
      if random.chance(ppm: parameters.readPpm) { read(group: group) }
    }
    if random.chance(ppm: parameters.compactPpm) {
      let node = 1 + random.below(nodes)
      if alive[node] { compact(node: node, group: random.below(options.groups)) }
    }
  }

  private func partition() {
    let nodes = Array(1...options.nodes)
    var description: String
    switch random.below(4) {
    case 0:
      // Two sides, cut both ways.
      var side = Set<Int>()
      for node in nodes where random.below(2) == 0 { side.insert(node) }
      for a in nodes { for b in nodes where side.contains(a) != side.contains(b) { blocked.insert(a * 16 + b) } }
      description = "split \(side.sorted()) | \(nodes.filter { !side.contains($0) })"
    case 1:
      // One-way: a cannot reach b, b still reaches a.
      let a = random.pick(nodes)
      let b = random.pick(nodes.filter { $0 != a })
      blocked.insert(a * 16 + b)
      description = "one-way n\(a)↛n\(b)"
    case 2:
      // Bridge: two sides that only the bridge node connects.
      let bridge = random.pick(nodes)
      let others = nodes.filter { $0 != bridge }
      let half = others.count / 2
      let left = Set(others.prefix(half))
      for a in others { for b in others where left.contains(a) != left.contains(b) { blocked.insert(a * 16 + b) } }
      description = "bridge n\(bridge) between \(left.sorted()) and \(others.filter { !left.contains($0) })"
    default:
      // Isolate one node.
      let lonely = random.pick(nodes)
      for other in nodes where other != lonely {
        blocked.insert(lonely * 16 + other)
        blocked.insert(other * 16 + lonely)
      }
      description = "isolate n\(lonely)"
    }
    coverage.partitions += 1
    trace.append(.partition(time: now, description: description))
  }

  private func propose(group: Int) {
    // Usually at the leader; sometimes at a random replica, which must refuse.
    let node = random.below(4) == 0 ? 1 + random.below(options.nodes) : (leaderNode(group: group) ?? 1)
    guard alive[node] else { return }
    proposalCounter += 1
    var command: [UInt8] = [UInt8(node), UInt8(group)]
    for shift in 0..<8 { command.append(UInt8(truncatingIfNeeded: proposalCounter >> UInt64(8 * shift))) }
    if let index = try? replicas[node][group].raft!.propose(command) {
      trace.append(.propose(time: now, node: node, group: UInt64(group), index: index, what: "command \(proposalCounter)"))
    }
    flush(node: node)
  }

  private func changeMembership(group: Int) {
    guard let node = leaderNode(group: group) else { return }
    let membership = replicas[node][group].raft!.membership
    let all = (1...options.nodes).map { ReplicaID($0) }
    let voters = membership.voters
    let learners = membership.learners
    let outsiders = all.filter { !voters.contains($0) && !learners.contains($0) }
    var steps: [ConfigChangeStep] = []
    switch random.below(5) {
    case 0 where !outsiders.isEmpty:
      steps = [ConfigChangeStep(.addLearner, random.pick(outsiders))]
    case 1 where !learners.isEmpty:
      steps = [ConfigChangeStep(.addVoter, random.pick(learners))]
    case 2 where voters.count > 1:
      steps = [ConfigChangeStep(.remove, random.pick(voters))]
    case 3 where !learners.isEmpty || !outsiders.isEmpty:
      // Replace a voter: two voters change, so this goes through a joint configuration.
      steps = [
        ConfigChangeStep(.remove, random.pick(voters)),
        ConfigChangeStep(.addVoter, random.pick(learners + outsiders)),
      ]
    case 4 where !learners.isEmpty:
      steps = [ConfigChangeStep(.remove, random.pick(learners))]
    default:
      return
    }
    let change = ConfigChange(steps)
    if let index = try? replicas[node][group].raft!.proposeConfigChange(change) {
      let text = steps.map { "\($0.kind) n\($0.replica)" }.joined(separator: ", ")
      trace.append(.propose(time: now, node: node, group: UInt64(group), index: index, what: "config [\(text)]"))
    }
    flush(node: node)
  }

  private func transfer(group: Int) {
    guard let node = leaderNode(group: group) else { return }
    let voters = replicas[node][group].raft!.membership.voters.filter { $0 != ReplicaID(node) }
    guard !voters.isEmpty else { return }
    let target = random.pick(voters)
    if (try? replicas[node][group].raft!.transferLeadership(to: target)) != nil {
      coverage.transfersStarted += 1
      trace.append(.note(time: now, text: "n\(node) g\(group) transfer leadership to n\(target)"))
    }
    flush(node: node)
  }

  private func read(group: Int) {
    guard let node = leaderNode(group: group) else { return }
    proposalCounter += 1
    let context = proposalCounter
    if (try? replicas[node][group].raft!.readIndex(context: context)) != nil {
      pendingReads[context] = (UInt64(group), checker.maxCommitted[UInt64(group)] ?? 0)
    }
    flush(node: node)
  }

  private func compact(node: Int, group: Int) {
    var raft = replicas[node][group].raft!
    guard raft.applied >= raft.firstIndex + LogIndex(parameters.compactAfterEntries) else { return }
    precondition(replicas[node][group].machine.applied == raft.applied, "state machine lags the core after advance")
    guard let snapshot = raft.compact(data: replicas[node][group].machine.snapshotData) else { return }
    replicas[node][group].raft = raft
    replicas[node][group].disk.install(snapshot)
    trace.append(.compact(time: now, node: node, group: UInt64(group), index: snapshot.index))
  }

  // MARK: Liveness phase

  private func heal() {
    healed = true
    blocked = []
    trace.append(.partition(time: now, description: "healed for the liveness phase"))
    for node in 1...options.nodes where !alive[node] { restart(node: node) }
  }

  private func driveLiveness() {
    for group in 0..<options.groups {
      guard let node = leaderNode(group: group) else { continue }
      let raft = replicas[node][group].raft!
      if let marker = livenessMarkers[UInt64(group)], marker.term == raft.term { continue }
      guard raft.leadTransferee == 0 else { continue }
      if let index = try? replicas[node][group].raft!.propose(Array("live-\(group)".utf8)) {
        livenessMarkers[UInt64(group)] = (raft.term, index)
        trace.append(.propose(time: now, node: node, group: UInt64(group), index: index, what: "liveness marker"))
      }
      flush(node: node)
    }
  }

  /// Every group has a leader whose liveness marker committed, and every member has applied the
  /// same state as the leader's commit index.
  private func livenessReached() -> Bool { livenessGap() == nil }

  private func livenessGap() -> String? {
    for group in 0..<options.groups {
      guard let node = leaderNode(group: group) else { return "g\(group) has no leader" }
      let leader = replicas[node][group].raft!
      guard let marker = livenessMarkers[UInt64(group)], marker.term == leader.term else {
        return "g\(group) leader n\(node) has not proposed in term \(leader.term)"
      }
      guard leader.committed >= marker.index else {
        return "g\(group) leader n\(node) term \(leader.term) commit \(leader.committed) < marker \(marker.index)"
      }
      for member in leader.membership.allReplicas {
        let replica = replicas[Int(member)][group]
        guard let raft = replica.raft else { return "g\(group) member n\(member) is down" }
        if raft.applied != leader.committed || replica.machine.applied != leader.committed {
          return "g\(group) n\(member) applied \(raft.applied), leader n\(node) committed \(leader.committed)"
        }
        if replica.machine.digest != replicas[node][group].machine.digest {
          return "g\(group) n\(member) state differs from leader n\(node) at \(leader.committed)"
        }
      }
    }
    return nil
  }

  /// The most entries any replica must still receive or apply, over all groups, at healing.
  private func backlogEntries() -> Int {
    var backlog = 0
    for group in 0..<options.groups {
      let rafts = (1...options.nodes).compactMap { replicas[$0][group].raft }
      guard let newest = rafts.map(\.lastIndex).max(), let slowest = rafts.map(\.applied).min() else { continue }
      backlog = max(backlog, Int(newest - min(newest, slowest)))
    }
    return backlog
  }

  /// Catching up costs at most one round trip per entry (one-entry messages, a window of one):
  /// the liveness budget grows by that much per entry of backlog, so slow-but-steady progress on
  /// the slowest settings is not reported as a liveness failure, while a stall still is.
  private var worstTicksPerEntry: Int { 2 * parameters.delayUnitsMax / Simulator.unitsPerTick + 2 }

  private func livenessReport() -> String {
    var lines = [
      "after \(livenessBudget) healed ticks (\(options.livenessTicksMax) + backlog × \(worstTicksPerEntry)): "
        + (livenessGap() ?? "reached")
    ]
    for group in 0..<options.groups {
      for node in 1...options.nodes {
        guard let raft = replicas[node][group].raft else { continue }
        lines.append(
          "  n\(node) g\(group) \(raft.role) term=\(raft.term) vote=\(raft.vote) leader=\(raft.leader) "
            + "first=\(raft.firstIndex) last=\(raft.lastIndex)/\(raft.lastTerm) commit=\(raft.committed) "
            + "applied=\(raft.applied) \(raft.membership)")
        if raft.role == .leader {
          let status = raft.status
          let text = status.progress.keys.sorted().map { replica in
            let entry = status.progress[replica]!
            return "n\(replica):\(entry.state)/match=\(entry.match)/next=\(entry.next)"
          }
          lines.append("    progress " + text.joined(separator: " "))
        }
      }
    }
    return lines.joined(separator: "\n")
  }
}
