/// KT's databases as QS key prefixes: `--kt-db-map 0=,1=aux/` puts KT database 0 at the
/// root of the keyspace and database 1 under `aux/`. An entry may name the database too
/// (`1:aux.kct=aux/`), so a `DB` parameter can give the name KT knew it by.
///
/// A key belongs to the database with the longest prefix it starts with, so database 0
/// (empty prefix) does not see the records of database 1.
public struct KTDatabaseMap: Sendable, Equatable, CustomStringConvertible {
    public struct Database: Sendable, Equatable {
        public var index: Int
        public var name: String?
        public var prefix: [UInt8]
    }

    public let databases: [Database]

    /// Database 0 unprefixed: what a single-database KT looked like.
    public static let single = KTDatabaseMap(databases: [Database(index: 0, name: nil, prefix: [])])

    public init(databases: [Database]) {
        self.databases = databases.sorted { $0.index < $1.index }
    }

    /// Parses `INDEX[:NAME]=PREFIX[,…]`; an empty text is `0=`.
    public init(parsing text: String) throws {
        if text.isEmpty {
            self = .single
            return
        }
        var dbs = [Database]()
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            guard let eq = part.firstIndex(of: "=") else {
                throw KTDatabaseMapError("'\(part)' is not INDEX=PREFIX (for example 0= or 1=aux/)")
            }
            let lhs = part[..<eq]
            let prefix = Array(part[part.index(after: eq)...].utf8)
            let indexText = lhs.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            let name = lhs.contains(":") ? lhs.split(separator: ":", maxSplits: 1).last.map(String.init) : nil
            guard let index = Int(indexText), index >= 0, index < 65536 else {
                throw KTDatabaseMapError("'\(part)': database index '\(indexText)' is not a number from 0 to 65535")
            }
            if let name, name.first?.isNumber ?? true {
                throw KTDatabaseMapError("'\(part)': a database name must be non-empty and not start with a digit")
            }
            guard !dbs.contains(where: { $0.index == index }) else {
                throw KTDatabaseMapError("database \(index) is mapped twice")
            }
            guard !dbs.contains(where: { $0.prefix == prefix }) else {
                throw KTDatabaseMapError("prefix '\(String(decoding: prefix, as: UTF8.self))' is given to two databases")
            }
            dbs.append(Database(index: index, name: name, prefix: prefix))
        }
        self.init(databases: dbs)
    }

    public var description: String {
        databases.map { db in
            "\(db.index)\(db.name.map { ":" + $0 } ?? "")=\(String(decoding: db.prefix, as: UTF8.self))"
        }.joined(separator: ",")
    }

    /// The database a KT `DB` parameter selects: absent or empty is database 0, digits an
    /// index (read like KT's `atoi`), anything else a name. Nil when none matches.
    public func database(forParameter value: [UInt8]?) -> Database? {
        guard let value, let first = value.first else { return database(index: 0) }
        if first >= 0x30 && first <= 0x39 {
            var n = 0
            for c in value {
                guard c >= 0x30 && c <= 0x39 else { break }
                n = n &* 10 &+ Int(c - 0x30)
                if n > 65535 { return nil }
            }
            return database(index: n)
        }
        let name = String(decoding: value, as: UTF8.self)
        return databases.first { $0.name == name }
    }

    public func database(index: Int) -> Database? {
        databases.first { $0.index == index }
    }

    /// Whether the full QS key `key` is a record of `db` (its longest matching prefix is
    /// `db`'s).
    public func owns<Key: Collection<UInt8>>(_ db: Database, key: Key) -> Bool {
        guard key.starts(with: db.prefix) else { return false }
        for other in databases where other.prefix.count > db.prefix.count && key.starts(with: other.prefix) {
            return false
        }
        return true
    }
}

public struct KTDatabaseMapError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
