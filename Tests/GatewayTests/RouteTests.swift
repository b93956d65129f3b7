import Consensus
@testable import Gateway
import KeyValueStore
import XCTest

/// One request per route, for tests that must cover every route: the switch is exhaustive, so a
/// new route does not compile until it has its sample. Targets name `group` (and `key` under it);
/// bodies are well-formed, so a request that is let through does what its route does.
func sampleRequest(
  _ name: Route.Name, group: String = "DataRegion-0", key: String = "k", node: Int = 1
) -> (method: String, target: String, body: String) {
  let g = "/v1/groups/\(group)"
  switch name {
  case .root: return ("GET", "/", "")
  case .healthz: return ("GET", "/healthz", "")
  case .readyz: return ("GET", "/readyz", "")
  case .metrics: return ("GET", "/metrics", "")
  case .ui: return ("GET", "/ui", "")
  case .node: return ("GET", "/v1/node", "")
  case .nodeGroupsCreate: return ("POST", "/v1/node/groups", #"{"id":"DataRegion-90"}"#)
  case .nodeGroupsDelete: return ("DELETE", "/v1/node/groups/\(group)", "")
  case .cluster: return ("GET", "/v1/cluster", "")
  case .clusterNodesRegister:
    return ("POST", "/v1/cluster/nodes", #"{"id":9,"clientURL":"http://127.0.0.1:1","consensusEndpoint":"127.0.0.1:2"}"#)
  case .clusterRebalance: return ("POST", "/v1/cluster/rebalance", "")
  case .groupsList: return ("GET", "/v1/groups", "")
  case .groupsCreate: return ("POST", "/v1/groups", #"{"id":"DataRegion-91"}"#)
  case .groupGet: return ("GET", g, "")
  case .groupDelete: return ("DELETE", g, "")
  case .kvGet: return ("GET", "\(g)/kv/\(key)", "")
  case .kvPut: return ("PUT", "\(g)/kv/\(key)", "v")
  case .kvDelete: return ("DELETE", "\(g)/kv/\(key)", "")
  case .kvList: return ("GET", "\(g)/kv?prefix=\(key)", "")
  case .write: return ("POST", "\(g)/write", #"{"ops":[{"op":"put","key":"\#(key)","value":"v"}]}"#)
  case .read: return ("POST", "\(g)/read", #"{"ops":[{"op":"get","key":"\#(key)"}]}"#)
  case .watch: return ("GET", "\(g)/watch?prefix=\(key)&timeoutMs=0", "")
  case .peersAdd: return ("POST", "\(g)/peers", #"{"id":\#(node)}"#)
  case .peersChange: return ("PUT", "\(g)/peers", #"{"peers":[\#(node)]}"#)
  case .peerRemove: return ("DELETE", "\(g)/peers/\(node)", "")
  case .leaderGet: return ("GET", "\(g)/leader", "")
  case .leaderTransfer: return ("POST", "\(g)/leader", #"{"id":\#(node)}"#)
  case .snapshot: return ("POST", "\(g)/snapshot", "")
  case .snapshotExport: return ("GET", "\(g)/snapshot", "")
  }
}

/// The typed router: every endpoint of API.md is one case, found by method and path alone.
final class RouteTests: XCTestCase {
  private func match(_ method: String, _ target: String) -> Result<Route, Route.Mismatch> {
    let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
    return Route.match(method: method, path: path)
  }

  func testEverySampleMatchesItsOwnRoute() throws {
    for name in Route.Name.allCases {
      let sample = sampleRequest(name)
      let route = try match(sample.method, sample.target).get()
      XCTAssertEqual(route.name, name, "\(sample.method) \(sample.target)")
    }
  }

  /// Issue 13, point 5a: HEAD mirrors GET on every route that takes GET (the watch took GET
  /// only), and a wrong method's `Allow` lists HEAD beside GET.
  func testEveryGetRouteTakesHeadAsTheSameRoute() throws {
    let getRoutes = Route.Name.allCases.filter { sampleRequest($0).method == "GET" }
    XCTAssertTrue(getRoutes.contains(.watch))
    for name in getRoutes {
      let sample = sampleRequest(name)
      let get = try match("GET", sample.target).get()
      let head = try match("HEAD", sample.target).get()
      XCTAssertEqual(head, get, "HEAD \(sample.target)")
      guard case .failure(let mismatch) = match("PATCH", sample.target),
        case .methodNotAllowed(let allowed) = mismatch.error
      else { return XCTFail("PATCH \(sample.target) is not 405") }
      XCTAssertTrue(allowed.contains("GET") && allowed.contains("HEAD"), "PATCH \(sample.target): Allow \(allowed)")
    }
  }

  func testTheMatchCarriesTheGroupKeyAndNode() throws {
    let group = GroupID(.dataRegion, 7)
    XCTAssertEqual(try match("PUT", "/v1/groups/DataRegion-7/kv/a%2Fb/c").get(), .kvPut(group, key: Array("a/b/c".utf8)))
    XCTAssertEqual(try match("HEAD", "/v1/groups/DataRegion-7/kv/k").get(), .kvGet(group, key: Array("k".utf8)))
    XCTAssertEqual(try match("DELETE", "/v1/groups/DataRegion-7/peers/3").get(), .peerRemove(group, NodeID(3)))
    XCTAssertEqual(try match("DELETE", "/v1/node/groups/DataRegion-7").get(), .nodeGroupsDelete(group))
    XCTAssertEqual(try match("GET", "/v1/groups/DataRegion-7/kv?prefix=a").get(), .kvList(group))
    XCTAssertEqual(try match("POST", "/v1/groups").get(), .groupsCreate)
    XCTAssertEqual(try match("HEAD", "/v1/groups").get(), .groupsList)
    XCTAssertEqual(try match("GET", "/v1/groups/DataRegion-7/kv/k").get().group, group)
    XCTAssertEqual(try match("GET", "/v1/groups/DataRegion-7/kv/k").get().key, Array("k".utf8))
    XCTAssertNil(try match("GET", "/v1/cluster").get().group)
  }

  func testMismatchesAreTheErrorsOfTheContractWithTheEndpointsLabel() {
    func expect(
      _ method: String, _ target: String, status: String, label: String, file: StaticString = #filePath, line: UInt = #line
    ) {
      guard case .failure(let mismatch) = match(method, target) else { return XCTFail("\(method) \(target) matched", file: file, line: line) }
      let found: String
      switch mismatch.error {
      case .notFound: found = "404"
      case .methodNotAllowed(let allowed): found = "405 " + allowed.joined(separator: ",")
      case .invalidGroupID: found = "400 invalid_group_id"
      case .invalidKey: found = "400 invalid_key"
      case .badRequest: found = "400 bad_request"
      default: found = "\(mismatch.error)"
      }
      XCTAssertEqual(found, status, "\(method) \(target)", file: file, line: line)
      XCTAssertEqual(mismatch.label, label, "\(method) \(target)", file: file, line: line)
    }
    expect("GET", "/nowhere", status: "404", label: "not_found")
    expect("GET", "/v1/nowhere", status: "404", label: "not_found")
    expect("POST", "/healthz", status: "405 GET,HEAD", label: "healthz")
    expect("GET", "/healthz/x", status: "404", label: "healthz")
    expect("POST", "/v1/groups/DataRegion-1/kv/k", status: "405 GET,HEAD,PUT,DELETE", label: "not_found")
    expect("PUT", "/v1/groups/Nope-1/kv/k", status: "400 invalid_group_id", label: "kv_put")
    expect("GET", "/v1/groups/DataRegion-1/kv/", status: "400 invalid_key", label: "kv_get")
    expect("GET", "/v1/groups/DataRegion-1/kv/%zz", status: "400 invalid_key", label: "kv_get")
    expect("GET", "/v1/groups/Nope-1", status: "400 invalid_group_id", label: "not_found")
    expect("PATCH", "/v1/groups/DataRegion-1", status: "405 GET,HEAD,DELETE", label: "not_found")
    expect("GET", "/v1/groups/DataRegion-1/write", status: "405 POST", label: "write")
    expect("POST", "/v1/groups/DataRegion-1/watch", status: "405 GET,HEAD", label: "watch")
    expect("DELETE", "/v1/groups/DataRegion-1/peers/x", status: "400 bad_request", label: "peer_remove")
    expect("GET", "/v1/node/groups", status: "405 POST", label: "node_groups_create")
    expect("GET", "/v1/node/other", status: "404", label: "not_found")
    expect("GET", "/v1/cluster/x", status: "404", label: "cluster")
    expect("GET", "/v1/cluster/rebalance", status: "405 POST", label: "cluster_rebalance")
    expect("GET", "relative", status: "404", label: "not_found")
    // One path, two endpoints: POST compacts the log, GET and HEAD export the state.
    expect("PUT", "/v1/groups/DataRegion-1/snapshot", status: "405 GET,HEAD,POST", label: "snapshot_export")
    expect("GET", "/v1/groups/DataRegion-1/snapshot/x", status: "404", label: "snapshot_export")
  }

  func testTheSnapshotPathIsTwoRoutesByMethod() throws {
    let group = try XCTUnwrap(GroupID("DataRegion-4"))
    XCTAssertEqual(try match("POST", "/v1/groups/DataRegion-4/snapshot").get(), .snapshot(group))
    XCTAssertEqual(try match("GET", "/v1/groups/DataRegion-4/snapshot?consistency=stale").get(), .snapshotExport(group))
    XCTAssertEqual(try match("HEAD", "/v1/groups/DataRegion-4/snapshot").get(), .snapshotExport(group))
    // The export reads every key: a read token without a key prefix, never a key-prefix one.
    XCTAssertEqual(Route.Name.snapshotExport.permission, .read)
    XCTAssertEqual(Route.Name.snapshotExport.scopeRule, .wholeGroup)
    XCTAssertFalse(Route.Name.snapshotExport.changesState)
    XCTAssertTrue(Route.Name.snapshotExport.takesForwardMode)
  }

  /// The route facts that steer behaviour, by name: what needs admin, what changes state, what
  /// the request deadline answers, what never leaves the node.
  func testRoutesDeclareTheirPermissionAndWhetherTheyChangeState() {
    let byPermission = Dictionary(grouping: Route.Name.allCases, by: \.permission).mapValues { Set($0.map(\.rawValue)) }
    XCTAssertEqual(byPermission[.open], ["healthz", "ui"])
    XCTAssertEqual(byPermission[.write], ["kv_put", "kv_delete", "write"])
    XCTAssertEqual(
      byPermission[.admin],
      [
        "node_groups_create", "node_groups_delete", "cluster_nodes_register", "cluster_rebalance", "groups_create",
        "group_delete", "peers_add", "peers_change", "peer_remove", "leader_transfer", "snapshot",
      ])
    for name in Route.Name.allCases {
      // Whatever changes state needs more than read; whatever needs write or admin changes state.
      XCTAssertEqual(name.changesState, name.permission >= .write, name.rawValue)
    }
    XCTAssertEqual(
      Set(Route.Name.allCases.filter(\.endsAtRequestDeadline).map(\.rawValue)),
      [
        "kv_put", "kv_delete", "write", "groups_create", "group_delete", "cluster_nodes_register", "node_groups_create",
        "node_groups_delete", "peers_add", "peers_change", "peer_remove", "leader_transfer", "snapshot", "kv_get",
        "kv_list", "read", "snapshot_export",
      ])
    XCTAssertEqual(Set(Route.Name.allCases.filter(\.isNodeLocal).map(\.rawValue)), ["node", "node_groups_create", "node_groups_delete"])
  }
}

/// The spec and the router describe one surface (issue 13: "the spec validates and matches the
/// routes"): every operation of openapi.yaml is matched by the router to a route whose permission
/// is the operation's `x-caucus-role`, and every route is some operation of the spec.
/// `scripts/validate-openapi.sh` checks the spec against API.md's contract; this closes the loop to
/// the code.
final class SpecRouteTests: XCTestCase {
  /// (method, path template, x-caucus-role) of each operation, read from the spec's layout: a path
  /// at two spaces of indent, its methods at four, each method's role at six.
  private func specOperations() throws -> [(method: String, path: String, role: String?)] {
    let specPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../openapi.yaml").path
    let text = try String(contentsOfFile: specPath, encoding: .utf8)
    var operations: [(method: String, path: String, role: String?)] = []
    var inPaths = false
    var path: String?
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
      if line == "paths:" { inPaths = true; continue }
      if inPaths, !line.isEmpty, !line.hasPrefix(" ") { break }  // the next top-level section
      guard inPaths else { continue }
      if line.hasPrefix("  /"), line.hasSuffix(":"), !line.hasPrefix("   ") {
        path = String(line.dropFirst(2).dropLast())
      } else if let path, line.hasPrefix("    "), !line.hasPrefix("     "),
        let method = ["get", "put", "post", "delete", "head", "patch"].first(where: { line == "    \($0):" })
      {
        operations.append((method.uppercased(), path, nil))
      } else if line.hasPrefix("      x-caucus-role: "), !operations.isEmpty {
        operations[operations.count - 1].role = String(line.dropFirst("      x-caucus-role: ".count))
      }
    }
    return operations
  }

  func testEveryOperationOfTheSpecIsARouteWithItsRoleAndEveryRouteIsInTheSpec() throws {
    let operations = try specOperations()
    XCTAssertGreaterThanOrEqual(operations.count, Route.Name.allCases.count, "the spec was read: \(operations.count) operations")
    var covered: Set<Route.Name> = []
    for operation in operations {
      let concrete = operation.path
        .replacingOccurrences(of: "{group}", with: "DataRegion-0")
        .replacingOccurrences(of: "{key}", with: "k")
        .replacingOccurrences(of: "{nodeId}", with: "2")
      guard case .success(let route) = Route.match(method: operation.method, path: Substring(concrete)) else {
        XCTFail("\(operation.method) \(operation.path) is in openapi.yaml but the router does not take it")
        continue
      }
      covered.insert(route.name)
      XCTAssertEqual(
        operation.role, route.name.permission.description,
        "\(operation.method) \(operation.path): x-caucus-role against the route's permission")
    }
    let missing = Set(Route.Name.allCases).subtracting(covered)
    XCTAssertTrue(missing.isEmpty, "routes the spec does not describe: \(missing.map(\.rawValue).sorted())")
  }
}
