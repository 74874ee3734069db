import Foundation
import QSTesting
import XCTest

/// `qsctl feed show|stats` of the recorded real-KT fixture against the workload that made it.
final class FeedShowFixtureTests: XCTestCase {
    struct Message: Equatable, CustomStringConvertible {
        var db: Int
        var op: String
        var key: [UInt8]
        var value: [UInt8]?
        var description: String { "db \(db) \(op) \(String(decoding: key, as: UTF8.self)) (\(value?.count ?? -1) value bytes)" }
    }

    /// The update messages KT logs for `ops.jsonl` (see the fixtures' README): set, add and
    /// replace that succeeded log a set; append logs the whole new value; increment the
    /// 8-byte big-endian result; a remove is logged even of a missing key; bulk calls log
    /// one message per key, in key order; failed add/replace/cas log nothing. Also the `xt`
    /// parameter of each set (nil without one).
    static func expectedMessages(_ fixture: KTFixture) throws -> [(Message, xt: Int64?)] {
        var state = [String: [UInt8]]()
        var out = [(Message, xt: Int64?)]()
        let text = try String(contentsOf: fixture.directory.appendingPathComponent("ops.jsonl"), encoding: .utf8)
        for line in text.split(separator: "\n") {
            let op = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let rpc = try XCTUnwrap(op["rpc"] as? String), db = try XCTUnwrap(op["db"] as? Int)
            let ok = op["status"] as? Int == 200
            var params = [[UInt8]: [UInt8]]()
            for (k, v) in try XCTUnwrap(op["params"] as? [String: String]) { params[b64decode(k) ?? []] = b64decode(v) ?? [] }
            let key = params[Array("key".utf8)] ?? [], value = params[Array("value".utf8)] ?? []
            let xt = params[Array("xt".utf8)].flatMap { Int64(String(decoding: $0, as: UTF8.self)) }
            let id = "\(db)/\(key)"
            func set(_ k: [UInt8], _ v: [UInt8], _ x: Int64? = nil) {
                out.append((Message(db: db, op: "set", key: k, value: v), x))
                state["\(db)/\(k)"] = v
            }
            func remove(_ k: [UInt8]) {
                out.append((Message(db: db, op: "remove", key: k, value: nil), nil))
                state["\(db)/\(k)"] = nil
            }
            switch rpc {
            case "set": set(key, value, xt)
            case "add", "replace": if ok { set(key, value) }
            case "append": set(key, (state[id] ?? []) + value)
            case "increment":
                let current = (state[id] ?? []).reduce(Int64(0)) { $0 << 8 | Int64($1) }
                let n = current + (Int64(String(decoding: params[Array("num".utf8)] ?? [], as: UTF8.self)) ?? 0)
                set(key, (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * $0)) })
            case "cas": XCTAssertFalse(ok, "the fixture's cas calls all fail")
            case "remove": remove(key)
            case "set_bulk", "remove_bulk":
                for k in params.keys.filter({ $0.first == UInt8(ascii: "_") }).sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                    if rpc == "set_bulk" { set(Array(k.dropFirst()), params[k] ?? [], xt) } else { remove(Array(k.dropFirst())) }
                }
            default: XCTFail("unexpected rpc \(rpc)")
            }
        }
        return out
    }

    func testShowOfTheFixtureStreamMatchesTheMessagesOfOpsJSONL() throws {
        let fx = try KTFixture("basic")
        let expected = try Self.expectedMessages(fx)
        XCTAssertEqual(expected.count, 903)
        let shown = try feedShow(fx.stream)
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertEqual(shown.lines.count, 903)
        var lastPosition: UInt64 = 0
        var lastOffset = 0
        for (i, (line, want)) in zip(shown.lines, expected).enumerated() {
            let got = Message(db: line["db"] as? Int ?? -1, op: line["op"] as? String ?? "", key: b64decode(line["key"]) ?? [],
                              value: line["value"] == nil ? nil : b64decode(line["value"]))
            XCTAssertEqual(got, want.0, "message \(i)")
            XCTAssertEqual(line["sid"] as? Int, 7)
            let position = try XCTUnwrap((line["position"] as? NSNumber)?.uint64Value)
            let offset = try XCTUnwrap(line["offset"] as? Int)
            XCTAssertGreaterThan(position, lastPosition)
            XCTAssertGreaterThan(offset, lastOffset)
            (lastPosition, lastOffset) = (position, offset)
            // Expiry: none without xt; a negative xt is absolute; a positive one is relative
            // to the time of the update (its timestamp's second, within a second).
            let xt = (line["xt"] as? NSNumber)?.int64Value
            switch want.xt {
            case nil: if got.op == "set" { XCTAssertNil(xt, "message \(i)") }
            case let x? where x < 0: XCTAssertEqual(xt, -x, "message \(i)")
            case let x?:
                let at = Int64(position / 1_000_000_000)
                XCTAssertTrue((at + x - 1...at + x + 1).contains(xt ?? 0), "message \(i): xt \(String(describing: xt)) for +\(x) at \(at)")
            }
        }
        // Filters: a key prefix, a database, a starting position and a count.
        let zone = try feedShow(fx.stream, ["--prefix", "zone:1", "--db", "0"])
        XCTAssertEqual(zone.lines.count, expected.filter { $0.0.db == 0 && $0.0.key.starts(with: Array("zone:1".utf8)) }.count)
        let from = try XCTUnwrap(shown.lines[500]["position"])
        let page = try feedShow(fx.stream, ["--from", "\(from)", "--count", "3"])
        XCTAssertEqual(page.lines.map { $0["offset"] as? Int }, shown.lines[500..<503].map { $0["offset"] as? Int })
    }

    func testStatsOfTheFixtureStream() throws {
        let fx = try KTFixture("basic")
        let expected = try Self.expectedMessages(fx).map(\.0)
        let r = try Harness.run("qsctl", ["feed", "stats", fx.stream.path, "--top", "3"])
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
        let stats = try XCTUnwrap(JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        XCTAssertEqual(stats["updates"] as? Int, 903)
        XCTAssertEqual(stats["damaged"] as? Bool, false)
        var counts = [String: [String: Int]]()
        for m in expected { counts["\(m.db)", default: [:]][m.op, default: 0] += 1 }
        XCTAssertEqual(stats["databases"] as? [String: [String: Int]], counts)
        let keySizes = try XCTUnwrap(stats["key_sizes"] as? [String: Int])
        XCTAssertEqual(keySizes["max"], expected.map(\.key.count).max())
        XCTAssertEqual(keySizes["count"], 903)
        let valueSizes = try XCTUnwrap(stats["value_sizes"] as? [String: Int])
        XCTAssertEqual(valueSizes["max"], expected.compactMap { $0.value?.count }.max())
        // Busiest keys: with fewer distinct keys than counters the counts are exact.
        var perKey = [String: Int]()
        for m in expected { perKey["\(m.db)/\(m.key.map { String($0) }.joined(separator: ","))", default: 0] += 1 }
        let busiest = try XCTUnwrap((stats["busiest_keys"] as? [String: Any])?["keys"] as? [[String: Any]])
        XCTAssertEqual(busiest.count, 3)
        XCTAssertEqual(busiest.first?["count"] as? Int, perKey.values.max())
        let timeline = try XCTUnwrap(stats["timeline"] as? [String: Any])
        let buckets = try XCTUnwrap(timeline["buckets"] as? [[String: Any]])
        XCTAssertEqual(buckets.reduce(0) { $0 + ($1["updates"] as? Int ?? 0) }, 903)
    }

    func testDamagedAndUndecodableFramesAreReportedNeverShown() throws {
        let fx = try KTFixture("basic")
        let bytes = [UInt8](try Data(contentsOf: fx.stream))
        let all = try feedShow(fx.stream).lines
        let tmp = try Harness.tempDir("feed")
        defer { try? FileManager.default.removeItem(at: tmp) }

        // A byte that starts no frame, at the 101st update: 100 lines, then the offset.
        var corrupt = bytes
        let at = try XCTUnwrap(all[100]["offset"] as? Int)
        corrupt[at] = 0x42
        let bad = tmp.appendingPathComponent("bad.bin")
        try Data(corrupt).write(to: bad)
        let shown = try feedShow(bad)
        XCTAssertEqual(shown.status, 4)
        XCTAssertTrue(shown.stderr.contains("damaged at byte offset \(at)"), shown.stderr)
        XCTAssertEqual(shown.lines.count, 100)
        let stats = try Harness.run("qsctl", ["feed", "stats", bad.path])
        XCTAssertEqual(stats.status, 4)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: stats.stdout) as? [String: Any])?["updates"] as? Int, 100)

        // A whole frame whose message has an unknown operation: reported in its place.
        var undecodable = bytes
        undecodable[1 + 13 + 4] = 0x77  // the first message's operation byte
        let odd = tmp.appendingPathComponent("odd.bin")
        try Data(undecodable).write(to: odd)
        let oddShown = try feedShow(odd)
        XCTAssertEqual(oddShown.status, 4)
        XCTAssertEqual(oddShown.lines.count, 903)
        XCTAssertEqual(oddShown.lines[0]["offset"] as? Int, 1)
        XCTAssertNotNil(oddShown.lines[0]["error"])
        XCTAssertNil(oddShown.lines[0]["op"])
        XCTAssertEqual(oddShown.lines[1]["offset"] as? Int, all[1]["offset"] as? Int)
    }
}
