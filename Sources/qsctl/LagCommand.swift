import ArgumentParser
import Foundation
import QSDaemon
import QSNet

/// Samples a bridge's or replica's lag from its admin port and draws it over time.
struct Lag: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample a bridge's or replica's lag from its admin /metrics and draw it over time as an SVG.",
        discussion: """
            Reads qs_bridge_lag_seconds (a bridge) or qs_replica_root_age_seconds (a replica) \
            every --interval for --duration, prints each sample, and with --plot writes an SVG \
            line chart a browser opens.
            """)

    @Option(help: ArgumentHelp("The daemon's admin address, HOST:PORT. (env: QS_CTL_LAG_ADMIN)", valueName: "host:port"))
    var admin: TCPAddress = QSEnv.value("QS_CTL_LAG_ADMIN", TCPAddress(host: "127.0.0.1", port: 9400), flag: "--admin")
    @Option(help: ArgumentHelp("How long to sample, e.g. 60s. (env: QS_CTL_LAG_DURATION)", valueName: "duration"))
    var duration: Interval = QSEnv.value("QS_CTL_LAG_DURATION", Interval(.seconds(30)), flag: "--duration")
    @Option(help: ArgumentHelp("Time between samples, e.g. 1s. (env: QS_CTL_LAG_INTERVAL)", valueName: "duration"))
    var interval: Interval = QSEnv.value("QS_CTL_LAG_INTERVAL", Interval(.seconds(1)), flag: "--interval")
    @Option(help: ArgumentHelp("Write the chart to this SVG file. (env: QS_CTL_LAG_PLOT)", valueName: "file"))
    var plot: String = QSEnv.string("QS_CTL_LAG_PLOT") ?? ""
    @Option(help: outputHelp("QS_CTL_LAG_OUTPUT", "table a line a sample; json {t_seconds, metric, value} a sample."))
    var output: OutputFormat = QSEnv.value("QS_CTL_LAG_OUTPUT", OutputFormat.table, flag: "--output")

    func validate() throws {
        guard interval.duration > .zero else {
            throw ValidationError("--interval must be more than 0, e.g. 1s")
        }
    }

    func run() async throws {
        guard let url = URL(string: "http://\(admin)/metrics") else { throw ValidationError("--admin '\(admin)' is not HOST:PORT") }
        let end = ContinuousClock.now + duration.duration
        let step = interval.duration
        let start = Date()
        var samples = [(t: Double, lag: Double)]()
        var metric = ""
        var out = Output(output, listing: true)
        while ContinuousClock.now < end {
            if let text = try? String(contentsOf: url, encoding: .utf8) {
                for name in ["qs_bridge_lag_seconds", "qs_replica_root_age_seconds"] {
                    if let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + " ") }),
                       let v = line.split(separator: " ").last.flatMap({ Double($0) }) {
                        metric = name
                        let t = Date().timeIntervalSince(start)
                        samples.append((t, v))
                        out.item(json: "{\"t_seconds\":\(t),\"metric\":\"\(name)\",\"value\":\(v)}",
                                 table: String(format: "%7.1f s  %@ %.3f", t, name, v))
                        out.flush()
                        break
                    }
                }
            } else {
                fail("no answer from \(url)")
            }
            try await Task.sleep(for: step)
        }
        out.finish()
        guard !samples.isEmpty else {
            fail("no lag metric found at \(url): is it a bridge's or a replica's admin port?")
            throw Exit.serverError
        }
        if !plot.isEmpty {
            try lineChartSVG(samples, title: "\(metric) at \(admin)").write(toFile: plot, atomically: true, encoding: .utf8)
            fail("chart written to \(plot)")
        }
    }
}
