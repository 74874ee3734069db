import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// From a legacy root to a root cluster, and back (docs/ha.md, "Mirroring, promote and
/// cut-over"): the cluster mirrors the legacy root through `qsqsbridge --mode compatible`
/// given every member, `qsctl cutover` moves the writes to the cluster, a writer goes on
/// through another member from the checkpoint that travelled with the entries, and the
/// writes are handed back to the legacy root the same way. Every node ends equal and each
/// position of the writer is in the log exactly once.
final class ClusterCutoverTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cluster-cutover")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func qsctl(_ args: [String]) throws -> (status: Int32, out: String) {
        let r = try Harness.run("qsctl", args)
        return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
    }

    func mirror(from source: String, to targets: [String]) throws -> DaemonProcess {
        try DaemonProcess("qsqsbridge", ["--source", "qs://\(source)", "--root", targets.joined(separator: ","), "--mode", "compatible",
                                         "--batch-interval", "20ms", "--log-format", "text"], logDir: tmp)
    }

    func writeRole(_ c: QSClient) async -> String? {
        guard let json = try? await c.status(),
              let s = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return nil }
        return s["write_role"] as? String
    }

    /// Every member says `role`: the one the change went through at once (a member answers
    /// a role change once it has applied it), the others once they have applied it from
    /// etcd's watch (docs/ha.md: a member's status may show the old role for that moment).
    func assertRoles(_ members: [QSClient], _ role: String, changedThrough: Int, file: StaticString = #filePath, line: UInt = #line) async {
        for (i, c) in members.enumerated() {
            if i == changedThrough {
                let now = await writeRole(c)
                XCTAssertEqual(now, role, "member \(i), the role changed through it", file: file, line: line)
            } else {
                let applied = await Harness.eventually(timeout: .seconds(10)) { await self.writeRole(c) == role }
                let now = await writeRole(c)
                XCTAssertTrue(applied, "member \(i) says \(now ?? "nothing"), not \(role), 10 s on", file: file, line: line)
            }
        }
    }

    /// Writes position `p` of source "app" (expecting `p - 1`) and returns where the source
    /// stands after it. A batch whose outcome is unknown (etcd did not answer in time, say,
    /// on a loaded machine) is resolved through the checkpoint, as a bridge resolves it, and
    /// sent again if it did not commit. Throws `not-writable` and whatever cannot be resolved.
    static func put(_ c: QSClient, at p: UInt64, key: String) async throws -> UInt64 {
        let r = try await ClusterWrites.put(c, sourceID: "app", expected: p - 1, new: p,
                                            operations: [.set(key: Array(key.utf8), value: Array("v\(p)".utf8), expiry: nil)])
        if let r, case .applied = r {} else if let r { throw ClientError.unexpected("batch at \(p): \(r)") }
        return p
    }

    /// Writes positions `from+1 … through` of source "app" as one batch each, every batch
    /// expecting the position before it: a conflict or refusal fails the test.
    func write(_ c: QSClient, from: UInt64, through: UInt64, line: UInt = #line) async throws {
        for p in (from + 1)...through {
            do { _ = try await ClusterCutoverTests.put(c, at: p, key: "k\(p % 25)") } catch { return XCTFail("\(error)", line: line) }
        }
    }

    /// A batch to `c` is refused with `not-writable`.
    func assertRefused(_ c: QSClient, expected: UInt64, _ what: String, line: UInt = #line) async {
        do {
            let r = try await c.batch(sourceID: "app", expected: expected, new: expected + 1, operations: [])
            XCTFail("\(what) took a batch: \(r)", line: line)
        } catch let ClientError.server(code, message) {
            XCTAssertEqual(code, ErrorCode.notWritable.rawValue, "\(what): \(message)", line: line)
        } catch {
            XCTFail("\(what): \(error)", line: line)
        }
    }

    func assertEqualHeads(_ clients: [QSClient], _ head: Head, _ what: String, line: UInt = #line) async {
        for (i, c) in clients.enumerated() {
            let same = await Harness.eventually(timeout: .seconds(20)) { (try? await c.head()) == head }
            XCTAssertTrue(same, "\(what): node \(i) did not reach head \(head.index)", line: line)
        }
    }

    func assertVerified(_ node: String, against others: [String], line: UInt = #line) throws {
        for other in others {
            let v = try qsctl(["--node", node, "verify", "--against", other])
            XCTAssertEqual(v.status, 0, "verify \(node) against \(other): \(v.out)", line: line)
        }
    }

    func testTheClusterMirrorsALegacyRootTakesTheWritesAndHandsThemBack() async throws {
        try XCTSkipUnless(EtcdCluster.isInstalled, "etcd is not installed (apt-get install etcd-server)")
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let members = try (0..<2).map {
            try RootNode(data: tmp.appendingPathComponent("m\($0)"), logDir: tmp,
                         extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "3s", "--log-format", "text"])
        }
        for m in members {
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 },
                          "member not following: \(m.daemon.log)")
        }
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        let mc = try await members.asyncMap { try await QSClient.connect(host: "127.0.0.1", port: $0.port) }
        let addresses = members.map(\.address)

        // 1. The cluster mirrors L, entry for entry, through a bridge given both members
        //    (its first append carries 150 entries: two etcd transactions).
        try await write(lc, from: 0, through: 150)
        var toCluster = try mirror(from: legacy.address, to: addresses)
        await assertEqualHeads(mc, try await lc.head(), "mirroring L")
        try assertVerified(legacy.address, against: addresses)
        for c in mc {
            let role = await writeRole(c)
            XCTAssertEqual(role, "mirror")
        }
        // A mirror refuses batches, on every member.
        await assertRefused(mc[1], expected: 150, "a mirroring cluster")
        // The bridge writes to member 0; member 1 is fed as much (through etcd) and says so,
        // so a cut-over or a status through either member sees a mirror that is followed.
        let fedThroughCluster = await Harness.eventually(timeout: .seconds(10)) {
            guard let json = try? await mc[1].status(), let s = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                  let mirror = s["mirror"] as? [String: Any] else { return false }
            return mirror["following"] as? Bool == true && mirror["through_cluster"] as? Bool == true
        }
        XCTAssertTrue(fedThroughCluster, "member 1 does not say the cluster's mirror bridge feeds it")
        let status = try qsctl(["--node", addresses[1], "status"])
        XCTAssertTrue(status.out.contains("following yes: a compatible bridge writing to another member"), status.out)
        // Every member names the root the bridge reads (kept in etcd), so a forced promote
        // through the member it does not write to still asks L: with the bridge stopped and
        // L demoted holding an entry the cluster lacks, refused. Before, that member knew
        // no source and --force promoted it, losing the entry.
        XCTAssertTrue(status.out.contains("sources seen: qs://\(legacy.address)"), status.out)
        XCTAssertEqual(try toCluster.stop(), 0, String(toCluster.log.suffix(2000)))
        try await write(lc, from: 150, through: 151)
        XCTAssertEqual(try qsctl(["--node", legacy.address, "demote"]).status, 0)
        let forced = try qsctl(["--node", addresses[1], "promote", "--force"])
        XCTAssertEqual(forced.status, 2, forced.out)
        XCTAssertTrue(forced.out.contains("holds index 151") && forced.out.contains("--force does not override"), forced.out)
        await assertRoles(mc, "mirror", changedThrough: 1)
        // L takes the writes again (it was only demoted), the bridge feeds the cluster again.
        XCTAssertEqual(try qsctl(["--node", legacy.address, "promote", "--force"]).status, 0)
        toCluster = try mirror(from: legacy.address, to: addresses)
        await assertEqualHeads(mc, try await lc.head(), "mirroring L again")

        // 2. Cut-over: L demoted, the cluster promoted (through member 0); member 1 says so too.
        let cut = try qsctl(["cutover", "--from", legacy.address, "--to", addresses[0], "--timeout", "20s"])
        XCTAssertEqual(cut.status, 0, cut.out)
        await assertRoles(mc, "promoted", changedThrough: 0)
        // The mirror bridge into the cluster stops by itself ("this root was promoted").
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { !toCluster.isRunning }, "mirror into the promoted cluster still runs: \(toCluster.log.suffix(2000))")

        // 3. Writes through the other member, from the checkpoint that travelled with the entries.
        let cp = try await mc[1].checkpoint(sourceID: "app")
        XCTAssertEqual(cp, 151)
        try await write(mc[1], from: 151, through: 180)

        // 4. Hand back, while a writer goes on through member 0: L, demoted, mirrors the
        //    cluster; cut over from member 1 to L. The demote (one etcd put through member 1)
        //    stops member 0's writes at once: every write it acknowledged is in the head L
        //    must reach, and none after it.
        let toLegacy = try mirror(from: addresses[1], to: [legacy.address])
        let writer = mc[0]
        let onward = Task { () -> (UInt64, String) in
            var p: UInt64 = 180
            while true {
                do { p = try await ClusterCutoverTests.put(writer, at: p + 1, key: "w\(p % 25)") } catch { return (p, "\(error)") }
            }
        }
        let writing = await Harness.eventually(timeout: .seconds(10)) { ((try? await writer.checkpoint(sourceID: "app")) ?? nil ?? 0) >= 185 }
        XCTAssertTrue(writing, "the writer through member 0 did not get going")
        // The cut-over refuses a mirror nothing feeds (its bridge not yet connected).
        let fed = await Harness.eventually(timeout: .seconds(20)) {
            guard let json = try? await lc.status(), let s = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return false }
            return (s["mirror"] as? [String: Any])?["following"] as? Bool == true
        }
        XCTAssertTrue(fed, "L's mirror bridge never connected: \(toLegacy.log.suffix(2000))")
        let back = try qsctl(["cutover", "--from", addresses[1], "--to", legacy.address, "--timeout", "20s"])
        XCTAssertEqual(back.status, 0, back.out)
        // A failed cut-over leaves the cluster writable: the writer is stopped rather than waited for.
        if back.status != 0 { onward.cancel() }
        let (last, stoppedBy) = await onward.value
        XCTAssertTrue(stoppedBy.contains("not-writable"), "the writer through member 0 stopped with: \(stoppedBy)")
        await assertRoles(mc, "mirror", changedThrough: 1)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { !toLegacy.isRunning }, "mirror into the promoted L still runs")
        let legacyCP = try await lc.checkpoint(sourceID: "app")
        XCTAssertEqual(legacyCP, last, "L holds every write the cluster acknowledged, and nothing after")
        await assertRefused(mc[1], expected: last, "the demoted cluster")
        try await write(lc, from: last, through: last + 20)

        // 5. The cluster mirrors L again (runbook section 8), and every node ends equal.
        toCluster = try mirror(from: legacy.address, to: addresses)
        let head = try await lc.head()
        await assertEqualHeads(mc, head, "mirroring L again")
        try assertVerified(legacy.address, against: addresses)
        _ = try toCluster.stop()

        // Nothing lost or doubled: every position of "app", each once, in order.
        let entries = try await mc[1].entries(from: 1, count: 1000)
        XCTAssertEqual(entries.count, Int(head.index))
        let positions = try entries.map { try LogEntry.decode($0.bytes).origin.position }
        XCTAssertEqual(positions, Array(1...(last + 20)))
        for c in mc + [lc] { await c.close() }
    }
}
