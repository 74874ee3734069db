import Foundation
import Logging
import NIOCore
import QSModel
import QSNet
import QSReads
import QSStore
import QSTesting
import XCTest

/// memcached on reader threads (`Listener.runThreaded`, `--memcached-threads`): more busy
/// connections than threads take turns, the listener's caps hold, and a graceful shutdown
/// closes parked and busy connections and returns.
final class MemcachedThreadsTests: XCTestCase {
    private var tmp: URL!
    private var running: InProcessServices?

    override func tearDown() async throws {
        try? await running?.stop()
        if let tmp { try? FileManager.default.removeItem(at: tmp) }
    }

    /// A server on `threads` reader threads over a store holding `k0`…`k99` = `v0`…`v99` and
    /// `big` = 1 MiB of `b`.
    private func server(threads: Int, limits: ConnectionLimits = ConnectionLimits(),
                        parkAfter: TimeAmount = ThreadedServing.defaultParkAfter,
                        inlineAfter: TimeAmount? = ThreadedServing.defaultInlineAfter,
                        inlineBudget: TimeAmount = ThreadedServing.defaultInlineBudget) async throws -> Int {
        tmp = try Harness.tempDir("mc-threads")
        let store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1, operations: (0..<100).map {
            .set(key: Array("k\($0)".utf8), value: Array("v\($0)".utf8), expiry: nil)
        } + [.set(key: Array("big".utf8), value: Array(repeating: 0x62, count: 1 << 20), expiry: nil)])
        var logger = Logger(label: "mc-threads-test")
        logger.logLevel = .error
        var configuration = MemcachedServer.Configuration(valueFormat: .init(flagsInValue: false), threads: threads)
        configuration.parkAfter = parkAfter
        configuration.inlineAfter = inlineAfter
        configuration.inlineBudget = inlineBudget
        let server = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                     configuration: configuration, connections: limits)
        running = try await InProcessServices([server], logger: logger)
        return try await server.listener.port()
    }

    /// Six clients each keep one connection busy (a new request as soon as the answer is in)
    /// on two threads: every client gets all its answers, and right ones.
    func testMoreBusyConnectionsThanThreadsTakeTurns() async throws {
        let port = try await server(threads: 2)
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for c in 0..<6 {
                group.addTask {
                    try await Task.detached {
                        let client = try XCTUnwrap(TestClient(port: port))
                        var right = 0
                        for i in 0..<300 {
                            let k = (c * 31 + i) % 100
                            client.send("get k\(k)\r\n")
                            let expected = "VALUE k\(k) 0 \("v\(k)".utf8.count)\r\nv\(k)\r\nEND\r\n"
                            if client.read(until: "END\r\n") == expected { right += 1 }
                        }
                        return right
                    }.value
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        XCTAssertEqual(results, Array(repeating: 300, count: 6))
    }

    /// Two connections that went quiet hold both threads (in `read`, and they would for a
    /// minute before parking here): a third connection's request is still answered, the
    /// quiet ones interrupted and parked for it, and they are answered again afterwards.
    func testQuietConnectionsOnEveryThreadDoNotHoldOffANewOne() async throws {
        let port = try await server(threads: 2, parkAfter: .seconds(60), inlineAfter: nil)
        let quiet = [try XCTUnwrap(TestClient(port: port)), try XCTUnwrap(TestClient(port: port))]
        for client in quiet {
            client.send("get k1\r\n")
            XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k1 0 2\r\nv1\r\nEND\r\n")
        }
        // The test client gives up after 10 s; without the interrupt this waits 60 s.
        let third = try XCTUnwrap(TestClient(port: port))
        third.send("get k2\r\n")
        XCTAssertEqual(third.read(until: "END\r\n"), "VALUE k2 0 2\r\nv2\r\nEND\r\n")
        for client in quiet {
            client.send("get k3\r\n")
            XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k3 0 2\r\nv3\r\nEND\r\n")
        }
    }

    /// A peer that asks for a large reply and never reads it holds no thread: on one
    /// thread, another client is answered at once (the reply waits, parked for writability).
    func testAPeerThatDoesNotReadItsReplyHoldsNoThread() async throws {
        let port = try await server(threads: 1)
        let big = try XCTUnwrap(TestClient(port: port))
        // 16 MiB of replies, far more than the socket buffers hold.
        for _ in 0..<2 { big.send("get " + Array(repeating: "big", count: 8).joined(separator: " ") + "\r\n") }
        let other = try XCTUnwrap(TestClient(port: port))
        other.send("get k9\r\n")
        XCTAssertEqual(other.read(until: "END\r\n"), "VALUE k9 0 2\r\nv9\r\nEND\r\n")
        // The reader then gets its whole replies.
        let one = (0..<8).map { _ in "VALUE big 0 \(1 << 20)\r\n" + String(repeating: "b", count: 1 << 20) + "\r\n" }.joined() + "END\r\n"
        var all = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while all.count < 2 * one.utf8.count {
            let n = buffer.withUnsafeMutableBytes { recv(big.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            all += buffer[0..<n]
        }
        XCTAssertEqual(all.count, 2 * one.utf8.count)
        XCTAssertTrue(all.elementsEqual(Array((one + one).utf8)), "the replies arrive whole and in order")
    }

    /// A client that sends its end right after its commands (`printf … | nc -N`) gets every
    /// reply whole, then the connection closes, as memcached does, on reader threads and on
    /// the event loops (there its end closed the channel, cutting a reply the socket had not
    /// taken: 4.3–4.9 MB of an 8.4 MB reply).
    func testAClientThatSendsItsEndAfterItsCommandsGetsEveryReplyWhole() async throws {
        for threads in [1, 0] {
            let port = try await server(threads: threads)
            // 20 MiB of replies, more than the socket buffers hold: answering pauses with
            // lines waiting when the end arrives.
            let line = "get " + Array(repeating: "big", count: 4).joined(separator: " ") + "\r\n"
            let got = RawSocket.exchangeHalfClosed(port: port, Array((String(repeating: line, count: 5) + "get k9\r\n").utf8))
            let one = (0..<4).map { _ in "VALUE big 0 \(1 << 20)\r\n" + String(repeating: "b", count: 1 << 20) + "\r\n" }.joined() + "END\r\n"
            let all = String(repeating: one, count: 5) + "VALUE k9 0 2\r\nv9\r\nEND\r\n"
            XCTAssertEqual(got.count, all.utf8.count, "threads \(threads)")
            XCTAssertTrue(got.elementsEqual(Array(all.utf8)), "threads \(threads): the replies arrive whole and in order")
            try await running?.stop()
            running = nil
            if let tmp { try? FileManager.default.removeItem(at: tmp) }
        }
    }

    /// The reader threads now alive in this process.
    private func readThreads() throws -> Int {
        try Harness.threadNames().filter { $0 == "memcached-read" }.count
    }

    /// A connection that sends now and then is answered by the epoll thread itself (one
    /// wake-up a request, no worker), and one that sends again at once gets a worker's
    /// blocking reads. (The pauses are the workload: quiet is what is tested. The epoll
    /// thread's budget a batch is a second here: on a loaded machine, a preempted epoll
    /// thread passed 1 ms and handed a quiet request to a worker, as it should there.)
    func testQuietRequestsAreAnsweredOnTheEpollThreadAndABusyConnectionGetsAThread() async throws {
        try await Harness.waitUntilNoThread(named: "memcached-read")
        let port = try await server(threads: 2, inlineAfter: .milliseconds(200), inlineBudget: .seconds(1))
        XCTAssertEqual(try readThreads(), 0)
        let clients = [try XCTUnwrap(TestClient(port: port)), try XCTUnwrap(TestClient(port: port))]
        for round in 0..<3 {
            try await Task.sleep(for: .milliseconds(250))
            for client in clients {
                client.send("get k\(round)\r\n")
                XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k\(round) 0 2\r\nv\(round)\r\nEND\r\n")
            }
        }
        XCTAssertEqual(try readThreads(), 0, "quiet requests were handed to a worker")
        for i in 0..<50 {
            clients[0].send("get k\(i)\r\n")
            XCTAssertEqual(clients[0].read(until: "END\r\n"), "VALUE k\(i) 0 \("v\(i)".utf8.count)\r\nv\(i)\r\nEND\r\n")
        }
        XCTAssertEqual(try readThreads(), 1, "a busy connection is served by a worker")
    }

    /// Connections owed replies their peers do not read are written side by side when the
    /// drain closes them, each bounded by the idle timeout: four such peers hold a graceful
    /// shutdown for about one idle timeout, not four (they were written one after the other).
    func testTheDrainWritesToPeersThatDoNotReadSideBySide() async throws {
        let port = try await server(threads: 2, limits: ConnectionLimits(idleTimeout: .seconds(2)))
        var clients = [TestClient]()
        for _ in 0..<4 {
            let client = try XCTUnwrap(TestClient(port: port))
            client.send("get " + Array(repeating: "big", count: 8).joined(separator: " ") + "\r\n")
            clients.append(client)
        }
        // Each has been answered as far as its socket takes (and parks owed the rest).
        try await waitFor("every client's socket holding replies", timeout: .seconds(10)) {
            clients.allSatisfy { client in
                var available: Int32 = 0
                return ioctl(client.fd, UInt(FIONREAD), &available) == 0 && available > 0
            }
        }
        let stopping = ContinuousClock.now
        try await running?.stop()
        running = nil
        let took = ContinuousClock.now - stopping
        XCTAssertLessThan(took, .seconds(5), "four peers that read nothing held the drain for \(took) with a 2 s idle timeout")
    }

    /// A client that keeps sending does not keep a graceful shutdown from ending: its
    /// connection closes after the answers to what it sent before the drain.
    func testTheDrainEndsWhileAClientKeepsSending() async throws {
        let port = try await server(threads: 2)
        let client = try XCTUnwrap(TestClient(port: port))
        client.send("get k1\r\n")
        XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k1 0 2\r\nv1\r\nEND\r\n")
        let sending = Task.detached {
            while !Task.isCancelled {
                let line = Array("get k2\r\n".utf8)
                if line.withUnsafeBytes({ send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) < 0 { return }
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
        let stopping = ContinuousClock.now
        try await running?.stop()
        running = nil
        sending.cancel()
        XCTAssertLessThan(ContinuousClock.now - stopping, .seconds(5), "the drain ended while the client kept sending")
    }

    /// A peer trickling a line a byte per 100 ms (faster than a thread parks it) is closed
    /// one idle timeout after its first byte.
    func testAFastTricklerIsClosedAtTheRequestDeadline() async throws {
        let port = try await server(threads: 2, limits: ConnectionLimits(idleTimeout: .seconds(1)))
        let client = try XCTUnwrap(TestClient(port: port))
        let start = ContinuousClock.now
        var sent = 0
        while !client.isClosedByServer, ContinuousClock.now - start < .seconds(10) {
            client.send("x")
            sent += 1
            try await Task.sleep(for: .milliseconds(100))
        }
        let held = ContinuousClock.now - start
        XCTAssertTrue(client.isClosedByServer, "the trickling peer still holds its connection after \(held) (\(sent) bytes)")
        XCTAssertLessThan(held, .seconds(4))
    }

    /// Past --max-connections a connection is closed on arrival; once one closes, a new one
    /// is served.
    func testTheConnectionCapHolds() async throws {
        let port = try await server(threads: 2, limits: ConnectionLimits(idleTimeout: .seconds(60), maxConnections: 2, maxPerPeer: 100))
        let a = try XCTUnwrap(TestClient(port: port)), b = try XCTUnwrap(TestClient(port: port))
        for client in [a, b] {
            client.send("get k1\r\n")
            XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k1 0 2\r\nv1\r\nEND\r\n")
        }
        let refused = try XCTUnwrap(TestClient(port: port))
        XCTAssertEqual(refused.readToEOF(), "", "the third connection is closed without an answer")
        a.send("quit\r\n")
        XCTAssertEqual(a.readToEOF(), "")
        try await waitFor("a connection past the cap once one closed", timeout: .seconds(10)) {
            guard let c = TestClient(port: port) else { return false }
            c.send("get k2\r\n")
            return c.read(until: "END\r\n") == "VALUE k2 0 2\r\nv2\r\nEND\r\n"
        }
    }

    /// A graceful shutdown closes a parked (quiet) connection and a busy one after its answer,
    /// and returns.
    func testGracefulShutdownClosesParkedAndBusyConnections() async throws {
        let port = try await server(threads: 2)
        let quiet = try XCTUnwrap(TestClient(port: port))
        quiet.send("get k3\r\n")
        XCTAssertEqual(quiet.read(until: "END\r\n"), "VALUE k3 0 2\r\nv3\r\nEND\r\n")
        let busy = try XCTUnwrap(TestClient(port: port))
        busy.send("get k4\r\n")
        XCTAssertEqual(busy.read(until: "END\r\n"), "VALUE k4 0 2\r\nv4\r\nEND\r\n")
        // Each is parked or still on its thread (200 ms without a request parks it): both close.
        busy.send("get k5\r\n")
        let stopping = ContinuousClock.now
        try await running?.stop()
        running = nil
        XCTAssertLessThan(ContinuousClock.now - stopping, .seconds(5))
        XCTAssertEqual(quiet.readToEOF(), "")
        let rest = busy.readToEOF()
        XCTAssertTrue(rest == "" || rest == "VALUE k5 0 2\r\nv5\r\nEND\r\n", "answered whole or not at all: \(rest ?? "nil")")
    }

    /// A line too long is answered and the connection ends with a FIN after the reply (as on
    /// the event loops), not a reset for the bytes of the line nobody read.
    func testALineTooLongEndsWithTheReplyAndEOF() async throws {
        let port = try await server(threads: 2)
        let client = try XCTUnwrap(TestClient(port: port))
        client.send("get " + String(repeating: "k", count: 20_000))
        XCTAssertEqual(client.readToEOF(), "CLIENT_ERROR line too long\r\n")
    }

    /// A client that writes a whole line too long (24 MiB) before it reads gets the refusal,
    /// on the threads and on the event loops: the node reads and drops the rest of the line
    /// after answering, its output shut, until the client's end (`LingeringClose`). Closed
    /// at once, the bytes still coming were answered with a reset: the client's write failed
    /// ("connection reset by peer") 3–4 MB in, before it read the answer.
    func testAClientThatWritesAWholeLineTooLongBeforeReadingGetsTheRefusal() async throws {
        for threads in [2, 0] {
            let port = try await server(threads: threads)
            let (sendError, reply) = Harness.sendWholeThenRead(port: port, head: Array("get ".utf8), filler: 24 << 20)
            XCTAssertNil(sendError.map { String(cString: strerror($0)) }, "threads \(threads): the client's write failed")
            XCTAssertEqual(String(decoding: reply, as: UTF8.self), "CLIENT_ERROR line too long\r\n", "threads \(threads)")
            try await running?.stop()
            running = nil
        }
    }

    /// A binary-protocol request (magic 0x80, no newline to wait for) is answered and closed
    /// at once, on the threads and on the event loops alike: its client waited for its own
    /// timeout.
    func testABinaryProtocolRequestIsAnsweredAndClosed() async throws {
        for threads in [2, 0] {
            let port = try await server(threads: threads)
            let client = try XCTUnwrap(TestClient(port: port))
            // A binary GET of "k1": magic, opcode 0, key length 2, extras 0, …, the key.
            client.sendBytes([0x80, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] + Array("k1".utf8))
            XCTAssertEqual(client.readToEOF(), "SERVER_ERROR the binary protocol is not served: use the text protocol\r\n", "threads \(threads)")
            try await running?.stop()
            running = nil
        }
    }

    /// The threads carry the listener's name where `ps -L` and /proc show it.
    func testTheThreadsAreNamedInProc() async throws {
        let port = try await server(threads: 2, inlineAfter: nil)
        let client = try XCTUnwrap(TestClient(port: port))
        client.send("get k1\r\n")
        XCTAssertEqual(client.read(until: "END\r\n"), "VALUE k1 0 2\r\nv1\r\nEND\r\n")
        let names = try Harness.threadNames()
        XCTAssertTrue(names.contains("memcached-epoll"), "\(names)")
        XCTAssertTrue(names.contains("memcached-read"), "\(names)")
    }
}
