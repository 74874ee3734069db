import XCTest
@testable import QSNode

/// The rules by which a cluster member's `/readyz` says its watch does not follow
/// (docs/ha.md, "A member's etcd stops"), at given instants.
final class ApplyLagTests: XCTestCase {
    let t0 = ContinuousClock.now

    let limits = ApplyLag.Limits(grace: .milliseconds(500), quietLimit: .seconds(2), behindLimit: .seconds(5), leftAfter: .seconds(11))

    func problem(_ lag: ApplyLag, applied: Int64, at offset: Duration) -> String? {
        lag.problem(applied: applied, now: t0 + offset)
    }

    func testARevisionTheWatchDeliversInTimeSaysNothing() {
        var lag = ApplyLag(limits: limits, now: t0)
        lag.committed(10, applied: 9, now: t0 + .seconds(3))
        // Just known, though nothing came for 3 s (one member, idle): the watch has its moment.
        XCTAssertNil(problem(lag, applied: 9, at: .milliseconds(3400)))
        lag.applied(10, advanced: true, now: t0 + .milliseconds(3450))
        XCTAssertNil(problem(lag, applied: 10, at: .seconds(10)))
        // A revision already applied is never pending.
        lag.committed(10, applied: 10, now: t0 + .seconds(11))
        XCTAssertNil(problem(lag, applied: 10, at: .seconds(20)))
    }

    func testAQuietWatchBehindAKnownRevisionIsNotFollowing() {
        var lag = ApplyLag(limits: limits, now: t0)
        lag.committed(20, applied: 12, now: t0 + .seconds(1))
        XCTAssertNil(problem(lag, applied: 12, at: .milliseconds(1400)), "known for less than the grace")
        XCTAssertNil(problem(lag, applied: 12, at: .milliseconds(1900)), "quiet for less than an applied/ interval")
        let p = problem(lag, applied: 12, at: .milliseconds(2100))
        XCTAssertEqual(p, "not following etcd: its watch has delivered nothing for 2.1 s (this member stands at etcd revision 12) "
            + "while etcd committed this member's own write at revision 20; a watch quiet for 11.0 s is left for another etcd URL")
        // The watch delivers part of it: moving again is not following until it reaches 20.
        lag.applied(15, advanced: true, now: t0 + .milliseconds(2200))
        XCTAssertEqual(problem(lag, applied: 15, at: .seconds(4)), "catching up with etcd: its watch delivers again and has yet to reach "
            + "revision 20, this member's own write known while it did not follow (this member stands at etcd revision 15)")
        lag.applied(17, advanced: true, now: t0 + .milliseconds(5500))
        XCTAssertTrue(problem(lag, applied: 17, at: .seconds(6))?.hasPrefix("behind etcd: its write committed at revision 20 5.0 s ago") == true)
        lag.applied(20, advanced: true, now: t0 + .seconds(6))
        XCTAssertNil(problem(lag, applied: 20, at: .seconds(6)))
    }

    func testAWatchThatMovesSlowlyIsBehindOnlyAfterTheBehindLimit() {
        var lag = ApplyLag(limits: limits, now: t0)
        lag.committed(20, applied: 12, now: t0 + .seconds(1))
        lag.applied(15, advanced: true, now: t0 + .milliseconds(1300))
        lag.applied(17, advanced: true, now: t0 + .seconds(3))
        XCTAssertNil(problem(lag, applied: 17, at: .seconds(4)), "moving, and 20 known for less than the behind limit")
        lag.applied(18, advanced: true, now: t0 + .milliseconds(4500))
        XCTAssertTrue(problem(lag, applied: 18, at: .seconds(6))?.hasPrefix("behind etcd: its write committed at revision 20 5.0 s ago") == true)
        lag.applied(19, advanced: true, now: t0 + .seconds(6))
        XCTAssertNotNil(problem(lag, applied: 19, at: .seconds(6)), "behind until it reaches 20")
        lag.applied(20, advanced: true, now: t0 + .milliseconds(6100))
        XCTAssertNil(problem(lag, applied: 20, at: .milliseconds(6100)))
    }

