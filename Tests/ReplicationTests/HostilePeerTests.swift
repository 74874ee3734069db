import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// Hostile or broken peers are contained: idle and half-sent connections are closed after
/// --idle-timeout, caps refuse what is past them (counted), a flood of idle connections
/// neither starves a real client nor burns the CPU, and a peer that never reads a
/// snapshot does not hold the snapshot queue.
final class HostilePeerTests: XCTestCase {
    var tmp: URL!
    var sockets: [Int32] = []

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("hostile")
    }

    override func tearDownWithError() throws {
        for fd in sockets { close(fd) }
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A TCP connection to 127.0.0.1:`port` from `source` (another loopback address is
    /// another peer), with a small receive buffer; nil when refused.
    func connect(port: Int, from source: String, receiveBuffer: Int32? = nil) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &local.sin_addr)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
        let ok = withUnsafePointer(to: &local) { l in
            l.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        } && withUnsafePointer(to: &remote) { r in
            r.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard ok else { close(fd); return nil }
        sockets.append(fd)
        return fd
    }

    /// Whether the server closed `fd` (a read returns 0 or an error, without waiting).
    func isClosedByServer(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    /// CPU seconds (user + system) the process has used, from /proc.
    func cpuSeconds(_ pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func testAFloodOfIdleConnectionsIsCappedCountedAndClosedWhileARealClientIsServed() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp,
                                extraArgs: ["--idle-timeout", "2s", "--max-connections", "500", "--max-connections-per-peer", "200"])
        // 2,000 connections that never send a byte, from two other peers: each holds at most
        // 200, so 100 places stay for everyone else.
        var opened = 0
        for i in 0..<2_000 where connect(port: root.port, from: i % 2 == 0 ? "127.0.0.2" : "127.0.0.3") != nil { opened += 1 }
        let cpuBefore = try XCTUnwrap(cpuSeconds(root.daemon.pid))
        let flooded = ContinuousClock.now
        try await waitFor("the refusals counted", timeout: .seconds(60), pollEvery: .milliseconds(100)) {
            let perPeer = root.metric("qs_connections_refused_total{listener=\"write\",reason=\"per-peer\"}") ?? 0
            let total = root.metric("qs_connections_refused_total{listener=\"write\",reason=\"max-connections\"}") ?? 0
            // At most 400 held at once; the idle ones are closed every 2 s while the flood is
            // accepted, which frees places (more of them on a slow machine), so the count of
            // refusals depends on the pace: hundreds of them prove the caps.
            return perPeer + total >= 200
        }
        XCTAssertLessThanOrEqual(root.metric("qs_connections_open{listener=\"write\"}") ?? .infinity, 400)

        // A real client from its own address is served at once, beside the flood.
        let started = ContinuousClock.now
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await client.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "t")
        let served = ContinuousClock.now - started
        XCTAssertLessThan(served, .seconds(2), "a real client served in \(served)")

        // The idle ones are closed after --idle-timeout; the process stays far from a busy core.
        try await waitFor("the idle connections closed", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            (root.metric("qs_connections_open{listener=\"write\"}") ?? .infinity) <= 1
        }
        let cpu = try XCTUnwrap(cpuSeconds(root.daemon.pid)) - cpuBefore
        let wall = (ContinuousClock.now - flooded).seconds
        print("flood: \(opened) connections opened, CPU \(cpu) s over \(wall) s, real client served in \(served)")
        // Half a core; under ThreadSanitizer, whose instrumented root does the same work
        // several times slower, below nine tenths of one: a busy loop (the bug this bounds)
        // still holds a whole core.
        let bound = Harness.sanitizer == nil ? 0.5 : 0.9
        XCTAssertLessThan(cpu / wall, bound, "the root used \(cpu) s of CPU in \(wall) s, more than \(bound) of a core"
                          + (Harness.sanitizer.map { " (bound widened from 0.5 under the \($0) sanitizer)" } ?? ""))
        XCTAssertTrue(sockets.prefix(10).allSatisfy(isClosedByServer))
        // The idle timeout closed the real client's quiet connection too; a new one is served.
        await client.close()
        let next = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let head = try await next.head()
        XCTAssertEqual(head.index, 1)
        await next.close()
    }

    /// What the server sent on `fd` until it closed it; nil when it did not close within `timeout`.
    func readUntilClosed(_ fd: Int32, timeout: Duration = .seconds(10)) async throws -> [UInt8]? {
        var got = [UInt8]()
        var closed = false
        try? await waitFor("the server closed the connection", timeout: timeout, pollEvery: .milliseconds(20)) {
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
                if n > 0 { got += chunk[..<n]; continue }
                closed = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)
                return closed
            }
        }
        return closed ? got : nil
    }

    /// A frame up to --max-frame-bytes (64 MiB) is held in memory until it is whole: any
    /// client could make a node hold that much per connection before its token was looked
    /// at. Past 1 MiB a frame must be a write carrying the write token, checked as soon as
    /// the token arrives; it is refused before the rest is read.
    func testAFrameOver1MiBWithoutTheWriteTokenIsRefusedBeforeItsBodyArrives() async throws {
        let token = Array("0123456789abcdef-write".utf8)
        let tokenFile = tmp.appendingPathComponent("write-token")
        try Data(token).write(to: tokenFile)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--write-token-file", tokenFile.path])
        func header(_ length: Int, _ type: UInt8) -> [UInt8] { withUnsafeBytes(of: UInt32(length).bigEndian, Array.init) + [type] }

        // A batch announcing 32 MiB with a wrong token of the right length: refused, named,
        // once the token is in (the 32 MiB never come).
        let wrong = try XCTUnwrap(connect(port: root.port, from: "127.0.0.2"))
        let forged = header(32 << 20, 0x01) + withUnsafeBytes(of: UInt32(token.count).bigEndian, Array.init) + [UInt8](repeating: 0x41, count: token.count)
        _ = forged.withUnsafeBytes { send(wrong, $0.baseAddress, $0.count, 0) }
        let refusal = try await readUntilClosed(wrong)
        let text = String(decoding: try XCTUnwrap(refusal, "no answer to the first bytes of a 32 MiB frame without the token"), as: UTF8.self)
        XCTAssertTrue(text.contains("wrong write token"), text)
        XCTAssertEqual(root.metric("qs_auth_failures_total{interface=\"write\"}"), 1)
        // A token of another length (here over 4 KiB) is refused before it is awaited.
        let long = try XCTUnwrap(connect(port: root.port, from: "127.0.0.4"))
        _ = (header(32 << 20, 0x01) + withUnsafeBytes(of: UInt32(5000).bigEndian, Array.init)).withUnsafeBytes { send(long, $0.baseAddress, $0.count, 0) }
        let longAnswer = try await readUntilClosed(long)
        XCTAssertTrue(String(decoding: try XCTUnwrap(longAnswer), as: UTF8.self).contains("wrong write token"))

        // A get announcing 2 MiB (a key that long): refused after its type byte.
        let get = try XCTUnwrap(connect(port: root.port, from: "127.0.0.3"))
        _ = header(2 << 20, 0x05).withUnsafeBytes { send(get, $0.baseAddress, $0.count, 0) }
        let answer = try await readUntilClosed(get)
        let notWrite = String(decoding: try XCTUnwrap(answer), as: UTF8.self)
        XCTAssertTrue(notWrite.contains("is not a write"), notWrite)
        XCTAssertEqual(root.metric("qs_bad_frames_total"), 1)
        XCTAssertEqual(root.metric("qs_auth_failures_total{interface=\"write\"}"), 2)

        // A 2 MiB batch with the token is taken.
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port, token: token)
        let big = [UInt8](repeating: 0x62, count: 2 << 20)
        _ = try await client.write([.set(key: Array("big".utf8), value: big, expiry: nil)], sourceID: "t")
        let back = try await client.get(Array("big".utf8))
        XCTAssertEqual(back?.value.count, big.count)
        await client.close()

        // A token over 4 KiB (the file sets no upper bound) admits large writes as well.
        let longToken = [UInt8](repeating: 0x74, count: 5068)
        let longFile = tmp.appendingPathComponent("long-token")
        try Data(longToken).write(to: longFile)
        let other = try RootNode(data: tmp.appendingPathComponent("other"), logDir: tmp, extraArgs: ["--write-token-file", longFile.path])
        let oc = try await QSClient.connect(host: "127.0.0.1", port: other.port, token: longToken)
        _ = try await oc.write([.set(key: Array("big".utf8), value: big, expiry: nil)], sourceID: "t")
        await oc.close()
    }

    func testAConnectionThatNeverSendsAWholeRequestIsClosedAfterTheIdleTimeout() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--idle-timeout", "1s"])
        let fd = try XCTUnwrap(connect(port: root.port, from: "127.0.0.2"))
        let half: [UInt8] = [0, 0, 0, 9, 1]  // a frame header announcing 9 bytes, then nothing
        _ = half.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        let start = ContinuousClock.now
        try await waitFor("the half-sent connection closed", timeout: .seconds(5), pollEvery: .milliseconds(50)) { self.isClosedByServer(fd) }
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(900))
    }

    func testAPeerTricklingOneByteAtATimeIsClosedOneIdleTimeoutAfterItsFirstByte() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--idle-timeout", "1s"])
        let fd = try XCTUnwrap(connect(port: root.port, from: "127.0.0.2"))
        // A frame announcing 4,096 bytes, sent a byte every 300 ms: each byte restarts the idle
        // timer, so only the request deadline can end it.
        let frame: [UInt8] = [0, 0, 16, 0, 1] + [UInt8](repeating: 0, count: 4_091)
        let start = ContinuousClock.now
        var sent = 0
        while sent < frame.count, !isClosedByServer(fd), ContinuousClock.now - start < .seconds(10) {
            guard send(fd, [frame[sent]], 1, Int32(MSG_NOSIGNAL)) == 1 else { break }
            sent += 1
            try await Task.sleep(for: .milliseconds(300))
        }
        let held = ContinuousClock.now - start
        XCTAssertTrue(isClosedByServer(fd), "the trickling peer still holds its connection after \(held) (\(sent) bytes)")
        XCTAssertGreaterThanOrEqual(held, .milliseconds(900))
        // The frame would take 20 minutes at this pace and each byte restarts the idle timer,
        // so a close at all is the deadline's; the bound leaves room for a loaded machine
        // (5.0 s seen with several builds beside the tests), not for the idle timer.
        XCTAssertLessThan(held, .seconds(8), "closed about one idle timeout after the first byte, not later")
        try await waitFor("the close counted", timeout: .seconds(5), pollEvery: .milliseconds(50)) {
            root.metric("qs_connections_closed_total{listener=\"write\",reason=\"request-timeout\"}") == 1
        }
        XCTAssertTrue(root.daemon.log.contains("no whole request within --idle-timeout of its first byte"), root.daemon.log)

        // A client whose requests are answered keeps its connection past the timeout.
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let busy = ContinuousClock.now
        while ContinuousClock.now - busy < .milliseconds(2_500) {
            _ = try await client.head()
            try await Task.sleep(for: .milliseconds(300))
        }
        await client.close()
        XCTAssertEqual(root.metric("qs_connections_closed_total{listener=\"write\",reason=\"request-timeout\"}"), 1)
        XCTAssertEqual(root.metric("qs_connections_closed_total{listener=\"write\",reason=\"idle-timeout\"}"), 0)
    }

    func testAPeerThatNeverReadsASnapshotDoesNotHoldTheQueue() async throws {
        // 4 s, the time a request has to be answered as well: one of the 1 MiB writes below
        // took over 2 s on a loaded machine and over 4 s under ThreadSanitizer (an
        // instrumented root), each closing the writer's connection, so 4 s, and 6 s there.
        let idle = Harness.sanitizer == nil ? 4 : 6
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--idle-timeout", "\(idle)s"])
        // Enough data that a snapshot does not fit the socket buffers.
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        // Values that do not compress (RocksDB compresses its blocks), so the snapshot is
        // far larger than the socket buffers on either engine.
        let value = incompressibleBytes(1 << 20)
        for i in 0..<24 { _ = try await client.write([.set(key: Array("big\(i)".utf8), value: value + [UInt8(i)], expiry: nil)], sourceID: "t") }
        let head = try await client.head()
        await client.close()

        let stuck = try XCTUnwrap(connect(port: root.port, from: "127.0.0.2", receiveBuffer: 4096))
        let request = Request.snapshot(token: []).frame()
        let bytes = Self.bigEndian32(UInt32(1 + request.payload.count)) + [request.type] + request.payload
        _ = bytes.withUnsafeBytes { send(stuck, $0.baseAddress, $0.count, 0) }
        try await waitFor("the stuck snapshot started", timeout: .seconds(10), pollEvery: .milliseconds(50)) { root.daemon.log.contains("snapshot started") }

        // A replica asking for its own snapshot gets it once the stuck peer is cut off.
        let started = ContinuousClock.now
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp)
        try await waitFor("the replica bootstrapped", timeout: .seconds(30 + 2 * idle), pollEvery: .milliseconds(100)) {
            replica.metric("qs_replica_head_index") == Double(head.index)
        }
        print("replica bootstrapped \(ContinuousClock.now - started) after a stuck snapshot reader")
        XCTAssertTrue(root.daemon.log.contains("took none of the bytes sent to it"), root.daemon.log)
    }

    /// Subscribers that never read cost the upstream a frame each (at most 1 MiB of
    /// entries, in the socket's outbound buffer), not the log read ahead: 20 of them on a
    /// root with 24 MiB of log. Before, each held ~8.5 MB (4 MiB frames, copied twice), so
    /// a few hundred silent subscribers took a root to the OOM killer.
    func testSubscribersThatNeverReadCostAFrameEach() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let value = incompressibleBytes(256 << 10)
        for i in 0..<96 { _ = try await client.write([.set(key: Array("big\(i)".utf8), value: value + [UInt8(i)], expiry: nil)], sourceID: "t") }
        await client.close()
        func rss() throws -> Int {
            let status = try String(contentsOfFile: "/proc/\(root.daemon.pid)/status", encoding: .utf8)
            // Its own memory: the log's pages it read are the file's, mapped (RssFile).
            let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("RssAnon:") })
            return try XCTUnwrap(Int(line.split(separator: " ")[1])) * 1024
        }
        let before = try rss()
        let request = Request.subscribe(fromIndex: 0, hash: [UInt8](repeating: 0, count: 32), token: []).frame()
        let bytes = Self.bigEndian32(UInt32(1 + request.payload.count)) + [request.type] + request.payload
        for _ in 0..<20 {
            let fd = try XCTUnwrap(connect(port: root.port, from: "127.0.0.2", receiveBuffer: 4096))
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        }
        try await waitFor("20 subscribers streaming", timeout: .seconds(20), pollEvery: .milliseconds(50)) {
            root.metric("qs_replication_subscribers") == 20
        }
        // Each has had its first frame made and stuck in its socket: the streamed count
        // stands still once every subscriber is blocked.
        var streamed = -1.0
        try await waitFor("every subscriber blocked on its socket", timeout: .seconds(20), pollEvery: .milliseconds(500)) {
            let now = root.metric("qs_replication_entries_sent_total") ?? 0
            defer { streamed = now }
            return now == streamed
        }
        let grown = try rss() - before
        XCTAssertLessThan(grown, 80 << 20, "20 silent subscribers cost the root \(grown >> 20) MiB")
    }

    static func bigEndian32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
}
