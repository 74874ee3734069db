import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// A KT bridge writing straight into a root cluster records its `--db-map` through etcd
/// (docs/ha.md, "Committing a batch"; docs/protocol.md, "Source descriptors"): restarted
/// with another map at any member, it stops before writing anything, as at a single root.
final class ClusterDescriptorTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cluster-sd")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func descriptors(_ c: QSClient) async throws -> [String: String] {
        let json = try await c.status()
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return try XCTUnwrap(object["source_descriptors"] as? [String: String], json)
    }

    func bridgeArgs(_ kt: FakeKTProcess, root: String, map: String) -> [String] {
        ["--root", root, "--source", "kt://\(kt.address)", "--db-map", map, "--source-id", "kt", "--sid", "99",
         "--initial-copy", "never", "--batch-interval", "50ms", "--log-format", "text"]
    }

    func testABridgeIntoAClusterRestartedWithAnotherDBMapStopsAtAnyMember() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let members = try (0..<2).map { i in
            try RootNode(data: tmp.appendingPathComponent("m\(i)"), logDir: tmp,
                         extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "3s", "--log-format", "text"])
        }
        for m in members {
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 },
                          "member not following: \(m.daemon.log)")
        }
        let c0 = try await QSClient.connect(host: "127.0.0.1", port: members[0].port)
        let c1 = try await QSClient.connect(host: "127.0.0.1", port: members[1].port)
        let none0 = try await descriptors(c0)
        XCTAssertEqual(none0, [:], "a member lists the descriptors it holds, none yet")

        let kt = try FakeKTProcess(logDir: tmp)
        let first = try DaemonProcess("qsktbridge", bridgeArgs(kt, root: members[0].address, map: "0=,1=aux/") + ["--admin", "127.0.0.1:0"],
                                      logDir: tmp, ready: true)
        kt.set("k", "v1", db: 1)
        let written = await Harness.eventually(timeout: .seconds(30)) { (try? await c1.get(Array("aux/k".utf8)))?.value == Array("v1".utf8) }
        XCTAssertTrue(written, first.log)
        try first.stop()
        XCTAssertFalse(first.log.contains("does not record source descriptors"), first.log)
        // Recorded for the whole cluster: the other member applied it from etcd.
        let held1 = await Harness.eventually(timeout: .seconds(20)) { (try? await self.descriptors(c1)) == ["kt": "db-map 0=,1=aux/"] }
        XCTAssertTrue(held1, members[1].daemon.log)
        XCTAssertTrue(members[0].daemon.log.contains("source descriptor recorded"), members[0].daemon.log)

        // A typo at the other member: stopped, nothing written anywhere.
        let head = try await c1.head()
        kt.set("k", "v2", db: 1)
        let typo = bridgeArgs(kt, root: members[1].address, map: "0=,1=aux")
        let stopped = try Harness.run("qsktbridge", typo, killAfter: .seconds(30))
        let err = String(decoding: stopped.stderr, as: UTF8.self)
        XCTAssertEqual(stopped.status, 1, err)
        XCTAssertTrue(err.contains("recorded source id kt as 'db-map 0=,1=aux/', and this writer's is 'db-map 0=,1=aux'")
                      && err.contains("bridge stopped"), err)
        let after = try await c1.head()
        XCTAssertEqual(after, head, "the stopped bridge wrote")

        // The root's own compare: a writer that skips the status check (offers its map
        // straight away) is answered with the descriptor held, not recorded.
        let answer = try await c1.send(.setDescriptor(token: members[1].token, sourceID: "kt", descriptor: "db-map 0=,1=aux", replace: false))
        XCTAssertEqual(answer, .value(Record(value: Array("db-map 0=,1=aux/".utf8), expiry: nil)))
        let stillHead = try await c1.head()
        XCTAssertEqual(stillHead, head, "a refused descriptor wrote")

        // Meant: recorded through the other member, and the bridge writes under the new map.
        let changed = try DaemonProcess("qsktbridge", typo + ["--db-map-changed", "--admin", "127.0.0.1:0"], logDir: tmp, ready: true)
        let moved = await Harness.eventually(timeout: .seconds(30)) { (try? await c0.get(Array("auxk".utf8)))?.value == Array("v2".utf8) }
        XCTAssertTrue(moved, changed.log)
        XCTAssertTrue(changed.log.contains("source descriptor replaced at the root"), changed.log)
        try changed.stop()
        for c in [c0, c1] {
            let now = await Harness.eventually(timeout: .seconds(20)) { (try? await self.descriptors(c)) == ["kt": "db-map 0=,1=aux"] }
            XCTAssertTrue(now)
        }
        // A map that only adds a database is recorded without the flag, and no member
        // counts a refusal for it (the bridge asks first, then offers it as an extension).
        let refusals = members.map { $0.metric("qs_source_descriptor_refusals_total") ?? 0 }
        let extended = try DaemonProcess("qsktbridge", bridgeArgs(kt, root: members[0].address, map: "0=,1=aux,2=x/") + ["--admin", "127.0.0.1:0"],
                                         logDir: tmp, ready: true)
        let recordedExtension = await Harness.eventually(timeout: .seconds(30)) { (try? await self.descriptors(c1)) == ["kt": "db-map 0=,1=aux,2=x/"] }
        XCTAssertTrue(recordedExtension, extended.log)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { extended.log.contains("source descriptor extended at the root") }, extended.log)
        try extended.stop()
        XCTAssertEqual(members.map { $0.metric("qs_source_descriptor_refusals_total") ?? 0 }, refusals)
        // Two writers of a new source id with different maps, at two members at once: one
        // records, both are answered with the one the cluster holds.
        let t0 = members[0].token, t1 = members[1].token
        async let a0 = c0.send(.setDescriptor(token: t0, sourceID: "race", descriptor: "db-map 0=a/", replace: false))
        async let a1 = c1.send(.setDescriptor(token: t1, sourceID: "race", descriptor: "db-map 0=b/", replace: false))
        let (r0, r1) = try await (a0, a1)
        XCTAssertEqual(r0, r1, "the members answered different descriptors held")
        // Both members hold the same log, descriptor entries included.
        let h0 = try await c0.head()
        let same = await Harness.eventually(timeout: .seconds(20)) { (try? await c1.head()) == h0 }
        XCTAssertTrue(same)
        let recorded = try await c0.entries(from: 1, count: 1000).compactMap { e -> String? in
            let entry = try LogEntry.decode(e.bytes)
            return entry.descriptor.map { "\(entry.origin.sourceID) \($0)" }
        }
        XCTAssertEqual(recorded.filter { $0.hasPrefix("kt ") }, ["kt db-map 0=,1=aux/", "kt db-map 0=,1=aux", "kt db-map 0=,1=aux,2=x/"])
        XCTAssertEqual(recorded.filter { $0.hasPrefix("race ") }.count, 1, "\(recorded)")
        await c0.close()
        await c1.close()
    }

    /// A member that lags the cluster lists an older descriptor in its status than the
    /// cluster holds: a bridge there is judged by the cluster's head, not by that listing.
    /// Its old map (which the listing matches) and a map that only extends the listing
    /// (not the cluster's) both stop before writing anything.
    func testABridgeAtALaggingMemberIsJudgedAtTheClustersHead() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        // Member 1 reaches etcd through a proxy that can hold etcd's answers (its watch too).
        let proxy = try FaultProxy(upstreamPort: etcd.members[0].clientPort)
        defer { proxy.close() }
        let m0 = try RootNode(data: tmp.appendingPathComponent("m0"), logDir: tmp,
                              extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "10s", "--log-format", "text"])
        let m1 = try RootNode(data: tmp.appendingPathComponent("m1"), logDir: tmp,
                              extraArgs: ["--etcd", "http://\(proxy.address)", "--cluster", "t", "--etcd-timeout", "10s", "--log-format", "text"])
        for m in [m0, m1] {
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 },
                          "member not following: \(m.daemon.log)")
        }
        let c0 = try await QSClient.connect(host: "127.0.0.1", port: m0.port)
        let c1 = try await QSClient.connect(host: "127.0.0.1", port: m1.port)
        let kt = try FakeKTProcess(logDir: tmp)
        kt.set("k", "v1", db: 1)
        let first = try DaemonProcess("qsktbridge", bridgeArgs(kt, root: m0.address, map: "0=,1=aux/") + ["--admin", "127.0.0.1:0"],
                                      logDir: tmp, ready: true)
        let written = await Harness.eventually(timeout: .seconds(30)) { (try? await c0.get(Array("aux/k".utf8)))?.value == Array("v1".utf8) }
        XCTAssertTrue(written, first.log)
        try first.stop()
        kt.set("k", "v2", db: 1)

        let listed = await Harness.eventually(timeout: .seconds(20)) { (try? await self.descriptors(c1))?["kt"] == "db-map 0=,1=aux/" }
        XCTAssertTrue(listed, m1.daemon.log)

        for (round, map) in ["0=,1=aux/", "0=,1=aux/,2=x/"].enumerated() {
            // Member 1 stops hearing from etcd; the map changes on purpose through member 0.
            proxy.fault = .holdReplies
            let changedTo = round == 0 ? "db-map 0=,1=new/" : "db-map 0=,1=newer/"
            let replaced = try await c0.send(.setDescriptor(token: m0.token, sourceID: "kt", descriptor: changedTo, replace: true))
            XCTAssertEqual(replaced, .value(Record(value: Array(changedTo.utf8), expiry: nil)))
            let head = try await c0.head()
            let stale = try await descriptors(c1)
            XCTAssertEqual(stale["kt"], "db-map 0=,1=aux/", "member 1 is not behind: nothing tested")
            let asked = m1.metric("qs_requests_total{type=\"set-descriptor\"}") ?? 0
            let bridge = try DaemonProcess("qsktbridge", bridgeArgs(kt, root: m1.address, map: map), logDir: tmp)
            // The bridge has read member 1's status and asks it which descriptor the cluster
            // holds: etcd's answers flow again.
            try await waitFor("the bridge asking member 1", timeout: .seconds(30)) {
                (m1.metric("qs_requests_total{type=\"set-descriptor\"}") ?? 0) > asked
            }
            proxy.fault = .none
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(60)) { !bridge.isRunning }, "the bridge did not stop: \(bridge.log)")
            let status = try bridge.stop()
            XCTAssertEqual(status, 1, bridge.log)
            XCTAssertTrue(bridge.log.contains("recorded source id kt as '\(changedTo)', and this writer's is 'db-map \(map)'"), bridge.log)
            let after = try await c0.head()
            XCTAssertEqual(after, head, "a bridge with another map than the cluster's wrote")
            // Back to the first map for the next round, as member 1 lists it once caught up.
            let back = try await c0.send(.setDescriptor(token: m0.token, sourceID: "kt", descriptor: "db-map 0=,1=aux/", replace: true))
            XCTAssertEqual(back, .value(Record(value: Array("db-map 0=,1=aux/".utf8), expiry: nil)))
            let caughtUp = await Harness.eventually(timeout: .seconds(30)) { (try? await self.descriptors(c1))?["kt"] == "db-map 0=,1=aux/" }
            XCTAssertTrue(caughtUp, m1.daemon.log)
        }
        await c0.close()
        await c1.close()
    }
}
