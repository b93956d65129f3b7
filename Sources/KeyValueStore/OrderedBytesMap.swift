/// Compares byte strings lexicographically by unsigned byte; a proper prefix sorts first.
/// Returns a negative number, zero or a positive number.
@inline(__always)
func compareBytes(_ left: KVBytes, _ right: KVBytes) -> Int {
  left.withUnsafeBytes { left in
    right.withUnsafeBytes { right in
      let common = Swift.min(left.count, right.count)
      var index = 0
      // Eight bytes at a time: read big-endian, integer order is byte order.
      while index + 8 <= common {
        let a = UInt64(bigEndian: left.loadUnaligned(fromByteOffset: index, as: UInt64.self))
        let b = UInt64(bigEndian: right.loadUnaligned(fromByteOffset: index, as: UInt64.self))
        if a != b { return a < b ? -1 : 1 }
        index += 8
      }
      while index < common {
        let a = left[index]
        let b = right[index]
        if a != b { return a < b ? -1 : 1 }
        index += 1
      }
      return left.count == right.count ? 0 : (left.count < right.count ? -1 : 1)
    }
  }
}

/// Whether `key` starts with `prefix`.
@inline(__always)
func hasBytePrefix(_ key: KVBytes, _ prefix: KVBytes) -> Bool {
  guard prefix.count <= key.count else { return false }
  return key.withUnsafeBufferPointer { key in
    prefix.withUnsafeBufferPointer { prefix in
      var index = 0
      while index < prefix.count {
        if key[index] != prefix[index] { return false }
        index += 1
      }
      return true
    }
  }
}

/// An ordered map from byte-string keys to values: a B-tree (CLRS style, entries in every node)
/// of minimum degree `minimumDegree`. Point lookups, inserts and removals are O(log n); an ordered
/// scan from any key costs O(log n) to seek plus O(1) amortized per entry. No randomness, so the
/// shape depends only on the sequence of operations.
///
/// Reference semantics (a class): the state machine owns exactly one and replaces it wholesale on
/// restore.
///
/// Invariants (checked by `checkInvariants()` in tests):
/// - every node but the root holds `minimumDegree - 1 ... 2 * minimumDegree - 1` keys; the root
///   holds at most `2 * minimumDegree - 1` and is empty only when the map is;
/// - an internal node with k keys has k + 1 children; all leaves are at the same depth;
/// - keys ascend strictly within a node and separate the children's key ranges.
final class OrderedBytesMap<Value> {
  final class Node {
    var keys: [KVBytes]
    var values: [Value]
    /// Empty for a leaf.
    var children: [Node]

    init(keys: [KVBytes] = [], values: [Value] = [], children: [Node] = []) {
      self.keys = keys
      self.values = values
      self.children = children
    }

    var isLeaf: Bool { children.isEmpty }

    /// The first position whose key is ≥ `key` (or > `key` when `strictlyAfter`), and whether the
    /// key at that position equals `key`.
    @inline(__always)
    func search(_ key: KVBytes, strictlyAfter: Bool = false) -> (index: Int, found: Bool) {
      var low = 0
      var high = keys.count
      var found = false
      while low < high {
        let middle = (low + high) / 2
        let order = compareBytes(keys[middle], key)
        if order < 0 || (strictlyAfter && order == 0) {
          low = middle + 1
        } else {
          if order == 0 { found = true }
          high = middle
        }
      }
      return (low, found && !strictlyAfter)
    }
  }

  /// 32 gives nodes of 31...63 keys: shallow trees (4 levels hold ~16M keys), short shifts.
  let minimumDegree: Int
  private var maximumKeys: Int { 2 * minimumDegree - 1 }
  private(set) var root: Node
  private(set) var count = 0

  init(minimumDegree: Int = 32) {
    precondition(minimumDegree >= 2, "a B-tree needs a minimum degree of at least 2")
    self.minimumDegree = minimumDegree
    self.root = Node()
  }

  var isEmpty: Bool { count == 0 }

  func value(for key: KVBytes) -> Value? {
    var node = root
    while true {
      let (index, found) = node.search(key)
      if found { return node.values[index] }
      if node.isLeaf { return nil }
      node = node.children[index]
    }
  }

