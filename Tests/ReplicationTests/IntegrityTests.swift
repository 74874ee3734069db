import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// Damage on a node's disk is detected and never served; a replica repairs itself once and
/// never trades its history away without an operator's command.
final class NodeIntegrityTests: XCTestCase {
    var tmp: URL!
    static let adminToken = "admin-token-0123456789abcdef"
    static let marker = "MARKER-VALUE-0123456789-abcdef"

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("integrity")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func client(_ port: Int) async throws -> QSClient {
        try await QSClient.connect(host: "127.0.0.1", port: port)
    }

    func write(_ c: QSClient, _ n: Int, prefix: String, value: (Int) -> String = { "v\($0)" }) async throws {
        for i in 0..<n {
            _ = try await c.write([.set(key: Array("\(prefix)\(i)".utf8), value: Array(value(i).utf8), expiry: nil)], sourceID: "t-\(prefix)")
        }
    }

    func waitForHead(_ port: Int, _ head: Head, timeout: Duration = .seconds(20)) async throws {
        let c = try await client(port)
        let ok = await Harness.eventually(timeout: timeout) { (try? await c.head()) == head }
        await c.close()
        XCTAssertTrue(ok, "node on \(port) never reached index \(head.index)")
    }

    func tokenFile() throws -> String {
        let url = tmp.appendingPathComponent("admin-token")
        try (Self.adminToken + "\n").write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// A replica holding `k0…k4` (`k3` is the marker), stopped, its data file damaged.
    func damagedReplica(of root: RootNode) async throws -> URL {
        let w = try await client(root.port)
        try await write(w, 5, prefix: "k") { $0 == 3 ? Self.marker : "v\($0)" }
        let data = tmp.appendingPathComponent("a")
        let a = try ReplicaNode(data: data, upstreams: [root.address], logDir: tmp)
        try await waitForHead(a.port, try await w.head())
        XCTAssertEqual(try a.daemon.stop(), 0)
        await w.close()
        XCTAssertGreaterThan(try flipByte(in: data.appendingPathComponent("data.mdb"), of: Array(Self.marker.utf8)), 0)
        return data
    }

    func testADamagedReplicaRepairsItselfFromItsUpstream() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: damage is made by flipping bytes of data.mdb")
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let data = try await damagedReplica(of: root)
        let a = try ReplicaNode(data: data, upstreams: [root.address], logDir: tmp)
        let c = try await client(a.port)
        let repaired = await Harness.eventually(timeout: .seconds(20)) {
            (try? await c.get(Array("k3".utf8)))?.value == Array(Self.marker.utf8)
        }
        XCTAssertTrue(repaired, a.daemon.log)
        XCTAssertTrue(a.daemon.log.contains("store damaged"), a.daemon.log)
        // The installed snapshot serves reads a moment before the repair is logged and counted.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { a.daemon.log.contains("repaired") }, a.daemon.log)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { a.metric("qs_replica_repairs_total") == 1 }, a.daemon.log)
        XCTAssertGreaterThanOrEqual(a.metric("qs_store_corruption_detected_total") ?? 0, 1)
        XCTAssertTrue(Harness.waitUntil { httpGet(port: a.adminPort, path: "/readyz")?.status == 200 }, a.daemon.log)
        let check = try Harness.run("qsnode", ["check", "--data", data.path])
        XCTAssertEqual(check.status, 0, String(decoding: check.stdout, as: UTF8.self))
        await c.close()
    }

