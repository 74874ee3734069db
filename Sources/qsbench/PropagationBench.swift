import Foundation
import QSTesting

/// The `propagation` suite: per-write latency from KT to a reader two replication levels
/// down. fakekt takes `rate` updates/s (set_bulk of 50 keys, paced); probe keys are written
/// to it at random moments (50–150 ms apart) and timed until memcached on the second-level
/// replica answers them: KT → qsktbridge → root → replica → replica. One run per
/// `--batch-interval` of the bridge. The bridge's `qs_bridge_lag_seconds` is also read under
/// load and at idle, to show what it means in both. With `ktserver` (a real ktserver
/// binary), every interval runs a second time with it as the KT: its own update logger and
/// replication loop in the path, the floor the bridge cannot go below.
struct PropagationBench {
    let seconds: Double
    let rate: Int
    let batchIntervals: [String]
    let scratch: String
    let binDir: URL
    var ktserver: String?

    struct Run: Codable {
        /// "fakekt" or "ktserver".
        var source: String
        var batchInterval: String
        var probes: Int
        var lost: Int
        var p50Millis: Double
        var p99Millis: Double
        var maxMillis: Double
        var updatesWritten: Int
        /// Medians of the bridge's lag gauge, sampled every 100 ms.
        var bridgeLagUnderLoadSeconds: Double
        var bridgeLagIdleSeconds: Double
    }

    struct Result: Codable {
        var targetUpdatesPerSec: Int
        var secondsPerRun: Double
        var runs: [Run]
    }

    func run() throws -> Result {
        var runs = [Run]()
        for interval in batchIntervals { runs.append(try measure(batchInterval: interval, ktserver: nil)) }
        if let ktserver {
            for interval in batchIntervals { runs.append(try measure(batchInterval: interval, ktserver: ktserver)) }
        }
        return Result(targetUpdatesPerSec: rate, secondsPerRun: seconds, runs: runs)
    }

    func measure(batchInterval: String, ktserver: String?) throws -> Run {
        let tag = batchInterval.replacingOccurrences(of: " ", with: "") + (ktserver == nil ? "" : "-ktserver")
        let ulog = scratch + "/prop-ulog-\(tag)"
        try FileManager.default.createDirectory(atPath: ulog, withIntermediateDirectories: true)
        let ktPort: Int
        var fake: DaemonProcess?, real: KTServerProcess?
        if let ktserver {
            real = try KTServerProcess(path: ktserver, ulog: ulog, log: scratch + "/ktserver-\(tag).log")
            ktPort = real!.port
        } else {
            fake = try startDaemon(binDir, scratch, "fakekt", ["-host", "127.0.0.1", "-port", "0", "-ulog", ulog, "-sid", "7", "*"])
            ktPort = try fake!.port("kt")
        }
        defer {
            _ = try? fake?.stop()
            real?.stop()
        }
        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", scratch + "/prop-root-\(tag)", "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? root.stop() }
        let first = try startDaemon(binDir, scratch, "qsnode", ["--role", "replica", "--data", scratch + "/prop-r1-\(tag)", "--listen", "127.0.0.1:0",
                                                               "--upstream", "127.0.0.1:\(try root.port("write"))", "--log-level", "warning"])
        defer { _ = try? first.stop() }
        let second = try startDaemon(binDir, scratch, "qsnode", ["--role", "replica", "--data", scratch + "/prop-r2-\(tag)", "--listen", "127.0.0.1:0",
                                                                "--upstream", "127.0.0.1:\(try first.port("write"))", "--memcached", "127.0.0.1:0",
                                                                "--memcached-flags-in-value", "false", "--log-level", "warning"])
        defer { _ = try? second.stop() }
        let mcPort = try second.port("memcached")
        let bridge = try startDaemon(binDir, scratch, "qsktbridge", ["--source", "kt://127.0.0.1:\(ktPort)", "--root", "127.0.0.1:\(try root.port("write"))",
                                                                     "--admin", "127.0.0.1:0", "--batch-interval", batchInterval, "--log-level", "warning"])
        defer { _ = try? bridge.stop() }
        let admin = try bridge.port("admin")
        guard let mc = Harness.connectLoopback(port: mcPort) else { throw BenchError("propagation: the replica's memcached is not reachable") }
        defer { close(mc) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(mc, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))

