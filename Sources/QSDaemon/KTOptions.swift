import ArgumentParser
import Foundation
import QSFeed
import QSKTFeed

/// `--db-map`: KT database index → QS key prefix.
public struct KTDBMap: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    public let prefixes: [UInt16: [UInt8]]
    public let description: String

    public init(prefixes: [UInt16: [UInt8]], description: String) {
        self.prefixes = prefixes
        self.description = description
    }

    public init?(argument: String) {
        guard let p = try? KTMapping.parseDBMap(argument) else { return nil }
        self.init(prefixes: p, description: argument)
    }

    public static func refusal(of argument: String) -> String? {
        do { _ = try KTMapping.parseDBMap(argument) } catch { return "\(error)" }
        return nil
    }

    public static let expectation = "INDEX=PREFIX[,INDEX=PREFIX…] separated by commas, each index once, a prefix without '=', spaces or control characters, for example 0=,1=aux/"
    public var defaultValueDescription: String { description }
}

extension KTPolicy: ExpressibleByArgument {}

extension KTDBMap {
    /// Database 0 only, unprefixed.
    public static let single = KTDBMap(prefixes: [0: []], description: "0=")

    /// The map in one spelling whatever the order it was given in: `0=,1=aux/`.
    public var canonical: String {
        prefixes.sorted { $0.key < $1.key }.map { "\($0.key)=\(String(decoding: $0.value, as: UTF8.self))" }.joined(separator: ",")
    }

    /// The source descriptor a KT bridge records at its root (`db-map 0=,1=aux/`), so a
    /// restart with another map stops unless `changed` (`--db-map-changed`).
    public func descriptor(changed: Bool) -> RootWriter.Descriptor {
        let prefixes = self.prefixes
        return RootWriter.Descriptor(text: "db-map " + canonical, replace: changed, refusal: { held in
            let map = held.hasPrefix("db-map ") ? String(held.dropFirst(7)) : held
            return "this bridge was started with another --db-map than the one that wrote this source (a typo?), and would write KT's records under other prefixes than their keys already at the root. Start it with --db-map '\(map)' (or QS_DB_MAP), adding databases if need be; if the mapping changes on purpose (the keys written under the old prefixes stay), start it once with --db-map-changed (QS_DB_MAP_CHANGED=1)"
        }, extends: { held in
            // Every database mapped before keeps its prefix, and one or more are added.
            guard held.hasPrefix("db-map "), let before = try? KTMapping.parseDBMap(String(held.dropFirst(7))) else { return false }
            return prefixes.count > before.count && before.allSatisfy { prefixes[$0.key] == $0.value }
        })
    }
}

extension InitialCopyMode: ExpressibleByArgument {}

/// `--copy-rate`: `none`, or records and/or bytes per second, e.g. `5000/s`, `8MiB/s`,
/// `5000/s,8MiB/s` (a number alone counts records; one with a size unit counts bytes).
public struct CopyRateOption: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    public let rate: CopyRate
    public let description: String

    public init?(argument: String) {
        var rate = CopyRate()
        if argument.lowercased() != "none" {
            for part in argument.split(separator: ",") {
                var text = part.trimmingCharacters(in: .whitespaces).lowercased()
                guard text.hasSuffix("/s") else { return nil }
                text.removeLast(2)
                if let n = Double(text), n > 0 {
                    guard rate.recordsPerSecond == nil else { return nil }
                    rate.recordsPerSecond = n
                } else if let n = parseByteSize(text), n > 0 {
                    guard rate.bytesPerSecond == nil else { return nil }
                    rate.bytesPerSecond = Double(n)
                } else {
                    return nil
                }
            }
        }
        self.rate = rate
        description = argument
    }

    /// No limit.
    public static let none = CopyRateOption(rate: CopyRate(), description: "none")

    init(rate: CopyRate, description: String) {
        self.rate = rate
        self.description = description
    }

    public static let expectation = "none, or records and/or bytes per second such as 5000/s, 8MiB/s or 5000/s,8MiB/s"
    public static func refusal(of argument: String) -> String? {
        var records = 0, bytes = 0
        for part in argument.split(separator: ",", omittingEmptySubsequences: false) {
            var text = part.trimmingCharacters(in: .whitespaces).lowercased()
            guard text.hasSuffix("/s") else { return "'\(part)' has no '/s': a rate is per second, as in \(part)/s" }
            text.removeLast(2)
            if let n = Double(text) {
                guard n > 0 else { return "a rate must be more than 0 (none for no limit)" }
                records += 1
            } else if let n = parseByteSize(text) {
                guard n > 0 else { return "a rate must be more than 0 (none for no limit)" }
                bytes += 1
            } else {
                return "'\(text)' is neither a number of records nor a size such as 8MiB"
            }
        }
        if records > 1 { return "a records rate is given twice" }
        if bytes > 1 { return "a bytes rate is given twice" }
        return nil
    }
    public var defaultValueDescription: String { description }
}
