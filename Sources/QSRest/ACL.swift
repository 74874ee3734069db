import Foundation
import Crypto
import QSBytes

/// Who may write what: the producers of an ACL file, each with the hash of its token, the
/// QS key prefixes it may write (after the database map) and its soft quotas.
///
/// ```toml
/// [producers.dns]
/// token_sha256 = "…"            # hex SHA-256 of the producer's token
/// prefixes = ["dns/"]           # QS keys it may write, one or more
/// writes_per_second = 5000      # optional soft quota
/// bytes_per_second = 10000000   # optional soft quota
/// shared = false                # optional: allow overlap with another producer's prefixes
/// ```
public struct ACL: Sendable, Equatable {
    public struct Producer: Sendable, Equatable {
        public var name: String
        /// SHA-256 of the token (32 bytes).
        public var tokenHash: [UInt8]
        public var prefixes: [[UInt8]]
        public var writesPerSecond: Int?
        public var bytesPerSecond: Int?
        public var shared: Bool

        public init(name: String, tokenHash: [UInt8], prefixes: [[UInt8]], writesPerSecond: Int? = nil,
                    bytesPerSecond: Int? = nil, shared: Bool = false) {
            self.name = name
            self.tokenHash = tokenHash
            self.prefixes = prefixes
            self.writesPerSecond = writesPerSecond
            self.bytesPerSecond = bytesPerSecond
            self.shared = shared
        }

        /// Whether `key` (a full QS key) is in this producer's keyspace.
        public func may(write key: [UInt8]) -> Bool { prefixes.contains { key.starts(with: $0) } }
    }

    public let producers: [Producer]

    public struct LoadError: Error, CustomStringConvertible {
        public let description: String

        public init(description: String) { self.description = description }
    }

    public init(producers: [Producer]) throws {
        self.producers = producers.sorted { $0.name < $1.name }
        try Self.checkOverlaps(self.producers)
    }

