import Consensus
import RaftCore

/// Sees every Ready the host executes, at the points the Ready contract names: the simulator's
/// checker runs on the production host through it. Loop only; set before the engine starts.
/// Copies of the core handed here are the loop's own; an observer must not keep them.
package protocol ReadyObserver: AnyObject {
  /// A replica of `group` was made: created, joined, or recovered at start (`raft` as restored).
  func groupStarted(_ group: GroupID, raft: Raft)
  /// Step 5 is done for `ready`: its records are appended, and fsynced when `synced`. Nothing
  /// of it is applied yet; `raft` is the core as it produced the Ready.
  func persisted(_ group: GroupID, ready: Ready, raft: Raft, synced: Bool)
  /// Step 7: `ready`'s snapshot and committed entries were applied to the state machine.
  func applied(_ group: GroupID, ready: Ready)
}
