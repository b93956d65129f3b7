import ArgumentParser
import Gateway
import Glibc
import HTTPServer
import JSON
import PeerClient
import Platform

// `caucus kv`, `caucus group`, `caucus peer`, `caucus cluster`: the HTTP API from the command
// line, each subcommand one route (README "Command-line client"; openapi.yaml is the contract).

/// How fresh a read must be (`?consistency=`).
enum ReadConsistency: String, ExpressibleByArgument, CaseIterable {
  case linearizable, lease, stale
}

/// The exit statuses, in every client command's --help.
let clientExitStatusHelp = """
  Exit status: 0 the server answered 2xx; 1 it refused (4xx/5xx, the error on stderr as \
  error: <code>: <message>); 3 no endpoint answered; 5 a change may or may not have taken \
  effect (sent, no answer; or 504 indeterminate); 64 bad usage.
  """

/// The group a data command addresses.
struct DataGroupOption: ParsableArguments {
  @Option(name: [.short, .long], help: "The group.")
  var group: String = "DataRegion-0"
}

// MARK: kv

struct KVCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kv",
    abstract: "Read and write keys of a group.",
    discussion: clientExitStatusHelp,
    subcommands: [Get.self, Put.self, Delete.self, List.self, Watch.self])

  struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Read a key (exit status 1 with key_not_found when it is absent).")

    @OptionGroup var connection: ClientOptions
    @OptionGroup var target: DataGroupOption
    @Argument(help: "The key.") var key: String
    @Option(name: .long, help: "linearizable, lease or stale.") var consistency: ReadConsistency?
    @Flag(name: .long, help: "Write the value's bare bytes to standard output, nothing else.") var raw = false

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call(
        "GET",
        ClientConnection.target(
          ClientConnection.groupPath(target.group, "/kv/" + ClientConnection.encode(key)),
          [("consistency", consistency?.rawValue), ("raw", raw ? "true" : nil)]))
      if raw {
        writeAll(1, response.body)
        return
      }
      let item = try client.json(response)
      client.emit(json: response.body) {
        nameValueLines([
          ("key", keyText(item)), ("revision", cellText(item["revision"])), valueMember(item),
        ])
      }
    }
  }

  struct Put: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a key.",
      discussion: """
        The value is VALUE or the bytes of --value-file (- for standard input; any bytes). The write \
        carries an Idempotency-Key (fresh, or --idempotency-key), so that a retry on the next endpoint \
        after a timeout is applied at most once; when the outcome stays unknown (exit 5) the key to \
        repeat it with is printed.
        """)

    @OptionGroup var connection: ClientOptions
    @OptionGroup var target: DataGroupOption
    @Argument(help: "The key.") var key: String
    @Argument(help: "The value (or --value-file).") var value: String?
    @Option(name: .long, help: ArgumentHelp("Read the value from this file; - for standard input.", valueName: "file"))
    var valueFile: String?
    @Option(name: .long, help: "Write only if the key's revision is N (compare-and-set; 412 otherwise).")
    var ifRevision: UInt64?
    @Flag(name: .long, help: "Write only if the key does not exist (412 otherwise).") var createOnly = false
    @OptionGroup var idempotency: IdempotencyKeyOption

    func validate() throws {
      guard (value == nil) != (valueFile == nil) else { throw ValidationError("give the value or --value-file, exactly one") }
      guard ifRevision == nil || !createOnly else { throw ValidationError("--if-revision and --create-only exclude each other") }
    }

    func run() throws {
      let bytes = try value.map { Array($0.utf8) } ?? readValueFile(valueFile!)
      let client = try ClientConnection(connection)
      var headers = [try idempotency.header()]
      if let ifRevision { headers.append(("If-Match", "\"\(ifRevision)\"")) }
      if createOnly { headers.append(("If-None-Match", "*")) }
      let response = try client.call(
        "PUT", ClientConnection.groupPath(target.group, "/kv/" + ClientConnection.encode(key)), body: bytes, headers: headers)
      let answer = try client.json(response)
      client.emit(json: response.body) {
        nameValueLines([("key", keyText(answer)), ("revision", cellText(answer["revision"])), ("index", cellText(answer["index"]))])
      }
    }
  }

  struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "del", abstract: "Delete a key (deleted=false when it was absent).", aliases: ["delete"])

    @OptionGroup var connection: ClientOptions
    @OptionGroup var target: DataGroupOption
    @Argument(help: "The key.") var key: String
    @Option(name: .long, help: "Delete only if the key's revision is N (412 otherwise).") var ifRevision: UInt64?
    @OptionGroup var idempotency: IdempotencyKeyOption

    func run() throws {
      let client = try ClientConnection(connection)
      var headers = [try idempotency.header()]
      if let ifRevision { headers.append(("If-Match", "\"\(ifRevision)\"")) }
      let response = try client.call(
        "DELETE", ClientConnection.groupPath(target.group, "/kv/" + ClientConnection.encode(key)), headers: headers)
      let answer = try client.json(response)
      client.emit(json: response.body) {
        nameValueLines([("deleted", cellText(answer["deleted"])), ("index", cellText(answer["index"]))])
      }
    }
  }

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "List keys in byte order, a page at a time (--all: every page).",
      discussion: "With --output json each page is one line, the server's answer.")

    @OptionGroup var connection: ClientOptions
    @OptionGroup var target: DataGroupOption
    @Option(name: .long, help: "Only keys starting with this.") var prefix: String?
    @Option(name: .long, help: "Items per page, 1 to 1000. (default: the server's, 100)") var limit: Int?
    @Option(name: .long, help: "Start after this key (exclusive).") var after: String?
    @Option(name: .long, help: "--after as base64, for a key that is not UTF-8 (a listing's base64:… key).")
    var afterBase64: String?
    @Flag(name: .long, help: "Follow the pages to the end.") var all = false
    @Option(name: .long, help: "linearizable, lease or stale.") var consistency: ReadConsistency?

    /// Table rows printed aligned together at most: a long `--all` listing prints in blocks of
    /// this many (each aligned on its own) instead of holding every row until the end.
    static let tableRowsPerBlockMax = 10_000

    func validate() throws {
      guard after == nil || afterBase64 == nil else { throw ValidationError("give --after or --after-base64, not both") }
      if let afterBase64, Base64.decode(Array(afterBase64.utf8)) == nil {
        throw ValidationError("--after-base64 must be padded base64")
      }
    }

    func run() throws {
      let client = try ClientConnection(connection)
      var after = self.after.map { Array($0.utf8) } ?? afterBase64.flatMap { Base64.decode(Array($0.utf8)) }
      var rows: [[String]] = []
      var headerPrinted = false
      func printRows() {
        guard !rows.isEmpty || !headerPrinted else { return }
        printStandardOutput(formatTable(["KEY", "REVISION", "VALUE"], rows, withHeader: !headerPrinted))
        headerPrinted = true
        rows.removeAll()
      }
      while true {
        // A key that is not UTF-8 (a listing's keyBase64) is named in base64: query values are text.
        let afterText = after.flatMap { String(validating: $0, as: UTF8.self) }
        let target = ClientConnection.target(
          ClientConnection.groupPath(self.target.group, "/kv"),
          [
            ("prefix", prefix), ("limit", limit.map(String.init)), ("after", afterText),
            ("afterBase64", afterText == nil ? after.map { String(decoding: Base64.encode($0), as: UTF8.self) } : nil),
            ("consistency", consistency?.rawValue),
          ])
        let response = try client.call("GET", target)
        let page = try client.json(response)
        let items = page["items"]?.arrayValue ?? []
        switch client.output {
        case .json: printStandardOutput(ClientConnection.oneLine(response.body))
        case .table:
          rows += items.map { item in [keyText(item), cellText(item["revision"]), valueText(item)] }
          if rows.count >= Self.tableRowsPerBlockMax { printRows() }
        }
        let more = page["more"] == .bool(true)
        guard more else { break }
        guard let last = items.last else {
          printStandardError("error: bad_response: a listing page said more keys follow but held none")
          throw ExitCode(ClientExitStatus.refused)
        }
        guard all else {
          if client.output == .table { printStandardError("(more keys: \(continuation(after: last)), or --all)") }
          break
        }
        // Each page must start past the last: the loop then ends with the keys.
        guard let lastKey = keyBytes(last), after.map({ $0.lexicographicallyPrecedes(lastKey) }) ?? true else {
          printStandardError("error: bad_response: a page of the listing did not advance past \(keyText(last))")
          throw ExitCode(ClientExitStatus.refused)
        }
        after = lastKey
      }
      if client.output == .table { printRows() }
    }
  }

  struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print each change under a prefix as it happens (a long poll, repeated) until --count events or Ctrl-C.",
      discussion: """
        Table output: one line per event, `put KEY revision=N value=V` or `delete KEY revision=N`. \
        JSON output: one line per event, the event's object. 410 compacted (the history from \
        --from-index is gone) exits 1.
        """)

    /// How long one poll waits at the server for a change (its `timeoutMs`, clamped to 60 s there).
    static let pollMsDefault = 30_000

    @OptionGroup var connection: ClientOptions
    @OptionGroup var target: DataGroupOption
    @Option(name: .long, help: "Only keys starting with this.") var prefix: String?
    @Option(name: .long, help: "Report changes after this index. (default: from now)") var fromIndex: UInt64?
    @Option(name: .long, help: "Stop after this many events. (default: never)") var count: Int?
    @Option(name: .long, help: "How long one poll waits at the server for a change.") var pollMs: Int = pollMsDefault
    /// The least time between two polls that brought nothing.
    static let emptyPollPauseMs = 100

    func validate() throws {
      if let count, count <= 0 { throw ValidationError("--count must be positive") }
      guard (0...60_000).contains(pollMs) else { throw ValidationError("--poll-ms must be 0...60000") }
    }

    func run() throws {
      let client = try ClientConnection(connection)
      var fromIndex = self.fromIndex
      var printed = 0
      while count.map({ printed < $0 }) ?? true {
        let target = ClientConnection.target(
          ClientConnection.groupPath(self.target.group, "/watch"),
          [("prefix", prefix), ("fromIndex", fromIndex.map(String.init)), ("timeoutMs", String(pollMs))])
        // Each poll has its own deadline: every endpoint may take the server's wait plus --timeout-ms.
        let attemptMs = pollMs + client.timeoutMs
        let deadline = MonotonicClock.nowNanoseconds() + UInt64(attemptMs * client.endpoints.count) * 1_000_000
        let response = try client.call("GET", target, deadlineNanoseconds: deadline, attemptTimeoutMs: attemptMs)
        let answer = try client.json(response)
        // The next poll starts after `index`: one that went back would repeat events.
        guard let index = answer["index"]?.unsignedIntegerValue, index >= fromIndex ?? 0 else {
          printStandardError("error: bad_response: a watch answer without an index, or one before the last")
          throw ExitCode(ClientExitStatus.refused)
        }
        let events = answer["events"]?.arrayValue ?? []
        // An empty answer before its wait was over (--poll-ms 0, say): pause before asking again
        // instead of spinning on the node.
        if events.isEmpty && pollMs < Self.emptyPollPauseMs { usleep(UInt32(Self.emptyPollPauseMs) * 1_000) }
        for event in events {
          guard count.map({ printed < $0 }) ?? true else { break }
          switch client.output {
          case .json:
            var writer = JSONWriter()
            writer.value(event)
            printStandardOutput(String(decoding: writer.bytes, as: UTF8.self))
          case .table:
            let type = event["type"]?.stringValue ?? "?"
            var line = "\(type) \(keyText(event)) revision=\(cellText(event["revision"]))"
            if type == "put" { line += " " + { "\($0.name)=\($0.value)" }(valueMember(event)) }
            printStandardOutput(line)
          }
          printed += 1
        }
        fromIndex = index
      }
    }
  }
}

