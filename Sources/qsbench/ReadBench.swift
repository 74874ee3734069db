import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting

/// Reads on a replica next to a real memcached in the same run: memcached `get` and KT
/// HTTP `GET /KEY` throughput with p50/p99 at 1 and 8 connections, replica catch-up in
/// entries/s, and bootstrap in MB/s next to a plain file copy of the same environment.
struct ReadBench {
    let keys: Int
    let catchUpEntries: Int
    let valueBytes: Int
    let seconds: Double
    let scratch: String
    let binDir: URL
    /// Rounds of each load (the median is reported).
    var rounds = 1
    /// Flags every replica serving memcached is started with besides its listeners
    /// (`--memcached-threads N`; none: the node's default).
    var readFlags: [String] = []

    struct Load: Codable {
        var connections: Int
        var opsPerSec: Double
        var p50Micros: Double
        var p99Micros: Double
        /// Every round's ops/s, when this is the median of several.
        var roundsOpsPerSec: [Double]?
        /// The server's CPU time a request during the load, µs: every thread's on-CPU time
        /// (`/proc/PID/task/*/schedstat`, user and kernel, the system calls' share of the
        /// loopback round trip included) over the requests answered. What the server spent,
        /// which the rate hides when wake-ups on shared cores decide the round trip.
        var serverCPUMicros: Double?

        /// The round with the median throughput, carrying every round's figure.
        static func median(_ rounds: [Load]) -> Load {
            let sorted = rounds.sorted { $0.opsPerSec < $1.opsPerSec }
            var m = sorted[sorted.count / 2]
            m.roundsOpsPerSec = rounds.map(\.opsPerSec)
            return m
        }
    }

    struct Result: Codable {
        var keys: Int
        var memcachedReplica: [Load]
        var memcachedReal: [Load]
        var ktHTTPReplica: [Load]
        /// KT HTTP RPC `GET /rpc/get?key=…`.
        var ktRPCGetReplica: [Load]
        /// memcached `get` of 10 keys at once (ops/s counts requests).
        var memcachedMultiReplica: [Load]
        var memcachedMultiReal: [Load]
        var catchUpEntriesPerSec: Double
        var bootstrapMBPerSec: Double
        var fileCopyMBPerSec: Double
        var environmentBytes: Int
        var replicaPeakAnonBytes: Int
        /// The replica's read flags besides its listeners (none: the node's defaults).
        var replicaReadFlags: [String]
    }

    func key(_ i: Int) -> String { benchKey(i) }

