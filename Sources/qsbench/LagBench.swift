import Foundation
import QSService
import QSTesting

/// A bridge's lag under a steady KT workload: fakekt → qsktbridge → root, the bridge's
/// `qs_bridge_lag_seconds` sampled every 250 ms and drawn like `qsctl lag --plot`.
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
        let ktPort = Harness.freePort(), rootPort = Harness.freePort(), admin = Harness.freePort()
        let ulog = scratch + "/lag-ulog"
        try FileManager.default.createDirectory(atPath: ulog, withIntermediateDirectories: true)
        let kt = try launchExecutable(binDir, quiet: true, "fakekt", ["-host", "127.0.0.1", "-port", "\(ktPort)", "-ulog", ulog, "-sid", "7", "*"])
        let root = try launchExecutable(binDir, quiet: true, "qsnode", ["--data", scratch + "/lag-root", "--listen", "127.0.0.1:\(rootPort)", "--log-level", "warning"])
        defer { for p in [kt, root] { p.terminate(); p.waitUntilExit() } }
        _ = Harness.waitUntil(timeout: .seconds(30)) { Harness.isListening(port: ktPort) && Harness.isListening(port: rootPort) }
        let bridge = try launchExecutable(binDir, quiet: true, "qsktbridge", ["--source", "kt://127.0.0.1:\(ktPort)", "--root", "127.0.0.1:\(rootPort)",
                                               "--admin", "127.0.0.1:\(admin)", "--log-level", "warning"])
        defer { bridge.terminate(); bridge.waitUntilExit() }
        _ = Harness.waitUntil(timeout: .seconds(30)) { Harness.isListening(port: admin) }
        // The workload: a writer thread at a steady rate over KT's HTTP RPC, 50 keys per
        // set_bulk, paced against the clock (not sleeps that drift).
        let stop = StopFlag()
        let written = Counter64()
        let rate = writesPerSecond
        let writer = Thread {
            let perRequest = 50
            let began = Date()
            var i = 0
            let value = String(repeating: "v", count: 100)
            while !stop.isSet {
                let due = Int(Date().timeIntervalSince(began) * Double(rate))
                if i >= due {
                    Thread.sleep(forTimeInterval: 0.001)
                    continue
                }
                var body = ""
                for j in 0..<perRequest { body += (j == 0 ? "" : "&") + "_lag%2F\((i + j) % 20000)=\(value)" }
                _ = httpPost(port: ktPort, path: "/rpc/set_bulk", contentType: "application/x-www-form-urlencoded", body: Array(body.utf8))
                i += perRequest
                written.set(i)
            }
        }
        writer.start()
        let began = Date()
        var samples = [(t: Double, lag: Double)]()
        var rss = 0
        while Date().timeIntervalSince(began) < seconds {
            if let lag = metricValue(port: admin, "qs_bridge_lag_seconds") {
                samples.append((Date().timeIntervalSince(began), lag))
            }
            rss = max(rss, peakRSS(pid: bridge.processIdentifier))
            try await Task.sleep(for: .milliseconds(100))
        }
        stop.set()
        let chart = out + "/bridge-lag.svg"
        try lineChartSVG(samples, title: "qsktbridge lag, \(writesPerSecond) KT writes/s").write(toFile: chart, atomically: true, encoding: .utf8)
        let lags = samples.map(\.lag).sorted()
        func pct(_ p: Double) -> Double { lags.isEmpty ? 0 : lags[min(lags.count - 1, Int(Double(lags.count) * p))] }
        return Result(seconds: seconds, writesPerSecond: writesPerSecond, samples: samples.count, maxLagSeconds: lags.last ?? 0,
                      meanLagSeconds: lags.isEmpty ? 0 : lags.reduce(0, +) / Double(lags.count), p50LagSeconds: pct(0.5),
                      p99LagSeconds: pct(0.99), updatesWritten: written.value, bridgePeakRSSBytes: rss, chart: chart)
    }

}


final class Counter64: @unchecked Sendable {
    private let lock = NSLock()
    private var v = 0
    func set(_ x: Int) { lock.withLock { v = x } }
    var value: Int { lock.withLock { v } }
}
