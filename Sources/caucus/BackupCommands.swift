import ArgumentParser
import Checksum
import Glibc
import HTTPServer
import JSON
import KeyValueStore
import PeerClient
import Platform

// `caucus backup` and `caucus restore` (README "Backup and restore"): a group's whole key-value
// state to a file (`GET /v1/groups/{group}/snapshot`, a `KVBackup`), and that file back into a
// new group through batched, idempotent writes.

/// Exit statuses beyond `ClientExitStatus` (README "Backup and restore").
enum BackupExitStatus {
  /// The file is not a usable backup (not one, another version, truncated, corrupt): nothing was
  /// sent. EX_DATAERR.
  static let badBackup: Int32 = 65
  /// The restore's writes succeeded but the group read back differs from the backup.
  static let verifyFailed: Int32 = 4
}

// MARK: backup

struct BackupCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "backup",
    abstract: "Download a consistent backup of a group's key-value state to a file.",
    discussion: """
      One read takes the group's whole state (GET /v1/groups/{group}/snapshot), exactly as of the \
      index it names; the file is checked (format, checksum, payload) before it is written, and \
      written atomically (a temporary file, fsync, rename): FILE holds the old backup or the new \
      one, never part of one. Needs a read token not limited to a key prefix.
      """)

  @OptionGroup var connection: ClientOptions
  @Option(name: [.short, .long], help: "The group to back up.") var group: String
  @Option(name: .long, help: ArgumentHelp("Where to write the backup.", valueName: "file")) var file: String
  @Option(name: .long, help: "linearizable (default), lease or stale.") var consistency: ReadConsistency?

  func run() throws {
    let client = try ClientConnection(connection)
    let response = try client.call(
      "GET", ClientConnection.target(ClientConnection.groupPath(group, "/snapshot"), [("consistency", consistency?.rawValue)]))
    let backup: KVBackup
    let keyCount: Int
    do {
      backup = try KVBackup.decode(response.body)
      keyCount = try backup.entries().count
    } catch {
      printStandardError("error: bad_response: the node's backup of \(group) does not check: \(error)")
      throw ExitCode(ClientExitStatus.refused)
    }
    guard backup.group.description == group else {
      printStandardError("error: bad_response: asked for a backup of \(group), got one of \(backup.group)")
      throw ExitCode(ClientExitStatus.refused)
    }
    do { try writeFileDurably(file, response.body) } catch {
      printStandardError("error: cannot write \(file): \(error)")
      throw ExitCode(ClientExitStatus.usage)
    }
    var writer = JSONWriter()
    writer.beginObject()
    writer.member("group", backup.group.description)
    writer.member("index", backup.index)
    writer.member("keys", UInt64(keyCount))
    writer.member("bytes", UInt64(response.body.count))
    writer.member("checksum", checksumText(KVBackup.checksum(ofEncoded: response.body)))
    writer.member("file", file)
    writer.endObject()
    client.emit(json: writer.bytes) {
      "backed up \(keyCount) keys of \(backup.group) at index \(backup.index) to \(file) (\(response.body.count) bytes)"
    }
  }
}

// MARK: restore

