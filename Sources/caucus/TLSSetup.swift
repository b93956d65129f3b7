import HTTPServer
import PeerClient
import Platform

/// The exit status when TLS cannot be set up from the given files (a usage error, not a crash).
let tlsRefusedExitCode: Int32 = 2

extension NodeSettings {
  /// The server context both ports use, built from the files (each checked: readable, PEM, the key
  /// matching the certificate); and for a raft node, whose peers verify it with the same CA, the
  /// certificate checked against that CA. nil without TLS.
  func makeTLSContext() throws(TLSError) -> TLSContext? {
    guard let certificate = tlsCertificateFile, let key = tlsKeyFile else { return nil }
    let context = try TLSContext(
      server: TLSFiles(certificateChainFile: certificate, privateKeyFile: key, caFile: tlsCAFile),
      requireClientCertificate: tlsClientAuth)
    if usesRaft { try context.checkOwnCertificateAgainstCA() }
    return context
  }

  /// How the node's peer client speaks TLS: every node-to-node request over https, peers verified
  /// with the cluster CA, this node's certificate presented to peers that require one. nil without TLS.
  var peerTLSConfiguration: PeerTLSConfiguration? {
    guard tlsEnabled, let caFile = tlsCAFile else { return nil }
    return PeerTLSConfiguration(caCertificateFile: caFile, clientCertificateFile: tlsCertificateFile, clientKeyFile: tlsKeyFile)
  }
}

/// The TLS counters of the node's servers for `/metrics`, one sample per port (`client`, `consensus`).
func tlsPrometheusMetrics(_ servers: [(port: String, server: HTTPServer)]) -> String {
  let statistics = servers.map { ($0.port, $0.server.statistics) }
  return Prometheus.family(
    "caucus_tls_handshakes_total", help: "TLS handshakes completed.", type: "counter", label: "port",
    statistics.map { ($0.0, UInt64($0.1.tlsHandshakesTotal)) })
    + Prometheus.family(
      "caucus_tls_handshake_failures_total",
      help: "TLS connections closed before their handshake completed (refused certificate, not TLS, reset, timeout).",
      type: "counter", label: "port", statistics.map { ($0.0, UInt64($0.1.tlsHandshakeFailuresTotal)) })
    + Prometheus.family(
      "caucus_tls_plaintext_refused_total", help: "Plaintext HTTP requests on a TLS port, answered 400 tls_required.",
      type: "counter", label: "port", statistics.map { ($0.0, UInt64($0.1.tlsPlaintextRefusedTotal)) })
}
