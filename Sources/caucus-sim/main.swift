import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import Simulation

@main
struct CaucusSim: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "caucus-sim",
    abstract: "Deterministic simulation of Caucus Raft clusters: faults, then healing, checked after every event.",
    discussion: """
      Runs seeds 1...N, or one seed with --seed, of a cluster of production Raft hosts \
      (RaftConsensus on the real write-ahead log over a simulated disk, a simulated network, \
      virtual time) whose nodes each host several groups, with clients whose histories are \
      checked for linearizability. Each seed derives the network, crash, disk-fault and workload parameters, so the \
      same arguments print the same output, byte for byte. The last line is a summary: \
      seeds=… nodes=… groups=… events=… violations=0.

      Exit status: 0 when every property held, 1 when a safety property was violated, 2 when \
      liveness failed after healing. A violation prints the seed, the property, the derived \
      parameters, the trace before it and the command that replays it. See docs/SIMULATION.md.
      """)

  @Option(help: "Run seeds 1...N.")
  var seeds: Int?

  @Option(help: "Replay exactly this seed.")
  var seed: UInt64?

  @Option(help: "Nodes per cluster: 3 or 5.")
  var nodes: Int = 3

  @Option(help: "Raft groups hosted by every node (group g starts with all, three, one or two voters by g % 4).")
  var groups: Int = 4

  @Option(help: "Events in the safety phase of each seed (faults on).")
  var events: Int = 3000

  @Option(help: "Ticks allowed for recovery after healing.")
  var livenessTicks: Int = 2000

  @Option(help: "Plant a deliberately wrong rule: \(PlantedBugName.allCases.map(\.rawValue).joined(separator: ", ")).")
  var plantBug: String?

  @Flag(help: "Keep going after a violation and count all of them.")
  var keepGoing = false

  @Option(help: "Trace lines kept for a violation report.")
  var traceLines: Int = 400

  @Flag(help: "Include routine heartbeats in the trace.")
  var traceHeartbeats = false

  mutating func validate() throws {
    if seeds == nil && seed == nil { throw ValidationError("give --seeds N or --seed S") }
    if seeds != nil && seed != nil { throw ValidationError("give either --seeds or --seed, not both") }
    if let seeds, seeds < 1 { throw ValidationError("--seeds must be at least 1") }
    if let plantBug, PlantedBugName(rawValue: plantBug) == nil {
      throw ValidationError("unknown bug '\(plantBug)'; known: \(PlantedBugName.allCases.map(\.rawValue).joined(separator: ", "))")
    }
  }

  func run() throws {
    var options = SimulationOptions(seed: 1)
    options.nodes = nodes
    options.groups = groups
    options.safetyEvents = events
    options.livenessTicksMax = livenessTicks
    options.plantedBug = plantBug.flatMap(PlantedBugName.init(rawValue:))
    options.traceLinesMax = traceLines
    options.traceHeartbeats = traceHeartbeats
    do {
      try options.validate()
    } catch {
      throw ValidationError(error.description)
    }
    let seedList: [UInt64] = seed.map { [$0] } ?? (1...UInt64(seeds!)).map { $0 }
    let clock = ContinuousClock()
    let started = clock.now
    let summary = try SimulationRunner.run(seeds: seedList, template: options, stopAtFirst: !keepGoing)
    let elapsed = clock.now - started
    for failure in summary.failures {
      var failed = options
      failed.seed = failure.seed
      print(SimulationRunner.report(failure, options: failed))
    }
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    // Timing goes to standard error so that standard output replays byte for byte.
    var standardError = StandardError()
    print(
      "elapsed=\(Int(seconds * 1000))ms events/s=\(seconds > 0 ? Int(Double(summary.events) / seconds) : 0)",
      to: &standardError)
    print(summary.line(nodes: nodes, groups: groups))
    if let first = summary.failures.first {
      throw ExitCode(first.violation?.property == "Liveness" ? 2 : 1)
    }
  }
}

struct StandardError: TextOutputStream {
  mutating func write(_ string: String) {
    _ = string.withCString { Glibc.write(2, $0, strlen($0)) }
  }
}