  /// Sets `key` to `value`; returns the previous value, if any.
  @discardableResult
  func updateValue(_ value: Value, for key: KVBytes) -> Value? {
    if root.keys.count == maximumKeys {
      let newRoot = Node(children: [root])
      split(child: 0, of: newRoot)
      root = newRoot
    }
    var node = root
    while true {
      var (index, found) = node.search(key)
      if found {
        let previous = node.values[index]
        node.values[index] = value
        return previous
      }
      if node.isLeaf {
        node.keys.insert(key, at: index)
        node.values.insert(value, at: index)
        count += 1
        return nil
      }
      if node.children[index].keys.count == maximumKeys {
        split(child: index, of: node)
        let order = compareBytes(key, node.keys[index])
        if order == 0 {
          let previous = node.values[index]
          node.values[index] = value
          return previous
        }
        if order > 0 { index += 1 }
      }
      node = node.children[index]
    }
  }

  /// Removes `key`; returns its value, or nil when it was absent.
  @discardableResult
  func removeValue(for key: KVBytes) -> Value? {
    let removed = remove(key, from: root)
    if root.keys.isEmpty && !root.isLeaf {
      assert(root.children.count == 1)
      root = root.children[0]
    }
    if removed != nil {
      count -= 1
      assert(count >= 0)
    }
    return removed
  }

  func removeAll() {
    root = Node()
    count = 0
  }

  /// Visits entries in ascending key order, starting at the first key ≥ `lowerBound` (> it when
  /// `strictlyAfter`; from the smallest key when `lowerBound` is nil), until `body` returns false.
  func scan(
    from lowerBound: KVBytes? = nil, strictlyAfter: Bool = false,
    _ body: (KVBytes, Value) -> Bool
  ) {
    _ = visit(root, lowerBound: lowerBound, strictlyAfter: strictlyAfter, body)
  }

  // MARK: Internals

  /// Returns false when `body` asked to stop.
  private func visit(
    _ node: Node, lowerBound: KVBytes?, strictlyAfter: Bool, _ body: (KVBytes, Value) -> Bool
  ) -> Bool {
    var start = 0
    if let lowerBound { start = node.search(lowerBound, strictlyAfter: strictlyAfter).index }
    if node.isLeaf {
      for index in start..<node.keys.count {
        if !body(node.keys[index], node.values[index]) { return false }
      }
      return true
    }
    for index in start...node.keys.count {
      // Only the first child visited can hold keys below the bound.
      let childBound = index == start ? lowerBound : nil
      guard visit(node.children[index], lowerBound: childBound, strictlyAfter: strictlyAfter, body)
      else { return false }
      if index < node.keys.count && !body(node.keys[index], node.values[index]) { return false }
    }
    return true
  }

  /// Splits the full child at `index` of `parent` around its median key, which moves up.
  private func split(child index: Int, of parent: Node) {
    let child = parent.children[index]
    precondition(child.keys.count == maximumKeys, "only a full node is split")
    let median = minimumDegree - 1
    let right = Node(
      keys: Array(child.keys[(median + 1)...]),
      values: Array(child.values[(median + 1)...]),
      children: child.isLeaf ? [] : Array(child.children[(median + 1)...]))
    parent.keys.insert(child.keys[median], at: index)
    parent.values.insert(child.values[median], at: index)
    parent.children.insert(right, at: index + 1)
    child.keys.removeSubrange(median...)
    child.values.removeSubrange(median...)
    if !child.isLeaf { child.children.removeSubrange((median + 1)...) }
    assert(child.keys.count == minimumDegree - 1 && right.keys.count == minimumDegree - 1)
  }

  /// Removes `key` from the subtree at `node`, which is the root or holds ≥ `minimumDegree` keys,
  /// so a key can always be taken out of it without underflow.
  private func remove(_ key: KVBytes, from node: Node) -> Value? {
    let (index, found) = node.search(key)
    if found {
      if node.isLeaf {
        node.keys.remove(at: index)
        return node.values.remove(at: index)
      }
      let removed = node.values[index]
      if node.children[index].keys.count >= minimumDegree {
        // Replace by the predecessor, removed from the left subtree.
        let predecessor = maximumKey(of: node.children[index])
        let value = remove(predecessor, from: node.children[index])!
        node.keys[index] = predecessor
        node.values[index] = value
      } else if node.children[index + 1].keys.count >= minimumDegree {
        let successor = minimumKey(of: node.children[index + 1])
        let value = remove(successor, from: node.children[index + 1])!
        node.keys[index] = successor
        node.values[index] = value
      } else {
        merge(child: index, of: node)
        return remove(key, from: node.children[index])
      }
      return removed
    }
    if node.isLeaf { return nil }
    var childIndex = index
    if node.children[childIndex].keys.count < minimumDegree {
      childIndex = fill(child: childIndex, of: node)
    }
    return remove(key, from: node.children[childIndex])
  }

