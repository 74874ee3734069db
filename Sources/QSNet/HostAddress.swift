import NIOPosix
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A host name as one stable address, so that names of one host (`localhost`,
/// `127.0.0.1`, another alias of the same address) give one identity.
public enum HostAddress {
    /// The name every loopback address (127.0.0.0/8, ::1) stands as.
    public static let loopback = "127.0.0.1"

    /// Resolves `host` (getaddrinfo, on NIO's blocking-I/O thread pool): a loopback
    /// address if any of its addresses is one, else the lowest IPv4 address, else the
    /// lowest IPv6 address, in their numeric text form. Nil when the name does not resolve.
    public static func canonical(_ host: String) async -> String? {
        if host.hasPrefix("127.") || host == "::1" || host.lowercased() == "localhost" { return loopback }
        let resolved = try? await NIOThreadPool.singleton.runIfActive { Self.resolve(host) }
        guard let addresses = resolved, !addresses.isEmpty else { return nil }
        if addresses.contains(where: { $0.loopback }) { return loopback }
        let v4 = addresses.filter { $0.v4 }.map(\.bytes).sorted { $0.lexicographicallyPrecedes($1) }
        let v6 = addresses.filter { !$0.v4 }.map(\.bytes).sorted { $0.lexicographicallyPrecedes($1) }
        if let first = v4.first { return text(first, family: AF_INET) }
        return v6.first.flatMap { text($0, family: AF_INET6) }
    }

    struct Resolved {
        var v4: Bool
        var bytes: [UInt8]
        var loopback: Bool { v4 ? bytes.first == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1] }
    }

    static func resolve(_ host: String) -> [Resolved] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var out = [Resolved]()
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let info = next {
            if let addr = info.pointee.ai_addr {
                switch Int32(info.pointee.ai_family) {
                case AF_INET:
                    addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                        var a = p.pointee.sin_addr
                        out.append(Resolved(v4: true, bytes: withUnsafeBytes(of: &a) { Array($0) }))
                    }
                case AF_INET6:
                    addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                        var a = p.pointee.sin6_addr
                        out.append(Resolved(v4: false, bytes: withUnsafeBytes(of: &a) { Array($0) }))
                    }
                default: break
                }
            }
            next = info.pointee.ai_next
        }
        return out
    }

    static func text(_ bytes: [UInt8], family: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let ok = bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
        }
        guard ok else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
