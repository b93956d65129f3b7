import Platform

/// The thread backup exports run on (`GET /v1/groups/{group}/snapshot`), one at a time. An export
/// copies a group's whole state (up to `GatewayConfiguration.snapshotExportBytesMax`) a few times over,
/// between the state machine's snapshot, the read's result and the backup file. The snapshot
/// itself is taken where the engine answers the read (the consensus loop for a linearizable one,
/// as Raft's own snapshots are; this thread for a stale one, which would otherwise be an event
/// loop); decoding it and encoding the backup happen here, which would otherwise be the consensus
/// loop. At most `queuedMax` exports wait or run, so their memory is bounded too; a full queue is
/// the caller's `503 overloaded`.
/// Sendable: every field but `queuedMax` is read and written under `lock`.
final class ExportWorker: @unchecked Sendable {
  /// Exports waiting or running at most.
  let queuedMax: Int
  private let lock = ConditionLock()
  private var jobs: [@Sendable () -> Void] = []
  private var running = false
  private var stopping = false
  private var thread: OSThread?

  init(queuedMax: Int) {
    precondition(queuedMax >= 1, "at least one export at a time")
    self.queuedMax = queuedMax
  }

  /// Queues `job` and returns true; false when `queuedMax` exports are already waiting or running,
  /// or the worker stopped. The thread starts with the first job.
  func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
    lock.withLock {
      guard !stopping, jobs.count + (running ? 1 : 0) < queuedMax else { return false }
      jobs.append(job)
      if thread == nil { thread = OSThread(name: "caucus-export") { [self] in run() } }
      lock.signal()
      return true
    }
  }

  private func run() {
    while let job = next() { job() }
  }

  /// The next job, waiting for one; nil once stopping with none left.
  private func next() -> (@Sendable () -> Void)? {
    lock.withLock {
      running = false
      while jobs.isEmpty {
        if stopping { return nil }
        lock.wait()
      }
      running = true
      return jobs.removeFirst()
    }
  }

  /// Lets the queued exports finish, then stops the thread. Idempotent.
  func stop() {
    let started: OSThread? = lock.withLock {
      stopping = true
      lock.broadcast()
      defer { thread = nil }
      return thread
    }
    started?.join()
  }
}