    func run() async throws -> Result {
        let rootDir = scratch + "/read-root", behindDir = scratch + "/read-behind"
        let value = [UInt8](repeating: 0x76, count: valueBytes)
        // A root whose first entry a replica already has, then the rest of its log.
        do {
            let store = try await Store.open(directory: rootDir, mapSize: 16 << 30, noSync: true)
            _ = try await store.applyBatch(sourceID: "load", expected: 0, new: 1, operations: [.set(key: Array(key(0).utf8), value: value, expiry: nil)])
            try await store.sync()
            try FileManager.default.createDirectory(atPath: behindDir, withIntermediateDirectories: true)
            let copy = open(behindDir + "/data.mdb", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            defer { close(copy) }
            try await store.copy(toFileDescriptor: copy, compact: false)
            for i in 1..<catchUpEntries {
                let ops: [Mutation] = (0..<max(1, keys / catchUpEntries)).map { j in
                    .set(key: Array(key((i * max(1, keys / catchUpEntries) + j) % keys).utf8), value: value, expiry: nil)
                }
                _ = try await store.applyBatch(sourceID: "load", expected: UInt64(i), new: UInt64(i + 1), operations: ops)
            }
            try await store.sync()
        }
        let envBytes = (try FileManager.default.attributesOfItem(atPath: rootDir + "/data.mdb")[.size] as? NSNumber)?.intValue ?? 0
        let copyStart = ContinuousClock.now
        try FileManager.default.copyItem(atPath: rootDir + "/data.mdb", toPath: scratch + "/read-copy.mdb")
        let fd = open(scratch + "/read-copy.mdb", O_RDONLY)
        fsync(fd)
        close(fd)
        let copyRate = Double(envBytes) / 1e6 / (ContinuousClock.now - copyStart).seconds

        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", rootDir, "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? root.stop() }
        let rootPort = try root.port("write")
        let head = try await Store.open(directory: rootDir, readOnly: true).head()
        // Catch-up: a replica one entry in, following the rest of the log.
        FileHandle.standardError.write(Data("reads: catch-up\n".utf8))
        let (behind, catchUp) = try await replica(behindDir, upstream: rootPort, until: head)
        try behind.stop()
        // Bootstrap: an empty replica pulls a snapshot, then serves the reads.
        FileHandle.standardError.write(Data("reads: bootstrap\n".utf8))
        let (r, bootSeconds) = try await replica(scratch + "/read-boot", upstream: rootPort, until: head,
                                                 extra: ["--memcached", "127.0.0.1:0", "--memcached-flags-in-value", "false",
                                                         "--kt-http", "127.0.0.1:0"])
        defer { _ = try? r.stop() }
        let mcPort = try r.port("memcached"), ktPort = try r.port("kt-http")
        let memcached = try RealMemcached(logDir: scratch)
        defer { memcached.stop() }
        let realPort = memcached.port
        try fillMemcached(port: realPort, value: value)
        var mcQS = [Load](), mcReal = [Load](), ktQS = [Load](), rpcQS = [Load](), multiQS = [Load](), multiReal = [Load]()
        var anon = 0
        // Requests made before the clock starts: the client spends its time on the wire.
        let n = keys
        // At most 1,000,000 requests made ahead, spread over every key (a stride prime to
        // the key count) when there are more keys than that (the scale suite).
        let ahead = min(n, 1_000_000)
        func spread(_ i: Int) -> Int { n <= ahead ? i : (i &* 1_000_003) % n }
        func made(_ request: (Int) -> String) -> Requests { Requests((0..<ahead).map { Array(request(spread($0)).utf8) }) }
        func escaped(_ i: Int) -> String { key(i).replacingOccurrences(of: "/", with: "%2F") }
        func tenKeys(_ i: Int) -> String {
            var line = "get"
            for j in 0..<10 { line += " " + key((i + j * 7_919) % n) }
            return line + "\r\n"
        }
        let single = made { "get \(key($0))\r\n" }
        let multi = made(tenKeys)
        let rest = made { "GET /\(escaped($0)) HTTP/1.1\r\nHost: bench\r\n\r\n" }
        let rpc = made { "GET /rpc/get?key=\(escaped($0)) HTTP/1.1\r\nHost: bench\r\n\r\n" }
        for conns in [1, 8] {
            FileHandle.standardError.write(Data("reads: \(conns) connection(s), \(rounds) rounds\n".utf8))
            // The loads take turns round by round (a drifting machine weighs on all alike);
            // each figure is the median round.
            var taken = [[Load]](repeating: [], count: 6)
            for _ in 0..<rounds {
                let real = memcached.process.processIdentifier
                taken[0].append(load(port: realPort, connections: conns, requests: single, done: isMemcachedDone, server: real))
                taken[1].append(load(port: mcPort, connections: conns, requests: single, done: isMemcachedDone, server: r.pid))
                taken[2].append(load(port: realPort, connections: conns, requests: multi, done: isMemcachedDone, server: real))
                taken[3].append(load(port: mcPort, connections: conns, requests: multi, done: isMemcachedDone, server: r.pid))
                taken[4].append(load(port: ktPort, connections: conns, requests: rest, done: isHTTPDone, server: r.pid))
                taken[5].append(load(port: ktPort, connections: conns, requests: rpc, done: isHTTPDone, server: r.pid))
                anon = max(anon, anonRSS(pid: r.pid))
            }
            let m = taken.map(Load.median)
            mcReal.append(m[0]); mcQS.append(m[1]); multiReal.append(m[2]); multiQS.append(m[3]); ktQS.append(m[4]); rpcQS.append(m[5])
        }
        return Result(keys: keys, memcachedReplica: mcQS, memcachedReal: mcReal, ktHTTPReplica: ktQS,
                      ktRPCGetReplica: rpcQS, memcachedMultiReplica: multiQS, memcachedMultiReal: multiReal,
                      catchUpEntriesPerSec: Double(catchUpEntries - 1) / catchUp, bootstrapMBPerSec: Double(envBytes) / 1e6 / bootSeconds,
                      fileCopyMBPerSec: copyRate, environmentBytes: envBytes, replicaPeakAnonBytes: anon,
                      replicaReadFlags: readFlags)
    }

    /// Starts a replica and returns once it stands at `head`, with the seconds that took.
    func replica(_ dir: String, upstream: Int, until head: Head, extra: [String] = []) async throws -> (DaemonProcess, Double) {
        try await startReplica(binDir, scratch, dir, upstream: upstream, until: head,
                               extra: extra + (extra.contains("--memcached") ? readFlags : []))
    }

