import Consensus
import Directory
import Gateway
import XCTest

/// A node with TLS advertises `https://`; the directory takes it as it takes `http://`.
final class ClientURLTests: XCTestCase {
  func testHTTPSClientURLsAreRecordedLikeHTTPOnes() throws {
    for url in ["http://10.0.0.4:6667", "https://10.0.0.4:6667", "https://node-4.example:443"] {
      XCTAssertTrue(DirectoryRecords.isClientURL(url), url)
      let node = DirectoryNode(id: NodeID(4), clientURL: url, consensusEndpoint: Endpoint(host: "10.0.0.4", port: 40010))
      XCTAssertEqual(try DirectoryRecords.decodeNode(DirectoryRecords.encode(node)), node)
    }
    for url in ["https://", "http://", "https://a:1/", "https:/a:1", "httpss://a:1", "https://a b:1"] {
      XCTAssertFalse(DirectoryRecords.isClientURL(url), url)
    }
  }
}
