import ArgumentParser
import Foundation
import QSBytes
import QSClient
import QSModel
import QSNet
import QSStore
import QSTesting
import QSWire
import NIOCore

/// The `root-write` suite (alias `writes`): a root applying batches of sets over the real
/// protocol against a plain LMDB loop in this process with the same durability (one fsynced
/// transaction per batch), the same keys and values (against a reused `--write-target`,
/// values of the run's own); disk bytes per payload byte for both (`write_bytes` and `wchar`
/// of /proc/PID/io). Each round starts both from empty stores, the two
/// alternate, and the median round is reported with the spread.
///
/// Two workloads (`keys`): `.new`, keys neither store holds, in ascending order (every set
/// an insert at the end of a run of keys: the plain loop's pages fill densely, so the log
/// entry's second copy of each value is as large a share of the bytes as it can be), and
/// `.overwrite`, uniformly random keys of a keyspace both stores hold before the measurement,
/// each set a new value (an update workload's steady state: the keyspace's pages a batch
/// dirties are most of what either store writes).
struct WriteBench {
    enum Keys: String, ExpressibleByArgument, CaseIterable, Codable {
        case new, overwrite
    }
    let sizes: [Int]
    let duration: Duration
    /// Batches per measurement; 0 = run for `duration`.
    let batches: Int
    let rounds: Int
    let valueBytes: Int
    let scratch: String
    /// A root already listening (`HOST:PORT`), e.g. under valgrind; nil = start one per round.
    let target: String?
    /// Batches in flight on the connection (1: wait for each answer).
    var window = 1
    /// Keys each store holds before the measurement (the scale suite, and the keyspace
    /// `.overwrite` sets): the node's and the plain LMDB loop's alike, written without fsync
    /// and synced once.
    var prefill = 0
    /// Which keys the measured batches set: see the type's comment. `.overwrite` picks among
    /// the `prefill` keys.
    var keys = Keys.new
    /// Tells this run's batches from an earlier run's on a reused `target`: part of the
    /// source id (so its checkpoints start at 0) and mixed into the values' first bytes (so
    /// the same keys get other values, not identical writes a root drops). 64 random bits:
    /// two runs meet only by a 2^-64 chance.
    let runTag = UInt64.random(in: 1...UInt64.max)

    struct Round: Codable {
        var nodeOpsPerSec: Double
        var lmdbOpsPerSec: Double
        var ratio: Double
        var nodeDiskBytesPerPayloadByte: Double
        var lmdbDiskBytesPerPayloadByte: Double
        var diskRatio: Double
        /// Bytes handed to write system calls (`wchar`) per payload byte, and their ratio.
        var nodeSyscallBytesPerPayloadByte: Double
        var lmdbSyscallBytesPerPayloadByte: Double
        var syscallRatio: Double
        var nodeBatches: Int
        var lmdbBatches: Int
    }

    struct Row: Codable {
        var batchSize: Int
        var rounds: [Round]
        /// Medians over the rounds.
        var ratio: Double
        var minRatio: Double
        var maxRatio: Double
        var nodeOpsPerSec: Double
        var lmdbOpsPerSec: Double
        var nodeDiskBytesPerPayloadByte: Double
        var lmdbDiskBytesPerPayloadByte: Double
        var diskRatio: Double
        var nodeSyscallBytesPerPayloadByte: Double
        var lmdbSyscallBytesPerPayloadByte: Double
        var syscallRatio: Double
        var nodePeakRSSBytes: Int
        var nodePeakAnonBytes: Int
    }

