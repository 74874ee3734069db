import Foundation
import QSClient
import QSTesting
import XCTest

/// What every daemon does the same way: SIGHUP never stops it, one process per data
/// directory, bind errors name their flag, `--version` and `qs_build_info`.
final class DaemonBasicsTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("daemon-basics")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testSIGHUPKeepsEveryDaemonRunning() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--log-format", "text"])
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp)
        let mirrorTarget = try RootNode(data: tmp.appendingPathComponent("mirror"), logDir: tmp)
        let ktBridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                        "--admin", "127.0.0.1:0", "--log-format", "text"], logDir: tmp, ready: true)
        let qsBridge = try DaemonProcess("qsqsbridge", ["--source", "qs://\(root.address)", "--root", mirrorTarget.address,
                                                        "--admin", "127.0.0.1:0", "--log-format", "text"], logDir: tmp, ready: true)
        let daemons = [kt.daemon, root.daemon, replica.daemon, ktBridge, qsBridge]
        for d in daemons { kill(d.pid, SIGHUP) }
        for d in daemons {
            try await waitFor("\(d.name) to log that it has nothing to reload", timeout: .seconds(10)) {
                d.log.contains("SIGHUP: nothing to reload")
            }
            XCTAssertTrue(d.isRunning, "\(d.name) exited on SIGHUP:\n\(d.log)")
        }
        // And they still serve, then stop cleanly.
        XCTAssertEqual(httpGet(port: root.adminPort, path: "/healthz")?.status, 200)
        for d in [ktBridge, qsBridge, replica.daemon, mirrorTarget.daemon, root.daemon, kt.daemon] {
            XCTAssertEqual(try d.stop(), 0, "\(d.name):\n\(d.log)")
        }
    }

    func testASecondNodeOnTheSameDataDirectoryFailsAtOnce() async throws {
        let data = tmp.appendingPathComponent("shared")
        let first = try RootNode(data: data, logDir: tmp)
        let second = try DaemonProcess("qsnode", ["--role", "root", "--data", data.path, "--listen", "127.0.0.1:0", "--log-format", "text"],
                                       logDir: tmp)
        try await waitFor("the second qsnode to exit", timeout: .seconds(10)) { !second.isRunning }
        second.process.waitUntilExit()
        XCTAssertEqual(second.process.terminationStatus, 1)
        XCTAssertTrue(second.log.contains("the data directory \(data.path) is in use by process \(first.daemon.pid)"), second.log)
        XCTAssertTrue(first.daemon.isRunning)
    }

    /// An address another process holds fails the start before anything is made: no store
    /// for a root, no snapshot downloaded for an empty replica, no write to a bridge's root.
    func testABindErrorNamesTheFlagAndTheAddressBeforeAnythingIsMade() async throws {
        let socket = tmp.appendingPathComponent("first.sock").path
        let first = try RootNode(data: tmp.appendingPathComponent("a"), logDir: tmp, extraArgs: ["--unix", socket])
        let put = try Harness.run("qsctl", ["--node", first.address, "put", "k", "v"])
        XCTAssertEqual(put.status, 0, String(decoding: put.stderr, as: UTF8.self))
        let taken = "127.0.0.1:\(first.adminPort)"
        let cases: [(flag: String, binary: String, args: [String])] = [
            ("--listen", "qsnode", ["--role", "root", "--listen", first.address]),
            ("--admin", "qsnode", ["--role", "root", "--listen", "127.0.0.1:0", "--admin", taken]),
            ("--memcached", "qsnode", ["--role", "root", "--listen", "127.0.0.1:0", "--memcached", taken]),
            ("--kt-http-unix", "qsnode", ["--role", "root", "--listen", "127.0.0.1:0", "--kt-http-unix", socket]),
            ("--listen", "qsnode", ["--role", "replica", "--upstream", first.address, "--listen", taken]),
            ("--admin", "qsktbridge", ["--root", first.address, "--source", "capture:\(try KTFixture("basic").stream.path)",
                                       "--source-id", "never-written", "--admin", taken]),
        ]
        for (i, c) in cases.enumerated() {
            let data = tmp.appendingPathComponent("b-\(i)")
            let r = try Harness.run(c.binary, (c.binary == "qsnode" ? ["--data", data.path] : []) + ["--log-format", "text"] + c.args)
            let err = String(decoding: r.stderr, as: UTF8.self)
            XCTAssertEqual(r.status, 1, "\(c): \(err)")
            XCTAssertTrue(err.contains("Error: \(c.flag) "), "\(c): \(err)")
            XCTAssertTrue(err.contains("cannot listen: Address already in use;"), "\(c): \(err)")
            XCTAssertFalse(err.contains("bind(descriptor"), err)
            XCTAssertFalse(FileManager.default.fileExists(atPath: data.path), "\(c): the data directory was made")
        }
        // An address from the environment is named with its variable.
        let fromEnv = try Harness.run("qsnode", ["--role", "root", "--data", tmp.appendingPathComponent("env").path], env: ["QS_LISTEN": first.address])
        XCTAssertEqual(fromEnv.status, 1)
        XCTAssertTrue(String(decoding: fromEnv.stderr, as: UTF8.self).contains("--listen (from QS_LISTEN) \(first.address): cannot listen"),
                      String(decoding: fromEnv.stderr, as: UTF8.self))
        // One address on two flags of one daemon: named as such (it read as "another process").
        for (args, flags) in [(["--listen", "127.0.0.1:47990", "--admin", "127.0.0.1:47990"], "--listen 127.0.0.1:47990 and --admin 127.0.0.1:47990"),
                              (["--listen", "127.0.0.1:0", "--unix", socket + ".2", "--kt-http-unix", socket + ".2"], "--unix unix:\(socket).2 and --kt-http-unix")] {
            let data = tmp.appendingPathComponent("shared-\(args[1])")
            let r = try Harness.run("qsnode", ["--role", "root", "--data", data.path] + args)
            let err = String(decoding: r.stderr, as: UTF8.self)
            XCTAssertEqual(r.status, 64, err)
            XCTAssertTrue(err.contains("\(flags)") && err.contains("are one address: give each listener its own"), err)
            XCTAssertFalse(FileManager.default.fileExists(atPath: data.path), err)
        }
        XCTAssertEqual(first.metric("qs_snapshots_served_total"), 0, "no snapshot was taken for the replica")
        let c = try await QSClient.connect(host: "127.0.0.1", port: first.port)
        let checkpoint = try await c.checkpoint(sourceID: "never-written")
        XCTAssertNil(checkpoint, "the bridge wrote nothing")
        await c.close()
        XCTAssertTrue(first.daemon.isRunning)
        XCTAssertTrue(FileManager.default.fileExists(atPath: socket), "the first node's socket was left in place")
        let again = try Harness.run("qsctl", ["--node", "unix:\(socket)", "get", "k"])
        XCTAssertEqual(again.status, 0, "the first node still answers on its socket: \(String(decoding: again.stderr, as: UTF8.self))")
    }

    func testEveryBinaryPrintsItsVersionAndDaemonsExportIt() async throws {
        var versions = Set<String>()
        for binary in ["qsnode", "qsktbridge", "qsqsbridge", "qsctl", "fakekt", "qsbench"] {
            let r = try Harness.run(binary, ["--version"])
            XCTAssertEqual(r.status, 0, binary)
            versions.insert(String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        XCTAssertEqual(versions.count, 1, "one version string: \(versions)")
        let version = try XCTUnwrap(versions.first)
        XCTAssertFalse(version.isEmpty)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--log-format", "text"])
        let metrics = try XCTUnwrap(httpGet(port: root.adminPort, path: "/metrics")).body
        XCTAssertTrue(metrics.contains("qs_build_info{version=\"\(version)\"} 1"), metrics)
        XCTAssertTrue(root.daemon.log.contains("version=\(version)"), root.daemon.log)
    }

    /// The admin port answers a pipelining peer only as fast as it reads: 3,000 `GET
    /// /metrics` sent at once by a peer that reads nothing cost the node a few answers, not
    /// 3,000 of them in memory (one such connection took a node to 7.7 GB in 20 s), and the
    /// peer then gets its answers as it reads.
    func testTheAdminPortReadsNoFasterThanAPipeliningPeerTakesItsAnswers() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let answer = try XCTUnwrap(httpGet(port: root.adminPort, path: "/metrics")).body.utf8.count
        func rssAnon() -> Int {
            let status = (try? String(contentsOfFile: "/proc/\(root.daemon.pid)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("RssAnon:") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) << 10
        }
        let before = rssAnon()
        let fd = try XCTUnwrap(Harness.connectLoopback(port: root.adminPort))
        defer { close(fd) }
        var small: Int32 = 4 << 10
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let requests = Array([[UInt8]](repeating: Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8), count: 3_000).joined())
        var sent = 0
        while sent < requests.count {
            let n = requests[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { break }
            sent += n
        }
        XCTAssertEqual(sent, requests.count)
        // Answered into memory, the 3,000 would hold 3,000 × the answer within a second or
        // two; held back, the node's memory does not move by a tenth of that.
        let grew = Harness.waitUntil(timeout: .seconds(3)) { rssAnon() - before > 300 * answer }
        XCTAssertFalse(grew, "RssAnon grew by \(rssAnon() - before) bytes (answers of \(answer) bytes)")
        XCTAssertEqual(httpGet(port: root.adminPort, path: "/healthz")?.status, 200, "the node answers others meanwhile")
        // The peer reads: the answers come, in order.
        var large: Int32 = 1 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &large, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var answers = 0, tail = [UInt8]()
        let marker = Array("HTTP/1.1 200 OK".utf8)
        while answers < 20 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            let chunk = tail + buffer[0..<n]
            var i = chunk.startIndex
            while let r = chunk[i...].firstRange(of: marker) { answers += 1; i = r.upperBound }
            tail = Array(chunk.suffix(marker.count - 1))
        }
        XCTAssertGreaterThanOrEqual(answers, 20)
    }

    func testMemcachedServesWholeValuesByDefaultAndLogsTheMode() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp,
                                extraArgs: ["--memcached", "127.0.0.1:0", "--log-format", "text"])
        XCTAssertTrue(root.daemon.log.contains("memcached-flags-in-value=false"), root.daemon.log)
        // A value written without memcached flags (qsctl put, KT's HTTP API) is served whole.
        let put = try Harness.run("qsctl", ["--node", root.address, "put", "greeting", "hello"])
        XCTAssertEqual(put.status, 0, String(decoding: put.stderr, as: UTF8.self))
        let fd = try XCTUnwrap(Harness.connectLoopback(port: try root.daemon.port("memcached")))
        defer { close(fd) }
        let request = Array("get greeting\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var reply = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 512)
        while !reply.suffix(5).elementsEqual(Array("END\r\n".utf8)) {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            reply += buffer[0..<n]
        }
        XCTAssertEqual(String(decoding: reply, as: UTF8.self), "VALUE greeting 0 5\r\nhello\r\nEND\r\n")
    }
}