    /// The stuck watch of `ClusterFaultTests.testReadinessSays503WhileAMembersWatchIsStuck`:
    /// the member's own writes commit through another etcd member at 40 and, later, at 50;
    /// between them (41…49) other members' writes. When its watch delivers again, it says
    /// nothing until it has reached 50: once past 40 the watch moves and 50 is freshly
    /// known, which used to say 200 with 41…49 still on their way.
    func testAWatchThatDeliversAgainAfterBeingStuckFollowsOnceItReachesWhatWasKnownMeanwhile() {
        var lag = ApplyLag(limits: limits, now: t0)
        lag.appliedWriteFailed(now: t0 + .seconds(1))
        lag.appliedWriteCommitted(40, applied: 6, now: t0 + .seconds(3))
        XCTAssertTrue(problem(lag, applied: 6, at: .seconds(3))?.hasPrefix("not following etcd: its watch has delivered nothing for 3.0 s") == true)
        lag.appliedWriteCommitted(50, applied: 6, now: t0 + .seconds(5))
        lag.applied(7, advanced: true, now: t0 + .milliseconds(5050))
        XCTAssertTrue(problem(lag, applied: 7, at: .milliseconds(5100))?.hasPrefix("catching up with etcd: its watch delivers again and has yet to reach revision 50") == true)
        lag.applied(40, advanced: true, now: t0 + .milliseconds(5300))
        XCTAssertEqual(problem(lag, applied: 40, at: .milliseconds(5300)), "catching up with etcd: its watch delivers again and has yet to reach "
            + "revision 50, this member's own write known while it did not follow (this member stands at etcd revision 40)")
        lag.applied(49, advanced: true, now: t0 + .milliseconds(5350))
        XCTAssertNotNil(problem(lag, applied: 49, at: .milliseconds(5350)))
        lag.applied(50, advanced: true, now: t0 + .milliseconds(5400))
        XCTAssertNil(problem(lag, applied: 50, at: .milliseconds(5400)))
        // A write known once the watch follows again is judged as before: it has its moment.
        lag.committed(52, applied: 50, now: t0 + .milliseconds(5500))
        lag.applied(51, advanced: true, now: t0 + .milliseconds(5600))
        XCTAssertNil(problem(lag, applied: 51, at: .milliseconds(5700)))
    }

    func testAnAppliedWriteCommittedAfterAFailedOneCountsFromTheFailure() {
        var lag = ApplyLag(limits: limits, now: t0)
        lag.appliedWriteFailed(now: t0 + .seconds(2))
        lag.appliedWriteFailed(now: t0 + .seconds(4))
        lag.appliedWriteCommitted(30, applied: 25, now: t0 + .seconds(6))
        // Known "since" the first failure: no moment of 200 after the failed write's 503.
        XCTAssertNotNil(problem(lag, applied: 25, at: .seconds(6)))
        lag.applied(30, advanced: true, now: t0 + .seconds(7))
        XCTAssertNil(problem(lag, applied: 30, at: .seconds(7)))
        // The failure is consumed: the next committed write counts from its own answer.
        lag.appliedWriteCommitted(31, applied: 30, now: t0 + .seconds(9))
        XCTAssertNil(problem(lag, applied: 30, at: .milliseconds(9300)))
    }

    func testRevisionsKnownCloseTogetherAreFolded() {
        var lag = ApplyLag(limits: limits, now: t0)
        for i in 0..<50 { lag.committed(Int64(100 + i), applied: 99, now: t0 + .milliseconds(Int64(i) * 10)) }
        XCTAssertEqual(lag.pending.map(\.revision), [109, 119, 129, 139, 149])
        lag.applied(125, advanced: true, now: t0 + .seconds(1))
        XCTAssertEqual(lag.pending.map(\.revision), [129, 139, 149])
    }
}
