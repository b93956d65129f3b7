/// The Prometheus text exposition format, written once for every module that exports metrics.
public enum Prometheus {
  /// One metric with a single sample: its HELP and TYPE lines, then `name value`.
  public static func metric(_ name: String, help: String, _ value: UInt64, type: String = "counter") -> String {
    "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
  }

  /// One family whose samples differ by one label: its HELP and TYPE lines once, then
  /// `name{label="value"} sample` per entry, in the order given.
  public static func family(
    _ name: String, help: String, type: String = "gauge", label: String, _ samples: [(labelValue: String, value: UInt64)]
  ) -> String {
    var text = "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    for sample in samples { text += "\(name){\(label)=\"\(sample.labelValue)\"} \(sample.value)\n" }
    return text
  }

  /// The gauge that says how many groups `groupGauges` left out.
  public static let groupsOmittedName = "caucus_groups_metrics_omitted"

  /// Per-group gauges, one family per entry of `families` (column `i` of a row's `values` is
  /// family `i`'s sample), for the first `groupsMax` of `rows` only — the caller sorts them in
  /// group id order — then `caucus_groups_metrics_omitted`: how many rows were left out. A node
  /// hosting ten thousand groups would otherwise write ten thousand lines per family per scrape;
  /// the per-node aggregates each engine writes beside these are what dashboards watch.
  public static func groupGauges(
    _ families: [(name: String, help: String)], rows: [(group: String, values: [UInt64])], groupsMax: Int
  ) -> String {
    precondition(groupsMax >= 0, "a negative number of groups cannot be shown")
    let shown = rows.prefix(groupsMax)
    var text = ""
    for (column, family) in families.enumerated() {
      text += "# HELP \(family.name) \(family.help) \(cappedNote)\n# TYPE \(family.name) gauge\n"
      for row in shown {
        precondition(row.values.count == families.count, "a row has one value per family")
        text += "\(family.name){group=\"\(row.group)\"} \(row.values[column])\n"
      }
    }
    precondition(shown.count <= groupsMax, "no more groups shown than the limit")
    let omitted = rows.count - shown.count
    text += metric(
      groupsOmittedName,
      help: "Groups hosted here whose per-group series (caucus_group_*) this scrape left out: they cover the first --metrics-groups-max groups in id order.",
      UInt64(omitted), type: "gauge")
    return text
  }

  private static let cappedNote =
    "Per-group series cover the first --metrics-groups-max groups in id order; caucus_groups_metrics_omitted counts the rest."
}

extension Prometheus {
  /// What breaks the text format in `text` (none when it is valid): a family's HELP or TYPE
  /// written twice, a sample before its family's TYPE or apart from its family's other samples,
  /// a value that is not a number. Tests check every scrape they read with it.
  package static func formatProblems(_ text: String) -> [String] {
    var problems: [String] = []
    var helped = Set<String>()
    var typed: [String: String] = [:]
    var finished = Set<String>()  // families whose samples ended (another family's began)
    var current: String?
    for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
      if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
        let fields = line.split(separator: " ", maxSplits: 3)
        guard fields.count >= 4 else {
          problems.append("a comment without a name and text: '\(line)'")
          continue
        }
        let name = String(fields[2])
        if fields[1] == "HELP" {
          if !helped.insert(name).inserted { problems.append("HELP of \(name) written twice") }
        } else {
          if typed[name] != nil { problems.append("TYPE of \(name) written twice") }
          typed[name] = String(fields[3])
        }
        continue
      }
      let nameEnd = line.firstIndex { $0 == "{" || $0 == " " } ?? line.endIndex
      let name = String(line[..<nameEnd])
      var family = name
      for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
        let base = String(name.dropLast(suffix.count))
        if typed[base] == "histogram" { family = base }
      }
      guard typed[family] != nil else {
        problems.append("a sample of \(name) before its family's TYPE")
        continue
      }
      if family != current {
        if let current { finished.insert(current) }
        if finished.contains(family) { problems.append("the samples of \(family) are not together") }
        current = family
      }
      guard let space = line.lastIndex(of: " "), Double(line[line.index(after: space)...]) != nil else {
        problems.append("a sample without a numeric value: '\(line)'")
        continue
      }
    }
    if !text.isEmpty && !text.hasSuffix("\n") { problems.append("the text does not end with a newline") }
    return problems
  }
}
