// swift-tools-version:6.0
import PackageDescription

// Layers (A → B means A imports B); see DESIGN.md.
//   caucus → Gateway → Directory → JSON → HTTPServer → Platform → CPlatform, COpenSSL
//                    → PeerClient → CCurl
//          → StandaloneConsensus → WriteAheadLog → Platform
//          → KeyValueStore → Consensus
//   RaftCore is pure (standard library only); Simulation drives it.
let package = Package(
  name: "Caucus",
  products: [
    .library(name: "Consensus", targets: ["Consensus"]),
    .library(name: "KeyValueStore", targets: ["KeyValueStore"]),
    .library(name: "StandaloneConsensus", targets: ["StandaloneConsensus"]),
    .library(name: "WriteAheadLog", targets: ["WriteAheadLog"]),
    .library(name: "HTTPServer", targets: ["HTTPServer"]),
    .library(name: "Gateway", targets: ["Gateway"]),
    .library(name: "RaftCore", targets: ["RaftCore"]),
    .library(name: "RaftConsensus", targets: ["RaftConsensus"]),
    .executable(name: "caucus", targets: ["caucus"]),
    .executable(name: "caucus-sim", targets: ["caucus-sim"]),
    .executable(name: "consensus-example", targets: ["ConsensusExample"]),
  ],
  dependencies: [
    // Exact versions (Package.resolved stays out of git): every build resolves the same sources.
    .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
  ],
  targets: [
    // C is quarantined behind these header-only modules.
    .systemLibrary(name: "CPlatform", path: "Sources/CPlatform"),
    .systemLibrary(
      name: "CCurl", path: "Sources/CCurl", pkgConfig: "libcurl",
      providers: [.apt(["libcurl4-openssl-dev"])]),
    // OpenSSL 3's libcrypto and libssl; only Platform imports it.
    .systemLibrary(
      name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
      providers: [.apt(["libssl-dev"])]),

    .target(name: "Platform", dependencies: ["CPlatform", "COpenSSL"]),
    .target(name: "HTTPServer", dependencies: ["Platform"]),
    .target(name: "PeerClient", dependencies: ["CCurl", "Platform"]),
    .target(name: "Consensus"),
    // A small JSON reader (requests, other nodes' answers, directory records); writing is HTTPServer's JSONWriter.
    .target(name: "JSON", dependencies: ["HTTPServer", "Platform"]),
    .target(name: "Checksum"),
    // Checks recorded client histories (the simulator's and `caucus torture`'s); standard library only.
    .target(name: "Linearizability"),
    .target(name: "KeyValueStore", dependencies: ["Consensus", "Checksum"]),
    .target(name: "WriteAheadLog", dependencies: ["Platform", "Checksum"]),
    .target(
      name: "StandaloneConsensus",
      dependencies: ["Consensus", "WriteAheadLog", "Platform", .product(name: "Logging", package: "swift-log")]),
    // The cluster directory (`PartitionRegion-0`): node records, group placement, registration.
    .target(
      name: "Directory",
      dependencies: [
        "Consensus", "HTTPServer", "JSON", "KeyValueStore", "PeerClient", "Platform",
        .product(name: "Logging", package: "swift-log"),
      ]),
    .target(
      name: "Gateway",
      dependencies: [
        "Consensus", "Directory", "HTTPServer", "JSON", "KeyValueStore", "PeerClient", "Platform",
        .product(name: "Logging", package: "swift-log"),
      ]),
    .target(name: "RaftCore"),
    .target(
      name: "ClusterTransport",
      dependencies: [
        "Consensus", "HTTPServer", "PeerClient", "Platform", "RaftConsensus", .product(name: "Logging", package: "swift-log"),
      ]),
    .target(
      name: "RaftConsensus",
      dependencies: ["Consensus", "RaftCore", "WriteAheadLog", "Platform", .product(name: "Logging", package: "swift-log")]),
    .target(
      name: "Simulation",
      dependencies: [
        "RaftCore", "RaftConsensus", "Consensus", "KeyValueStore", "Platform", "Linearizability",
        .product(name: "Logging", package: "swift-log"),
      ]),
    .executableTarget(
      name: "caucus",
      dependencies: [
        "Consensus", "Directory", "Gateway", "HTTPServer", "JSON", "KeyValueStore", "StandaloneConsensus", "Platform",
        "PeerClient", "RaftConsensus", "ClusterTransport", "Linearizability",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    .executableTarget(
      name: "caucus-sim",
      dependencies: ["Simulation", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
    .executableTarget(
      name: "ConsensusExample",
      dependencies: ["Consensus", "StandaloneConsensus"]),

    // Certificates made at test time (scripts/tls-certificates.sh) for the TLS tests.
    .target(name: "TLSTestSupport", path: "Tests/TLSTestSupport"),
    .testTarget(name: "PlatformTests", dependencies: ["Platform", "TLSTestSupport"]),
    .testTarget(name: "HTTPServerTests", dependencies: ["HTTPServer", "Platform", "TLSTestSupport"]),
    .testTarget(name: "ConsensusTests", dependencies: ["Consensus"]),
    .testTarget(name: "KeyValueStoreTests", dependencies: ["KeyValueStore", "Consensus", "Checksum"]),
    .testTarget(name: "WriteAheadLogTests", dependencies: ["WriteAheadLog", "Platform", "Checksum"]),
    .testTarget(
      name: "StandaloneConsensusTests",
      dependencies: ["StandaloneConsensus", "Consensus", "KeyValueStore", "WriteAheadLog", "Platform"]),
    .testTarget(
      name: "GatewayTests",
      dependencies: [
        "Gateway", "Directory", "JSON", "HTTPServer", "Consensus", "KeyValueStore", "StandaloneConsensus", "Platform", "PeerClient",
        .product(name: "Logging", package: "swift-log"),
      ]),
    .testTarget(name: "RaftCoreTests", dependencies: ["RaftCore"]),
    .testTarget(
      name: "ClusterTransportTests",
      dependencies: ["ClusterTransport", "HTTPServer", "PeerClient", "Platform", "RaftConsensus", "Consensus"]),
    .testTarget(
      name: "RaftConsensusTests",
      dependencies: ["RaftConsensus", "RaftCore", "Consensus", "KeyValueStore", "WriteAheadLog", "Platform"]),
    .testTarget(name: "SimulationTests", dependencies: ["Simulation", "RaftCore", "Platform", "Linearizability"]),
    .testTarget(name: "IntegrationTests", dependencies: ["Platform", "TLSTestSupport"]),
    .testTarget(name: "PeerClientTests", dependencies: ["PeerClient", "HTTPServer", "Platform", "TLSTestSupport"]),
  ],
  swiftLanguageModes: [.v6]
)