    struct Report: Codable {
        var benchmark = "root-write"
        var recordedAt: String
        /// The workload: `new` keys in ascending order, or `overwrite` of random keys of a
        /// `keyspace`-key store.
        var keys: Keys
        var keyspace: Int
        var valueBytes: Int
        var secondsPerMeasurement: Double
        var batchesPerMeasurement: Int
        var rounds: Int
        var rows: [Row]
        var benchProcessPeakRSSBytes: Int
        var note = "ratio = node ops/s over the real protocol (one durable LMDB transaction per batch, with its log entry and checkpoint) / plain LMDB loop ops/s (one durable transaction per batch, sets only, same keys, values of the same sizes: the same values unless --write-target, where each run's are its own); disk ratio = node disk bytes (write_bytes, counted per page-cache folio dirtied) per payload byte / LMDB's; syscall ratio = the same with the bytes handed to write system calls (wchar, what LMDB's pwrites asked for); medians over the rounds"

        func printTable() {
            let how = batchesPerMeasurement > 0 ? "\(batchesPerMeasurement) batches" : "\(secondsPerMeasurement) s"
            let workload = keys == .new ? "new keys in order" : "random overwrites of \(keyspace) keys"
            print("root write path vs plain LMDB (\(valueBytes)-byte values, \(workload), \(how) a measurement, median of \(rounds) rounds)")
            func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
            print([pad("batch", 6), pad("node ops/s", 11), pad("lmdb ops/s", 11), pad("ratio", 6), pad("min-max", 11),
                   pad("node disk/B", 11), pad("lmdb disk/B", 11), pad("disk x", 7), pad("sys x", 6), pad("node RSS", 9), pad("own mem", 8)].joined(separator: " "))
            for r in rows {
                print(String(format: "%6d %11.0f %11.0f %6.3f %5.2f-%5.2f %11.2f %11.2f %7.2f %6.2f %7.1fMB %6.1fMB", r.batchSize, r.nodeOpsPerSec,
                             r.lmdbOpsPerSec, r.ratio, r.minRatio, r.maxRatio, r.nodeDiskBytesPerPayloadByte, r.lmdbDiskBytesPerPayloadByte,
                             r.diskRatio, r.syscallRatio, Double(r.nodePeakRSSBytes) / 1e6, Double(r.nodePeakAnonBytes) / 1e6))
            }
            print(String(format: "bench process peak RSS: %.1fMB", Double(benchProcessPeakRSSBytes) / 1e6))
        }
    }

    struct Measurement {
        var opsPerSec: Double
        var diskPerPayload: Double
        var syscallPerPayload: Double
        var batches: Int
        var peakRSS = 0
        var peakAnon = 0
    }

