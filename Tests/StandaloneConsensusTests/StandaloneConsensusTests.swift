import Consensus
import Foundation
import Platform
import StandaloneConsensus
import XCTest

/// Appends every command to a list; the snapshot is the list. Optionally blocks `apply` on a gate.
final class RecordingStateMachine: StateMachine {
  var commands: [[UInt8]] = []
  let gate: ConditionLock?
  let gateOpen: Locked<Bool>?
  /// Applies started (counted before the gate), so a test can wait until one is held there.
  let applyStarted: Locked<Int>

  init(gate: ConditionLock? = nil, gateOpen: Locked<Bool>? = nil, applyStarted: Locked<Int> = Locked(0)) {
    self.gate = gate
    self.gateOpen = gateOpen
    self.applyStarted = applyStarted
  }

  func apply(index: UInt64, command: [UInt8]) -> [UInt8] {
    applyStarted.withLock { $0 += 1 }
    if let gate, let gateOpen {
      gate.withLock { while !gateOpen.withLock({ $0 }) { gate.wait() } }
    }
    commands.append(command)
    return [UInt8(truncatingIfNeeded: commands.count)]
  }

  func query(_ request: [UInt8]) -> [UInt8] { commands.flatMap { $0 + [0xFF] } }

  func takeSnapshot() -> [UInt8] { commands.flatMap { [UInt8($0.count)] + $0 } }

  func restore(snapshot: [UInt8]) throws {
    var restored: [[UInt8]] = []
    var position = 0
    while position < snapshot.count {
      let length = Int(snapshot[position])
      guard position + 1 + length <= snapshot.count else { throw ConsensusError.invalidRequest("truncated") }
      restored.append(Array(snapshot[position + 1..<position + 1 + length]))
      position += 1 + length
    }
    commands = restored
  }
}

final class StandaloneConsensusTests: XCTestCase {
  private let peer = Peer(node: NodeID(1), endpoint: Endpoint(host: "127.0.0.1", port: 40010))
  private let group = GroupID(.dataRegion, 1)
  private var directory = ""

  override func setUp() {
    directory = NSTemporaryDirectory() + "caucus-standalone-\(UUID().uuidString.prefix(8))"
  }

  override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

  private func makeEngine(options: [String: String] = [:], registry: StateMachineRegistry? = nil) throws -> StandaloneConsensus {
    var defaultRegistry = StateMachineRegistry()
    defaultRegistry.registerDefault { _ in RecordingStateMachine() }
    let engine = StandaloneConsensus(
      config: ConsensusConfig(localPeer: peer, dataDirectory: directory, registry: registry ?? defaultRegistry),
      options: try StandaloneOptions(options: options))
    try engine.start()
    return engine
  }

  private func write(_ engine: StandaloneConsensus, _ text: String, to group: GroupID? = nil) -> Result<WriteResult, ConsensusError> {
    waitForCompletion { engine.write(group ?? self.group, command: Array(text.utf8), completion: $0) }
  }

  private func readAll(_ engine: StandaloneConsensus, _ options: ReadOptions = ReadOptions()) throws -> (UInt64, [String]) {
    let result = try waitForCompletion { engine.read(self.group, query: [], options: options, completion: $0) }.get()
    let commands = result.response.split(separator: 0xFF, omittingEmptySubsequences: false).dropLast().map {
      String(decoding: $0, as: UTF8.self)
    }
    return (result.index, commands)
  }

  private func metric(_ engine: StandaloneConsensus, _ name: String) -> Double {
    for line in engine.prometheusMetrics().split(separator: "\n") where line.hasPrefix(name + " ") {
      return Double(line.split(separator: " ")[1])!
    }
    return -1
  }

