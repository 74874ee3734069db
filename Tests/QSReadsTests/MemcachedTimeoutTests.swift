import Foundation
import Logging
import NIOCore
import QSModel
import QSNet
import QSReads
import QSStore
import QSTesting
import XCTest

/// memcached keeps its connection's watch inline (no guard handler in its pipeline,
/// `Listener.run(watched:)`): the idle timeout and the request deadline still hold; and on
/// reader threads (`Listener.runThreaded`), where a quiet connection is parked on the
/// epoll thread in between.
final class MemcachedTimeoutTests: XCTestCase {
    private var tmp: URL!
    private var running: InProcessServices?

    override func tearDown() async throws {
        try? await running?.stop()
        if let tmp { try? FileManager.default.removeItem(at: tmp) }
    }

    /// A memcached server over a store holding `k` = `v`, idle timeout 1 s (on `threads`
    /// reader threads; 0: the event loops).
    private func server(threads: Int) async throws -> Int {
        tmp = try Harness.tempDir("mc-timeout")
        let store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1,
                                       operations: [.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)])
        var logger = Logger(label: "mc-timeout-test")
        logger.logLevel = .error
        let server = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                     configuration: .init(valueFormat: .init(flagsInValue: false), threads: threads),
                                     connections: ConnectionLimits(idleTimeout: .seconds(1)))
        running = try await InProcessServices([server], logger: logger)
        return try await server.listener.port()
    }

    func testAnIdleConnectionIsClosedAfterTheIdleTimeout() async throws {
        try await idleConnectionIsClosed(threads: 0)
    }

    func testAnIdleConnectionIsClosedAfterTheIdleTimeoutOnReaderThreads() async throws {
        try await idleConnectionIsClosed(threads: 2)
    }

    func testAPeerTricklingAGetLineIsClosedOneIdleTimeoutAfterItsFirstByte() async throws {
        try await tricklingPeerIsClosed(threads: 0)
    }

    func testAPeerTricklingAGetLineIsClosedOneIdleTimeoutAfterItsFirstByteOnReaderThreads() async throws {
        try await tricklingPeerIsClosed(threads: 2)
    }

    func testAClientWhoseRequestsAreAnsweredKeepsItsConnectionPastTheTimeout() async throws {
        try await answeredClientStays(threads: 0)
    }

    func testAClientWhoseRequestsAreAnsweredKeepsItsConnectionPastTheTimeoutOnReaderThreads() async throws {
        try await answeredClientStays(threads: 2)
    }

    private func idleConnectionIsClosed(threads: Int) async throws {
        let port = try await server(threads: threads)
        let client = try XCTUnwrap(TestClient(port: port))
        let start = ContinuousClock.now
        XCTAssertEqual(client.readToEOF(), "", "closed without an answer")
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(900))
    }

    private func tricklingPeerIsClosed(threads: Int) async throws {
        let port = try await server(threads: threads)
        let client = try XCTUnwrap(TestClient(port: port))
        // Each byte restarts the idle timer: only the request deadline can end it.
        let line = Array("get " + String(repeating: "x", count: 200) + "\r\n")
        let start = ContinuousClock.now
        var sent = 0
        while sent < line.count, !client.isClosedByServer, ContinuousClock.now - start < .seconds(10) {
            client.send(String(line[sent]))
            sent += 1
            try await Task.sleep(for: .milliseconds(300))
        }
        let held = ContinuousClock.now - start
        XCTAssertTrue(client.isClosedByServer, "the trickling peer still holds its connection after \(held) (\(sent) bytes)")
        XCTAssertGreaterThanOrEqual(held, .milliseconds(900))
        XCTAssertLessThan(held, .seconds(4), "closed one idle timeout after the first byte, not later")
    }

    private func answeredClientStays(threads: Int) async throws {
        let port = try await server(threads: threads)
        let client = try XCTUnwrap(TestClient(port: port))
        let start = ContinuousClock.now
        var answered = 0
        while ContinuousClock.now - start < .milliseconds(2_500) {
            client.send("get k\r\n")
            XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k 0 1\r\nv\r\nEND\r\n")
            answered += 1
            try await Task.sleep(for: .milliseconds(300))
        }
        XCTAssertGreaterThanOrEqual(answered, 5)
        XCTAssertFalse(client.isClosedByServer)
    }
}

extension TestClient {
    /// The server closed the connection (end of stream or an error), without waiting.
    var isClosedByServer: Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    /// What arrives up to and including `end`; nil when the connection ends or the receive
    /// deadline passes first.
    func read(until end: String) -> String? {
        var data = [UInt8]()
        var byte: UInt8 = 0
        while !String(decoding: data, as: UTF8.self).hasSuffix(end) {
            guard recv(fd, &byte, 1, 0) == 1 else { return nil }
            data.append(byte)
        }
        return String(decoding: data, as: UTF8.self)
    }
}
