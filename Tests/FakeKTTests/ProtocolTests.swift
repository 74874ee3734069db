import FakeKT
import Foundation
import KTFormats
import NIOCore
import XCTest

final class ProtocolTests: XCTestCase {
    func testBinaryBulkOperations() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        let s = try TestSocket(port: harness.port)
        let records = [KTBinaryRecord(db: 0, key: [0, 0xFF], value: [9, 10], expiration: Int64.max),
                       KTBinaryRecord(db: 1, key: Array("b".utf8), value: Array("two".utf8), expiration: 600)]
        try s.send(KTBinaryRequest.setBulk(flags: 0, records: records).encoded())
        XCTAssertEqual(try s.read(5), KTBinaryResponse.setBulk(hits: 2).encoded())
        // No reply asked: the next reply is get_bulk's.
        try s.send(KTBinaryRequest.setBulk(flags: KTBinaryMagic.noReplyFlag, records: [KTBinaryRecord(db: 0, key: [7], value: [], expiration: Int64.max)]).encoded())
        try s.send(KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: [0, 0xFF]), KTBinaryKey(db: 1, key: Array("b".utf8)), KTBinaryKey(db: 0, key: [8])]).encoded())
        var buffer = ByteBuffer()
        var reply: KTBinaryResponse?
        while reply == nil {
            buffer.writeBytes(try s.read(1))
            var copy = buffer
            reply = try KTBinaryResponseDecoder.next(&copy)
        }
        guard case .getBulk(let got) = reply else { return XCTFail("expected get_bulk") }
        XCTAssertEqual(got.count, 2)
        XCTAssertEqual(got[0], KTBinaryRecord(db: 0, key: [0, 0xFF], value: [9, 10], expiration: KTExpiration.never))
        XCTAssertEqual(got[1].value, Array("two".utf8))
        XCTAssertLessThanOrEqual(abs(got[1].expiration - Int64(Date().timeIntervalSince1970) - 600), 2)
        try s.send(KTBinaryRequest.removeBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: [7]), KTBinaryKey(db: 0, key: [8])]).encoded())
        XCTAssertEqual(try s.read(5), KTBinaryResponse.removeBulk(hits: 1).encoded())
        try s.send(KTBinaryRequest.playScript(flags: 0, name: Array("f".utf8), arguments: []).encoded())
        XCTAssertEqual(try s.read(1), [KTBinaryMagic.error])
    }

    func testMalformedBinaryRequestIsAnsweredAndServerLives() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        let s = try TestSocket(port: harness.port)
        // An unknown command: KT hangs up without a word.
        try s.send([0xB7, 1, 2, 3, 4, 5])
        XCTAssertEqual(try s.readToEnd(), [])
        // A known command with an impossible size: 0xBF, then the connection ends.
        let t = try TestSocket(port: harness.port)
        try t.send([0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertEqual(try t.readToEnd(), [KTBinaryMagic.error])
        let h = try TestSocket(port: harness.port)
        try h.send(Array("GARBAGE\r\n\r\n".utf8))
        XCTAssertEqual(try h.readHTTPResponse().status, 400)
        XCTAssertEqual(try harness.http("POST", "/rpc/void").status, 200)
    }

    func testCursorsWalkTheTreeDatabase() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        for k in ["a", "b", "c"] {
            XCTAssertEqual(try harness.rpc("set", [("key", Array(k.utf8)), ("value", Array("v\(k)".utf8))], db: 1).status, 200)
        }
        // One connection keeps the cursor.
        let s = try TestSocket(port: harness.port)
        func call(_ name: String, _ params: String) throws -> (Int, String) {
            let body = Array(params.utf8)
            try s.send(Array("POST /rpc/\(name) HTTP/1.1\r\nHost: x\r\nContent-Type: text/tab-separated-values\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
            let r = try s.readHTTPResponse()
            return (r.status, String(decoding: r.body, as: UTF8.self))
        }
        XCTAssertEqual(try call("cur_jump", "CUR\t1\nDB\t1\nkey\tb\n").0, 200)
        XCTAssertEqual(try call("cur_get", "CUR\t1\nstep\t\n").1, "key\tb\nvalue\tvb\n")
        XCTAssertEqual(try call("cur_get_key", "CUR\t1\n").1, "key\tc\n")
        XCTAssertEqual(try call("cur_step_back", "CUR\t1\n").0, 200)
        // After a backward move a B+ tree's cursor (.kct) keeps going backwards: the record
        // removed under it leaves it on the previous one, and `step` reads backwards too
        // (Kyoto Cabinet's PlantDB cursor; ktserver's answers in Fixtures/kt/compare).
        XCTAssertEqual(try call("cur_seize", "CUR\t1\n").1, "key\tb\nvalue\tvb\n")
        XCTAssertEqual(try call("cur_get_value", "CUR\t1\n").1, "value\tva\n")
        XCTAssertEqual(try call("cur_set_value", "CUR\t1\nvalue\tva2\nstep\t\n").0, 200)
        XCTAssertEqual(try call("cur_get", "CUR\t1\n").1, "ERROR\tDB: 7: no record: no record\n", "stepped back past the first record")
        XCTAssertEqual(try call("cur_jump", "CUR\t1\n").0, 200)
        XCTAssertEqual(try call("cur_get", "CUR\t1\nstep\t\n").1, "key\ta\nvalue\tva2\n")
        XCTAssertEqual(try call("cur_step", "CUR\t1\n").1, "ERROR\tDB: 7: no record: no record\n")
        XCTAssertEqual(try call("cur_jump_back", "CUR\t2\nDB\t0\n").0, 501)
        XCTAssertEqual(try call("cur_delete", "CUR\t1\n").0, 200)
        XCTAssertEqual(try call("cur_get", "").1, "ERROR\tno such cursor\n")
    }

    func testIdleConnectionsCloseAfterTimeoutButReplicationStays() async throws {
        let harness = try await ServerHarness.start(timeout: 0.2)
        addTeardownBlock { try await harness.stop() }
        let idle = try TestSocket(port: harness.port, timeout: 3)
        let start = Date()
        XCTAssertEqual(try idle.readToEnd(), [])
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.15)
        // A replication client that never answers stays connected past the timeout.
        var plan = FaultPlan()
        plan.stopHeartbeats = true
        harness.server.setFaults(plan)
        let repl = try TestSocket(port: harness.port, timeout: 0.6)
        try repl.send(ReplicationRequest(timestamp: 0, sid: 99).encoded())
        XCTAssertEqual(try repl.read(1), [KTBinaryMagic.replication])
        XCTAssertThrowsError(try repl.read(1)) { error in
            guard case TestSocketError.timeout = error else { return XCTFail("expected an open, silent connection, got \(error)") }
        }
    }

    func testDatabasesByNameAndRESTPrefix() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        XCTAssertEqual(try harness.http("PUT", "/aux.kct/k1", body: [1, 2]).status, 201)
        XCTAssertEqual(try harness.http("GET", "/1/k1").body, [1, 2])
        let r = try harness.http("POST", "/rpc/get?DB=aux.kct&key=k1")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.headers["content-type"], "text/tab-separated-values; colenc=U")
        XCTAssertEqual(try harness.http("GET", "/nosuch/k1").status, 400)
        XCTAssertEqual(try harness.rpc("get", [("key", [1])], db: 5).body, Array("ERROR\tno such database\n".utf8))
    }
}
