import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import QSModel
import QSReads
import QSStore
import QSTesting
import XCTest

/// The KT HTTP fast path (`KTFastRequest`, `KTFastHTTPHandler`): what it takes and what it
/// hands to NIO's HTTP pipeline, and that a connection it answers gets the very bytes a
/// connection NIO answers gets, in order, however the requests arrive.
final class KTFastPathTests: XCTestCase {
    func parse(_ text: String) -> KTFastRequest.Parse {
        Array(text.utf8).withUnsafeBytes { KTFastRequest.parse($0) }
    }

    func request(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> KTFastRequest? {
        guard case let .request(r) = parse(text) else {
            XCTFail("not taken: \(text.debugDescription) → \(parse(text))", file: file, line: line)
            return nil
        }
        return r
    }

    /// NIO's decoder on the same bytes: the head it reads and whether a body follows.
    func nioHead(_ text: String) throws -> (head: HTTPRequestHead, hasBody: Bool)? {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder()))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(ByteBuffer(string: text))
        guard case let .head(head)? = try channel.readInbound(as: HTTPServerRequestPart.self) else { return nil }
        let next = try channel.readInbound(as: HTTPServerRequestPart.self)
        if case .end? = next { return (head, false) }
        return (head, true)
    }

    static let taken: [(String, KTFastRequest.Kind, minor: UInt8, keepAlive: Bool, target: String)] = [
        ("GET /k HTTP/1.1\r\nHost: x\r\n\r\n", .restGet, 1, true, "/k"),
        ("HEAD /0/k%2F1 HTTP/1.0\r\n\r\n", .restHead, 0, false, "/0/k%2F1"),
        ("GET /rpc/get?key=a%2Fb&DB=1 HTTP/1.1\r\nConnection: close\r\n\r\n", .rpcGet, 1, false, "/rpc/get?key=a%2Fb&DB=1"),
        ("GET /k HTTP/1.0\r\nconnection:  Keep-Alive \r\n\r\n", .restGet, 0, true, "/k"),
        ("GET /k?x=1 HTTP/1.1\r\nContent-Length: 0\r\nUser-Agent: a b\t c\r\nX-Empty:\r\n\r\n", .restGet, 1, true, "/k?x=1"),
        ("GET /rpc HTTP/1.1\r\nAccept: */*\r\n\r\n", .restGet, 1, true, "/rpc"),
    ]

    func testSimpleReadsAreTakenAsNIOReadsThem() throws {
        for (text, kind, minor, keepAlive, target) in Self.taken {
            guard let r = request(text + "GET /next HTTP/1.1\r\n") else { continue }
            XCTAssertEqual(r.kind, kind, text)
            XCTAssertEqual(r.minorVersion, minor, text)
            XCTAssertEqual(r.keepAlive, keepAlive, text)
            XCTAssertEqual(r.length, text.utf8.count, "the request ends where the next begins: \(text)")
            XCTAssertEqual(String(decoding: Array(text.utf8)[r.target], as: UTF8.self), target)
            // NIO's decoder agrees on everything the fast path answers by.
            guard let (head, hasBody) = try nioHead(text) else {
                XCTFail("NIO reads no head from \(text.debugDescription)")
                continue
            }
            XCTAssertEqual(head.method, kind == .restHead ? .HEAD : .GET, text)
            XCTAssertEqual(head.uri, target, text)
            XCTAssertEqual(head.version.minor, Int(minor), text)
            XCTAssertEqual(head.isKeepAlive, keepAlive, text)
            XCTAssertFalse(hasBody, text)
            // Every proper prefix waits for more.
            for n in 0..<text.utf8.count {
                XCTAssertEqual(Array(text.utf8)[..<n].withUnsafeBytes { KTFastRequest.parse($0) }, .incomplete, "\(text.debugDescription) cut at \(n)")
            }
        }
    }

    func testAnythingElseIsHandedOver() {
        let refused = [
            "POST /rpc/get HTTP/1.1\r\nContent-Length: 5\r\n\r\nkey=a",
            "GET /rpc/void HTTP/1.1\r\n\r\n",
            "GET /rpc/get_bulk?_a= HTTP/1.1\r\n\r\n",
            "HEAD /rpc/get?key=a HTTP/1.1\r\n\r\n",
            "PUT /k HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "get /k HTTP/1.1\r\n\r\n",
            "GET http://host/k HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET  /k HTTP/1.1\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\n\r\n",
            "GET /a#b HTTP/1.1\r\n\r\n",
            "GET /k HTTP/2.0\r\n\r\n",
            "GET /k HTTP/1.1\n\n",
            "GET /k HTTP/1.1\r\nHost: x\n\r\n",
            "GET /k HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /k HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            "GET /k HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /k HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /k HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "GET /k HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\n",
            "GET /k HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n",
            "GET /k HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
            "GET /k HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET /k HTTP/1.1\r\n: x\r\n\r\n",
            "GET /k HTTP/1.1\r\nX: a\u{1}b\r\n\r\n",
            "GET /k HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n",
            "GET /k HTTP/1.1\r\nX: " + String(repeating: "a", count: KTFastRequest.maxHeadBytes) + "\r\n\r\n",
            // Not whole, but already longer than the fast path reads.
            "GET /k HTTP/1.1\r\nX: " + String(repeating: "a", count: KTFastRequest.maxHeadBytes),
        ]
        for text in refused {
            XCTAssertEqual(parse(text), .handOver, text.prefix(80).debugDescription)
        }
    }

    // MARK: - Over sockets

    var tmp: URL!
    var store: Store!
    var position: UInt64 = 0
    static let now: UInt64 = 2_000_000_000

    override func setUp() async throws {
        tmp = try Harness.tempDir("kt-fast")
        store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        let long = String(repeating: "0123456789", count: 30)
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1, operations: [
            .set(key: Array("k/1".utf8), value: Array("first".utf8), expiry: nil),
            .set(key: Array("bin".utf8), value: [0, 9, 10, 13, 0xFF, 0x41], expiry: nil),
            .set(key: Array("long".utf8), value: Array(long.utf8), expiry: nil),
            .set(key: Array("exp".utf8), value: Array("later".utf8), expiry: Self.now + 3600),
            .set(key: Array("gone".utf8), value: Array("old".utf8), expiry: Self.now - 10),
            .set(key: Array("aux/k".utf8), value: Array("in aux".utf8), expiry: nil),
            .set(key: Array("empty".utf8), value: [], expiry: nil),
            .set(key: Array("big".utf8), value: [UInt8](repeating: 0x62, count: 70_000), expiry: nil),
        ])
    }

    override func tearDown() async throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// Requests the fast path answers, each kept alive, covering hits, misses, expiry,
    /// column encodings, databases and KT's errors.
    static let reads = [
        "GET /k%2F1 HTTP/1.1\r\nHost: t\r\n\r\n",
        "HEAD /k%2F1 HTTP/1.1\r\n\r\n",
        "GET /missing HTTP/1.1\r\n\r\n",
        "HEAD /missing HTTP/1.1\r\n\r\n",
        "GET /exp HTTP/1.1\r\n\r\n",
        "HEAD /exp HTTP/1.1\r\n\r\n",
        "GET /gone HTTP/1.1\r\n\r\n",
        "GET /bin HTTP/1.1\r\n\r\n",
        "GET /empty HTTP/1.1\r\n\r\n",
        "GET /k%2F1?x HTTP/1.1\r\n\r\n",
        "GET /1/k HTTP/1.1\r\n\r\n",
        "GET /aux.kct/k HTTP/1.1\r\n\r\n",
        "GET /9/k HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=k%2F1 HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=bin HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=long HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=exp HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=gone HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=empty HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=k%2F1&DB=0 HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=k&DB=1 HTTP/1.1\r\n\r\n",
        "GET /rpc/get?key=k&DB=9 HTTP/1.1\r\n\r\n",
        "GET /rpc/get?nokey=1 HTTP/1.1\r\n\r\n",
        "GET /k%2F1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET /rpc/get?key=k%2F1 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    ]
    /// The last request: HTTP/1.0 without keep-alive, answered with `Connection: close`.
    static let last = "GET /rpc/get?key=k%2F1 HTTP/1.0\r\n\r\n"
    /// What the fast path refuses, so a connection starting with it is NIO's.
    static let slowFirst = "GET /rpc/void HTTP/1.1\r\n\r\n"
    static let voidReply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/tab-separated-values\r\n\r\n"

    /// One whole response from `client` (no body for a `HEAD`).
    func response(_ client: TestClient, head: Bool, pending: inout [UInt8]) -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if let end = pending.firstRange(of: [13, 10, 13, 10]) {
                let headText = String(decoding: pending[..<end.upperBound], as: UTF8.self)
                let length = head ? 0 : headText.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                if pending.count >= end.upperBound + length {
                    let whole = Array(pending[..<(end.upperBound + length)])
                    pending.removeFirst(whole.count)
                    return String(decoding: whole, as: UTF8.self)
                }
            }
            let n = buffer.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return "<closed> " + String(decoding: pending, as: UTF8.self) }
            pending += buffer[0..<n]
        }
    }

    /// Each request sent once its predecessor is answered (one request a socket read, so
    /// the fast path takes each one whole), after `first` when given.
    func closedLoop(port: Int, first: String?) throws -> [String] {
        let client = try XCTUnwrap(TestClient(port: port))
        var pending = [UInt8]()
        if let first {
            client.send(first)
            XCTAssertEqual(response(client, head: false, pending: &pending), Self.voidReply)
        }
        var out = [String]()
        for r in Self.reads + [Self.last] {
            client.send(r)
            out.append(response(client, head: r.hasPrefix("HEAD"), pending: &pending))
        }
        XCTAssertEqual(client.readToEOF(), "", "HTTP/1.0 without keep-alive closes the connection")
        return out
    }

    func testFastAndNIOPathsWriteTheSameBytes() async throws {
        // One unprefixed database: hits answered in place; and a database map: every read
        // through the general code (`plan`), written by the fast path.
        for (n, databases) in [KTDatabaseMap.single, try KTDatabaseMap(parsing: "0=,1:aux.kct=aux/")].enumerated() {
            let directory = tmp.appendingPathComponent("servers-\(n)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let reads = try await InProcessReads(store: store, directory: directory, databases: databases, clock: { Self.now })
            let fast = try closedLoop(port: reads.ktPort, first: nil)
            let slow = try closedLoop(port: reads.ktPort, first: Self.slowFirst)
            // On reader threads (`KTThreads`), and on threads until the first request hands over.
            let threaded = try closedLoop(port: reads.ktThreadedPort, first: nil)
            let handedOver = try closedLoop(port: reads.ktThreadedPort, first: Self.slowFirst)
            await reads.stop()
            XCTAssertEqual(fast.count, slow.count)
            XCTAssertEqual(threaded.count, slow.count)
            XCTAssertEqual(handedOver.count, slow.count)
            for (i, (f, s)) in zip(fast, slow).enumerated() {
                let what = "\(databases) request \((Self.reads + [Self.last])[i].debugDescription)"
                XCTAssertEqual(f, s, what)
                XCTAssertEqual(threaded[i], s, "on threads: \(what)")
                XCTAssertEqual(handedOver[i], s, "handed over from threads: \(what)")
            }
            // A few answers spelled out, so both paths being wrong alike would show.
            XCTAssertEqual(fast[0], "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            XCTAssertEqual(fast[1], "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            XCTAssertEqual(fast[2], "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-Kt-Error: DB: 7: no record: no record\r\n\r\n")
            XCTAssertTrue(fast[4].contains("X-Kt-Xt: "), fast[4])
            XCTAssertTrue(fast[6].hasPrefix("HTTP/1.1 404 "), "expired records stay hidden: \(fast[6])")
            XCTAssertEqual(fast[13], "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/tab-separated-values\r\n\r\nvalue\tfirst\n")
            XCTAssertTrue(fast[14].contains("colenc="), fast[14])
            XCTAssertTrue(fast[15].contains("colenc="), fast[15])
            XCTAssertTrue(fast[17].hasPrefix("HTTP/1.1 450 Logical Inconsistency\r\n"), fast[17])
            XCTAssertTrue(fast[21].hasPrefix("HTTP/1.1 400 Bad Request\r\n"), fast[21])
            XCTAssertTrue(fast[23].hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), fast[23])
            XCTAssertEqual(fast.last, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/tab-separated-values\r\nConnection: close\r\n\r\nvalue\tfirst\n")
            if databases == .single {
                XCTAssertTrue(fast[10].hasPrefix("HTTP/1.1 400 "), "no database 1 here: \(fast[10])")
            } else {
                XCTAssertEqual(fast[10], "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nin aux")
                XCTAssertEqual(fast[11], fast[10])
                XCTAssertTrue(fast[20].hasSuffix("value\tin aux\n"), fast[20])
            }
        }
    }

    func testPipelinedFastSlowFastAnsweredInOrderAndSplitRequestsAnswered() async throws {
        let reads = try await InProcessReads(store: store, directory: tmp, clock: { Self.now })
        for port in [reads.ktPort, reads.ktThreadedPort] {
            try pipelinedFastSlowFast(port: port)
        }
        await reads.stop()
    }

    /// On the event loops, and on reader threads (which hand the connection over at its
    /// first slow request, its unanswered bytes with it).
    func pipelinedFastSlowFast(port: Int) throws {
        let on = "port \(port)"
        let get = "GET /k%2F1 HTTP/1.1\r\n\r\n"
        let echo = "POST /rpc/echo HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b"
        let close = "GET /rpc/get?key=k%2F1 HTTP/1.1\r\nConnection: close\r\n\r\n"
        let getReply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
        let echoReply = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: text/tab-separated-values\r\n\r\na\tb\n"
        let closeReply = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/tab-separated-values\r\nConnection: close\r\n\r\nvalue\tfirst\n"

        // fast, fast, slow, fast in one write: the slow one hands the rest over.
        let pipelined = try XCTUnwrap(TestClient(port: port))
        pipelined.send(get + get + echo + get + close)
        XCTAssertEqual(pipelined.readToEOF(), getReply + getReply + echoReply + getReply + closeReply, on)

        // Replies larger than the output buffer's flush mark, pipelined.
        let big = try XCTUnwrap(TestClient(port: port))
        big.send(String(repeating: "GET /big HTTP/1.1\r\n\r\n", count: 3) + close)
        let bigReply = "HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + String(repeating: "b", count: 70_000)
        XCTAssertEqual(big.readToEOF(), String(repeating: bigReply, count: 3) + closeReply, on)
        // A slow request behind replies the socket has not taken: handed over with them.
        let behind = try XCTUnwrap(TestClient(port: port))
        behind.send(String(repeating: "GET /big HTTP/1.1\r\n\r\n", count: 40) + echo + close)
        XCTAssertEqual(behind.readToEOF(), String(repeating: bigReply, count: 40) + echoReply + closeReply, on)
        // A request NIO's decoder cannot parse behind replies the socket has not taken: they
        // are all written, then the 400, then the connection closes.
        let garbage = try XCTUnwrap(TestClient(port: port))
        garbage.send(String(repeating: "GET /big HTTP/1.1\r\n\r\n", count: 40) + "GARBAGE\r\n\r\n")
        XCTAssertEqual(garbage.readToEOF(), String(repeating: bigReply, count: 40)
            + "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", on)

        // Byte by byte: the first byte is no whole request, NIO's pipeline reads the rest.
        let trickled = try XCTUnwrap(TestClient(port: port))
        for byte in (get + close).utf8 { trickled.send(String(UnicodeScalar(byte))) }
        XCTAssertEqual(trickled.readToEOF(), getReply + closeReply, on)

        // A head split in the middle after whole requests: those answered first.
        let split = try XCTUnwrap(TestClient(port: port))
        var pending = [UInt8]()
        split.send(get + get + "GET /rpc/get?ke")
        XCTAssertEqual(response(split, head: false, pending: &pending), getReply, on)
        XCTAssertEqual(response(split, head: false, pending: &pending), getReply, on)
        split.send("y=k%2F1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(String(decoding: pending, as: UTF8.self) + (split.readToEOF() ?? "<timeout>"), closeReply, on)
    }

    func testGracefulShutdownClosesIdleConnectionsOnBothPaths() async throws {
        let reads = try await InProcessReads(store: store, directory: tmp, clock: { Self.now })
        var clients = [(TestClient, String)]()
        for port in [reads.ktPort, reads.ktThreadedPort] {
            var pending = [UInt8]()
            let fast = try XCTUnwrap(TestClient(port: port))
            fast.send("GET /k%2F1 HTTP/1.1\r\n\r\n")
            XCTAssertEqual(response(fast, head: false, pending: &pending), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            let slow = try XCTUnwrap(TestClient(port: port))
            slow.send(Self.slowFirst)
            XCTAssertEqual(response(slow, head: false, pending: &pending), Self.voidReply)
            // Fast, then handed over: on threads the connection moved to the event loops.
            let both = try XCTUnwrap(TestClient(port: port))
            both.send("GET /k%2F1 HTTP/1.1\r\n\r\n")
            XCTAssertEqual(response(both, head: false, pending: &pending), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            both.send(Self.slowFirst)
            XCTAssertEqual(response(both, head: false, pending: &pending), Self.voidReply)
            clients += [(fast, "the fast path's idle connection (port \(port))"), (slow, "a handed-over idle connection (port \(port))"),
                        (both, "a connection answered fast, then handed over (port \(port))")]
        }
        // All idle: the shutdown closes them (before the hand-over the fast path or the
        // thread drains itself, after it NIO's pipeline handler) and returns.
        await reads.stop()
        for (client, what) in clients {
            XCTAssertEqual(client.readToEOF(), "", "\(what) is closed on shutdown")
        }
    }
}
