import FakeKT
import Foundation
import KTFormats
import XCTest

/// Started on an existing ulog directory, the fake rebuilds its databases from it, serves
/// replication from it and carries on logging after it.
final class RestartTests: XCTestCase {
    func testStateRebuiltFromFixtureULogMatchesFinalState() async throws {
        for set in ["basic", "medium"] {
            let recordedAt = try Self.recordedAt(set)
            let harness = try await ServerHarness.start(
                seedULog: ServerHarness.fixtures.appendingPathComponent("\(set)/ulog").path,
                timeSource: { Double(recordedAt) })
            let expected = try Self.finalState(set)
            var live = 0
            for db in 0...1 {
                let reply = WorkloadReplayTests.parseReply(try harness.rpc("match_prefix", [("prefix", [])], db: db))
                live += Int(String(decoding: reply["num"] ?? [], as: UTF8.self)) ?? -1
            }
            XCTAssertEqual(live, expected.count, set)
            for (entry, value) in expected.prefix(set == "basic" ? expected.count : 300) {
                let reply = try harness.rpc("get", [("key", entry.key)], db: entry.db)
                let params = WorkloadReplayTests.parseReply(reply)
                XCTAssertTrue(reply.status == 200 && params["value"] == value.value, "\(set) db \(entry.db) key \(entry.key)")
                let xt = params["xt"].map { KTExpiration.parseInteger($0) } ?? KTExpiration.never
                XCTAssertEqual(xt, value.xt, set)
            }
            try await harness.stop()
        }
    }

    func testRestartContinuesTheLogAfterItsNewestTimestamp() async throws {
        let first = try await ServerHarness.start()
        XCTAssertEqual(try first.rpc("set", [("key", [1]), ("value", [1])]).status, 200)
        XCTAssertEqual(try first.rpc("set", [("key", [2]), ("value", [2])]).status, 200)
        first.server.flushUpdateLog()
        let before = try WorkloadReplayTests.ulogRecords(first.ulogDirectory)
        let second = try await ServerHarness.start(seedULog: first.ulogDirectory)
        try await first.stop()
        addTeardownBlock { try await second.stop() }
        XCTAssertEqual(WorkloadReplayTests.parseReply(try second.rpc("get", [("key", [2])]))["value"], [2])
        XCTAssertEqual(try second.rpc("remove", [("key", [1])]).status, 200)
        second.server.flushUpdateLog()
        let after = try WorkloadReplayTests.ulogRecords(second.ulogDirectory)
        XCTAssertEqual(Array(after.prefix(2)), before)
        XCTAssertEqual(after.count, 3)
        XCTAssertGreaterThan(after[2].timestamp, after[1].timestamp)
        XCTAssertEqual(try after[2].decodedMessage(), KTUpdateMessage(sid: 7, db: 0, operation: .remove(key: [1])))
    }

    func testULogRotationListAndRemove() async throws {
        let harness = try await ServerHarness.start(ulim: 200)
        addTeardownBlock { try await harness.stop() }
        for i in 0..<20 {
            XCTAssertEqual(try harness.rpc("set", [("key", Array("key-\(i)".utf8)), ("value", [UInt8](repeating: 0x41, count: 40))]).status, 200)
        }
        let listed = WorkloadReplayTests.parseReply(try harness.rpc("ulog_list", []))
        XCTAssertGreaterThanOrEqual(listed.count, 4)
        for (path, sizeTS) in listed {
            let parts = String(decoding: sizeTS, as: UTF8.self).split(separator: ":")
            let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)
            XCTAssertEqual(parts.first.flatMap { Int($0) }, size.intValue, path)
        }
        XCTAssertEqual(try harness.rpc("ulog_remove", [("ts", Array("now".utf8))]).status, 200)
        let names = try FileManager.default.contentsOfDirectory(atPath: harness.ulogDirectory)
        XCTAssertEqual(names, [try XCTUnwrap(listed.keys.sorted().last).split(separator: "/").last.map(String.init) ?? ""])
    }

    static func recordedAt(_ set: String) throws -> Int64 {
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: ServerHarness.fixtures.appendingPathComponent("\(set)/meta.json"))) as? [String: Any])
        return try XCTUnwrap((meta["recorded_at"] as? NSNumber)?.int64Value)
    }

    static func finalState(_ set: String) throws -> [(key: WorkloadReplayTests.Entry, value: (value: [UInt8], xt: Int64))] {
        try WorkloadReplayTests.finalState(set).sorted { $0.key.db != $1.key.db ? $0.key.db < $1.key.db : $0.key.key.lexicographicallyPrecedes($1.key.key) }
    }
}
