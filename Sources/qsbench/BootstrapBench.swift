import Foundation
import QSClient
import QSModel
import QSNet
import QSStore
import QSTesting

/// The `bootstrap` suite: an empty replica bootstrapping from a root, in MB/s of the
/// root's environment next to `cp` of the same file (both with a warm cache, the copy
/// fsynced like the replica's), with the replica's own memory (RssAnon) and peak RSS
/// sampled every 20 ms throughout, and where the time went (the root's copy and send,
/// the replica's transfer and its checks and install, from their logs). Then 4 replicas
/// bootstrapping from one root at once against the same 4 one after another: the root
/// serves snapshots one at a time (its queue), so at once costs no more than in turn.
struct BootstrapBench {
    let sizesMB: [Int]
    let concurrent: Int
    let scratch: String
    let binDir: URL

    struct Run: Codable {
        /// `data-dir`: the empty replica's snapshot written straight into --data before
        /// its store opens (the default); `in-store`: installed into the open empty store in
        /// one transaction (`--bootstrap-into-data-dir false`, measured at the first size).
        var path: String
        var environmentBytes: Int
        var copyMBPerSec: Double
        var bootstrapMBPerSec: Double
        var ratio: Double
        var bootstrapSeconds: Double
        /// The replica's transfer (request to last byte written), its checks and install
        /// (fsync, digest, head, hash chain, move into place), and the rest (process start,
        /// store open, first subscription), from its log.
        var transferSeconds: Double
        var checkSeconds: Double
        var otherSeconds: Double
        var replicaPeakAnonBytes: Int
        var replicaPeakRSSBytes: Int
        var rootPeakAnonBytes: Int
    }

    struct Turns: Codable {
        var replicas: Int
        var environmentBytes: Int
        var atOnceTotalSeconds: Double
        var atOncePerReplicaSeconds: [Double]
        var inTurnTotalSeconds: Double
        var inTurnPerReplicaSeconds: [Double]
    }

    struct Result: Codable {
        var runs: [Run]
        var turns: Turns?
    }

