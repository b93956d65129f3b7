import Glibc
import Platform
import XCTest

/// `CAUCUS_FAILPOINTS` parsing and hit counting. The points here are the tests' own: arming the
/// process's (`Failpoints.all`) would crash or fail the test process itself. What the armed
/// points do to a real node is in IntegrationTests/FailpointTests.
final class FailpointTests: XCTestCase {
  func testTheKnownNamesAreTheIssuesAndOnlyTheWALFsyncTakesEIO() {
    XCTAssertEqual(
      Failpoints.names,
      [
        "wal-after-append-before-fsync", "raft-after-fsync-before-send", "apply-after-apply-before-answer",
        "snapshot-save", "snapshot-install", "wal-fsync",
      ])
    XCTAssertEqual(Failpoints.all.filter { $0.actions.contains(.eio) }.map(\.name), ["wal-fsync"])
    XCTAssertTrue(Failpoints.all.allSatisfy { $0.actions.contains(.crash) })
    XCTAssertTrue(Failpoints.all.allSatisfy { !$0.isArmed }, "the test process arms nothing")
  }

  /// The client commands' points are armed from the same variable, but apart from the node's:
  /// a torture harness never picks them, and a node does not accept them.
  func testTheClientPointsAreApartFromTheNodes() throws {
    XCTAssertEqual(Failpoints.clientPoints.map(\.name), ["restore-after-batch"])
    XCTAssertTrue(Set(Failpoints.clientPoints.map(\.name)).isDisjoint(with: Failpoints.names))
    let armed = try Failpoints.parse("restore-after-batch:crash:2", points: Failpoints.clientPoints)
    XCTAssertTrue(armed.first?.point === Failpoints.restoreAfterBatch)
    XCTAssertThrowsError(try Failpoints.parse("restore-after-batch:crash:2")) {
      XCTAssertEqual(($0 as? FailpointConfigurationError)?.reason, .unknownName)
    }
    XCTAssertThrowsError(try Failpoints.parse("wal-fsync:crash:2", points: Failpoints.clientPoints))
  }

  func testGoodValuesParse() throws {
    let one = try Failpoints.parse("wal-after-append-before-fsync:crash:37")
    XCTAssertEqual(one.map(\.description), ["wal-after-append-before-fsync:crash:37"])
    XCTAssertTrue(one[0].point === Failpoints.walAfterAppendBeforeFsync)
    XCTAssertEqual(one[0].action, .crash)
    XCTAssertEqual(one[0].hit, 37)

    let several = try Failpoints.parse(" wal-fsync:eio:5 ,\tsnapshot-save:crash:1,raft-after-fsync-before-send:crash:1000 ")
    XCTAssertEqual(
      several.map(\.description), ["wal-fsync:eio:5", "snapshot-save:crash:1", "raft-after-fsync-before-send:crash:1000"])

    let every = Failpoints.names.map { "\($0):crash:2" }.joined(separator: ",")
    XCTAssertEqual(try Failpoints.parse(every).map(\.point.name), Failpoints.names)
    XCTAssertEqual(try Failpoints.parse("wal-fsync:crash:\(Failpoints.hitMax)").first?.hit, Failpoints.hitMax)
    for nothing in ["", " ", "\t \t"] {
      XCTAssertEqual(try Failpoints.parse(nothing).count, 0, "'\(nothing)' arms nothing")
    }
  }

  func testEachKindOfBadValueIsRefusedNamingTheVariableAndTheItem() {
    let cases: [(String, String, FailpointConfigurationError.Reason)] = [
      ("wal-fsync", "wal-fsync", .notThreeFields),
      ("wal-fsync:eio", "wal-fsync:eio", .notThreeFields),
      ("wal-fsync:eio:3:4", "wal-fsync:eio:3:4", .notThreeFields),
      ("wal-fsync:eio:3,", "", .notThreeFields),
      ("wal-fsync:eio:3,,snapshot-save:crash:1", "", .notThreeFields),
      ("WAL-FSYNC:eio:3", "WAL-FSYNC:eio:3", .unknownName),
      ("no-such-point:crash:1", "no-such-point:crash:1", .unknownName),
      (":crash:1", ":crash:1", .unknownName),
      ("wal-fsync:explode:1", "wal-fsync:explode:1", .unknownAction),
      ("wal-fsync:CRASH:1", "wal-fsync:CRASH:1", .unknownAction),
      ("snapshot-save:eio:1", "snapshot-save:eio:1", .actionNotAllowed),
      ("apply-after-apply-before-answer:eio:2", "apply-after-apply-before-answer:eio:2", .actionNotAllowed),
      ("wal-fsync:eio:0", "wal-fsync:eio:0", .badHit),
      ("wal-fsync:eio:-1", "wal-fsync:eio:-1", .badHit),
      ("wal-fsync:eio:+3", "wal-fsync:eio:+3", .badHit),
      ("wal-fsync:eio:three", "wal-fsync:eio:three", .badHit),
      ("wal-fsync:eio:", "wal-fsync:eio:", .badHit),
      ("wal-fsync:eio:99999999999999999999999", "wal-fsync:eio:99999999999999999999999", .badHit),
      ("wal-fsync:eio:\(Failpoints.hitMax + 1)", "wal-fsync:eio:\(Failpoints.hitMax + 1)", .badHit),
      ("wal-fsync:eio:1,wal-fsync:crash:9", "wal-fsync:crash:9", .nameRepeated),
      (String(repeating: "x", count: Failpoints.variableBytesMax + 1), "", .tooLong),
      (Array(repeating: "wal-fsync:eio:1", count: Failpoints.itemsMax + 1).joined(separator: ","), "", .tooLong),
    ]
    for (value, item, reason) in cases {
      XCTAssertThrowsError(try Failpoints.parse(value), "'\(value)'") { error in
        guard let refusal = error as? FailpointConfigurationError else { return XCTFail("'\(value)': \(error)") }
        XCTAssertEqual(refusal.reason, reason, "'\(value)'")
        if reason != .tooLong { XCTAssertEqual(refusal.item, item, "'\(value)'") }
        XCTAssertTrue(refusal.description.hasPrefix("CAUCUS_FAILPOINTS: '"), refusal.description)
      }
    }
    XCTAssertThrowsError(try Failpoints.parse("nope:crash:1")) { error in
      XCTAssertTrue("\(error)".contains("known: wal-after-append-before-fsync,"), "the refusal lists the known names: \(error)")
    }
  }

