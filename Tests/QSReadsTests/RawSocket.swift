import Foundation
import QSTesting

/// One request on a fresh socket (TCP loopback or Unix), read until the server closes it.
/// Requests end with something that makes the server close (`quit`, `Connection: close`).
enum RawSocket {
    static func exchange(port: Int, _ bytes: [UInt8]) -> [UInt8] {
        guard let fd = Harness.connectLoopback(port: port) else { return [] }
        return exchange(fd: fd, bytes)
    }

    static func exchange(unixPath: String, _ bytes: [UInt8]) -> [UInt8] {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array(unixPath.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, c) in path.prefix(raw.count - 1).enumerated() { raw[i] = c }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            return []
        }
        return exchange(fd: fd, bytes)
    }

    /// As `exchange`, the socket's sending side shut once the request is sent (`printf … |
    /// nc -N`): the server sees the client's end right behind its request.
    static func exchangeHalfClosed(port: Int, _ bytes: [UInt8]) -> [UInt8] {
        guard let fd = Harness.connectLoopback(port: port) else { return [] }
        return exchange(fd: fd, bytes, halfClose: true)
    }

    private static func exchange(fd: Int32, _ bytes: [UInt8], halfClose: Bool = false) -> [UInt8] {
        defer { close(fd) }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }
        return Harness.readToEnd(fd)
    }
}

/// An HTTP/1.1 response taken apart.
struct RawHTTPResponse: Equatable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    init?(_ bytes: [UInt8]) {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, bytes.count - 3)).first(where: { Array(bytes[$0..<$0 + 4]) == sep }) else { return nil }
        let head = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        guard let first = head.first, let code = first.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        status = code
        var h = [String: String]()
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            h[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        headers = h
        body = Array(bytes[(end + 4)...])
    }
}

/// An HTTP request's bytes, closing the connection after the answer.
func httpRequest(_ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = []) -> [UInt8] {
    var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n"
    for (k, v) in headers.sorted(by: { $0.key < $1.key }) { text += "\(k): \(v)\r\n" }
    if !body.isEmpty || method == "POST" || method == "PUT" { text += "Content-Length: \(body.count)\r\n" }
    text += "Connection: close\r\n\r\n"
    return Array(text.utf8) + body
}