        // The load: a writer thread at a steady rate (paced against the clock).
        let stop = StopFlag()
        let written = Counter64()
        let writer = Thread {
            let perRequest = 50
            let began = Date()
            var i = 0
            let filler = String(repeating: "v", count: 90)
            while !stop.isSet {
                if i >= Int(Date().timeIntervalSince(began) * Double(rate)) {
                    Thread.sleep(forTimeInterval: 0.001)
                    continue
                }
                var body = ""
                for j in 0..<perRequest { body += (j == 0 ? "" : "&") + "_load%2F\((i + j) % 20000)=\(filler)\(i)" }
                _ = httpPost(port: ktPort, path: "/rpc/set_bulk", contentType: "application/x-www-form-urlencoded", body: Array(body.utf8))
                i += perRequest
                written.set(i)
            }
        }
        writer.start()
        // The probes: written at random moments, each polled on the second replica until seen.
        var latencies = [Double]()
        var lost = 0
        var lagUnderLoad = [Double]()
        let end = Date().addingTimeInterval(seconds)
        var n = 0
        var nextLagSample = Date()
        while Date() < end {
            Thread.sleep(forTimeInterval: Double.random(in: 0.05...0.15))
            let key = "_probe/\(tag)/\(n)"
            n += 1
            let t0 = DispatchTime.now().uptimeNanoseconds
            guard httpPost(port: ktPort, path: "/rpc/set", contentType: "application/x-www-form-urlencoded",
                           body: Array("key=\(key.replacingOccurrences(of: "/", with: "%2F"))&value=p".utf8))?.status == 200 else {
                throw BenchError("propagation: \(ktserver == nil ? "fakekt" : "ktserver") refused a probe write")
            }
            let request = Array("get \(key)\r\n".utf8)
            var seen = false
            while DispatchTime.now().uptimeNanoseconds - t0 < 5_000_000_000 {
                var answer = [UInt8]()
                guard exchange(mc, request, done: { b in answer = b; return isMemcachedDone(b) }) else {
                    throw BenchError("propagation: the replica's memcached stopped answering")
                }
                if answer.count > 5 {
                    seen = true
                    break
                }
                usleep(500)
            }
            if seen { latencies.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6) } else { lost += 1 }
            if Date() >= nextLagSample, let lag = metricValue(port: admin, "qs_bridge_lag_seconds") {
                lagUnderLoad.append(lag)
                nextLagSample = Date().addingTimeInterval(0.1)
            }
        }
        stop.set()
        while !writer.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        // Idle: the bridge's lag once nothing is written (after the backlog drained).
        Thread.sleep(forTimeInterval: 3)
        var lagIdle = [Double]()
        for _ in 0..<30 {
            if let lag = metricValue(port: admin, "qs_bridge_lag_seconds") { lagIdle.append(lag) }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let sorted = latencies.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        return Run(source: ktserver == nil ? "fakekt" : "ktserver", batchInterval: batchInterval, probes: latencies.count, lost: lost, p50Millis: pct(0.5), p99Millis: pct(0.99),
                   maxMillis: sorted.last ?? 0, updatesWritten: written.value,
                   bridgeLagUnderLoadSeconds: median(lagUnderLoad), bridgeLagIdleSeconds: median(lagIdle))
    }
}

/// A real ktserver for one propagation run: started from the binary the operator names
/// (`--propagation-ktserver`; its libraries found as the operator's environment says), on a
/// free loopback port, with its update log in `ulog` and server id 7 like fakekt's, one
/// in-memory hash database.
final class KTServerProcess {
    let port: Int
    let process = Process()

    init(path: String, ulog: String, log: String) throws {
        port = try Self.freePort()
        process.executableURL = URL(fileURLWithPath: path)
        let absolute = { (p: String) in URL(fileURLWithPath: p).standardizedFileURL.path }
        process.arguments = ["-host", "127.0.0.1", "-port", "\(port)", "-ulog", absolute(ulog), "-sid", "7", "-log", absolute(log), "-ls", "*"]
        process.standardOutput = FileHandle.nullDevice
        _ = FileManager.default.createFile(atPath: log + ".stderr", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: log + ".stderr") ?? FileHandle.nullDevice
        do { try process.run() } catch { throw BenchError("propagation: cannot start ktserver at \(path): \(error)") }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if let fd = Harness.connectLoopback(port: port) {
                close(fd)
                return
            }
            guard process.isRunning else {
                let said = [log, log + ".stderr"].compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.joined()
                throw BenchError("propagation: ktserver at \(path) exited with status \(process.terminationStatus) before listening (are its libraries on LD_LIBRARY_PATH?); it said: \(said.suffix(600))")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        stop()
        throw BenchError("propagation: ktserver at \(path) did not listen on 127.0.0.1:\(port) within 15 s (its log: \(log))")
    }

    /// A free loopback port below 32768: ktserver refuses a higher one ("invalid address
    /// expression"), and the kernel's port 0 picks from above it.
    static func freePort() throws -> Int {
        for _ in 0..<200 {
            let port = Int.random(in: 20_000...32_000)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { break }
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = UInt16(port).bigEndian
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            if bound { return port }
        }
        throw BenchError("propagation: found no free loopback port between 20000 and 32000 for ktserver")
    }

    /// SIGKILL: its one database is in memory, and a child of this process starts with
    /// SIGTERM blocked (the spawning thread's mask is inherited), which ktserver never unblocks.
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