  private func maximumKey(of subtree: Node) -> KVBytes {
    var node = subtree
    while !node.isLeaf { node = node.children[node.children.count - 1] }
    return node.keys[node.keys.count - 1]
  }

  private func minimumKey(of subtree: Node) -> KVBytes {
    var node = subtree
    while !node.isLeaf { node = node.children[0] }
    return node.keys[0]
  }

  /// Gives the child at `index` (which has `minimumDegree - 1` keys) one more key, borrowing from a
  /// sibling or merging with one. Returns the index of the node that now covers the child's range.
  private func fill(child index: Int, of parent: Node) -> Int {
    let child = parent.children[index]
    if index > 0 && parent.children[index - 1].keys.count >= minimumDegree {
      let left = parent.children[index - 1]
      child.keys.insert(parent.keys[index - 1], at: 0)
      child.values.insert(parent.values[index - 1], at: 0)
      parent.keys[index - 1] = left.keys.removeLast()
      parent.values[index - 1] = left.values.removeLast()
      if !left.isLeaf { child.children.insert(left.children.removeLast(), at: 0) }
      return index
    }
    if index < parent.keys.count && parent.children[index + 1].keys.count >= minimumDegree {
      let right = parent.children[index + 1]
      child.keys.append(parent.keys[index])
      child.values.append(parent.values[index])
      parent.keys[index] = right.keys.removeFirst()
      parent.values[index] = right.values.removeFirst()
      if !right.isLeaf { child.children.append(right.children.removeFirst()) }
      return index
    }
    if index < parent.keys.count {
      merge(child: index, of: parent)
      return index
    }
    merge(child: index - 1, of: parent)
    return index - 1
  }

  /// Merges child `index + 1` and the separating key into child `index`.
  private func merge(child index: Int, of parent: Node) {
    let left = parent.children[index]
    let right = parent.children[index + 1]
    precondition(
      left.keys.count + right.keys.count + 1 <= maximumKeys, "merge would overflow a node")
    left.keys.append(parent.keys.remove(at: index))
    left.values.append(parent.values.remove(at: index))
    left.keys.append(contentsOf: right.keys)
    left.values.append(contentsOf: right.values)
    left.children.append(contentsOf: right.children)
    parent.children.remove(at: index + 1)
  }

  /// Walks the whole tree and stops the process on any broken invariant. For tests.
  func checkInvariants() {
    var leafDepth: Int? = nil
    var total = 0
    func check(_ node: Node, depth: Int, lower: KVBytes?, upper: KVBytes?) {
      precondition(node.keys.count == node.values.count, "keys and values out of step")
      precondition(node.keys.count <= maximumKeys, "node overflow")
      if node !== root { precondition(node.keys.count >= minimumDegree - 1, "node underflow") }
      for index in node.keys.indices {
        if index > 0 { precondition(compareBytes(node.keys[index - 1], node.keys[index]) < 0) }
        if let lower { precondition(compareBytes(lower, node.keys[index]) < 0, "below range") }
        if let upper { precondition(compareBytes(node.keys[index], upper) < 0, "above range") }
      }
      total += node.keys.count
      if node.isLeaf {
        if let leafDepth { precondition(leafDepth == depth, "leaves at different depths") }
        leafDepth = depth
        return
      }
      precondition(node.children.count == node.keys.count + 1, "child count")
      for index in node.children.indices {
        check(
          node.children[index], depth: depth + 1,
          lower: index == 0 ? lower : node.keys[index - 1],
          upper: index == node.keys.count ? upper : node.keys[index])
      }
    }
    check(root, depth: 0, lower: nil, upper: nil)
    precondition(total == count, "count \(count) but \(total) keys in the tree")
  }
}