    func fillMemcached(port: Int, value: [UInt8]) throws {
        guard let fd = Harness.connectLoopback(port: port) else { throw BenchError("memcached not reachable") }
        defer { close(fd) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var batch = [UInt8]()
        for i in 0..<keys {
            batch += Array("set \(key(i)) 0 0 \(value.count) noreply\r\n".utf8) + value + [13, 10]
            if batch.count > 1 << 16 || i == keys - 1 {
                _ = batch.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
                batch.removeAll(keepingCapacity: true)
            }
        }
        // A final get round-trips after every set.
        _ = exchange(fd, Array("get \(key(0))\r\n".utf8), done: isMemcachedDone)
    }

    func load(port: Int, connections: Int, requests: Requests,
              done: @escaping @Sendable ([UInt8]) -> Bool, server: Int32? = nil) -> Load {
        closedLoop(port: port, connections: connections, seconds: seconds, requests: requests, done: done, server: server)
    }

}


/// Starts a replica of the root at `upstream` in `dir` and returns once it stands at
/// `head`, with the seconds that took (start-up and bootstrap or catch-up).
func startReplica(_ binDir: URL, _ scratch: String, _ dir: String, upstream: Int, until head: Head,
                  extra: [String] = []) async throws -> (DaemonProcess, Double) {
    let start = ContinuousClock.now
    let p = try startDaemon(binDir, scratch, "qsnode", ["--role", "replica", "--data", dir, "--listen", "127.0.0.1:0",
                                                       "--upstream", "127.0.0.1:\(upstream)", "--log-level", "warning"] + extra,
                            timeout: .seconds(120))
    let client = try await QSClient.connect(host: "127.0.0.1", port: try p.port("write"))
    let ok = await Harness.eventually(timeout: .seconds(120), pollEvery: .milliseconds(10)) { (try? await client.head()) == head }
    await client.close()
    guard ok else { throw BenchError("replica in \(dir) did not reach the root's head; log:\n\(p.log)") }
    return (p, (ContinuousClock.now - start).seconds)
}

/// Closed-loop load for `seconds`: each connection sends one request (walking `requests`
/// with its own stride) and waits for its answer; throughput and latency percentiles, and
/// with `server` (its process) the server's CPU time a request.
func closedLoop(port: Int, connections: Int, seconds: Double, requests: Requests,
                done: @escaping @Sendable ([UInt8]) -> Bool, server: Int32? = nil) -> ReadBench.Load {
    let collected = Samples()
    let cpuBefore = server.map(threadsCPUNanoseconds)
    let end = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
    let group = DispatchGroup()
    let count = requests.list.count
    for c in 0..<connections {
        group.enter()
        Thread {
            defer { group.leave() }
            guard let fd = Harness.connectLoopback(port: port) else { return }
            defer { close(fd) }
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var mine = [Double]()
            mine.reserveCapacity(1 << 17)
            var exchanger = Exchanger()
            var i = c * 7919
            var t0 = DispatchTime.now().uptimeNanoseconds
            while t0 < end {
                guard exchanger.exchange(fd, requests.list[i % count], done: done) else { break }
                let t1 = DispatchTime.now().uptimeNanoseconds
                mine.append(Double(t1 - t0) / 1000)
                t0 = t1
                i += 104_729
            }
            collected.add(mine)
        }.start()
    }
    group.wait()
    let cpuAfter = server.map(threadsCPUNanoseconds)
    let latencies = collected.sorted
    func pct(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
    var load = ReadBench.Load(connections: connections, opsPerSec: Double(latencies.count) / seconds, p50Micros: pct(0.5), p99Micros: pct(0.99))
    if let before = cpuBefore, let after = cpuAfter, !latencies.isEmpty {
        load.serverCPUMicros = Double(threadsCPUSpent(from: before, to: after)) / 1000 / Double(latencies.count)
    }
    return load
}

/// The on-CPU nanoseconds of each thread `pid` has now, by thread id (the first field of
/// each `/proc/PID/task/TID/schedstat`): finer than `/proc/PID/stat`'s clock ticks, so a few
/// seconds of load give a per-request figure.
func threadsCPUNanoseconds(pid: Int32) -> [String: UInt64] {
    let dir = "/proc/\(pid)/task"
    var out = [String: UInt64]()
    for tid in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
        guard let text = try? String(contentsOfFile: "\(dir)/\(tid)/schedstat", encoding: .utf8),
              let first = text.split(separator: " ").first, let ns = UInt64(first) else { continue }
        out[tid] = ns
    }
    return out
}

/// The CPU time the threads of `after` spent since `before`: a thread made in between counts
/// whole, one that ended in between takes its time since `before` with it (a node's idle
/// reader threads end after 10 s: the difference of two sums went below zero then and
/// printed a figure of 10^10 µs).
func threadsCPUSpent(from before: [String: UInt64], to after: [String: UInt64]) -> UInt64 {
    after.reduce(0) { total, thread in
        let was = before[thread.key] ?? 0
        return total + (thread.value >= was ? thread.value - was : 0)
    }
}

/// Each key's request, made once.
final class Requests: Sendable {
    let list: [[UInt8]]
    init(_ list: [[UInt8]]) { self.list = list }
}

/// One request, read until `done` says the answer is whole.
@discardableResult
func exchange(_ fd: Int32, _ request: [UInt8], done: ([UInt8]) -> Bool) -> Bool {
    var exchanger = Exchanger()
    return exchanger.exchange(fd, request, done: done)
}

/// A connection's buffers for `exchange`, kept from one request to the next: a closed-loop
/// load's client allocates and clears nothing a request (it made a 16 KiB receive buffer
/// and an answer array for every request until the sixteenth session).
struct Exchanger {
    private var answer = [UInt8]()
    private var buffer = [UInt8](repeating: 0, count: 16384)

