import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// The recorded real-KT feeds replayed through `qsktbridge` into fresh roots.
final class ReplayTests: XCTestCase {
    /// The roots compare their keyspace with a capture at its recorded instant: no expiry
    /// purge, which would (rightly) delete records expired since.
    static let noPurge = ["--expiry-purge-batch", "0"]

    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("replay")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func replay(_ fixture: String, source: (KTFixture) -> String, dbMap: String, prefixes: [Int: String], extra: [String] = []) async throws {
        let fx = try KTFixture(fixture)
        let node = try RootNode(data: tmp.appendingPathComponent("root-\(UUID().uuidString.prefix(4))"), logDir: tmp, extraArgs: Self.noPurge)
        let r = try Harness.run("qsktbridge", ["--root", node.address, "--source", source(fx), "--db-map", dbMap, "--once",
                                               "--source-id", "replay", "--log-format", "text"] + extra)
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let got = try await dumpState(client, at: fx.recordedAt)
        let want = try fx.expectedState(prefixes: prefixes)
        XCTAssertEqual(got.count, want.count)
        for (key, record) in want where got[key] != record {
            XCTFail("\(fixture): key \(String(decoding: key, as: UTF8.self)) expected \(record), got \(String(describing: got[key]))")
            break
        }
        XCTAssertEqual(Set(got.keys), Set(want.keys))
        // The checkpoint is the last timestamp in the feed, and the log is sound.
        let cp = try await client.checkpoint(sourceID: "replay")
        XCTAssertNotNil(cp)
        let positions = try await verifyLog(client, sourceID: "replay")
        XCTAssertFalse(positions.isEmpty)
        await client.close()
    }

    func testBasicCaptureReplaysToFinalState() async throws {
        try await replay("basic", source: { "capture:\($0.stream.path)" }, dbMap: "0=,1=aux/", prefixes: [0: "", 1: "aux/"])
    }

    func testBasicULogReplaysToFinalState() async throws {
        try await replay("basic", source: { "ulog:\($0.ulog.path)" }, dbMap: "0=,1=aux/", prefixes: [0: "", 1: "aux/"])
    }

    func testMediumCaptureWithClearsReplaysToFinalState() async throws {
        try await replay("medium", source: { "capture:\($0.stream.path)" }, dbMap: "0=main/,1=aux/", prefixes: [0: "main/", 1: "aux/"],
                         extra: ["--allow-clear", "--batch-max-ops", "500"])
    }

    func testMediumULogWithClearsReplaysToFinalState() async throws {
        try await replay("medium", source: { "ulog:\($0.ulog.path)" }, dbMap: "0=main/,1=aux/", prefixes: [0: "main/", 1: "aux/"],
                         extra: ["--allow-clear"])
    }

    func testClearWithoutPermissionStopsTheBridgeAndAppliesWhatCameBefore() async throws {
        let fx = try KTFixture("medium")
        let node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: Self.noPurge)
        let r = try Harness.run("qsktbridge", ["--root", node.address, "--source", "capture:\(fx.stream.path)",
                                               "--db-map", "0=main/,1=aux/", "--source-id", "s", "--log-format", "text"])
        XCTAssertNotEqual(r.status, 0)
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertTrue(err.contains("--allow-clear"), err)
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let cp = try await client.checkpoint(sourceID: "s") ?? 0
        XCTAssertGreaterThan(cp, 0, "changes before the clear were applied")
        // Running again stops at the same clear: nothing skipped, nothing applied twice.
        let again = try Harness.run("qsktbridge", ["--root", node.address, "--source", "capture:\(fx.stream.path)",
                                                   "--db-map", "0=main/,1=aux/", "--source-id", "s"])
        XCTAssertNotEqual(again.status, 0)
        let cp2 = try await client.checkpoint(sourceID: "s")
        XCTAssertEqual(cp2, cp)
        await client.close()
    }

    func testUnmappedDatabaseStopsOrIsCounted() async throws {
        let fx = try KTFixture("basic")
        let node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: Self.noPurge)
        let stop = try Harness.run("qsktbridge", ["--root", node.address, "--source", "capture:\(fx.stream.path)", "--source-id", "a"])
        XCTAssertNotEqual(stop.status, 0)
        XCTAssertTrue(String(decoding: stop.stderr, as: UTF8.self).contains("database 1, which --db-map does not map"))
        let count = try Harness.run("qsktbridge", ["--root", node.address, "--source", "capture:\(fx.stream.path)", "--source-id", "b",
                                                   "--on-unmapped", "count"])
        XCTAssertEqual(count.status, 0, String(decoding: count.stderr, as: UTF8.self))
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let got = try await dumpState(client, at: fx.recordedAt)
        XCTAssertEqual(got, try fx.expectedState(prefixes: [0: ""]))
        await client.close()
    }

    func testCutAndCorruptCapturesApplyEveryCompleteFrameThenNameTheOffset() async throws {
        let fx = try KTFixture("basic")
        let bytes = try Data(contentsOf: fx.stream)
        let cut = tmp.appendingPathComponent("cut.bin")
        try bytes.prefix(bytes.count / 2).write(to: cut)
        let node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: Self.noPurge)
        let r = try Harness.run("qsktbridge", ["--root", node.address, "--source", "capture:\(cut.path)", "--db-map", "0=,1=aux/", "--source-id", "cut"])
        XCTAssertNotEqual(r.status, 0)
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertTrue(err.contains("is cut short at byte offset"), err)
        // Every complete frame was applied: the checkpoint is the last whole update's timestamp.
        let lastTS = lastCompleteUpdate(in: [UInt8](bytes.prefix(bytes.count / 2)))
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let cp = try await client.checkpoint(sourceID: "cut")
        XCTAssertEqual(cp, lastTS)

        var corrupt = [UInt8](bytes)
        let at = 1 + 13 + Int(UInt32(corrupt[10]) << 24 | UInt32(corrupt[11]) << 16 | UInt32(corrupt[12]) << 8 | UInt32(corrupt[13]))
        corrupt[at] = 0x42  // the second frame's magic
        let bad = tmp.appendingPathComponent("bad.bin")
        try Data(corrupt).write(to: bad)
        let r2 = try Harness.run("qsktbridge", ["--root", node.address, "--source", "capture:\(bad.path)", "--db-map", "0=,1=aux/", "--source-id", "bad"])
        XCTAssertNotEqual(r2.status, 0)
        XCTAssertTrue(String(decoding: r2.stderr, as: UTF8.self).contains("damaged at byte offset \(at)"), String(decoding: r2.stderr, as: UTF8.self))
        let cp2 = try await client.checkpoint(sourceID: "bad")
        XCTAssertEqual(cp2, UInt64(bigEndian: corrupt[2..<10].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }), "only the frame before the damage")
        await client.close()
    }

    /// Timestamp of the last complete update frame in a (possibly cut) stream.
    func lastCompleteUpdate(in b: [UInt8]) -> UInt64? {
        var pos = 1, last: UInt64?
        while pos < b.count {
            if b[pos] == 0xB0 {
                guard pos + 9 <= b.count else { break }
                pos += 9
                continue
            }
            guard pos + 13 <= b.count else { break }
            var ts: UInt64 = 0
            for i in 1...8 { ts = ts << 8 | UInt64(b[pos + i]) }
            var size = 0
            for i in 9...12 { size = size << 8 | Int(b[pos + i]) }
            guard pos + 13 + size <= b.count else { break }
            last = ts
            pos += 13 + size
        }
        return last
    }
}
