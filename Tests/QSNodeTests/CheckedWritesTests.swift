import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// A writer's connection checks its writes (`CheckedFrames`) when the node knows the
/// envelope, and keeps writing plain frames to a node older than it.
final class CheckedWritesTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("checked-writes")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testAWriterChecksItsWritesToANodeThatKnowsTheEnvelope() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port, writeChecking: .probe)
        XCTAssertTrue(c.checksWrites)
        _ = try await c.write([.set(key: Array("k".utf8), value: [1], expiry: nil)], sourceID: "t")
        let value = try await c.get(Array("k".utf8))?.value
        XCTAssertEqual(value, [1])
        XCTAssertEqual(root.metric("qs_bad_frames_total"), 0)
        XCTAssertEqual(root.metric("qs_damaged_frames_total"), 0)
        await c.close()
        let plain = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        XCTAssertFalse(plain.checksWrites)
        await plain.close()
    }

    /// A node older than the envelope answers it as an unknown request type and closes the
    /// connection (as every node did): the writer connects again and writes plain frames.
    func testAWriterWritesPlainFramesToANodeOlderThanTheEnvelope() async throws {
        let connections = NSLock(), counted = Counted()
        let head = Response.head(Head(index: 3, hash: Array(repeating: 1, count: 32), commitTimeNs: 0))
        let old = try LoopbackPeer { fd in
            connections.withLock { counted.value += 1 }
            while let frame = LoopbackPeer.readFrame(fd) {
                let answer: Response = frame.type == CheckedFrames.tag
                    ? .error(.malformed, "malformed request: unknown request type 0x30") : head
                _ = LoopbackPeer.send(fd, frame: answer.frame())
                if frame.type == CheckedFrames.tag { break }
            }
            close(fd)
        }
        defer { old.stop() }
        let c = try await QSClient.connect(host: "127.0.0.1", port: old.port, writeChecking: .probe)
        XCTAssertFalse(c.checksWrites)
        let index = try await c.head().index
        XCTAssertEqual(index, 3)
        XCTAssertEqual(connections.withLock { counted.value }, 2)
        await c.close()
    }

    final class Counted: @unchecked Sendable { var value = 0 }
}
