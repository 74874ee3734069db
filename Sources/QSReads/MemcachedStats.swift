import Foundation
import NIOConcurrencyHelpers

/// The numbers `stats` reports, shared by every connection of one server.
final class MemcachedStats: Sendable {
    private struct Counts {
        var gets = 0
        var hits = 0
    }

    private let counts = NIOLockedValueBox(Counts())
    let started = Date()

    /// One `get` of `gets` keys, `hits` of them found.
    func count(gets: Int, hits: Int) {
        counts.withLockedValue {
            $0.gets += gets
            $0.hits += hits
        }
    }

    /// The `stats` reply: the fields of KT's plug-in that mean something on a read-only
    /// node (no write counters, no database internals).
    func render(version: String, connections: Int) -> String {
        let c = counts.withLockedValue { $0 }
        let now = Date()
        var s = ""
        s += "STAT pid \(ProcessInfo.processInfo.processIdentifier)\r\n"
        s += "STAT uptime \(Int(now.timeIntervalSince(started)))\r\n"
        s += "STAT time \(Int(now.timeIntervalSince1970))\r\n"
        s += "STAT version \(version)\r\n"
        s += "STAT pointer_size \(MemoryLayout<Int>.size * 8)\r\n"
        s += "STAT curr_connections \(connections)\r\n"
        s += "STAT get_hits \(c.hits)\r\n"
        s += "STAT get_misses \(c.gets - c.hits)\r\n"
        s += "STAT cmd_get \(c.gets)\r\n"
        s += "END\r\n"
        return s
    }
}
