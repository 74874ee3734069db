@testable import FakeKT
import Foundation
import KTFormats
import QSTesting
import XCTest

/// What ktserver 0.9.56 answers, from its sources (ktserver.cc, kttimeddb.h and Kyoto
/// Cabinet's databases), for what the recorded transcripts do not cover.
final class KTBehaviourTests: XCTestCase {
    /// One connection (cursors belong to it) calling RPC procedures with TSV bodies.
    struct Session {
        let socket: TestSocket

        init(port: Int) throws { socket = try TestSocket(port: port) }

        /// Status and the reply's map, decoded whatever column encoding it came in.
        func call(_ name: String, _ params: [(String, [UInt8])] = []) throws -> (status: Int, out: [String: [UInt8]]) {
            var body: [UInt8] = []
            for (k, v) in params { body += Base64.encode(Array(k.utf8)) + [9] + Base64.encode(v) + [10] }
            try socket.send(Array("POST /rpc/\(name) HTTP/1.1\r\nHost: x\r\nContent-Type: text/tab-separated-values; colenc=B\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
            let r = try socket.readHTTPResponse()
            guard case .tsv(let encoding) = KTTSV.bodyKind(contentType: r.headers["content-type"] ?? "") else {
                XCTFail("\(name): not a TSV reply")
                return (r.status, [:])
            }
            var out: [String: [UInt8]] = [:]
            for (k, v) in KTTSV.parse(r.body, encoding: encoding) { out[String(decoding: k, as: UTF8.self)] = v }
            return (r.status, out)
        }

        func call(_ name: String, _ params: [(String, String)]) throws -> (status: Int, out: [String: [UInt8]]) {
            try call(name, params.map { ($0.0, Array($0.1.utf8)) })
        }

        func text(_ name: String, _ params: [(String, String)], _ field: String) throws -> String? {
            try call(name, params).out[field].map { String(decoding: $0, as: UTF8.self) }
        }

        func status(_ name: String, _ params: [(String, String)] = []) throws -> Int { try call(name, params).status }

        func error(_ name: String, _ params: [(String, String)] = []) throws -> String? { try text(name, params, "ERROR") }
    }

    /// match_similar's keys in order (the values number them).
    func similar(_ s: Session, _ params: [(String, String)]) throws -> [String] {
        let r = try s.call("match_similar", params)
        XCTAssertEqual(r.status, 200)
        let keys = r.out.filter { $0.key.hasPrefix("_") }
            .map { (String($0.key.dropFirst()), Int(String(decoding: $0.value, as: UTF8.self)) ?? -1) }
            .sorted { $0.1 < $1.1 }
        XCTAssertEqual(keys.map(\.1), Array(0..<keys.count))
        XCTAssertEqual(r.out["num"].map { String(decoding: $0, as: UTF8.self) }, String(keys.count))
        return keys.map(\.0)
    }

    func testMatchSimilarAsKyotoCabinetComputesIt() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        let s = try Session(port: harness.port)
        for k in ["abc", "abd", "ab", "abcd", "xyz", "bc", "あいう", "あいx"] {
            XCTAssertEqual(try s.status("set", [("key", k), ("value", "v")]), 200)
        }
        XCTAssertEqual(try s.status("set", [("key", "abx"), ("value", "gone"), ("xt", "-1")]), 200)
        // Default range 1; by distance, then by key; a key longer or shorter by more than
        // the range is skipped; expired records are not matched.
        XCTAssertEqual(try similar(s, [("origin", "abc")]), ["abc", "ab", "abcd", "abd", "bc"])
        XCTAssertEqual(try similar(s, [("origin", "abc"), ("range", "-3")]), ["abc", "ab", "abcd", "abd", "bc"])
        XCTAssertEqual(try similar(s, [("origin", "abc"), ("range", "0")]), ["abc"])
        XCTAssertEqual(try similar(s, [("origin", "abc"), ("range", "3"), ("max", "6")]), ["abc", "ab", "abcd", "abd", "bc", "xyz"].prefix(6).map { $0 })
        XCTAssertEqual(try similar(s, [("origin", "abc"), ("max", "2")]), ["abc", "ab"])
        XCTAssertEqual(try similar(s, [("origin", "abc"), ("max", "0")]), [])
        // Bytes: "あいx" is 7 bytes to the origin's 9, beyond range 1. Code points when utf
        // is given at all, even as 0: one substitution.
        XCTAssertEqual(try similar(s, [("origin", "あいう")]), ["あいう"])
        XCTAssertEqual(try similar(s, [("origin", "あいう"), ("utf", "0")]), ["あいう", "あいx"])
        XCTAssertEqual(try s.error("match_similar", []), "invalid parameters")
    }