// MARK: group

struct GroupCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "group",
    abstract: "List, create, inspect and delete consensus groups.",
    discussion: clientExitStatusHelp,
    subcommands: [List.self, Create.self, Delete.self, Status.self, Snapshot.self, TransferLeader.self])

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The groups on the node answering (--cluster: every group of the cluster).")

    @OptionGroup var connection: ClientOptions
    @Flag(name: .long, help: "Every group of the cluster directory.") var cluster = false

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call("GET", ClientConnection.target("/v1/groups", [("scope", cluster ? "cluster" : nil)]))
      let answer = try client.json(response)
      client.emit(json: response.body) {
        formatTable(
          ["ID", "PROTOCOL", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "PEERS"],
          (answer["groups"]?.arrayValue ?? []).map { group in
            [
              cellText(group["id"]), cellText(group["protocol"]), cellText(group["role"]), cellText(group["leader"]),
              cellText(group["term"]), cellText(group["commitIndex"]), cellText(group["appliedIndex"]),
              (group["peers"]?.arrayValue ?? []).map { cellText($0["id"]) }.joined(separator: ","),
            ]
          })
      }
    }
  }

  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Create a group on its peers and elect a leader (the same id and peers again is a no-op).")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id (DataRegion-N, SchemaRegion-N, PartitionRegion-N).") var id: String
    @Option(name: .long, help: ArgumentHelp("The member node ids.", valueName: "id,...")) var peers: String

    func validate() throws { _ = try parseNodeIDs(peers) }

    func run() throws {
      let client = try ClientConnection(connection)
      let body = groupBody(id: id, peers: try parseNodeIDs(peers))
      let response = try client.call("POST", "/v1/groups", body: body, headers: jsonContent)
      let status = try client.json(response)
      client.emit(json: response.body) { groupStatusText(status) }
    }
  }

  struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a group from all its peers.")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var id: String

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call("DELETE", ClientConnection.groupPath(id))
      client.emit(json: response.body) { scalarMembersText(response.body, fallback: "deleted \(id)") }
    }
  }

  struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A group's role, indexes and per-peer progress.")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var id: String

    func run() throws {
      let client = try ClientConnection(connection)
      var response = try client.call("GET", ClientConnection.groupPath(id))
      var status = try client.json(response)
      // A member answers with its own view, and only the leader knows every peer's progress:
      // ask the leader directly when a follower answered.
      if status["role"]?.stringValue != "leader", let leader = status["leader"]?.unsignedIntegerValue {
        if let view = leaderStatus(client, leader: leader), let parsed = try? JSONParser.parse(view.body) {
          (response, status) = (view, parsed)
        } else if client.output == .table {
          printStandardError(
            "note: a \(cellText(status["role"])) answered: the peers' progress is known to the leader, node \(leader), which did not answer")
        }
      }
      client.emit(json: response.body) { groupStatusText(status) }
    }

    /// The group's status from node `leader` itself (its client URL from `GET /v1/cluster`), or
    /// nil when it cannot be had or the node is no longer the leader.
    private func leaderStatus(_ client: ClientConnection, leader: UInt64) -> PeerResponse? {
      guard let cluster = try? client.send("GET", "/v1/cluster?groups=false"), cluster.status == 200,
        let nodes = (try? JSONParser.parse(cluster.body))?["nodes"]?.arrayValue,
        let url = nodes.first(where: { $0["id"]?.unsignedIntegerValue == leader })?["clientURL"]?.stringValue,
        url.hasPrefix("http://") || url.hasPrefix("https://"),
        case .success(let answer) = client.send(to: url, "GET", ClientConnection.groupPath(id) + "?forward=none"),
        answer.status == 200, (try? JSONParser.parse(answer.body))?["role"]?.stringValue == "leader"
      else { return nil }
      return answer
    }
  }

  struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Take a snapshot now (triggerSnapshot) and compact the log.")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var id: String

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call("POST", ClientConnection.groupPath(id, "/snapshot"))
      client.emit(json: response.body) { scalarMembersText(response.body, fallback: "") }
    }
  }

  struct TransferLeader: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "transfer-leader", abstract: "Hand the group's leadership to a member; answers once it is in office.")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var id: String
    @Option(name: .long, help: "The node id to lead.") var to: UInt64

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call(
        "POST", ClientConnection.groupPath(id, "/leader"), body: Array("{\"id\":\(to)}".utf8), headers: jsonContent)
      client.emit(json: response.body) { scalarMembersText(response.body, fallback: "") }
    }
  }
}

