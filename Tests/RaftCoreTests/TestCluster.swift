import XCTest

@testable import RaftCore

/// An in-memory harness: replicas that execute their Readies at once and a message pool that
/// tests deliver, drop or inspect.
struct TestCluster {
  var replicas: [ReplicaID: Raft] = [:]
  var inFlight: [Message] = []
  /// Links that lose every message (from, to).
  var cut: Set<[ReplicaID]> = []
  var applied: [ReplicaID: [Entry]] = [:]
  var readStates: [ReplicaID: [ReadState]] = [:]

  init(voters: [ReplicaID], learners: [ReplicaID] = [], configure: (inout RaftConfig) -> Void = { _ in }) {
    let membership = ConfigState(voters: voters, learners: learners)
    for id in voters + learners {
      var config = RaftConfig(id: id)
      configure(&config)
      replicas[id] = try! Raft(
        config: config, random: SplitMix64(seed: id &* 7919), restored: RestoredState(bootstrapConfig: membership))
    }
  }

  subscript(_ id: ReplicaID) -> Raft {
    get { replicas[id]! }
    set { replicas[id] = newValue }
  }

  /// Executes every pending Ready once; collects messages.
  mutating func flush() {
    for id in replicas.keys.sorted() {
      while replicas[id]!.hasReady {
        var raft = replicas[id]!
        let ready = raft.ready()
        inFlight += ready.messages + ready.messagesAfterPersist
        applied[id, default: []] += ready.committedEntries
        readStates[id, default: []] += ready.readStates
        raft.advance(ready)
        replicas[id] = raft
      }
    }
  }

  /// Delivers messages until none are left (bounded).
  mutating func stabilize(filter: (Message) -> Bool = { _ in true }) {
    for _ in 0..<10_000 {
      flush()
      if inFlight.isEmpty { return }
      let batch = inFlight
      inFlight = []
      for message in batch where filter(message) && !cut.contains([message.from, message.to]) {
        replicas[message.to]?.step(message)
      }
    }
    XCTFail("cluster did not stabilize")
  }

  mutating func isolate(_ id: ReplicaID) {
    for other in replicas.keys where other != id {
      cut.insert([id, other])
      cut.insert([other, id])
    }
  }

  mutating func heal() { cut = [] }

  mutating func elect(_ id: ReplicaID) {
    replicas[id]!.campaign()
    stabilize()
  }

  /// Ticks every replica (or `only` those) that is not quiesced, as a host does, then delivers.
  mutating func tick(_ count: Int = 1, only: [ReplicaID]? = nil) {
    for _ in 0..<count {
      for id in (only ?? replicas.keys.sorted()) where !replicas[id]!.isQuiesced { replicas[id]!.tick() }
      stabilize()
    }
  }

  var leaders: [ReplicaID] { replicas.keys.sorted().filter { replicas[$0]!.role == .leader } }
}

func makeRaft(
  id: ReplicaID, voters: [ReplicaID], hardState: HardState = HardState(), entries: [Entry] = [],
  configure: (inout RaftConfig) -> Void = { _ in }
) -> Raft {
  var config = RaftConfig(id: id)
  configure(&config)
  return try! Raft(
    config: config, random: SplitMix64(seed: id),
    restored: RestoredState(hardState: hardState, entries: entries, bootstrapConfig: ConfigState(voters: voters)))
}

/// Runs one Ready: returns it after advancing.
@discardableResult
func drain(_ raft: inout Raft) -> Ready {
  let ready = raft.ready()
  raft.advance(ready)
  return ready
}

func entries(_ terms: [Term]) -> [Entry] {
  terms.enumerated().map { Entry(term: $0.element, index: LogIndex($0.offset + 1), data: [UInt8($0.offset)]) }
}
