import Glibc

/// mkdir -p.
func makeDirectories(_ path: String) throws {
  var current = path.hasPrefix("/") ? "" : "."
  for component in path.split(separator: "/") {
    current += "/" + component
    if mkdir(current, 0o755) != 0 && errno != EEXIST {
      throw SettingsError(description: "cannot create \(current): \(String(cString: strerror(errno)))")
    }
  }
}

func readTextFile(_ path: String) -> String? {
  guard let file = fopen(path, "r") else { return nil }
  defer { fclose(file) }
  var bytes: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 4096)
  while true {
    let count = fread(&buffer, 1, buffer.count, file)
    if count == 0 { break }
    bytes.append(contentsOf: buffer[..<count])
  }
  return String(decoding: bytes, as: UTF8.self)
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory.
func writeTextFileDurably(_ path: String, _ text: String) throws {
  let temporary = path + ".tmp"
  let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
  guard descriptor >= 0 else { throw SettingsError(description: "cannot write \(temporary): \(String(cString: strerror(errno)))") }
  let bytes = Array(text.utf8)
  let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
  let synced = fsync(descriptor)
  close(descriptor)
  guard written == bytes.count, synced == 0, rename(temporary, path) == 0 else {
    throw SettingsError(description: "cannot write \(path): \(String(cString: strerror(errno)))")
  }
  let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
  let directoryDescriptor = open(directory.isEmpty ? "." : directory, O_RDONLY)
  if directoryDescriptor >= 0 {
    fsync(directoryDescriptor)
    close(directoryDescriptor)
  }
}
