import Platform

/// Request counts by route and status, and latency histograms by route, in Prometheus text format.
/// Route labels are the route names of `Route`, never raw paths, so the label set stays bounded.
public final class GatewayMetrics: Sendable {
  /// Upper bounds of the latency buckets, seconds.
  public static let latencyBucketBounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

  private struct Histogram {
    var buckets = [UInt64](repeating: 0, count: GatewayMetrics.latencyBucketBounds.count)
    var count: UInt64 = 0
    var sumNanoseconds: UInt64 = 0
  }

  private struct State {
    var requests: [String: [Int: UInt64]] = [:]  // route → status → count
    var latency: [String: Histogram] = [:]
    var inFlight = 0
  }

  private let state = Locked(State())

  public init() {}

  public func begin() { state.withLock { $0.inFlight += 1 } }

  public func record(route: String, status: Int, nanoseconds: UInt64) {
    state.withLock { state in
      state.inFlight -= 1
      state.requests[route, default: [:]][status, default: 0] += 1
      var histogram = state.latency[route] ?? Histogram()
      let seconds = Double(nanoseconds) / 1e9
      if let bucket = GatewayMetrics.latencyBucketBounds.firstIndex(where: { seconds <= $0 }) {
        histogram.buckets[bucket] += 1
      }
      histogram.count += 1
      histogram.sumNanoseconds += nanoseconds
      state.latency[route] = histogram
    }
  }

  public func prometheusText() -> String {
    let snapshot = state.withLock { $0 }
    var text = "# HELP caucus_http_requests_total HTTP requests answered, by route and status.\n"
    text += "# TYPE caucus_http_requests_total counter\n"
    for (route, statuses) in snapshot.requests.sorted(by: { $0.key < $1.key }) {
      for (status, count) in statuses.sorted(by: { $0.key < $1.key }) {
        text += "caucus_http_requests_total{route=\"\(route)\",status=\"\(status)\"} \(count)\n"
      }
    }
    text += "# HELP caucus_http_request_duration_seconds Time from a complete request to its answer, by route.\n"
    text += "# TYPE caucus_http_request_duration_seconds histogram\n"
    for (route, histogram) in snapshot.latency.sorted(by: { $0.key < $1.key }) {
      var cumulative: UInt64 = 0
      for (bound, count) in zip(GatewayMetrics.latencyBucketBounds, histogram.buckets) {
        cumulative += count
        text += "caucus_http_request_duration_seconds_bucket{route=\"\(route)\",le=\"\(bound)\"} \(cumulative)\n"
      }
      text += "caucus_http_request_duration_seconds_bucket{route=\"\(route)\",le=\"+Inf\"} \(histogram.count)\n"
      text += "caucus_http_request_duration_seconds_sum{route=\"\(route)\"} \(Double(histogram.sumNanoseconds) / 1e9)\n"
      text += "caucus_http_request_duration_seconds_count{route=\"\(route)\"} \(histogram.count)\n"
    }
    text += "# HELP caucus_http_requests_in_flight Requests received and not yet answered.\n"
    text += "# TYPE caucus_http_requests_in_flight gauge\n"
    text += "caucus_http_requests_in_flight \(snapshot.inFlight)\n"
    return text
  }
}
