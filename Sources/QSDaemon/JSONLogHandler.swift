import Foundation
import Logging

/// A swift-log handler writing one JSON object per line to stderr:
/// `{"ts":"…","level":"info","logger":"qsnode","msg":"…", …metadata}`.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String) {
        self.label = label
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        var line = "{\"ts\":\"\(Self.timestamp())\",\"level\":\"\(event.level)\",\"logger\":"
        Self.appendJSONString(label, to: &line)
        line += ",\"msg\":"
        Self.appendJSONString(event.message.description, to: &line)
        for key in fields.keys.sorted() where key != "ts" && key != "level" && key != "msg" && key != "logger" {
            line += ","
            Self.appendJSONString(key, to: &line)
            line += ":"
            Self.appendValue(fields[key]!, to: &line)
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        // One write(2) per line keeps lines from concurrent loggers whole.
        bytes.withUnsafeMutableBytes { p in
            var off = 0
            while off < p.count {
                let n = Foundation.write(2, p.baseAddress! + off, p.count - off)
                if n <= 0 { break }
                off += n
            }
        }
    }

    static func appendValue(_ v: Logger.MetadataValue, to out: inout String) {
        switch v {
        case let .string(s): appendJSONString(s, to: &out)
        case let .stringConvertible(c): appendJSONString(c.description, to: &out)
        case let .array(a):
            out += "["
            for (i, e) in a.enumerated() {
                if i > 0 { out += "," }
                appendValue(e, to: &out)
            }
            out += "]"
        case let .dictionary(d):
            out += "{"
            for (i, k) in d.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                appendJSONString(k, to: &out)
                out += ":"
                appendValue(d[k]!, to: &out)
            }
            out += "}"
        }
    }

    /// Appends `s` as a JSON string literal.
    public static func appendJSONString(_ s: String, to out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tmv = tm()
        var secs = ts.tv_sec
        gmtime_r(&secs, &tmv)
        let ms = ts.tv_nsec / 1_000_000
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(pad(tmv.tm_year + 1900, 4))-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T" +
            "\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }
}
