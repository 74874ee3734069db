import ArgumentParser
import Foundation
import QSService

/// Samples a bridge's or replica's lag from its admin port and draws it over time.
struct Lag: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample a bridge's or replica's lag from its admin /metrics and draw it over time as an SVG.",
        discussion: """
            Reads qs_bridge_lag_seconds (a bridge) or qs_replica_root_age_seconds (a replica) \
            every --interval for --duration, prints each sample, and with --plot writes an SVG \
            line chart a browser opens.
            """)

    @Option(help: ArgumentHelp("The daemon's admin address, HOST:PORT. (env: QS_ADMIN)", valueName: "host:port"))
    var admin: String = QSEnv.string("QS_ADMIN") ?? "127.0.0.1:9400"
    @Option(help: ArgumentHelp("How long to sample, e.g. 60s.", valueName: "duration")) var duration: String = "30s"
    @Option(help: ArgumentHelp("Time between samples, e.g. 1s.", valueName: "duration")) var interval: String = "1s"
    @Option(help: ArgumentHelp("Write the chart to this SVG file.", valueName: "file")) var plot: String = ""

    func validate() throws {
        guard parseDuration(duration) != nil, parseDuration(interval) ?? .zero > .zero else {
            throw ValidationError("--duration and --interval take durations such as 30s and 1s")
        }
    }

    func run() async throws {
        guard let url = URL(string: "http://\(admin)/metrics") else { throw ValidationError("--admin '\(admin)' is not HOST:PORT") }
        let end = ContinuousClock.now + parseDuration(duration)!
        let step = parseDuration(interval)!
        let start = Date()
        var samples = [(t: Double, lag: Double)]()
        var metric = ""
        while ContinuousClock.now < end {
            if let text = try? String(contentsOf: url, encoding: .utf8) {
                for name in ["qs_bridge_lag_seconds", "qs_replica_root_age_seconds"] {
                    if let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + " ") }),
                       let v = line.split(separator: " ").last.flatMap({ Double($0) }) {
                        metric = name
                        let t = Date().timeIntervalSince(start)
                        samples.append((t, v))
                        printLine(String(format: "%7.1f s  %@ %.3f", t, name, v))
                        break
                    }
                }
            } else {
                fail("no answer from \(url)")
            }
            try await Task.sleep(for: step)
        }
        guard !samples.isEmpty else {
            fail("no lag metric found at \(url): is it a bridge's or a replica's admin port?")
            throw Exit.serverError
        }
        if !plot.isEmpty {
            try svg(samples, title: "\(metric) at \(admin)").write(toFile: plot, atomically: true, encoding: .utf8)
            fail("chart written to \(plot)")
        }
    }

    /// A self-contained SVG line chart with axes and labels.
    func svg(_ s: [(t: Double, lag: Double)], title: String) -> String {
        let w = 800.0, h = 400.0, left = 70.0, right = 20.0, top = 40.0, bottom = 50.0
        let maxT = max(s.map(\.t).max() ?? 1, 1), maxLag = max((s.map(\.lag).max() ?? 1) * 1.1, 0.1)
        func x(_ t: Double) -> Double { left + t / maxT * (w - left - right) }
        func y(_ v: Double) -> Double { h - bottom - v / maxLag * (h - top - bottom) }
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        out += "<text x=\"\(Int(w / 2))\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">\(title)</text>\n"
        for i in 0...4 {
            let v = maxLag * Double(i) / 4
            out += String(format: "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>", left, y(v), w - right, y(v))
            out += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.2f s</text>\n", left - 6, y(v) + 4, v)
        }
        for i in 0...5 {
            let t = maxT * Double(i) / 5
            out += String(format: "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f s</text>\n", x(t), h - bottom + 18, t)
        }
        out += "<text x=\"\(Int(w / 2))\" y=\"\(Int(h - 10))\" text-anchor=\"middle\">time since start</text>\n"
        let points = s.map { String(format: "%.1f,%.1f", x($0.t), y($0.lag)) }.joined(separator: " ")
        out += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"\(points)\"/>\n"
        out += "<line x1=\"\(Int(left))\" y1=\"\(Int(top))\" x2=\"\(Int(left))\" y2=\"\(Int(h - bottom))\" stroke=\"black\"/>"
        out += "<line x1=\"\(Int(left))\" y1=\"\(Int(h - bottom))\" x2=\"\(Int(w - right))\" y2=\"\(Int(h - bottom))\" stroke=\"black\"/>\n"
        return out + "</svg>\n"
    }
}
