import Foundation
import Logging
import NIOCore
import QSModel
@testable import QSNet
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

    /// A KT port on `threads` reader threads over a store holding `k1` = `v1` and `big` =
    /// 256 KiB of `b`.
    private func start(threads: Int, limits: ConnectionLimits = ConnectionLimits(), inlineAfter: TimeAmount? = nil,
                       inlineBudget: TimeAmount = ThreadedServing.defaultInlineBudget) async throws -> Int {
        if let running { try await running.stop() }
        if let tmp { try? FileManager.default.removeItem(at: tmp) }
        tmp = try Harness.tempDir("kt-threads")
        let store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1,
                                       operations: [.set(key: Array("k1".utf8), value: Array("v1".utf8), expiry: nil),
                                                    .set(key: Array("big".utf8), value: Array(repeating: 0x62, count: 256 << 10), expiry: nil),
                                                    .set(key: Array("huge".utf8), value: Array(repeating: 0x68, count: 8 << 20), expiry: nil)])
        var logger = Logger(label: "kt-threads-test")
        logger.logLevel = .error
        var configuration = KTHTTPReadServer.Configuration()
        configuration.threads = threads
        // Unless a test says otherwise, on a worker whatever the pace (the tests look at the
        // worker's thread and drain).
        configuration.inlineAfter = inlineAfter
        configuration.inlineBudget = inlineBudget
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

    /// A client that sends its end right after its requests (`printf … | nc -N`, an HTTP/1.0
    /// script) is answered them, as ktserver answers, on reader threads and on the event
    /// loops, whatever the request, HTTP or binary: before, only what the HTTP fast path took
    /// was (its end closed the channel first, or a thread's hand-over lost the request to it).
    func testAClientThatSendsItsEndAfterItsRequestsIsAnsweredThem() async throws {
        for threads in [2, 0] {
            let port = try await start(threads: threads)
            for round in 0..<5 {
                for (request, reply) in [
                    ("GET /k1 HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv1"),
                    ("GET /rpc/void HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/tab-separated-values\r\n\r\n"),
                    (Self.slow, Self.slowReply),
                    ("GET /rpc/match_prefix?prefix=k HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/tab-separated-values\r\n\r\n_k1\t0\nnum\t1\n"),
                    (Self.get + Self.slow + Self.get, Self.getReply + Self.slowReply + Self.getReply),
                ] {
                    // (Whether a reply says `Connection: close` depends on whether the
                    // client's end was seen before it was written; the replies are compared
                    // without it.)
                    let got = String(decoding: RawSocket.exchangeHalfClosed(port: port, Array(request.utf8)), as: UTF8.self)
                    XCTAssertEqual(got.replacingOccurrences(of: "Connection: close\r\n", with: ""), reply,
                                   "threads \(threads), round \(round): \(request)")
                }
                // KT's binary protocol likewise: two get_bulks of `big` (256 KiB each) and
                // `k1`, the end right behind them (before, the end closed the channel: nothing).
                let bulk: [UInt8] = [0xBA, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 3] + Array("big".utf8) + [0, 0, 0, 0, 0, 2] + Array("k1".utf8)
                let one: [UInt8] = [0xBA, 0, 0, 0, 2] + [0, 0, 0, 0, 0, 3, 0, 4, 0, 0] + [0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + Array("big".utf8)
                    + [UInt8](repeating: 0x62, count: 256 << 10)
                    + [0, 0, 0, 0, 0, 2, 0, 0, 0, 2] + [0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + Array("k1v1".utf8)
                XCTAssertEqual(RawSocket.exchangeHalfClosed(port: port, bulk + bulk), one + one, "threads \(threads), round \(round): binary")
                // An answer larger than the socket takes at once (8 MiB), written whole after
                // the client's end: on the event loops NIO closed the channel at the end, the
                // answer cut at about 3 MB.
                let huge = RawHTTPResponse(RawSocket.exchangeHalfClosed(port: port, Array("GET /huge HTTP/1.1\r\n\r\n".utf8)))
                XCTAssertEqual(huge?.status, 200, "threads \(threads), round \(round): huge")
                XCTAssertEqual(huge?.body.count, 8 << 20, "threads \(threads), round \(round): huge, whole")
            }
        }
    }

    /// A client that writes its whole request before it reads (Python's `http.client`) gets
    /// the 413 for a body over the limit (40 MiB declared, 32 MiB the most), whether the
    /// connection began on a reader thread or on the event loops: the node reads and drops
    /// the body after answering, its output shut, until the client's end (`LingeringClose`).
    /// Closed at once, the body still coming was answered with a reset, and the client's
    /// write failed ("connection reset by peer") 4 MB in, the 413 unread.
    func testAClientThatWritesABodyOverTheLimitBeforeReadingGetsThe413() async throws {
        for threads in [2, 0] {
            let port = try await start(threads: threads)
            let head = Array("POST /rpc/get_bulk HTTP/1.1\r\nContent-Length: \(40 << 20)\r\n\r\n".utf8)
            let (sendError, reply) = Harness.sendWholeThenRead(port: port, head: head, filler: 40 << 20)
            XCTAssertNil(sendError.map { String(cString: strerror($0)) }, "threads \(threads): the client's write failed")
            let response = RawHTTPResponse(reply)
            XCTAssertEqual(response?.status, 413, "threads \(threads): \(String(decoding: reply.prefix(200), as: UTF8.self))")
            XCTAssertEqual(response?.headers["connection"], "close", "threads \(threads)")
        }
    }

    /// A KT binary client that writes a whole `set_bulk` (a write sent to a read-only node:
    /// refused from its first five bytes) of 30 MiB before it reads gets the error reply
    /// 0xBF, not a reset: the node drops the rest, its output shut, until the client's end;
    /// a `get_bulk` over the connection's limit likewise.
    func testAClientThatWritesAWholeBinaryWriteBeforeReadingGetsTheErrorReply() async throws {
        for threads in [2, 0] {
            let port = try await start(threads: threads)
            // set_bulk (0xB8), flags 0, one record: db 0, key "k", a 30 MiB value, xt.
            let value = 30 << 20
            let head: [UInt8] = [0xB8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
                + withUnsafeBytes(of: UInt32(value).bigEndian, Array.init) + [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + Array("k".utf8)
            let (sendError, reply) = Harness.sendWholeThenRead(port: port, head: head, filler: value)
            XCTAssertNil(sendError.map { String(cString: strerror($0)) }, "threads \(threads): the client's write failed")
            XCTAssertEqual(reply, [0xBF], "threads \(threads)")
            // A get_bulk larger than a connection holds (a 40 MiB key, 32 MiB the most): the
            // error reply too (before, closed without a word, by a reset).
            let key = 40 << 20
            let bulk: [UInt8] = [0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0] + withUnsafeBytes(of: UInt32(key).bigEndian, Array.init)
            let (bulkError, bulkReply) = Harness.sendWholeThenRead(port: port, head: bulk, filler: key)
            XCTAssertNil(bulkError.map { String(cString: strerror($0)) }, "threads \(threads): the get_bulk's write failed")
            XCTAssertEqual(bulkReply, [0xBF], "threads \(threads): get_bulk over the limit")
        }
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

        let names = try Harness.threadNames()
        XCTAssertTrue(names.contains("kt-http-read"), "\(names)")
    }

    /// Every request of a parked connection answered by the epoll thread itself
    /// (`inlineAfter` zero): the fast ones there, and the first other one hands the
    /// connection over from there, counted once, answered on the event loops after. (The
    /// epoll thread's budget a batch is a second here, as in `MemcachedThreadsTests`: under
    /// CI's load a preempted answer passed 1 ms, marked the connection heavy and a worker
    /// answered the next request, as it should there.)
    func testAConnectionAnsweredOnTheEpollThreadIsHandedOverToo() async throws {
        try await Harness.waitUntilNoThread(named: "kt-http-read")
        let port = try await start(threads: 2, inlineAfter: .zero, inlineBudget: .seconds(1))
        let a = try XCTUnwrap(TestClient(port: port))
        exchange(a, Self.get, expecting: Self.getReply)
        exchange(a, Self.get + Self.get, expecting: Self.getReply + Self.getReply)
        XCTAssertEqual(server.session.metrics.active.count, 1)
        exchange(a, Self.slow, expecting: Self.slowReply)
        exchange(a, Self.get, expecting: Self.getReply)
        XCTAssertEqual(server.session.metrics.active.count, 1, "the hand-over neither loses nor doubles the connection")
        let names = try Harness.threadNames()
        XCTAssertFalse(names.contains("kt-http-read"), "answered by a worker: \(names)")
        // A binary request from a parked connection: handed over from the epoll thread too.
        let b = try XCTUnwrap(TestClient(port: port))
        b.sendBytes([0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2] + Array("k1".utf8))
        let reply: [UInt8] = [0xBA, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2] + [0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
            + Array("k1v1".utf8)
        XCTAssertEqual(b.readBytes(count: reply.count), reply)
        a.send("GET /k1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(a.readToEOF(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv1")
        // (A binary connection is not counted among the KT HTTP connections.)
        try await waitFor("the closed connection uncounted", timeout: .seconds(10)) { self.server.session.metrics.active.count == 0 }
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

    /// A request NIO's HTTP decoder cannot parse, behind large replies the client has not
    /// read yet, on a connection NIO's pipeline answers (handed over from a thread, or on
    /// the event loops): the replies before it are all written, then the 400, then the
    /// connection closes. (It closed at once, losing the replies the socket had not taken.)
    func testAMalformedRequestBehindUnreadRepliesGetsThemAllThenA400() async throws {
        for threads in [2, 0] {
            let port = try await start(threads: threads)
            let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
            defer { close(fd) }
            var small: Int32 = 64 << 10
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            func send(_ text: String) { _ = Array(text.utf8).withUnsafeBytes { Foundation.send(fd, $0.baseAddress, $0.count, 0) } }
            func read(upTo count: Int) -> [UInt8] {
                var got = [UInt8](), buffer = [UInt8](repeating: 0, count: 1 << 16)
                while got.count < count {
                    let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - got.count), 0) }
                    if n <= 0 { break }
                    got += buffer[..<n]
                }
                return got
            }
            send(Self.slow)
            XCTAssertEqual(String(decoding: read(upTo: Self.slowReply.utf8.count), as: UTF8.self), Self.slowReply)
            send(String(repeating: "GET /big HTTP/1.1\r\n\r\n", count: 16) + "GARBAGE\r\n\r\n")
            // The client reads nothing for a second: long enough for the node to reach the
            // malformed request with most replies still unsent (a right answer does not
            // depend on how long: the bytes are the same whenever they are read).
            try await Task.sleep(for: .seconds(1))
            let bigReply = Array("HTTP/1.1 200 OK\r\nContent-Length: \(256 << 10)\r\n\r\n".utf8) + [UInt8](repeating: 0x62, count: 256 << 10)
            let badRequest = Array("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".utf8)
            let expected = Array([[UInt8]](repeating: bigReply, count: 16).joined()) + badRequest
            let got = read(upTo: expected.count + 1)
            XCTAssertEqual(got.count, expected.count, "threads \(threads): bytes before the close")
            XCTAssertTrue(got == expected, "threads \(threads): the replies, then the 400")
        }
    }

    /// A head trickled on a thread until it is too long for the threads (8 KiB) is handed
    /// over with its deadline: the connection closes one idle timeout after the head's first
    /// byte, as on the event loops, not one after the hand-over.
    func testARequestHandedOverInTheMiddleKeepsItsDeadline() async throws {
        let port = try await start(threads: 2, limits: ConnectionLimits(idleTimeout: .seconds(3)))
        let client = try XCTUnwrap(TestClient(port: port))
        let start = ContinuousClock.now
        client.send("GET /k1 HTTP/1.1\r\nX: " + String(repeating: "a", count: 4_000))
        // 200 bytes every 100 ms: past 8 KiB (the hand-over) about 2.1 s in.
        while !client.isClosedByServer, ContinuousClock.now - start < .seconds(10) {
            try await Task.sleep(for: .milliseconds(100))
            client.send(String(repeating: "a", count: 200))
        }
        let held = ContinuousClock.now - start
        XCTAssertTrue(client.isClosedByServer, "the trickling peer still holds its connection after \(held)")
        XCTAssertGreaterThan(held, .milliseconds(2_500), "closed before its deadline")
        XCTAssertLessThan(held, .milliseconds(4_300), "the deadline restarted at the hand-over (it would close about 5.1 s in)")
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

/// What a reply waiting on a reader thread's connection holds of the reply budget.
final class ThreadedRepliesHeldTests: XCTestCase {
    /// Held whole while the part the socket took is the smaller: that part's memory is
    /// still the buffer's. Once the part taken is the larger (and over 1 MiB), the rest moves
    /// to a buffer of its own and only it is held. (Sixty-four connections each taking part
    /// of a 4 MiB reply held 21 MiB by the count of what was left, with 264 MiB of memory.)
    func testAReplyPartlyTakenIsHeldForTheMemoryItKeeps() {
        let memory = ReplyMemory(limit: 64 << 20)
        let c = ThreadedConnection<KTThreads>(fd: -1, peer: "test", peerIP: nil, state: KTThreads.Connection(peer: "test"), memory: memory)
        var reply = ByteBuffer(repeating: 0x61, count: 4 << 20)
        reply.moveReaderIndex(forwardBy: 1 << 20)
        c.pendingOut = reply
        XCTAssertEqual(memory.inUse, 4 << 20, "the part taken is still in the buffer")
        reply.moveReaderIndex(forwardBy: 2 << 20)
        c.pendingOut = reply
        XCTAssertEqual(c.pendingOut?.readableBytes, 1 << 20)
        XCTAssertEqual(c.pendingOut?.readerIndex, 0, "the rest in a buffer of its own")
        XCTAssertEqual(memory.inUse, 1 << 20)
        c.pendingOut = nil
        XCTAssertEqual(memory.inUse, 0)
    }
}
