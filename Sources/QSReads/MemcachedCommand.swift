/// One request of the memcached text protocol, as a read-only node understands it.
public enum MemcachedCommand: Sendable, Equatable {
    /// `get`/`gets` with one or more keys (none is allowed: KT answers `END`).
    case get(keys: [[UInt8]], withCAS: Bool)
    case version
    case stats
    case quit
    /// A write (`set`, `delete`, `incr`, …): refused. A storage command's data block has
    /// been consumed by the decoder. `noreply` suppresses the reply, as memcached does.
    case write(command: String, noreply: Bool)
    /// A malformed line: `reply` (without CRLF) is what the client gets, `reason` what the
    /// log says; `close` ends the connection after the reply (the stream cannot be resynced).
    case malformed(reply: String, reason: String, close: Bool)
}

/// Limits of the memcached interface.
public struct MemcachedLimits: Sendable {
    /// Longest command line, CRLF included. KT's plug-in reads lines into 8 KiB.
    public var maxLineBytes: Int
    /// Longest key of a `get`.
    public var maxKeyBytes: Int
    /// Largest data block of a (refused) storage command that is skipped to stay in sync;
    /// larger ones close the connection.
    public var maxDataBytes: Int
    /// Largest reply of one multi-key `get` (past its first value): one key named many
    /// times on an 8 KiB line would otherwise build a reply of gigabytes from a large
    /// value. Past it the reply is memcached's own "SERVER_ERROR out of memory writing get
    /// response".
    public var maxReplyBytes: Int

    public init(maxLineBytes: Int = 8192, maxKeyBytes: Int = 8192, maxDataBytes: Int = 1 << 30, maxReplyBytes: Int = 64 << 20) {
        self.maxLineBytes = maxLineBytes
        self.maxKeyBytes = maxKeyBytes
        self.maxDataBytes = maxDataBytes
        self.maxReplyBytes = maxReplyBytes
    }
}

/// Parses one command line (without its line ending) into a command and, for storage
/// commands, the number of data bytes (block plus CRLF) that follow it.
enum MemcachedLineParser {
    static let storage: Set<String> = ["set", "add", "replace", "append", "prepend", "cas"]
    static let otherWrites: Set<String> = ["delete", "incr", "decr", "touch", "gat", "gats", "flush_all"]

    static func parse(_ line: ArraySlice<UInt8>, limits: MemcachedLimits) -> (MemcachedCommand, skip: Int) {
        line.withUnsafeBytes { parse($0, limits: limits) }
    }

    static func parse(_ line: UnsafeRawBufferPointer, limits: MemcachedLimits) -> (MemcachedCommand, skip: Int) {
        if let get = Get(line) {
            if let bad = get.refusal(limits) { return (bad, 0) }
            var keys = [[UInt8]]()
            get.forEachKey { keys.append(Array($0)) }
            return (.get(keys: keys, withCAS: get.withCAS), 0)
        }
        let tokens = line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 }).map { Array($0) }
        guard let first = tokens.first else {
            return (.malformed(reply: "ERROR", reason: "empty command line", close: false), 0)
        }
        let name = String(decoding: first, as: UTF8.self)
        switch name {
        case "version":
            return (.version, 0)
        case "stats":
            return (.stats, 0)
        case "quit":
            return (.quit, 0)
        case _ where storage.contains(name):
            let needed = name == "cas" ? 6 : 5
            guard tokens.count >= needed else {
                return (.malformed(reply: "CLIENT_ERROR invalid parameters",
                                   reason: "\(name) with \(tokens.count - 1) arguments", close: false), 0)
            }
            let noreply = tokens.count > needed && tokens.last == Array("noreply".utf8)
            guard let size = decimal(tokens[4]) else {
                return (.malformed(reply: "CLIENT_ERROR bad command line format",
                                   reason: "\(name): data length is not a number", close: false), 0)
            }
            guard size <= limits.maxDataBytes else {
                return (.malformed(reply: "SERVER_ERROR object too large for cache",
                                   reason: "\(name): data block of \(size) bytes", close: true), 0)
            }
            return (.write(command: name, noreply: noreply), size + 2)
        case _ where otherWrites.contains(name):
            let noreply = tokens.count > 1 && tokens.last == Array("noreply".utf8)
            return (.write(command: name, noreply: noreply), 0)
        default:
            return (.malformed(reply: "ERROR", reason: "unknown command '\(printable(first))'", close: false), 0)
        }
    }

    /// A `get` or `gets` line, its keys read in place (nothing allocated): how the server
    /// answers the commands that matter for speed without building a `MemcachedCommand`.
    struct Get {
        let line: UnsafeRawBufferPointer
        let withCAS: Bool
        /// Where the keys start (after the command name).
        let keysFrom: Int

        /// nil when `line` is not `get`/`gets` followed by its end, a space or a tab.
        @inline(__always)
        init?(_ line: UnsafeRawBufferPointer) {
            var at = 0
            while at < line.count && (line[at] == 0x20 || line[at] == 0x09) { at += 1 }
            guard line.count - at >= 3, line[at] == UInt8(ascii: "g"), line[at + 1] == UInt8(ascii: "e"),
                  line[at + 2] == UInt8(ascii: "t") else { return nil }
            at += 3
            let cas = at < line.count && line[at] == UInt8(ascii: "s")
            if cas { at += 1 }
            guard at == line.count || line[at] == 0x20 || line[at] == 0x09 else { return nil }
            self.line = line
            withCAS = cas
            keysFrom = at
        }

        /// Calls `body` with each key (separated by spaces or tabs), in order.
        @inline(__always)
        func forEachKey(_ body: (UnsafeRawBufferPointer) throws -> Void) rethrows {
            var at = keysFrom
            let n = line.count
            while at < n {
                while at < n && (line[at] == 0x20 || line[at] == 0x09) { at += 1 }
                let start = at
                while at < n && line[at] != 0x20 && line[at] != 0x09 { at += 1 }
                if at > start { try body(UnsafeRawBufferPointer(rebasing: line[start..<at])) }
            }
        }

        /// The reply for a key over the limit, nil when every key is within it.
        func refusal(_ limits: MemcachedLimits) -> MemcachedCommand? {
            // No key can be longer than the keys' part of the line: with the default limits
            // (a line of 8,192 bytes, a key of as many) never, and the keys are not walked
            // twice (a tenth of a 10-key `get`'s own instructions went here).
            guard line.count - keysFrom > limits.maxKeyBytes else { return nil }
            var first = 0
            forEachKey { if first == 0 && $0.count > limits.maxKeyBytes { first = $0.count } }
            guard first > 0 else { return nil }
            return .malformed(reply: "CLIENT_ERROR key too long",
                              reason: "key of \(first) bytes, the limit is \(limits.maxKeyBytes)", close: false)
        }
    }

    /// A non-negative decimal that fits comfortably in an Int, nil otherwise.
    static func decimal(_ bytes: [UInt8]) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 15 else { return nil }
        var n = 0
        for c in bytes {
            guard c >= 0x30 && c <= 0x39 else { return nil }
            n = n * 10 + Int(c - 0x30)
        }
        return n
    }

    /// At most 64 bytes of `bytes` for a log line, non-printable bytes escaped.
    static func printable(_ bytes: [UInt8]) -> String {
        var s = ""
        for c in bytes.prefix(64) {
            if c >= 0x20 && c < 0x7F { s.unicodeScalars.append(Unicode.Scalar(c)) } else { s += "\\x" + String(c, radix: 16) }
        }
        return bytes.count > 64 ? s + "…" : s
    }
}
