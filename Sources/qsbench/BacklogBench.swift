import Foundation
import KTFormats
import QSModel
import QSStore
import QSTesting

/// `qsktbridge` replaying a large KT backlog (a capture of `updates` sets) into an empty
/// root: its rate next to the root store applying the same changes itself in the same
/// run, and the bridge's peak memory, which must stay bounded whatever the backlog.
struct BacklogBench {
    let updates: Int
    let keys: Int
    let valueBytes: Int
    let scratch: String
    let binDir: URL

    struct Result: Codable {
        var updates: Int
        var captureBytes: Int
        var bridgeUpdatesPerSec: Double
        var localApplyUpdatesPerSec: Double
        var ratio: Double
        var bridgePeakRSSBytes: Int
        var bridgePeakAnonBytes: Int
    }

    func run() async throws -> Result {
        // 1. A capture file as a KT server would send it: acceptance byte, update frames.
        let capture = scratch + "/backlog.bin"
        FileManager.default.createFile(atPath: capture, contents: nil)
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
        try out.close()
        let size = (try FileManager.default.attributesOfItem(atPath: capture)[.size] as? NSNumber)?.intValue ?? 0
        // 2. The reference: the same sets applied by the store itself, 10,000 per durable batch.
        let localRate: Double
        do {
            let store = try await Store.open(directory: scratch + "/backlog-local", mapSize: 16 << 30)
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
        // 3. The bridge against a real root.
        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", scratch + "/backlog-root", "--listen", "127.0.0.1:0",
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
        return Result(updates: updates, captureBytes: size, bridgeUpdatesPerSec: rate, localApplyUpdatesPerSec: localRate,
                      ratio: rate / localRate, bridgePeakRSSBytes: rss, bridgePeakAnonBytes: anon)
    }
}
