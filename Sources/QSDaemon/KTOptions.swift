import ArgumentParser
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

    public static let expectation = "INDEX=PREFIX[,INDEX=PREFIX…], for example 0=,1=aux/"
    public var defaultValueDescription: String { description }
}

extension KTPolicy: ExpressibleByArgument {}

extension KTDBMap {
    /// Database 0 only, unprefixed.
    public static let single = KTDBMap(prefixes: [0: []], description: "0=")
}
