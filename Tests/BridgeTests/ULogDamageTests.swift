import Foundation
import QSClient
import QSTesting
import XCTest

/// A ulog directory or a capture that would lose records stops the bridge, naming the place,
/// instead of skipping them without a word: a timestamp out of KT's increasing order (a
/// flipped bit), a file missing between two others, a first start without KT's first file.
/// A file replaced by a rename is read on; an empty newest file is waited for.
final class ULogDamageTests: XCTestCase {
    var tmp: URL!
    var node: RootNode!

    override func setUp() async throws {
        tmp = try Harness.tempDir("ulog-damage")
        node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ReplayTests.noPurge)
    }

    override func tearDown() async throws {
        if let node { _ = try? node.daemon.stop() }
        try? FileManager.default.removeItem(at: tmp)
    }

    /// A copy of a fixture's ulog directory to damage.
    func copyULog(_ fixture: String) throws -> URL {
        let dir = tmp.appendingPathComponent("ulog-\(UUID().uuidString.prefix(6))")
        try FileManager.default.copyItem(at: try KTFixture(fixture).ulog, to: dir)
        return dir
    }

    /// The records of a ulog file: byte offset and timestamp of each.
    func records(_ file: URL) throws -> [(offset: Int, ts: UInt64)] {
        let bytes = [UInt8](try Data(contentsOf: file))
        var out = [(offset: Int, ts: UInt64)](), pos = 17
        while pos + 13 <= bytes.count {
            var ts: UInt64 = 0, size = 0
            for i in 1...8 { ts = ts << 8 | UInt64(bytes[pos + i]) }
            for i in 9...12 { size = size << 8 | Int(bytes[pos + i]) }
            out.append((pos, ts))
            pos += 14 + size
        }
        return out
    }

    func bridge(_ source: String, id: String, dbMap: String = "0=main/,1=aux/") throws -> (status: Int32, err: String) {
        let r = try Harness.run("qsktbridge", ["--root", node.address, "--source", source, "--db-map", dbMap, "--once",
                                               "--allow-clear", "--source-id", id, "--log-format", "text"])
        return (r.status, String(decoding: r.stderr, as: UTF8.self))
    }

    func checkpoint(_ id: String) async throws -> UInt64? {
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        defer { Task { await c.close() } }
        return try await c.checkpoint(sourceID: id)
    }

    func testATimestampOutOfOrderStopsBeforeTheRecordInAULogAndACapture() async throws {
        let dir = try copyULog("medium")
        let file = dir.appendingPathComponent("0000000002.ulog")
        let recs = try records(file)
        var bytes = [UInt8](try Data(contentsOf: file))
        bytes[recs[10].offset + 1] ^= 0x40  // the 11th record's timestamp, far into the future
        try Data(bytes).write(to: file)
        let r = try bridge("ulog:\(dir.path)", id: "u")
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("0000000002.ulog, the record at byte offset \(recs[10].offset)") && r.err.contains("hours ahead"), r.err)
        let cp = try await checkpoint("u")
        XCTAssertEqual(cp, recs[9].ts, "every record before the damaged one applied, the checkpoint not moved past it")
        // A timestamp equal to the one before (out of order, not in the future) stops the same way.
        for i in 0..<8 { bytes[recs[10].offset + 1 + i] = UInt8(truncatingIfNeeded: recs[9].ts >> (56 - 8 * UInt64(i))) }
        try Data(bytes).write(to: file)
        let again = try bridge("ulog:\(dir.path)", id: "u")
        XCTAssertEqual(again.status, 1, again.err)
        XCTAssertTrue(again.err.contains("is not after the record before it"), again.err)

        // A capture: the 300th update's timestamp flipped.
        let capture = tmp.appendingPathComponent("stream.bin")
        var stream = [UInt8](try Data(contentsOf: try KTFixture("medium").stream))
        var pos = 1, updates = 0, before: UInt64 = 0
        while pos < stream.count {
            let magic = stream[pos]
            if magic == 0xB0 { pos += 9; continue }
            var ts: UInt64 = 0, size = 0
            for i in 1...8 { ts = ts << 8 | UInt64(stream[pos + i]) }
            for i in 9...12 { size = size << 8 | Int(stream[pos + i]) }
            updates += 1
            if updates == 300 { break }
            before = ts
            pos += 13 + size
        }
        stream[pos + 1] ^= 0x40
        try Data(stream).write(to: capture)
        let c = try bridge("capture:\(capture.path)", id: "c")
        XCTAssertEqual(c.status, 1, c.err)
        XCTAssertTrue(c.err.contains("the update at byte offset \(pos)"), c.err)
        let ccp = try await checkpoint("c")
        XCTAssertEqual(ccp, before)
    }

    /// A timestamp damaged upward by a little (here the last record of a file, +1 µs: no
    /// later record is out of order with it) is caught by its file's header, which KT writes
    /// after the record with the newest timestamp it logged: never applied.
    func testATimestampAfterItsFilesHeaderStopsBeforeTheRecord() async throws {
        let dir = try copyULog("medium")
        let file = dir.appendingPathComponent("0000000002.ulog")
        let recs = try records(file)
        var bytes = [UInt8](try Data(contentsOf: file))
        let bumped = recs[recs.count - 1].ts + 1000
        for i in 0..<8 { bytes[recs[recs.count - 1].offset + 1 + i] = UInt8(truncatingIfNeeded: bumped >> (56 - 8 * UInt64(i))) }
        try Data(bytes).write(to: file)
        let r = try bridge("ulog:\(dir.path)", id: "h")
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("the record at byte offset \(recs[recs.count - 1].offset)") && r.err.contains("header vouches for"), r.err)
        let cp = try await checkpoint("h")
        XCTAssertEqual(cp, recs[recs.count - 2].ts)
    }

    func testAFileMissingBetweenTwoOthersStopsAtItsGap() async throws {
        let dir = try copyULog("medium")
        try FileManager.default.removeItem(at: dir.appendingPathComponent("0000000003.ulog"))
        let r = try bridge("ulog:\(dir.path)", id: "g")
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("0000000003.ulog is missing"), r.err)
        let cp = try await checkpoint("g")
        XCTAssertEqual(cp, try records(dir.appendingPathComponent("0000000002.ulog")).last?.ts)
    }

    func testAFirstStartWithoutKTsFirstFileStops() async throws {
        let dir = try copyULog("medium")
        try FileManager.default.removeItem(at: dir.appendingPathComponent("0000000001.ulog"))
        let r = try bridge("ulog:\(dir.path)", id: "f")
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("starts at 0000000002.ulog") && r.err.contains("--source kt://"), r.err)
        let cp = try await checkpoint("f")
        XCTAssertNil(cp)
    }

    func testAnEmptyNewestFileIsWaitedForNotTakenForDamage() async throws {
        let dir = try copyULog("basic")
        FileManager.default.createFile(atPath: dir.appendingPathComponent("0000000003.ulog").path, contents: Data())
        let r = try bridge("ulog:\(dir.path)", id: "e")
        XCTAssertEqual(r.status, 0, r.err)
        let cp = try await checkpoint("e")
        XCTAssertEqual(cp, try ULogLast.timestamp(try KTFixture("basic").ulog))
    }

    /// The newest file replaced by a longer copy renamed over it (rsync, cp then mv): the
    /// bridge reads on from where it was, instead of following the removed file for good.
    func testANewestFileReplacedByARenameIsReadOn() async throws {
        let fixture = try KTFixture("basic").ulog.appendingPathComponent("0000000001.ulog")
        let whole = [UInt8](try Data(contentsOf: fixture))
        let recs = try records(fixture)
        let half = recs[recs.count / 2].offset
        let dir = tmp.appendingPathComponent("follow")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("0000000001.ulog")
        try Data(whole.prefix(half)).write(to: file)
        let bridge = try DaemonProcess("qsktbridge", ["--root", node.address, "--source", "ulog:\(dir.path)", "--db-map", "0=,1=aux/",
                                                      "--source-id", "r", "--batch-interval", "50ms", "--log-format", "text"], logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let first = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "r")) == recs[recs.count / 2 - 1].ts }
        XCTAssertTrue(first, bridge.log)
        let staged = dir.appendingPathComponent(".0000000001.ulog.tmp")
        try Data(whole).write(to: staged)
        XCTAssertEqual(rename(staged.path, file.path), 0)
        let all = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "r")) == recs.last?.ts }
        XCTAssertTrue(all, bridge.log)
        XCTAssertTrue(bridge.log.contains("replaced by another one"), bridge.log)
        XCTAssertEqual(try bridge.stop(), 0)
        await c.close()
    }

    /// A file truncated under the bridge (KT's logs only grow) stops it, naming the file and
    /// its sizes, instead of waiting and then failing on whatever is written there next.
    func testAFileTruncatedUnderTheBridgeStopsIt() async throws {
        let dir = try copyULog("basic")
        let bridge = try DaemonProcess("qsktbridge", ["--root", node.address, "--source", "ulog:\(dir.path)", "--db-map", "0=main/,1=aux/",
                                                      "--source-id", "t", "--batch-interval", "50ms", "--log-format", "text"], logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let last = try ULogLast.timestamp(dir)
        let caughtUp = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "t")) == last }
        XCTAssertTrue(caughtUp, bridge.log)
        await c.close()
        let file = dir.appendingPathComponent("0000000002.ulog")
        XCTAssertEqual(truncate(file.path, off_t(try records(file)[1].offset)), 0)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { !bridge.isRunning }, bridge.log)
        XCTAssertTrue(bridge.log.contains("0000000002.ulog was truncated"), bridge.log)
        XCTAssertEqual(try bridge.stop(), 1)
    }
}
