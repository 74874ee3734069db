import Metrics
import QSFeed
import QSModel

/// KT stamps its update-log records in strictly increasing order (`UpdateLogger`'s clock is
/// the replication position: a resume asks for the records after a timestamp). A record out
/// of that order, or stamped more than a day ahead of this machine's clock, is damage (a
/// flipped bit in its timestamp): applied, it would move the checkpoint past every later
/// record, which would then be skipped without a word, on this run and every restart. So a
/// file source (a ulog directory, a capture) checks each record before it is applied, counts
/// the damage in `qs_bridge_corrupt_frames_total` and stops naming the place.
struct KTTimestampOrder {
    /// How far ahead of this machine's clock a record may be stamped.
    static let maxAheadNs: UInt64 = 24 * 3600 * 1_000_000_000
    /// The timestamp of the record read before (in any file of the run).
    private(set) var previous: UInt64?

    /// Checks the next record's timestamp; `place` names where it is (file, byte offset).
    mutating func check(_ ts: UInt64, at place: @autoclosure () -> String, corrupt: Counter,
                        now: UInt64 = wallClockNanoseconds()) throws {
        try checkNotAhead(ts, at: place(), corrupt: corrupt, now: now)
        try checkAfterPrevious(ts, at: place(), corrupt: corrupt)
    }

    /// Takes `ts` as the record before the next one again (records read after it were dropped
    /// unapplied, and are read anew).
    mutating func rewind(to ts: UInt64?) {
        previous = ts
    }

    /// A record stamped more than a day ahead of this machine's clock is damaged (it alone).
    func checkNotAhead(_ ts: UInt64, at place: @autoclosure () -> String, corrupt: Counter,
                       now: UInt64 = wallClockNanoseconds()) throws {
        if ts > now &+ Self.maxAheadNs {
            corrupt.increment()
            throw FeedError.stop("\(place()): its timestamp \(ts) is \((ts - now) / 3_600_000_000_000) hours ahead of this machine's clock, so the record is damaged (or KT's clock is that far ahead: set it right). Every record before it was applied, none from it on")
        }
    }

    /// A record not stamped after the one before it: one of the two is damaged. `applied`
    /// says what was applied of them (by default, the record before it).
    mutating func checkAfterPrevious(_ ts: UInt64, at place: @autoclosure () -> String, corrupt: Counter,
                                     applied: @autoclosure () -> String = "Every record before it was applied, none from it on") throws {
        if let previous, ts <= previous {
            corrupt.increment()
            throw FeedError.stop("\(place()): its timestamp \(ts) is not after the record before it (\(previous)); KT stamps its records in increasing order, so one of them is damaged. \(applied()): repair or remove the damaged record, then start the bridge again")
        }
        previous = ts
    }
}
