import FakeKT
import Foundation
import KTFormats
import NIOCore
import XCTest

/// `basic/ops.jsonl` replayed against the fake ends in `final.jsonl`'s state, and the
/// updates in its replication feed and ulog files are the recorded ones, in order.
final class WorkloadReplayTests: XCTestCase {
    func testReplayedWorkloadMatchesRecordedStateFeedAndULog() async throws {
        let harness = try await ServerHarness.start(ulim: 65536)
        addTeardownBlock { try await harness.stop() }
        let started = Date().timeIntervalSince1970

        // 1. Replay the workload; every status is the recorded one.
        let ops = String(decoding: try Data(contentsOf: ServerHarness.fixtures.appendingPathComponent("basic/ops.jsonl")), as: UTF8.self)
            .split(separator: "\n")
        XCTAssertEqual(ops.count, 400)
        for line in ops {
            let op = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let name = try XCTUnwrap(op["rpc"] as? String)
            let db = try XCTUnwrap((op["db"] as? NSNumber)?.intValue)
            let params = try XCTUnwrap(op["params"] as? [String: String]).map { k, v in
                ([UInt8](Data(base64Encoded: k) ?? Data()), [UInt8](Data(base64Encoded: v) ?? Data()))
            }
            let got = try harness.rpc(name, raw: params, db: db)
            XCTAssertEqual(got.status, (op["status"] as? NSNumber)?.intValue, "op \(op["n"] ?? "?") \(name)")
        }
        // A relative expiration was made at its op's moment, somewhere in the replay.
        let recordedAt: Int64 = 1_795_560_695
        let shift = (Int64(started) - recordedAt)...(Int64(Date().timeIntervalSince1970.rounded(.up)) - recordedAt)

        // 2. The recorded messages, from the fixture's ulog files.
        let recorded = try Self.ulogMessages(ServerHarness.fixtures.appendingPathComponent("basic/ulog").path)
        XCTAssertEqual(recorded.count, 903)

        // 3. The fake's replication feed, asked from 0 by a client with sid 99.
        let fed = try Self.replicationMessages(port: harness.port, count: recorded.count)
        Self.assertSameMessages(fed, recorded, "replication feed", shift: shift)

        // 4. The fake's ulog files, rotated at 64 KiB.
        harness.server.flushUpdateLog()
        let files = try FileManager.default.contentsOfDirectory(atPath: harness.ulogDirectory).sorted()
        XCTAssertGreaterThanOrEqual(files.count, 2)
        for name in files.dropLast() {
            let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: "\(harness.ulogDirectory)/\(name)")[.size] as? NSNumber)
            XCTAssertGreaterThanOrEqual(size.intValue, 65536, name)
        }
        let written = try Self.ulogMessages(harness.ulogDirectory)
        Self.assertSameMessages(written, recorded, "ulog files", shift: shift)

        // 5. The final state, read back over RPC, is final.jsonl (expiry at the recording).
        let expected = try Self.finalState()
        for (entry, value) in expected {
            let got = try harness.rpc("get", [("key", entry.key)], db: entry.db)
            XCTAssertEqual(got.status, 200)
            let params = Self.parseReply(got)
            XCTAssertTrue(params["value"] == value.value, "value of \(entry.key) in db \(entry.db)")
        }
        // Nothing else is live besides the one-hour records that expired at the recording.
        var live = 0
        for db in 0...1 {
            let reply = Self.parseReply(try harness.rpc("match_prefix", [("prefix", [])], db: db))
            live += Int(String(decoding: reply["num"] ?? [], as: UTF8.self)) ?? -1
        }
        let oneHour = written.filter { if case .set(_, _, let xt) = $0.operation { return xt != KTExpiration.never && xt > 1000 } else { return false } }
        XCTAssertGreaterThanOrEqual(live, expected.count)
        XCTAssertLessThanOrEqual(live, expected.count + oneHour.count)
    }

    static func parseReply(_ r: (status: Int, headers: [String: String], body: [UInt8])) -> [String: [UInt8]] {
        let kind = KTTSV.bodyKind(contentType: r.headers["content-type"] ?? "")
        guard case .tsv(let encoding) = kind else { return [:] }
        var out: [String: [UInt8]] = [:]
        for (k, v) in KTTSV.parse(r.body, encoding: encoding) { out[String(decoding: k, as: UTF8.self)] = v }
        return out
    }

    static func ulogMessages(_ dir: String) throws -> [KTUpdateMessage] {
        try ulogRecords(dir).map { try $0.decodedMessage() }
    }

    static func ulogRecords(_ dir: String) throws -> [ULogFile.Record] {
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).filter { ULogFile.fileNumber(of: $0) != nil }.sorted()
        return try names.flatMap { name in
            try ULogFile.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")))).records
        }
    }

    /// Reads `count` update messages from a replication connection, answering heartbeats.
    static func replicationMessages(port: Int, count: Int) throws -> [KTUpdateMessage] {
        let socket = try TestSocket(port: port)
        try socket.send(ReplicationRequest(timestamp: 0, sid: 99).encoded())
        XCTAssertEqual(try socket.read(1), [KTBinaryMagic.replication])
        var messages: [KTUpdateMessage] = []
        var last: UInt64 = 0
        while messages.count < count {
            let magic = try socket.read(1)[0]
            let ts = try socket.read(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            switch magic {
            case KTBinaryMagic.replication:
                let size = try socket.read(4).reduce(0) { $0 << 8 | Int($1) }
                XCTAssertGreaterThan(ts, last)
                last = ts
                messages.append(try KTUpdateMessage(decoding: try socket.read(size)))
            case KTBinaryMagic.nop:
                try socket.send([KTBinaryMagic.replication])
            default:
                XCTFail("bad magic \(magic)")
                return messages
            }
        }
        return messages
    }

    /// Same messages in the same order; expiration times of relative sets may differ by the
    /// time between the recording and the op's moment in this run (within `shift`), give or
    /// take a second.
    static func assertSameMessages(_ got: [KTUpdateMessage], _ recorded: [KTUpdateMessage], _ what: String, shift: ClosedRange<Int64>) {
        XCTAssertEqual(got.count, recorded.count, what)
        for (i, (g, r)) in zip(got, recorded).enumerated() {
            var g = g
            if case .set(let k, let v, let gxt) = g.operation, case .set(_, _, let rxt) = r.operation,
               gxt != rxt, gxt != KTExpiration.never, rxt != KTExpiration.never,
               (shift.lowerBound - 1)...(shift.upperBound + 1) ~= gxt - rxt {
                g.operation = .set(key: k, value: v, expiration: rxt)
            }
            if g != r {
                XCTFail("\(what) message \(i) differs: \(String(describing: g).prefix(300)) vs \(String(describing: r).prefix(300))")
                return
            }
        }
    }

    struct Entry: Hashable {
        var db: Int
        var key: [UInt8]
    }

    static func finalState(_ set: String = "basic") throws -> [Entry: (value: [UInt8], xt: Int64)] {
        var out: [Entry: (value: [UInt8], xt: Int64)] = [:]
        let text = String(decoding: try Data(contentsOf: ServerHarness.fixtures.appendingPathComponent("\(set)/final.jsonl")), as: UTF8.self)
        for line in text.split(separator: "\n") {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let db = try XCTUnwrap((o["db"] as? NSNumber)?.intValue)
            let key = [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(o["key"] as? String))))
            let value = [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(o["value"] as? String))))
            out[Entry(db: db, key: key)] = (value, (o["xt"] as? NSNumber)?.int64Value ?? KTExpiration.never)
        }
        return out
    }
}
