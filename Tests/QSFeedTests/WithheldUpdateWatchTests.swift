import Foundation
import KTFormats
import NIOCore
@testable import QSKTFeed
import QSTesting
import XCTest

/// KT's idle heartbeats tell a withheld update (one whose origin sid is the client's) from
/// its clock: the stamps below are those ktserver's `do_bin_replication` gives.
final class WithheldUpdateWatchTests: XCTestCase {
    let ms: UInt64 = 1_000_000

    func testClockHeartbeatsVouchForTheOneBeforeAndUpdatesForThemselves() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        // Idle: the clock, a second behind, in whole milliseconds; each vouches for a second
        // below the one before.
        XCTAssertEqual(w.heartbeat(2000 * ms), .vouches(nil))
        XCTAssertEqual(w.heartbeat(2100 * ms), .vouches(1000 * ms))
        // An update sent, then the heartbeat stamped with it (rts, less than a second old).
        w.update(3000 * ms + 4)
        XCTAssertEqual(w.heartbeat(3000 * ms + 4), .vouches(3000 * ms + 4))
        XCTAssertEqual(w.heartbeat(3000 * ms + 4), .vouches(3000 * ms + 4), "the same stamp again is the update sent")
        // A heartbeat behind the position (the clock after a restart) vouches for nothing new.
        XCTAssertEqual(w.heartbeat(2500 * ms), .vouches(2500 * ms))
    }

    func testAStampWithACounterPastTheLastUpdateIsAWithheldUpdate() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        w.update(2000 * ms)
        XCTAssertEqual(w.heartbeat(2000 * ms + 3), .withheld(.stamps))
    }

    /// Two withheld writes a heartbeat apart, each the first of its millisecond: each looks
    /// like the clock once; nothing vouched reaches either before the repeat tells.
    func testTwoWithheldWritesAHeartbeatApartAreNeverVouchedFor() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        var vouched: UInt64 = 0
        for stamp in [2000 * ms, 2100 * ms, 2250 * ms] {  // the clock, withheld w, withheld w'
            guard case let .vouches(v) = w.heartbeat(stamp) else { return XCTFail("told apart too early") }
            vouched = max(vouched, v ?? 0)
        }
        XCTAssertEqual(w.heartbeat(2250 * ms), .withheld(.stamps))
        XCTAssertLessThan(vouched, 2100 * ms, "the first withheld write stays above the checkpoint")
    }

    func testTheSameWholeMillisecondTwicePastTheLastUpdateIsAWithheldUpdate() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        // The first slot of a millisecond cannot be told from the clock at once: it vouches
        // for nothing, and the next heartbeat (the clock would have moved on) tells.
        XCTAssertEqual(w.heartbeat(5000 * ms), .vouches(nil))
        XCTAssertEqual(w.heartbeat(5000 * ms), .withheld(.stamps))
    }

    /// A heartbeat's proposal past the last update goes through only as far as a reading of
    /// KT's update log made after it vouches (one finding nothing logged past the update),
    /// after a connect as much as while heartbeats come steadily: each proposal past what
    /// the last reading covered waits for the next.
    func testTheUpdateLogVouchesForEachProposalPastTheLastUpdate() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        XCTAssertEqual(w.heartbeat(3000 * ms), .vouches(nil))
        XCTAssertEqual(w.heartbeat(3100 * ms), .vouches(2000 * ms))
        XCTAssertEqual(w.wantsLogRead, 2000 * ms)
        XCTAssertEqual(w.limited(2000 * ms), 1000 * ms, "unread, the proposal stops at the last update")
        w.logRead(newest: 900 * ms, covering: 2000 * ms)
        XCTAssertNil(w.wantsLogRead)
        XCTAssertEqual(w.limited(2000 * ms), 2000 * ms)
        // Steady heartbeats: the next proposal waits for another reading.
        XCTAssertEqual(w.heartbeat(3200 * ms), .vouches(2100 * ms))
        XCTAssertEqual(w.wantsLogRead, 2100 * ms)
        XCTAssertEqual(w.limited(2100 * ms), 2000 * ms, "held at what the last reading covered")
        // An update's stamp a second above the clock's.
        w.update(3250 * ms + 1)
        XCTAssertEqual(w.heartbeat(3250 * ms + 1), .vouches(3250 * ms + 1))
        XCTAssertNil(w.wantsLogRead, "at or before the last update: nothing to read")
        XCTAssertEqual(w.heartbeat(3300 * ms), .vouches(2250 * ms + 1))
        XCTAssertNil(w.wantsLogRead)
        XCTAssertEqual(w.heartbeat(4400 * ms), .vouches(2300 * ms))
        XCTAssertNil(w.wantsLogRead)
        XCTAssertEqual(w.heartbeat(4500 * ms), .vouches(3400 * ms))
        XCTAssertEqual(w.wantsLogRead, 3400 * ms)
        XCTAssertEqual(w.limited(3400 * ms), 3250 * ms + 1, "held at the last update, what the readings vouched for is below it")
        w.logRead(newest: 3250 * ms + 1, covering: 3400 * ms)
        XCTAssertEqual(w.limited(3400 * ms), 3400 * ms)
        // A heartbeat at or before the last update vouches for itself, read or not.
        XCTAssertEqual(w.limited(500 * ms), 500 * ms)
    }

    /// Writes withheld at least one a heartbeat: each heartbeat is stamped with the newest,
    /// a new whole millisecond, which the stamps cannot tell from the clock. The reading
    /// after the first proposal past the last update finds them, and the position stays at
    /// the last update sent.
    func testSteadyWithheldWritesAreFoundByTheNextReadingAndNeverVouchedFor() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        XCTAssertEqual(w.heartbeat(4000 * ms), .vouches(nil))
        XCTAssertEqual(w.heartbeat(4100 * ms), .vouches(3000 * ms))
        w.logRead(newest: 900 * ms, covering: 3000 * ms)
        // Withheld writes from 5000 ms on, one every 80 ms: each heartbeat is the newest.
        var vouched: UInt64 = 0
        var stamp = 5000 * ms
        var read = false
        for _ in 0..<20 {
            guard case let .vouches(v) = w.heartbeat(stamp) else { return XCTFail("told apart by the stamps at \(stamp)") }
            if let covering = w.wantsLogRead, !read {
                w.logRead(newest: stamp, covering: covering)
                read = true
            }
            vouched = max(vouched, w.limited(v) ?? 0)
            stamp += 80 * ms
        }
        XCTAssertTrue(read)
        XCTAssertEqual(w.unsent, 5000 * ms)
        XCTAssertLessThan(vouched, 5000 * ms, "no withheld write under the position")
    }

    /// Writes withheld long before KT's reader reached them (a bridge catching up): the
    /// stamps are the clock, and only the log tells. The position stays at the last update,
    /// and a heartbeat stamped well after the logged write is a withheld update.
    func testAnUnsentLoggedUpdateHoldsThePositionThenIsTakenForWithheld() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        XCTAssertEqual(w.heartbeat(4000 * ms), .vouches(nil))
        XCTAssertEqual(w.heartbeat(4100 * ms), .vouches(3000 * ms))
        w.logRead(newest: 2000 * ms, covering: 3000 * ms)
        XCTAssertEqual(w.unsent, 2000 * ms)
        XCTAssertEqual(w.limited(3000 * ms), 1000 * ms, "held at the last update sent")
        XCTAssertNil(w.wantsLogRead, "nothing to read while an update is known unsent")
        var stamp = 4100 * ms
        while stamp + 100 * ms < 2000 * ms + WithheldUpdateWatch.unsentMargin {
            stamp += 100 * ms
            guard case let .vouches(v) = w.heartbeat(stamp) else { return XCTFail("withheld too early, at \(stamp)") }
            XCTAssertEqual(w.limited(v), 1000 * ms)
        }
        XCTAssertEqual(w.heartbeat(stamp + 100 * ms), .withheld(.log(2000 * ms)))
    }

    /// An update logged but not yet sent when the log was read (it was on its way) clears
    /// the hold when it arrives.
    func testALoggedUpdateThatArrivesClearsTheHold() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        _ = w.heartbeat(4000 * ms)
        _ = w.heartbeat(4100 * ms)
        w.logRead(newest: 4150 * ms + 2, covering: 3000 * ms)
        XCTAssertEqual(w.limited(3000 * ms), 1000 * ms)
        w.update(4150 * ms + 2)
        XCTAssertNil(w.unsent)
        XCTAssertEqual(w.heartbeat(10_000 * ms), .vouches(3100 * ms), "past the margin, nothing is unsent any more")
    }

    /// A reading failed or slow waits `retryAfter`; one that worked, `interval`.
    func testTheUpdateLogIsReadAgainAfterASecondOrAfterThirtyWhenItFailedOrWasSlow() {
        var s = KTLogCheckSchedule()
        let t0 = ContinuousClock.now
        XCTAssertTrue(s.due(at: t0))
        s.done(at: t0, took: .milliseconds(3), ok: true)
        XCTAssertFalse(s.due(at: t0 + .milliseconds(900)))
        XCTAssertTrue(s.due(at: t0 + .seconds(1)))
        s.done(at: t0, took: .milliseconds(3), ok: false)
        XCTAssertTrue(s.failing)
        XCTAssertFalse(s.due(at: t0 + .seconds(29)))
        XCTAssertTrue(s.due(at: t0 + .seconds(30)))
        s.done(at: t0, took: .seconds(2), ok: true)
        XCTAssertFalse(s.failing)
        XCTAssertFalse(s.due(at: t0 + .seconds(29)), "a slow reading holds the stream: not again soon")
    }

    func testTheNewestTimestampOfAnUlogListAnswer() throws {
        let answer = KTRPCAnswer(status: 200, columns: [Array("/kt/ulog/0000000001.ulog".utf8): Array("104857612:1700000000000000003".utf8),
                                                         Array("/kt/ulog/0000000002.ulog".utf8): Array("17:1700000005000000000".utf8)])
        XCTAssertEqual(try KTLogCheck.newest(of: answer), 1_700_000_005_000_000_000)
        XCTAssertThrowsError(try KTLogCheck.newest(of: KTRPCAnswer(status: 200, columns: [:])), "no file listed is no reading")
        XCTAssertThrowsError(try KTLogCheck.newest(of: KTRPCAnswer(status: 200, columns: [Array("x".utf8): Array("12".utf8)])))
    }

    /// The streams a real ktserver sent a client of another sid (sid 99 against the
    /// server's 7): no heartbeat is taken for a withheld update.
    func testRealKTStreamsShowNoWithheldUpdate() throws {
        for name in ["basic", "medium"] {
            var buffer = ByteBuffer(bytes: try Data(contentsOf: try KTFixture(name).stream))
            var decoder = ReplicationFrameDecoder()
            var watch = WithheldUpdateWatch(after: 0)
            var heartbeats = 0, updates = 0
            while let frame = try decoder.decode(buffer: &buffer) {
                switch frame {
                case let .update(ts, _):
                    watch.update(ts)
                    updates += 1
                case let .heartbeat(ts):
                    heartbeats += 1
                    if case .withheld = watch.heartbeat(ts) { XCTFail("\(name): heartbeat \(heartbeats) at \(ts)") }
                default:
                    break
                }
            }
            XCTAssertGreaterThan(heartbeats, 0, name)
            XCTAssertGreaterThan(updates, 900, name)
        }
    }
}
