import Consensus
@testable import Gateway
import JSON
import XCTest

/// Who may take leadership, from every node's group summaries (issue 11's leader balance).
final class ClusterLeadershipTests: XCTestCase {
  private func summaries(_ text: String) -> [JSONValue] { (try! JSONParser.parse(Array(text.utf8))).arrayValue! }

  private let peers = #"[{"id":1,"endpoint":"a:1","learner":false},{"id":2,"endpoint":"a:2","learner":false},{"id":3,"endpoint":"a:3","learner":true}]"#

  func testCandidatesAreTheLeadersVotersThatAnsweredAndHostTheGroup() {
    let members = (1...4).map { Peer(node: NodeID(UInt64($0)), endpoint: Endpoint(host: "a", port: UInt16($0))) }
    let view = ClusterLeadership(
      members: members,
      summaries: [
        NodeID(1): summaries(#"[{"id":"DataRegion-1","role":"leader","term":3,"peers":\#(peers)},{"id":"DataRegion-2","role":"follower","term":1,"peers":[]}]"#),
        NodeID(2): summaries(#"[{"id":"DataRegion-1","role":"follower","term":3,"peers":\#(peers)},{"id":"DataRegion-2","role":"follower","term":1,"peers":[]}]"#),
        NodeID(3): summaries(#"[{"id":"DataRegion-1","role":"leader","term":2,"peers":\#(peers)}]"#),
      ])
    XCTAssertEqual(view.reachable, [NodeID(1), NodeID(2), NodeID(3)])
    XCTAssertEqual(view.unreachable, [NodeID(4)])
    // Node 3 is a learner (and a deposed leader of an older term): it may not lead.
    XCTAssertEqual(view.groups, [BalancedGroup(id: GroupID(.dataRegion, 1), leader: NodeID(1), candidates: [NodeID(2)])])
    XCTAssertEqual(view.leaderless, 1, "DataRegion-2 has no leader")
  }
}
