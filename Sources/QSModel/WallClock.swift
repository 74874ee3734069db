#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Nanoseconds since the epoch from the system's real-time clock.
public func wallClockNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Seconds since the epoch.
public func wallClockSeconds() -> UInt64 { wallClockNanoseconds() / 1_000_000_000 }

/// Source positions: a KT timestamp (milliseconds × 10⁶ plus a counter, a wall time) or a
/// QS log index (a count). Any position from 5 × 10¹⁷ (a KT timestamp of 1985) on is a
/// KT timestamp: no log index comes near it, and no epoch count in seconds, milliseconds
/// or microseconds reaches it.
public enum SourcePosition {
    public static let ktTimestampFloor: UInt64 = 500_000_000_000_000_000

    /// Whether `position` is a KT timestamp (a wall time) rather than a log index.
    public static func isKTTimestamp(_ position: UInt64) -> Bool { position >= ktTimestampFloor }

    /// The KT timestamp of a wall time in nanoseconds since the epoch (no counter).
    public static func ktTimestamp(wallTimeNs: UInt64) -> UInt64 { wallTimeNs / 1_000_000 * 1_000_000 }
}
