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
        XCTAssertEqual(w.heartbeat(2000 * ms + 3), .withheld)
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
        XCTAssertEqual(w.heartbeat(2250 * ms), .withheld)
        XCTAssertLessThan(vouched, 2100 * ms, "the first withheld write stays above the checkpoint")
    }

    func testTheSameWholeMillisecondTwicePastTheLastUpdateIsAWithheldUpdate() {
        var w = WithheldUpdateWatch(after: 1000 * ms)
        // The first slot of a millisecond cannot be told from the clock at once: it vouches
        // for nothing, and the next heartbeat (the clock would have moved on) tells.
        XCTAssertEqual(w.heartbeat(5000 * ms), .vouches(nil))
        XCTAssertEqual(w.heartbeat(5000 * ms), .withheld)
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
                    XCTAssertNotEqual(watch.heartbeat(ts), .withheld, "\(name): heartbeat \(heartbeats) at \(ts)")
                default:
                    break
                }
            }
            XCTAssertGreaterThan(heartbeats, 0, name)
            XCTAssertGreaterThan(updates, 900, name)
        }
    }
}
