import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// `qsctl record --source kt://…` against a real `fakekt` process, replayed through
/// `qsktbridge --source capture:FILE` into fresh roots.
final class RecordKTTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("record")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func recorder(_ kt: FakeKTProcess, _ out: URL, _ args: [String]) throws -> DaemonProcess {
        try DaemonProcess("qsctl", ["record", "--source", "kt://\(kt.address)", "--out", out.path, "--sid", "99"] + args, logDir: tmp)
    }

    /// Replays `file` into a fresh root; returns the bridge's exit status and stderr, and the root.
    func replay(_ file: URL) async throws -> (status: Int32, stderr: String, state: [[UInt8]: [UInt8]], checkpoint: UInt64?) {
        let root = try RootNode(data: tmp.appendingPathComponent("root-\(UUID().uuidString.prefix(6))"), logDir: tmp)
        let r = try Harness.run("qsktbridge", ["--root", root.address, "--source", "capture:\(file.path)", "--db-map", "0=,1=aux/",
                                               "--once", "--source-id", "replay", "--log-format", "text"])
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let state = try await dumpState(c).mapValues(\.value)
        let cp = try await c.checkpoint(sourceID: "replay")
        _ = try await verifyLog(c, sourceID: "replay")
        await c.close()
        return (r.status, String(decoding: r.stderr, as: UTF8.self), state, cp)
    }

    /// One logged KT update per call: sets in both databases and removes (some of absent keys).
    static func workload(_ kt: FakeKTProcess, _ range: Range<Int>, valueBytes: Int = 0) {
        let pad = String(repeating: "x", count: valueBytes)
        for i in range {
            switch i % 5 {
            case 3: kt.remove("key\((i * 7) % 60)")
            case 4: kt.set("aux\(i % 25)", "a\(i)", db: 1)
            default: kt.set("key\(i % 60)", "value\(i)" + pad)
            }
        }
    }

    /// What `workload(0..<n)` leaves in KT, as QS keys (database 1 under `aux/`).
    static func workloadState(_ n: Int) -> [[UInt8]: [UInt8]] {
        var out = [[UInt8]: [UInt8]]()
        for i in 0..<n {
            switch i % 5 {
            case 3: out[Array("key\((i * 7) % 60)".utf8)] = nil
            case 4: out[Array("aux/aux\(i % 25)".utf8)] = Array("a\(i)".utf8)
            default: out[Array("key\(i % 60)".utf8)] = Array("value\(i)".utf8)
            }
        }
        return out
    }

    func testRecordingUnderAWorkloadReplaysToKTsState() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let out = tmp.appendingPathComponent("feed.bin")
        Self.workload(kt, 0..<100)
        // The rest of the workload runs while the recorder starts and records.
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            Self.workload(kt, 100..<400)
            finished.signal()
        }
        let rec = try recorder(kt, out, ["--from", "0", "--count", "400"])
        XCTAssertEqual(rec.exitStatus(), 0, rec.log)
        XCTAssertEqual(finished.wait(timeout: .now() + 60), .success)
        XCTAssertTrue(rec.log.contains("recorded 400 updates"), rec.log)

        let meta = try readMeta(out)
        XCTAssertEqual(meta["format"] as? String, "kt-replication")
        XCTAssertEqual(meta["source"] as? String, "kt://\(kt.address)")
        XCTAssertEqual(meta["sid"] as? Int, 99)
        XCTAssertEqual(meta["updates"] as? Int, 400)
        XCTAssertEqual(meta["complete"] as? Bool, true)
        XCTAssertEqual(meta["stopped_by"] as? String, "count")
        XCTAssertEqual(meta["databases"] as? [String: Int], ["0": 320, "1": 80])
        XCTAssertEqual(meta["bytes"] as? Int, fileSize(out))
        let first = try XCTUnwrap((meta["first_ts"] as? NSNumber)?.uint64Value)
        let last = try XCTUnwrap((meta["last_ts"] as? NSNumber)?.uint64Value)
        XCTAssertLessThan(first, last)

        let shown = try feedShow(out)
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertEqual(shown.lines.count, 400)
        XCTAssertEqual((shown.lines.last?["position"] as? NSNumber)?.uint64Value, last)

        let r = try await replay(out)
        XCTAssertEqual(r.status, 0, r.stderr)
        let want = kt.state(prefixes: [0: "", 1: "aux/"])
        XCTAssertEqual(want, Self.workloadState(400))
        XCTAssertEqual(r.state, want)
        XCTAssertEqual(r.checkpoint, last)
    }

    func testSignalAndDurationStopAtAFrameBoundary() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        for i in 0..<10 { kt.set("before\(i)", "old") }
        let out = tmp.appendingPathComponent("live.bin")
        // Default --from: now. Nothing written before the recorder starts is recorded.
        let rec = try recorder(kt, out, [])
        XCTAssertTrue(Harness.waitUntil { ((try? readMeta(out))?["heartbeats"] as? Int ?? 0) > 0 }, rec.log)
        for i in 0..<50 { kt.set("s\(i)", "v\(i)") }
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { (try? readMeta(out))?["updates"] as? Int == 50 }, rec.log)
        XCTAssertEqual(try rec.stop(signal: SIGTERM), 0, rec.log)
        let meta = try readMeta(out)
        XCTAssertEqual(meta["stopped_by"] as? String, "signal")
        XCTAssertEqual(meta["complete"] as? Bool, true)
        XCTAssertEqual(meta["bytes"] as? Int, fileSize(out))
        let shown = try feedShow(out)
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertEqual(shown.lines.map { b64decode($0["key"]) }, (0..<50).map { Optional(Array("s\($0)".utf8)) })

        // --duration with nothing to record: the acceptance byte and heartbeats only.
        let idle = tmp.appendingPathComponent("idle.bin")
        let timed = try recorder(kt, idle, ["--duration", "1s"])
        XCTAssertEqual(timed.exitStatus(within: .seconds(15)), 0, timed.log)
        let idleMeta = try readMeta(idle)
        XCTAssertEqual(idleMeta["stopped_by"] as? String, "duration")
        XCTAssertEqual(idleMeta["updates"] as? Int, 0)
        let heartbeats = try XCTUnwrap(idleMeta["heartbeats"] as? Int)
        XCTAssertGreaterThan(heartbeats, 0)
        XCTAssertEqual(fileSize(idle), 1 + 9 * heartbeats)

        // --until-ts: the updates up to that timestamp, none after.
        let cutTs = try XCTUnwrap((shown.lines[24]["position"] as? NSNumber)?.uint64Value)
        let upTo = tmp.appendingPathComponent("until.bin")
        let until = try recorder(kt, upTo, ["--from", "0", "--until-ts", "\(cutTs)"])
        XCTAssertEqual(until.exitStatus(within: .seconds(15)), 0, until.log)
        XCTAssertEqual(try readMeta(upTo)["stopped_by"] as? String, "until")
        XCTAssertEqual(try feedShow(upTo).lines.count, 10 + 25)
    }

    func testSIGKILLedRecorderReplaysEveryCompleteFrameThenNamesTheOffset() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let out = tmp.appendingPathComponent("killed.bin")
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            Self.workload(kt, 0..<300, valueBytes: 20_000)
            finished.signal()
        }
        let rec = try recorder(kt, out, ["--from", "0"])
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { fileSize(out) > 1 << 20 }, rec.log)
        kill(rec.pid, SIGKILL)
        XCTAssertNotNil(rec.exitStatus(within: .seconds(10)))
        XCTAssertEqual(finished.wait(timeout: .now() + 60), .success)
        XCTAssertEqual(try readMeta(out)["complete"] as? Bool, false, "a killed recorder never completed its sidecar")

        // The file as the killed recorder left it: whole frames, or cut inside the last one.
        var shown = try feedShow(out)
        var cut = out
        if shown.status == 0 {
            // Ended at a frame boundary: cut it inside its last update frame, as a kill in
            // the middle of a write would.
            let lastOffset = try XCTUnwrap(shown.lines.last?["offset"] as? Int)
            cut = tmp.appendingPathComponent("cut.bin")
            let bytes = try Data(contentsOf: out)
            try bytes.prefix(lastOffset + 7).write(to: cut)
            shown = try feedShow(cut)
        } else {
            print("the killed recorder left \(out.lastPathComponent) cut inside a frame")
        }
        XCTAssertEqual(shown.status, 4, shown.stderr)
        let match = try XCTUnwrap(shown.stderr.range(of: #"is cut short at byte offset (\d+):"#, options: .regularExpression))
        let offset = try XCTUnwrap(Int(shown.stderr[match].dropLast().split(separator: " ").last ?? ""))
        XCTAssertGreaterThan(shown.lines.count, 0)
        let lastWhole = try XCTUnwrap(shown.lines.last)
        XCTAssertLessThan(try XCTUnwrap(lastWhole["offset"] as? Int), offset)

        // The bridge replays every complete frame, then stops naming the same offset.
        let r = try await replay(cut)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("is cut short at byte offset \(offset):"), r.stderr)
        XCTAssertEqual(r.state, applied(shown.lines, prefixes: [0: "", 1: "aux/"]))
        XCTAssertEqual(r.checkpoint, (lastWhole["position"] as? NSNumber)?.uint64Value)
    }

    func testASidEqualToTheServersIsRefused() throws {
        let kt = try FakeKTProcess(logDir: tmp, sid: 7)
        for i in 0..<300 { kt.set("k\(i)", "v") }
        let out = tmp.appendingPathComponent("clash.bin")
        let rec = try DaemonProcess("qsctl", ["record", "--source", "kt://\(kt.address)", "--out", out.path, "--sid", "7", "--from", "0"], logDir: tmp)
        XCTAssertEqual(rec.exitStatus(within: .seconds(30)), 3, rec.log)
        XCTAssertTrue(rec.log.contains("--sid 7"), rec.log)
        let meta = try readMeta(out)
        XCTAssertEqual(meta["complete"] as? Bool, false)
        XCTAssertEqual(meta["stopped_by"] as? String, "error")
        XCTAssertEqual(meta["updates"] as? Int, 0, "KT sent none of the server's own updates")
    }

    func testAnUnreachableSourceIsAnErrorNotAnEndlessRetry() throws {
        let refusing = try RefusingPort()
        defer { refusing.close() }
        for source in ["kt://\(refusing.address)", "qs://\(refusing.address)"] {
            let out = tmp.appendingPathComponent("none-\(source.prefix(2)).bin")
            let rec = try DaemonProcess("qsctl", ["record", "--source", source, "--out", out.path], logDir: tmp)
            XCTAssertEqual(rec.exitStatus(within: .seconds(20)), 3, rec.log)
            XCTAssertTrue(rec.log.contains(refusing.address), rec.log)
        }
    }

    /// The update frames of a replication stream (acceptance byte first), heartbeats left out.
    static func updateFrames(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var out = [ArraySlice<UInt8>]()
        var i = 1
        while i < bytes.count {
            if bytes[i] == 0xB0 {
                i += 9
                continue
            }
            guard bytes[i] == 0xB1, i + 13 <= bytes.count else { break }
            let size = bytes[(i + 9)..<(i + 13)].reduce(0) { $0 << 8 | Int($1) }
            out.append(bytes[i..<min(bytes.count, i + 13 + size)])
            i += 13 + size
        }
        return out
    }

    func testRecordingOfARealKTsUpdateLogIsByteIdenticalToTheFixture() throws {
        let fx = try KTFixture("basic")
        let ulog = tmp.appendingPathComponent("ulog")
        try FileManager.default.copyItem(at: fx.ulog, to: ulog)
        let kt = try FakeKTProcess(logDir: tmp, ulog: ulog)
        let out = tmp.appendingPathComponent("again.bin")
        let rec = try recorder(kt, out, ["--from", "0", "--count", "903"])
        XCTAssertEqual(rec.exitStatus(), 0, rec.log)
        let recorded = Self.updateFrames([UInt8](try Data(contentsOf: out)))
        let fixture = Self.updateFrames([UInt8](try Data(contentsOf: fx.stream)))
        XCTAssertEqual(recorded.count, 903)
        XCTAssertTrue(recorded.elementsEqual(fixture), "the recorded update frames are the fixture's, byte for byte")
        XCTAssertEqual([UInt8](try Data(contentsOf: out)).first, 0xB1)
    }
}
