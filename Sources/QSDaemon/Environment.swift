import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import QSNet

/// Environment fallbacks for command-line flags: a flag `--some-flag` of a daemon can also
/// be given as `QS_SOME_FLAG` (qsctl's as `QS_CTL_…`, fakekt's as `QS_FAKEKT_…`); the flag
/// wins when both are set.
///
/// A flag's default is read through `QSEnv.value(_:_:)`, which parses the variable with the
/// flag's own type (`ExpressibleByArgument`), so a variable is held to exactly the rules of
/// its flag. A value that does not parse is not replaced by the default: it is recorded,
/// and `QSEnv.checkRefusals()` (called by every executable right after parsing its command
/// line, see `runCommand`) stops the process with a usage error naming the variable.
public enum QSEnv {
    /// The variable's value, nil when unset or empty.
    public static func string(_ name: String) -> String? {
        read.withLockedValue { _ = $0.insert(name) }
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }

    /// A typed flag's variable: nil when unset or empty. Empty is refused when the flag
    /// would refuse an empty value (`QS_ROLE=` is a mistake, not "use the default"); where
    /// the flag takes empty (an address that is off when empty) it means the default, as
    /// it always has.
    private static func typed(_ name: String, flag: String?, acceptsEmpty: Bool, expected: @autoclosure () -> String) -> String? {
        if let raw = ProcessInfo.processInfo.environment[name], raw.isEmpty, !acceptsEmpty {
            read.withLockedValue { _ = $0.insert(name) }
            refuse(name, flag: flag, value: "", expected: expected() + " (it is set but empty: give it a value or unset it)")
            return nil
        }
        return string(name)
    }

    /// The default of the flag `flag` (derived from `name`: `QS_MAP_SIZE` → `--map-size`):
    /// the variable parsed as the flag would be, or `def` when the variable is unset.
    public static func value<T: ExpressibleByArgument>(_ name: String, _ def: T, flag: String? = nil) -> T {
        explain(flag ?? flagName(for: name), T.self)
        guard let text = typed(name, flag: flag, acceptsEmpty: T(argument: "") != nil, expected: expected(T.self)) else { return def }
        if let v = T(argument: text) { return v }
        refuse(name, flag: flag, value: text, expected: expected(T.self, refusing: text, flag: flag ?? flagName(for: name)))
        return def
    }

    /// An optional flag's default: the variable parsed as the flag would be, nil when unset.
    public static func optional<T: ExpressibleByArgument>(_ name: String, as: T.Type = T.self, flag: String? = nil) -> T? {
        explain(flag ?? flagName(for: name), T.self)
        guard let text = typed(name, flag: flag, acceptsEmpty: T(argument: "") != nil, expected: expected(T.self)) else { return nil }
        if let v = T(argument: text) { return v }
        refuse(name, flag: flag, value: text, expected: expected(T.self, refusing: text, flag: flag ?? flagName(for: name)))
        return nil
    }

