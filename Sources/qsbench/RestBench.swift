import Crypto
import Foundation
import QSTesting

/// Producers' writes through qsrest next to fakekt's HTTP `set` in the same run: closed-loop
/// producers (each sends one `/rpc/set` and waits for its answer) at 1, 16 and 64
/// connections; writes/s and p50/p99 acknowledgement latency. qsrest answers once the
/// batch holding the write is committed (fsync) at a real root, so its latency is bound
/// below by the batch interval: it runs at its default 500 ms and at 20 ms.
struct RestBench {
    let valueBytes: Int
    let seconds: Double
    let scratch: String
    let binDir: URL
    /// A real ktserver on loopback to measure instead of fakekt.
    let ktPort: Int?

    struct Result: Codable {
        var producers: [Int]
        /// "fakekt" or "ktserver on 127.0.0.1:PORT".
        var reference: String
        /// The reference's `/rpc/set` (fakekt: in memory, with its update log on disk, no
        /// fsync per write).
        var kt: [ReadBench.Load]
        /// qsrest at `--batch-interval 500ms` (its default).
        var qsrest500ms: [ReadBench.Load]
        /// qsrest at `--batch-interval 20ms`.
        var qsrest20ms: [ReadBench.Load]
        var qsrestPeakAnonBytes: Int
    }

    static let producers = [1, 16, 64]
    static let token = "bench-token"

    func requests(authorized: Bool) -> Requests {
        let value = String(repeating: "v", count: valueBytes)
        let auth = authorized ? "Authorization: Bearer \(Self.token)\r\n" : ""
        return Requests((0..<200_000).map { i in
            Array("GET /rpc/set?key=bench%2F\(String(format: "%08d", i))&value=\(value) HTTP/1.1\r\nHost: bench\r\n\(auth)\r\n".utf8)
        })
    }

    func run() async throws -> Result {
        let ulog = scratch + "/rest-ulog"
        try FileManager.default.createDirectory(atPath: ulog, withIntermediateDirectories: true)
        var fake: DaemonProcess?
        defer { _ = try? fake?.stop() }
        let reference: String, referencePort: Int
        if let ktPort {
            (reference, referencePort) = ("ktserver on 127.0.0.1:\(ktPort)", ktPort)
        } else {
            let kt = try startDaemon(binDir, scratch, "fakekt", ["-host", "127.0.0.1", "-port", "0", "-ulog", ulog, "-sid", "7", "*"])
            fake = kt
            (reference, referencePort) = ("fakekt", try kt.port("kt"))
        }
        let plain = requests(authorized: false), authorized = requests(authorized: true)
        try checkAccepted(port: referencePort, plain.list[0], reference)
        var ktLoads = [ReadBench.Load]()
        for n in Self.producers {
            FileHandle.standardError.write(Data("rest: \(reference), \(n) producer(s)\n".utf8))
            ktLoads.append(closedLoop(port: referencePort, connections: n, seconds: seconds, requests: plain, done: isHTTPDone))
        }
        let acl = scratch + "/rest-acl.toml"
        let hash = SHA256.hash(data: Data(Self.token.utf8)).map { String(format: "%02x", $0) }.joined()
        try Data("[producers.bench]\ntoken_sha256 = \"\(hash)\"\nprefixes = [\"bench/\"]\n".utf8).write(to: URL(fileURLWithPath: acl))
        var anon = 0
        var byInterval = [[ReadBench.Load]]()
        for interval in ["500ms", "20ms"] {
            let root = try startDaemon(binDir, scratch, "qsnode", ["--data", scratch + "/rest-root-\(interval)", "--listen", "127.0.0.1:0",
                                                                  "--log-level", "warning"])
            defer { _ = try? root.stop() }
            let rest = try startDaemon(binDir, scratch, "qsrest", ["--root", "127.0.0.1:\(try root.port("write"))", "--listen", "127.0.0.1:0",
                                                                  "--acl", acl, "--batch-interval", interval, "--source-id", "bench",
                                                                  "--admin", "127.0.0.1:0", "--log-level", "warning"])
            defer { _ = try? rest.stop() }
            let port = try rest.port("rest"), admin = try rest.port("admin")
            try checkAccepted(port: port, authorized.list[0], "qsrest")
            var loads = [ReadBench.Load]()
            for n in Self.producers {
                FileHandle.standardError.write(Data("rest: qsrest at \(interval), \(n) producer(s)\n".utf8))
                loads.append(closedLoop(port: port, connections: n, seconds: seconds, requests: authorized, done: isHTTPDone))
                anon = max(anon, anonRSS(pid: rest.pid))
            }
            // Every answer counted was an acknowledged write (not a refusal).
            let answered = loads.reduce(0.0) { $0 + $1.opsPerSec * seconds } + 1
            let written = metricValue(port: admin, "qs_rest_writes_total{producer=\"bench\"}") ?? 0
            guard written >= answered.rounded() else {
                throw BenchError("qsrest acknowledged \(written) writes but \(answered) answers were counted; log:\n\(rest.log)")
            }
            byInterval.append(loads)
        }
        return Result(producers: Self.producers, reference: reference, kt: ktLoads, qsrest500ms: byInterval[0], qsrest20ms: byInterval[1],
                      qsrestPeakAnonBytes: anon)
    }

    /// One request answered 200, or the benchmark would count refusals.
    func checkAccepted(port: Int, _ request: [UInt8], _ name: String) throws {
        guard let fd = Harness.connectLoopback(port: port) else { throw BenchError("\(name) not reachable on \(port)") }
        defer { close(fd) }
        var answer = [UInt8]()
        guard exchange(fd, request, done: { answer = $0; return isHTTPDone($0) }),
              answer.starts(with: Array("HTTP/1.1 200".utf8)) else {
            throw BenchError("\(name) did not accept the benchmark's set: \(String(decoding: answer.prefix(300), as: UTF8.self))")
        }
    }
}
