/// One KT HTTP read request as the fast path (`KTFastHTTPHandler`) takes it from a
/// connection's bytes, or why it does not: a whole, simple request —
/// `GET|HEAD /KEY HTTP/1.x` (KT's RESTful read, `/DB/KEY` too) or
/// `GET /rpc/get?QUERY HTTP/1.x` — with ordinary headers and no body. Anything else is for
/// NIO's HTTP pipeline, byte for byte: another method or procedure, a body or a
/// `Content-Length` other than 0, `Transfer-Encoding`, `Expect`, `Upgrade`, a `Connection`
/// other than one `close` or `keep-alive`, bare LF line ends, folded or malformed header
/// lines, a character in the target outside RFC 3986's set, a head longer than
/// `maxHeadBytes`, or a head not yet whole.
///
/// What it accepts, NIO's decoder reads the same way (same method, target, version and
/// keep-alive, no body; tested side by side), so the two paths answer alike. Public for
/// the fuzz target (`qsfuzz`); parsing reads the bytes in place and allocates nothing.
public struct KTFastRequest: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// `GET` or `HEAD` of a RESTful path.
        case restGet, restHead
        /// `GET /rpc/get?…`.
        case rpcGet
    }

    public var kind: Kind
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: UInt8
    /// Whether the connection stays open after the answer (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    public var keepAlive: Bool
    /// Where the request target lies in the bytes parsed.
    public var target: Range<Int>
    /// The bytes the request takes (request line and header block).
    public var length: Int

    public enum Parse: Equatable, Sendable {
        case request(KTFastRequest)
        /// The head is not whole yet (and within `maxHeadBytes`).
        case incomplete
        /// Not a request the fast path answers: NIO's pipeline is to read it.
        case handOver
    }

    /// The longest head the fast path reads (NIO's decoder takes up to 80 KiB).
    public static let maxHeadBytes = 8192

    static let rpcGet = Array("/rpc/get?".utf8)
    static let rpc = Array("/rpc/".utf8)

    /// What a `GET` (or `HEAD`, `head`) of `target` is, nil when the fast path does not
    /// answer it (a procedure other than `get`, `HEAD` of a procedure, a target not
    /// starting with `/`).
    public static func kind(target: UnsafeRawBufferPointer, head: Bool) -> Kind? {
        guard target.first == UInt8(ascii: "/") else { return nil }
        if target.starts(with: rpc) {
            guard !head, target.starts(with: rpcGet) else { return nil }
            return .rpcGet
        }
        return head ? .restHead : .restGet
    }

    /// The request at the start of `bytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Parse {
        var p = Parser(bytes: bytes)
        return p.request()
    }
}

/// The grammar, over raw bytes. Every step either advances or says why it stopped.
private struct Parser {
    let bytes: UnsafeRawBufferPointer
    var i = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    /// The outcome of a step that could not finish.
    enum Stop: Error { case incomplete, handOver }

    mutating func request() -> KTFastRequest.Parse {
        do {
            return .request(try parse())
        } catch .incomplete {
            return bytes.count >= KTFastRequest.maxHeadBytes ? .handOver : .incomplete
        } catch {
            return .handOver
        }
    }

    private mutating func parse() throws(Stop) -> KTFastRequest {
        let head: Bool
        if try literal("GET ") {
            head = false
        } else if try literal("HEAD ") {
            head = true
        } else {
            throw .handOver
        }
        let targetStart = i
        while true {
            let c = try byte()
            if c == 0x20 { break }
            guard Self.targetByte(c) else { throw .handOver }
        }
        let target = targetStart..<(i - 1)
        guard let kind = KTFastRequest.kind(target: UnsafeRawBufferPointer(rebasing: bytes[target]), head: head) else { throw .handOver }
        guard try literal("HTTP/1.") else { throw .handOver }
        let minor = try byte()
        guard minor == UInt8(ascii: "0") || minor == UInt8(ascii: "1") else { throw .handOver }
        try lineEnd()
        var connection: Bool?  // true: keep-alive, false: close
        var contentLength = false
        while true {
            if try peek() == 0x0D {
                try lineEnd()
                break
            }
            try header(&connection, &contentLength)
        }
        guard i <= KTFastRequest.maxHeadBytes else { throw .handOver }
        let keepAlive = connection ?? (minor == UInt8(ascii: "1"))
        return KTFastRequest(kind: kind, minorVersion: minor - UInt8(ascii: "0"), keepAlive: keepAlive, target: target, length: i)
    }