  func testWritesGetConsecutiveIndexesAndReadsSeeThem() throws {
    let engine = try makeEngine()
    defer { engine.stop() }
    XCTAssertEqual(waitForCompletion { engine.write(self.group, command: [1], completion: $0) }, .failure(.groupNotFound(group)))
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    for (offset, text) in ["a", "b", "c"].enumerated() {
      let written = try write(engine, text).get()
      XCTAssertEqual(written.index, UInt64(offset + 1))
      XCTAssertEqual(written.response, [UInt8(offset + 1)])
    }
    let (index, commands) = try readAll(engine)
    XCTAssertEqual(index, 3)
    XCTAssertEqual(commands, ["a", "b", "c"])
    XCTAssertEqual(engine.status(group)?.appliedIndex, 3)
    XCTAssertEqual(engine.status(group)?.role, .leader)
    XCTAssertTrue(engine.isLeader(group))
    XCTAssertEqual(engine.leader(group), peer)
  }

  func testConcurrentWritesShareFsyncs() throws {
    let engine = try makeEngine()
    defer { engine.stop() }
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    let syncsBefore = metric(engine, "caucus_wal_fsyncs_total")
    let writers = 64
    let writesEach = 20
    let failures = Locked(0)
    let group = self.group
    // Real threads, not a dispatch pool: on 2 cores a pool runs only 2 writers at once.
    let threads = (0..<writers).map { writer in
      OSThread(name: "writer-\(writer)") {
        for sequence in 0..<writesEach {
          let result = waitForCompletion { engine.write(group, command: Array("\(writer)-\(sequence)".utf8), completion: $0) }
          if case .failure = result { failures.withLock { $0 += 1 } }
        }
      }
    }
    for thread in threads { thread.join() }
    XCTAssertEqual(failures.withLock { $0 }, 0)
    let syncs = metric(engine, "caucus_wal_fsyncs_total") - syncsBefore
    let writes = Double(writers * writesEach)
    XCTAssertEqual(metric(engine, "caucus_writes_committed_total"), writes)
    XCTAssertLessThan(syncs, writes / 2, "concurrent writes must share fsyncs (group commit): \(syncs) fsyncs for \(writes) writes")
    XCTAssertEqual(try readAll(engine).1.count, writers * writesEach)
  }

  func testRestartRecoversEveryGroupFromSnapshotAndLog() throws {
    var engine = try makeEngine()
    let other = GroupID(.schemaRegion, 2)
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    try waitForCompletion { engine.createPeer(other, peers: [self.peer], completion: $0) }.get()
    _ = try write(engine, "one").get()
    _ = try write(engine, "two").get()
    let snapshot = try waitForCompletion { engine.triggerSnapshot(self.group, completion: $0) }.get()
    XCTAssertEqual(snapshot.index, 2)
    _ = try write(engine, "three").get()
    _ = try write(engine, "elsewhere", to: other).get()
    engine.stop()

    engine = try makeEngine()
    defer { engine.stop() }
    XCTAssertEqual(engine.allGroupIDs(), [group, other])
    let (index, commands) = try readAll(engine)
    XCTAssertEqual(index, 3)
    XCTAssertEqual(commands, ["one", "two", "three"])
    XCTAssertEqual(engine.status(group)?.snapshotIndex, 2)
    XCTAssertEqual(try write(engine, "four").get().index, 4)
    XCTAssertEqual(engine.status(other)?.appliedIndex, 1)
  }

  func testADeletedAndRecreatedGroupDoesNotResurrectOldEntries() throws {
    var engine = try makeEngine()
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    _ = try write(engine, "old-1").get()
    _ = try write(engine, "old-2").get()
    try waitForCompletion { engine.deletePeer(self.group, completion: $0) }.get()
    XCTAssertEqual(failure(waitForCompletion { engine.deletePeer(self.group, completion: $0) }), .groupNotFound(group))
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    _ = try write(engine, "new-1").get()
    engine.stop()
    engine = try makeEngine()
    defer { engine.stop() }
    XCTAssertEqual(try readAll(engine).1, ["new-1"])
  }