    func testARepairIsTriedOnceThenTheReplicaStaysUnreadyUntilAnOperatorRebootstraps() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: damage is made by flipping bytes of data.mdb")
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let data = try await damagedReplica(of: root)
        let nowhere = try RefusingPort()
        let token = try tokenFile()
        let a = try ReplicaNode(data: data, upstreams: [nowhere.address], logDir: tmp,
                                extraArgs: ["--admin-token-file", token, "--memcached", "127.0.0.1:0"])
        // The repair fails (the upstream is unreachable) and is not tried again.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { (a.metric("qs_replica_upstreams_left_total") ?? 0) > 3 }, a.daemon.log)
        XCTAssertEqual(a.metric("qs_replica_repairs_total"), 1)
        let ready = httpGet(port: a.adminPort, path: "/readyz")
        XCTAssertEqual(ready?.status, 503)
        XCTAssertTrue(ready?.body.contains("store damaged") == true, ready?.body ?? "")
        // The damaged record is never served: the read answers an error naming it.
        let c = try await client(a.port)
        do {
            _ = try await c.get(Array("k3".utf8))
            XCTFail("a damaged record was served")
        } catch {
            XCTAssertTrue("\(error)".contains("damaged"), "\(error)")
        }
        // Asked again and again (a hot key), it is refused and counted each time, logged
        // once: readers cannot flood the log with a line a request.
        let detected = a.metric("qs_store_corruption_detected_total") ?? 0
        let fd = try XCTUnwrap(Harness.connectLoopback(port: try a.daemon.port("memcached")))
        for _ in 0..<50 {
            _ = Array("get k3\r\n".utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            var reply = [UInt8](), buffer = [UInt8](repeating: 0, count: 512)
            while reply.last != UInt8(ascii: "\n") {
                let n = recv(fd, &buffer, buffer.count, 0)
                guard n > 0 else { break }
                reply += buffer[0..<n]
            }
            XCTAssertEqual(String(decoding: reply, as: UTF8.self), "SERVER_ERROR storage error\r\n")
        }
        close(fd)
        XCTAssertEqual(a.metric("qs_store_corruption_detected_total"), detected + 50)
        XCTAssertEqual(a.daemon.log.components(separatedBy: "memcached get failed").count - 1, 1, a.daemon.log)
        // The operator's rebootstrap, with the admin token.
        let bare = try Harness.run("qsctl", ["rebootstrap", "--admin", "127.0.0.1:\(a.adminPort)", "--from", root.address])
        XCTAssertEqual(bare.status, 3, String(decoding: bare.stderr, as: UTF8.self))
        let r = try Harness.run("qsctl", ["rebootstrap", "--admin", "127.0.0.1:\(a.adminPort)", "--from", root.address,
                                          "--admin-token-file", token])
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { a.metric("qs_replica_rebootstraps_total") == 1 }, a.daemon.log)
        let served = try await c.get(Array("k3".utf8))
        XCTAssertEqual(served?.value, Array(Self.marker.utf8))
        XCTAssertTrue(a.daemon.log.contains("rebootstrapped by an operator"), a.daemon.log)
        await c.close()
        nowhere.close()
    }

    func testAReplicaPointedAtAForeignRootRefusesItsSnapshotOnceAndKeepsItsHistory() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let foreign = try RootNode(data: tmp.appendingPathComponent("foreign"), logDir: tmp, extraArgs: ["--log-retention", "5"])
        let w = try await client(root.port)
        let f = try await client(foreign.port)
        try await write(w, 3, prefix: "mine")
        try await write(f, 30, prefix: "theirs")
        // The foreign root trims past index 3: it answers the replica "needs bootstrap".
        let trimmed = await Harness.eventually(timeout: .seconds(20)) { ((try? await f.entries(from: 1, count: 1))?.first?.index ?? 0) > 4 }
        XCTAssertTrue(trimmed)
        let data = tmp.appendingPathComponent("a")
        var a: ReplicaNode? = try ReplicaNode(data: data, upstreams: [root.address], logDir: tmp)
        try await waitForHead(a!.port, try await w.head())
        XCTAssertEqual(try a!.daemon.stop(), 0)
        a = nil
        let token = try tokenFile()
        let a2 = try ReplicaNode(data: data, upstreams: [foreign.address], logDir: tmp, extraArgs: ["--admin-token-file", token])
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { a2.metric("qs_replica_diverged_total") == 1 }, a2.daemon.log)
        XCTAssertTrue(a2.daemon.log.contains("another history: refused"), a2.daemon.log)
        // It keeps asking the upstream (subscribe) but never fetches its snapshot again.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { (a2.metric("qs_replica_subscriptions_total") ?? 0) > 4 }, a2.daemon.log)
        XCTAssertEqual(foreign.metric("qs_snapshots_served_total"), 1)
        XCTAssertEqual(a2.metric("qs_replica_bootstraps_total"), 0)
        let c = try await client(a2.port)
        let kept = try await c.get(Array("mine0".utf8))
        XCTAssertEqual(kept?.value, Array("v0".utf8), "its own history is kept")
        // Only the operator replaces it.
        let r = try Harness.run("qsctl", ["rebootstrap", "--admin", "127.0.0.1:\(a2.adminPort)", "--from", foreign.address,
                                          "--admin-token-file", token])
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
        try await waitForHead(a2.port, try await f.head())
        let theirs = try await c.get(Array("theirs29".utf8))
        XCTAssertEqual(theirs?.value, Array("v29".utf8))
        let gone = try await c.get(Array("mine0".utf8))
        XCTAssertNil(gone, "replaced by the operator")
        await c.close()
        await w.close()
        await f.close()
    }

    func testADamagedOrTruncatedRootRefusesToStartAndCheckSaysWhy() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: damage is made by flipping bytes of data.mdb")
        let dir = tmp.appendingPathComponent("root")
        var root: RootNode? = try RootNode(data: dir, logDir: tmp)
        let w = try await client(root!.port)
        try await write(w, 5, prefix: "k") { $0 == 3 ? Self.marker : "v\($0)" }
        await w.close()
        XCTAssertEqual(try root!.daemon.stop(), 0)
        root = nil
        var check = try Harness.run("qsnode", ["check", "--data", dir.path])
        XCTAssertEqual(check.status, 0, String(decoding: check.stdout, as: UTF8.self))
        XCTAssertTrue(String(decoding: check.stdout, as: UTF8.self).contains("sound"))

        let file = dir.appendingPathComponent("data.mdb")
        let original = try Data(contentsOf: file)
        try flipByte(in: file, of: Array(Self.marker.utf8))
        check = try Harness.run("qsnode", ["check", "--data", dir.path])
        var out = String(decoding: check.stdout, as: UTF8.self)
        XCTAssertEqual(check.status, 1, out)
        XCTAssertTrue(out.contains("damaged record for key 'k3'"), out)
        XCTAssertTrue(out.contains("does not match its chained hash"), out)
        var start = try Harness.run("qsnode", ["--role", "root", "--data", dir.path, "--listen", "127.0.0.1:0"])
        var err = String(decoding: start.stderr, as: UTF8.self)
        XCTAssertEqual(start.status, 1, err)
        XCTAssertTrue(err.contains("the store is damaged"), err)

        try original.write(to: file)
        try truncate(file, to: original.count / 2)
        check = try Harness.run("qsnode", ["check", "--data", dir.path])
        out = String(decoding: check.stdout, as: UTF8.self)
        XCTAssertEqual(check.status, 1, out)
        XCTAssertTrue(out.contains("was truncated"), out)
        start = try Harness.run("qsnode", ["--role", "root", "--data", dir.path, "--listen", "127.0.0.1:0"])
        err = String(decoding: start.stderr, as: UTF8.self)
        XCTAssertEqual(start.status, 1, "exits in words, not by SIGBUS: \(err)")
        XCTAssertTrue(err.contains("was truncated"), err)
    }
}