  /// Whatever the variable holds, parsing answers: a value or an error, never a trap. Every
  /// string of up to four symbols from a small alphabet, and every one-symbol mutation and
  /// truncation of a good value.
  func testArbitraryValuesNeverTrap() {
    let alphabet: [Character] = [":", ",", "1", "a", " ", "é"]
    var values: [String] = [""]
    var shorter: [String] = [""]
    let lengthMax = 4
    for _ in 0..<lengthMax {
      shorter = shorter.flatMap { prefix in alphabet.map { prefix + String($0) } }
      values += shorter
    }
    let good = Array("wal-fsync:eio:3,snapshot-save:crash:12")
    for position in good.indices {
      values.append(String(good[..<position]))
      values.append(String(good[..<position] + good[(position + 1)...]))
      for symbol in alphabet + ["0", "-", "\u{0}"] {
        var mutated = good
        mutated[position] = symbol
        values.append(String(mutated))
      }
    }
    var accepted = 0
    for value in values where (try? Failpoints.parse(value)) != nil { accepted += 1 }
    XCTAssertGreaterThan(values.count, 1_000)
    XCTAssertGreaterThan(accepted, 0, "blank values and harmless mutations (another digit) parse")
  }

  func testAPointFiresOnItsHitOnlyAndCountsFromItsArming() {
    let point = Failpoint(name: "test-point", actions: [.crash])
    for _ in 0..<5 { XCTAssertNil(point.countPass(), "disarmed: nothing happens, nothing is counted") }
    XCTAssertFalse(point.isArmed)
    point.arm(.crash, hit: 3)
    XCTAssertTrue(point.isArmed)
    let outcomes = (1...6).map { _ in point.countPass() }
    XCTAssertEqual(outcomes, [nil, nil, .crash, nil, nil, nil], "the third pass after arming, and only it")
  }

  func testParsedArmingsArmTheirOwnPointsOnly() throws {
    let target = Failpoint(name: "io-point", actions: [.crash, .eio])
    let bystander = Failpoint(name: "bystander", actions: [.crash])
    let armings = try Failpoints.parse("io-point:eio:2", points: [target, bystander])
    XCTAssertThrowsError(try Failpoints.parse("wal-fsync:eio:2", points: [target, bystander]), "other lists' names are unknown")
    for arming in armings { arming.point.arm(arming.action, hit: arming.hit) }
    XCTAssertTrue(target.isArmed)
    XCTAssertFalse(bystander.isArmed)
    bystander.pass()  // disarmed: returns
  }

  func testAnEIOPointFailsTheCallOnItsHitWithEIOAndPassesTheOthers() throws {
    let point = Failpoint(name: "io-point", actions: [.crash, .eio])
    point.arm(.eio, hit: 2)
    var calls = 0
    func fakeSync() throws(SystemError) {
      try point.passIO(call: "fdatasync", context: "/nowhere/wal.log")
      calls += 1
    }
    XCTAssertNoThrow(try fakeSync())
    XCTAssertThrowsError(try fakeSync()) { error in
      let failure = error as? SystemError
      XCTAssertEqual(failure?.errno, EIO)
      XCTAssertEqual(failure?.call, "fdatasync")
      XCTAssertEqual(failure?.context, "/nowhere/wal.log (failpoint io-point)")
    }
    XCTAssertNoThrow(try fakeSync())
    XCTAssertEqual(calls, 2, "the failing pass does not make the call")
  }

  /// Passes from several threads at once: exactly one of them is the hit.
  func testConcurrentPassesFireExactlyOnce() {
    let point = Failpoint(name: "shared-point", actions: [.crash])
    let threadsCount = 4
    let passesPerThread = 20_000
    point.arm(.crash, hit: threadsCount * passesPerThread / 2)
    let fired = Locked<Int>(0)
    let threads = (0..<threadsCount).map { index in
      OSThread(name: "passer-\(index)") {
        var mine = 0
        for _ in 0..<passesPerThread where point.countPass() != nil { mine += 1 }
        fired.withLock { $0 += mine }
      }
    }
    for thread in threads { thread.join() }
    XCTAssertEqual(fired.withLock { $0 }, 1)
  }
}
