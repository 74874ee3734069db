import ArgumentParser
import Foundation
import Logging
import QSNet

// Option value types: each parses itself once, as a flag or as its QS_* variable; a
// command's `validate()` is left with rules between flags.

/// A duration flag: `500ms`, `2s`, `1.5s`, `3m`, `100us`, `1h` (a bare number is seconds).
public struct Interval: ExpressibleByArgument, DescribedArgument, Sendable, Equatable, CustomStringConvertible {
    public let duration: Duration
    public let description: String

    public init?(argument: String) {
        guard let d = parseDuration(argument) else { return nil }
        duration = d
        description = argument
    }

    /// A default given in code, printed in its shortest unit (`5s`, `500ms`).
    public init(_ duration: Duration) {
        self.duration = duration
        let ns = duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
        if ns % 1_000_000_000 == 0 { description = "\(ns / 1_000_000_000)s" }
        else if ns % 1_000_000 == 0 { description = "\(ns / 1_000_000)ms" }
        else { description = "\(ns)ns" }
    }

    public static let expectation = "a duration such as 500ms, 10s or 5m"
    public static func refusal(of argument: String) -> String? {
        let t = argument.trimmingCharacters(in: .whitespaces)
        if t.isEmpty { return "it is empty" }
        if t.hasPrefix("-") { return "a duration cannot be negative" }
        if let n = Double(t.prefix { $0.isNumber || $0 == "." }), !t.isEmpty, t.first?.isNumber == true || t.first == "." {
            let unit = t.drop { $0.isNumber || $0 == "." }
            if !unit.isEmpty, !["ns", "us", "ms", "s", "m", "h"].contains(unit.lowercased()) { return "'\(unit)' is not a unit: use ns, us, ms, s, m or h" }
            if n >= 1e9 { return "too long: give less than a billion seconds" }
        }
        return nil
    }
    public var seconds: Double { duration.seconds }
    public var defaultValueDescription: String { description }
}

/// A size flag: `4096`, `64KiB`, `64MiB`, `8GiB` (KB/MB/GB are powers of 1000).
public struct ByteSize: ExpressibleByArgument, DescribedArgument, Sendable, Equatable, CustomStringConvertible {
    public let bytes: Int
    public let description: String

    public init?(argument: String) {
        guard let n = parseByteSize(argument) else { return nil }
        bytes = n
        description = argument
    }

    /// A default given in code, printed in its largest whole binary unit (`64MiB`).
    public init(_ bytes: Int) {
        self.bytes = bytes
        let units: [(Int, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        description = units.first(where: { bytes > 0 && bytes % $0.0 == 0 }).map { "\(bytes / $0.0)\($0.1)" } ?? "\(bytes)"
    }

    public static let expectation = "a size such as 4096, 64KiB or 8GiB"
    public static func refusal(of argument: String) -> String? {
        let t = argument.trimmingCharacters(in: .whitespaces)
        if t.isEmpty { return "it is empty" }
        if t.hasPrefix("-") { return "a size cannot be negative" }
        let number = t.prefix { $0.isNumber }, unit = t.dropFirst(number.count)
        if number.isEmpty { return "it starts with no number" }
        if !unit.isEmpty, parseByteSize("1" + unit) == nil { return "'\(unit)' is not a unit: use B, KiB, MiB, GiB, TiB (or KB, MB, GB)" }
        if parseByteSize(t) == nil { return "too large" }
        return nil
    }
    public var defaultValueDescription: String { description }
}

/// An address flag: `HOST:PORT`, `[::1]:PORT`, `:PORT` or `unix:PATH`.
public struct Address: ExpressibleByArgument, DescribedArgument, Sendable, Equatable, CustomStringConvertible {
    public let endpoint: Endpoint

    public init?(argument: String) {
        guard let e = try? Endpoint(parsing: argument) else { return nil }
        endpoint = e
    }

    /// A default given in code.
    public init(_ endpoint: Endpoint) { self.endpoint = endpoint }

    public static let expectation = "HOST:PORT (for example 127.0.0.1:7400) or unix:PATH"
    public static func refusal(of argument: String) -> String? { endpointRefusal(argument) }
    public var description: String { endpoint.description }
    public var defaultValueDescription: String { description }
}

/// A TCP address flag: `HOST:PORT` only (memcached and HTTP listeners; the Unix socket has
/// a flag of its own).
public struct TCPAddress: ExpressibleByArgument, DescribedArgument, Sendable, Equatable, CustomStringConvertible {
    public let endpoint: Endpoint

    public init?(argument: String) {
        guard let e = try? Endpoint(parsing: argument), case .tcp = e else { return nil }
        endpoint = e
    }

    /// A default given in code.
    public init(host: String, port: Int) { endpoint = .tcp(host: host, port: port) }

    public static let expectation = "HOST:PORT (for example 127.0.0.1:11211)"
    public static func refusal(of argument: String) -> String? {
        if argument.hasPrefix("unix:") { return "this listener is TCP only; its Unix socket has a flag of its own" }
        return endpointRefusal(argument)
    }
    public static func refusal(of argument: String, flag: String) -> String? {
        if argument.hasPrefix("unix:") { return "this listener is TCP only; give its socket path to \(flag)-unix" }
        return endpointRefusal(argument)
    }
    public var description: String { endpoint.description }
    public var defaultValueDescription: String { description }
}

/// A list of addresses in order of preference: `HOST:PORT[,HOST:PORT…]`.
public struct AddressList: ExpressibleByArgument, DescribedArgument, Sendable, Equatable, CustomStringConvertible {
    public let endpoints: [Endpoint]

    public init?(argument: String) {
        guard let list = try? Endpoint.parseList(argument) else { return nil }
        endpoints = list
    }

    /// A default given in code.
    public init(_ endpoints: Endpoint...) { self.endpoints = endpoints }

    public static let expectation = "HOST:PORT[,HOST:PORT…]"
    public static func refusal(of argument: String) -> String? {
        do { _ = try Endpoint.parseList(argument) } catch { return "\(error)" }
        return nil
    }
    public var description: String { endpoints.map(\.description).joined(separator: ",") }
    public var defaultValueDescription: String { description }
}

/// Log levels as swift-log names them.
public enum LogLevel: String, ExpressibleByArgument, CaseIterable, Sendable {
    case trace, debug, info, notice, warning, error, critical

    public var level: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
}

/// Parses durations such as `500ms`, `2s`, `1.5s`, `3m`, `100us` (a bare number is seconds).
public func parseDuration(_ text: String) -> Duration? {
    let units: [(String, Double)] = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)]
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    for (suffix, scale) in units.sorted(by: { $0.0.count > $1.0.count }) where t.hasSuffix(suffix) {
        guard let n = Double(t.dropLast(suffix.count)), n >= 0, n.isFinite, n * scale < 1e9 else { return nil }
        return .nanoseconds(Int64(n * scale * 1e9))
    }
    guard let n = Double(t), n >= 0, n.isFinite, n < 1e9 else { return nil }
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

/// A flag that may be left unset: the empty string (or no flag and no variable) is none.
public struct OrNone<Wrapped: ExpressibleByArgument & Sendable>: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    public let value: Wrapped?