// MARK: peer

struct PeerCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "peer",
    abstract: "Change a group's membership.",
    discussion: clientExitStatusHelp,
    subcommands: [Add.self, Remove.self, Change.self])

  struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Add a node to a group (as a learner until it has caught up, then a voter).")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var group: String
    @Argument(help: "The node id.") var nodeID: UInt64
    @Option(name: .long, help: ArgumentHelp("The node's consensus endpoint. (default: the cluster directory's)", valueName: "host:port"))
    var endpoint: String?

    func run() throws {
      let client = try ClientConnection(connection)
      var writer = JSONWriter()
      writer.beginObject()
      writer.member("id", nodeID)
      if let endpoint { writer.member("endpoint", endpoint) }
      writer.endObject()
      let response = try client.call("POST", ClientConnection.groupPath(group, "/peers"), body: writer.bytes, headers: jsonContent)
      client.emit(json: response.body) { membershipText(response.body) }
    }
  }

  struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a node from a group (and the group's replica from the node).")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var group: String
    @Argument(help: "The node id.") var nodeID: UInt64

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call("DELETE", ClientConnection.groupPath(group, "/peers/\(nodeID)"))
      client.emit(json: response.body) { membershipText(response.body) }
    }
  }

  struct Change: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Replace a group's members (joint consensus).")

    @OptionGroup var connection: ClientOptions
    @Argument(help: "The group id.") var group: String
    @Option(name: .long, help: ArgumentHelp("The new member node ids.", valueName: "id,...")) var peers: String

    func validate() throws { _ = try parseNodeIDs(peers) }

    func run() throws {
      let client = try ClientConnection(connection)
      let body = groupBody(id: nil, peers: try parseNodeIDs(peers))
      let response = try client.call("PUT", ClientConnection.groupPath(group, "/peers"), body: body, headers: jsonContent)
      client.emit(json: response.body) { membershipText(response.body) }
    }
  }
}

