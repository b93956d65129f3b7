import ArgumentParser
import Gateway
import HTTPServer
import Glibc
import Platform

/// `caucus token`: makes entries of the client tokens file (`--auth-tokens-file`). A node keeps
/// only each token's SHA-256; the token itself is printed once, here, and nowhere else.
struct TokenCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "token",
    abstract: "Create, revoke and hash client tokens for --auth-tokens-file.",
    discussion: """
      Running nodes load a changed tokens file on SIGHUP (kill -HUP <pid>); a file they cannot use is \
      refused with an error in their log, and they keep the tokens they had.
      """,
    subcommands: [Create.self, Revoke.self, Hash.self])

  /// Random bytes in a token: 256 bits.
  static let tokenRandomBytes = 32

  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Generate a token, add its entry to the tokens file (created if absent), print the token.")

    @Option(name: .long, help: "The token's name (1-64 of A-Z a-z 0-9 . _ -), unique in the file; logs and forwarded requests name it.")
    var name: String
    @Option(name: .long, help: "read, write or admin.")
    var role: String
    @Option(name: .long, help: "Comma-separated group ids or prefixes ending in * (DataRegion-1,DataRegion-2*): the only groups it reaches.")
    var groups: String?
    @Option(name: .long, help: "The only keys it reaches start with this.")
    var keyPrefix: String?
    @Option(name: .long, help: "The tokens file to add the entry to.")
    var tokensFile: String

    func run() throws {
      let existing = try readTokens(tokensFile, missingIsEmpty: true)
      guard existing.token(named: name) == nil else {
        throw ValidationError("\(tokensFile) has a token named '\(name)' already; revoke it first or choose another name")
      }
      let random: [UInt8]
      do { random = try secureRandomBytes(TokenCommand.tokenRandomBytes) } catch { throw ValidationError("\(error)") }
      let token = "caucus-" + Hex.encode(random)
      // The entry is checked as the node will check it: the file's own parser reads it back.
      let candidate = AccessTokens.encode([
        try parseEntry(name: name, role: role, groups: groups, keyPrefix: keyPrefix, sha256: SHA256.hash(Array(token.utf8)))
      ])
      let added: AccessTokens
      do { added = try AccessTokens(existing.tokens + AccessTokens.parse(candidate).tokens) } catch {
        throw ValidationError("\(error)")
      }
      try writeTokens(added, to: tokensFile)
      print(token)
      printError(
        "added '\(name)' (\(role)) to \(tokensFile), which keeps only its SHA-256; the token went to standard output. "
          + "Running nodes load it on SIGHUP (kill -HUP <pid>).")
    }
  }

  struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a token's entry from the tokens file.")

    @Option(name: .long, help: "The token's name.")
    var name: String
    @Option(name: .long, help: "The tokens file.")
    var tokensFile: String

    func run() throws {
      let existing = try readTokens(tokensFile, missingIsEmpty: false)
      guard existing.token(named: name) != nil else { throw ValidationError("\(tokensFile) has no token named '\(name)'") }
      let kept: AccessTokens
      do { kept = try AccessTokens(existing.tokens.filter { $0.name != name }) } catch { throw ValidationError("\(error)") }
      try writeTokens(kept, to: tokensFile)
      printError("revoked '\(name)' in \(tokensFile); running nodes refuse it once they reload (kill -HUP <pid>).")
    }
  }

  struct Hash: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print the SHA-256 (hex) of a token read from standard input, for a hand-written entry.",
      discussion: """
        Surrounding whitespace (a trailing newline) is not part of the token. The same as \
        printf %s "$TOKEN" | sha256sum. The token is read from standard input so that it stays out of \
        the shell history and the process list.
        """)

    func run() throws {
      var bytes: [UInt8] = []
      var buffer = [UInt8](repeating: 0, count: 4096)
      while true {
        let count = read(0, &buffer, buffer.count)
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { break }
        bytes += buffer[0..<count]
        guard bytes.count <= 65_536 else { throw ValidationError("a token is far shorter than 64 KiB") }
      }
      let token = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: " \t\r\n")
      guard !token.isEmpty else { throw ValidationError("no token on standard input (echo \"$TOKEN\" | caucus token hash)") }
      print(SHA256.hex(Array(token.utf8)))
    }
  }
}

/// The tokens file's entries; an absent file is empty when `missingIsEmpty`.
private func readTokens(_ path: String, missingIsEmpty: Bool) throws -> AccessTokens {
  if missingIsEmpty && access(path, F_OK) != 0 { return try AccessTokens([]) }
  do { return try AccessTokens.load(path: path) } catch { throw ValidationError("\(error)") }
}

private func writeTokens(_ tokens: AccessTokens, to path: String) throws {
  do {
    try writeTextFileDurably(path, String(decoding: AccessTokens.encode(tokens.tokens), as: UTF8.self))
  } catch {
    throw ValidationError("cannot write \(path): \(error)")
  }
}

/// One entry from the command line's values, as the file's parser reads entries.
private func parseEntry(name: String, role: String, groups: String?, keyPrefix: String?, sha256: [UInt8]) throws -> AccessToken {
  var writer = JSONWriter()
  writer.beginObject()
  writer.key("tokens")
  writer.beginArray()
  writer.beginObject()
  writer.member("name", name)
  writer.member("role", role)
  writer.member("sha256", Hex.encode(sha256))
  if let groups {
    writer.key("groups")
    writer.beginArray()
    for group in groups.split(separator: ",") { writer.string(String(group).trimmingCharacters(in: " ")) }
    writer.endArray()
  }
  if let keyPrefix { writer.member("keyPrefix", keyPrefix) }
  writer.endObject()
  writer.endArray()
  writer.endObject()
  do { return try AccessTokens.parse(writer.bytes).tokens[0] } catch { throw ValidationError("\(error)") }
}

/// A line on standard error: notes that must not mix with the token on standard output.
private func printError(_ line: String) {
  let bytes = Array((line + "\n").utf8)
  _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
