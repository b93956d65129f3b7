/// The Prometheus text exposition format, written once for every module that exports metrics.
public enum Prometheus {
  /// One metric with a single sample: its HELP and TYPE lines, then `name value`.
  public static func metric(_ name: String, help: String, _ value: UInt64, type: String = "counter") -> String {
    "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
  }
}