    func testKyotoCabinetUTF8DecodingAndDistance() {
        XCTAssertEqual(SimilarKeys.decode(Array("aあ😀".utf8)), [0x61, 0x3042, 0x1F600])
        // A lead byte cut short by the end or a zero byte is dropped; overlong forms too.
        XCTAssertEqual(SimilarKeys.decode([0x61, 0xE3, 0x81]), [0x61])
        XCTAssertEqual(SimilarKeys.decode([0xC3, 0x00, 0x62]), [0x00, 0x62])
        XCTAssertEqual(SimilarKeys.decode([0xC0, 0x80]), [])
        XCTAssertEqual(SimilarKeys.distance(Array("kitten".utf8).map(UInt32.init), Array("sitting".utf8).map(UInt32.init)), 3)
    }

    func testCursorsMoveBackOnTreesAndAnswerNotImplementedOnHashes() async throws {
        // 0 file hash, 1 file tree, 2 prototype hash, 3 prototype tree, 4 cache hash,
        // 5 cache tree, 6 stash, 7 directory hash.
        let harness = try await ServerHarness.start(databases: ["main.kch", "aux.kct", "-", "+", "*", "%", ":", "d.kcd"])
        addTeardownBlock { try await harness.stop() }
        let s = try Session(port: harness.port)
        let notImplemented = "DB: 1: not implemented: not implemented"
        let noRecord = "DB: 7: no record: no record"

        // An empty prototype hash has no record to step back from (450); the others say 501.
        XCTAssertEqual(try s.status("cur_jump_back", [("CUR", "20"), ("DB", "2")]), 450)
        XCTAssertEqual(try s.error("cur_jump_back", [("CUR", "20")]), noRecord)
        XCTAssertEqual(try s.status("cur_jump_back", [("CUR", "24"), ("DB", "4")]), 501)

        for db in 0..<8 {
            for k in ["a", "b", "c"] { XCTAssertEqual(try s.status("set", [("key", k), ("value", "v\(k)"), ("DB", "\(db)")]), 200) }
        }
        for db in [0, 4, 6, 7] {
            let cur = "\(db + 10)"
            XCTAssertEqual(try s.status("cur_jump_back", [("CUR", cur), ("DB", "\(db)")]), 501, "db \(db)")
            XCTAssertEqual(try s.error("cur_jump_back", [("CUR", cur), ("key", "b")]), notImplemented, "db \(db)")
            // A hash cursor jumps to a key that is there, not to the next one.
            XCTAssertEqual(try s.error("cur_jump", [("CUR", cur), ("key", "bb")]), noRecord, "db \(db)")
            XCTAssertEqual(try s.status("cur_jump", [("CUR", cur), ("key", "b")]), 200, "db \(db)")
            XCTAssertEqual(try s.text("cur_get_key", [("CUR", cur)], "key"), "b", "db \(db)")
            XCTAssertEqual(try s.status("cur_step_back", [("CUR", cur)]), 501, "db \(db)")
        }
        // The prototype hash stands on a key it has when asked to jump back to it; stepping
        // back from its first record says 450, from elsewhere 501.
        XCTAssertEqual(try s.status("cur_jump_back", [("CUR", "12"), ("DB", "2")]), 501)
        XCTAssertEqual(try s.status("cur_jump_back", [("CUR", "12"), ("key", "b")]), 200)
        XCTAssertEqual(try s.text("cur_get_key", [("CUR", "12")], "key"), "b")
        XCTAssertEqual(try s.status("cur_step_back", [("CUR", "12")]), 501)
        XCTAssertEqual(try s.status("cur_jump", [("CUR", "12"), ("key", "a")]), 200)
        XCTAssertEqual(try s.status("cur_step_back", [("CUR", "12")]), 450)

        for db in [1, 3, 5] {
            let cur = "\(db + 10)"
            XCTAssertEqual(try s.status("cur_jump_back", [("CUR", cur), ("DB", "\(db)")]), 200, "db \(db)")
            XCTAssertEqual(try s.text("cur_get_key", [("CUR", cur)], "key"), "c", "db \(db)")
            XCTAssertEqual(try s.status("cur_step_back", [("CUR", cur)]), 200, "db \(db)")
            XCTAssertEqual(try s.text("cur_get", [("CUR", cur)], "value"), "vb", "db \(db)")
            XCTAssertEqual(try s.status("cur_jump_back", [("CUR", cur), ("key", "bb")]), 200, "db \(db)")
            XCTAssertEqual(try s.text("cur_get_key", [("CUR", cur)], "key"), "b", "db \(db)")
            XCTAssertEqual(try s.status("cur_jump", [("CUR", cur), ("key", "bb")]), 200, "db \(db)")
            XCTAssertEqual(try s.text("cur_get_key", [("CUR", cur)], "key"), "c", "db \(db)")
            XCTAssertEqual(try s.error("cur_step", [("CUR", cur)]), noRecord, "db \(db)")
            XCTAssertEqual(try s.error("cur_jump_back", [("CUR", cur), ("key", "0")]), noRecord, "db \(db)")
        }
        // From nowhere, a prototype tree steps back onto its last record; a B+ tree cannot.
        XCTAssertEqual(try s.status("cur_step_back", [("CUR", "30"), ("DB", "3")]), 200)
        XCTAssertEqual(try s.text("cur_get_key", [("CUR", "30")], "key"), "c")
        XCTAssertEqual(try s.status("cur_step_back", [("CUR", "31"), ("DB", "1")]), 450)
    }

