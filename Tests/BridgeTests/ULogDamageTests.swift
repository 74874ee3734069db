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
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
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

    /// A bridge following a ulog directory (no --once), its batches 50 ms apart.
    func following(_ dir: URL, id: String) throws -> DaemonProcess {
        try DaemonProcess("qsktbridge", ["--root", node.address, "--source", "ulog:\(dir.path)", "--db-map", "0=main/,1=aux/", "--allow-clear",
                                         "--source-id", id, "--batch-interval", "50ms", "--log-format", "text"], logDir: tmp)
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

    /// The frames of a capture: kind (0xB1 update, 0xB0 heartbeat), byte offset, timestamp.
    func frames(_ stream: [UInt8]) -> [(magic: UInt8, offset: Int, ts: UInt64)] {
        var out = [(magic: UInt8, offset: Int, ts: UInt64)](), pos = 1
        while pos + 9 <= stream.count {
            var ts: UInt64 = 0
            for i in 1...8 { ts = ts << 8 | UInt64(stream[pos + i]) }
            out.append((stream[pos], pos, ts))
            if stream[pos] == 0xB0 { pos += 9; continue }
            var size = 0
            for i in 9...12 { size = size << 8 | Int(stream[pos + i]) }
            pos += 13 + size
        }
        return out
    }

    func stamp(_ bytes: inout [UInt8], at offset: Int, _ ts: UInt64) {
        for i in 0..<8 { bytes[offset + 1 + i] = UInt8(truncatingIfNeeded: ts >> (56 - 8 * UInt64(i))) }
    }

    /// A capture update damaged upward by a little (no day-ahead bound catches it) is held
    /// until the frame after it vouches for it: the next update, stamped before it, or the
    /// heartbeat after it, stamped before it, stops the bridge before the damaged update.
    func testACaptureUpdateDamagedUpwardALittleStopsBeforeIt() async throws {
        let stream = [UInt8](try Data(contentsOf: try KTFixture("medium").stream))
        let all = frames(stream)
        // An update followed by another: bumped past the next one's timestamp.
        let u = try XCTUnwrap(all.indices.first { $0 > 400 && all[$0].magic == 0xB1 && all[$0 + 1].magic == 0xB1 && all[$0 - 1].magic == 0xB1 })
        var bumped = stream
        stamp(&bumped, at: all[u].offset, all[u + 1].ts + 1000)
        let first = tmp.appendingPathComponent("bumped.bin")
        try Data(bumped).write(to: first)
        let r = try bridge("capture:\(first.path)", id: "b1")
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("the update at byte offset \(all[u + 1].offset) (or the one before it, at byte offset \(all[u].offset))")
                      && r.err.contains("Every update before the one at byte offset \(all[u].offset) was applied"), r.err)
        let cp = try await checkpoint("b1")
        XCTAssertEqual(cp, all[u - 1].ts, "the damaged update never applied")

        // An update followed by a heartbeat (not the recording's last; the basic fixture has
        // one such): bumped 5 s past the heartbeat (KT stamps one at most 1 s below the last
        // update, on a recorder's new connection).
        let basic = [UInt8](try Data(contentsOf: try KTFixture("basic").stream))
        let hb = frames(basic)
        let h = try XCTUnwrap(hb.indices.first { $0 > 0 && hb[$0].magic == 0xB1 && hb[$0 - 1].magic == 0xB1 && hb[$0 + 1].magic == 0xB0
            && hb[($0 + 1)...].contains { $0.magic == 0xB1 } })
        bumped = basic
        stamp(&bumped, at: hb[h].offset, hb[h + 1].ts + 5_000_000_000)
        let second = tmp.appendingPathComponent("bumped2.bin")
        try Data(bumped).write(to: second)
        let r2 = try bridge("capture:\(second.path)", id: "b2")
        XCTAssertEqual(r2.status, 1, r2.err)
        XCTAssertTrue(r2.err.contains("the update at byte offset \(hb[h].offset)") && r2.err.contains("s after the heartbeat that follows it"), r2.err)
        let cp2 = try await checkpoint("b2")
        XCTAssertEqual(cp2, hb[h - 1].ts, "the damaged update never applied")

        // A heartbeat a little below the update before it (a recorder's new connection): held
        // on until the next update vouches for it, not taken for damage.
        var lower = basic
        stamp(&lower, at: hb[h + 1].offset, hb[h].ts - 500_000_000)
        let third = tmp.appendingPathComponent("reconnected.bin")
        try Data(lower).write(to: third)
        let r4 = try bridge("capture:\(third.path)", id: "b4")
        XCTAssertEqual(r4.status, 0, r4.err)
        let cp4 = try await checkpoint("b4")
        XCTAssertEqual(cp4, hb.last { $0.magic == 0xB1 }?.ts)

        // Undamaged, the whole recording is applied, its last update too.
        let r3 = try bridge("capture:\(try KTFixture("medium").stream.path)", id: "b3")
        XCTAssertEqual(r3.status, 0, r3.err)
        let cp3 = try await checkpoint("b3")
        XCTAssertEqual(cp3, all.last { $0.magic == 0xB1 }?.ts)
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
        let bridge = try following(dir, id: "r")
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let first = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "r")) == recs[recs.count / 2 - 1].ts }
        XCTAssertTrue(first, bridge.log)
        let staged = dir.appendingPathComponent(".0000000001.ulog.tmp")
        try Data(whole).write(to: staged)
        XCTAssertEqual(rename(staged.path, file.path), 0)
        let all = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "r")) == recs.last?.ts }
        XCTAssertTrue(all, bridge.log)
        XCTAssertTrue(bridge.log.contains("replaced by a copy of it"), bridge.log)
        XCTAssertEqual(try bridge.stop(), 0)
        await c.close()
    }

    /// The file being read replaced under its name by a file that starts with another record
    /// (KT restarted on an emptied directory and created 0000000001.ulog again before the
    /// bridge looked): followed by timestamps, not read on from the old file's offset (which
    /// fell inside the new file's records).
    func testAFileReplacedByAnotherUnderItsNameIsFollowedByTimestamps() async throws {
        let fixture = try KTFixture("medium").ulog
        let one = [UInt8](try Data(contentsOf: fixture.appendingPathComponent("0000000001.ulog")))
        let recs = try records(fixture.appendingPathComponent("0000000001.ulog"))
        let half = recs[recs.count / 2].offset
        let dir = tmp.appendingPathComponent("restarted")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("0000000001.ulog")
        try Data(one.prefix(half)).write(to: file)
        let bridge = try following(dir, id: "n")
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let first = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "n")) == recs[recs.count / 2 - 1].ts }
        XCTAssertTrue(first, bridge.log)
        // First a file KT has not flushed to yet (empty) renamed over it: waited for, not
        // taken for a truncation of the old one.
        FileManager.default.createFile(atPath: dir.appendingPathComponent(".empty.tmp").path, contents: Data())
        XCTAssertEqual(rename(dir.appendingPathComponent(".empty.tmp").path, file.path), 0)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { bridge.log.contains("replaced by a file with no whole record yet") }, bridge.log)
        XCTAssertTrue(bridge.isRunning, bridge.log)
        // Then another file (later records, KT's second file) renamed over the one being read.
        let staged = dir.appendingPathComponent(".new.tmp")
        try FileManager.default.copyItem(at: fixture.appendingPathComponent("0000000002.ulog"), to: staged)
        XCTAssertEqual(rename(staged.path, file.path), 0)
        let newLast = try records(file).last?.ts
        let all = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "n")) == newLast }
        XCTAssertTrue(all, bridge.log)
        XCTAssertTrue(bridge.log.contains("was replaced by another file, whose first record"), bridge.log)
        XCTAssertTrue(bridge.isRunning, bridge.log)
        XCTAssertEqual(try bridge.stop(), 0)
        await c.close()
    }

    /// KT restarted after a crash between a record's write and its header's drops the bytes
    /// past the header (`ulog` open): the bridge never applied them (a record is applied once
    /// the header covers it), so it reads on from the last applied record, no stop.
    func testBytesPastTheHeaderDroppedByKTAreReadOnNotTakenForATruncation() async throws {
        let (whole, recs, k, file, bridge, c) = try await holdingPastTheHeader("crashed", id: "k")
        // KT restarts: drops what its header does not cover, then logs on.
        XCTAssertEqual(truncate(file.path, off_t(recs[k].offset)), 0)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { bridge.log.contains("shrank to what its header covers") }, bridge.log)
        let h = try FileHandle(forWritingTo: file)
        try h.seekToEnd()
        try h.write(contentsOf: Data(whole[recs[k].offset...]))
        try h.seek(toOffset: 0)
        try h.write(contentsOf: Data(header(size: whole.count, ts: recs[recs.count - 1].ts)))
        try h.close()
        let all = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "k")) == recs.last?.ts }
        XCTAssertTrue(all, bridge.log)
        XCTAssertTrue(bridge.isRunning, bridge.log)
        XCTAssertEqual(try bridge.stop(), 0)
        await c.close()
    }

    /// A ulog directory `name` holding the basic fixture's first file with records up to
    /// k+2 written and the header rewritten last after record k-1 (k: the middle record),
    /// followed by a bridge `id` that has applied through k-1 (the run holding k-1 is
    /// delivered once record k has been read and held).
    func holdingPastTheHeader(_ name: String, id: String) async throws
        -> (whole: [UInt8], recs: [(offset: Int, ts: UInt64)], k: Int, file: URL, bridge: DaemonProcess, client: QSClient) {
        let fixture = try KTFixture("basic").ulog.appendingPathComponent("0000000001.ulog")
        let whole = [UInt8](try Data(contentsOf: fixture))
        let recs = try records(fixture)
        let k = recs.count / 2
        let dir = tmp.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("0000000001.ulog")
        try Data(header(size: recs[k].offset, ts: recs[k - 1].ts) + whole[17..<recs[k + 3].offset]).write(to: file)
        let bridge = try following(dir, id: id)
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let first = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: id)) == recs[k - 1].ts }
        XCTAssertTrue(first, bridge.log)
        return (whole, recs, k, file, bridge, c)
    }

    /// A ulog file header: the file's size and the newest timestamp.
    func header(size: Int, ts: UInt64) -> [UInt8] {
        [0xA0] + (0..<8).map { UInt8(truncatingIfNeeded: UInt64(size) >> (56 - 8 * UInt64($0))) }
               + (0..<8).map { UInt8(truncatingIfNeeded: ts >> (56 - 8 * UInt64($0))) }
    }

    /// The bytes no header covered, read and held, dropped by KT and written over with other
    /// records before the bridge looked again (no shrink seen): once the header covers that
    /// place, it is read again from the file. The held record was applied from memory, and
    /// reading went on from the old offset, inside the new records ("bad magic").
    func testBytesPastTheHeaderWrittenOverAreReadAgainOnceCovered() async throws {
        let (whole, recs, k, file, bridge, c) = try await holdingPastTheHeader("overwritten", id: "o")
        // KT restarted: records k…k+4 gone, k+5…k+40 written where k was, then the header.
        let fd = open(file.path, O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let later = Array(whole[recs[k + 5].offset..<recs[k + 41].offset])
        XCTAssertEqual(later.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(recs[k].offset)) }, later.count)
        let newHeader = header(size: recs[k].offset + later.count, ts: recs[k + 40].ts)
        XCTAssertEqual(newHeader.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }, newHeader.count)
        close(fd)
        let all = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "o")) == recs[k + 40].ts }
        XCTAssertTrue(all, bridge.log)
        XCTAssertTrue(bridge.isRunning, bridge.log)
        XCTAssertEqual(try bridge.stop(), 0)
        await c.close()
    }

    /// A file truncated under the bridge (KT's logs only grow) stops it, naming the file and
    /// its sizes, instead of waiting and then failing on whatever is written there next.
    func testAFileTruncatedUnderTheBridgeStopsIt() async throws {
        let dir = try copyULog("basic")
        let bridge = try following(dir, id: "t")
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
