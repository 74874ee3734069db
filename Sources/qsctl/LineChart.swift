import Foundation

/// A self-contained SVG line chart (seconds on both axes) with axes and labels: lag
/// over time, for `qsctl lag --plot` and `make bench`.
public func lineChartSVG(_ s: [(t: Double, lag: Double)], title: String) -> String {
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
