import Platform
import XCTest

final class PrometheusTests: XCTestCase {
  private let families = [("caucus_group_term", "The group's term."), ("caucus_group_applied_index", "Applied, per group.")]
  private let rows = (1...5).map { number in ("DataRegion-\(number)", [UInt64(number), UInt64(number * 10)]) }

  private func samples(_ text: String, _ name: String) -> [String] {
    text.split(separator: "\n").filter { $0.hasPrefix(name + "{") || $0.hasPrefix(name + " ") }.map(String.init)
  }

  func testPerGroupGaugesCoverTheFirstGroupsOnlyAndCountTheRest() {
    let text = Prometheus.groupGauges(families, rows: rows, groupsMax: 2)
    XCTAssertEqual(Prometheus.formatProblems(text), [])
    XCTAssertEqual(
      samples(text, "caucus_group_term"), [#"caucus_group_term{group="DataRegion-1"} 1"#, #"caucus_group_term{group="DataRegion-2"} 2"#])
    XCTAssertEqual(samples(text, "caucus_group_applied_index").count, 2)
    XCTAssertEqual(samples(text, "caucus_groups_metrics_omitted"), ["caucus_groups_metrics_omitted 3"])
    XCTAssertTrue(text.contains("# HELP caucus_group_term The group's term. Per-group series cover the first --metrics-groups-max"), text)
  }

  func testNoGroupsShownKeepsTheFamiliesAndAnAmpleLimitShowsThemAll() {
    let none = Prometheus.groupGauges(families, rows: rows, groupsMax: 0)
    XCTAssertEqual(Prometheus.formatProblems(none), [])
    XCTAssertEqual(samples(none, "caucus_group_term"), [])
    XCTAssertTrue(none.contains("# TYPE caucus_group_term gauge\n"), "the family is still declared")
    XCTAssertEqual(samples(none, "caucus_groups_metrics_omitted"), ["caucus_groups_metrics_omitted 5"])
    let all = Prometheus.groupGauges(families, rows: rows, groupsMax: .max)
    XCTAssertEqual(samples(all, "caucus_group_applied_index").count, 5)
    XCTAssertEqual(samples(all, "caucus_groups_metrics_omitted"), ["caucus_groups_metrics_omitted 0"])
  }

  func testTheFormatCheckFindsWhatBreaksTheFormat() {
    let valid = Prometheus.metric("a_total", help: "A.", 1) + Prometheus.family("b", help: "B.", label: "role", [("x", 1), ("y", 2)])
    XCTAssertEqual(Prometheus.formatProblems(valid), [])
    XCTAssertEqual(Prometheus.formatProblems(valid + Prometheus.metric("a_total", help: "A.", 1)), [
      "HELP of a_total written twice", "TYPE of a_total written twice", "the samples of a_total are not together",
    ])
    XCTAssertEqual(Prometheus.formatProblems("c 1\n"), ["a sample of c before its family's TYPE"])
    XCTAssertEqual(Prometheus.formatProblems("# TYPE d gauge\nd one\n"), ["a sample without a numeric value: 'd one'"])
  }
}
