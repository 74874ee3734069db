import Foundation
import QSModel

/// What `qsctl wait --until` waits for: a source position, given so that it cannot be
/// mistaken. KT sources are positioned by timestamps (milliseconds × 10⁶ plus a counter),
/// QS log sources (`qsqsbridge --mode batched`) by log indexes.
enum WaitTarget: Equatable, CustomStringConvertible {
    /// The wall time when the wait starts, as a KT timestamp.
    case now
    /// A wall time (ns since the epoch), as a KT timestamp.
    case time(ns: UInt64, text: String)
    /// A KT timestamp given as a number.
    case ktTimestamp(UInt64)
    /// A QS log index (`index:N`).
    case index(UInt64)

    static let forms = "'now', an RFC 3339 time (2025-06-01T12:00:00Z, 2025-06-01T14:00:00.250+02:00), a KT timestamp (milliseconds × 10^6 plus a counter, 19 digits today, e.g. 1790000000000000000) for a KT source, or index:N (a log index) for a QS log source"

    struct Invalid: Error, CustomStringConvertible {
        let description: String
    }

    init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t.lowercased() == "now" {
            self = .now
        } else if t.lowercased().hasPrefix("index:") {
            guard let n = UInt64(t.dropFirst(6)), n > 0 else {
                throw Invalid(description: "--until '\(text)': index:N needs a log index of at least 1")
            }
            self = .index(n)
        } else if let n = UInt64(t) {
            guard SourcePosition.isKTTimestamp(n) else {
                throw Invalid(description: "--until \(text) is ambiguous: a bare number could be epoch seconds, milliseconds or a log index. Give \(Self.forms)")
            }
            self = .ktTimestamp(n)
        } else if let ns = Self.parseRFC3339(t) {
            self = .time(ns: ns, text: t)
        } else {
            throw Invalid(description: "--until '\(text)' is not a position: give \(Self.forms)")
        }
    }

    /// The position to reach, `now` being read from the wall clock.
    func position(nowNs: UInt64 = wallClockNanoseconds()) -> UInt64 {
        switch self {
        case .now: return SourcePosition.ktTimestamp(wallTimeNs: nowNs)
        case let .time(ns, _): return SourcePosition.ktTimestamp(wallTimeNs: ns)
        case let .ktTimestamp(ts): return ts
        case let .index(i): return i
        }
    }

    /// Whether the target is a KT timestamp (else a log index).
    var isTimestamp: Bool {
        if case .index = self { return false }
        return true
    }

    var description: String {
        switch self {
        case .now: return "now"
        case let .time(_, text): return text
        case let .ktTimestamp(ts): return "\(ts)"
        case let .index(i): return "index:\(i)"
        }
    }

    /// RFC 3339 with or without fractional seconds; nil when `text` is not one or lies
    /// before the epoch.
    static func parseRFC3339(_ text: String) -> UInt64? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var date = f.date(from: text)
        if date == nil {
            f.formatOptions = [.withInternetDateTime]
            date = f.date(from: text)
        }
        guard let d = date, d.timeIntervalSince1970 >= 0 else { return nil }
        return UInt64((d.timeIntervalSince1970 * 1e9).rounded())
    }
}