struct RestoreCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "restore",
    abstract: "Restore a backup file into a new group.",
    discussion: """
      Checks the file (format, checksum, payload) before anything is sent, creates the group \
      (POST /v1/groups; one that exists is used only when it holds no key, or with --resume), \
      writes every key in atomic batches of at most 1024 keys and 512 KiB (a key too large for a \
      batch alone by PUT), each with an Idempotency-Key derived from the \
      backup's checksum and the batch's number, so a rerun re-sends the same batches and each \
      applies at most once. Then it reads the whole group back and compares it with the backup. \
      Keys get new revisions; the idempotency table and the watch history are not restored. \
      Exit status: 0 restored and verified; 1 refused (the group holds keys, a write failed); \
      3 no endpoint answered; 4 the group read back differs; 5 a batch may or may not have applied \
      (rerun with --resume); 65 the file is not a usable backup.
      """)

  /// A batch's JSON body at most: well under the node's request body limit (1 MiB + 64 KiB by
  /// default), so that a batch is never refused for its size.
  static let batchBytesMax = 512 * 1024
  /// Operations in one batch at most: what one command may carry.
  static let batchOperationsMax = KVLimits.operationsPerCommandMax
  /// How often one batch is sent before the restore gives up: a 503 (no leader yet, overloaded),
  /// a 504 or no answer is retried with the same Idempotency-Key.
  static let batchAttemptsMax = 5
  /// The pause before a batch's second attempt; it doubles for each later one (or is the node's
  /// `Retry-After`, when longer), up to `retryPauseMsMax`.
  static let retryPauseMsFirst = 250
  static let retryPauseMsMax = 4_000
  /// Keys per page when the group is read back (the node's largest page).
  static let verifyPageItemsMax = 1000

  @OptionGroup var connection: ClientOptions
  @Option(name: [.short, .long], help: "The new group to restore into (DataRegion-N, ...).") var group: String
  @Option(name: .long, help: ArgumentHelp("The backup file (caucus backup, or GET .../snapshot).", valueName: "file"))
  var file: String
  @Option(
    name: .long,
    help: ArgumentHelp("The new group's member node ids. (default: the node answering, alone)", valueName: "id,..."))
  var peers: String?
  @Flag(
    name: .long,
    help: "Continue a restore of this same file into a group that already holds some of its keys (after a failure).")
  var resume = false

  func validate() throws {
    if let peers { _ = try parseNodeIDs(peers) }
  }

  func run() throws {
    // 1. The file, checked whole before any request: a bad file creates nothing.
    let bytes: [UInt8]
    do { bytes = try FileSystem.readFile(file) } catch {
      printStandardError("error: cannot read \(file): \(error)")
      throw ExitCode(ClientExitStatus.usage)
    }
    let backup: KVBackup
    let entries: [KVEntry]
    do {
      backup = try KVBackup.decode(bytes)
      entries = try backup.entries()
    } catch {
      printStandardError("error: bad_backup: \(file): \(error); nothing was restored")
      throw ExitCode(BackupExitStatus.badBackup)
    }
    // Armed before the first request; only tests set the variable (a restore that dies partway).
    do { _ = try Failpoints.armFromEnvironment(points: Failpoints.clientPoints) } catch {
      printStandardError("error: \(error)")
      throw ExitCode(ClientExitStatus.usage)
    }
    let checksum = KVBackup.checksum(ofEncoded: bytes)
    let batches = Self.plan(entries, idempotencyPrefix: "restore-\(checksumText(checksum))")
    let client = try ClientConnection(connection)

    // 2. The group: new, or existing and empty, or (--resume) partly restored.
    try createGroup(client)
    if !resume, let key = try firstKey(client) {
      printStandardError(
        "error: group_in_use: \(group) already holds keys (\(key)); restore only into a new or empty group, "
          + "or give --resume to continue a restore of this same file")
      throw ExitCode(ClientExitStatus.refused)
    }

    // 3. The batches, in order, each idempotent.
    var replayed = 0
    for batch in batches {
      if try send(batch, client) { replayed += 1 }
      Failpoints.restoreAfterBatch.pass()
    }

    // 4. The group read back, compared key by key.
    let (readBack, index) = try readAll(client)
    let expected = Dictionary(uniqueKeysWithValues: entries.map { ($0.key, $0.value) })
    var differences: [String] = []
    for (key, value) in readBack where expected[key] != value {
      differences.append(expected[key] == nil ? "unexpected key \(describe(key))" : "key \(describe(key)) has another value")
    }
    for key in expected.keys where readBack[key] == nil { differences.append("key \(describe(key)) is missing") }
    guard differences.isEmpty else {
      printStandardError(
        "error: verify_failed: \(group) holds \(readBack.count) keys, the backup \(entries.count): "
          + differences.sorted().prefix(5).joined(separator: "; ") + (differences.count > 5 ? "; ..." : ""))
      throw ExitCode(BackupExitStatus.verifyFailed)
    }

    var writer = JSONWriter()
    writer.beginObject()
    writer.member("group", group)
    writer.member("keys", UInt64(readBack.count))
    writer.member("batches", UInt64(batches.count))
    writer.member("replayed", UInt64(replayed))
    writer.member("index", index)
    writer.member("sourceGroup", backup.group.description)
    writer.member("sourceIndex", backup.index)
    writer.member("checksum", checksumText(checksum))
    writer.endObject()
    client.emit(json: writer.bytes) {
      "restored \(readBack.count) keys of \(backup.group) (index \(backup.index)) into \(group) at index \(index): "
        + "\(batches.count) batches, \(replayed) already applied"
    }
  }

  // MARK: Batches

  /// One write of the restore: an atomic batch (`POST .../write`) or one key alone (`PUT`).
  struct Batch {
    enum Body {
      /// The JSON body of `POST /v1/groups/{group}/write`.
      case write(json: [UInt8], keys: Int)
      /// `PUT /v1/groups/{group}/kv/{key}` with the raw value: a key and value too large for a
      /// batch (JSON carries a binary value in base64, a third larger).
      case put(key: [UInt8], value: [UInt8])
    }
    let body: Body
    let idempotencyKey: String
  }

  /// The batches for `entries`, in key order. Deterministic for the same backup (the same
  /// entries, the same limits), so a rerun sends the same operations under the same keys and the
  /// node answers the batches it applied before with their first outcome.
  static func plan(_ entries: [KVEntry], idempotencyPrefix: String) -> [Batch] {
    var batches: [Batch] = []
    var operations: [[UInt8]] = []
    var operationBytes = 0
    func key() -> String { "\(idempotencyPrefix)-\(batches.count + 1)" }
    func flush() {
      guard !operations.isEmpty else { return }
      var body: [UInt8] = Array(#"{"ops":["#.utf8)
      body.reserveCapacity(operationBytes + 16)
      for (position, operation) in operations.enumerated() {
        if position > 0 { body.append(UInt8(ascii: ",")) }
        body += operation
      }
      body += Array("]}".utf8)
      assert(body.count <= batchBytesMax, "a batch over its budget")
      batches.append(Batch(body: .write(json: body, keys: operations.count), idempotencyKey: key()))
      operations = []
      operationBytes = 0
    }
    // The JSON around the operations and between two of them.
    let frameBytes = #"{"ops":[]}"#.utf8.count
    for entry in entries {
      var writer = JSONWriter(capacity: 48 + entry.key.count * 4 / 3 + entry.value.count * 4 / 3)
      writer.beginObject()
      writer.member("op", "put")
      writer.textOrBase64Member("key", entry.key)
      writer.textOrBase64Member("value", entry.value)
      writer.endObject()
      let operation = writer.bytes
      guard frameBytes + operation.count <= batchBytesMax else {
        flush()
        batches.append(Batch(body: .put(key: entry.key, value: entry.value), idempotencyKey: key()))
        continue
      }
      if operations.count == batchOperationsMax || frameBytes + operationBytes + operations.count + operation.count > batchBytesMax {
        flush()
      }
      operations.append(operation)
      operationBytes += operation.count
    }
    flush()
    return batches
  }

  /// Sends one batch until it is applied (or was before: then answers true), retrying what may
  /// not have arrived with the same Idempotency-Key.
  private func send(_ batch: Batch, _ client: ClientConnection) throws -> Bool {
    let method: String
    let target: String
    let body: [UInt8]
    var headers: [(name: String, value: String)] = [("Idempotency-Key", batch.idempotencyKey)]
    switch batch.body {
    case .write(let json, _):
      (method, target, body) = ("POST", ClientConnection.groupPath(group, "/write"), json)
      headers += jsonContent
    case .put(let key, let value):
      (method, target, body) = ("PUT", ClientConnection.groupPath(group, "/kv/" + ClientConnection.encode(bytes: key)), value)
    }
    var lastFailure = ""
    // Whether the batch may have applied (a 504, or an attempt sent and never answered), and
    // whether any node answered at all: what the failure says when every attempt is used up.
    var possiblyApplied = false
    var answered = false
    var pauseMs = Self.retryPauseMsFirst
    for attempt in 1...Self.batchAttemptsMax {
      if attempt > 1 {
        usleep(UInt32(pauseMs) * 1_000)
        pauseMs = min(pauseMs * 2, Self.retryPauseMsMax)
      }
      let response: PeerResponse
      do {
        response = try client.send(method, target, body: body, headers: headers, deadlineNanoseconds: requestDeadline(client))
      } catch {
        lastFailure = "\(error)"
        possiblyApplied = possiblyApplied || error.outcomeUnknown
        continue
      }
      answered = true
      if (200..<300).contains(response.status) {
        return response.headers.contains { $0.name.lowercased() == "idempotent-replayed" && $0.value == "true" }
      }
      // No leader yet, overloaded, or a write whose outcome is unknown: the same batch again,
      // after the node's Retry-After when it gives a longer one.
      guard response.status == 503 || response.status == 504 else {
        printStandardError("error: batch \(batch.idempotencyKey) was refused:")
        ClientConnection.printServerError(response)
        throw ExitCode(ClientExitStatus.refused)
      }
      possiblyApplied = possiblyApplied || response.status == 504
      if let retryAfter = response.headers.first(where: { $0.name.lowercased() == "retry-after" }).flatMap({ Int($0.value) }) {
        pauseMs = min(max(pauseMs, retryAfter * 1_000), Self.retryPauseMsMax)
      }
      lastFailure = "\(response.status) \(ClientConnection.errorCode(response) ?? "")"
    }
    let outcome = possiblyApplied ? "may or may not have applied" : "did not apply"
    printStandardError(
      "error: batch \(batch.idempotencyKey) \(outcome) after \(Self.batchAttemptsMax) attempts (last: \(lastFailure)); "
        + "rerun with --resume to continue (each batch applies at most once)")
    throw ExitCode(
      possiblyApplied ? ClientExitStatus.outcomeUnknown : answered ? ClientExitStatus.refused : ClientExitStatus.unreachable)
  }

  // MARK: The group

  /// `POST /v1/groups`; `409 group_already_exists` is a group to check, not a failure.
  private func createGroup(_ client: ClientConnection) throws {
    let body = groupBody(id: group, peers: try peers.map(parseNodeIDs))
    let response = try client.call(
      "POST", "/v1/groups", body: body, headers: jsonContent, accepting: [409], deadlineNanoseconds: requestDeadline(client))
    // Another 409 (group_limit_reached) is a refusal like any other.
    if response.status == 409 && ClientConnection.errorCode(response) != "group_already_exists" {
      ClientConnection.printServerError(response)
      throw ExitCode(ClientExitStatus.refused)
    }
  }

  /// The group's first key (as text), or nil when it holds none.
  private func firstKey(_ client: ClientConnection) throws -> String? {
    let response = try client.call(
      "GET", ClientConnection.target(ClientConnection.groupPath(group, "/kv"), [("limit", "1")]),
      deadlineNanoseconds: requestDeadline(client))
    return try client.json(response)["items"]?.arrayValue?.first.map(keyText)
  }

  /// Every key and value of the group (linearizable listing pages) and the last page's index.
  private func readAll(_ client: ClientConnection) throws -> ([[UInt8]: [UInt8]], UInt64) {
    var found: [[UInt8]: [UInt8]] = [:]
    var after: [UInt8]? = nil
    var index: UInt64 = 0
    while true {
      // A key that is not UTF-8 cannot be a query value (the node refuses one that does not decode
      // to UTF-8): it goes as `afterBase64`.
      let afterText = after.flatMap { String(validating: $0, as: UTF8.self) }
      let afterBase64 = afterText == nil ? after.map { String(decoding: Base64.encode($0), as: UTF8.self) } : nil
      let response = try client.call(
        "GET",
        ClientConnection.target(
          ClientConnection.groupPath(group, "/kv"),
          [("limit", String(Self.verifyPageItemsMax)), ("after", afterText), ("afterBase64", afterBase64)]),
        deadlineNanoseconds: requestDeadline(client))
      let page = try client.json(response)
      index = page["index"]?.unsignedIntegerValue ?? index
      let items = page["items"]?.arrayValue ?? []
      for item in items {
        guard let key = keyBytes(item), let value = valueBytes(item) else {
          printStandardError("error: bad_response: a listing item without a key or value")
          throw ExitCode(ClientExitStatus.refused)
        }
        found[key] = value
      }
      guard page["more"] == .bool(true) else { return (found, index) }
      guard let last = items.last.flatMap(keyBytes) else {
        printStandardError("error: bad_response: a listing page said more keys follow but held none")
        throw ExitCode(ClientExitStatus.refused)
      }
      // Each page must start past the last, so the loop ends with the keys.
      guard after.map({ $0.lexicographicallyPrecedes(last) }) ?? true else {
        printStandardError("error: bad_response: a page of the listing did not advance")
        throw ExitCode(ClientExitStatus.refused)
      }
      after = last
    }
  }

  /// Each request of the restore gets the whole --timeout-ms (the command makes many).
  private func requestDeadline(_ client: ClientConnection) -> UInt64 {
    MonotonicClock.nowNanoseconds() + UInt64(client.timeoutMs) * 1_000_000
  }
}

// MARK: Pieces

/// An item's value bytes (`value` or `valueBase64`).
func valueBytes(_ item: JSONValue) -> [UInt8]? {
  if let value = item["value"]?.stringValue { return Array(value.utf8) }
  if let encoded = item["valueBase64"]?.stringValue { return Base64.decode(Array(encoded.utf8)) }
  return nil
}

/// A key for a message: its text, or `base64:` and its base64 when it is not UTF-8.
private func describe(_ key: [UInt8]) -> String {
  if let text = String(validating: key, as: UTF8.self) { return "'\(text.prefix(200))'" }
  return "base64:" + String(decoding: Base64.encode(key), as: UTF8.self)
}

/// A CRC-32C as 8 hex digits.
func checksumText(_ checksum: UInt32) -> String {
  withUnsafeBytes(of: checksum.bigEndian) { Hex.encode(Array($0)) }
}
