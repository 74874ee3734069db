import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import QSNet
import QSTesting
import XCTest

/// The shared listener's graceful shutdown: it stops accepting, lets the request in
/// flight finish, closes idle connections, then `run()` returns.
final class ListenerDrainTests: XCTestCase {
    /// Answers each chunk it receives with "done\n", once the test opens the gate.
    struct GatedServer: ListeningService {
        let listener: Listener
        let began: AsyncStream<Void>.Continuation
        let gate: AsyncStream<Void>
        /// Connections the listener has taken from the kernel's queue (one not yet taken when
        /// the listening socket closes is reset by the kernel, not drained).
        let accepted = NIOLockedValueBox(0)

        func run() async throws {
            let began = self.began, gate = self.gate, accepted = self.accepted
            try await listener.run { channel in
                accepted.withLockedValue { $0 += 1 }
                return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            } handle: { accepted in
                try? await accepted.connection.executeThenClose { inbound, outbound in
                    for try await _ in inbound {
                        guard let drain = accepted.drain else { return }
                        try await drain.request {
                            began.yield()
                            for await _ in gate { break }
                            try await outbound.write(ByteBuffer(string: "done\n"))
                        }
                    }
                }
            }
        }
    }

    func testInFlightRequestFinishesIdleConnectionClosesAndRunReturns() async throws {
        var logger = Logger(label: "drain-test")
        logger.logLevel = .error
        let (began, beganContinuation) = AsyncStream<Void>.makeStream()
        let (gate, gateContinuation) = AsyncStream<Void>.makeStream()
        let server = GatedServer(listener: Listener(name: "gated", endpoints: [.tcp(host: "127.0.0.1", port: 0)],
                                                    drain: .requests, logger: logger),
                                 began: beganContinuation, gate: gate)
        let running = try await InProcessServices([server], logger: logger)
        let port = try await server.listener.port()

        let busy = try XCTUnwrap(TestClient(port: port))
        let idle = try XCTUnwrap(TestClient(port: port))
        busy.send("slow\n")
        var beganIterator = began.makeAsyncIterator()
        _ = await beganIterator.next()
        // Both taken by the listener before shutdown begins (else the idle one may still be in
        // the kernel's accept queue, and is reset with the listening socket: CI saw it).
        let both = await Harness.eventually(timeout: .seconds(10)) { server.accepted.withLockedValue { $0 } == 2 }
        XCTAssertTrue(both)

        async let stopped: Void = running.stop()
        // No new connections; the idle one is closed; the busy one stays until answered.
        let refused = await Harness.eventually(timeout: .seconds(10)) { !Harness.isListening(port: port) }
        XCTAssertTrue(refused, "still accepting after shutdown began")
        XCTAssertEqual(idle.readToEOF(), "", "the idle connection is closed without an answer")
        gateContinuation.yield()
        XCTAssertEqual(busy.readToEOF(), "done\n", "the request in flight gets its answer, then the connection closes")
        try await stopped
    }
}

/// A blocking loopback client with a receive deadline.
final class TestClient: @unchecked Sendable {
    let fd: Int32

    init?(port: Int) {
        guard let fd = Harness.connectLoopback(port: port) else { return nil }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
    }

    deinit { close(fd) }

    func send(_ text: String) { sendBytes(Array(text.utf8)) }

    func sendBytes(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Foundation.send(fd, $0.baseAddress, $0.count, 0) }
    }

    /// Everything until the server closes; nil if the deadline passed first.
    func readToEOF() -> String? {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return String(decoding: data, as: UTF8.self) }
            if n < 0 { return nil }
            data += buffer[0..<n]
        }
    }
}
