import Foundation
import QSNet

/// Environment fallbacks for command-line flags: every flag `--some-flag` of an executable
/// can also be given as `QS_SOME_FLAG` (the flag wins when both are set).
public enum QSEnv {
    /// The variable's value, nil when unset or empty.
    public static func string(_ name: String) -> String? {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }

    /// A boolean variable: 1/true/yes/on are true, 0/false/no/off false, anything else
    /// the default.
    public static func flag(_ name: String, default def: Bool = false) -> Bool {
        switch string(name)?.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: return def
        }
    }
}

/// Parses durations such as `500ms`, `2s`, `1.5s`, `3m`, `100us` (a bare number is seconds).
public func parseDuration(_ text: String) -> Duration? {
    let units: [(String, Double)] = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)]
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    for (suffix, scale) in units.sorted(by: { $0.0.count > $1.0.count }) where t.hasSuffix(suffix) {
        guard let n = Double(t.dropLast(suffix.count)), n >= 0, n.isFinite else { return nil }
        return .nanoseconds(Int64(n * scale * 1e9))
    }
    guard let n = Double(t), n >= 0, n.isFinite else { return nil }
    return .nanoseconds(Int64(n * 1e9))
}

/// Parses sizes such as `4096`, `64KiB`, `64MiB`, `8GiB` (also KB/MB/GB as powers of 1000).
public func parseByteSize(_ text: String) -> Int? {
    let units: [(String, Int)] = [("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("tib", 1 << 40),
                                  ("kb", 1000), ("mb", 1_000_000), ("gb", 1_000_000_000), ("k", 1 << 10),
                                  ("m", 1 << 20), ("g", 1 << 30), ("b", 1)]
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    for (suffix, scale) in units where t.hasSuffix(suffix) {
        guard let n = Int(t.dropLast(suffix.count)), n >= 0 else { return nil }
        return n.multipliedReportingOverflow(by: scale).overflow ? nil : n * scale
    }
    guard let n = Int(t), n >= 0 else { return nil }
    return n
}
