import XCTest

@testable import RaftCore

/// Data-driven interaction scripts, in the style of etcd-io/raft's testdata: each step is
/// `command args`, then `----`, then the exact output it must print. The output shows every
/// message delivered and the replicas' state, so a script reads like the paper's walk-through.
struct ScriptRunner {
  var cluster: TestCluster

  init(voters: [ReplicaID], learners: [ReplicaID] = []) {
    cluster = TestCluster(voters: voters, learners: learners)
  }

  static func describe(_ message: Message) -> String {
    var text = "\(message.from)→\(message.to) \(message.kind) term=\(message.term)"
    switch message.kind {
    case .append:
      text += " prev=\(message.index)/\(message.logTerm) commit=\(message.commit)"
      if !message.entries.isEmpty {
        text += " entries=[" + message.entries.map { "\($0.index)/\($0.term)" }.joined(separator: " ") + "]"
      }
    case .appendResponse:
      text += " index=\(message.index)"
      if message.reject { text += " reject hint=\(message.rejectHint)/\(message.logTerm)" }
    case .vote, .preVote:
      text += " last=\(message.index)/\(message.logTerm)"
    case .voteResponse, .preVoteResponse:
      text += message.reject ? " reject" : " granted"
    case .heartbeat, .heartbeatResponse:
      text += " commit=\(message.commit)"
      if message.context != 0 { text += " context=\(message.context)" }
    case .snapshot:
      text += " snapshot=\(message.snapshot!.index)/\(message.snapshot!.term)"
    case .quiesce:
      text += " last=\(message.index)/\(message.logTerm) commit=\(message.commit)"
    case .timeoutNow:
      break
    }
    return text
  }

  /// Executes one command and returns its output lines.
  mutating func run(_ line: String) -> [String] {
    let words = line.split(separator: " ").map(String.init)
    let node = words.count > 1 ? ReplicaID(words[1]) ?? 0 : 0
    var output: [String] = []
    switch words[0] {
    case "campaign":
      cluster[node].campaign()
    case "propose":
      do {
        let index = try cluster[node].propose(Array(words[2].utf8))
        output.append("proposed at \(index)")
      } catch {
        output.append("refused: \(error)")
      }
    case "tick":
      for _ in 0..<(Int(words[2]) ?? 1) { cluster[node].tick() }
    case "isolate":
      cluster.isolate(node)
    case "heal":
      cluster.heal()
    case "transfer":
      do {
        try cluster[node].transferLeadership(to: ReplicaID(words[2])!)
      } catch {
        output.append("refused: \(error)")
      }
    case "stabilize":
      for _ in 0..<1000 {
        cluster.flush()
        if cluster.inFlight.isEmpty { break }
        let batch = cluster.inFlight
        cluster.inFlight = []
        for message in batch {
          if cluster.cut.contains([message.from, message.to]) {
            output.append("dropped " + Self.describe(message))
          } else {
            output.append(Self.describe(message))
            cluster.replicas[message.to]?.step(message)
          }
        }
      }
    case "status":
      for id in cluster.replicas.keys.sorted() {
        let raft = cluster[id]
        output.append(
          "n\(id) \(raft.role) term=\(raft.term) vote=\(raft.vote) leader=\(raft.leader) "
            + "last=\(raft.lastIndex) commit=\(raft.committed) applied=\(raft.applied)")
      }
    default:
      output.append("unknown command \(words[0])")
    }
    return output
  }

  /// Runs a script and reports the first difference from its expected output.
  static func check(_ script: String, voters: [ReplicaID], file: StaticString = #filePath, line: UInt = #line) {
    var runner = ScriptRunner(voters: voters)
    let blocks = script.components(separatedBy: "\n\n")
    for block in blocks where !block.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
      let parts = block.components(separatedBy: "----")
      let command = parts[0].trimmingCharacters(in: .whitespacesAndNewlines)
      let expected = parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespacesAndNewlines) : ""
      let actual = runner.run(command).joined(separator: "\n")
      XCTAssertEqual(actual, expected, "after `\(command)`", file: file, line: line)
      if actual != expected { return }
    }
  }
}

