import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import QSWire
import XCTest

/// End-to-end tests against real `qsnode` processes on loopback.
final class RootNodeTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("rootnode")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func client(_ node: RootNode, token: [UInt8] = []) async throws -> QSClient {
        try await QSClient.connect(host: "127.0.0.1", port: node.port, token: token)
    }

    /// Sends raw bytes on a fresh socket and reads until the node closes it.
    func rawExchange(port: Int, _ bytes: [UInt8]) -> [UInt8] {
        guard let fd = Harness.connectLoopback(port: port) else { return [] }
        defer { close(fd) }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        shutdown(fd, Int32(SHUT_WR))
        return Harness.readToEnd(fd)
    }

    func errorCode(in reply: [UInt8]) -> UInt16? {
        guard reply.count >= 7, reply[4] == 0xEF else { return nil }
        return UInt16(reply[5]) << 8 | UInt16(reply[6])
    }

    /// A peer that writes a whole frame over the limit (24 MiB of it) before it reads gets the
    /// refusal that says why: the node reads and drops the rest after answering, its output
    /// shut, until the peer's end (`LingeringClose`). Closed at once, the bytes still coming
    /// were answered with a reset and the peer's write failed before it read a byte.
    func testAPeerThatWritesAWholeFrameOverTheLimitBeforeReadingGetsTheRefusal() async throws {
        let node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp)
        let (sendError, reply) = Harness.sendWholeThenRead(port: node.port, head: [0x7F, 0x00, 0x00, 0x00, 0x01], filler: 24 << 20)
        XCTAssertNil(sendError.map { String(cString: strerror($0)) }, "the peer's write failed")
        XCTAssertEqual(errorCode(in: reply), ErrorCode.frameTooLarge.rawValue, "\(reply.prefix(100))")
        XCTAssertTrue(String(decoding: reply, as: UTF8.self).contains("exceeds the limit"), "\(reply.prefix(100))")
    }

    func testGarbageGetsAnErrorAndTheNodeKeepsServingOthers() async throws {
        let node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp)
        let c0 = try await client(node)
        _ = try await c0.write([.set(key: [1], value: [1], expiry: nil)])

        // Unknown type, truncated payload, oversized length, a length of zero, HTTP.
        XCTAssertEqual(errorCode(in: rawExchange(port: node.port, [0, 0, 0, 3, 0x7E, 1, 2])), ErrorCode.malformed.rawValue)
        XCTAssertEqual(errorCode(in: rawExchange(port: node.port, [0, 0, 0, 5, 0x01, 0, 0, 0, 9])), ErrorCode.malformed.rawValue)
        XCTAssertEqual(errorCode(in: rawExchange(port: node.port, [0x7F, 0xFF, 0xFF, 0xFF, 0x01])), ErrorCode.frameTooLarge.rawValue)
        XCTAssertEqual(errorCode(in: rawExchange(port: node.port, [0, 0, 0, 0])), ErrorCode.malformed.rawValue)
        XCTAssertEqual(errorCode(in: rawExchange(port: node.port, Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), ErrorCode.frameTooLarge.rawValue)
        // A frame cut short then EOF: counted as a bad frame too.
        _ = rawExchange(port: node.port, [0, 0, 0, 50, 0x01, 1, 2])

        XCTAssertTrue(Harness.waitUntil { node.metric("qs_bad_frames_total") == 6 }, "bad frames: \(node.metric("qs_bad_frames_total") ?? -1)")
        XCTAssertTrue(node.daemon.log.contains("bad frame"), node.daemon.log)
        XCTAssertTrue(node.daemon.log.contains("\"peer\":\"127.0.0.1:"), "log names the peer")
        // The connection opened before the garbage still works, and so do new ones.
        _ = try await c0.write([.set(key: [2], value: [2], expiry: nil)])
        let fresh = try await client(node)
        let v1 = try await fresh.get([2])?.value
        XCTAssertEqual(v1, [2])
        let v2 = try await fresh.head().index
        XCTAssertEqual(v2, 2)
        XCTAssertTrue(node.daemon.isRunning)
        await c0.close()
        await fresh.close()
        XCTAssertEqual(try node.daemon.stop(), 0)
    }

    func testWritesWithoutTheRightTokenAreRefusedCountedAndLogged() async throws {
        let tokenFile = tmp.appendingPathComponent("token")
        try "s3cret-token-0123456789\n".write(to: tokenFile, atomically: true, encoding: .utf8)
        let node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp, extraArgs: ["--write-token-file", tokenFile.path])
        for bad in [[UInt8](), Array("s3cret-token-0123456788".utf8)] {
            let c = try await client(node, token: bad)
            let r = try await c.send(.batch(.init(token: bad, sourceID: "s", expected: 0, new: 1, operations: [.set(key: [1], value: [1], expiry: nil)])))
            guard case let .error(code, message) = r else { return XCTFail("expected an error, got \(r)") }
            XCTAssertEqual(code, ErrorCode.unauthorized.rawValue)
            XCTAssertTrue(message.contains(bad.isEmpty ? "missing" : "wrong"), message)
            await c.close()
        }
        XCTAssertEqual(node.metric("qs_auth_failures_total{interface=\"write\"}"), 2)
        XCTAssertTrue(node.daemon.log.contains("write refused"))
        XCTAssertTrue(node.daemon.log.contains("\"peer\":\"127.0.0.1:"))
        let good = try await client(node, token: Array("s3cret-token-0123456789".utf8))
        let v3 = try await good.checkpoint(sourceID: "s")
        XCTAssertEqual(v3, nil, "refused writes changed nothing")
        let r = try await good.write([.set(key: [1], value: [1], expiry: nil)], sourceID: "s")
        XCTAssertEqual(r, .applied(logIndex: 1, kept: 1, dropped: 0))
        // Reads need no token.
        let reader = try await client(node)
        let v4 = try await reader.get([1])?.value
        XCTAssertEqual(v4, [1])
        await good.close()
        await reader.close()
    }

    func testAcknowledgedWritesSurviveSIGKILL() async throws {
        let data = tmp.appendingPathComponent("data")
        let node = try RootNode(data: data, logDir: tmp)
        // Several concurrent writers; collect what was acknowledged up to the kill.
        let acked = try await withThrowingTaskGroup(of: [(String, UInt64)].self) { group in
            for w in 0..<4 {
                group.addTask {
                    let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
                    var done = [(String, UInt64)]()
                    var pos: UInt64 = 0
                    while pos < 200 {
                        let r: Response
                        do {
                            r = try await c.batch(sourceID: "w\(w)", expected: pos, new: pos + 1,
                                                  operations: [.set(key: Array("w\(w)/\(pos)".utf8), value: Array(repeating: UInt8(w), count: 100), expiry: nil)])
                        } catch {
                            break  // the node was killed mid-request: not acknowledged
                        }
                        guard case .applied = r else { break }
                        pos += 1
                        done.append(("w\(w)/\(pos - 1)", pos))
                        if w == 0 && pos == 120 { kill(node.daemon.pid, SIGKILL) }
                    }
                    return done
                }
            }
            var all = [(String, UInt64)]()
            for try await part in group { all += part }
            return all
        }
        try node.daemon.stop(signal: SIGKILL)  // killed above: wait for the exit
        XCTAssertGreaterThanOrEqual(acked.count, 120)

        let restarted = try RootNode(data: data, logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: restarted.port)
        for (key, _) in acked {
            let v = try await c.get(Array(key.utf8))
            XCTAssertNotNil(v, "acknowledged write \(key) lost")
        }
        for w in 0..<4 {
            let last = acked.filter { $0.0.hasPrefix("w\(w)/") }.map(\.1).max() ?? 0
            let cp = try await c.checkpoint(sourceID: "w\(w)") ?? 0
            XCTAssertGreaterThanOrEqual(cp, last, "checkpoint of w\(w)")
            XCTAssertLessThanOrEqual(cp, last + 1, "at most the one in-flight batch beyond the acknowledged ones")
        }
        // The chain is unbroken: recompute every hash from the entries.
        let head = try await c.head()
        var previous = Head.empty.hash
        var index: UInt64 = 1
        while index <= head.index {
            let list = try await c.entries(from: index, count: 1000)
            XCTAssertFalse(list.isEmpty)
            for e in list {
                XCTAssertEqual(e.index, index)
                let h = ChainHash.next(previous: previous, entry: e.bytes)
                XCTAssertEqual(h, e.hash, "chain broken at \(index)")
                previous = h
                index += 1
            }
        }
        XCTAssertEqual(previous, head.hash)
        var total: UInt64 = 0
        for w in 0..<4 { total += try await c.checkpoint(sourceID: "w\(w)") ?? 0 }
        XCTAssertEqual(head.index, total, "one entry per applied batch")
        await c.close()
    }

    func testDataDirectoryIsAPlainLMDBEnvironment() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: the data directory is an LMDB environment")
        let data = tmp.appendingPathComponent("data")
        let node = try RootNode(data: data, logDir: tmp)
        let c = try await client(node)
        _ = try await c.write([.set(key: Array("hello".utf8), value: Array("world".utf8), expiry: nil)])
        await c.close()
        XCTAssertEqual(try node.daemon.stop(), 0)

        let list = try Harness.run("/usr/bin/mdb_dump", ["-l", data.path])
        XCTAssertEqual(list.status, 0, String(decoding: list.stderr, as: UTF8.self))
        let names = Set(String(decoding: list.stdout, as: UTF8.self).split(separator: "\n").map(String.init))
        XCTAssertEqual(names, ["kv", "log", "meta", "trail"])
        let kv = try Harness.run("/usr/bin/mdb_dump", ["-p", "-s", "kv", data.path])
        XCTAssertEqual(kv.status, 0)
        let text = String(decoding: kv.stdout, as: UTF8.self)
        XCTAssertTrue(text.contains("\\01hello"), text)  // stored key: tag byte then the key
        XCTAssertTrue(text.contains("world"), text)
        let log = try Harness.run("/usr/bin/mdb_dump", ["-s", "log", data.path])
        XCTAssertTrue(String(decoding: log.stdout, as: UTF8.self).contains(" 0000000000000001\n"))
    }

    func testUnixSocketServesTheSameProtocol() async throws {
        let sock = tmp.appendingPathComponent("qs.sock").path
        let node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp, extraArgs: ["--unix", sock])
        let c = try await QSClient.connect(unixPath: sock)
        _ = try await c.write([.set(key: [9], value: [8], expiry: nil)])
        let tcp = try await client(node)
        let v5 = try await tcp.get([9])?.value
        XCTAssertEqual(v5, [8])
        await c.close()
        await tcp.close()
    }

    func testSIGTERMWithWritesInFlightLosesNoAcknowledgedWrite() async throws {
        let data = tmp.appendingPathComponent("data")
        let node = try RootNode(data: data, logDir: tmp)
        let c = try await client(node)
        var acked = 0
        let writer = Task {
            var n = 0
            while true {
                do {
                    let r = try await c.batch(sourceID: "t", expected: UInt64(n), new: UInt64(n + 1),
                                              operations: [.set(key: Array("k\(n)".utf8), value: [1], expiry: nil)])
                    guard case .applied = r else { return n }
                    n += 1
                } catch {
                    return n
                }
            }
        }
        XCTAssertTrue(Harness.waitUntil { node.metric("qs_batches_applied_total") ?? 0 >= 20 })
        XCTAssertEqual(try node.daemon.stop(signal: SIGTERM), 0)
        acked = await writer.value
        XCTAssertTrue(node.daemon.log.contains("node stopped cleanly"))
        let again = try RootNode(data: data, logDir: tmp)
        let c2 = try await client(again)
        let cp = try await c2.checkpoint(sourceID: "t") ?? 0
        XCTAssertGreaterThanOrEqual(cp, UInt64(acked))
        for i in 0..<acked {
            let v = try await c2.get(Array("k\(i)".utf8))
            XCTAssertNotNil(v, "k\(i)")
        }
        await c2.close()
    }
}
