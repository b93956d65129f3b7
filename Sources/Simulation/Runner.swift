import RaftCore

/// Runs many seeds and formats results the same way for the CLI and the tests.
public enum SimulationRunner {
  public struct Summary: Sendable {
    public var seeds = 0
    public var events = 0
    public var ticks = 0
    public var messagesDelivered = 0
    public var entriesCommitted = 0
    public var leadersElected = 0
    public var crashes = 0
    public var coverage = Coverage()
    public var failures: [SimulationResult] = []

    public init() {}

    /// The last line of every run: stable, parseable, with the counts that matter.
    public func line(nodes: Int, groups: Int) -> String {
      "seeds=\(seeds) nodes=\(nodes) groups=\(groups) events=\(events) ticks=\(ticks) "
        + "messages=\(messagesDelivered) committed=\(entriesCommitted) leaders=\(leadersElected) "
        + "crashes=\(crashes) \(coverage.line) violations=\(failures.count)"
    }

    mutating func add(_ result: SimulationResult) {
      seeds += 1
      events += result.events
      ticks += result.ticks
      messagesDelivered += result.messagesDelivered
      entriesCommitted += result.entriesCommitted
      leadersElected += result.leadersElected
      crashes += result.crashes
      coverage.add(result.coverage)
      if result.violation != nil { failures.append(result) }
    }
  }

  /// Runs `seeds` with the shared options; stops at the first violation when `stopAtFirst`.
  public static func run(
    seeds: some Sequence<UInt64>, template: SimulationOptions, stopAtFirst: Bool = true
  ) throws(SimulationError) -> Summary {
    var summary = Summary()
    for seed in seeds {
      var options = template
      options.seed = seed
      let result = try ClusterSimulator(options: options).run()
      summary.add(result)
      if result.violation != nil && stopAtFirst { break }
    }
    return summary
  }

  /// The report of a violation: seed, property, derived parameters and the trace before it.
  public static func report(_ result: SimulationResult, options: SimulationOptions) -> String {
    var lines: [String] = []
    lines.append("VIOLATION seed=\(result.seed) property=\(result.violation?.property ?? "none")")
    lines.append("detail: \(result.violation?.detail ?? "")")
    lines.append("parameters: nodes=\(options.nodes) groups=\(options.groups) \(result.parameters)")
    lines.append("trace (last \(result.trace.count) events):")
    for line in result.trace { lines.append("  " + line) }
    var replay = "replay: caucus-sim --seed \(result.seed) --nodes \(options.nodes) --groups \(options.groups)"
    replay += " --events \(options.safetyEvents) --liveness-ticks \(options.livenessTicksMax)"
    if let bug = options.plantedBug { replay += " --plant-bug \(bug.rawValue)" }
    lines.append(replay)
    return lines.joined(separator: "\n")
  }
}
