import KTFormats

/// A stored record: the value and its absolute expiration time (epoch seconds).
public struct KTRecord: Sendable, Equatable {
    public var value: [UInt8]
    public var expiration: Int64
}

/// One in-memory database, addressed by index or by name.
///
/// Records are kept in byte order of their keys, which is also the order cursors visit.
struct Database: Sendable {
    enum Kind: Sendable {
        /// Hash databases (`*`, `.kch`): cursors cannot move backwards.
        case hash
        /// Tree databases (`%`, `.kct`, …): ordered both ways.
        case tree
    }

    let path: String
    let name: String
    let kind: Kind
    private(set) var records: [[UInt8]: KTRecord] = [:]
    private var sortedCache: [[UInt8]]? = nil

    init(argument: String) {
        let path = String(argument.split(separator: "#", maxSplits: 1).first ?? Substring(argument))
        self.path = path
        self.name = String(path.split(separator: "/").last ?? Substring(path))
        let lower = path.lowercased()
        let treeSuffixes = [".kct", ".kcf", ".kcd"]
        kind = path == "%" || treeSuffixes.contains(where: { lower.hasSuffix($0) }) ? .tree : .hash
    }

    /// A live (not expired) record.
    func live(_ key: [UInt8], now: Int64) -> KTRecord? {
        guard let r = records[key], !KTExpiration.isExpired(r.expiration, at: now) else { return nil }
        return r
    }

    /// The raw record, expired or not.
    func raw(_ key: [UInt8]) -> KTRecord? { records[key] }

    mutating func put(_ key: [UInt8], _ record: KTRecord) {
        if records.updateValue(record, forKey: key) == nil { sortedCache = nil }
    }

    mutating func delete(_ key: [UInt8]) {
        if records.removeValue(forKey: key) != nil { sortedCache = nil }
    }

    mutating func removeAll() {
        records.removeAll()
        sortedCache = nil
    }

    /// Keys in byte order.
    mutating func sortedKeys() -> [[UInt8]] {
        if let sortedCache { return sortedCache }
        let keys = records.keys.sorted { $0.lexicographicallyPrecedes($1) }
        sortedCache = keys
        return keys
    }

    func count(now: Int64) -> Int {
        records.values.reduce(0) { $0 + (KTExpiration.isExpired($1.expiration, at: now) ? 0 : 1) }
    }

    func size() -> Int {
        records.reduce(0) { $0 + $1.key.count + $1.value.value.count + 5 }
    }
}
