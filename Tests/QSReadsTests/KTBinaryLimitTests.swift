import Foundation
import KTFormats
import Logging
import NIOCore
import QSNet
@testable import QSReads
import QSStore
import QSTesting
import XCTest

/// The KT port holds at most `maxBodyBytes` of one binary request (NIO's
/// `maximumBufferSize` on `KTBinaryRequestDecoder`).
final class KTBinaryLimitTests: XCTestCase {
    func testABinaryRequestOverTheLimitClosesTheConnection() async throws {
        let tmp = try Harness.tempDir("kt-binary-limit")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let store = try Store(directory: tmp.appendingPathComponent("data").path, mapSize: 64 << 20)
        var logger = Logger(label: "reads-test")
        logger.logLevel = .error
        let kt = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                  configuration: .init(maxBodyBytes: 1024))
        let running = try await InProcessServices([kt], logger: logger)
        addTeardownBlock { try await running.stop() }
        let port = try await kt.listener.port()

        // A get_bulk whose one key is larger than the limit, cut one byte past it: the error
        // reply 0xBF, and the server ends the connection at once (its side shut: a server
        // still waiting for the rest would keep it open until the socket's 10 s receive
        // timeout).
        let big = KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: [UInt8](repeating: 0x61, count: 4096))]).encoded()
        let started = ContinuousClock.now
        XCTAssertEqual(RawSocket.exchange(port: port, Array(big.prefix(1025))), [KTBinaryMagic.error])
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "closed by the server, not by the receive timeout")

        // Within the limit: answered (nothing stored), then a set_bulk is refused with 0xBF and closes.
        let small = KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: [UInt8](repeating: 0x61, count: 900))]).encoded()
        let refused = KTBinaryRequest.setBulk(flags: 0, records: []).encoded()
        XCTAssertEqual(RawSocket.exchange(port: port, small + refused),
                       KTBinaryResponse.getBulk(records: []).encoded() + [KTBinaryMagic.error])

        // A set_bulk far over the limit: refused from its first bytes (a read node takes no
        // writes), not held until the limit closes the connection without a word.
        let huge = KTBinaryRequest.setBulk(flags: 0, records: [KTBinaryRecord(db: 0, key: Array("k".utf8), value: [UInt8](repeating: 0x62, count: 8192),
                                                                             expiration: KTExpiration.never)]).encoded()
        XCTAssertEqual(RawSocket.exchange(port: port, Array(huge.prefix(2048))), [KTBinaryMagic.error])
    }

    /// Each body is capped (`maxBodyBytes`), and the bodies arriving on all connections
    /// together are held to one budget (`maxPendingBytes`): many clients each sending an
    /// allowed body slowly could otherwise make the node hold their sum.
    func testBodiesArrivingTogetherAreHeldToTheListenersBudget() async throws {
        let (kt, port) = try await serverWithAOneMiBBudget("kt-pending")

        // A body of 700,000 bytes, 600,000 of them sent: held. (No content type: nothing to
        // parse, so what is held once it has all come, its copy, fits the budget.)
        let keys = Array(String(repeating: "_" + String(repeating: "k", count: 997) + "\t\n", count: 700).utf8)
        let head = Array("POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Length: \(keys.count)\r\nConnection: close\r\n\r\n".utf8)
        let first = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(first) }
        XCTAssertTrue(sendAll(first, head + keys.prefix(600_000)))
        try await waitFor("the first body's bytes held") { kt.pendingBodyBytes == 600_000 }
        // A second, the same: past the budget once 448,576 more bytes have come: 503, closed.
        // (It sends no more than the byte that passes it, so the server has read all of it
        // when it closes, and the answer is not lost to a reset.)
        let second = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(second) }
        XCTAssertTrue(sendAll(second, head + keys.prefix(448_577)))
        let refused = readUntilClosed(second)
        XCTAssertEqual(RawHTTPResponse(refused)?.status, 503, String(decoding: refused, as: UTF8.self))
        // The first finishes and is answered; then the budget is free for another whole body.
        XCTAssertTrue(sendAll(first, Array(keys.dropFirst(600_000))))
        XCTAssertEqual(RawHTTPResponse(readUntilClosed(first))?.status, 200)
        try await waitFor("the budget given back") { kt.pendingBodyBytes == 0 }
        let third = RawSocket.exchange(port: port, head + keys)
        XCTAssertEqual(RawHTTPResponse(third)?.status, 200, String(decoding: third.prefix(200), as: UTF8.self))

        // A binary get_bulk still arriving counts against the same budget (a key of 900,000
        // bytes, 800,000 of them sent), and gives it back when its connection closes.
        let binary = try XCTUnwrap(Harness.connectLoopback(port: port))
        let keyHead: [UInt8] = [0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0] + withUnsafeBytes(of: UInt32(900_000).bigEndian, Array.init)
        XCTAssertTrue(sendAll(binary, keyHead + [UInt8](repeating: 0x61, count: 800_000)))
        try await waitFor("the binary request's bytes held") { kt.pendingBodyBytes == 800_015 }
        let squeezed = RawSocket.exchange(port: port, Array("POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\nConnection: close\r\n\r\n".utf8) + keys.prefix(248_562))
        XCTAssertEqual(RawHTTPResponse(squeezed)?.status, 503, String(decoding: squeezed.prefix(200), as: UTF8.self))
        close(binary)
        try await waitFor("the binary request's bytes given back") { kt.pendingBodyBytes == 0 }

        // A declared length over the body limit: 413 from the head, before any of the body.
        let declared = RawSocket.exchange(port: port, Array("POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Length: \(2 << 20)\r\n\r\n".utf8))
        XCTAssertEqual(RawHTTPResponse(declared)?.status, 413, String(decoding: declared.prefix(200), as: UTF8.self))
    }

    /// What a body's parse builds is held against the same budget while it runs, estimated
    /// from its lines: a get_bulk of many short keys whose parse could never fit is refused
    /// 413 (counted as a bad request), one that fits is answered and gives the budget back.
    /// (Eight 30 MB get_bulks of short keys took a node from 40 MB to 680 MB, unheld.)
    func testABodysParseIsHeldAgainstTheBudget() async throws {
        let (kt, port) = try await serverWithAOneMiBBudget("kt-parse")
        func getBulk(_ lines: Int, pad: Int = 0) -> [UInt8] {
            var body = [UInt8]()
            for i in 0..<lines { body += Array("_k\(String(repeating: "p", count: pad))\(i)\t\n".utf8) }
            return Array("POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Type: text/tab-separated-values\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body
        }
        // 10,000 keys: 89 KB of body, over 1 MiB parsed.
        let refused = RawSocket.exchange(port: port, getBulk(10_000))
        XCTAssertEqual(RawHTTPResponse(refused)?.status, 413, String(decoding: refused.prefix(300), as: UTF8.self))
        XCTAssertTrue(String(decoding: refused, as: UTF8.self).contains("--kt-max-pending-bytes"), String(decoding: refused.prefix(300), as: UTF8.self))
        // A write procedure is refused by its name (501), its body not parsed nor held for a
        // parse: the same 10,000 lines as a set_bulk.
        let write = RawSocket.exchange(port: port, Array(String(decoding: getBulk(10_000), as: UTF8.self).replacingOccurrences(of: "/rpc/get_bulk", with: "/rpc/set_bulk").utf8))
        XCTAssertEqual(RawHTTPResponse(write)?.status, 501, String(decoding: write.prefix(300), as: UTF8.self))
        XCTAssertTrue(String(decoding: write, as: UTF8.self).contains("read-only"), String(decoding: write.prefix(300), as: UTF8.self))
        // 1,000 keys fit; the budget is given back after the answer, also for a body parsed
        // off the event loop (2,500 keys of 33 bytes or more: over 64 KiB).
        for (lines, pad) in [(1_000, 0), (2_500, 30)] {
            let answered = RawSocket.exchange(port: port, getBulk(lines, pad: pad))
            XCTAssertEqual(RawHTTPResponse(answered)?.status, 200, String(decoding: answered.prefix(300), as: UTF8.self))
            try await waitFor("the budget given back") { kt.pendingBodyBytes == 0 }
        }
    }

    /// A binary get_bulk holds its bytes and what answering it builds (`keyBytes` a key)
    /// against the port's budget until its answer is written, not only while it arrives:
    /// held only while arriving, requests of millions of short keys made a node hold
    /// gigabytes of parsed keys. One that could never fit is refused with KT's error reply.
    func testABinaryGetBulkHoldsTheBudgetUntilItsAnswerIsTaken() async throws {
        let replies = ReplyMemory(limit: 256 << 20)
        let (kt, port) = try await serverWithAOneMiBBudget("kt-bin-hold", replies: replies) { store in
            _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1, operations: (0..<2).map {
                .set(key: Array("v\($0)".utf8), value: [UInt8](repeating: 0x61 + UInt8($0), count: 8 << 20), expiry: nil)
            })
        }
        // Two values of 8 MiB and 1,000 missing keys, the client reading nothing: the
        // reply (16 MiB, more than the sockets take) waits, and the request stays held.
        var keys = (0..<2).map { KTBinaryKey(db: 0, key: Array("v\($0)".utf8)) }
        keys += (0..<1000).map { KTBinaryKey(db: 0, key: Array("missing\($0)".utf8)) }
        let request = KTBinaryRequest.getBulk(flags: 0, keys: keys).encoded()
        let held = request.count + keys.count * KTBinaryReadDecoder.keyBytes
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(fd) }
        XCTAssertTrue(sendAll(fd, request))
        try await waitFor("the reply written, not taken") { replies.inUse >= 16 << 20 }
        XCTAssertEqual(kt.pendingBodyBytes, held, "held until the answer is taken")
        // Read: the answer is whole, then everything is given back.
        let answer = readUntilClosed(fd, atMost: 5 + 2 * (18 + 2 + (8 << 20)))
        var buffer = ByteBuffer(bytes: answer)
        guard case let .getBulk(records)? = try KTBinaryResponseDecoder.next(&buffer) else { return XCTFail("no get_bulk reply: \(answer.prefix(16))") }
        XCTAssertEqual(records.map(\.key), [Array("v0".utf8), Array("v1".utf8)])
        XCTAssertEqual(records.map(\.value.count), [8 << 20, 8 << 20])
        try await waitFor("the budgets given back") { kt.pendingBodyBytes == 0 && replies.inUse == 0 }

        // 30,000 one-byte keys: 210 KB sent, over 1 MiB to answer: refused with 0xBF.
        let many = KTBinaryRequest.getBulk(flags: 0, keys: (0..<30_000).map { KTBinaryKey(db: 0, key: [UInt8(truncatingIfNeeded: $0)]) }).encoded()
        XCTAssertEqual(RawSocket.exchange(port: port, many), [KTBinaryMagic.error])
        try await waitFor("the refused request's bytes given back") { kt.pendingBodyBytes == 0 }
    }

    /// A get_bulk naming large values in a small body (answered inline on the event loop
    /// while its reply is small) is answered off the loop once its reply grows, whole, and
    /// holds the reply budget until its client has taken it.
    func testAnHTTPGetBulkOfLargeValuesIsAnsweredWhole() async throws {
        let replies = ReplyMemory(limit: 256 << 20)
        let (_, port) = try await serverWithAOneMiBBudget("kt-http-large", replies: replies) { store in
            _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1, operations: (0..<3).map {
                .set(key: Array("v\($0)".utf8), value: [UInt8](repeating: 0x61 + UInt8($0), count: 100_000), expiry: nil)
            })
        }
        let body = "_v0\t\n_v1\t\n_v2\t\n_missing\t\n"
        let answer = RawSocket.exchange(port: port, Array("POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Type: text/tab-separated-values\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
        let reply = try XCTUnwrap(RawHTTPResponse(answer))
        XCTAssertEqual(reply.status, 200)
        var found: [String: Int] = [:]
        for line in reply.body.split(separator: UInt8(ascii: "\n")) {
            let columns = line.split(separator: UInt8(ascii: "\t"), omittingEmptySubsequences: false)
            found[String(decoding: columns[0], as: UTF8.self)] = columns.count > 1 ? columns[1].count : -1
        }
        XCTAssertEqual(found, ["_v0": 100_000, "_v1": 100_000, "_v2": 100_000, "num": 1], "\(found)")
        try await waitFor("the reply budget given back") { replies.inUse == 0 }
    }

    /// A KT read port on an empty store, each body and all of them together held to 1 MiB;
    /// stopped at the test's end.
    /// A binary request refused 0xBF for the budget gives its bytes back as its connection
    /// starts to linger (`LingeringClose`), not when the linger ends: a client that keeps
    /// sending a byte now and then would otherwise hold the port's budget for 30 s, every
    /// other `get_bulk` and KT HTTP body refused meanwhile.
    func testARefusedBinaryRequestGivesTheBudgetBackAsItsConnectionLingers() async throws {
        let (kt, port) = try await serverWithAOneMiBBudget("kt-linger-budget")
        let a = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(a) }
        // A get_bulk announcing one key of 8 MiB, 1.5 MiB of it sent: past the 1 MiB budget.
        let head: [UInt8] = [0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0] + withUnsafeBytes(of: UInt32(8 << 20).bigEndian, Array.init)
        XCTAssertTrue(sendAll(a, head + [UInt8](repeating: 0x79, count: 3 << 19)))
        XCTAssertEqual(readUntilClosed(a, atMost: 1), [KTBinaryMagic.error])
        // It lingers while its client keeps sending (a byte every 0.2 s: never 2 s quiet).
        let trickle = Task.detached {
            while !Task.isCancelled {
                var byte: UInt8 = 0x7A
                guard send(a, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { return }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        defer { trickle.cancel() }
        try await waitFor("the refused request's bytes given back while its connection lingers", timeout: .seconds(10)) {
            kt.pendingBodyBytes == 0
        }
        // Another client's get_bulk of 200 KB is answered meanwhile (then a set_bulk, refused, closes it).
        let keys = (0..<100).map { KTBinaryKey(db: 0, key: Array(String(format: "k%05d", $0).utf8) + [UInt8](repeating: 0x78, count: 2000)) }
        let answered = RawSocket.exchange(port: port, KTBinaryRequest.getBulk(flags: 0, keys: keys).encoded() + KTBinaryRequest.setBulk(flags: 0, records: []).encoded())
        XCTAssertEqual(answered, KTBinaryResponse.getBulk(records: []).encoded() + [KTBinaryMagic.error])
    }

    private func serverWithAOneMiBBudget(_ name: String, replies: ReplyMemory = ReplyMemory(limit: ReplyMemory.defaultLimit),
                                         _ fill: (Store) async throws -> Void = { _ in }) async throws -> (KTHTTPReadServer, Int) {
        let tmp = try Harness.tempDir(name)
        addTeardownBlock { try? FileManager.default.removeItem(at: tmp) }
        let store = try Store(directory: tmp.appendingPathComponent("data").path, mapSize: 64 << 20)
        try await fill(store)
        var logger = Logger(label: "reads-test")
        logger.logLevel = .error
        var configuration = KTHTTPReadServer.Configuration(maxBodyBytes: 1 << 20, maxPendingBytes: 1 << 20)
        configuration.replyMemory = replies
        let kt = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                  configuration: configuration)
        let running = try await InProcessServices([kt], logger: logger)
        addTeardownBlock { try await running.stop() }
        return (kt, try await kt.listener.port())
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    /// What `fd` reads until its peer closes it, or `atMost` bytes have come.
    private func readUntilClosed(_ fd: Int32, atMost: Int = .max) -> [UInt8] {
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < atMost {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, atMost - out.count), 0) }
            if n <= 0 { return out }
            out += buf[0..<n]
        }
        return out
    }
}