    init() { answer.reserveCapacity(4096) }

    /// Sends `request` and reads until `done` says the answer is whole; false if the
    /// connection failed or ended first.
    mutating func exchange(_ fd: Int32, _ request: [UInt8], done: ([UInt8]) -> Bool) -> Bool {
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return false }
        answer.removeAll(keepingCapacity: true)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return false }
            buffer.withUnsafeBufferPointer { answer.append(contentsOf: UnsafeBufferPointer(rebasing: $0[0..<n])) }
            if done(answer) { return true }
        }
    }
}

@Sendable func isMemcachedDone(_ b: [UInt8]) -> Bool {
    b.count >= 5 && b[(b.count - 5)...].elementsEqual("END\r\n".utf8)
}

/// An HTTP response is whole: its head, and `Content-Length` bytes of body (matched on
/// the bytes in place, so the client costs about what `isMemcachedDone` does: the
/// generic `firstRange(of:)` this used took 5.6 µs a call, more than the server's work).
@Sendable func isHTTPDone(_ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBufferPointer { b in
        var headEnd = -1
        var k = 3
        while k < b.count {
            if b[k] == 10 && b[k - 1] == 13 && b[k - 2] == 10 && b[k - 3] == 13 {
                headEnd = k - 3
                break
            }
            k += 1
        }
        guard headEnd >= 0 else { return false }
        let name: StaticString = "content-length:"
        let count = name.utf8CodeUnitCount
        var i = 0
        while i + count <= headEnd {
            var same = true
            for m in 0..<count where (b[i + m] | 0x20) != name.utf8Start[m] {
                same = false
                break
            }
            if same {
                var j = i + count, n = 0
                while j < headEnd, b[j] == 32 { j += 1 }
                while j < headEnd, b[j] >= 48, b[j] <= 57 { n = n * 10 + Int(b[j] - 48); j += 1 }
                return b.count - (headEnd + 4) >= n
            }
            i += 1
        }
        return true
    }
}


/// Latencies gathered from the load threads.
final class Samples: @unchecked Sendable {
    private let lock = NSLock()
    private var values = [Double]()
    func add(_ v: [Double]) { lock.withLock { values += v } }
    var sorted: [Double] { lock.withLock { values.sorted() } }
}

/// A real memcached, the reads benchmark's reference. memcached cannot report the port it
/// bound, so one is chosen for it: a port the kernel hands out (bound to port 0 and
/// released). Should another process take that port before memcached binds it, memcached
/// exits; that is said on stderr and another port is tried.
final class RealMemcached {
    let process: Process
    let port: Int

    /// Its stderr goes to a file in `logDir`.
    init(logDir: String, attempts: Int = 5) throws {
        var failures = [String]()
        for _ in 0..<attempts {
            // A port the kernel picks, released for memcached to bind.
            let picked = try RefusingPort()
            let port = picked.port
            picked.close()
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/memcached")
            p.arguments = ["-p", "\(port)", "-U", "0", "-l", "127.0.0.1", "-m", "4096", "-t", "2", "-u", "root"]
            let log = logDir + "/memcached-\(port).log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            p.standardError = FileHandle(forWritingAtPath: log)
            try p.run()
            let up = Harness.waitUntil(timeout: .seconds(10)) { !p.isRunning || Self.answersVersion(port: port) }
            if up && p.isRunning {
                self.process = p
                self.port = port
                return
            }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            let said = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            let failure = "memcached on 127.0.0.1:\(port) did not start (exit \(p.terminationStatus)): \(said)"
            FileHandle.standardError.write(Data("reads: \(failure); trying another port\n".utf8))
            failures.append(failure)
        }
        throw BenchError("real memcached did not start in \(attempts) attempts:\n" + failures.joined(separator: "\n"))
    }

    /// Stops it (SIGKILL: it ignores SIGTERM here) and waits for the exit.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// True when a memcached answers `version` on `port`.
    static func answersVersion(port: Int) -> Bool {
        guard let fd = Harness.connectLoopback(port: port) else { return false }
        defer { close(fd) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var answer = [UInt8]()
        let ok = exchange(fd, Array("version\r\n".utf8)) { b in
            answer = b
            return b.last == 10
        }
        return ok && answer.starts(with: Array("VERSION ".utf8))
    }
}
