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
        var bridgePeakRSSBytes: Int
        var chart: String
    }

    func run() async throws -> Result {
        let ktPort = Harness.freePort(), rootPort = Harness.freePort(), admin = Harness.freePort()
        let ulog = scratch + "/lag-ulog"
        try FileManager.default.createDirectory(atPath: ulog, withIntermediateDirectories: true)
        let kt = try launch("fakekt", ["-host", "127.0.0.1", "-port", "\(ktPort)", "-ulog", ulog, "-sid", "7", "*"])
        let root = try launch("qsnode", ["--data", scratch + "/lag-root", "--listen", "127.0.0.1:\(rootPort)", "--log-level", "warning"])
        defer { for p in [kt, root] { p.terminate(); p.waitUntilExit() } }
        _ = Harness.waitUntil(timeout: .seconds(30)) { Harness.isListening(port: ktPort) && Harness.isListening(port: rootPort) }
        let bridge = try launch("qsktbridge", ["--source", "kt://127.0.0.1:\(ktPort)", "--root", "127.0.0.1:\(rootPort)",
                                               "--admin", "127.0.0.1:\(admin)", "--log-level", "warning"])
        defer { bridge.terminate(); bridge.waitUntilExit() }
        _ = Harness.waitUntil(timeout: .seconds(30)) { Harness.isListening(port: admin) }
        // The workload: a writer thread at a steady rate, over KT's HTTP RPC.
        let stop = StopFlag()
        let rate = writesPerSecond
        let writer = Thread {
            var i = 0
            let pause = 1.0 / Double(max(rate, 1))
            while !stop.isSet {
                let body = Array("key=lag/\(i % 1000)&value=\(String(repeating: "v", count: 100))".utf8)
                _ = httpPost(port: ktPort, path: "/rpc/set", contentType: "application/x-www-form-urlencoded", body: body)
                i += 1
                Thread.sleep(forTimeInterval: pause)
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
            try await Task.sleep(for: .milliseconds(250))
        }
        stop.set()
        let chart = out + "/bridge-lag.svg"
        try lineChartSVG(samples, title: "qsktbridge lag, \(writesPerSecond) KT writes/s").write(toFile: chart, atomically: true, encoding: .utf8)
        let lags = samples.map(\.lag)
        return Result(seconds: seconds, writesPerSecond: writesPerSecond, samples: samples.count, maxLagSeconds: lags.max() ?? 0,
                      meanLagSeconds: lags.isEmpty ? 0 : lags.reduce(0, +) / Double(lags.count), bridgePeakRSSBytes: rss, chart: chart)
    }

    func launch(_ name: String, _ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = binDir.appendingPathComponent(name)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }
}

final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}