    func run() async throws -> Report {
        var rows = [Row]()
        for (s, size) in sizes.enumerated() {
            var done = [Round]()
            var rss = 0, anon = 0
            for round in 0..<rounds {
                // Keys unique to this size and round within a run; a rerun against a reused
                // target writes the same keys with values of its own (`runTag`).
                let prefix = Array(String(format: "b%d%03d/", s % 10, round % 1000).utf8)
                let lmdb = try runLMDB(batchSize: size, prefix: prefix, dir: "\(scratch)/lmdb-\(size)-\(round)")
                let node = try await runNode(batchSize: size, prefix: prefix, sourceID: "bench-\(size)-\(round)-\(String(runTag, radix: 16))", dir: "\(scratch)/node-\(size)-\(round)")
                try? FileManager.default.removeItem(atPath: "\(scratch)/lmdb-\(size)-\(round)")
                try? FileManager.default.removeItem(atPath: "\(scratch)/node-\(size)-\(round)")
                rss = max(rss, node.peakRSS)
                anon = max(anon, node.peakAnon)
                done.append(Round(nodeOpsPerSec: node.opsPerSec, lmdbOpsPerSec: lmdb.opsPerSec, ratio: node.opsPerSec / lmdb.opsPerSec,
                                  nodeDiskBytesPerPayloadByte: node.diskPerPayload, lmdbDiskBytesPerPayloadByte: lmdb.diskPerPayload,
                                  diskRatio: Self.ratio(node.diskPerPayload, lmdb.diskPerPayload),
                                  nodeSyscallBytesPerPayloadByte: node.syscallPerPayload, lmdbSyscallBytesPerPayloadByte: lmdb.syscallPerPayload,
                                  syscallRatio: Self.ratio(node.syscallPerPayload, lmdb.syscallPerPayload),
                                  nodeBatches: node.batches, lmdbBatches: lmdb.batches))
                FileHandle.standardError.write(Data(String(format: "root-write: batch %d round %d/%d: ratio %.3f, disk %.2f vs %.2f, syscalls %.2f vs %.2f\n",
                                                           size, round + 1, rounds, done.last!.ratio, node.diskPerPayload, lmdb.diskPerPayload,
                                                           node.syscallPerPayload, lmdb.syscallPerPayload).utf8))
            }
            let ratios = done.map(\.ratio)
            rows.append(Row(batchSize: size, rounds: done, ratio: median(ratios), minRatio: ratios.min() ?? 0, maxRatio: ratios.max() ?? 0,
                            nodeOpsPerSec: median(done.map(\.nodeOpsPerSec)), lmdbOpsPerSec: median(done.map(\.lmdbOpsPerSec)),
                            nodeDiskBytesPerPayloadByte: median(done.map(\.nodeDiskBytesPerPayloadByte)),
                            lmdbDiskBytesPerPayloadByte: median(done.map(\.lmdbDiskBytesPerPayloadByte)),
                            diskRatio: median(done.map(\.diskRatio)),
                            nodeSyscallBytesPerPayloadByte: median(done.map(\.nodeSyscallBytesPerPayloadByte)),
                            lmdbSyscallBytesPerPayloadByte: median(done.map(\.lmdbSyscallBytesPerPayloadByte)),
                            syscallRatio: median(done.map(\.syscallRatio)), nodePeakRSSBytes: rss, nodePeakAnonBytes: anon))
        }
        return Report(recordedAt: ISO8601DateFormatter().string(from: Date()), keys: keys, keyspace: keys == .overwrite ? prefill : 0, valueBytes: valueBytes, secondsPerMeasurement: duration.seconds,
                      batchesPerMeasurement: batches, rounds: rounds, rows: rows, benchProcessPeakRSSBytes: peakRSS(pid: nil))
    }

    /// `node / lmdb`, 0 when the reference read nothing (no /proc/PID/io here).
    static func ratio(_ node: Double, _ lmdb: Double) -> Double { lmdb > 0 ? node / lmdb : 0 }

    /// Whether a measurement goes on: a fixed number of batches, or until the duration is up.
    func more(_ batchesDone: Int, since start: ContinuousClock.Instant) -> Bool {
        batches > 0 ? batchesDone < batches : ContinuousClock.now - start < duration
    }

    /// `prefix` then `i` in ten ASCII digits (16 bytes with the 6-byte prefix).
    func key(_ prefix: [UInt8], _ i: Int) -> [UInt8] {
        var k = prefix
        k.reserveCapacity(prefix.count + 10)
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { d in
            var x = i
            for j in stride(from: 9, through: 0, by: -1) {
                d[j] = UInt8(48 + x % 10)
                x /= 10
            }
            k.append(contentsOf: d)
        }
        return k
    }

    /// 1,024 pseudo-random (incompressible) values, made once; value `i` is `values[i % 1024]`.
    var values: [[UInt8]] {
        (0..<1024).map { i in
            var v = [UInt8](repeating: 0, count: valueBytes)
            var x = UInt64(i + 1) &* 0x9E37_79B9_7F4A_7C15
            for j in v.indices {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                v[j] = UInt8(truncatingIfNeeded: x)
            }
            return v
        }
    }

