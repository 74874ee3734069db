import FakeKT
import Foundation
import KTFormats
import QSBytes
import XCTest

final class FaultTests: XCTestCase {
    func seeded(_ faults: FaultPlan) async throws -> ServerHarness {
        try await ServerHarness.start(seedULog: ServerHarness.fixtures.appendingPathComponent("basic/ulog").path, faults: faults)
    }

    func testCloseAfterFrames() async throws {
        var plan = FaultPlan()
        plan.closeAfterFrames = 3
        let harness = try await seeded(plan)
        addTeardownBlock { try await harness.stop() }
        let s = try ReplicationTests.subscribe(harness.port)
        var decoder = ReplicationFrameDecoder(expectAcceptance: false)
        var buffer = ByteBufferAllocatorShim.buffer(try s.readToEnd())
        var frames = 0
        while try decoder.decode(buffer: &buffer) != nil { frames += 1 }
        XCTAssertEqual(frames, 3)
        XCTAssertEqual(buffer.readableBytes, 0)
    }

    func testCorruptFrameAndCutFrame() async throws {
        var plan = FaultPlan()
        plan.corruptFrame = 2
        plan.cutFrame = 4
        let harness = try await seeded(plan)
        addTeardownBlock { try await harness.stop() }
        let s = try ReplicationTests.subscribe(harness.port)
        let bytes = try s.readToEnd()
        var buffer = ByteBufferAllocatorShim.buffer(bytes)
        var decoder = ReplicationFrameDecoder(expectAcceptance: false)
        XCTAssertNotNil(try decoder.decode(buffer: &buffer))
        XCTAssertThrowsError(try decoder.decode(buffer: &buffer)) { error in
            XCTAssertEqual((error as? DecodeError)?.reason.hasPrefix("bad magic 0xee"), true)
        }
    }

    func testStopHeartbeatsViaAdminCall() async throws {
        let harness = try await ServerHarness.start()
        addTeardownBlock { try await harness.stop() }
        let r = try harness.http("POST", "/_fakekt/faults", headers: ["Content-Type": "application/x-www-form-urlencoded"], body: Array("stop_heartbeats=1".utf8))
        XCTAssertEqual(r.status, 200)
        XCTAssertTrue(String(decoding: r.body, as: UTF8.self).contains("stop_heartbeats=1"))
        let s = try TestSocket(port: harness.port, timeout: 0.5)
        try s.send(ReplicationRequest(timestamp: 0, sid: 99).encoded())
        XCTAssertEqual(try s.read(1), [KTBinaryMagic.replication])
        XCTAssertThrowsError(try s.read(1)) { error in
            guard case TestSocketError.timeout = error else { return XCTFail("expected silence, got \(error)") }
        }
        let bad = try harness.http("POST", "/_fakekt/faults?nonsense=1")
        XCTAssertEqual(bad.status, 400)
    }

    func testDelayEveryFrame() async throws {
        var plan = FaultPlan()
        plan.frameDelayMillis = 50
        let harness = try await seeded(plan)
        addTeardownBlock { try await harness.stop() }
        let s = try ReplicationTests.subscribe(harness.port)
        let start = Date()
        for _ in 0..<4 { _ = try ReplicationTests.frame(s) }
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.15)
    }

    func testRefuseConnectionsForAWhile() async throws {
        var plan = FaultPlan()
        plan.refuseUntilMillis = UInt64(Date().timeIntervalSince1970 * 1000) + 300
        let harness = try await ServerHarness.start(faults: plan)
        addTeardownBlock { try await harness.stop() }
        XCTAssertThrowsError(try harness.http("POST", "/rpc/void"))
        try waitUntil(3, "connections accepted again") { (try? harness.http("POST", "/rpc/void"))?.status == 200 }
    }
}

import NIOCore
enum ByteBufferAllocatorShim {
    static func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }
}
