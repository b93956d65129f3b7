import Consensus
import Foundation
@testable import Gateway
import HTTPServer
import JSON
import KeyValueStore
import Platform
import StandaloneConsensus
import XCTest

/// `GET /ui`: one self-contained page whose Content-Security-Policy allows exactly its own inline
/// style and script. The page's behaviour is tested in a browser (IntegrationTests'
/// DashboardTests); this checks what the gateway serves.
final class DashboardPageTests: XCTestCase {
  private var fixture: StandaloneGateway!

  override func setUpWithError() throws { fixture = try StandaloneGateway(label: "dashboard", groups: []) }
  override func tearDown() { fixture.stop() }

  private func send(_ method: String, _ target: String) -> HTTPResponse { fixture.send(method, target) }

  /// The text between `<tag>` and `</tag>` in `page`: the one such element.
  private func inlineElement(_ tag: String, in page: String) throws -> String {
    let opening = "<\(tag)>"
    let closing = "</\(tag)>"
    XCTAssertEqual(page.components(separatedBy: opening).count, 2, "exactly one <\(tag)>")
    let start = try XCTUnwrap(page.range(of: opening)).upperBound
    let end = try XCTUnwrap(page.range(of: closing, range: start..<page.endIndex)).lowerBound
    return String(page[start..<end])
  }

  func testThePageIsServedWithItsHeadersAndAPolicyThatAllowsOnlyItsOwnStyleAndScript() throws {
    let response = send("GET", "/ui")
    XCTAssertEqual(response.status, 200)
    XCTAssertEqual(response.header("Content-Type"), "text/html; charset=utf-8")
    XCTAssertEqual(response.header("Cache-Control"), "no-cache")
    XCTAssertEqual(response.header("X-Content-Type-Options"), "nosniff")
    XCTAssertEqual(response.header("X-Caucus-Node"), "1")
    let page = String(decoding: response.body, as: UTF8.self)
    XCTAssertTrue(page.hasPrefix("<!doctype html>"), String(page.prefix(100)))

    let policy = try XCTUnwrap(response.header("Content-Security-Policy"))
    let directives = Dictionary(
      uniqueKeysWithValues: policy.split(separator: ";").map { directive -> (String, String) in
        let words = directive.split(separator: " ", maxSplits: 1).map(String.init)
        return (words[0], words.count > 1 ? words[1] : "")
      })
    XCTAssertEqual(directives["default-src"], "'none'")
    XCTAssertEqual(directives["connect-src"], "'self'")
    XCTAssertEqual(directives["frame-ancestors"], "'none'")
    // The hashes are of the served elements' exact text: the browser runs them, nothing else.
    func hash(_ text: String) -> String {
      "'sha256-" + String(decoding: Base64.encode(SHA256.hash(Array(text.utf8))), as: UTF8.self) + "'"
    }
    XCTAssertEqual(directives["script-src"], hash(try inlineElement("script", in: page)))
    XCTAssertEqual(directives["style-src"], hash(try inlineElement("style", in: page)))
  }

  /// No external assets, no markup built from data, and only relative requests (any node,
  /// any path prefix a proxy puts it under, serves the page).
  func testThePageIsSelfContainedAndWritesDataOnlyAsText() throws {
    let page = String(decoding: send("GET", "/ui").body, as: UTF8.self)
    for external in ["<link", " src=", "url(", "@import", "http://", "https://", "//cdn"] {
      XCTAssertFalse(page.contains(external), "the page refers to something outside itself: \(external)")
    }
    for unsafe in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", " style=", " onclick="] {
      XCTAssertFalse(page.contains(unsafe), "the page uses \(unsafe)")
    }
    XCTAssertTrue(page.contains("getJSON('v1/cluster')"), "the cluster is read with a relative URL")
    XCTAssertFalse(page.contains("'/v1/"), "no absolute API paths")
  }

  func testHeadMirrorsGetAndOtherMethodsAreRefused() {
    let head = send("HEAD", "/ui")
    XCTAssertEqual(head.status, 200)
    XCTAssertEqual(head.header("Content-Type"), "text/html; charset=utf-8")
    let post = send("POST", "/ui")
    XCTAssertEqual(post.status, 405)
    XCTAssertEqual(post.header("Allow"), "GET, HEAD")
    XCTAssertEqual(send("GET", "/ui/x").status, 404)
  }

  func testTheServiceIndexLinksTheDashboard() throws {
    let index = try JSONParser.parse(send("GET", "/").body)
    XCTAssertEqual(index["links"]?["dashboard"]?.stringValue, "/ui")
  }
}
