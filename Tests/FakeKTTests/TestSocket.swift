import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A blocking loopback TCP client for tests, with a receive deadline on every read.
final class TestSocket {
    let fd: Int32
    private var pending: [UInt8] = []

    init(port: Int, timeout: Double = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSocketError.failed("socket") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw TestSocketError.failed("connect")
        }
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestSocketError.failed("send") }
            off += n
        }
    }

    /// Reads more bytes; returns false at end of stream.
    private func fill() throws -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return false }
        guard n > 0 else { throw TestSocketError.timeout }
        pending += buf[0..<n]
        return true
    }

    /// Exactly `count` bytes.
    func read(_ count: Int) throws -> [UInt8] {
        while pending.count < count {
            guard try fill() else { throw TestSocketError.closed(received: pending) }
        }
        defer { pending.removeFirst(count) }
        return Array(pending[0..<count])
    }

    /// Everything until the peer closes.
    func readToEnd() throws -> [UInt8] {
        while try fill() {}
        defer { pending.removeAll() }
        return pending
    }

    /// One HTTP response: status, headers (lower-cased names) and body.
    func readHTTPResponse(head: Bool = false) throws -> (status: Int, headers: [String: String], body: [UInt8]) {
        var headerEnd: Int? = nil
        while headerEnd == nil {
            if let r = pending.indices.dropLast(3).first(where: { pending[$0] == 13 && pending[$0 + 1] == 10 && pending[$0 + 2] == 13 && pending[$0 + 3] == 10 }) {
                headerEnd = r
            } else if try !fill() {
                throw TestSocketError.closed(received: pending)
            }
        }
        let end = headerEnd ?? 0
        let text = String(decoding: pending[0..<end], as: UTF8.self)
        pending.removeFirst(end + 4)
        var lines = text.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        let status = statusLine.count > 1 ? Int(statusLine[1]) ?? 0 : 0
        var headers: [String: String] = [:]
        for l in lines {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
        let length = head ? 0 : Int(headers["content-length"] ?? "0") ?? 0
        return (status, headers, try read(length))
    }
}

enum TestSocketError: Error {
    case failed(String)
    case timeout
    case closed(received: [UInt8])
}