    func testExpiredRecordsAreSkippedInTheDirectionOfTravelAndSeizeEnds() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        let s = try Session(port: harness.port)
        for (k, xt) in [("a", nil), ("b", "-1"), ("c", nil), ("d", "-1")] as [(String, String?)] {
            XCTAssertEqual(try s.status("set", [("key", k), ("value", "v\(k)"), ("DB", "1")] + (xt.map { [("xt", $0)] } ?? [])), 200)
        }
        // The cursor stands on the expired "b"; reading moves on in the direction it came.
        XCTAssertEqual(try s.status("cur_jump", [("CUR", "1"), ("DB", "1"), ("key", "b")]), 200)
        XCTAssertEqual(try s.text("cur_get_key", [("CUR", "1")], "key"), "c")
        XCTAssertEqual(try s.status("cur_jump_back", [("CUR", "1"), ("key", "b")]), 200)
        XCTAssertEqual(try s.text("cur_get_key", [("CUR", "1")], "key"), "a")
        XCTAssertEqual(try s.status("cur_jump_back", [("CUR", "1")]), 200)
        XCTAssertEqual(try s.text("cur_get_key", [("CUR", "1")], "key"), "c")
        XCTAssertEqual(try s.status("cur_jump", [("CUR", "1"), ("key", "d")]), 200)
        XCTAssertEqual(try s.status("cur_get", [("CUR", "1")]), 450)
        // A walk with step reads the live records only.
        XCTAssertEqual(try s.status("cur_jump", [("CUR", "2"), ("DB", "1")]), 200)
        var walked: [String] = []
        while let k = try s.text("cur_get_key", [("CUR", "2"), ("step", "")], "key") { walked.append(k) }
        XCTAssertEqual(walked, ["a", "c"])

        // seize takes the last live record; the cursor moves on to the expired "d" and
        // reading forwards finds nothing: no record.
        XCTAssertEqual(try s.status("cur_jump", [("CUR", "3"), ("DB", "1"), ("key", "c")]), 200)
        let seized = try s.call("cur_seize", [("CUR", "3")])
        XCTAssertEqual(seized.out["key"], Array("c".utf8))
        XCTAssertEqual(seized.out["value"], Array("vc".utf8))
        XCTAssertEqual(try s.error("cur_seize", [("CUR", "3")]), "DB: 7: no record: no record")
        XCTAssertEqual(try s.status("cur_get", [("CUR", "3")]), 450)
        XCTAssertEqual(try s.status("get", [("key", "c"), ("DB", "1")]), 450)
        // A record removed under a cursor moves it to the next key.
        XCTAssertEqual(try s.status("set", [("key", "e"), ("value", "ve"), ("DB", "1")]), 200)
        XCTAssertEqual(try s.status("cur_jump", [("CUR", "4"), ("DB", "1"), ("key", "a")]), 200)
        XCTAssertEqual(try Session(port: harness.port).status("remove", [("key", "a"), ("DB", "1")]), 200)
        XCTAssertEqual(try s.text("cur_get_key", [("CUR", "4")], "key"), "e")
    }

