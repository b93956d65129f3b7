import Glibc
import Platform

/// Starts `cluster.nodes` child processes of this executable (`caucus serve` with a shared
/// `--cluster` list), prints their URLs, and on SIGINT/SIGTERM stops them (SIGTERM, then waits).
func runDevCluster(_ cluster: DevCluster) -> Int32 {
  var stopSignals = sigset_t()
  sigemptyset(&stopSignals)
  sigaddset(&stopSignals, SIGINT)
  sigaddset(&stopSignals, SIGTERM)
  sigaddset(&stopSignals, SIGCHLD)
  pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

  guard let executable = try? FileSystem.readLink("/proc/self/exe") else {
    print("dev-cluster: cannot find this executable")
    return 1
  }
  let members = (0..<cluster.nodes).map { "\($0 + 1)=127.0.0.1:\(Int(cluster.consensusPort) + $0)" }.joined(separator: ",")
  var children: [pid_t] = []
  for index in 0..<cluster.nodes {
    let arguments = [
      executable, "serve", "--node-id", String(index + 1), "--rpc-port", String(Int(cluster.rpcPort) + index),
      "--consensus-port", String(Int(cluster.consensusPort) + index), "--data-dir", "\(cluster.dataDir)/node-\(index + 1)",
      "--cluster", members, "--election-timeout-ms", String(cluster.electionTimeoutMs),
      "--heartbeat-interval-ms", String(cluster.heartbeatIntervalMs),
    ]
    guard let child = spawn(arguments) else {
      print("dev-cluster: cannot start node \(index + 1): \(String(cString: strerror(errno)))")
      stop(children)
      return 1
    }
    children.append(child)
    print("node \(index + 1): http://127.0.0.1:\(Int(cluster.rpcPort) + index)  (consensus 127.0.0.1:\(Int(cluster.consensusPort) + index), pid \(child))")
  }
  print("dev-cluster: \(cluster.nodes) nodes running; Ctrl-C stops them")
  fflush(nil)
  var received: Int32 = 0
  repeat {
    sigwait(&stopSignals, &received)
    if received == SIGCHLD {
      var status: Int32 = 0
      let exited = waitpid(-1, &status, WNOHANG)
      if exited > 0 {
        print("dev-cluster: node with pid \(exited) exited; stopping the others")
        children.removeAll { $0 == exited }
        break
      }
    }
  } while received == SIGCHLD
  stop(children)
  return 0
}

/// How a child process ended, from a `waitpid` status (WIFEXITED, WEXITSTATUS and WTERMSIG are
/// macros Swift does not import). Stopped children are never asked for (no WUNTRACED).
enum ProcessEnd: Equatable {
  case exited(Int32)
  case killed(signal: Int32)

  init(waitStatus status: Int32) {
    let signal = status & 0x7f
    self = signal == 0 ? .exited((status >> 8) & 0xff) : .killed(signal: signal)
  }

  var description: String {
    switch self {
    case .exited(let code): return "exited with status \(code)"
    case .killed(let signal): return "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
    }
  }
}

/// posix_spawn of `arguments[0]` with the parent's environment (plus `environment`, `NAME=value`
/// items that come first and so win) and an empty signal mask; with `log`, standard output and
/// error are appended to that file (created if missing), so a child's logs do not mix with the
/// parent's output; with `ownProcessGroup`, the child leads a process group of its own, out of
/// reach of the terminal's Ctrl-C.
func spawn(_ arguments: [String], log: String? = nil, environment: [String] = [], ownProcessGroup: Bool = false) -> pid_t? {
  var attributes = posix_spawnattr_t()
  posix_spawnattr_init(&attributes)
  defer { posix_spawnattr_destroy(&attributes) }
  var empty = sigset_t()
  sigemptyset(&empty)
  posix_spawnattr_setsigmask(&attributes, &empty)
  posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | (ownProcessGroup ? POSIX_SPAWN_SETPGROUP : 0)))
  if ownProcessGroup { posix_spawnattr_setpgroup(&attributes, 0) }
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  if let log {
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
  }
  var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
  defer { for pointer in argv { free(pointer) } }
  let extra: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) }
  defer { for pointer in extra { free(pointer) } }
  var inherited: [UnsafeMutablePointer<CChar>?] = []
  var cursor = environ
  while let item = cursor.pointee {
    inherited.append(item)
    cursor += 1
  }
  var envp = extra + inherited + [nil]
  var child: pid_t = 0
  let result = posix_spawn(&child, arguments[0], &actions, &attributes, &argv, &envp)
  guard result == 0 else {
    errno = result
    return nil
  }
  return child
}

private func stop(_ children: [pid_t]) {
  for child in children { kill(child, SIGTERM) }
  for child in children {
    var status: Int32 = 0
    _ = waitpid(child, &status, 0)
  }
  print("dev-cluster: stopped")
}
