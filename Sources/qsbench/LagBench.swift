import Foundation
import QSTesting

/// A bridge's lag under a steady KT workload: fakekt → qsktbridge → root, the bridge's
/// `qs_bridge_lag_seconds` sampled every 100 ms and drawn by `qsctl lag --plot`. Every
/// write carries a new value (100 bytes), so the root applies each one.
struct LagBench {
    let seconds: Double
    let writesPerSecond: Int
    let scratch: String
    let binDir: URL
    let out: String

    struct Result: Codable {
        var seconds: Double
        var writesPerSecond: Int
        var samples: Int
        var maxLagSeconds: Double
        var meanLagSeconds: Double
        var p50LagSeconds: Double
        var p99LagSeconds: Double
        var updatesWritten: Int
        var bridgePeakRSSBytes: Int
        var chart: String
    }

    func run() async throws -> Result {
        let ulog = scratch + "/lag-ulog"
        try FileManager.default.createDirectory(atPath: ulog, withIntermediateDirectories: true)
        let kt = try startDaemon(binDir, scratch, "fakekt", ["-host", "127.0.0.1", "-port", "0", "-ulog", ulog, "-sid", "7", "*"])
        defer { _ = try? kt.stop() }
        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", scratch + "/lag-root", "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? root.stop() }
        let ktPort = try kt.port("kt"), rootPort = try root.port("write")
        let bridge = try startDaemon(binDir, scratch, "qsktbridge", ["--source", "kt://127.0.0.1:\(ktPort)", "--root", "127.0.0.1:\(rootPort)",
                                                                     "--admin", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? bridge.stop() }
        let admin = try bridge.port("admin")
        // The workload: a writer thread at a steady rate over KT's HTTP RPC, 50 keys per
        // set_bulk, paced against the clock (not sleeps that drift).
        let stop = StopFlag()
        let written = Counter64()
        let rate = writesPerSecond
        let writer = Thread {
            let perRequest = 50
            let began = Date()
            var i = 0
            // Every write changes its key's value (the write's number leads it): a constant
            // value would be dropped by the root as an identical write from the second
            // pass over the 20,000 keys on, and the lag would measure nothing.
            let padding = String(repeating: "v", count: 100)
            while !stop.isSet {
                let due = Int(Date().timeIntervalSince(began) * Double(rate))
                if i >= due {
                    Thread.sleep(forTimeInterval: 0.001)
                    continue
                }
                var body = ""
                for j in 0..<perRequest {
                    let n = String(i + j)
                    body += (j == 0 ? "" : "&") + "_lag%2F\((i + j) % 20000)=" + n + padding.dropLast(n.count)
                }
                _ = httpPost(port: ktPort, path: "/rpc/set_bulk", contentType: "application/x-www-form-urlencoded", body: Array(body.utf8))
                i += perRequest
                written.set(i)
            }
        }
        writer.start()
        // qsctl lag samples the bridge's metric and draws the chart (the chart lives there);
        // its stdout lines `T s  qs_bridge_lag_seconds LAG` are the samples.
        let chart = out + "/bridge-lag.svg"
        let sampler = Process()
        sampler.executableURL = binDir.appendingPathComponent("qsctl")
        sampler.arguments = ["lag", "--admin", "127.0.0.1:\(admin)", "--duration", "\(seconds)s", "--interval", "100ms", "--plot", chart]
        let pipe = Pipe()
        sampler.standardOutput = pipe
        sampler.standardError = FileHandle.nullDevice
        try sampler.run()
        let output = ByteSink(pipe.fileHandleForReading)
        var rss = 0
        while sampler.isRunning {
            rss = max(rss, peakRSS(pid: bridge.pid))
            try await Task.sleep(for: .milliseconds(100))
        }
        stop.set()
        let samples: [(t: Double, lag: Double)] = output.text().split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count == 4, let t = Double(f[0]), let lag = Double(f[3]) else { return nil }
            return (t, lag)
        }
        let lags = samples.map(\.lag).sorted()
        func pct(_ p: Double) -> Double { lags.isEmpty ? 0 : lags[min(lags.count - 1, Int(Double(lags.count) * p))] }
        return Result(seconds: seconds, writesPerSecond: writesPerSecond, samples: samples.count, maxLagSeconds: lags.last ?? 0,
                      meanLagSeconds: lags.isEmpty ? 0 : lags.reduce(0, +) / Double(lags.count), p50LagSeconds: pct(0.5),
                      p99LagSeconds: pct(0.99), updatesWritten: written.value, bridgePeakRSSBytes: rss, chart: chart)
    }

}


/// Collects a pipe's bytes on its own thread (a full pipe would block the writer).
final class ByteSink: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                lock.withLock { data.append(chunk) }
            }
            done.signal()
        }.start()
    }

    /// Everything written, once the writer closed its end.
    func text() -> String {
        done.wait()
        return lock.withLock { String(decoding: data, as: UTF8.self) }
    }
}

final class Counter64: @unchecked Sendable {
    private let lock = NSLock()
    private var v = 0
    func set(_ x: Int) { lock.withLock { v = x } }
    var value: Int { lock.withLock { v } }
}
