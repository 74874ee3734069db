/// Kyoto Tycoon's update-log clock: milliseconds since the epoch times 10^6 plus a counter
/// that breaks ties inside one millisecond, so timestamps are unique and increasing.
///
/// A value type: the owner keeps it behind its own lock.
public struct KTClock: Sendable, Equatable {
    /// The millisecond of the last timestamp issued.
    public private(set) var wallMillis: UInt64
    /// The counter within `wallMillis`.
    public private(set) var logical: UInt64

    public init(wallMillis: UInt64 = 0, logical: UInt64 = 0) {
        self.wallMillis = wallMillis
        self.logical = logical
    }

    /// A clock that resumes after `timestamp` (KT restarts at the next millisecond after the
    /// newest logged timestamp).
    public init(resumingAfter timestamp: UInt64) {
        self.wallMillis = timestamp / 1_000_000 + 1
        self.logical = 0
    }

    /// The next timestamp, given the current time in milliseconds.
    public mutating func next(nowMillis: UInt64) -> UInt64 {
        if nowMillis > wallMillis {
            wallMillis = nowMillis
            logical = 0
        } else {
            logical += 1
        }
        return wallMillis * 1_000_000 + logical
    }

    /// The timestamp of a wall time with no counter (KT's `clock_pure`).
    public static func pure(nowMillis: UInt64) -> UInt64 {
        nowMillis * 1_000_000
    }

    /// The wall time, in milliseconds, that a timestamp encodes.
    public static func millis(of timestamp: UInt64) -> UInt64 {
        timestamp / 1_000_000
    }

    /// The wall time, in nanoseconds since the epoch, that a timestamp stands for (its
    /// millisecond; the counter is dropped).
    public static func wallTimeNs(of timestamp: UInt64) -> UInt64 {
        millis(of: timestamp) &* 1_000_000
    }
}
