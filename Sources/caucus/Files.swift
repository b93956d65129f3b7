import Glibc
import Platform

/// The file as text, or nil when it cannot be read (absent, unreadable).
func readTextFile(_ path: String) -> String? {
  guard let bytes = try? FileSystem.readFile(path) else { return nil }
  return String(decoding: bytes, as: UTF8.self)
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory: after a crash the
/// file holds either the old text or the new, never a mix.
func writeTextFileDurably(_ path: String, _ text: String) throws {
  try writeFileDurably(path, Array(text.utf8))
}

/// `writeTextFileDurably` for bytes.
func writeFileDurably(_ path: String, _ bytes: [UInt8]) throws {
  // This process's own temporary file: two writers of one path do not share (and truncate) it.
  let temporary = path + ".tmp-\(getpid())"
  do {
    let file = try File.open(temporary, mode: .writeCreateTruncate)
    try file.write(all: bytes)
    try file.sync()
    try file.close()
    try FileSystem.rename(temporary, to: path)
  } catch {
    try? FileSystem.unlink(temporary)  // the file is closed by its deinit
    throw error
  }
  let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
  try FileSystem.syncDirectory(directory.isEmpty ? (path.hasPrefix("/") ? "/" : ".") : directory)
}