    /// The reference: one durable LMDB transaction per batch of puts, in this process.
    func runLMDB(batchSize: Int, prefix: [UInt8], dir: String) throws -> Measurement {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let values = self.values
        if prefill > 0 { try fillLMDB(dir) }
        let env = try LMDBEnvironment(path: dir, options: .init(mapSize: 8 << 30))
        let db = try env.openDatabase("kv")
        var sets = SetStream(bench: self, prefix: prefix, values: values)
        let ioBefore = writeBytes(pid: nil), sysBefore = syscallWriteBytes(pid: nil)
        let start = ContinuousClock.now
        var i = 0, done = 0, payload = 0
        while more(done, since: start) {
            try env.write { txn in
                for _ in 0..<batchSize {
                    let (k, v) = sets.next()
                    try txn.put(db, k, v)
                    payload += k.count + v.count
                    i += 1
                }
            }
            done += 1
        }
        let elapsed = (ContinuousClock.now - start).seconds
        let written = writeBytes(pid: nil) - ioBefore, handed = syscallWriteBytes(pid: nil) - sysBefore
        return Measurement(opsPerSec: Double(i) / elapsed, diskPerPayload: Double(written) / Double(payload),
                           syscallPerPayload: Double(handed) / Double(payload), batches: done)
    }

    /// The node: a real `qsnode` process (or `target`), batches over the write protocol on loopback.
    func runNode(batchSize: Int, prefix: [UInt8], sourceID: String, dir: String) async throws -> Measurement {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        var node: DaemonProcess?
        let host: String, port: Int
        if let target {
            guard case let .tcp(h, p) = try Endpoint(parsing: target) else { throw BenchError("--write-target needs HOST:PORT, got \(target)") }
            (host, port) = (h, p)
        } else {
            if prefill > 0 { try await fill(dir) }
            let started = try startDaemon(bin, scratch, "qsnode", ["--data", dir, "--listen", "127.0.0.1:0", "--log-level", "warning"])
            node = started
            (host, port) = ("127.0.0.1", try started.port("write"))
        }
        defer { _ = try? node?.stop() }
        let client = try await QSClient.connect(host: host, port: port)
        // A started node is empty: the same values as the LMDB loop. A reused target may
        // hold these keys from an earlier run: values of this run's own (the tag mixed into
        // their first bytes, the sizes unchanged), so every set is a write.
        let values = target == nil ? self.values : self.values.map { v in
            var v = v
            for j in 0..<min(8, v.count) { v[j] ^= UInt8(truncatingIfNeeded: runTag >> (8 * UInt64(j))) }
            return v
        }
        var sets = SetStream(bench: self, prefix: prefix, values: values)
        let ioBefore = node.map { writeBytes(pid: $0.pid) } ?? 0, sysBefore = node.map { syscallWriteBytes(pid: $0.pid) } ?? 0
        let start = ContinuousClock.now
        var i = 0, done = 0, sent = 0, payload = 0
        // Up to `window` batches in flight, answered in order; each continues the one before.
        var inFlight = [EventLoopFuture<Frame>]()
        func settleOne() async throws {
            switch try await QSClient.response(inFlight.removeFirst()) {
            case let .applied(_, _, dropped) where dropped > 0:
                throw BenchError(keys == .overwrite
                    ? "the root dropped \(dropped) sets of a batch as identical writes: an overwrite set repeated the value its key held, so the figure would not measure writes (each set's value differs in its first 8 bytes: check --value-bytes)"
                    : "the root dropped \(dropped) sets of a batch as identical writes: it already holds these keys with these values, so the figure would not measure writes; point --write-target at a root that did not take this run's keys")
            case .applied:
                done += 1
            case let .conflict(current):
                throw BenchError("the root answered a conflict: source \(sourceID) stands at \(current), not \(done) (another writer uses this run's source id, or its batches were answered out of order)")
            case let r:
                throw BenchError("unexpected response \(r)")
            }
        }
        while more(sent, since: start) {
            var ops = [Mutation]()
            ops.reserveCapacity(batchSize)
            for _ in 0..<batchSize {
                let (k, v) = sets.next()
                ops.append(.set(key: k, value: v, expiry: nil))
                payload += k.count + v.count
                i += 1
            }
            // Encoded before waiting for an answer, as a pipelined writer does: the client's
            // work overlaps the batch in flight instead of adding to the node's round trip.
            let frame = Request.batch(.init(token: client.token, sourceID: sourceID, expected: UInt64(sent),
                                            new: UInt64(sent + 1), operations: ops)).frame()
            if inFlight.count == window { try await settleOne() }
            inFlight.append(client.start(frame: frame))
            sent += 1
        }
        while !inFlight.isEmpty { try await settleOne() }
        let elapsed = (ContinuousClock.now - start).seconds
        let written = node.map { writeBytes(pid: $0.pid) - ioBefore } ?? 0
        let handed = node.map { syscallWriteBytes(pid: $0.pid) - sysBefore } ?? 0
        let rss = node.map { peakRSS(pid: $0.pid) } ?? 0
        let anon = node.map { anonRSS(pid: $0.pid) } ?? 0
        await client.close()
        return Measurement(opsPerSec: Double(i) / elapsed, diskPerPayload: Double(written) / Double(payload),
                           syscallPerPayload: Double(handed) / Double(payload), batches: done,
                           peakRSS: rss, peakAnon: anon)
    }
}

