import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting

/// `qsqsbridge --mode compatible` carrying a root's whole log into an empty root, next to
/// the target store's own apply rate for the same entries, and `qsctl verify` throughput.
struct MirrorBench {
    let entries: Int
    let keys: Int
    let valueBytes: Int
    let scratch: String
    let binDir: URL

    struct Result: Codable {
        var entries: Int
        var keys: Int
        var bridgeEntriesPerSec: Double
        var localApplyEntriesPerSec: Double
        var ratio: Double
        var bridgePeakRSSBytes: Int
        var targetPeakRSSBytes: Int
        /// The target node's own memory (RssAnon, sampled): its heap, without LMDB's map.
        var targetPeakAnonBytes: Int
        var bridgePeakAnonBytes: Int
        var verifyKeysPerSec: Double
        var generateSeconds: Double
    }

    func run() async throws -> Result {
        let src = scratch + "/mirror-src", dst = scratch + "/mirror-dst", local = scratch + "/mirror-local"
        // 1. Build the source root's log directly (no fsync per entry), then sync.
        let genStart = ContinuousClock.now
        do {
            let store = try await Store.open(directory: src, mapSize: 16 << 30, noSync: true)
            var value = [UInt8](repeating: 0, count: valueBytes)
            for i in 0..<entries {
                value[i % valueBytes] &+= 1
                _ = try await store.applyBatch(sourceID: "bench", expected: UInt64(i), new: UInt64(i + 1),
                                         operations: [.set(key: Array(benchKey(i % keys).utf8), value: value, expiry: nil)])
            }
            try await store.sync()
        }
        let generate = (ContinuousClock.now - genStart).seconds
        // 2. The reference: the target store applying the same entries itself, durably, 1,000 a transaction.
        let localRate: Double
        do {
            let from = try await Store.open(directory: src, readOnly: true)
            let to = try await Store.open(directory: local, mapSize: 16 << 30)
            let start = ContinuousClock.now
            var next: UInt64 = 1
            while true {
                let chunk = try await from.entries(from: next, count: 1000)
                guard let last = chunk.last else { break }
                try await to.appendEntries(chunk, markCompatible: true)
                next = last.index + 1
            }
            localRate = Double(entries) / (ContinuousClock.now - start).seconds
        }
        // 3. Two real nodes and the bridge between them.
        let srcNode = try startDaemon(binDir, scratch, "qsnode", ["--data", src, "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? srcNode.stop() }
        let dstNode = try startDaemon(binDir, scratch, "qsnode", ["--data", dst, "--listen", "127.0.0.1:0", "--log-level", "warning",
                                                                  "--map-size", "16GiB"])
        defer { _ = try? dstNode.stop() }
        let srcPort = try srcNode.port("write"), dstPort = try dstNode.port("write")
        let start = ContinuousClock.now
        let bridge = try launchExecutable(binDir, "qsqsbridge", ["--source", "qs://127.0.0.1:\(srcPort)", "--root", "127.0.0.1:\(dstPort)", "--mode", "compatible",
                                               "--once", "--log-level", "warning"])
        var bridgeRSS = 0, bridgeAnon = 0, targetAnon = 0
        while bridge.isRunning {
            bridgeRSS = max(bridgeRSS, peakRSS(pid: bridge.processIdentifier))
            bridgeAnon = max(bridgeAnon, anonRSS(pid: bridge.processIdentifier))
            targetAnon = max(targetAnon, anonRSS(pid: dstNode.pid))
            try await Task.sleep(for: .milliseconds(50))
        }
        let bridgeRate = Double(entries) / (ContinuousClock.now - start).seconds
        let targetRSS = peakRSS(pid: dstNode.pid)
        // 4. verify: node against node, by range digests.
        let vStart = ContinuousClock.now
        let verify = try launchExecutable(binDir, "qsctl", ["--node", "127.0.0.1:\(srcPort)", "verify", "--against", "127.0.0.1:\(dstPort)"])
        verify.waitUntilExit()
        let verifyRate = Double(keys) / (ContinuousClock.now - vStart).seconds
        guard verify.terminationStatus == 0 else { throw BenchError("verify found differences after the mirror run") }
        return Result(entries: entries, keys: keys, bridgeEntriesPerSec: bridgeRate, localApplyEntriesPerSec: localRate,
                      ratio: bridgeRate / localRate, bridgePeakRSSBytes: bridgeRSS, targetPeakRSSBytes: targetRSS,
                      targetPeakAnonBytes: targetAnon, bridgePeakAnonBytes: bridgeAnon,
                      verifyKeysPerSec: verifyRate, generateSeconds: generate)
    }

}

/// Starts one of the project's daemons from `binDir` on the ports its arguments give (port
/// 0: the kernel picks) with a ready file, and returns once every listener is up; its log
/// goes to `scratch` and is quoted in the error should it not start.
func startDaemon(_ binDir: URL, _ scratch: String, _ name: String, _ args: [String],
                 timeout: Duration = .seconds(60)) throws -> DaemonProcess {
    try DaemonProcess(name, args, logDir: URL(fileURLWithPath: scratch), ready: true, timeout: timeout, binDir: binDir)
}

/// Starts one of the project's executables from `binDir` (a command that listens on
/// nothing), its stdout discarded.
func launchExecutable(_ binDir: URL, _ name: String, _ args: [String]) throws -> Process {
    let p = Process()
    p.executableURL = binDir.appendingPathComponent(name)
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    return p
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