// MARK: cluster

struct ClusterCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "cluster", abstract: "The cluster's nodes.", discussion: clientExitStatusHelp,
    subcommands: [Status.self, Health.self, Rebalance.self])

  struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Every node of the directory: client URL, whether it answers, its group and leader counts.")

    @OptionGroup var connection: ClientOptions

    func run() throws {
      let client = try ClientConnection(connection)
      let response = try client.call("GET", "/v1/cluster?groups=false")
      let answer = try client.json(response)
      client.emit(json: response.body) {
        formatTable(
          ["ID", "CLIENT-URL", "REACHABLE", "GROUPS", "LEADERS"],
          (answer["nodes"]?.arrayValue ?? []).map { node in
            [
              cellText(node["id"]), cellText(node["clientURL"]), cellText(node["reachable"]), cellText(node["groupCount"]),
              cellText(node["leaderCount"]),
            ]
          })
      }
    }
  }
}

extension ClusterCommand {
  struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Ask every endpoint itself (no fail-over) whether it is ready (GET /readyz): exit 0 only when all are.",
      discussion: "Table: endpoint, ready, and the node's reasons when it is not; --output json: one {endpoint, ready, status, reasons} per line.")

    @OptionGroup var connection: ClientOptions

    func run() throws {
      let client = try ClientConnection(connection)
      var rows: [[String]] = []
      var allReady = true
      for endpoint in client.endpoints {
        let (ready, status, reasons): (Bool, Int, [String])
        switch client.send(to: endpoint, "GET", "/readyz") {
        case .success(let answer):
          let body = try? JSONParser.parse(answer.body)
          let listed = body?["reasons"]?.arrayValue?.compactMap(\.stringValue) ?? []
          let message = listed.isEmpty && answer.status != 200 ? [body?["message"]?.stringValue ?? "HTTP \(answer.status)"] : listed
          (ready, status, reasons) = (answer.status == 200, answer.status, message)
        case .failure(let error):
          (ready, status, reasons) = (false, 0, ["\(error)"])
        }
        allReady = allReady && ready
        switch client.output {
        case .json:
          var writer = JSONWriter()
          writer.beginObject()
          writer.member("endpoint", endpoint)
          writer.member("ready", ready)
          writer.member("status", status)
          writer.key("reasons")
          writer.beginArray()
          for reason in reasons { writer.string(reason) }
          writer.endArray()
          writer.endObject()
          printStandardOutput(String(decoding: writer.bytes, as: UTF8.self))
        case .table:
          rows.append([endpoint, ready ? "true" : "false", reasons.isEmpty ? "-" : reasons.joined(separator: "; ")])
        }
      }
      if client.output == .table { printStandardOutput(formatTable(["ENDPOINT", "READY", "REASONS"], rows)) }
      if !allReady { throw ExitCode(ClientExitStatus.refused) }
    }
  }

  struct Rebalance: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Spread group leadership evenly over the nodes (POST /v1/cluster/rebalance): bounded transfers, each reported.")

    @OptionGroup var connection: ClientOptions
    @Option(name: .long, help: "Transfers to make at most. (default: the node's --leader-balance-transfers-max)")
    var max: Int?
    @Flag(name: .long, help: "Plan only: every transfer is reported planned, none is made.") var dryRun = false

    func validate() throws {
      if let max, max < 1 { throw ValidationError("--max must be positive") }
    }

    func run() throws {
      let client = try ClientConnection(connection)
      let target = ClientConnection.target(
        "/v1/cluster/rebalance", [("max", max.map(String.init)), ("dryRun", dryRun ? "true" : nil)])
      // A balance takes up to its own bound on the node: wait that long too, not only the
      // default deadline.
      let attemptMs = Int(LeaderBalanceOptions().balanceTimeoutMs) + client.timeoutMs
      let deadline = MonotonicClock.nowNanoseconds() + UInt64(attemptMs) * 1_000_000
      let response = try client.call("POST", target, deadlineNanoseconds: deadline, attemptTimeoutMs: attemptMs)
      let report = try client.json(response)
      client.emit(json: response.body) {
        var text = nameValueLines([
          ("moved", cellText(report["moved"])), ("failed", cellText(report["failed"])),
          ("skipped", cellText(report["skipped"])), ("balanced", cellText(report["balanced"])),
        ])
        let transfers = report["transfers"]?.arrayValue ?? []
        if !transfers.isEmpty {
          text += "\n" + formatTable(
            ["GROUP", "FROM", "TO", "OUTCOME"],
            transfers.map { [cellText($0["group"]), cellText($0["from"]), cellText($0["to"]), cellText($0["outcome"])] })
        }
        return text
      }
    }
  }
}

