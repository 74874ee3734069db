import Foundation

/// A real etcd cluster (Debian's `etcd-server`, 3.4) of `size` members on loopback, for
/// root cluster tests. etcd cannot listen on port 0 and report its port, so its ports are
/// chosen before it starts: the kernel hands out `2 × size` distinct free ports (every
/// socket bound to port 0 and held until all are known, then closed). Another process could
/// take one in the moment between the close and etcd's bind; etcd then exits with "address
/// already in use", which `start` reports in its error with the member's log, rather than
/// hiding it behind a retry.
public final class EtcdCluster: @unchecked Sendable {
    public struct Member {
        public let name: String
        public let clientPort: Int
        public let peerPort: Int
        public let data: URL
        public var clientURL: String { "http://127.0.0.1:\(clientPort)" }
        /// Its client URL on another address it listens on (`EtcdCluster(alsoListenOn:)`).
        public func clientURL(on host: String) -> String { "http://\(host):\(clientPort)" }
        public var peerURL: String { "http://127.0.0.1:\(peerPort)" }
    }

    public let members: [Member]
    public private(set) var processes: [DaemonProcess?]
    /// Members `pause`d: not asked who leads (they would not answer).
    private var paused = Set<Int>()
    let logDir: URL
    let initialCluster: String
    /// Addresses besides loopback every member takes clients on (a network namespace's
    /// host side), with the same client port.
    let alsoListenOn: [String]
    /// More flags for every member (e.g. `--auth-token-ttl`).
    let extraArgs: [String]

    /// The members' client URLs, comma separated (qsnode's `--etcd`).
    public var urls: String { members.map(\.clientURL).joined(separator: ",") }

    /// The members' client URLs on `host`, one of `alsoListenOn`.
    public func urls(on host: String) -> String { members.map { $0.clientURL(on: host) }.joined(separator: ",") }