final class ScriptTests: XCTestCase {
  /// Raft paper §5.2 with thesis §9.6: a pre-election, an election, the no-op (§8) and a commit.
  func testElectionAndFirstCommit_Section5_2() {
    ScriptRunner.check(
      """
      campaign 1
      ----

      stabilize
      ----
      1→2 preVote term=1 last=0/0
      1→3 preVote term=1 last=0/0
      2→1 preVoteResponse term=1 granted
      3→1 preVoteResponse term=1 granted
      1→2 vote term=1 last=0/0
      1→3 vote term=1 last=0/0
      2→1 voteResponse term=1 granted
      3→1 voteResponse term=1 granted
      1→2 append term=1 prev=0/0 commit=0 entries=[1/1]
      1→3 append term=1 prev=0/0 commit=0 entries=[1/1]
      2→1 appendResponse term=1 index=1
      3→1 appendResponse term=1 index=1
      1→2 append term=1 prev=1/1 commit=1
      2→1 appendResponse term=1 index=1

      status
      ----
      n1 leader term=1 vote=1 leader=1 last=1 commit=1 applied=1
      n2 follower term=1 vote=1 leader=1 last=1 commit=1 applied=1
      n3 follower term=1 vote=1 leader=1 last=1 commit=0 applied=0

      tick 1 1
      ----

      stabilize
      ----
      1→2 heartbeat term=1 commit=1
      1→3 heartbeat term=1 commit=1
      2→1 heartbeatResponse term=1 commit=0
      3→1 heartbeatResponse term=1 commit=0

      status
      ----
      n1 leader term=1 vote=1 leader=1 last=1 commit=1 applied=1
      n2 follower term=1 vote=1 leader=1 last=1 commit=1 applied=1
      n3 follower term=1 vote=1 leader=1 last=1 commit=1 applied=1

      propose 2 x
      ----
      refused: not the leader (leader is 1)
      """, voters: [1, 2, 3])
  }

  /// Raft paper §5.3 and thesis §9.6: an isolated follower misses entries, keeps its term thanks
  /// to PreVote, and is caught up after healing by the leader's probe and back-off.
  func testPartitionedFollowerCatchesUp_Section5_3() {
    ScriptRunner.check(
      """
      campaign 1
      ----

      stabilize
      ----
      1→2 preVote term=1 last=0/0
      1→3 preVote term=1 last=0/0
      2→1 preVoteResponse term=1 granted
      3→1 preVoteResponse term=1 granted
      1→2 vote term=1 last=0/0
      1→3 vote term=1 last=0/0
      2→1 voteResponse term=1 granted
      3→1 voteResponse term=1 granted
      1→2 append term=1 prev=0/0 commit=0 entries=[1/1]
      1→3 append term=1 prev=0/0 commit=0 entries=[1/1]
      2→1 appendResponse term=1 index=1
      3→1 appendResponse term=1 index=1
      1→2 append term=1 prev=1/1 commit=1
      2→1 appendResponse term=1 index=1

      isolate 3
      ----

      propose 1 a
      ----
      proposed at 2

      stabilize
      ----
      1→2 append term=1 prev=1/1 commit=1 entries=[2/1]
      dropped 1→3 append term=1 prev=1/1 commit=1 entries=[2/1]
      2→1 appendResponse term=1 index=2
      1→2 append term=1 prev=2/1 commit=2
      dropped 1→3 append term=1 prev=2/1 commit=2
      2→1 appendResponse term=1 index=2

      tick 3 40
      ----

      stabilize
      ----
      dropped 3→1 preVote term=2 last=1/1
      dropped 3→2 preVote term=2 last=1/1
      dropped 3→1 preVote term=2 last=1/1
      dropped 3→2 preVote term=2 last=1/1

      heal
      ----

      tick 1 1
      ----

      stabilize
      ----
      1→2 heartbeat term=1 commit=2
      1→3 heartbeat term=1 commit=1
      2→1 heartbeatResponse term=1 commit=0
      3→1 heartbeatResponse term=1 commit=0
      1→3 append term=1 prev=2/1 commit=2
      3→1 appendResponse term=1 index=2 reject hint=1/1
      1→3 append term=1 prev=1/1 commit=2 entries=[2/1]
      3→1 appendResponse term=1 index=2

      status
      ----
      n1 leader term=1 vote=1 leader=1 last=2 commit=2 applied=2
      n2 follower term=1 vote=1 leader=1 last=2 commit=2 applied=2
      n3 follower term=1 vote=1 leader=1 last=2 commit=2 applied=2
      """, voters: [1, 2, 3])
  }
}