  func testPeerRulesOfAStandaloneGroup() throws {
    let engine = try makeEngine()
    defer { engine.stop() }
    let stranger = Peer(node: NodeID(2), endpoint: Endpoint(host: "127.0.0.1", port: 40011))
    guard case .failure(.illegalPeerNumber) = waitForCompletion({ engine.createPeer(self.group, peers: [self.peer, stranger], completion: $0) }),
      case .failure(.illegalPeerNumber) = waitForCompletion({ engine.createPeer(self.group, peers: [], completion: $0) }),
      case .failure(.illegalPeerNumber) = waitForCompletion({ engine.createPeer(self.group, peers: [stranger], completion: $0) })
    else { return XCTFail("a standalone group has exactly one peer, this node") }
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    XCTAssertEqual(failure(waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }), .groupAlreadyExists(group))
    guard case .failure(.illegalPeerNumber) = waitForCompletion({ engine.addPeer(self.group, peer: stranger, completion: $0) }) else {
      return XCTFail("adding a peer is refused")
    }
    XCTAssertEqual(failure(waitForCompletion { engine.addPeer(self.group, peer: self.peer, completion: $0) }), .peerAlreadyInGroup(peer.node, group))
    XCTAssertEqual(failure(waitForCompletion { engine.removePeer(self.group, node: NodeID(2), completion: $0) }), .peerNotInGroup(NodeID(2), group))
    guard case .failure(.illegalPeerNumber) = waitForCompletion({ engine.removePeer(self.group, node: self.peer.node, completion: $0) }) else {
      return XCTFail("removing the only peer is refused")
    }
    XCTAssertNoThrow(try waitForCompletion { engine.changePeer(self.group, peers: [self.peer], completion: $0) }.get())
    XCTAssertNoThrow(try waitForCompletion { engine.transferLeader(self.group, to: self.peer.node, completion: $0) }.get())
    XCTAssertEqual(failure(waitForCompletion { engine.transferLeader(self.group, to: NodeID(2), completion: $0) }), .peerNotInGroup(NodeID(2), group))
  }

  func testAFullQueueAnswersOverloadedInsteadOfQueueingWithoutBound() throws {
    let gate = ConditionLock()
    let open = Locked(false)
    var registry = StateMachineRegistry()
    let started = Locked(0)
    registry.registerDefault { _ in RecordingStateMachine(gate: gate, gateOpen: open, applyStarted: started) }
    let engine = try makeEngine(options: ["pendingWritesMax": "4", "batchWritesMax": "1"], registry: registry)
    defer { engine.stop() }
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    let outcomes = Locked<[Result<WriteResult, ConsensusError>]>([])
    // The first write blocks in apply; the next four fill the queue; the rest must be refused.
    engine.write(group, command: [0]) { result in outcomes.withLock { $0.append(result) } }
    let deadline = Date().addingTimeInterval(10)
    while started.withLock({ $0 }) < 1 && Date() < deadline { usleep(1000) }
    XCTAssertEqual(started.withLock { $0 }, 1, "the first write is held in apply")
    for sequence in 1..<10 {
      engine.write(group, command: [UInt8(sequence)]) { result in outcomes.withLock { $0.append(result) } }
    }
    while outcomes.withLock({ $0.count }) < 5 && Date() < deadline { usleep(1000) }
    let refused = outcomes.withLock { $0 }
    XCTAssertEqual(refused.count, 5, "five writes must be refused at once")
    XCTAssertTrue(refused.allSatisfy { $0 == .failure(.overloaded(retryAfterMs: 100)) })
    gate.withLock {
      open.withLock { $0 = true }
      gate.broadcast()
    }
    while outcomes.withLock({ $0.count }) < 10 && Date() < deadline { usleep(1000) }
    XCTAssertEqual(outcomes.withLock { $0.filter { if case .success = $0 { return true } else { return false } }.count }, 5)
  }

  func testAReadWithMinIndexWaitsForTheWriteOrTimesOut() throws {
    let engine = try makeEngine()
    defer { engine.stop() }
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    let early = Locked<Result<ReadResult, ConsensusError>?>(nil)
    engine.read(group, query: [], options: ReadOptions(consistency: .stale, minIndex: 1, waitMs: 10_000)) { result in
      early.withLock { $0 = result }
    }
    XCTAssertNil(early.withLock { $0 }, "the read waits for index 1")
    _ = try write(engine, "x").get()
    let deadline = Date().addingTimeInterval(10)
    while early.withLock({ $0 }) == nil && Date() < deadline { usleep(1000) }
    XCTAssertEqual(try early.withLock { $0 }?.get().index, 1)
    let late = waitForCompletion { engine.read(self.group, query: [], options: ReadOptions(consistency: .stale, minIndex: 5, waitMs: 50), completion: $0) }
    XCTAssertEqual(late, .failure(.timeout(indeterminate: false)))
  }

  func testAGroupWhoseFirstSnapshotWasLostGetsOneAtRecovery() throws {
    var engine = try makeEngine()
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    _ = try write(engine, "kept").get()
    engine.stop()
    // A crash between the creation record and the first snapshot leaves no snapshot file.
    let snapshots = try FileManager.default.contentsOfDirectory(atPath: directory + "/wal").filter { $0.hasPrefix("snapshot-") }
    XCTAssertEqual(snapshots.count, 1)
    try FileManager.default.removeItem(atPath: directory + "/wal/" + snapshots[0])
    engine = try makeEngine()
    defer { engine.stop() }
    XCTAssertEqual(try readAll(engine).1, ["kept"])
    XCTAssertEqual(
      try FileManager.default.contentsOfDirectory(atPath: directory + "/wal").filter { $0.hasPrefix("snapshot-") }, snapshots,
      "recovery wrote the group's snapshot again, so releasing the log cannot lose the group")
    XCTAssertEqual(engine.status(group)?.snapshotIndex, 1)
  }

  func testOversizedCommandsAndAFullControlQueueAreRefusedWithoutHarm() throws {
    let gate = ConditionLock()
    let open = Locked(false)
    let applyStarted = Locked(0)
    var registry = StateMachineRegistry()
    registry.registerDefault { _ in RecordingStateMachine(gate: gate, gateOpen: open, applyStarted: applyStarted) }
    let engine = try makeEngine(options: ["pendingControlMax": "2"], registry: registry)
    defer { engine.stop() }
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    guard case .failure(.invalidRequest(let reason)) = waitForCompletion({
      engine.write(self.group, command: [UInt8](repeating: 1, count: 17 << 20), completion: $0)
    }) else { return XCTFail("a command larger than a log record is refused") }
    XCTAssertTrue(reason.contains("log takes records up to"), reason)
    // Hold the commit thread in apply, then queue control work past its limit.
    let blocked = Locked<Result<WriteResult, ConsensusError>?>(nil)
    engine.write(group, command: [1]) { result in blocked.withLock { $0 = result } }
    let outcomes = Locked<[Result<SnapshotInfo, ConsensusError>]>([])
    let deadline = Date().addingTimeInterval(10)
    // The commit thread must be held in apply before the control work queues up behind it.
    while applyStarted.withLock({ $0 }) < 1 && Date() < deadline { usleep(1000) }
    XCTAssertEqual(applyStarted.withLock { $0 }, 1, "the write is held in apply")
    for _ in 0..<3 {
      engine.triggerSnapshot(group) { result in outcomes.withLock { $0.append(result) } }
    }
    while outcomes.withLock({ $0.count }) < 1 && Date() < deadline { usleep(1000) }
    // Two requests fill the control queue; the third is refused at once.
    XCTAssertTrue(outcomes.withLock { $0 }.contains { if case .failure(.overloaded) = $0 { return true } else { return false } })
    gate.withLock {
      open.withLock { $0 = true }
      gate.broadcast()
    }
    while (blocked.withLock({ $0 }) == nil || outcomes.withLock({ $0.count }) < 3) && Date() < deadline { usleep(1000) }
    XCTAssertEqual(try blocked.withLock { $0 }?.get().index, 1)
    XCTAssertTrue(engine.isReady, "refusals do not mark the engine failed")
    XCTAssertEqual(try write(engine, "after").get().index, 2)
  }

  func testStopAnswersLaterCallsWithShuttingDown() throws {
    let engine = try makeEngine()
    try waitForCompletion { engine.createPeer(self.group, peers: [self.peer], completion: $0) }.get()
    engine.stop()
    engine.stop()
    XCTAssertEqual(waitForCompletion { engine.write(self.group, command: [1], completion: $0) }, .failure(.shuttingDown))
    XCTAssertFalse(engine.isReady)
  }
}

func failure<Value>(_ result: Result<Value, ConsensusError>) -> ConsensusError? {
  if case .failure(let error) = result { return error }
  return nil
}
