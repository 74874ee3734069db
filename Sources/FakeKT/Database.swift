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

    // The sorted keys are kept up to date by each insert and delete (a binary search and
    // one move), not rebuilt: a cursor walking a large database under a live workload
    // (an initial copy) would otherwise sort every key again after each write.
    mutating func put(_ key: [UInt8], _ record: KTRecord) {
        guard records.updateValue(record, forKey: key) == nil, var keys = sortedCache else { return }
        sortedCache = nil  // `keys` is then the array's only owner: changed in place
        keys.insert(key, at: Self.insertionIndex(of: key, in: keys))
        sortedCache = keys
    }

    mutating func delete(_ key: [UInt8]) {
        guard records.removeValue(forKey: key) != nil, var keys = sortedCache else { return }
        sortedCache = nil
        let i = Self.insertionIndex(of: key, in: keys)
        guard i < keys.count, keys[i] == key else { return }
        keys.remove(at: i)
        sortedCache = keys
    }

    /// The index of the first key not before `key`.
    static func insertionIndex(of key: [UInt8], in keys: [[UInt8]]) -> Int {
        var low = 0, high = keys.count
        while low < high {
            let mid = (low + high) / 2
            if keys[mid].lexicographicallyPrecedes(key) { low = mid + 1 } else { high = mid }
        }
        return low
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