// MARK: Helpers

let jsonContent: [(name: String, value: String)] = [("Content-Type", "application/json")]

/// `--idempotency-key`: the Idempotency-Key of a write, so that the fail-over's re-send (after a
/// timeout on the first endpoint), or the user's repeat of a write whose outcome was unknown, is
/// applied at most once.
struct IdempotencyKeyOption: ParsableArguments {
  @Option(
    name: .long,
    help: ArgumentHelp(
      "The write's Idempotency-Key (default: a fresh cli-<random>); give the one printed after an unknown outcome to repeat that write at most once.",
      valueName: "key"))
  var idempotencyKey: String?

  func validate() throws {
    if let idempotencyKey {
      guard !idempotencyKey.isEmpty, idempotencyKey.utf8.count <= GatewayLimits.idempotencyKeyBytesMax, idempotencyKey.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
        throw ValidationError("--idempotency-key must be 1 to \(GatewayLimits.idempotencyKeyBytesMax) printable ASCII characters without spaces")
      }
    }
  }

  func header() throws -> (name: String, value: String) {
    if let idempotencyKey { return ("Idempotency-Key", idempotencyKey) }
    do { return ("Idempotency-Key", "cli-" + Hex.encode(try secureRandomBytes(12))) } catch {
      printStandardError("error: no random bytes for the Idempotency-Key: \(error)")
      throw ExitCode(ClientExitStatus.usage)
    }
  }
}

