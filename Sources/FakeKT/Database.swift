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
    /// The Kyoto Cabinet database types a ktserver database argument names, with the type
    /// numbers `status` reports.
    enum Kind: Int, Sendable {
        case prototypeHash = 0x10
        case prototypeTree = 0x11
        case stash = 0x18
        case cache = 0x20
        case grass = 0x21
        case hash = 0x30
        case tree = 0x31
        case directory = 0x40
        case forest = 0x41
        case text = 0x50

        /// Tree types keep keys in order and move cursors both ways; the others answer a
        /// backward move with `not implemented`.
        var ordered: Bool { self == .prototypeTree || self == .grass || self == .tree || self == .forest }

        /// The type a file name gives: `-`, `+`, `:`, `*` or `%` as the whole name, else
        /// the extension; `nil` for any other name (ktserver refuses those).
        init?(fileName name: String) {
            switch name {
            case "-": self = .prototypeHash
            case "+": self = .prototypeTree
            case ":": self = .stash
            case "*": self = .cache
            case "%": self = .grass
            default:
                guard let dot = name.lastIndex(of: ".") else { return nil }
                switch name[name.index(after: dot)...] {
                case "kcph", "phdb": self = .prototypeHash
                case "kcpt", "ptdb": self = .prototypeTree
                case "kcs", "sdb": self = .stash
                case "kcc", "cdb": self = .cache
                case "kcg", "gdb": self = .grass
                case "kch", "hdb": self = .hash
                case "kct", "tdb": self = .tree
                case "kcd", "ddb": self = .directory
                case "kcf", "fdb": self = .forest
                case "kcx", "xdb", "txt", "text", "tsv", "csv": self = .text
                default: return nil
                }
            }
        }

        /// The type a `#type=` option names.
        init?(typeOption value: String) {
            switch value {
            case "-", "kcph", "phdb", "phash": self = .prototypeHash
            case "+", "kcpt", "ptdb", "ptree": self = .prototypeTree
            case ":", "kcs", "sdb", "stash": self = .stash
            case "*", "kcc", "cdb", "cache": self = .cache
            case "%", "kcg", "gdb", "grass": self = .grass
            case "kch", "hdb", "hash": self = .hash
            case "kct", "tdb", "tree": self = .tree
            case "kcd", "ddb", "dir", "directory": self = .directory
            case "kcf", "fdb", "for", "forest": self = .forest
            case "kcx", "xdb", "txt", "text": self = .text
            default: return nil
            }
        }
    }

    /// A database argument ktserver would not open.
    struct UnknownType: Error, CustomStringConvertible {
        var argument: String
        var description: String {
            "could not open a database file: \(argument): invalid operation: unknown database type "
                + "(name one as -, +, :, *, % or a file ending in .kch, .kct, .kcd, .kcf, .kcx, or add #type=…)"
        }
    }

    /// The path as given, `#` options stripped (what `report` and `status` show).
    let path: String
    /// The last path component: the name `DB` selects the database by.
    let name: String
    let kind: Kind
    private(set) var records: [[UInt8]: KTRecord] = [:]
    private var sortedCache: [[UInt8]]? = nil

    init(argument: String) throws(UnknownType) {
        let parts = argument.split(separator: "#", omittingEmptySubsequences: false).map(String.init)
        let path = parts.first ?? argument
        self.path = path
        let name = String(path.split(separator: "/", omittingEmptySubsequences: false).last ?? Substring(path))
        self.name = name
        var kind = Kind(fileName: name)
        for option in parts.dropFirst() {
            let kv = option.split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2, kv[0] == "type", let k = Kind(typeOption: kv[1]) { kind = k }
        }
        guard let kind else { throw UnknownType(argument: argument) }
        self.kind = kind
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
