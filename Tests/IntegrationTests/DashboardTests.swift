import Foundation
import Glibc
import Platform
import XCTest

/// The dashboard (`GET /ui`) in a real headless Chromium, driven through chromedriver's W3C
/// WebDriver protocol, against a live three-node raft cluster: the page shows the leader the API
/// reports, and after that leader is killed the same page, without a reload, shows the new one
/// and the killed node unreachable; the group's detail view shows each peer's replication; and
/// when the node serving the page dies, a banner says it cannot read the cluster.
final class DashboardTests: XCTestCase {
  private var nodes: [NodeProcess] = []
  private var directories: [String] = []

  override func tearDown() { removeNodes(nodes, directories) }

  func testThePageShowsTheLeaderAndFollowsItWhenTheLeaderIsKilled() throws {
    let browser = try WebDriverBrowser.start()
    defer { browser.quit() }

    (nodes, directories) = clusterNodes(3, label: "dashboard")
    for node in nodes { try node.start() }
    let group = "DataRegion-0"
    let first = try XCTUnwrap(agreedLeader(nodes, among: [0, 1, 2], group: group))
    for sequence in 0..<5 {
      let written = try HTTPClient(port: nodes[first].port).request("PUT", "/v1/groups/\(group)/kv/k\(sequence)", text: "v")
      XCTAssertEqual(written.status, 200, written.text)
    }
    // The page is served by a node that stays up: node 2, unless it is the one to be killed.
    let viewer = first == 1 ? 2 : 1
    try browser.navigate(to: "http://127.0.0.1:\(nodes[viewer].port)/ui")

    let leaderCell = "document.querySelector('#groups tr[data-group=\"\(group)\"] [data-leader]')"
    let shownLeader = "const cell = \(leaderCell); return cell ? cell.dataset.leader : null;"
    try browser.waitUntil("the page to show node \(first + 1) leading \(group)") {
      try browser.evaluate(shownLeader) as? String == String(first + 1)
    }
    XCTAssertEqual(try browser.evaluate("return document.getElementById('banner').hidden;") as? Bool, true)
    XCTAssertEqual(
      try browser.evaluate("return document.querySelectorAll('#nodes tr[data-node][data-reachable=\"true\"]').length;") as? Int, 3)
    let refreshedBefore = try browser.evaluate("return document.getElementById('refreshed').dataset.refreshedAt;") as? String
    // A mark on this document: a reload would lose it.
    try browser.evaluate("window.dashboardTestMark = 'before the kill'; return null;")

    nodes[first].kill(SIGKILL)
    let survivors = [0, 1, 2].filter { $0 != first }
    let second = try XCTUnwrap(agreedLeader(nodes, among: survivors, group: group))
    XCTAssertNotEqual(second, first)
    try browser.waitUntil("the same page to show node \(second + 1) leading and node \(first + 1) unreachable") {
      let leader = try browser.evaluate(shownLeader) as? String
      let reachable = try browser.evaluate(
        "const row = document.querySelector('#nodes tr[data-node=\"\(first + 1)\"]'); return row ? row.dataset.reachable : null;")
      return leader == String(second + 1) && reachable as? String == "false"
    }
    let refreshedAfter = try browser.evaluate("return document.getElementById('refreshed').dataset.refreshedAt;") as? String
    XCTAssertNotEqual(refreshedAfter, refreshedBefore, "the page refreshed by itself")
    XCTAssertEqual(try browser.evaluate("return document.getElementById('banner').hidden;") as? Bool, true)
    XCTAssertEqual(try browser.evaluate("return window.dashboardTestMark;") as? String, "before the kill", "never reloaded")

    // The group's detail view, by its hash route on the same page. A group's status is answered
    // by the node asked (a follower answers for itself), so the view says whose figures they are
    // and, on a follower, links the leader's view.
    try browser.evaluate("location.hash = '#/groups/\(group)'; return null;")
    try browser.waitUntil("the detail view of \(group) on node \(viewer + 1) to name node \(second + 1) its leader") {
      try browser.evaluate(
        "const fact = document.querySelector('#detail-summary [data-field=\"leader\"]'); return fact ? fact.textContent : null;")
        as? String == String(second + 1)
    }
    XCTAssertEqual(try browser.evaluate("return document.getElementById('overview').hidden;") as? Bool, true)
    XCTAssertEqual(
      try browser.evaluate("return !document.getElementById('detail-note').hidden;") as? Bool, viewer != second,
      "the note shows exactly when a follower answered")
    // A follower's view names the leader and links its view.
    let follower = try XCTUnwrap(survivors.first { $0 != second })
    try browser.navigate(to: "http://127.0.0.1:\(nodes[follower].port)/ui#/groups/\(group)")
    let leaderLink = "const link = document.querySelector('#detail-note a[data-leader-view]'); return link ? link.getAttribute('href') : null;"
    try browser.waitUntil("node \(follower + 1)'s view to link the leader's") {
      try browser.evaluate(leaderLink) as? String == "http://127.0.0.1:\(nodes[second].port)/ui#/groups/\(group)"
    }
    XCTAssertEqual(try browser.evaluate("return document.getElementById('detail-note').hidden;") as? Bool, false)

    // The leader's view: every member's replication; the surviving follower caught up with the
    // writes, the killed one listed too.
    try browser.navigate(to: "http://127.0.0.1:\(nodes[second].port)/ui#/groups/\(group)")
    let peerRow = "document.querySelector('#peers tr[data-peer=\"\(follower + 1)\"]')"
    try browser.waitUntil("the leader's view to show node \(follower + 1) replicating") {
      let row = try browser.evaluate(
        """
        const row = \(peerRow);
        if (!row) return null;
        return [row.dataset.state, row.querySelector('[data-field=matchIndex]').textContent];
        """) as? [Any]
      guard let row, row.count == 2, let matchIndex = Int(row[1] as? String ?? "") else { return false }
      return row[0] as? String == "replicate" && matchIndex >= 5
    }
    XCTAssertEqual(try browser.evaluate("return document.getElementById('detail-note').hidden;") as? Bool, true)
    XCTAssertEqual(
      try browser.evaluate("return document.querySelectorAll('#peers tr[data-peer]').length;") as? Int, 3,
      "every member, the killed one too")
    let killedState = try browser.evaluate("return document.querySelector('#peers tr[data-peer=\"\(first + 1)\"]').dataset.state;")
    XCTAssertTrue(["probe", "replicate", "snapshot"].contains(killedState as? String ?? ""), "\(String(describing: killedState))")

    // The node serving the page goes away: the page keeps what it showed and says it cannot
    // read the cluster.
    nodes[second].kill(SIGKILL)
    try browser.waitUntil("the banner saying the page's node cannot read the cluster") {
      let banner = try browser.evaluate(
        "const banner = document.getElementById('banner'); return banner.hidden ? null : banner.textContent;") as? String
      return banner?.contains("cannot read the cluster") == true
    }
    XCTAssertEqual(try browser.evaluate("return document.getElementById('status').dataset.state;") as? String, "error")
    XCTAssertEqual(
      try browser.evaluate("return document.querySelectorAll('#peers tr[data-peer]').length;") as? Int, 3, "what it showed stays")
  }

