import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// The way back: a new root N mirrors the legacy root L entry for entry, and replicas move
/// L → N → L → N at run time without bootstraps or disconnecting their readers.
final class RollbackDrillTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("drill")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func client(_ port: Int) async throws -> QSClient {
        try await QSClient.connect(host: "127.0.0.1", port: port)
    }

    /// The upstream a replica reports in its status, once subscribed.
    func subscribedUpstream(_ c: QSClient) async -> String? {
        guard let json = try? await c.status(),
              let s = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let u = s["upstream"] as? [String: Any], u["subscribed"] as? Bool == true else { return nil }
        return u["address"] as? String
    }

    func qsctl(_ args: [String]) throws -> (Int32, String, String) {
        let r = try Harness.run("qsctl", args)
        return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
    }

    func testRollbackDrillMovesReplicasBetweenRootsWithoutBootstrapsOrDisconnects() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let new = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        let ktBridge = try DaemonProcess("qsktbridge", ["--root", legacy.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux/",
                                                        "--sid", "99", "--batch-interval", "100ms", "--log-format", "text"], logDir: tmp)
        let mirror = try DaemonProcess("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", new.address, "--mode", "compatible",
                                                      "--batch-interval", "100ms", "--log-format", "text"], logDir: tmp)
        // A continuous workload on KT for the whole drill.
        let workload = KTWorkload { i in
            kt.set("zone/\(i % 60)", "v\(i)")
            if i % 9 == 0 { kt.remove("zone/\((i + 5) % 60)") }
            if i % 13 == 0 { kt.set("rule/\(i % 7)", "r\(i)", db: 1) }
        }
        defer { workload.stop() }

        // Replicas start once L holds entries: a replica that bootstraps from an empty root
        // and has received nothing when it moves bootstraps again (its head is still 0),
        // which is not what the drill counts.
        let lc0 = try await client(legacy.port)
        let filled = await Harness.eventually(timeout: .seconds(30)) { ((try? await lc0.head().index) ?? 0) > 0 }
        XCTAssertTrue(filled, ktBridge.log)
        await lc0.close()
        let list1 = tmp.appendingPathComponent("r1-upstreams")
        try legacy.address.write(to: list1, atomically: true, encoding: .utf8)
        let r1 = try ReplicaNode(data: tmp.appendingPathComponent("R1"), upstreams: [legacy.address], logDir: tmp,
                                 extraArgs: ["--upstream-file", list1.path])
        let r2 = try ReplicaNode(data: tmp.appendingPathComponent("R2"), upstreams: [legacy.address], logDir: tmp)
        // R1's own reader: a replica under it. R2's own reader: a client connection.
        let s1 = try ReplicaNode(data: tmp.appendingPathComponent("S1"), upstreams: [r1.address], logDir: tmp)
        let c1 = try await client(r1.port), c2 = try await client(r2.port), cs = try await client(s1.port)
        let onL1 = await Harness.eventually(timeout: .seconds(30)) { await self.subscribedUpstream(c1) == legacy.address }
        let onL2 = await Harness.eventually(timeout: .seconds(30)) { await self.subscribedUpstream(c2) == legacy.address }
        XCTAssertTrue(onL1 && onL2)

        for (round, target) in [new, legacy, new].enumerated() {
            try target.address.write(to: list1, atomically: true, encoding: .utf8)
            kill(r1.daemon.pid, SIGHUP)
            let posted = httpPost(port: r2.adminPort, path: "/upstream", contentType: "text/plain", body: Array(target.address.utf8))
            XCTAssertEqual(posted?.status, 200, "round \(round): \(posted?.body ?? "no answer")")
            let moved1 = await Harness.eventually(timeout: .seconds(30)) { await self.subscribedUpstream(c1) == target.address }
            let moved2 = await Harness.eventually(timeout: .seconds(30)) { await self.subscribedUpstream(c2) == target.address }
            XCTAssertTrue(moved1, "round \(round): R1 did not move to \(target.address):\n\(r1.daemon.log)")
            XCTAssertTrue(moved2, "round \(round): R2 did not move to \(target.address):\n\(r2.daemon.log)")
            // Readers keep reading through the move: the same connection answers.
            _ = try await c2.head()
            _ = try await cs.head()
            let h1 = try await c1.head().index
            let progressed = await Harness.eventually(timeout: .seconds(30)) { ((try? await c1.head().index) ?? 0) > h1 }
            XCTAssertTrue(progressed, "round \(round): R1 stopped following the workload")
        }

        // A replica pointed at a root with another history is refused.
        let other = try RootNode(data: tmp.appendingPathComponent("O"), logDir: tmp)
        let oc = try await client(other.port)
        // Longer than R2's history, so the same index holds another hash there.
        let r2Head = try await c2.head().index
        for i in 0..<(Int(r2Head) + 10) { _ = try await oc.write([.set(key: Array("other\(i)".utf8), value: [1], expiry: nil)]) }
        let refusedPost = httpPost(port: r2.adminPort, path: "/upstream", contentType: "text/plain", body: Array(other.address.utf8))
        XCTAssertEqual(refusedPost?.status, 200)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { (r2.metric("qs_replica_diverged_total") ?? 0) >= 1 }, r2.daemon.log)
        _ = httpPost(port: r2.adminPort, path: "/upstream", contentType: "text/plain", body: Array(new.address.utf8))

        // Stop the workload (no write of it may follow the last one) and let everything
        // settle on L's head.
        XCTAssertTrue(workload.stop(), "the workload thread did not stop")
        kt.set("drill/last", "done")
        let lc = try await client(legacy.port)
        let settled = await Harness.eventually(timeout: .seconds(30)) { ((try? await lc.get(Array("drill/last".utf8)))??.value) == Array("done".utf8) }
        XCTAssertTrue(settled)
        let head = try await lc.head()
        for (name, port) in [("N", new.port), ("R1", r1.port), ("R2", r2.port), ("S1", s1.port)] {
            let c = try await client(port)
            let same = await Harness.eventually(timeout: .seconds(30)) { (try? await c.head()) == head }
            XCTAssertTrue(same, "\(name) did not reach L's head \(head.index)")
            await c.close()
        }
        // Every node equals L: same head and hash (above), and the same keyspace (qsctl verify).
        for port in [new.port, r1.port, r2.port, s1.port] {
            let v = try qsctl(["--node", legacy.address, "verify", "--against", "127.0.0.1:\(port)"])
            XCTAssertEqual(v.0, 0, "verify against \(port): \(v.1)\(v.2)")
            XCTAssertTrue(v.2.contains("heads equal"), v.2)
        }
        let dumpL = try qsctl(["--node", legacy.address, "dump"]).1
        XCTAssertEqual(try qsctl(["--node", new.address, "dump"]).1, dumpL)
        XCTAssertEqual(try qsctl(["--node", r1.address, "dump"]).1, dumpL)
        XCTAssertGreaterThan(dumpL.split(separator: "\n").count, 50)
        // No bootstrap beyond each replica's first, and S1 never re-subscribed.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { r1.metric("qs_replica_bootstraps_total") == 1 })  // counted just after the head shows
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { r2.metric("qs_replica_bootstraps_total") == 1 })  // counted just after the head shows
        XCTAssertEqual(s1.metric("qs_replica_subscriptions_total"), 1, s1.daemon.log)
        XCTAssertEqual(r1.metric("qs_replication_subscribers"), 1)
        // The cut-over tools on the same data.
        let cp = try await lc.checkpoint(sourceID: "kt:\(kt.address)") ?? 0
        XCTAssertEqual(try qsctl(["--node", legacy.address, "wait", "--source-id", "kt:\(kt.address)", "--until", "\(cp)", "--timeout", "5s"]).0, 0)
        let later = ISO8601DateFormatter().string(from: Date().addingTimeInterval(3600))
        XCTAssertEqual(try qsctl(["--node", legacy.address, "wait", "--source-id", "kt:\(kt.address)", "--until", later, "--timeout", "300ms"]).0, 5)
        // KT is quiet now: its heartbeats still carry the checkpoint past the present.
        let now = try qsctl(["--node", legacy.address, "wait", "--source-id", "kt:\(kt.address)", "--until", "now", "--timeout", "10s"])
        XCTAssertEqual(now.0, 0, now.1 + now.2)
        let ambiguous = try qsctl(["--node", legacy.address, "wait", "--source-id", "kt:\(kt.address)", "--until", "1700000000"])
        XCTAssertEqual(ambiguous.0, 2)
        XCTAssertTrue(ambiguous.2.contains("ambiguous") && ambiguous.2.contains("index:N"), ambiguous.2)
        let unknown = try qsctl(["--node", legacy.address, "wait", "--source-id", "kt:nowhere:1", "--until", "now", "--timeout", "30s"])
        XCTAssertEqual(unknown.0, 1)
        XCTAssertTrue(unknown.2.contains("kt:\(kt.address)"), "the known ids are listed: \(unknown.2)")
        let wrongForm = try qsctl(["--node", legacy.address, "wait", "--source-id", "kt:\(kt.address)", "--until", "index:5"])
        XCTAssertEqual(wrongForm.0, 2, wrongForm.2)
        let status = try qsctl(["--node", r1.address, "status"])
        XCTAssertEqual(status.0, 0)
        XCTAssertTrue(status.1.contains("role replica") && status.1.contains("upstream \(new.address)"), status.1)
        XCTAssertTrue(status.1.contains("kt:\(kt.address)"), "checkpoints replicate: \(status.1)")
        let verifyKT = try qsctl(["--node", legacy.address, "verify", "--kt", kt.address, "--db-map", "0=,1=aux/"])
        XCTAssertEqual(verifyKT.0, 0, verifyKT.1 + verifyKT.2)
        // A difference is found and named.
        _ = try await oc.write([.set(key: Array("zone/1".utf8), value: [9], expiry: nil)])
        let v = try qsctl(["--node", legacy.address, "verify", "--against", other.address, "--output", "jsonl"])
        XCTAssertEqual(v.0, 1)
        XCTAssertTrue(v.1.contains("\"key\":\"\(Data("zone/1".utf8).base64EncodedString())\""), v.1)
        for c in [c1, c2, cs, lc, oc] { await c.close() }
        XCTAssertEqual(try mirror.stop(), 0, mirror.log)
        XCTAssertEqual(try ktBridge.stop(), 0, ktBridge.log)
    }
}

