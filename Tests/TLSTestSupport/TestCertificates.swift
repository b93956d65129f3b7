import Glibc

/// Certificates made at test time by `scripts/tls-certificates.sh` into a temporary directory, once
/// per test process (the files it lists: `ca.pem`, `node.pem`/`node.key`, `client.pem`/`client.key`,
/// `other-ca.pem`, `other-client.pem`/`other-client.key`), removed when the process exits.
public enum TestCertificates {
  public struct Failure: Error, CustomStringConvertible {
    public let description: String
  }

  /// The directory holding them; throws (with what to install) when they cannot be made.
  public static func directory() throws -> String {
    switch made {
    case .success(let directory): return directory
    case .failure(let failure): throw failure
    }
  }

  /// `name` in the directory (`"ca.pem"` → `/tmp/caucus-tls-…/ca.pem`).
  public static func path(_ name: String) throws -> String { try directory() + "/" + name }

  /// The package's root, from this file's path (Tests/TLSTestSupport/TestCertificates.swift).
  public static let packageRoot: String = {
    var components = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    components.removeLast(3)
    return components.joined(separator: "/")
  }()

  /// Runs `command` with sh; its exit status.
  public static func shell(_ command: String) -> Int32 {
    let status = system(command)
    return status < 0 ? status : (status >> 8) & 0xFF
  }

  private static let made: Result<String, Failure> = {
    var template = Array("/tmp/caucus-tls-XXXXXX".utf8CString)
    guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      return .failure(Failure(description: "mkdtemp failed: errno \(errno)"))
    }
    let directory = String(cString: created)
    let script = packageRoot + "/scripts/tls-certificates.sh"
    let status = shell("'\(script)' '\(directory)' --days 2 >/dev/null")
    guard status == 0 else {
      return .failure(
        Failure(
          description:
            "\(script) failed with status \(status): the tests need the openssl command (scripts/install-deps.sh installs it)"))
    }
    removedAtExit = directory
    atexit {
      if let directory = removedAtExit { _ = TestCertificates.shell("rm -rf '\(directory)'") }
    }
    return .success(directory)
  }()
}

/// The directory `atexit` removes (a C function pointer cannot capture it). Written once, inside
/// `made`'s one-time initialization; read at exit.
nonisolated(unsafe) private var removedAtExit: String? = nil