    public init(_ value: Wrapped?) { self.value = value }

    public init?(argument: String) {
        if argument.isEmpty {
            value = nil
        } else {
            guard let v = Wrapped(argument: argument) else { return nil }
            value = v
        }
    }

    public static var none: OrNone { OrNone(nil) }
    public static var expectation: String { QSEnv.expected(Wrapped.self) + ", or empty for none" }
    public static func refusal(of argument: String) -> String? {
        QSEnv.refusal(Wrapped.self, of: argument, flag: "")
    }
    public static func refusal(of argument: String, flag: String) -> String? {
        QSEnv.refusal(Wrapped.self, of: argument, flag: flag)
    }
    public var description: String { value.map { "\($0)" } ?? "" }
    public var defaultValueDescription: String { value.map { "\($0)" } ?? "none" }
}

/// A flag without a default that the command requires (a bridge's `--source`): nil only
/// when neither the flag nor its variable is given; an empty value is refused like any value
/// that does not parse (`QS_SOURCE=` is a mistake, not "none").
public struct Required<Wrapped: ExpressibleByArgument & Sendable>: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    public let value: Wrapped?

    init(_ value: Wrapped?) { self.value = value }

    public init?(argument: String) {
        guard !argument.isEmpty, let v = Wrapped(argument: argument) else { return nil }
        value = v
    }

    /// Not given (the command says it is required).
    public static var missing: Required { Required(nil) }
    public static var expectation: String { QSEnv.expected(Wrapped.self) }
    public static func refusal(of argument: String) -> String? {
        refusal(of: argument, flag: "")
    }
    public static func refusal(of argument: String, flag: String) -> String? {
        if argument.isEmpty { return "it is empty" }
        return QSEnv.refusal(Wrapped.self, of: argument, flag: flag)
    }
    public var description: String { value.map { "\($0)" } ?? "" }
    /// Empty: the help shows no default for a flag that has none.
    public var defaultValueDescription: String { "" }
}

/// Why `Endpoint(parsing:)` refuses `argument`, nil when it does not.
public func endpointRefusal(_ argument: String) -> String? {
    do { _ = try Endpoint(parsing: argument) } catch {
        // The message names the argument, which the "is invalid for" line has named already.
        let text = "\(error)", named = "'\(argument)': "
        return text.hasPrefix(named) ? String(text.dropFirst(named.count)) : text
    }
    return nil
}