extension WriteBench {
    static let prefillPrefix = Array("p/".utf8)

    /// The measured sets of a round, the same sequence for the node and the plain loop.
    /// `.new`: `prefix` and the set's number, in order, value `values[i % 1024]`.
    /// `.overwrite`: a key of the prefilled keyspace drawn uniformly (SplitMix64 seeded by
    /// `prefix`, so by the round), and a value of the set's own (the set's number mixed into
    /// the first 8 bytes of `values[i % 1024]`): never the value the key holds, so no set is
    /// an identical write a root drops.
    struct SetStream {
        let bench: WriteBench
        let prefix: [UInt8]
        let values: [[UInt8]]
        var i = 0
        var random: SplitMix64

        init(bench: WriteBench, prefix: [UInt8], values: [[UInt8]]) {
            self.bench = bench
            self.prefix = prefix
            self.values = values
            random = SplitMix64(seed: prefix.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 })
        }

        mutating func next() -> (key: [UInt8], value: [UInt8]) {
            defer { i += 1 }
            guard bench.keys == .overwrite, bench.prefill > 0 else { return (bench.key(prefix, i), values[i & 1023]) }
            let j = Int(random.next() % UInt64(bench.prefill))
            var v = values[i & 1023]
            let mix = UInt64(i + 1) &* 0x9E37_79B9_7F4A_7C15
            for b in 0..<min(8, v.count) { v[b] ^= UInt8(truncatingIfNeeded: mix >> (8 * UInt64(b))) }
            return (bench.key(WriteBench.prefillPrefix, j), v)
        }
    }

    /// The plain loop's environment in `dir` holding `prefill` keys, written as the node's
    /// store is (`fill`): transactions of 10,000 without fsync, synced once, the environment
    /// closed before the measured one opens.
    func fillLMDB(_ dir: String) throws {
        let env = try LMDBEnvironment(path: dir, options: .init(mapSize: 8 << 30, noSync: true))
        let db = try env.openDatabase("kv")
        let values = self.values
        var filled = 0
        while filled < prefill {
            try env.write { txn in
                for j in filled..<min(prefill, filled + 10_000) { try txn.put(db, key(Self.prefillPrefix, j), values[j & 1023]) }
            }
            filled = min(prefill, filled + 10_000)
        }
        try env.sync()
    }

    /// The node's store in `dir` holding `prefill` keys before the node starts, written
    /// as a root would (records, log entries, checkpoint) without fsync, synced once.
    func fill(_ dir: String) async throws {
        let store = try await Store.open(directory: dir, mapSize: 8 << 30, noSync: true)
        let values = self.values
        var filled = 0, batch: UInt64 = 0
        while filled < prefill {
            let ops: [Mutation] = (filled..<min(prefill, filled + 10_000)).map { .set(key: key(Self.prefillPrefix, $0), value: values[$0 & 1023], expiry: nil) }
            _ = try await store.applyBatch(sourceID: "prefill", expected: batch, new: batch + 1, operations: ops)
            batch += 1
            filled += ops.count
        }
        try await store.sync()
    }
}

/// The median of `values` (0 for none).
func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
