import Foundation
import KTFormats
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// Large replies that clients have not read are held against one budget for every read port
/// (`--read-reply-memory`): past it a get of a large value is refused (memcached's own
/// "out of memory" line, KT HTTP 503) instead of built, small ones are still served, and
/// once the clients read, large values are served again. Without it, 100 connections
/// asking for a 20 MB value and reading nothing held 2 GB of the node.
final class ReplyMemoryTests: XCTestCase {
    var tmp: URL!
    var node: RootNode!
    /// Larger than a loopback socket's buffers take at once (the send buffer grows to
    /// `tcp_wmem`'s maximum, 4 MiB on most hosts), so a reply not read stays held.
    static let hugeBytes: Int = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_wmem", encoding: .utf8)) ?? ""
        let wmemMax = text.split(whereSeparator: \.isWhitespace).last.flatMap { Int($0) } ?? 4 << 20
        return max(12 << 20, (3 * wmemMax + (1 << 20) - 1) & ~((1 << 20) - 1))
    }()
    /// A budget of `hugeBytes` × `values` and `extra` KiB more, as `--read-reply-memory` takes it.
    static func budget(values: Int, extraKiB: Int) -> String { "\(values * (hugeBytes >> 10) + extraKiB)KiB" }

    override func setUp() async throws {
        tmp = try Harness.tempDir("reply-memory")
    }

    override func tearDown() async throws {
        if let node { _ = try? node.daemon.stop() }
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A connection with a small receive buffer that sent `request` and reads nothing yet.
    func unread(port: Int, _ request: String) throws -> Int32 {
        try unread(port: port, bytes: Array(request.utf8))
    }

    func unread(port: Int, bytes: [UInt8]) throws -> Int32 {
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        var small: Int32 = 64 << 10
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        XCTAssertEqual(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, bytes.count)
        return fd
    }

    /// Reads from `fd` until the bytes end with `end` (or the connection ends or times out).
    func read(_ fd: Int32, until end: String) -> [UInt8] {
        let end = Array(end.utf8)
        var got = [UInt8](), buffer = [UInt8](repeating: 0, count: 1 << 20)
        while !(got.count >= end.count && Array(got.suffix(end.count)) == end) {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            got += buffer[..<n]
        }
        return got
    }

    /// Reads from `fd` until `count` bytes came (or the connection ends or times out).
    func read(_ fd: Int32, count: Int) -> [UInt8] {
        var got = [UInt8](), buffer = [UInt8](repeating: 0, count: 1 << 20)
        while got.count < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - got.count), 0) }
            guard n > 0 else { break }
            got += buffer[..<n]
        }
        return got
    }

    func held() -> Double { node.metric("qs_read_reply_bytes_held") ?? -1 }

    /// Writes `huge` (a value of `hugeBytes`) through `client`, then sends the write port's
    /// `Get` of it on a connection of its own that reads nothing, once the answer is held.
    func writeHugeThenGetUnread(_ client: QSClient) async throws -> Int32 {
        _ = try await client.write([.set(key: Array("huge".utf8), value: [UInt8](repeating: UInt8(ascii: "h"), count: Self.hugeBytes), expiry: nil)],
                                   sourceID: "t")
        let frame = Request.get(key: Array("huge".utf8)).frame()
        var get = [UInt8]()
        withUnsafeBytes(of: UInt32(1 + frame.payload.count).bigEndian) { get += $0 }
        get += [frame.type] + frame.payload
        let fd = try unread(port: node.port, bytes: get)
        try await waitFor("the write port's answer held", timeout: .seconds(20)) { held() >= Double(Self.hugeBytes) }
        return fd
    }

    /// Starts `node`, a root with memcached and KT HTTP on `threads` reader threads each and a
    /// budget of two huge values, holding one (`huge`); its memcached and KT HTTP ports.
    func rootHoldingHuge(threads: String, data: String) async throws -> (Int, Int) {
        node = try RootNode(data: tmp.appendingPathComponent(data), logDir: tmp,
                            extraArgs: ["--memcached", "127.0.0.1:0", "--memcached-threads", threads,
                                        "--kt-http", "127.0.0.1:0", "--kt-http-threads", threads,
                                        "--read-reply-memory", Self.budget(values: 2, extraKiB: 1024)])
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        _ = try await client.write([.set(key: Array("huge".utf8), value: [UInt8](repeating: UInt8(ascii: "h"), count: Self.hugeBytes), expiry: nil)],
                                   sourceID: "t")
        await client.close()
        return (try node.daemon.port("memcached"), try node.daemon.port("kt-http"))
    }

    func testLargeRepliesNotReadAreHeldToOneBudgetAcrossTheReadPorts() async throws {
        // memcached and KT HTTP on the event loops hold a whole reply until it is written (on
        // reader threads, the default, only what the socket has not taken:
        // testRepliesWaitingOnReaderThreadsAreHeldToTheBudget).
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp,
                            extraArgs: ["--memcached", "127.0.0.1:0", "--memcached-threads", "0",
                                        "--kt-http", "127.0.0.1:0", "--kt-http-threads", "0",
                                        "--read-reply-memory", Self.budget(values: 2, extraKiB: 1024)])
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        _ = try await client.write([.set(key: Array("huge".utf8), value: [UInt8](repeating: UInt8(ascii: "h"), count: Self.hugeBytes), expiry: nil),
                                    .set(key: Array("small".utf8), value: Array("s".utf8), expiry: nil)], sourceID: "t")
        await client.close()
        let mc = try node.daemon.port("memcached"), kt = try node.daemon.port("kt-http")

        // Two huge replies (and their heads) fill the budget: each is held until its client reads it.
        let first = try unread(port: mc, "get huge\r\n")
        defer { close(first) }
        try await waitFor("the first reply held", timeout: .seconds(20)) { held() >= Double(Self.hugeBytes) }
        let second = try unread(port: kt, "GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        defer { close(second) }
        try await waitFor("the second reply held", timeout: .seconds(20)) { held() >= Double(2 * Self.hugeBytes) }

        // A third is refused on either port, and told why; a small value is still served.
        let third = try unread(port: mc, "get huge\r\nget small\r\n")
        defer { close(third) }
        let refusal = String(decoding: read(third, until: "END\r\n"), as: UTF8.self)
        XCTAssertEqual(refusal, "SERVER_ERROR out of memory writing get response\r\nVALUE small 0 1\r\ns\r\nEND\r\n")
        let ktRefused = RawSocket.exchange(port: kt, Array("GET /huge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        let ktText = String(decoding: ktRefused, as: UTF8.self)
        XCTAssertTrue(ktText.hasPrefix("HTTP/1.1 503") && ktText.contains("Retry-After: 1"), ktText)
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"memcached\"}"), 1)
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"kt_http\"}"), 1)
        XCTAssertTrue(node.daemon.log.contains("a large reply refused"), node.daemon.log)

        // The clients read: the budget empties and a large value is served again.
        XCTAssertEqual(read(first, until: "END\r\n").count, "VALUE huge 0 \(Self.hugeBytes)\r\n".utf8.count + Self.hugeBytes + 7)
        let head = "HTTP/1.1 200 OK\r\nContent-Length: \(Self.hugeBytes)\r\n\r\n"
        let reply = read(second, count: head.utf8.count + Self.hugeBytes)
        XCTAssertEqual(String(decoding: reply.prefix(head.utf8.count), as: UTF8.self), head)
        XCTAssertEqual(reply.count, head.utf8.count + Self.hugeBytes)
        try await waitFor("the budget to empty", timeout: .seconds(20)) { held() == 0 }
        let again = RawSocket.exchange(port: mc, Array("get huge\r\nquit\r\n".utf8))
        XCTAssertEqual(again.count, "VALUE huge 0 \(Self.hugeBytes)\r\n".utf8.count + Self.hugeBytes + 7)
    }

    /// On reader threads (`--memcached-threads`, `--kt-http-threads`) a reply the socket did
    /// not take waits with its connection parked: held against the same budget until written.
    func testRepliesWaitingOnReaderThreadsAreHeldToTheBudget() async throws {
        let (mc, kt) = try await rootHoldingHuge(threads: "2", data: "data")
        let mcReply = "VALUE huge 0 \(Self.hugeBytes)\r\n".utf8.count + Self.hugeBytes + 7
        let ktReply = "HTTP/1.1 200 OK\r\nContent-Length: \(Self.hugeBytes)\r\n\r\n".utf8.count + Self.hugeBytes
        // (The refused request ends its connection, so the refusal is read to its end.)
        for (port, request, last, reply, refusal) in [
            (mc, "get huge\r\n", "get huge\r\nquit\r\n", mcReply, "SERVER_ERROR out of memory writing get response\r\n"),
            (kt, "GET /huge HTTP/1.1\r\n\r\n", "GET /huge HTTP/1.1\r\nConnection: close\r\n\r\n", ktReply, "HTTP/1.1 503 Service Unavailable\r\n"),
        ] {
            let first = try unread(port: port, request)
            defer { close(first) }
            try await waitFor("the first reply held (port \(port))", timeout: .seconds(20)) { held() > 0 }
            let second = try unread(port: port, request)
            defer { close(second) }
            // (A reply waiting is held whole while the part the socket took is the smaller.)
            try await waitFor("the second reply held (port \(port))", timeout: .seconds(20)) { held() >= Double(2 * Self.hugeBytes) }
            let third = try unread(port: port, last)
            defer { close(third) }
            let refused = String(decoding: read(third, count: 1 << 20), as: UTF8.self)
            XCTAssertTrue(refused.hasPrefix(refusal), "port \(port): \(refused)")
            XCTAssertEqual(read(first, count: reply).count, reply)
            XCTAssertEqual(read(second, count: reply).count, reply)
            try await waitFor("the budget to empty (port \(port))", timeout: .seconds(20)) { held() == 0 }
        }
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"memcached\"}"), 1)
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"kt_http\"}"), 1)
    }

    /// Large replies asked for at once, on reader threads and on the event loops, are each
    /// held as they are built (the check and the hold in one step, the hold handed on to
    /// whoever writes the reply): checked, then held by their writer, each thread building
    /// one could pass the budget meanwhile (541 MiB held against 256 with 32 connections
    /// asking for 60 MiB each). Twelve connections ask at once, reading nothing: exactly as
    /// many as the budget takes are answered, the rest refused.
    func testLargeRepliesAskedForAtOnceAreHeldToTheBudget() async throws {
        for threads in ["4", "0"] {
            let (mc, kt) = try await rootHoldingHuge(threads: threads, data: "data-\(threads)")
            let limit = Double(2 * Self.hugeBytes + (1 << 20))
            for (port, request, answered, interface) in [(mc, "get huge\r\n", "VALUE huge 0", "memcached"),
                                                         (kt, "GET /huge HTTP/1.1\r\n\r\n", "HTTP/1.1 200", "kt_http")] {
                do {
                    let fds = try (0..<12).map { _ in try unread(port: port, request) }
                    defer { fds.forEach { close($0) } }
                    let refusals = "qs_read_reply_memory_refusals_total{interface=\"\(interface)\"}"
                    // Every one refused or its reply held (the replies are larger than the
                    // sockets take), then: as many held as the budget takes.
                    var refused = 0.0, replies = 0.0
                    try await waitFor("each of twelve refused or held (\(interface), threads \(threads))", timeout: .seconds(30)) {
                        refused = node.metric(refusals) ?? -1
                        replies = (held() / Double(Self.hugeBytes)).rounded(.down)
                        return refused + replies == 12
                    }
                    XCTAssertEqual(refused, 10, "\(interface), threads \(threads): \(replies) replies held, \(held()) bytes")
                    XCTAssertLessThanOrEqual(held(), limit, "\(interface), threads \(threads)")
                    let firsts = fds.map { String(decoding: read($0, count: answered.utf8.count), as: UTF8.self) }
                    XCTAssertEqual(firsts.filter { $0 == answered }.count, 2, "\(interface), threads \(threads): \(firsts)")
                }
                try await waitFor("the budget to empty (\(interface), threads \(threads))", timeout: .seconds(20)) { held() == 0 }
            }
            _ = try node.daemon.stop()
            node = nil
        }
    }

    /// `/rpc/get` and `/rpc/get_bulk` write a value column-encoded, URL-encoding chosen from its
    /// first 255 bytes: a value that starts plain and goes on in bytes URL escapes is written at
    /// three times its size. What is held (before it is built) is the reply as written, not the
    /// value: a second such reply that the value's size would have let in is refused. (Before,
    /// the value's size was held and the writer took the rest unchecked: 1.13× the budget with
    /// one such reply waiting, limit + 2 × the largest value in turn.)
    func testEncodedRepliesAreHeldAtTheSizeTheyAreWritten() async throws {
        let raw = Self.hugeBytes / 3
        let value = [UInt8](repeating: UInt8(ascii: "a"), count: 255) + [UInt8](repeating: 0xFF, count: raw - 255)
        let written = 6 + 255 + 3 * (raw - 255) + 1
        for threads in ["2", "0"] {
            node = try RootNode(data: tmp.appendingPathComponent("data-\(threads)"), logDir: tmp,
                                extraArgs: ["--kt-http", "127.0.0.1:0", "--kt-http-threads", threads,
                                            "--read-reply-memory", "\(3 * (Self.hugeBytes >> 10) / 2)KiB"])
            let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
            _ = try await client.write([.set(key: Array("enc".utf8), value: value, expiry: nil)], sourceID: "t")
            await client.close()
            let kt = try node.daemon.port("kt-http")
            let first = try unread(port: kt, "GET /rpc/get?key=enc HTTP/1.1\r\n\r\n")
            var firstOpen = true
            defer { if firstOpen { close(first) } }
            try await waitFor("the first reply held at its written size (threads \(threads))", timeout: .seconds(20)) {
                held() >= Double(written)
            }
            for request in ["GET /rpc/get?key=enc HTTP/1.1\r\nConnection: close\r\n\r\n",
                            "GET /rpc/get_bulk?_enc= HTTP/1.1\r\nConnection: close\r\n\r\n"] {
                let reply = String(decoding: RawSocket.exchange(port: kt, Array(request.utf8)).prefix(40), as: UTF8.self)
                XCTAssertTrue(reply.hasPrefix("HTTP/1.1 503"), "threads \(threads), \(request): \(reply)")
            }
            XCTAssertLessThanOrEqual(held(), Double(3 * Self.hugeBytes / 2), "threads \(threads)")
            XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"kt_http\"}"), 2, "threads \(threads)")
            // (Closed first: a stop writes what a connection is owed, within its timeout.)
            close(first)
            firstOpen = false
            _ = try node.daemon.stop()
            node = nil
        }
    }

    /// KT binary's replies are written from a task: held until the socket takes them, and a
    /// get_bulk past the budget gets KT's error reply and the connection closes, as KT's.
    /// Many values under 64 KiB in one memcached get make a large reply too.
    func testBinaryRepliesAndManySmallValuesAreHeldToTheBudget() async throws {
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp,
                            extraArgs: ["--memcached", "127.0.0.1:0", "--kt-http", "127.0.0.1:0", "--read-reply-memory", Self.budget(values: 1, extraKiB: 112)])
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        var ops: [Mutation] = [.set(key: Array("huge".utf8), value: [UInt8](repeating: UInt8(ascii: "h"), count: Self.hugeBytes), expiry: nil)]
        ops += (0..<10).map { .set(key: Array("m\($0)".utf8), value: [UInt8](repeating: UInt8(ascii: "m"), count: 40 << 10), expiry: nil) }
        _ = try await client.write(ops, sourceID: "t")
        await client.close()
        let mc = try node.daemon.port("memcached"), kt = try node.daemon.port("kt-http")
        let bulk = KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: Array("huge".utf8))]).encoded()

        let first = try XCTUnwrap(Harness.connectLoopback(port: kt))
        var firstOpen = true
        defer { if firstOpen { close(first) } }
        var small: Int32 = 64 << 10
        setsockopt(first, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        XCTAssertEqual(bulk.withUnsafeBytes { send(first, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, bulk.count)
        try await waitFor("the binary reply held", timeout: .seconds(20)) { held() >= Double(Self.hugeBytes) }

        let refused = RawSocket.exchange(port: kt, bulk)
        XCTAssertEqual(refused, KTBinaryResponse.error.encoded(), "KT's error reply, then the connection closes")
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"kt_http\"}"), 1)
        // Ten values of 40 KiB: 400 KiB, past what is left; one of them is small and served.
        let many = String(decoding: RawSocket.exchange(port: mc, Array("get m0 m1 m2 m3 m4 m5 m6 m7 m8 m9\r\nget m0\r\nquit\r\n".utf8)).prefix(80), as: UTF8.self)
        XCTAssertTrue(many.hasPrefix("SERVER_ERROR out of memory writing get response\r\nVALUE m0 0 40960\r\n"), many)
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"memcached\"}"), 1)

        // Closing without reading gives the bytes back. (Closed, not shut down: a client
        // that only sends its end may still read, and its reply is written on, as KT does.)
        close(first)
        firstOpen = false
        try await waitFor("the budget to empty", timeout: .seconds(20)) { held() == 0 }
        let again = RawSocket.exchange(port: mc, Array("get m0 m1 m2 m3 m4 m5 m6 m7 m8 m9\r\nquit\r\n".utf8))
        XCTAssertEqual(again.count, 10 * ("VALUE m0 0 40960\r\n".utf8.count + (40 << 10) + 2) + 5)
    }

    /// A get_bulk (KT HTTP and binary) naming many values, each allowed, that together are
    /// far past the reply budget is refused as the values are gathered, not once all of them
    /// were read and encoded: with the node's heap limited to less than their sum
    /// (RLIMIT_DATA, set on the running node), it answers the refusal and stays up. Before,
    /// one small request built the whole reply first (160 MB here; gigabytes with more keys).
    func testAGetBulkPastTheBudgetIsRefusedBeforeItsValuesAreGathered() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb",
                      "LMDB only: the heap limit leaves no room for RocksDB's own memtables and cache; the gathering is the same code on both engines")
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp,
                            extraArgs: ["--kt-http", "127.0.0.1:0", "--read-reply-memory", "8MiB"])
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let value = [UInt8](repeating: UInt8(ascii: "v"), count: 4 << 20)
        for batch in 0..<5 {
            _ = try await client.write((0..<8).map { .set(key: Array("b\(batch * 8 + $0)".utf8), value: value, expiry: nil) }, sourceID: "t")
        }
        await client.close()
        let kt = try node.daemon.port("kt-http")
        // The heap may grow by 96 MiB from here: less than the 160 MiB the values make.
        let status = try String(contentsOfFile: "/proc/\(node.daemon.pid)/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("VmData:") })
        let data = try XCTUnwrap(Int(line.split(separator: " ")[1])) * 1024
        let limit = try Harness.run("/usr/bin/prlimit", ["--pid", "\(node.daemon.pid)", "--data=\(data + (96 << 20)):unlimited"])
        XCTAssertEqual(limit.status, 0, String(decoding: limit.stderr, as: UTF8.self))

        let keys = (0..<40).map { "_b\($0)\t\n" }.joined()
        let http = "POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Type: text/tab-separated-values\r\nContent-Length: \(keys.utf8.count)\r\nConnection: close\r\n\r\n\(keys)"
        let answer = String(decoding: RawSocket.exchange(port: kt, Array(http.utf8)).prefix(40), as: UTF8.self)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 503"), answer)
        let bulk = KTBinaryRequest.getBulk(flags: 0, keys: (0..<40).map { KTBinaryKey(db: 0, key: Array("b\($0)".utf8)) }).encoded()
        XCTAssertEqual(RawSocket.exchange(port: kt, bulk), KTBinaryResponse.error.encoded())
        XCTAssertEqual(node.metric("qs_read_reply_memory_refusals_total{interface=\"kt_http\"}"), 2)
        XCTAssertTrue(node.daemon.isRunning, node.daemon.log)
        // A get_bulk that fits is served.
        let one = KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: Array("b0".utf8))]).encoded()
        XCTAssertEqual(RawSocket.exchange(port: kt, one).count, 5 + 18 + 2 + (4 << 20))
    }

    /// The write port's reads (`Get` from this machine, or on a connection that presented a
    /// token) are held to the same budget: a crowd of connections asking for a large value and
    /// reading nothing held value × connections there too. Past it a read is answered `busy`
    /// (code 14), counted under `interface="write"`; a write is never refused for it.
    func testWritePortReadsAreHeldToTheSameBudget() async throws {
        // memcached on the event loops: a whole reply held until written (as above).
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp,
                            extraArgs: ["--memcached", "127.0.0.1:0", "--memcached-threads", "0",
                                        "--read-reply-memory", Self.budget(values: 2, extraKiB: 1024)])
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)

        // One answer held on the write port, one on memcached: the budget is full.
        let first = try await writeHugeThenGetUnread(client)
        defer { close(first) }
        let second = try unread(port: try node.daemon.port("memcached"), "get huge\r\n")
        var secondOpen = true
        defer { if secondOpen { close(second) } }
        try await waitFor("the memcached reply held", timeout: .seconds(20)) { held() >= Double(2 * Self.hugeBytes) }

        // A third Get (or a Scan of it) is answered busy, and told why (asked again until the
        // request's timeout, then the busy answer is thrown); a write is still answered.
        let impatient = try await QSClient.connect(host: "127.0.0.1", port: node.port, requestTimeout: .milliseconds(300))
        defer { Task { await impatient.close() } }
        do {
            _ = try await impatient.get(Array("huge".utf8))
            XCTFail("a Get past the budget was answered")
        } catch let ClientError.server(code, message) {
            XCTAssertEqual(ErrorCode(rawValue: code), .busy)
            XCTAssertTrue(message.contains("--read-reply-memory"), message)
        }
        do {
            _ = try await impatient.scan(prefix: Array("hu".utf8))
            XCTFail("a Scan past the budget was answered")
        } catch let ClientError.server(code, _) {
            XCTAssertEqual(ErrorCode(rawValue: code), .busy)
        }
        let refusals = try XCTUnwrap(node.metric("qs_read_reply_memory_refusals_total{interface=\"write\"}"))
        XCTAssertGreaterThanOrEqual(refusals, 4, "each asked again at least once before the busy answer")
        XCTAssertTrue(node.daemon.log.contains("write port: a large read answer refused busy"), node.daemon.log)
        _ = try await client.write([.set(key: Array("small".utf8), value: Array("s".utf8), expiry: nil)], sourceID: "t2")
        let smallValue = try await client.get(Array("small".utf8))?.value
        XCTAssertEqual(smallValue, Array("s".utf8))

        // The first client reads its answer whole; both go, the budget empties, Get is served.
        let answer = read(first, count: 5 + Self.hugeBytes)
        XCTAssertEqual(answer.count, 5 + Self.hugeBytes, "the held answer arrives once read")
        XCTAssertEqual(answer[4], Response.value(nil).frame().type)
        // (Closed, not shut down: a client that only sends its end may still read, and its
        // reply is written on, as memcached writes it.)
        close(second)
        secondOpen = false
        try await waitFor("the budget to empty", timeout: .seconds(20)) { held() == 0 }
        let hugeValue = try await client.get(Array("huge".utf8))?.value
        XCTAssertEqual(hugeValue?.count, Self.hugeBytes)
        await client.close()
    }

    /// A connection that presented one of the node's tokens (a replica, a bridge, qsctl with
    /// its token) is counted against the budget but never refused: a large read it needs
    /// must not wait for a moment when nothing else is held.
    func testWritePortReadsWithATokenAreCountedNotRefused() async throws {
        let tokenFile = tmp.appendingPathComponent("write-token")
        let token = Array("a-write-token-of-some-length".utf8)
        try Data(token).write(to: tokenFile)
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp,
                            extraArgs: ["--write-token-file", tokenFile.path, "--read-reply-memory", Self.budget(values: 1, extraKiB: 1024)])
        let trusted = try await QSClient.connect(host: "127.0.0.1", port: node.port, token: token)
        let first = try await writeHugeThenGetUnread(trusted)
        defer { close(first) }

        // Without a token, or with a wrong one (a local peer's auth is not refused, and does
        // not make it trusted either): busy. With the token: served.
        let stranger = try await QSClient.connect(host: "127.0.0.1", port: node.port, token: Array("wrong".utf8),
                                                  requestTimeout: .milliseconds(300))
        do {
            _ = try await stranger.get(Array("huge".utf8))
            XCTFail("a Get past the budget was answered without a token")
        } catch let ClientError.server(code, _) {
            XCTAssertEqual(ErrorCode(rawValue: code), .busy)
        }
        await stranger.close()
        let value = try await trusted.get(Array("huge".utf8))?.value
        XCTAssertEqual(value?.count, Self.hugeBytes)
        XCTAssertEqual(read(first, count: 5 + Self.hugeBytes).count, 5 + Self.hugeBytes)
        try await waitFor("the budget to empty", timeout: .seconds(20)) { held() == 0 }
        await trusted.close()
    }
}
