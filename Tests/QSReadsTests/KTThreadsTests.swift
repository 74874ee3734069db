import Foundation
import Logging
import NIOCore
import QSModel
import QSNet
@testable import QSReads
import QSStore
import QSTesting
import XCTest

/// KT HTTP on reader threads (`--kt-http-threads`, `KTThreads`): the simple reads are
/// answered on the threads, and a connection's first other request moves it to the event
/// loops (`Answering.handOver`) with its place under the listener's caps, its counting and
/// its drain. (The replies, byte for byte against the event loops' paths:
/// `KTFastPathTests`.)
final class KTThreadsTests: XCTestCase {
    private var tmp: URL!
    private var running: InProcessServices?
    private var server: KTHTTPReadServer!

    override func tearDown() async throws {
        try? await running?.stop()
        if let tmp { try? FileManager.default.removeItem(at: tmp) }
    }

    /// A KT port on `threads` reader threads over a store holding `k1` = `v1`.
    private func start(threads: Int, limits: ConnectionLimits = ConnectionLimits()) async throws -> Int {
        tmp = try Harness.tempDir("kt-threads")
        let store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1,
                                       operations: [.set(key: Array("k1".utf8), value: Array("v1".utf8), expiry: nil)])
        var logger = Logger(label: "kt-threads-test")
        logger.logLevel = .error
        var configuration = KTHTTPReadServer.Configuration()
        configuration.threads = threads
        server = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                  configuration: configuration, connections: limits)
        running = try await InProcessServices([server], logger: logger)
        return try await server.listener.port()
    }

    static let get = "GET /k1 HTTP/1.1\r\n\r\n"
    static let getReply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv1"
    /// A request the threads do not take: the connection goes to the event loops.
    static let slow = "GET /rpc/void HTTP/1.1\r\n\r\n"
    static let slowReply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/tab-separated-values\r\n\r\n"

    func exchange(_ client: TestClient, _ request: String, expecting reply: String, file: StaticString = #filePath, line: UInt = #line) {
        client.send(request)
        XCTAssertEqual(client.read(count: reply.utf8.count), reply, file: file, line: line)
    }

    /// A fast request on a thread, then one handed over, then fast ones again on the event
    /// loops: all answered, and the connection is counted once throughout.
    func testAConnectionMovesToTheEventLoopsAndIsCountedOnce() async throws {
        let port = try await start(threads: 2)
        let a = try XCTUnwrap(TestClient(port: port))
        exchange(a, Self.get, expecting: Self.getReply)
        XCTAssertEqual(server.session.metrics.active.count, 1)
        exchange(a, Self.slow, expecting: Self.slowReply)
        exchange(a, Self.get + Self.get, expecting: Self.getReply + Self.getReply)
        XCTAssertEqual(server.session.metrics.active.count, 1, "the hand-over neither loses nor doubles the connection")
        let b = try XCTUnwrap(TestClient(port: port))
        exchange(b, Self.get, expecting: Self.getReply)
        XCTAssertEqual(server.session.metrics.active.count, 2)
        a.send("GET /k1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(a.readToEOF(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv1")
        try await waitFor("the closed connection uncounted", timeout: .seconds(10)) { self.server.session.metrics.active.count == 1 }

        let names = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
            .compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        XCTAssertTrue(names.contains("kt-http-read"), "\(names)")
    }

    /// KT's binary protocol on the threaded port: its first byte hands the connection over,
    /// and `get_bulk` is answered as on the event loops.
    func testABinaryConnectionIsHandedOverAndAnswered() async throws {
        let port = try await start(threads: 2)
        let client = try XCTUnwrap(TestClient(port: port))
        // get_bulk (0xBA), flags 0, one key: database 0, "k1".
        client.sendBytes([0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2] + Array("k1".utf8))
        // 0xBA, one hit: database 0, key size 2, value size 2, no expiry (KT's XTMAX,
        // 2^40 - 1), key, value.
        let reply: [UInt8] = [0xBA, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2] + [0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
            + Array("k1v1".utf8)
        XCTAssertEqual(client.readBytes(count: reply.count), reply)
    }

    /// Connections handed to the event loops keep their places under the listener's cap:
    /// with two there a third is closed unanswered, and one closing lets another in.
    func testHandedOverConnectionsKeepTheirPlaceUnderTheCap() async throws {
        let port = try await start(threads: 2, limits: ConnectionLimits(idleTimeout: .seconds(60), maxConnections: 2, maxPerPeer: 100))
        let a = try XCTUnwrap(TestClient(port: port)), b = try XCTUnwrap(TestClient(port: port))
        for client in [a, b] {
            exchange(client, Self.get, expecting: Self.getReply)
            exchange(client, Self.slow, expecting: Self.slowReply)
        }
        let refused = try XCTUnwrap(TestClient(port: port))
        XCTAssertEqual(refused.readToEOF(), "", "the third connection is closed without an answer")
        a.send("GET /k1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(a.readToEOF(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv1")
        try await waitFor("a connection past the cap once one closed", timeout: .seconds(10)) {
            guard let c = TestClient(port: port) else { return false }
            c.send(Self.get)
            return c.read(count: Self.getReply.utf8.count) == Self.getReply
        }
    }
}

extension TestClient {
    /// `count` bytes (fewer if the connection ends or the deadline passes).
    func readBytes(count: Int) -> [UInt8] {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while data.count < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - data.count), 0) }
            if n <= 0 { break }
            data += buffer[0..<n]
        }
        return data
    }

    func read(count: Int) -> String { String(decoding: readBytes(count: count), as: UTF8.self) }
}
