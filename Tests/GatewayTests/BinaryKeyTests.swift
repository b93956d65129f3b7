import Consensus
import Foundation
@testable import Gateway
import HTTPServer
import JSON
import KeyValueStore
import Platform
import StandaloneConsensus
import XCTest

/// Issue 13, point 5d: keys that are not UTF-8 (listed back as `"keyBase64"`) can be named in every
/// request that names a key or a bound: `?prefixBase64=`/`?afterBase64=` on listings and watches,
/// `"keyBase64"` in batches and reads, `"prefixBase64"`/`"afterBase64"` in read lists. Giving both
/// forms, or base64 that does not decode, is `400 invalid_key` and changes nothing.
final class BinaryKeyTests: XCTestCase {
  private var fixture: StandaloneGateway!
  private let group = "/v1/groups/DataRegion-0"

  override func setUpWithError() throws { fixture = try StandaloneGateway(label: "binary-keys") }
  override func tearDown() { fixture.stop() }

  private func send(_ method: String, _ target: String, _ body: String = "") -> (status: Int, json: [String: Any], text: String) {
    let response = fixture.send(method, target, body: Array(body.utf8))
    let json = ((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]) ?? [:]
    return (response.status, json, String(decoding: response.body, as: UTF8.self))
  }

  private func base64(_ bytes: [UInt8]) -> String { String(decoding: Base64.encode(bytes), as: UTF8.self) }

  /// The keys of a listing or a read's list result, as bytes, whichever form each was answered in.
  private func keys(_ items: Any?) -> [[UInt8]] {
    ((items as? [[String: Any]]) ?? []).map { item in
      if let text = item["key"] as? String { return Array(text.utf8) }
      return Base64.decode(Array((item["keyBase64"] as? String ?? "!").utf8)) ?? [0xEE, 0xEE]
    }
  }

  private var appliedIndex: UInt64 { fixture.engine.status(GroupID(.dataRegion, 0))?.appliedIndex ?? 0 }

  func testBinaryKeysAreNamedInBase64InListingsBatchesReadsAndWatches() {
    let prefix: [UInt8] = [0xFF, 0x00]
    let first = prefix + [0x01], second = prefix + [0x02], third = prefix + [0x80]
    // A batch names two binary keys in base64; a path names the third percent-encoded.
    let batch = send(
      "POST", "\(group)/write",
      #"{"ops":[{"op":"put","keyBase64":"\#(base64(first))","value":"one"},{"op":"put","keyBase64":"\#(base64(second))","value":"two"}]}"#)
    XCTAssertEqual(batch.status, 200, batch.text)
    XCTAssertEqual(send("PUT", "\(group)/kv/%FF%00%80", "three").status, 200)
    XCTAssertEqual(send("PUT", "\(group)/kv/plain", "text").status, 200)

    // The listing under a binary prefix, a page at a time: afterBase64 continues after the last key.
    let page = send("GET", "\(group)/kv?prefixBase64=\(base64(prefix))&limit=2")
    XCTAssertEqual(page.status, 200, page.text)
    XCTAssertEqual(keys(page.json["items"]), [first, second])
    XCTAssertEqual(page.json["more"] as? Bool, true)
    let next = send("GET", "\(group)/kv?prefixBase64=\(base64(prefix))&afterBase64=\(base64(second))")
    XCTAssertEqual(keys(next.json["items"]), [third], next.text)
    XCTAssertEqual(next.json["more"] as? Bool, false)

    // A generic read: a get by keyBase64 and a list by prefixBase64 and afterBase64.
    let read = send(
      "POST", "\(group)/read",
      #"{"ops":[{"op":"get","keyBase64":"\#(base64(second))"},{"op":"list","prefixBase64":"\#(base64(prefix))","afterBase64":"\#(base64(first))"}]}"#)
    XCTAssertEqual(read.status, 200, read.text)
    let results = read.json["results"] as? [[String: Any]] ?? []
    XCTAssertEqual(results.first?["value"] as? String, "two", read.text)
    XCTAssertEqual(keys(results.last?["items"]), [second, third], read.text)

    // A watch under the binary prefix sees the three binary keys' changes, not the plain key's.
    let watch = send("GET", "\(group)/watch?prefixBase64=\(base64(prefix))&fromIndex=0&timeoutMs=5000")
    XCTAssertEqual(watch.status, 200, watch.text)
    XCTAssertEqual(keys(watch.json["events"]), [first, second, third], watch.text)

    // A delete by keyBase64.
    let delete = send("POST", "\(group)/write", #"{"ops":[{"op":"delete","keyBase64":"\#(base64(first))"}]}"#)
    XCTAssertEqual(delete.status, 200, delete.text)
    XCTAssertEqual(keys(send("GET", "\(group)/kv?prefixBase64=\(base64(prefix))").json["items"]), [second, third])
  }

  func testBothFormsOrBadBase64AreInvalidKeyAndChangeNothing() {
    XCTAssertEqual(send("PUT", "\(group)/kv/a", "1").status, 200)
    let before = appliedIndex
    let refused: [(String, String, String)] = [
      ("GET", "\(group)/kv?prefix=a&prefixBase64=YQ==", ""),
      ("GET", "\(group)/kv?afterBase64=not-base64", ""),
      ("GET", "\(group)/kv?prefixBase64=YQ", ""),  // unpadded
      ("GET", "\(group)/watch?prefixBase64=%2A%2A%2A%2A&timeoutMs=0", ""),
      ("POST", "\(group)/write", #"{"ops":[{"op":"put","key":"a","keyBase64":"YQ==","value":"2"}]}"#),
      ("POST", "\(group)/write", #"{"ops":[{"op":"put","keyBase64":"YQ=","value":"2"}]}"#),
      ("POST", "\(group)/write", #"{"ops":[{"op":"put","keyBase64":"","value":"2"}]}"#),  // an empty key
      ("POST", "\(group)/read", #"{"ops":[{"op":"list","prefix":"a","prefixBase64":"YQ=="}]}"#),
      ("POST", "\(group)/read", #"{"ops":[{"op":"get","keyBase64":"***"}]}"#),
    ]
    for (method, target, body) in refused {
      let answer = send(method, target, body)
      XCTAssertEqual(answer.status, 400, "\(method) \(target) \(body): \(answer.text)")
      XCTAssertEqual(answer.json["error"] as? String, "invalid_key", "\(method) \(target) \(body): \(answer.text)")
    }
    // A key past the limit is refused in base64 as in text.
    let long = base64([UInt8](repeating: 0xAB, count: KVLimits.keyBytesMax + 1))
    let tooLong = send("POST", "\(group)/write", #"{"ops":[{"op":"put","keyBase64":"\#(long)","value":"x"}]}"#)
    XCTAssertEqual(tooLong.status, 400, tooLong.text)
    XCTAssertEqual(appliedIndex, before, "no refused request wrote anything")
    XCTAssertEqual(send("GET", "\(group)/kv/a").json["value"] as? String, "1")
  }
}
