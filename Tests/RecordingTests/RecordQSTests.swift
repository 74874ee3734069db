import Foundation
import NIOConcurrencyHelpers
import QSClient
import QSCaptures
import QSModel
import QSStore
import QSTesting
import XCTest

/// `qsctl record --source qs://…` against a real root node, read back with `QSCaptureReader`.
final class RecordQSTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("record-qs")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    static func readAll(_ path: URL) throws -> (entries: [StoredEntry], heartbeats: Int, reader: QSCaptureReader) {
        var reader = try QSCaptureReader(path: path.path)
        var entries = [StoredEntry](), heartbeats = 0
        while let (_, event) = try reader.next() {
            switch event {
            case let .entries(list): entries += list
            case .heartbeat: heartbeats += 1
            }
        }
        return (entries, heartbeats, reader)
    }

    func testRecordsARootsLogFeedEntryForEntry() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        for i in 0..<5 { _ = try await c.write([.set(key: Array("k\(i)".utf8), value: Array("v\(i)".utf8), expiry: nil)], sourceID: "w") }
        let out = tmp.appendingPathComponent("qs.cap")
        let rec = try DaemonProcess("qsctl", ["record", "--source", "qs://\(root.address)", "--out", out.path, "--count", "10"], logDir: tmp)
        // Written while the recorder runs: a delete, a clear, sets with expiry.
        _ = try await c.write([.delete(key: Array("k0".utf8))], sourceID: "w")
        _ = try await c.write([.clearPrefix(Array("k1".utf8))], sourceID: "w")
        for i in 0..<3 { _ = try await c.write([.set(key: Array("x\(i)".utf8), value: [0, 0xFF, UInt8(i)], expiry: 4_102_444_800)], sourceID: "other") }
        XCTAssertEqual(rec.exitStatus(within: .seconds(30)), 0, rec.log)

        let log = try await c.entries(from: 1, count: 100)
        XCTAssertEqual(log.count, 10)
        let (entries, _, reader) = try Self.readAll(out)
        XCTAssertEqual(entries, log, "the capture holds the root's entries byte for byte, hashes included")
        XCTAssertEqual(reader.fromIndex, 0)
        XCTAssertEqual(reader.lastIndex, 10)
        let head = try await c.head()
        XCTAssertEqual(reader.lastHash, head.hash)

        let meta = try readMeta(out)
        XCTAssertEqual(meta["format"] as? String, "qs-log")
        XCTAssertEqual(meta["updates"] as? Int, 10)
        XCTAssertEqual(meta["first_ts"] as? Int, 1)
        XCTAssertEqual(meta["last_ts"] as? Int, 10)
        XCTAssertEqual(meta["databases"] as? [String: Int], ["w": 7, "other": 3])
        XCTAssertEqual(meta["stopped_by"] as? String, "count")

        let shown = try feedShow(out)
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertEqual(shown.lines.map { $0["position"] as? Int }, (1...10).map { Optional($0) })
        XCTAssertEqual(shown.lines.map { $0["op"] as? String }, ["set", "set", "set", "set", "set", "delete", "clear", "set", "set", "set"])
        XCTAssertEqual(shown.lines[9]["origin"] as? String, "other")
        XCTAssertEqual(shown.lines[9]["xt"] as? Int, 4_102_444_800)
        XCTAssertEqual(b64decode(shown.lines[9]["value"]), [0, 0xFF, 2])

        // --from N starts after entry N, with the hash at N.
        let tail = tmp.appendingPathComponent("tail.cap")
        let rec2 = try DaemonProcess("qsctl", ["record", "--source", "qs://\(root.address)", "--out", tail.path, "--from", "7", "--count", "3"], logDir: tmp)
        XCTAssertEqual(rec2.exitStatus(within: .seconds(30)), 0, rec2.log)
        let t = try Self.readAll(tail)
        XCTAssertEqual(t.entries, Array(log[7...]))
        XCTAssertEqual(t.reader.fromIndex, 7)
        XCTAssertEqual(t.reader.fromHash, log[6].hash)
        await c.close()
    }

    func testDamagedQSCaptureNamesTheOffsetAndReturnsNothingOfTheBadFrame() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        for i in 0..<4 { _ = try await c.write([.set(key: Array("k\(i)".utf8), value: Array(repeating: UInt8(i), count: 100), expiry: nil)], sourceID: "w") }
        await c.close()
        let out = tmp.appendingPathComponent("qs.cap")
        let rec = try DaemonProcess("qsctl", ["record", "--source", "qs://\(root.address)", "--out", out.path, "--count", "4"], logDir: tmp)
        XCTAssertEqual(rec.exitStatus(within: .seconds(30)), 0, rec.log)
        let bytes = try Data(contentsOf: out)
        let shown = try feedShow(out)
        let lastOffset = try XCTUnwrap(shown.lines.last?["offset"] as? Int)

        // Cut inside the last frame.
        let cut = tmp.appendingPathComponent("cut.cap")
        try bytes.prefix(bytes.count - 3).write(to: cut)
        var reader = try QSCaptureReader(path: cut.path)
        var seen = [StoredEntry]()
        XCTAssertThrowsError(try { while let (_, e) = try reader.next() { if case let .entries(l) = e { seen += l } } }()) { error in
            XCTAssertEqual((error as? CaptureDamage)?.truncated, true)
            XCTAssertEqual((error as? CaptureDamage)?.offset, lastOffset)
        }
        XCTAssertEqual(seen.count, shown.lines.filter { ($0["offset"] as? Int ?? 0) < lastOffset }.count, "every whole frame before the cut")
        let cutShown = try feedShow(cut)
        XCTAssertEqual(cutShown.status, 4)
        XCTAssertTrue(cutShown.stderr.contains("is cut short at byte offset \(lastOffset): input ends inside a frame"), cutShown.stderr)

        // A flipped byte inside the last entry's value: the chain does not continue.
        var corrupt = bytes
        corrupt[bytes.count - 10] ^= 0xFF
        let bad = tmp.appendingPathComponent("bad.cap")
        try corrupt.write(to: bad)
        let badShown = try feedShow(bad)
        XCTAssertEqual(badShown.status, 4)
        XCTAssertTrue(badShown.stderr.contains("damaged at byte offset \(lastOffset)"), badShown.stderr)
        XCTAssertTrue(badShown.stderr.contains("chained hash"), badShown.stderr)
        XCTAssertEqual(badShown.lines.count, shown.lines.filter { ($0["offset"] as? Int ?? 0) < lastOffset }.count, "nothing of the bad frame is shown")
    }
}