    /// One `name: value` line; only a `Connection` of `close` or `keep-alive` and a
    /// `Content-Length` of 0 are read, other names that change the framing or the exchange
    /// hand the request over.
    private mutating func header(_ connection: inout Bool?, _ contentLength: inout Bool) throws(Stop) {
        let nameStart = i
        while true {
            let c = try byte()
            if c == UInt8(ascii: ":") { break }
            guard Self.tokenByte(c) else { throw .handOver }
        }
        let name = UnsafeRawBufferPointer(rebasing: bytes[nameStart..<(i - 1)])
        guard !name.isEmpty else { throw .handOver }
        while true {
            let c = try peek()
            guard c == 0x20 || c == 0x09 else { break }
            i += 1
        }
        let valueStart = i
        var valueEnd = i
        while true {
            let c = try peek()
            if c == 0x0D { break }
            guard c == 0x09 || (c >= 0x20 && c < 0x7F) else { throw .handOver }
            i += 1
            if c != 0x20 && c != 0x09 { valueEnd = i }
        }
        try lineEnd()
        let value = UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd])
        if Self.equalsIgnoringCase(name, "connection") {
            guard connection == nil else { throw .handOver }
            if Self.equalsIgnoringCase(value, "close") {
                connection = false
            } else if Self.equalsIgnoringCase(value, "keep-alive") {
                connection = true
            } else {
                throw .handOver
            }
        } else if Self.equalsIgnoringCase(name, "content-length") {
            // NIO's decoder refuses a second Content-Length, even an equal one.
            guard !contentLength, value.count == 1, value[0] == UInt8(ascii: "0") else { throw .handOver }
            contentLength = true
        } else if Self.equalsIgnoringCase(name, "transfer-encoding") || Self.equalsIgnoringCase(name, "expect")
                    || Self.equalsIgnoringCase(name, "upgrade") {
            throw .handOver
        }
    }

    private mutating func byte() throws(Stop) -> UInt8 {
        guard i < bytes.count else { throw .incomplete }
        defer { i += 1 }
        return bytes[i]
    }

    private func peek() throws(Stop) -> UInt8 {
        guard i < bytes.count else { throw .incomplete }
        return bytes[i]
    }

    /// CRLF; a bare LF or anything else hands over.
    private mutating func lineEnd() throws(Stop) {
        guard try byte() == 0x0D, try byte() == 0x0A else { throw .handOver }
    }

    /// Whether `text` comes next (consumed if so); a prefix of it at the end is incomplete.
    private mutating func literal(_ text: StaticString) throws(Stop) -> Bool {
        let n = text.utf8CodeUnitCount
        let available = min(n, bytes.count - i)
        for k in 0..<available where bytes[i + k] != text.utf8Start[k] { return false }
        guard available == n else { throw .incomplete }
        i += n
        return true
    }

    /// RFC 3986's unreserved, sub-delims, `:@/?%`: what a target may hold here.
    static func targetByte(_ c: UInt8) -> Bool {
        switch c {
        case 0x41...0x5A, 0x61...0x7A, 0x30...0x39: return true
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"): return true
        case UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("),
             UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"),
             UInt8(ascii: "="): return true
        case UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "/"), UInt8(ascii: "?"), UInt8(ascii: "%"): return true
        default: return false
        }
    }

    /// RFC 9110's tchar: what a header name may hold.
    static func tokenByte(_ c: UInt8) -> Bool {
        switch c {
        case 0x41...0x5A, 0x61...0x7A, 0x30...0x39: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): return true
        default: return false
        }
    }

    static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ lower: StaticString) -> Bool {
        guard bytes.count == lower.utf8CodeUnitCount else { return false }
        for k in 0..<bytes.count {
            var c = bytes[k]
            if c >= 0x41 && c <= 0x5A { c |= 0x20 }
            if c != lower.utf8Start[k] { return false }
        }
        return true
    }
}
