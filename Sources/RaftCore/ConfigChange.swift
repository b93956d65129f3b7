// Membership changes (thesis §4): a single-voter change takes effect directly; anything larger goes
// through a joint configuration C_old,new, which the leader leaves automatically once it applies it.

public enum ConfigChangeKind: UInt8, Sendable, CaseIterable {
  case addVoter = 1
  case addLearner = 2
  case remove = 3
}

public struct ConfigChangeStep: Equatable, Hashable, Sendable {
  public var kind: ConfigChangeKind
  public var replica: ReplicaID
  public init(_ kind: ConfigChangeKind, _ replica: ReplicaID) {
    self.kind = kind
    self.replica = replica
  }
}

/// A membership change as stored in a `configChange` entry. No steps means "leave the joint
/// configuration".
public struct ConfigChange: Equatable, Hashable, Sendable {
  public var steps: [ConfigChangeStep]
  /// Bytes the core carries but never reads (etcd's ConfChange.Context): the host puts there what
  /// every replica must learn with the change, such as the network addresses of new members.
  public var context: [UInt8]
  public init(_ steps: [ConfigChangeStep], context: [UInt8] = []) {
    self.steps = steps
    self.context = context
  }
  public static let leaveJoint = ConfigChange([])
  public var isLeaveJoint: Bool { steps.isEmpty }

  /// Upper bound on steps in one change: a change this large is a mistake, and it bounds decoding.
  public static let stepsMax = 64
  /// Upper bound on `context`: it rides in a log entry (so in every batch that carries it), and
  /// it bounds decoding. A list of endpoints takes a few hundred bytes.
  public static let contextBytesMax = 64 << 10
}

public enum ConfigChangeError: Error, Equatable, Sendable {
  case invalid(String)
}

extension ConfigState {
  /// Computes the configuration that `change` leads to from `self`, or says why it is refused.
  /// Changing more than one voter enters a joint configuration (thesis §4.3).
  public func applying(_ change: ConfigChange) throws(ConfigChangeError) -> ConfigState {
    if change.isLeaveJoint {
      guard isJoint else { throw .invalid("not in a joint configuration") }
      return ConfigState(voters: voters, votersOutgoing: [], learners: learners)
    }
    guard !isJoint else { throw .invalid("already in a joint configuration; leave it first") }
    guard change.steps.count <= ConfigChange.stepsMax else { throw .invalid("too many steps") }
    var newVoters = Set(voters)
    var newLearners = Set(learners)
    for step in change.steps {
      guard step.replica != 0 else { throw .invalid("replica id 0") }
      switch step.kind {
      case .addVoter:
        newLearners.remove(step.replica)
        newVoters.insert(step.replica)
      case .addLearner:
        guard !newVoters.contains(step.replica) else {
          throw .invalid("replica \(step.replica) is a voter; remove it before adding it as a learner")
        }
        newLearners.insert(step.replica)
      case .remove:
        newVoters.remove(step.replica)
        newLearners.remove(step.replica)
      }
    }
    guard !newVoters.isEmpty else { throw .invalid("a configuration needs at least one voter") }
    let changedVoters = Set(voters).symmetricDifference(newVoters).count
    if changedVoters <= 1 {
      return ConfigState(voters: Array(newVoters), learners: Array(newLearners))
    }
    return ConfigState(voters: Array(newVoters), votersOutgoing: voters, learners: Array(newLearners))
  }
}
