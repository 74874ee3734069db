import Foundation
import Logging
import QSModel
import QSNet
import QSReads
import QSStore
import QSTesting
import XCTest

/// memcached answers on the event loop into one buffer per socket read: a reply the socket
/// has not taken yet is still in flight, so graceful shutdown closes the connection only
/// after the whole of it is written.
final class MemcachedDrainTests: XCTestCase {
    func testReplyLargerThanTheSocketBufferIsWrittenWholeBeforeTheDrainCloses() async throws {
        try await replyIsWrittenWhole(threads: 0)
    }

    /// The same on reader threads: the thread blocked in its write finishes it, then its
    /// read sees the end of input and it closes.
    func testReplyLargerThanTheSocketBufferIsWrittenWholeBeforeTheDrainClosesOnReaderThreads() async throws {
        try await replyIsWrittenWhole(threads: 2)
    }

    private func replyIsWrittenWhole(threads: Int) async throws {
        let tmp = try Harness.tempDir("mc-drain")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        let value = [UInt8](repeating: 0x61, count: 64 << 10)
        let keys = (0..<100).map { "k\($0)" }
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1,
                                       operations: keys.map { .set(key: Array($0.utf8), value: value, expiry: nil) })
        var logger = Logger(label: "mc-drain-test")
        logger.logLevel = .error
        let server = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                     configuration: .init(valueFormat: .init(flagsInValue: false), threads: threads))
        let running = try await InProcessServices([server], logger: logger)
        let port = try await server.listener.port()

        let client = try XCTUnwrap(TestClient(port: port))
        client.send("get \(keys.joined(separator: " "))\r\n")
        // The reply (6.5 MB) has begun: far more than the socket buffers hold is still queued.
        var first = [UInt8](repeating: 0, count: 6)
        XCTAssertEqual(first.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, Int32(MSG_WAITALL)) }, 6)
        XCTAssertEqual(String(decoding: first, as: UTF8.self), "VALUE ")

        async let stopped: Void = running.stop()
        let rest = try XCTUnwrap(client.readToEOF(), "the connection stayed open past the deadline")
        let expected = keys.map { "VALUE \($0) 0 \(value.count)\r\n" + String(repeating: "a", count: value.count) + "\r\n" }.joined() + "END\r\n"
        XCTAssertEqual(rest.utf8.count + 6, expected.utf8.count, "the whole reply arrives before the connection closes")
        XCTAssertTrue(rest.hasSuffix("\r\nEND\r\n"))
        try await stopped
    }
}