  /// With tokens on, the page loads (it carries no data) but its requests are refused: it shows
  /// no data and asks for a token; a read token typed into its field is kept for the tab and
  /// the data appears.
  func testWithTokensThePageAsksForOneAndThenShowsTheCluster() throws {
    let browser = try WebDriverBrowser.start()
    defer { browser.quit() }

    let directory = temporaryDirectory("dashboard-auth")
    let tokensPath = directory + ".tokens.json"
    directories = [directory, tokensPath]
    try writeTokensFile(tokensPath, [("viewer", "read", "viewer-token", "")])
    let node = NodeProcess(dataDirectory: directory)
    nodes = [node]
    try node.start(["--auth-tokens-file", tokensPath])
    XCTAssertEqual(try HTTPClient(port: node.port).request("GET", "/v1/cluster").status, 401)

    try browser.navigate(to: "http://127.0.0.1:\(node.port)/ui")
    try browser.waitUntil("the page to ask for a token") {
      try browser.evaluate("return !document.getElementById('auth').hidden && !document.getElementById('banner').hidden;")
        as? Bool == true
    }
    XCTAssertEqual(try browser.evaluate("return document.querySelectorAll('#groups tr[data-group]').length;") as? Int, 0)
    try browser.type("viewer-token", into: "#token-input")
    try browser.click("#auth button[type=submit]")
    try browser.waitUntil("the page to show DataRegion-0 led by node 1") {
      try browser.evaluate(
        "const cell = document.querySelector('#groups tr[data-group=\"DataRegion-0\"] [data-leader]'); return cell ? cell.dataset.leader : null;"
      ) as? String == "1"
    }
    XCTAssertEqual(try browser.evaluate("return document.getElementById('auth').hidden;") as? Bool, true)
    XCTAssertEqual(try browser.evaluate("return document.getElementById('banner').hidden;") as? Bool, true)
    XCTAssertEqual(
      try browser.evaluate("return sessionStorage.getItem('caucus.dashboard.token');") as? String, "viewer-token",
      "kept for the tab")
  }
}

/// A headless Chromium session through chromedriver (W3C WebDriver over HTTP), for tests.
final class WebDriverBrowser {
  static let chromiumPath = "/usr/bin/chromium"
  static let chromedriverPath = "/usr/bin/chromedriver"
  /// How long chromedriver may take to answer `/status` after it starts.
  static let startSecondsMax = 20.0
  /// How long a condition on the page may take to hold.
  static let waitSecondsMax = 30.0

  private let driver: Process
  private let port: UInt16
  private let profileDirectory: String
  private let logPath: String
  private var sessionID: String?

  private init(driver: Process, port: UInt16, profileDirectory: String, logPath: String) {
    self.driver = driver
    self.port = port
    self.profileDirectory = profileDirectory
    self.logPath = logPath
  }

