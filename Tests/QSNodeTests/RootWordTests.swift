@testable import QSNode
import XCTest

/// The root's word through one subscription (`ReplicaService.RootWord`): never ahead of
/// this node's clock, and a time ahead of it counts only when it advances.
final class RootWordTests: XCTestCase {
    let s: UInt64 = 1_000_000_000

    func testATimeAtOrBeforeNowIsTheWordAndItAgesWhenItStandsStill() {
        var w = ReplicaService.RootWord(since: 100 * s)
        XCTAssertEqual(w.heard(99 * s, now: 100 * s), 99 * s)
        XCTAssertEqual(w.heard(99 * s, now: 105 * s), 99 * s)
        XCTAssertEqual(w.age(now: 105 * s), 6, accuracy: 1e-9)
    }

    func testATimeAheadCountsAsNowOnlyWhenItAdvances() {
        var w = ReplicaService.RootWord(since: 100 * s)
        // The first word ahead says nothing: it may be a frozen time from a dead root.
        XCTAssertNil(w.heard(3_700 * s, now: 100 * s))
        XCTAssertEqual(w.age(now: 103 * s), 3, accuracy: 1e-9, "aged from the subscription's start")
        XCTAssertNil(w.heard(3_700 * s, now: 104 * s), "frozen ahead: no word")
        // A root whose clock is ahead and alive: it advances, taken as now.
        XCTAssertEqual(w.heard(3_701 * s, now: 105 * s), 105 * s)
        XCTAssertEqual(w.age(now: 105 * s), 0)
        XCTAssertNil(w.heard(3_701 * s, now: 110 * s))
        XCTAssertEqual(w.age(now: 110 * s), 5, accuracy: 1e-9)
        // Never backwards.
        XCTAssertEqual(w.heard(90 * s, now: 111 * s), 105 * s)
    }
}