extension RecordQSTests {
    func testCaptureEntriesResumeAfterAnIndexAndRefuseAGap() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        for i in 0..<6 { _ = try await c.write([.set(key: Array("k\(i)".utf8), value: [UInt8(i)], expiry: nil)], sourceID: "w") }
        let log = try await c.entries(from: 1, count: 100)
        await c.close()
        let out = tmp.appendingPathComponent("qs.cap")
        let rec = try DaemonProcess("qsctl", ["record", "--source", "qs://\(root.address)", "--out", out.path, "--from", "2", "--count", "4"], logDir: tmp)
        XCTAssertEqual(rec.exitStatus(within: .seconds(30)), 0, rec.log)

        let source = QSCaptureEntries(path: out.path)
        let got = NIOLockedValueBox<[StoredEntry]>([])
        try await source.run(after: 4) { event in
            if case let .entries(list) = event { got.withLockedValue { $0 += list } }
        }
        XCTAssertEqual(got.withLockedValue { $0 }, Array(log[4...]))
        do {
            try await source.run(after: 1) { _ in }
            XCTFail("a recording from index 2 cannot continue a log at 1")
        } catch let gap as QSCaptureEntries.Gap {
            XCTAssertEqual(gap.recordingStartsAfter, 2)
        }
    }
}