    public static var binary: String { ProcessInfo.processInfo.environment["QS_ETCD_BIN"] ?? "/usr/bin/etcd" }
    public static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    /// Starts `size` members in `dir` and waits until the cluster has a leader. Each takes
    /// clients on loopback and on each address of `alsoListenOn` (which must exist).
    public init(size: Int = 3, dir: URL, logDir: URL, alsoListenOn: [String] = [], extraArgs: [String] = []) throws {
        self.alsoListenOn = alsoListenOn
        self.extraArgs = extraArgs
        let ports = try Self.freePorts(2 * size)
        members = (0..<size).map { i in
            Member(name: "e\(i)", clientPort: ports[2 * i], peerPort: ports[2 * i + 1], data: dir.appendingPathComponent("etcd\(i)"))
        }
        initialCluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        self.logDir = logDir
        processes = Array(repeating: nil, count: size)
        for i in 0..<size { try start(i, wait: false) }
        guard Harness.waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(50), { leader() != nil }) else {
            throw HarnessError("etcd elected no leader within 30 s:\n" + processes.compactMap { $0.map { "\($0.name): \($0.log.suffix(2000))" } }.joined(separator: "\n"))
        }
    }

    /// Starts member `i` (again, on its data directory: a restart rejoins with its data).
    public func start(_ i: Int, wait: Bool = true) throws {
        let m = members[i]
        let args = [
            "--name", m.name, "--data-dir", m.data.path,
            "--listen-client-urls", ([m.clientURL] + alsoListenOn.map(m.clientURL(on:))).joined(separator: ","),
            "--advertise-client-urls", m.clientURL,
            "--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
            "--initial-cluster", initialCluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "qs-test-\(members[0].peerPort)",
            // Fast elections on loopback: the leader's death is noticed in half a second.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000",
            "--log-level", "warn",
        ] + extraArgs
        let binary = URL(fileURLWithPath: Self.binary)
        let p = try DaemonProcess(binary.lastPathComponent, args, logDir: logDir, binDir: binary.deletingLastPathComponent())
        processes[i] = p
        guard wait else { return }
        guard Harness.waitUntil(timeout: .seconds(20), { Harness.isListening(port: m.clientPort) || !p.isRunning }), p.isRunning else {
            throw HarnessError("etcd member \(m.name) did not start on \(m.clientURL) (a port taken meanwhile?):\n\(p.log.suffix(3000))")
        }
    }

    /// SIGKILLs member `i`.
    public func kill(_ i: Int) throws {
        guard let p = processes[i] else { return }
        _ = try p.stop(signal: SIGKILL)
        processes[i] = nil
        paused.remove(i)
    }

    /// SIGSTOPs member `i`: it keeps its ports and accepts connections but answers nothing,
    /// like a hung process or host; `resume` continues it.
    public func pause(_ i: Int) {
        if let p = processes[i] { sendSignal(p.pid, SIGSTOP) }
        paused.insert(i)
    }

    /// SIGCONTs member `i` after `pause`.
    public func resume(_ i: Int) {
        if let p = processes[i] { sendSignal(p.pid, SIGCONT) }
        paused.remove(i)
    }

    /// The index of the member that is the leader, as a running member says; nil when none
    /// answers or they have none.
    public func leader() -> Int? {
        for (i, m) in members.enumerated() where processes[i]?.isRunning == true && !paused.contains(i) {
            guard let status = Self.post(port: m.clientPort, path: "/v3/maintenance/status", body: "{}"),
                  let leader = status["leader"] as? String, leader != "0" else { continue }
            for (j, other) in members.enumerated() where processes[j]?.isRunning == true && !paused.contains(j) {
                if let s = Self.post(port: other.clientPort, path: "/v3/maintenance/status", body: "{}"),
                   let header = s["header"] as? [String: Any], header["member_id"] as? String == leader {
                    return j
                }
            }
        }
        return nil
    }

    /// The keys and values under `prefix` (at most `limit`, 0: all), read from the first
    /// running member that answers (paused ones are not asked); empty when none does.
    public func keys(_ prefix: String, limit: Int = 0) -> [(key: String, value: [UInt8])] {
        var end = Array(prefix.utf8)
        end[end.count - 1] += 1
        let body = "{\"key\":\"\(Data(prefix.utf8).base64EncodedString())\",\"range_end\":\"\(Data(end).base64EncodedString())\",\"limit\":\"\(limit)\"}"
        for (i, m) in members.enumerated() where processes[i]?.isRunning == true && !paused.contains(i) {
            guard let json = Self.post(port: m.clientPort, path: "/v3/kv/range", body: body) else { continue }
            return (json["kvs"] as? [[String: Any]] ?? []).compactMap { kv in
                guard let k = (kv["key"] as? String).flatMap({ Data(base64Encoded: $0) }) else { return nil }
                return (String(decoding: k, as: UTF8.self), Array((kv["value"] as? String).flatMap { Data(base64Encoded: $0) } ?? Data()))
            }
        }
        return []
    }

    /// The first `log/` index etcd keeps for root cluster `cluster` (0: none).
    public func firstLogIndex(cluster: String) -> UInt64 {
        guard let first = keys("/qs/\(cluster)/log/", limit: 1).first else { return 0 }
        return UInt64(first.key.suffix(16), radix: 16) ?? 0
    }

    /// Puts `key` = `value` (no lease), as another writer of the cluster's keys would.
    public func put(_ key: String, _ value: [UInt8]) throws {
        try admin("/v3/kv/put", ["key": Data(key.utf8).base64EncodedString(), "value": Data(value).base64EncodedString()])
    }

    /// Deletes `key`.
    public func delete(_ key: String) throws {
        try admin("/v3/kv/deleterange", ["key": Data(key.utf8).base64EncodedString()])
    }

    /// Adds etcd user `name` with a role of its own that may read and write every key
    /// starting with `prefix` (a root cluster's `/qs/NAME/`). Before `enableAuthentication`.
    public func addUser(_ name: String, password: String, readWrite prefix: String) throws {
        let role = "\(name)-role"
        var end = Array(prefix.utf8)
        end[end.count - 1] += 1
        try admin("/v3/auth/user/add", ["name": name, "password": password])
        try admin("/v3/auth/role/add", ["name": role])
        try admin("/v3/auth/role/grant", ["name": role, "perm": ["permType": "READWRITE", "key": Data(prefix.utf8).base64EncodedString(),
                                                                 "range_end": Data(end).base64EncodedString()]])
        try admin("/v3/auth/user/grant", ["user": name, "role": role])
    }

    /// Turns etcd's authentication on, with user `root` (the root role) and `rootPassword`:
    /// from then on etcd takes no request without a user's token (`keys` and the other
    /// reads of this class no longer answer).
    public func enableAuthentication(rootPassword: String) throws {
        try admin("/v3/auth/user/add", ["name": "root", "password": rootPassword])
        try admin("/v3/auth/user/grant", ["user": "root", "role": "root"])
        try admin("/v3/auth/enable", [:])
    }

    /// Gives etcd user `user` a new password, as `root` (after `enableAuthentication`).
    public func changePassword(of user: String, to password: String, rootPassword: String) throws {
        let auth = String(decoding: try JSONSerialization.data(withJSONObject: ["name": "root", "password": rootPassword]), as: UTF8.self)
        guard let m = members.indices.first(where: { processes[$0]?.isRunning == true && !paused.contains($0) }).map({ members[$0] }),
              let answer = Self.post(port: m.clientPort, path: "/v3/auth/authenticate", body: auth), let token = answer["token"] as? String else {
            throw HarnessError("etcd did not authenticate root")
        }
        try admin("/v3/auth/user/changepw", ["name": user, "password": password], token: token)
    }

    /// An administrative request to the first running member that answers; throws with
    /// etcd's error when it refuses.
    private func admin(_ path: String, _ body: [String: Any], token: String? = nil) throws {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
        for (i, m) in members.enumerated() where processes[i]?.isRunning == true && !paused.contains(i) {
            guard let answer = Self.post(port: m.clientPort, path: path, body: json, token: token) else { continue }
            if let error = answer["error"] { throw HarnessError("etcd \(path) refused: \(error)") }
            return
        }
        throw HarnessError("no etcd member answered \(path)")
    }

    /// Stops every member.
    public func stop() {
        for i in processes.indices { try? kill(i) }
    }

    deinit { stop() }

    /// A POST to the JSON gateway of the member on `port` (through curl, which the project's
    /// machines have), its JSON answer; nil when it does not answer.
    static func post(port: Int, path: String, body: String, token: String? = nil) -> [String: Any]? {
        let auth = token.map { ["-H", "Authorization: \($0)"] } ?? []
        guard let r = try? Harness.run("/usr/bin/curl", ["-s", "-m", "2", "-X", "POST", "http://127.0.0.1:\(port)\(path)", "-d", body] + auth),
              r.status == 0 else { return nil }
        return (try? JSONSerialization.jsonObject(with: r.stdout)) as? [String: Any]
    }

    /// `n` distinct loopback ports free right now, from 10000–19999: below the kernel's
    /// ephemeral range, so no test's port-0 listener or outgoing connection takes one
    /// between now and the member's start, or while a killed member is down before its
    /// restart on the same ports (the two lanes of make test run beside these tests).
    /// scripts/container-test.sh takes its ports from 20000 up to that range.
    static func freePorts(_ n: Int) throws -> [Int] {
        // A machine whose ephemeral range starts lower has no such ports: the kernel's then.
        let top = min(20000, RefusingPort.ephemeralLow)
        let held = top >= 11000 ? try RefusingPort.held(n, in: 10000..<top) : try (0..<n).map { _ in try RefusingPort() }
        defer { held.forEach { $0.close() } }
        return held.map(\.port)
    }
}

/// Sends `sig` to process `pid` (outside `EtcdCluster`, whose `kill` is a member's SIGKILL).
private func sendSignal(_ pid: Int32, _ sig: Int32) {
    _ = kill(pid, sig)
}
