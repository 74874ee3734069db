import Foundation

/// A Linux network namespace joined to the host's by a veth pair, for partition tests with
/// real processes (docs/ha.md, "Partitions"). A daemon started in it (`launcher`,
/// `RootNode(namespace:)`) listens on `address` and reaches the host at `hostAddress`;
/// the host reaches it at `address`. `partition()` takes the link down (nothing passes
/// either way and open connections hang, as in a network partition); `cutOff(hostPorts:)`
/// drops only the traffic to and from some of the host's ports (iptables rules inside the
/// namespace), so the daemon is cut off from etcd while its own clients still reach it;
/// `heal()` undoes both.
///
/// Each namespace takes one /30 of 10.213.0.0/16: a random one whose name
/// (`qsns<n>`) `ip netns add` can create — the name claims the addresses atomically
/// between tests running at once — and whose addresses no interface holds. Deleting the
/// namespace (`close`, `deinit`) deletes both ends of the veth pair. Needs root
/// (CAP_NET_ADMIN) and iproute2; `unavailable` says why when not (tests skip).
public final class NetworkNamespace: @unchecked Sendable {
    public let name: String
    /// The veth end in the host's namespace, and the one inside.
    public let hostVeth: String
    public let innerVeth: String
    /// The host's address on the link (a daemon inside reaches host listeners here).
    public let hostAddress: String
    /// The namespace's address (the host reaches a daemon inside here).
    public let address: String
    private var closed = false

    static let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let iptables = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Why namespaces cannot be made here (nil: they can): not root (or root without
    /// CAP_NET_ADMIN and CAP_SYS_ADMIN, as in a default container), or iproute2 or iptables
    /// missing.
    public static var unavailable: String? {
        if geteuid() != 0 { return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); this test runs as uid \(geteuid())" }
        // CAP_NET_ADMIN is bit 12 of the effective set, CAP_SYS_ADMIN bit 21.
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        if let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
           let caps = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16),
           caps & (1 << 12) == 0 || caps & (1 << 21) == 0 {
            return "network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN, which this root process lacks (effective capabilities \(String(caps, radix: 16)))"
        }
        if ip == nil { return "iproute2's ip is not installed" }
        if iptables == nil { return "iptables is not installed" }
        return nil
    }

    /// The command prefix that runs an executable inside (for `DaemonProcess(launcher:)`):
    /// `ip netns exec NAME`, which execs it, so its pid is the daemon's.
    public var launcher: [String] { [Self.ip ?? "ip", "netns", "exec", name] }

    public init() throws {
        if let why = Self.unavailable { throw HarnessError(why) }
        let n = try Self.claim()
        let prefix = "10.213.\(n >> 6).", last = (n & 63) * 4
        name = "qsns\(n)"
        hostVeth = "qsh\(n)"
        innerVeth = "qsi\(n)"
        hostAddress = prefix + "\(last + 1)"
        address = prefix + "\(last + 2)"
        do {
            try setUp()
        } catch {
            close()
            throw error
        }
    }

    /// Creates namespace `qsns<n>` for a random /30 `n` of 10.213.0.0/16 that no other
    /// namespace of this kind has and no interface uses; returns `n`.
    private static func claim() throws -> Int {
        var reasons = [String]()
        for _ in 0..<64 {
            let n = Int.random(in: 0..<16384)
            let prefix = "10.213.\(n >> 6).", last = (n & 63) * 4
            let add = try ip(["netns", "add", "qsns\(n)"])
            guard add.status == 0 else {
                reasons.append("qsns\(n): \(add.output)")
                continue
            }
            let used = try ip(["-4", "-o", "addr", "show"]).output
            if (last...last + 3).contains(where: { used.contains(" \(prefix)\($0)/") }) {
                _ = try? ip(["netns", "delete", "qsns\(n)"])
                reasons.append("\(prefix)\(last)/30 is in use")
                continue
            }
            return n
        }
        throw HarnessError("no free network namespace in 64 tries: \(reasons.suffix(5).joined(separator: "; "))")
    }

    private func setUp() throws {
        try Self.must(["link", "add", hostVeth, "type", "veth", "peer", "name", innerVeth])
        try Self.must(["link", "set", innerVeth, "netns", name])
        try Self.must(["addr", "add", "\(hostAddress)/30", "dev", hostVeth])
        try Self.must(["link", "set", hostVeth, "up"])
        try inside(["addr", "add", "\(address)/30", "dev", innerVeth])
        try inside(["link", "set", innerVeth, "up"])
        try inside(["link", "set", "lo", "up"])
    }

    /// Takes the link down: nothing passes either way until `heal()`.
    public func partition() throws {
        try Self.must(["link", "set", hostVeth, "down"])
    }

    /// Drops every TCP packet from inside to `hostPorts` on `hostAddress`, and back, until
    /// `heal()`: connections to them hang (the SYN goes unanswered), open ones stall.
    public func cutOff(hostPorts: [Int]) throws {
        for port in hostPorts {
            try iptables(["-A", "OUTPUT", "-p", "tcp", "-d", hostAddress, "--dport", "\(port)", "-j", "DROP"])
            try iptables(["-A", "INPUT", "-p", "tcp", "-s", hostAddress, "--sport", "\(port)", "-j", "DROP"])
        }
    }

    /// Undoes `partition()` and `cutOff(hostPorts:)`.
    public func heal() throws {
        try iptables(["-F", "OUTPUT"])
        try iptables(["-F", "INPUT"])
        try Self.must(["link", "set", hostVeth, "up"])
    }

    /// Deletes the namespace (and with it the veth pair and its rules).
    public func close() {
        guard !closed else { return }
        closed = true
        _ = try? Self.ip(["netns", "delete", name])
    }

    deinit { close() }

    private func inside(_ args: [String]) throws {
        try Self.must(["-n", name] + args)
    }

    private func iptables(_ args: [String]) throws {
        let r = try Harness.run(Self.ip ?? "ip", ["netns", "exec", name, Self.iptables ?? "iptables", "-w"] + args)
        guard r.status == 0 else {
            throw HarnessError("iptables \(args.joined(separator: " ")) in namespace \(name): \(String(decoding: r.stdout + r.stderr, as: UTF8.self))")
        }
    }

    private static func ip(_ args: [String]) throws -> (status: Int32, output: String) {
        let r = try Harness.run(ip ?? "ip", args)
        return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
    }

    private static func must(_ args: [String]) throws {
        let r = try ip(args)
        guard r.status == 0 else { throw HarnessError("ip \(args.joined(separator: " ")): \(r.output)") }
    }
}