    /// Reads an ACL file's text; errors name the line (and `origin`, the file).
    /// Reads and parses the ACL file at `path`; an unreadable file is an error naming the
    /// path and the reason (not Foundation's error domain and code).
    public static func load(path: String) throws -> ACL {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            let why: String
            if !FileManager.default.fileExists(atPath: path) {
                why = "no such file"
            } else if !FileManager.default.isReadableFile(atPath: path) {
                why = "not readable by this user"
            } else {
                why = "not UTF-8 text"
            }
            throw LoadError(description: "\(path): \(why): give --acl the TOML file of the producers (docs/operations.md, \"Producers and their keyspaces\")")
        }
        return try ACL(parsing: text, origin: path)
    }

    public init(parsing text: String, origin: String = "the ACL") throws {
        let tables: [TOMLSubset.Table]
        do {
            tables = try TOMLSubset.parse(text)
        } catch let e as TOMLSubset.ParseError {
            throw LoadError(description: "\(origin): \(e)")
        }
        var producers = [Producer]()
        var lines = [String: Int]()
        for table in tables {
            func fail(_ line: Int, _ why: String) -> LoadError { LoadError(description: "\(origin): line \(line): \(why)") }
            if table.name.isEmpty {
                if let k = table.order.first, let e = table.entries[k] {
                    throw fail(e.line, "'\(k)' is outside any [producers.NAME] table")
                }
                continue
            }
            if table.name == ["producers"] {
                if let k = table.order.first, let e = table.entries[k] {
                    throw fail(e.line, "'\(k)' belongs in a [producers.NAME] table")
                }
                continue
            }
            guard table.name.count == 2, table.name[0] == "producers" else {
                throw fail(table.line, "unknown table [\(table.name.joined(separator: "."))]: only [producers.NAME] tables are read")
            }
            let name = table.name[1]
            var hash: [UInt8]?
            var prefixes: [[UInt8]]?
            var writes: Int?, bytes: Int?
            var shared = false
            var emptyPrefixLine: Int?
            for key in table.order {
                guard let entry = table.entries[key] else { continue }
                switch (key, entry.value) {
                case let ("token_sha256", .string(hex)):
                    guard let h = Self.hex(hex), h.count == 32 else {
                        throw fail(entry.line, "token_sha256 must be 64 hex digits (the SHA-256 of the token: printf %s TOKEN | sha256sum)")
                    }
                    // An empty token would let anyone in as this producer (an unset
                    // shell variable hashed is the usual way to get it).
                    guard hex.lowercased() != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" else {
                        throw fail(entry.line, "token_sha256 is the SHA-256 of an empty token (was the token's variable unset when it was hashed?): give the producer a token of its own")
                    }
                    hash = h
                case let ("prefixes", .array(items)):
                    var list = [[UInt8]]()
                    for item in items {
                        guard case let .string(p) = item else { throw fail(entry.line, "prefixes must be strings, e.g. [\"dns/\"]") }
                        list.append(Array(p.utf8))
                    }
                    guard !list.isEmpty else { throw fail(entry.line, "prefixes is empty: give the producer at least one prefix") }
                    if list.contains([]) { emptyPrefixLine = entry.line }
                    prefixes = list
                case let ("writes_per_second", .integer(n)), let ("bytes_per_second", .integer(n)):
                    guard n > 0, n <= Int64(Int32.max) * 1024 else { throw fail(entry.line, "\(key) must be a positive number") }
                    if key == "writes_per_second" { writes = Int(n) } else { bytes = Int(n) }
                case let ("shared", .bool(b)):
                    shared = b
                case ("token_sha256", _), ("prefixes", _), ("writes_per_second", _), ("bytes_per_second", _), ("shared", _):
                    throw fail(entry.line, "\(key) has the wrong type: \(entry.value)")
                default:
                    throw fail(entry.line, "unknown key '\(key)' (known: token_sha256, prefixes, writes_per_second, bytes_per_second, shared)")
                }
            }
            guard let hash else { throw fail(table.line, "producer '\(name)' has no token_sha256") }
            guard let prefixes else { throw fail(table.line, "producer '\(name)' has no prefixes") }
            // The empty prefix is the whole keyspace: only on purpose (shared = true), and
            // then every other producer overlaps it and must be shared too.
            if let line = emptyPrefixLine, !shared {
                throw fail(line, "the empty prefix gives producer '\(name)' the whole keyspace; add shared = true to it if that is meant")
            }
            lines[name] = table.line
            producers.append(Producer(name: name, tokenHash: hash, prefixes: prefixes, writesPerSecond: writes,
                                      bytesPerSecond: bytes, shared: shared))
        }
        var hashes = [[UInt8]: String]()
        for p in producers {
            if let other = hashes[p.tokenHash] {
                throw LoadError(description: "\(origin): line \(lines[p.name] ?? 0): producers '\(other)' and '\(p.name)' have the same token: give each its own")
            }
            hashes[p.tokenHash] = p.name
        }
        do {
            try self.init(producers: producers)
        } catch let e as LoadError {
            throw LoadError(description: "\(origin): \(e.description)")
        }
    }

    /// Two producers whose prefixes overlap (one starts with the other) are refused unless
    /// both declare `shared = true`.
    static func checkOverlaps(_ producers: [Producer]) throws {
        for (i, a) in producers.enumerated() {
            for b in producers[(i + 1)...] {
                for pa in a.prefixes {
                    for pb in b.prefixes where pa.starts(with: pb) || pb.starts(with: pa) {
                        if a.shared && b.shared { continue }
                        throw LoadError(description: "producers '\(a.name)' and '\(b.name)' overlap: '\(String(decoding: pa, as: UTF8.self))' and '\(String(decoding: pb, as: UTF8.self))'; give them disjoint prefixes, or set shared = true on both if they really share keys")
                    }
                }
            }
        }
    }

    /// The producer whose token is `token` and whose name is `user` when given (HTTP
    /// Basic); nil when none. Every producer's hash is compared in constant time.
    public func authenticate(user: String?, token: [UInt8]) -> Producer? {
        let digest = Array(SHA256.hash(data: token))
        var found: Producer?
        for p in producers where constantTimeEqual(p.tokenHash, digest) {
            found = p
        }
        guard let found else { return nil }
        if let user, user != found.name { return nil }
        return found
    }

    /// The producers whose keyspace holds `key` (more than one only for shared prefixes).
    public func owners(of key: [UInt8]) -> [Producer] { producers.filter { $0.may(write: key) } }

    static func hex(_ s: String) -> [UInt8]? {
        var out = [UInt8]()
        var hi: UInt8?
        for c in s.utf8 {
            let v: UInt8
            switch c {
            case 0x30...0x39: v = c - 0x30
            case 0x61...0x66: v = c - 0x61 + 10
            case 0x41...0x46: v = c - 0x41 + 10
            default: return nil
            }
            if let h = hi { out.append(h << 4 | v); hi = nil } else { hi = v }
        }
        return hi == nil ? out : nil
    }
}
