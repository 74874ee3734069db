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

    /// Whether a connection whose far end is `ip`:`port` (as the socket says, numeric)
    /// reached one of `own`, the addresses this process listens on as bound: the same port,
    /// and the same address, or any address of this machine where `own` is a wildcard
    /// (`0.0.0.0`, `::`). So a node given itself under another spelling (a host name, the
    /// machine's own address, `localhost`) tells once connected, whatever the spelling.
    public static func reachesOwn(ip: String, port: Int, own: [Endpoint]) -> Bool {
        var ip = ip
        if ip.lowercased().hasPrefix("::ffff:"), ip.contains(".") { ip = String(ip.dropFirst(7)) }
        var local: Set<String>?
        for case let .tcp(host, p) in own where p == port && p != 0 {
            if host == "0.0.0.0" || host == "::" || host.isEmpty {
                if ip.hasPrefix("127.") || ip == "::1" { return true }
                if local == nil { local = machineAddresses() }
                if local!.contains(ip) { return true }
            } else if host == ip || (host.lowercased() == "localhost" && (ip.hasPrefix("127.") || ip == "::1")) {
                return true
            }
        }
        return false
    }

    /// The address of this machine's that `host`:`port` resolves to where `own` listens (or
    /// will: a listener not bound yet is judged as configured), as `reachesOwn` judges a
    /// connection's far end; nil when none. Resolves on NIO's blocking-I/O thread pool.
    /// For a connection to `host` that found nothing listening: a node that has not bound
    /// its listener yet (an empty replica bootstrapping) given itself by a host name or the
    /// machine's own address.
    public static func ownAddress(host: String, port: Int, own: [Endpoint]) async -> String? {
        let resolved = (try? await NIOThreadPool.singleton.runIfActive { Self.resolve(host) }) ?? []
        for r in resolved {
            guard let ip = text(r.bytes, family: r.v4 ? AF_INET : AF_INET6) else { continue }
            if reachesOwn(ip: ip, port: port, own: own) { return ip }
        }
        return nil
    }

    /// Whether `upstream` names the listener `own` by a loopback spelling (`localhost`,
    /// 127.x, `::1`) of an address it accepts on (loopback, or a wildcard): the same
    /// listener whatever the machine, judged without a connection (a node that is not
    /// listening yet, or a list checked before it is taken). Loopback addresses are never
    /// forwarded elsewhere, unlike a machine's other addresses.
    public static func namesByLoopback(_ upstream: Endpoint, own: Endpoint) -> Bool {
        guard case let .tcp(host, port) = upstream, case let .tcp(ownHost, ownPort) = own, port == ownPort, port != 0 else { return false }
        let up = host.lowercased(), mine = ownHost.lowercased()
        // The loopback addresses each spelling reaches: `localhost` is 127.0.0.1 or ::1.
        func v4(_ h: String) -> Bool { h.hasPrefix("127.") }
        switch mine {
        case "0.0.0.0", "": return v4(up) || up == "localhost"
        case "::": return v4(up) || up == "::1" || up == "localhost"
        case "localhost": return up == "localhost" || up == "127.0.0.1" || up == "::1"
        case "127.0.0.1", "::1": return up == mine || up == "localhost"
        default: return v4(mine) && up == mine
        }
    }

    /// The addresses of this machine's interfaces, numeric (getifaddrs).
    static func machineAddresses() -> Set<String> {
        var first: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&first) == 0 else { return [] }
        defer { freeifaddrs(first) }
        var out = Set<String>()
        var next = first
        while let i = next {
            if let a = i.pointee.ifa_addr.flatMap(address), let t = text(a.bytes, family: a.v4 ? AF_INET : AF_INET6) { out.insert(t) }
            next = i.pointee.ifa_next
        }
        return out
    }

    /// The IPv4 or IPv6 address a socket address holds, nil for another family.
    static func address(_ addr: UnsafeMutablePointer<sockaddr>) -> Resolved? {
        switch Int32(addr.pointee.sa_family) {
        case AF_INET:
            return addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                var a = p.pointee.sin_addr
                return Resolved(v4: true, bytes: withUnsafeBytes(of: &a) { Array($0) })
            }
        case AF_INET6:
            return addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                var a = p.pointee.sin6_addr
                return Resolved(v4: false, bytes: withUnsafeBytes(of: &a) { Array($0) })
            }
        default:
            return nil
        }
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
            if let a = info.pointee.ai_addr.flatMap(address) { out.append(a) }
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