/// Comma-separated positive node ids.
/// `{"id"?, "peers"?: [<node id>...]}`: a group's creation (`POST /v1/groups`) or new membership
/// (`PUT /v1/groups/{group}/peers`).
func groupBody(id: String?, peers: [UInt64]?) -> [UInt8] {
  var writer = JSONWriter()
  writer.beginObject()
  if let id { writer.member("id", id) }
  if let peers {
    writer.key("peers")
    writer.beginArray()
    for peer in peers { writer.number(peer) }
    writer.endArray()
  }
  writer.endObject()
  return writer.bytes
}

func parseNodeIDs(_ text: String) throws(ValidationError) -> [UInt64] {
  var ids: [UInt64] = []
  for item in text.split(separator: ",", omittingEmptySubsequences: false) {
    guard let id = UInt64(String(item).trimmingCharacters(in: " ")), id > 0 else {
      throw ValidationError("--peers takes comma-separated positive node ids, got '\(text)'")
    }
    ids.append(id)
  }
  return ids
}

/// A value file's bytes; `-` is standard input. The node refuses a value over its
/// --value-bytes-max (413); this bound only stops an endless stream.
func readValueFile(_ path: String) throws -> [UInt8] {
  let valueFileBytesMax = 1 << 30
  if path != "-" {
    do { return try FileSystem.readFile(path) } catch {
      throw ValidationError("cannot read --value-file \(path): \(error)")
    }
  }
  var bytes: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 65_536)
  while true {
    let count = read(0, &buffer, buffer.count)
    if count < 0 && errno == EINTR { continue }
    guard count >= 0 else { throw ValidationError("cannot read standard input: \(String(cString: strerror(errno)))") }
    if count == 0 { return bytes }
    bytes += buffer[0..<count]
    guard bytes.count <= valueFileBytesMax else { throw ValidationError("standard input is over \(valueFileBytesMax) bytes") }
  }
}

