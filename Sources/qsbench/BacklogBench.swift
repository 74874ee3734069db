import Foundation
import KTFormats
import QSModel
import QSStore
import QSTesting

/// `qsktbridge` replaying a large KT backlog (a capture of `updates` sets) into an empty
/// root: its rate next to the root store applying the same changes itself in the same
/// run, and the bridge's peak memory, which must stay bounded whatever the backlog.
/// The two take turns `rounds` times (the reference, then the bridge, each into a new
/// directory removed after it), and the round with the median ratio is reported: the
/// store's own rate moves by more than the bridge's between minutes of the same machine.
/// The capture is on disk (fsynced) before the first round, so its writeback does not
/// land in a measurement.
struct BacklogBench {
    let updates: Int
    let keys: Int
    let valueBytes: Int
    let scratch: String
    let binDir: URL
    var rounds: Int = 1

    struct Round: Codable {
        var bridgeUpdatesPerSec: Double
        var localApplyUpdatesPerSec: Double
        var ratio: Double
        var bridgePeakRSSBytes: Int
        var bridgePeakAnonBytes: Int
    }

    struct Result: Codable {
        var updates: Int
        var captureBytes: Int
        /// The median round's figures.
        var bridgeUpdatesPerSec: Double
        var localApplyUpdatesPerSec: Double
        var ratio: Double
        /// Peak over every round.
        var bridgePeakRSSBytes: Int
        var bridgePeakAnonBytes: Int
        var rounds: [Round]
    }

    func run() async throws -> Result {
        // 1. A capture file as a KT server would send it: acceptance byte, update frames.
        let capture = scratch + "/backlog.bin"
        _ = FileManager.default.createFile(atPath: capture, contents: nil)
        guard let out = FileHandle(forWritingAtPath: capture) else { throw BenchError("cannot write \(capture)") }
        var buffer: [UInt8] = [KTBinaryMagic.replication]
        var ts: UInt64 = 1_700_000_000_000 * 1_000_000
        var value = [UInt8](repeating: 0x61, count: valueBytes)
        for i in 0..<updates {
            value[i % valueBytes] &+= 1
            ts += 1
            let msg = KTUpdateMessage(sid: 7, db: 0, operation: .set(key: Array(benchKey(i % keys).utf8), value: value,
                                                                     expiration: KTExpiration.never)).encoded()
            buffer += ReplicationFrame.update(timestamp: ts, message: msg).encoded()
            if buffer.count > 1 << 20 {
                try out.write(contentsOf: buffer)
                buffer.removeAll(keepingCapacity: true)
            }
        }
        try out.write(contentsOf: buffer)
        try out.synchronize()
        try out.close()
        let size = (try FileManager.default.attributesOfItem(atPath: capture)[.size] as? NSNumber)?.intValue ?? 0
        var done = [Round]()
        for round in 0..<max(1, rounds) {
            let r = try await runRound(capture: capture, round: round)
            FileHandle.standardError.write(Data(String(format: "backlog: round %d/%d: bridge %.0f updates/s, store %.0f/s, ratio %.3f\n",
                                                       round + 1, max(1, rounds), r.bridgeUpdatesPerSec, r.localApplyUpdatesPerSec, r.ratio).utf8))
            done.append(r)
        }
        let median = done.sorted { $0.ratio < $1.ratio }[done.count / 2]
        return Result(updates: updates, captureBytes: size, bridgeUpdatesPerSec: median.bridgeUpdatesPerSec,
                      localApplyUpdatesPerSec: median.localApplyUpdatesPerSec, ratio: median.ratio,
                      bridgePeakRSSBytes: done.map(\.bridgePeakRSSBytes).max() ?? 0,
                      bridgePeakAnonBytes: done.map(\.bridgePeakAnonBytes).max() ?? 0, rounds: done)
    }

    /// One turn of each: the reference, then the bridge, into new directories.
    private func runRound(capture: String, round: Int) async throws -> Round {
        var value = [UInt8](repeating: 0x61, count: valueBytes)
        let localDir = scratch + "/backlog-local-\(round)", rootDir = scratch + "/backlog-root-\(round)"
        defer {
            try? FileManager.default.removeItem(atPath: localDir)
            try? FileManager.default.removeItem(atPath: rootDir)
        }
        // The reference: the same sets applied by the store itself, 10,000 per durable batch.
        let localRate: Double
        do {
            let store = try await Store.open(directory: localDir, mapSize: 16 << 30)
            let start = ContinuousClock.now
            var i = 0, batch: UInt64 = 0
            while i < updates {
                var ops = [Mutation]()
                for _ in 0..<min(10_000, updates - i) {
                    value[i % valueBytes] &+= 1
                    ops.append(.set(key: Array(benchKey(i % keys).utf8), value: value, expiry: nil))
                    i += 1
                }
                _ = try await store.applyBatch(sourceID: "local", expected: batch, new: batch + 1, operations: ops)
                batch += 1
            }
            localRate = Double(updates) / (ContinuousClock.now - start).seconds
        }
        // The bridge against a real root.
        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", rootDir, "--listen", "127.0.0.1:0",
                                                               "--log-level", "warning", "--map-size", "16GiB"])
        defer { _ = try? root.stop() }
        let port = try root.port("write")
        let bridge = Process()
        bridge.executableURL = binDir.appendingPathComponent("qsktbridge")
        bridge.arguments = ["--root", "127.0.0.1:\(port)", "--source", "capture:\(capture)", "--log-level", "warning"]
        let start = ContinuousClock.now
        try bridge.run()
        var rss = 0, anon = 0
        while bridge.isRunning {
            rss = max(rss, peakRSS(pid: bridge.processIdentifier))
            anon = max(anon, anonRSS(pid: bridge.processIdentifier))
            try await Task.sleep(for: .milliseconds(50))
        }
        guard bridge.terminationStatus == 0 else { throw BenchError("qsktbridge exited \(bridge.terminationStatus)") }
        let rate = Double(updates) / (ContinuousClock.now - start).seconds
        return Round(bridgeUpdatesPerSec: rate, localApplyUpdatesPerSec: localRate, ratio: rate / localRate,
                     bridgePeakRSSBytes: rss, bridgePeakAnonBytes: anon)
    }
}