  /// Starts chromedriver on a free port and opens a session in a fresh headless profile. Throws,
  /// naming the fix, when chromium or chromedriver is missing: the test fails, never skips.
  static func start() throws -> WebDriverBrowser {
    for path in [chromiumPath, chromedriverPath] where !FileManager.default.isExecutableFile(atPath: path) {
      throw HTTPClientError(
        description: "\(path) is missing: the dashboard's browser test needs Debian's chromium and chromium-driver; "
          + "run scripts/install-deps.sh")
    }
    let port = freePort()
    let profileDirectory = temporaryDirectory("chromium-profile")
    let logPath = profileDirectory + ".chromedriver.log"
    _ = FileManager.default.createFile(atPath: logPath, contents: nil)
    let driver = Process()
    driver.executableURL = URL(fileURLWithPath: chromedriverPath)
    driver.arguments = ["--port=\(port)", "--log-path=\(logPath)"]
    driver.standardOutput = FileHandle.nullDevice
    driver.standardError = FileHandle.nullDevice
    try driver.run()
    let browser = WebDriverBrowser(driver: driver, port: port, profileDirectory: profileDirectory, logPath: logPath)
    do {
      try browser.waitUntil("chromedriver on port \(port) to be ready", seconds: startSecondsMax) {
        guard driver.isRunning else { throw HTTPClientError(description: "chromedriver exited: \(browser.log())") }
        let status = try? HTTPClient(port: port).request("GET", "/status")
        return ((status?.json["value"] as? [String: Any])?["ready"] as? Bool) == true
      }
      let options: [String: Any] = [
        "binary": chromiumPath,
        "args": [
          "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--user-data-dir=\(profileDirectory)", "--window-size=1280,900",
        ],
      ]
      let created = try browser.command("POST", "/session", ["capabilities": ["alwaysMatch": ["goog:chromeOptions": options]]])
      guard let session = (created as? [String: Any])?["sessionId"] as? String else {
        throw HTTPClientError(description: "chromedriver created no session: \(String(describing: created))")
      }
      browser.sessionID = session
    } catch {
      browser.quit()
      throw error
    }
    return browser
  }

  /// Ends the session (closing Chromium), stops chromedriver and removes the profile.
  func quit() {
    if let sessionID {
      _ = try? command("DELETE", "/session/\(sessionID)", nil)
      self.sessionID = nil
    }
    if driver.isRunning {
      driver.terminate()
      driver.waitUntilExit()
    }
    try? FileManager.default.removeItem(atPath: profileDirectory)
    try? FileManager.default.removeItem(atPath: logPath)
  }

  func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)).map { String($0.suffix(4000)) } ?? "" }

  func navigate(to url: String) throws {
    _ = try command("POST", try sessionPath("/url"), ["url": url])
  }

  /// Types `text` into the element `selector` finds, as a user would.
  func type(_ text: String, into selector: String) throws {
    _ = try command("POST", try sessionPath("/element/\(try element(selector))/value"), ["text": text])
  }

  func click(_ selector: String) throws {
    _ = try command("POST", try sessionPath("/element/\(try element(selector))/click"), [:])
  }

  /// The WebDriver id of the element `selector` finds.
  private func element(_ selector: String) throws -> String {
    let found = try command("POST", try sessionPath("/element"), ["using": "css selector", "value": selector])
    // W3C WebDriver's web element identifier.
    guard let id = (found as? [String: Any])?["element-6066-11e4-a52e-4f735466cecf"] as? String else {
      throw HTTPClientError(description: "no element \(selector): \(String(describing: found))")
    }
    return id
  }

  /// Runs `script` (a function body: `return …`) in the page and answers its JSON result.
  @discardableResult
  func evaluate(_ script: String) throws -> Any? {
    try command("POST", try sessionPath("/execute/sync"), ["script": script, "args": [Any]()])
  }

  /// Polls `condition` until it holds; throws (with the page's text) at the deadline.
  func waitUntil(_ what: String, seconds: Double = waitSecondsMax, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if try condition() { return }
      usleep(100_000)
    }
    let page = sessionID == nil ? nil : try? evaluate("return document.body.innerText;")
    throw HTTPClientError(description: "timed out after \(seconds) s waiting for \(what); the page shows:\n\(page ?? "nothing")")
  }

  private func sessionPath(_ suffix: String) throws -> String {
    guard let sessionID else { throw HTTPClientError(description: "no WebDriver session") }
    return "/session/\(sessionID)\(suffix)"
  }

  /// One WebDriver command: its `value`, or an error naming WebDriver's error and message.
  private func command(_ method: String, _ path: String, _ body: [String: Any]?) throws -> Any? {
    let bytes = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) } ?? []
    let reply = try HTTPClient(port: port).request(
      method, path, headers: body == nil ? [:] : ["Content-Type": "application/json; charset=utf-8"], body: bytes)
    let value = reply.json["value"]
    guard reply.status == 200 else {
      let error = value as? [String: Any]
      throw HTTPClientError(
        description: "WebDriver \(method) \(path): \(reply.status) \(error?["error"] ?? "") \(error?["message"] ?? reply.text)")
    }
    return value is NSNull ? nil : value
  }
}