    /// The fakekt executable with ktserver's command line: -scr, every database form,
    /// `report` and per-database `status`.
    func testCommandLineDatabasesReportStatusAndScript() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("fakekt-cli-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: tmp) }
        let script = tmp.appendingPathComponent("ktscr.lua")
        try Data("-- procedures\n".utf8).write(to: script)
        let databases = ["main.kch#bnum=1000#msiz=1m", "-", "+", ":", "*#capsiz=64m", "%", "\(tmp.path)/aux.kct#opts=l",
                         "data#type=kcf", "/var/x/main.kch"]
        try FileManager.default.createDirectory(at: tmp.appendingPathComponent("ulog"), withIntermediateDirectories: true)
        let kt = try DaemonProcess("fakekt", ["-host", "127.0.0.1", "-port", "0", "-scr", script.path, "-oat", "-asi", "10",
                                              "-ulog", tmp.appendingPathComponent("ulog").path, "-sid", "4"] + databases,
                                   logDir: tmp, ready: true)
        addTeardownBlock { _ = try? kt.stop() }
        let s = try Session(port: try kt.port("kt"))

        let report = try s.call("report")
        let paths = ["main.kch", "-", "+", ":", "*", "%", "\(tmp.path)/aux.kct", "data", "/var/x/main.kch"]
        for (i, path) in paths.enumerated() {
            XCTAssertEqual(report.out["db_\(i)"].map { String(decoding: $0, as: UTF8.self) }, "count=0 size=0 path=\(path)")
        }
        XCTAssertNil(report.out["db_9"])
        let types = [48, 16, 17, 24, 32, 33, 49, 65, 48]
        for (i, type) in types.enumerated() {
            let status = try s.call("status", [("DB", "\(i)")])
            XCTAssertEqual(status.status, 200)
            XCTAssertEqual(status.out["type"], Array(String(type).utf8), "db \(i)")
            XCTAssertEqual(status.out["path"], Array(paths[i].utf8), "db \(i)")
            XCTAssertNil(status.out["opaque"], "ktserver shows no opaque region: db \(i)")
            XCTAssertNil(status.out["bnum_used"], "filled only when asked for: db \(i)")
            XCTAssertEqual(status.out["ktcapcnt"], Array("-1".utf8), "db \(i)")
        }
        // DB= names a database by its file name; of two with one name the later wins; a
        // full path names none.
        XCTAssertEqual(try s.status("set", [("DB", "main.kch"), ("key", "k"), ("value", "v")]), 200)
        XCTAssertEqual(try s.text("report", [], "db_8"), "count=1 size=7 path=/var/x/main.kch")
        XCTAssertEqual(try s.text("status", [("DB", "aux.kct")], "type"), "49")
        XCTAssertEqual(try s.error("status", [("DB", "\(tmp.path)/aux.kct")]), "no such database")

        // A script file without Lua: echo answers, other names are not implemented.
        let echo = try s.call("play_script", [("name", "echo"), ("_a", "1"), ("_b", "x y"), ("c", "dropped")])
        XCTAssertEqual(echo.status, 200)
        XCTAssertEqual(echo.out, ["_a": Array("1".utf8), "_b": Array("x y".utf8)])
        XCTAssertEqual(try s.status("play_script", [("name", "incr")]), 501)
        XCTAssertEqual(try s.error("play_script", [("name", "incr")]), "no such scripting procedure")
        XCTAssertEqual(try s.error("play_script", [("name", "no-such")]), "invalid parameters")
        let binary = try TestSocket(port: try kt.port("kt"))
        try binary.send(KTBinaryRequest.playScript(flags: 0, name: Array("echo".utf8), arguments: [KTPair(key: [1], value: [2, 3])]).encoded())
        XCTAssertEqual(try binary.read(16), KTBinaryResponse.playScript(results: [KTPair(key: [1], value: [2, 3])]).encoded())
        XCTAssertEqual(try kt.stop(), 0)
    }

    func testCommandLineRefusalsAsKtserver() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("fakekt-refuse-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: tmp) }
        func refused(_ args: [String], _ status: Int32, _ message: String) throws {
            let r = try Harness.run("fakekt", ["-host", "127.0.0.1", "-port", "0"] + args)
            let stderr = String(decoding: r.stderr, as: UTF8.self)
            XCTAssertEqual(r.status, status, stderr)
            XCTAssertTrue(stderr.contains(message), stderr)
        }
        try refused(["-scr", tmp.appendingPathComponent("none.lua").path], 1, "none.lua: no such file")
        try refused(["data.xyz"], 1, "data.xyz: invalid operation: unknown database type")
        try refused(["-ulog", tmp.path], 64, "update log requires the server ID")
        try refused(["-mhost", "kt1"], 64, "the ktserver option -mhost is not supported by fakekt")
    }
}
