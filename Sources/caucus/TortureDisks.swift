import Glibc
import Platform

/// The torture nodes' disks. As root, each node's data directory is on its own size-limited
/// tmpfs, so the nemesis can fill a node's disk to the last byte (a filler file beside the data
/// directory) and give the space back; otherwise plain directories and no disk faults.
final class TortureDisks {
  let directory: String
  let nodes: Int
  /// Why the disks are plain directories, when they are.
  let unlimitedReason: String?
  private var mounted: [String] = []

  private init(directory: String, nodes: Int, unlimitedReason: String?) {
    self.directory = directory
    self.nodes = nodes
    self.unlimitedReason = unlimitedReason
  }

  /// Mounts one tmpfs of `megabytes` MiB per node under `directory` when it can.
  static func make(directory: String, nodes: Int, megabytes: Int, allowMounts: Bool) -> TortureDisks {
    guard allowMounts else {
      return TortureDisks(directory: directory, nodes: nodes, unlimitedReason: "--disk-mb 0 was given")
    }
    guard geteuid() == 0 else {
      return TortureDisks(directory: directory, nodes: nodes, unlimitedReason: "size-limited file systems need root")
    }
    let disks = TortureDisks(directory: directory, nodes: nodes, unlimitedReason: nil)
    for index in 0..<nodes {
      let mountPoint = disks.mountPoint(index)
      do {
        try FileSystem.makeDirectories(mountPoint)
      } catch {
        disks.tearDown()
        return TortureDisks(directory: directory, nodes: nodes, unlimitedReason: "cannot create \(mountPoint): \(error)")
      }
      guard mount("tmpfs", mountPoint, "tmpfs", UInt(MS_NOSUID | MS_NODEV), "size=\(megabytes)m,mode=0755") == 0 else {
        let reason = "cannot mount a tmpfs at \(mountPoint): \(String(cString: strerror(errno)))"
        disks.tearDown()
        return TortureDisks(directory: directory, nodes: nodes, unlimitedReason: reason)
      }
      disks.mounted.append(mountPoint)
    }
    return disks
  }

  var limited: Bool { unlimitedReason == nil }

  private func mountPoint(_ index: Int) -> String { "\(directory)/disk-\(index + 1)" }
  private func filler(_ index: Int) -> String { "\(mountPoint(index))/filler" }

  /// Where node `index` keeps its data.
  func dataDirectory(_ index: Int) -> String {
    limited ? "\(mountPoint(index))/data" : "\(directory)/node-\(index + 1)"
  }

  /// Takes every free byte of node `index`'s disk; the bytes taken (0 when it could not).
  func fill(_ index: Int) -> UInt64 {
    precondition(limited, "filling needs a size-limited disk")
    let descriptor = open(filler(index), O_WRONLY | O_CREAT, 0o644)
    guard descriptor >= 0 else { return 0 }
    defer { close(descriptor) }
    var taken: UInt64 = 0
    // A failed posix_fallocate takes nothing (tmpfs undoes a partial one): ask for the free space, then for less, down to a page.
    for _ in 0..<Self.fillAttemptsMax {
      var room = statvfs()
      guard statvfs(mountPoint(index), &room) == 0 else { break }
      var bytes = UInt64(room.f_bavail) * UInt64(room.f_frsize)
      while bytes >= 4_096 && posix_fallocate(descriptor, off_t(taken), off_t(bytes)) != 0 { bytes /= 2 }
      if bytes < 4_096 { break }
      taken += bytes
    }
    return taken
  }

  /// Rounds of posix_fallocate in one fill (each takes at least half of what is left).
  static let fillAttemptsMax = 64

  /// Gives node `index`'s disk its space back.
  func free(_ index: Int) {
    guard limited else { return }
    unlink(filler(index))
  }

  /// Unmounts every disk (lazily: a node still exiting keeps its files until it has).
  func tearDown() {
    for mountPoint in mounted { umount2(mountPoint, Int32(MNT_DETACH)) }
    mounted.removeAll()
  }

  var summary: String {
    guard let unlimitedReason else { return "one size-limited tmpfs per node (disk-full faults fill it)" }
    return "plain directories (\(unlimitedReason)): no disk-full faults"
  }
}
