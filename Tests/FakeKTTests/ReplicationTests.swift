import FakeKT
import Foundation
import KTFormats
import XCTest

final class ReplicationTests: XCTestCase {
    /// Reads one frame after the acceptance byte.
    static func frame(_ s: TestSocket) throws -> ReplicationFrame {
        let magic = try s.read(1)[0]
        let ts = try s.read(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        switch magic {
        case KTBinaryMagic.replication:
            let size = try s.read(4).reduce(0) { $0 << 8 | Int($1) }
            return .update(timestamp: ts, message: try s.read(size))
        case KTBinaryMagic.nop:
            return .heartbeat(timestamp: ts)
        default:
            throw TestSocketError.failed("bad magic \(magic)")
        }
    }

    static func subscribe(_ port: Int, from ts: UInt64 = 0, sid: UInt16 = 99) throws -> TestSocket {
        let s = try TestSocket(port: port)
        try s.send(ReplicationRequest(timestamp: ts, sid: sid).encoded())
        XCTAssertEqual(try s.read(1), [KTBinaryMagic.replication])
        return s
    }

    func testServesFixtureULogDirectoryLikeTheRecordedStream() async throws {
        let harness = try await ServerHarness.start(seedULog: ServerHarness.fixtures.appendingPathComponent("basic/ulog").path)
        addTeardownBlock { try await harness.stop() }
        let recorded = try ULogFixtureRecords.basic()
        let s = try Self.subscribe(harness.port)
        var got: [ULogFile.Record] = []
        while got.count < recorded.count {
            if case .update(let ts, let m) = try Self.frame(s) { got.append(ULogFile.Record(timestamp: ts, message: m)) }
        }
        XCTAssertEqual(got, recorded)
        // Then a heartbeat, never below the last timestamp sent.
        guard case .heartbeat(let hb) = try Self.frame(s) else { return XCTFail("expected a heartbeat") }
        XCTAssertGreaterThanOrEqual(hb, recorded.last?.timestamp ?? 0)

        // Resuming from a timestamp sends exactly the later updates.
        let middle = recorded[500].timestamp
        let s2 = try Self.subscribe(harness.port, from: middle)
        guard case .update(let ts, _) = try Self.frame(s2) else { return XCTFail("expected an update") }
        XCTAssertEqual(ts, recorded[501].timestamp)

        // The state was rebuilt from the log: a record from the fixture is readable.
        let reply = try harness.rpc("get", [("key", Array("zone:10/rule:107".utf8))], db: 0)
        XCTAssertTrue(reply.status == 200 || reply.status == 450)
        // New updates continue after the newest logged timestamp.
        XCTAssertEqual(try harness.rpc("set", [("key", [1]), ("value", [2])]).status, 200)
        try s.send([KTBinaryMagic.replication])
        var next = try Self.frame(s)
        while case .heartbeat = next {
            try s.send([KTBinaryMagic.replication])
            next = try Self.frame(s)
        }
        guard case .update(let newTS, let m) = next else { return XCTFail("expected the new update") }
        XCTAssertGreaterThan(newTS, recorded.last?.timestamp ?? 0)
        XCTAssertEqual(try KTUpdateMessage(decoding: m), KTUpdateMessage(sid: 7, db: 0, operation: .set(key: [1], value: [2], expiration: KTExpiration.never)))
    }

    func testHeartbeatsWhenIdleRequireAcknowledgement() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        let s = try Self.subscribe(harness.port)
        let before = UInt64(Date().timeIntervalSince1970 * 1000) * 1_000_000
        guard case .heartbeat(let ts) = try Self.frame(s) else { return XCTFail("expected a heartbeat") }
        // Stamped one second behind the clock.
        XCTAssertGreaterThanOrEqual(ts + 1_000_000_000 + 50_000_000, before)
        XCTAssertLessThanOrEqual(ts, before)
        // A wrong answer ends the session.
        try s.send([0x42])
        XCTAssertEqual(try s.readToEnd(), [])
    }

    func testOwnSidIsSkippedAndEvery256SkipsSendAnEmptyFrame() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        var pairs: [([UInt8], [UInt8])] = []
        for i in 0..<300 { pairs.append(([UInt8(ascii: "_")] + Array("k\(i)".utf8), [1])) }
        XCTAssertEqual(try harness.rpc("set_bulk", raw: pairs).status, 200)
        // The server's sid is 7: a client with sid 7 gets none of these.
        let s = try Self.subscribe(harness.port, sid: 7)
        guard case .update(_, let m) = try Self.frame(s) else { return XCTFail("expected the empty update") }
        XCTAssertEqual(m, [])
        guard case .heartbeat = try Self.frame(s) else { return XCTFail("expected a heartbeat") }
    }
}

enum ULogFixtureRecords {
    static func basic() throws -> [ULogFile.Record] {
        let dir = ServerHarness.fixtures.appendingPathComponent("basic/ulog")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        return try names.flatMap { try ULogFile.parse([UInt8](try Data(contentsOf: dir.appendingPathComponent($0)))).records }
    }
}