    func run() async throws -> Result {
        var runs = [Run]()
        var turns: Turns?
        for (i, mb) in sizesMB.enumerated() {
            let rootDir = scratch + "/boot-root-\(mb)"
            FileHandle.standardError.write(Data("bootstrap: loading a \(mb) MB root\n".utf8))
            try await load(rootDir, megabytes: mb)
            let file = rootDir + "/data.mdb"
            let envBytes = (try FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.intValue ?? 0
            FileHandle.standardError.write(Data("bootstrap: cp of \(envBytes / 1_000_000) MB, then a replica\n".utf8))
            let copySeconds = try copyWarm(file, to: scratch + "/boot-cp.mdb")
            let root = try startDaemon(binDir, scratch, "qsnode", ["--role", "root", "--data", rootDir, "--listen", "127.0.0.1:0",
                                                                   "--log-format", "text"], timeout: .seconds(300))
            defer { _ = try? root.stop() }
            let port = try root.port("write")
            let head = try await headOf(port: port)
            for path in i == 0 ? ["data-dir", "in-store"] : ["data-dir"] {
                let one = try await replica(scratch + "/boot-replica-\(mb)", upstream: port, until: head,
                                            extra: path == "in-store" ? ["--bootstrap-into-data-dir", "false"] : [])
                let seconds = one.seconds
                let transfer = logSeconds(one.log, "bootstrap installed", "transfer-milliseconds")
                let check = logSeconds(one.log, "bootstrap installed", "check-milliseconds")
                runs.append(Run(path: path, environmentBytes: envBytes, copyMBPerSec: Double(envBytes) / 1e6 / copySeconds,
                                bootstrapMBPerSec: Double(envBytes) / 1e6 / seconds, ratio: copySeconds / seconds,
                                bootstrapSeconds: seconds, transferSeconds: transfer, checkSeconds: check,
                                otherSeconds: max(0, seconds - transfer - check), replicaPeakAnonBytes: one.peakAnon,
                                replicaPeakRSSBytes: one.peakRSS, rootPeakAnonBytes: anonRSS(pid: root.pid)))
                try? FileManager.default.removeItem(atPath: scratch + "/boot-replica-\(mb)")
            }
            if i == 0 && concurrent > 1 {
                turns = try await takeTurns(upstream: port, head: head, envBytes: envBytes, mb: mb)
            }
            _ = try? root.stop()
            try? FileManager.default.removeItem(atPath: rootDir)
        }
        return Result(runs: runs, turns: turns)
    }

    /// `concurrent` empty replicas started at once, then the same number one after another.
    func takeTurns(upstream: Int, head: Head, envBytes: Int, mb: Int) async throws -> Turns {
        FileHandle.standardError.write(Data("bootstrap: \(concurrent) replicas at once, then one after another\n".utf8))
        let dirs = (0..<concurrent).map { scratch + "/boot-turn-\(mb)-\($0)" }
        let started = ContinuousClock.now
        let atOnce = try await withThrowingTaskGroup(of: Double.self) { group in
            for dir in dirs { group.addTask { try await replica(dir, upstream: upstream, until: head).seconds } }
            var all = [Double]()
            for try await s in group { all.append(s) }
            return all.sorted()
        }
        let atOnceTotal = (ContinuousClock.now - started).seconds
        for dir in dirs { try? FileManager.default.removeItem(atPath: dir) }
        let again = ContinuousClock.now
        var inTurn = [Double]()
        for dir in dirs {
            inTurn.append(try await replica(dir, upstream: upstream, until: head).seconds)
            try? FileManager.default.removeItem(atPath: dir)
        }
        return Turns(replicas: concurrent, environmentBytes: envBytes, atOnceTotalSeconds: atOnceTotal, atOncePerReplicaSeconds: atOnce,
                     inTurnTotalSeconds: (ContinuousClock.now - again).seconds, inTurnPerReplicaSeconds: inTurn)
    }

    /// A root environment of about `megabytes` MB: 1 KB values in batches of 1,000, its
    /// log trimmed to the last 100 entries (about 100 MB of it: each entry carries its
    /// batch), flushed to disk. About 2.6 KB of file per record, log and B-tree included.
    func load(_ dir: String, megabytes: Int) async throws {
        let store = try await Store.open(directory: dir, mapSize: 64 << 30, noSync: true)
        let value = [UInt8]((0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let batches = max(1, megabytes * 1_000_000 / 2_600 / 1000)
        for b in 0..<batches {
            let ops: [Mutation] = (0..<1000).map { .set(key: Array(benchKey(b * 1000 + $0).utf8), value: value, expiry: nil) }
            _ = try await store.applyBatch(sourceID: "load", expected: UInt64(b), new: UInt64(b + 1), operations: ops)
            if b % 100 == 99 { try await store.trimLog(retain: 100) }
        }
        try await store.trimLog(retain: 100)
        try await store.sync()
    }

    /// Seconds `cp` takes to copy `file` (read once before, so from a warm cache) plus an
    /// fsync of the copy, as the replica fsyncs its snapshot.
    func copyWarm(_ file: String, to copy: String) throws -> Double {
        try readAll(file)
        let start = ContinuousClock.now
        let cp = Process()
        cp.executableURL = URL(fileURLWithPath: "/bin/cp")
        cp.arguments = [file, copy]
        try cp.run()
        cp.waitUntilExit()
        guard cp.terminationStatus == 0 else { throw BenchError("cp \(file) \(copy) failed") }
        let fd = open(copy, O_RDONLY)
        fsync(fd)
        close(fd)
        let seconds = (ContinuousClock.now - start).seconds
        try? FileManager.default.removeItem(atPath: copy)
        return seconds
    }

    func readAll(_ file: String) throws {
        let fd = open(file, O_RDONLY)
        guard fd >= 0 else { throw BenchError("cannot read \(file)") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while buffer.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
    }

    func headOf(port: Int) async throws -> Head {
        let c = try await QSClient.connect(host: "127.0.0.1", port: port)
        defer { Task { await c.close() } }
        return try await c.head()
    }

    /// Starts an empty replica of `upstream` and waits until it serves `head`; its memory
    /// is sampled every 20 ms from its start (the bootstrap runs before its ready file).
    func replica(_ dir: String, upstream: Int, until head: Head, extra: [String] = []) async throws -> (seconds: Double, peakAnon: Int, peakRSS: Int, log: String) {
        let ready = scratch + "/\(UUID().uuidString.prefix(8)).ready.json"
        let start = ContinuousClock.now
        let p = try DaemonProcess("qsnode", ["--role", "replica", "--data", dir, "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:\(upstream)",
                                             "--log-format", "text", "--ready-file", ready] + extra,
                                  logDir: URL(fileURLWithPath: scratch), ready: false, binDir: binDir)
        defer { _ = try? p.stop() }
        let sampler = MemorySampler(pid: p.pid)
        defer { sampler.stop() }
        guard await Harness.eventually(timeout: .seconds(900), pollEvery: .milliseconds(10), {
            !p.isRunning || FileManager.default.fileExists(atPath: ready)
        }), p.isRunning, let entries = try? ReadyFile.read(ready),
              let address = entries.first(where: { $0.name == "write" })?.address, let port = (try? Endpoint(parsing: address))?.port else {
            throw BenchError("replica in \(dir) did not start; log:\n\(p.log)")
        }
        let client = try await QSClient.connect(host: "127.0.0.1", port: port)
        let ok = await Harness.eventually(timeout: .seconds(900), pollEvery: .milliseconds(5)) { (try? await client.head()) == head }
        await client.close()
        guard ok else { throw BenchError("replica in \(dir) did not reach the root's head; log:\n\(p.log)") }
        let seconds = (ContinuousClock.now - start).seconds
        sampler.stop()
        return (seconds, sampler.peakAnon, sampler.peakRSS, p.log)
    }

    /// The value of `key=N` (milliseconds) on the first log line containing `line`, in seconds.
    func logSeconds(_ log: String, _ line: String, _ key: String) -> Double {
        guard let l = log.split(separator: "\n").first(where: { $0.contains(line) }),
              let field = l.split(separator: " ").first(where: { $0.hasPrefix(key + "=") }),
              let ms = Double(field.dropFirst(key.count + 1).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))) else { return 0 }
        return ms / 1000
    }
}

/// Samples a process's RssAnon and VmRSS every 20 ms on a thread of its own, keeping the peaks.
final class MemorySampler: @unchecked Sendable {
    private let lock = NSLock()
    private var anon = 0, rss = 0, running = true

    init(pid: Int32) {
        let thread = Thread { [self] in
            while lock.withLock({ running }) {
                let a = ProcessMemory.statusBytes("RssAnon", pid: pid) ?? 0
                let r = ProcessMemory.statusBytes("VmRSS", pid: pid) ?? 0
                lock.withLock {
                    anon = max(anon, a)
                    rss = max(rss, r)
                }
                usleep(20_000)
            }
        }
        thread.start()
    }

    func stop() { lock.withLock { running = false } }
    var peakAnon: Int { lock.withLock { anon } }
    var peakRSS: Int { lock.withLock { rss } }
}

extension BootstrapBench.Result {
    func printTable() {
        print("bootstrap: an empty replica from a root, MB/s of the environment next to cp of the same file (warm cache, fsynced):")
        print("  path      env MB   cp MB/s   boot MB/s  ratio   transfer s  checks+install s  other s   replica own MB  peak RSS MB  root own MB")
        for r in runs {
            print(String(format: "  %-8@ %6.0f %9.0f %11.0f %6.2f %12.2f %17.2f %8.2f %16.1f %12.1f %12.1f", r.path as NSString, Double(r.environmentBytes) / 1e6, r.copyMBPerSec,
                         r.bootstrapMBPerSec, r.ratio, r.transferSeconds, r.checkSeconds, r.otherSeconds, Double(r.replicaPeakAnonBytes) / 1e6,
                         Double(r.replicaPeakRSSBytes) / 1e6, Double(r.rootPeakAnonBytes) / 1e6))
        }
        if let t = turns {
            func list(_ s: [Double]) -> String { s.map { String(format: "%.1f", $0) }.joined(separator: ", ") }
            print(String(format: "  %d replicas of %.0f MB at once: %.1f s in all (each: %@ s); one after another: %.1f s in all (each: %@ s)",
                         t.replicas, Double(t.environmentBytes) / 1e6, t.atOnceTotalSeconds, list(t.atOncePerReplicaSeconds),
                         t.inTurnTotalSeconds, list(t.inTurnPerReplicaSeconds)))
        }
    }
}