    /// A boolean flag's default: 1/true/yes/on or 0/false/no/off; anything else is refused.
    public static func flag(_ name: String, default def: Bool = false, flag: String? = nil) -> Bool {
        guard let text = typed(name, flag: flag, acceptsEmpty: false, expected: "true or false (also 1/0, yes/no, on/off)") else { return def }
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default:
            refuse(name, flag: flag, value: text, expected: "true or false (also 1/0, yes/no, on/off)")
            return def
        }
    }

    /// Why `argument` is refused as a `T`, or what a `T` looks like.
    static func expected<T: ExpressibleByArgument>(_ type: T.Type, refusing argument: String, flag: String) -> String {
        if let described = type as? any DescribedArgument.Type, let why = described.refusal(of: argument, flag: flag) {
            // An integer's reason is its range, which the expectation says already.
            return described.expectation.contains(why.replacingOccurrences(of: "give ", with: "")) ? described.expectation : "\(described.expectation) (\(why))"
        }
        return expected(type)
    }

    /// What a value of `T` looks like, for the refusal message.
    public static func expected<T: ExpressibleByArgument>(_ type: T.Type) -> String {
        if let described = type as? any DescribedArgument.Type { return described.expectation }
        let all = type.allValueStrings
        if !all.isEmpty { return "one of " + all.joined(separator: ", ") }
        if let integer = type as? any FixedWidthInteger.Type { return range(integer) }
        if type is Double.Type { return "a number" }
        return "a valid value"
    }

    private static func range<I: FixedWidthInteger>(_: I.Type) -> String { I.isSigned ? "a whole number" : "a whole number from 0 to \(I.max)" }

    struct Refusal: Sendable, Hashable {
        var variable: String
        var flag: String
        var value: String
        var expected: String
    }

    private static let refusals = NIOLockedValueBox<[Refusal]>([])
    /// Every variable this process asked for (the defaults of the flags of its commands).
    private static let read = NIOLockedValueBox<Set<String>>([])
    /// While set, defaults are evaluated only to learn which variables exist: nothing is refused.
    private static let probing = NIOLockedValueBox<Bool>(false)

    /// Per flag and type, why a value given on the command line is refused (types that can
    /// say), for `explaining`; a flag that two commands give different types is left out.
    private static let explainers = NIOLockedValueBox<[String: [String: @Sendable (String) -> String?]]>([:])

    /// Registers why a value of `type` given to `flag` is refused, for `explaining`: flags
    /// whose defaults are not read through `value`/`optional` (fakekt's) call it themselves.
    public static func explain<T: ExpressibleByArgument>(_ flag: String, _ type: T.Type) {
        let why: @Sendable (String) -> String?
        if let described = type as? any DescribedArgument.Type {
            why = { described.refusal(of: $0, flag: flag) }
        } else if let integer = type as? any FixedWidthInteger.Type {
            why = integerRefusal(integer)
        } else if type is Double.Type {
            why = { Double($0) == nil ? "give a number, as in 30 or 0.5" : nil }
        } else {
            return
        }
        explainers.withLockedValue { $0[flag, default: [:]]["\(type)"] = why }
    }

    /// Why `argument` is refused as a `T` given to `flag`, where the type can say.
    public static func refusal<T>(_ type: T.Type, of argument: String, flag: String) -> String? {
        // No flag known: the type's own words (a reason naming a flag needs one).
        if let described = type as? any DescribedArgument.Type {
            return flag.isEmpty ? described.refusal(of: argument) : described.refusal(of: argument, flag: flag)
        }
        if let integer = type as? any FixedWidthInteger.Type { return integerRefusal(integer)(argument) }
        return nil
    }

    static func integerRefusal<I: FixedWidthInteger>(_: I.Type) -> @Sendable (String) -> String? {
        { argument in
            guard I(argument) == nil else { return nil }
            let digits = argument.hasPrefix("-") || argument.hasPrefix("+") ? argument.dropFirst() : Substring(argument)
            let number = !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
            guard I.isSigned else { return "give a whole number from 0 to \(I.max)" }
            // A signed flag's own range is its validate's (most take positive numbers only).
            guard number else { return "give a whole number" }
            return argument.hasPrefix("-") ? "too small a number" : "too large a number (at most \(I.max))"
        }
    }

    /// ArgumentParser's "The value 'X' is invalid for '--flag <v>'" with why, where the
    /// flag's type can say (a duplicate --db-map index); nil when it cannot.
    public static func explaining(_ message: String, arguments: [String] = CommandLine.arguments) -> String? {
        if let missing = missingValue(message, arguments: arguments) { return missing }
        guard let value = message.range(of: "The value '"), let end = message.range(of: "' is invalid for '", range: value.upperBound..<message.endIndex) else { return nil }
        let argument = String(message[value.upperBound..<end.lowerBound])
        let rest = message[end.upperBound...]
        let flag = String(rest.prefix { $0 != " " && $0 != "'" })
        guard let types = explainers.withLockedValue({ $0[flag] }), types.count == 1, let why = types.values.first?(argument) else { return nil }
        let line = message[value.lowerBound...].prefix { $0 != "\n" }
        let help = message.split(separator: "\n").first { $0.hasPrefix("Help:") }.map { "\n\($0)" } ?? ""
        return "\(line): \(why)\(help)"
    }

    /// ArgumentParser's "Missing value for '--flag <v>'" when the value was there but began
    /// with '-' (`--idle-timeout -5s`): it was taken for a flag.
    static func missingValue(_ message: String, arguments: [String]) -> String? {
        guard let start = message.range(of: "Missing value for '") else { return nil }
        let flag = String(message[start.upperBound...].prefix { $0 != " " && $0 != "'" })
        let line = message[start.lowerBound...].prefix { $0 != "\n" }
        let help = message.split(separator: "\n").first { $0.hasPrefix("Help:") }.map { "\n\($0)" } ?? ""
        if arguments.contains(flag + "=") { return "\(line): it is empty\(help)" }
        guard let i = arguments.firstIndex(of: flag), i + 1 < arguments.count else { return nil }
        let next = arguments[i + 1]
        guard next.hasPrefix("-"), next.count > 1, next.dropFirst().first.map({ $0.isNumber || $0 == "." }) == true else { return nil }
        return "\(line): the '\(next)' after it was taken for a flag, as anything starting with '-' is (\(flag)=\(next) passes it as a value)\(help)"
    }

    private static func refuse(_ name: String, flag: String?, value: String, expected: String) {
        guard !probing.withLockedValue({ $0 }) else { return }
        let flag = flag ?? flagName(for: name)
        let r = Refusal(variable: name, flag: flag, value: value, expected: expected)
        refusals.withLockedValue { if !$0.contains(r) { $0.append(r) } }
    }

    /// Variables read outside the flags' defaults (the test harness's and the store's
    /// engine override for test runs): never reported as unknown.
    static let readElsewhere: Set<String> = ["QS_STORE_ENGINE", "QS_BIN_DIR", "QS_TEST_SANITIZER", "QS_TEST_TIMEOUT", "QS_TEST_JOBS",
                                             "QS_ETCD_BIN", "QS_FUZZ_TARGET"]

    /// The prefixes of the executables whose variables carry their own namespace.
    static let otherNamespaces: Set<String> = ["QS_CTL_", "QS_FAKEKT_"]

    /// The `QS_*` variables set in the environment that no flag of `command` (and of its
    /// subcommands) reads, each with the name it most likely meant: a misspelled variable
    /// would otherwise be ignored without a word (`QS_MEMCACHE` starting a node with no
    /// memcached listener).
    public static func unknownVariables(of command: ParsableCommand.Type,
                                        environment: [String: String] = ProcessInfo.processInfo.environment) -> [(name: String, meant: String?)] {
        probing.withLockedValue { $0 = true }
        defer { probing.withLockedValue { $0 = false } }
        func visit(_ type: ParsableCommand.Type) {
            _ = type.init()
            for sub in type.configuration.subcommands { visit(sub) }
        }
        visit(command)
        let known = read.withLockedValue { $0 }.union(readElsewhere)
        // Another executable's own namespace (qsctl's QS_CTL_*, fakekt's QS_FAKEKT_*) is not
        // this one's typo: the runbook exports qsctl's variables in the shell that starts the
        // daemons, and a warning about each at every start taught operators to skip them.
        // A command that reads variables of that namespace still has its typos named.
        let ownNamespaces = otherNamespaces.filter { p in known.contains { $0.hasPrefix(p) } }
        let elsewhere = otherNamespaces.subtracting(ownNamespaces)
        return environment.keys.filter { name in
            name.hasPrefix("QS_") && !known.contains(name) && !elsewhere.contains { name.hasPrefix($0) }
        }.sorted().map { name in
            // A secret's variable names the file that holds it: QS_WRITE_TOKEN for
            // QS_WRITE_TOKEN_FILE (the value itself given) is too far for the edit distance.
            if known.contains(name + "_FILE") { return (name, name + "_FILE") }
            let close = known.map { ($0, editDistance($0, name)) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }
            return (name, close?.0)
        }
    }

    /// One line a variable for `unknownVariables`, to print at start-up (stderr): a
    /// warning, since an environment shared by several executables holds others' variables.
    /// The flags given more than once on `arguments` (none takes a list: the last is
    /// used), with how many times, in order of first appearance.
    public static func repeatedFlags(_ arguments: [String]) -> [(flag: String, times: Int)] {
        var counts = [String: Int](), order = [String]()
        for a in arguments.dropFirst() {
            if a == "--" { break }
            guard a.hasPrefix("--"), a.count > 2 else { continue }
            // --x and --no-x are one flag (ArgumentParser's inversions): the last one wins.
            var name = String(a.prefix { $0 != "=" })
            if name.hasPrefix("--no-") { name = "--" + name.dropFirst(5) }
            if counts[name] == nil { order.append(name) }
            counts[name, default: 0] += 1
        }
        return order.compactMap { counts[$0]! > 1 ? ($0, counts[$0]!) : nil }
    }

    /// Warns of each flag given more than once: the last is used, which a wrapper adding
    /// an override means, and a copied command line with a stale flag does not.
    public static func warnRepeatedFlags(of command: ParsableCommand.Type, arguments: [String] = CommandLine.arguments) {
        let name = command.configuration.commandName ?? "\(command)"
        for (flag, times) in repeatedFlags(arguments) {
            FileHandle.standardError.write(Data("\(name): warning: \(flag) is given \(times) times; the last one is used\n".utf8))
        }
    }

    public static func warnUnknownVariables(of command: ParsableCommand.Type) {
        let name = command.configuration.commandName ?? "\(command)"
        for (variable, meant) in unknownVariables(of: command) {
            let hint = meant.map { "; did you mean \($0)?" } ?? "; it is ignored (another executable's variable, or a typo)"
            FileHandle.standardError.write(Data("\(name): warning: \(variable) is set but \(name) reads no such variable\(hint)\n".utf8))
        }
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let x = Array(a.utf8), y = Array(b.utf8)
        var row = Array(0...y.count)
        for i in 1...max(x.count, 1) where !x.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in 1...max(y.count, 1) where !y.isEmpty {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (x[i - 1] == y[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return x.isEmpty ? y.count : row[y.count]
    }

    /// `QS_MAP_SIZE` → `--map-size`.
    static func flagName(for variable: String) -> String {
        var n = variable
        if n.hasPrefix("QS_") { n.removeFirst(3) }
        return "--" + n.lowercased().replacingOccurrences(of: "_", with: "-")
    }

    /// Throws a usage error naming every variable whose value did not parse, unless the
    /// command line gave its flag (which wins). Call once, after parsing the command line.
    public static func checkRefusals(arguments: [String] = CommandLine.arguments) throws {
        let given = Set(arguments.map { $0.split(separator: "=", maxSplits: 1).first.map(String.init) ?? $0 })
        let bad = refusals.withLockedValue { $0 }.filter { !given.contains($0.flag) }
        guard !bad.isEmpty else { return }
        throw ValidationError(bad.map {
            "\($0.variable)='\($0.value)' is not a valid value for \($0.flag): expected \($0.expected); fix or unset \($0.variable)"
        }.joined(separator: "\n"))
    }
}

/// A value type whose refusal message says what it expects ("a duration such as 500ms").
public protocol DescribedArgument: SendableMetatype {
    static var expectation: String { get }
    /// Why `argument` is refused, where the type can say more than its expectation (a
    /// duplicate database index, a port out of range); nil otherwise.
    static func refusal(of argument: String) -> String?
    /// `refusal(of:)` for the flag `flag` (a reason that names the flag to use instead).
    static func refusal(of argument: String, flag: String) -> String?
}

extension DescribedArgument {
    public static func refusal(of argument: String) -> String? { nil }
    public static func refusal(of argument: String, flag: String) -> String? { refusal(of: argument) }
}

extension ParsableCommand {
    /// Parses the command line, refuses invalid `QS_*` variables exactly as invalid flags
    /// (a usage error, exit code 64, naming the variable), then runs the command.
    public static func runCommand() async {
        do {
            try await execute(parseCheckingEnvironment())
        } catch {
            exitReporting(error)
        }
    }

    /// Exits with `error`'s message and code; an address that cannot be bound is named
    /// with the flag that gave it.
    public static func exitReporting(_ error: any Error) -> Never {
        if let listen = error as? ListenError { exit(withError: StartError(listen.messageNamingFlag)) }
        exit(withError: error)
    }

    /// Runs a parsed command, async or not.
    public static func execute(_ parsed: ParsableCommand) async throws {
        var command = parsed
        if var asyncCommand = command as? AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    }

    /// Parses the command line; a `QS_*` variable that does not parse is reported first
    /// (it is the cause when a validation that depends on it fails too).
    public static func parseCheckingEnvironment() throws -> ParsableCommand {
        let command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch let error where !(error is CleanExit) {
            try QSEnv.checkRefusals()
            if let explained = QSEnv.explaining(fullMessage(for: error)) { throw ValidationError(explained) }
            throw error
        }
        try QSEnv.checkRefusals()
        QSEnv.warnUnknownVariables(of: self)
        QSEnv.warnRepeatedFlags(of: self)
        return command
    }
}

/// A daemon that cannot start (an address it cannot bind, a data directory in use): the
/// message says what and what to do; the process exits 1.
public struct StartError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension ListenError {
    /// The flag that gave this listener its address (the daemons name their listeners
    /// `write`, `admin`, `memcached`, `kt-http`; fakekt's is `kt`).
    public var flag: String { Self.flag(for: listener, endpoint: endpoint) }

    /// The flag that gives the listener `listener` the address `endpoint`.
    public static func flag(for listener: String, endpoint: Endpoint) -> String {
        let unix: Bool
        if case .unix = endpoint { unix = true } else { unix = false }
        switch listener {
        case "write": return unix ? "--unix" : "--listen"
        case "admin": return "--admin"
        case "rest": return "--listen"
        case "memcached": return unix ? "--memcached-unix" : "--memcached"
        case "kt-http": return unix ? "--kt-http-unix" : "--kt-http"
        case "kt": return "-host/-port"
        default: return "the \(listener) address"
        }
    }

    public var messageNamingFlag: String {
        "\(flag)\(Self.fromVariable(flag)) \(endpoint): cannot listen: \(reason); \(hint)"
    }

    /// " (from QS_X)" when `flag` was not on the command line and its variable is set: the
    /// address came from the environment.
    static func fromVariable(_ flag: String, arguments: [String] = CommandLine.arguments,
                             environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        guard flag.hasPrefix("--"), !arguments.contains(where: { $0 == flag || $0.hasPrefix(flag + "=") }) else { return "" }
        let variable = "QS_" + flag.dropFirst(2).uppercased().replacingOccurrences(of: "-", with: "_")
        return environment[variable].map { $0.isEmpty ? "" : " (from \(variable))" } ?? ""
    }
}
