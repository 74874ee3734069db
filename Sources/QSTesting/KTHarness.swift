import Foundation

/// A `fakekt` process on a port the kernel picks (port 0, learned from its ready file)
/// with an update log, for bridge tests.
public final class FakeKTProcess: @unchecked Sendable {
    public let daemon: DaemonProcess
    public let port: Int
    public let ulog: URL

    /// `databases` as ktserver takes them (`*`, `%`, `main.kch`, …); `faults` are fakekt's
    /// fault flags, e.g. `["-fault-close-after", "50"]`.
    public init(logDir: URL, sid: Int = 7, databases: [String] = ["main.kch", "aux.kct"], ulog: URL? = nil,
                faults: [String] = []) throws {
        self.ulog = ulog ?? logDir.appendingPathComponent("ulog-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: self.ulog, withIntermediateDirectories: true)
        daemon = try DaemonProcess("fakekt", ["-host", "127.0.0.1", "-port", "0", "-ulog", self.ulog.path, "-sid", "\(sid)"]
            + faults + databases, logDir: logDir, ready: true)
        self.port = try daemon.port("kt")
    }

    public var address: String { "127.0.0.1:\(port)" }

    /// Calls an HTTP RPC procedure with form-encoded parameters; returns status and body.
    @discardableResult
    public func rpc(_ procedure: String, _ params: [(String, [UInt8])]) -> (status: Int, body: String) {
        let body = params.map { "\(formEncode(Array($0.0.utf8)))=\(formEncode($0.1))" }.joined(separator: "&")
        return httpPost(port: port, path: "/rpc/\(procedure)", contentType: "application/x-www-form-urlencoded", body: Array(body.utf8))
            ?? (0, "")
    }

    public func set(_ key: String, _ value: String, db: Int = 0, xt: Int? = nil) {
        var p: [(String, [UInt8])] = [("key", Array(key.utf8)), ("value", Array(value.utf8)), ("DB", Array(String(db).utf8))]
        if let xt { p.append(("xt", Array(String(xt).utf8))) }
        rpc("set", p)
    }

    public func remove(_ key: String, db: Int = 0) {
        rpc("remove", [("key", Array(key.utf8)), ("DB", Array(String(db).utf8))])
    }

    /// KT's live records read back over its RPC (`match_prefix`, then `get` per key), as QS
    /// keys: database `db`'s keys under `prefixes[db]`. For keys and values of plain text.
    public func state(prefixes: [Int: String]) -> [[UInt8]: [UInt8]] {
        var out = [[UInt8]: [UInt8]]()
        for (db, prefix) in prefixes {
            let r = rpc("match_prefix", [("prefix", []), ("DB", Array(String(db).utf8)), ("max", Array("100000".utf8))])
            for line in r.body.split(separator: "\n") where line.hasPrefix("_") {
                let key = String(line.split(separator: "\t")[0].dropFirst())
                let v = rpc("get", [("key", Array(key.utf8)), ("DB", Array(String(db).utf8))])
                let value = v.body.split(separator: "\n").first { $0.hasPrefix("value\t") }.map { String($0.dropFirst(6)) } ?? ""
                out[Array((prefix + key).utf8)] = Array(value.utf8)
            }
        }
        return out
    }
}

func formEncode(_ bytes: [UInt8]) -> String {
    var out = ""
    for b in bytes {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
            out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            out += String(format: "%%%02X", b)
        }
    }
    return out
}

/// A minimal HTTP/1.0 POST over a socket, with `headers` besides the content's.
public func httpPost(port: Int, path: String, contentType: String, body: [UInt8],
                     headers: [(String, String)] = []) -> (status: Int, body: String)? {
    guard let fd = Harness.connectLoopback(port: port) else { return nil }
    defer { close(fd) }
    let extra = headers.map { "\($0.0): \($0.1)\r\n" }.joined()
    let head = "POST \(path) HTTP/1.0\r\nHost: localhost\r\n\(extra)Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\r\n"
    let req = Array(head.utf8) + body
    _ = req.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    return readHTTPResponse(fd)
}

/// A minimal HTTP/1.0 request over a Unix socket (an admin server on `--admin unix:PATH`,
/// reachable before the daemon writes its ready file).
public func httpRequest(unixPath: String, method: String = "GET", path: String, body: [UInt8] = []) -> (status: Int, body: String)? {
    guard let fd = Harness.connectUnix(path: unixPath) else { return nil }
    defer { close(fd) }
    let req = Array("\(method) \(path) HTTP/1.0\r\nHost: localhost\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
    _ = req.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    return readHTTPResponse(fd)
}

/// Reads an HTTP response from `fd` until the peer closes it: its status and body.
public func readHTTPResponse(_ fd: Int32) -> (status: Int, body: String)? {
    var data = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        data.append(contentsOf: buf[0..<n])
    }
    let text = String(decoding: data, as: UTF8.self)
    guard let headEnd = text.range(of: "\r\n\r\n") else { return nil }
    let statusLine = text[..<headEnd.lowerBound].split(separator: "\r\n").first ?? ""
    let status = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return (status, String(text[headEnd.upperBound...]))
}