/// An item's key as text: `key`, or `base64:<keyBase64>` for a key that is not UTF-8.
func keyText(_ item: JSONValue) -> String {
  if let key = item["key"]?.stringValue { return key }
  if let encoded = item["keyBase64"]?.stringValue { return "base64:" + encoded }
  return "-"
}

/// The option that continues a listing after `item`'s key, quoted for a POSIX shell:
/// `--after 'users/o'\''brien'`, or `--after-base64 …` for a key that is not UTF-8.
func continuation(after item: JSONValue) -> String {
  if let key = item["key"]?.stringValue { return "--after '" + key.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'" }
  return "--after-base64 " + (item["keyBase64"]?.stringValue ?? "-")
}

/// An item's key bytes (`key` or `keyBase64`).
func keyBytes(_ item: JSONValue) -> [UInt8]? {
  if let key = item["key"]?.stringValue { return Array(key.utf8) }
  if let encoded = item["keyBase64"]?.stringValue { return Base64.decode(Array(encoded.utf8)) }
  return nil
}

/// `value` and its text, or `valueBase64` and the base64 for a value that is not UTF-8.
func valueMember(_ item: JSONValue) -> (name: String, value: String) {
  if let value = item["value"]?.stringValue { return ("value", value) }
  if let encoded = item["valueBase64"]?.stringValue { return ("valueBase64", encoded) }
  return ("value", "-")
}

/// An item's value as a table cell: the text, or `base64:<valueBase64>` for bytes that are not UTF-8.
func valueText(_ item: JSONValue) -> String {
  let (name, value) = valueMember(item)
  return name == "valueBase64" ? "base64:" + value : value
}

/// `name=value` lines.
func nameValueLines(_ members: [(name: String, value: String)]) -> String {
  members.map { "\($0.name)=\($0.value)" }.joined(separator: "\n")
}

/// The top-level members of a JSON object answer as `name=value` lines (nested values as compact
/// JSON); `fallback` when the answer has none.
func scalarMembersText(_ body: [UInt8], fallback: String) -> String {
  guard let answer = try? JSONParser.parse(body), case .object(let members) = answer, !members.isEmpty else { return fallback }
  return nameValueLines(members.map { ($0.0, cellText($0.1)) })
}

/// A membership change's answer: a group status when it is one, else its members.
func membershipText(_ body: [UInt8]) -> String {
  guard let answer = try? JSONParser.parse(body) else { return "" }
  if answer["peers"]?.arrayValue?.first?["matchIndex"] != nil { return groupStatusText(answer) }
  return scalarMembersText(body, fallback: "")
}

/// A group status: the group's figures as `name=value` lines, then a table of its peers (role
/// `leader`, `follower` or `learner`).
func groupStatusText(_ status: JSONValue) -> String {
  let figures = ["id", "protocol", "role", "leader", "term", "commitIndex", "appliedIndex", "snapshotIndex", "logEntries", "logBytes"]
  let leader = status["leader"]?.unsignedIntegerValue
  let peers = (status["peers"]?.arrayValue ?? []).map { peer in
    let id = peer["id"]?.unsignedIntegerValue
    let role = peer["learner"] == .bool(true) ? "learner" : (id != nil && id == leader ? "leader" : "follower")
    return [
      cellText(peer["id"]), cellText(peer["endpoint"]), role, cellText(peer["matchIndex"]), cellText(peer["lag"]),
      cellText(peer["lastContactMs"]), cellText(peer["state"]),
    ]
  }
  return nameValueLines(figures.filter { status[$0] != nil }.map { ($0, cellText(status[$0])) }) + "\n\n"
    + formatTable(["PEER", "ENDPOINT", "ROLE", "MATCH-INDEX", "LAG", "LAST-CONTACT-MS", "STATE"], peers)
}
