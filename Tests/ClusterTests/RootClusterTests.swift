import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// A root cluster on a real 3-member etcd: members commit batches through etcd and apply
/// the cluster's log; a bridge writes to one member, a direct writer to another, a replica
/// follows the third; the etcd leader is SIGKILLed under the workload (docs/ha.md).
final class RootClusterTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cluster")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func member(_ i: Int, etcd: EtcdCluster) throws -> RootNode {
        try RootNode(data: tmp.appendingPathComponent("m\(i)"), logDir: tmp,
                     extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "3s", "--log-format", "text"])
    }

    func qsctl(_ args: [String]) throws -> (status: Int32, out: String) {
        let r = try Harness.run("qsctl", args)
        return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
    }

    /// `qsctl verify` finds `node` and each of `others` equal.
    func assertVerified(_ node: String, against others: [String], line: UInt = #line) throws {
        for other in others {
            let v = try qsctl(["--node", node, "verify", "--against", other])
            XCTAssertEqual(v.status, 0, "verify \(node) against \(other): \(v.out)", line: line)
        }
    }

    func testMembersCommitThroughEtcdAndLoseNothingWhenTheEtcdLeaderDies() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let members = try (0..<3).map { try member($0, etcd: etcd) }
        for m in members {
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 },
                          "member not following: \(httpGet(port: m.adminPort, path: "/readyz")?.body ?? "") \(m.daemon.log)")
        }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [members[2].address], logDir: tmp)

        // A legacy root with a steady writer, bridged (batched) into member 0.
        let source = try RootNode(data: tmp.appendingPathComponent("src"), logDir: tmp)
        let sc = try await QSClient.connect(host: "127.0.0.1", port: source.port)
        let bridge = try DaemonProcess("qsqsbridge", ["--source", "qs://\(source.address)", "--root", members[0].address,
                                                      "--mode", "batched", "--source-id", "legacy", "--batch-max-ops", "5",
                                                      "--log-format", "text"], logDir: tmp)
        let sourceWriter = Task {
            for i in 0..<240 {
                _ = try await sc.write([.set(key: Array("s\(i % 50)".utf8), value: Array("v\(i)".utf8), expiry: nil)], sourceID: "writer")
            }
        }
        // A direct writer into member 1: positions 1…120, each batch resolved through the
        // checkpoint when its outcome is unknown.
        let direct = try await QSClient.connect(host: "127.0.0.1", port: members[1].port)
        let directWriter = Task { () -> Int in
            var position: UInt64 = 0, unknown = 0
            let deadline = ContinuousClock.now + .seconds(90)
            while position < 120 && ContinuousClock.now < deadline {
                let ops: [Mutation] = [.set(key: Array("d\(position + 1)".utf8), value: Array("x".utf8), expiry: nil)]
                do {
                    switch try await direct.batch(sourceID: "direct", expected: position, new: position + 1, operations: ops) {
                    case .applied: position += 1
                    case let .conflict(current): position = current
                    default: break
                    }
                } catch {
                    unknown += 1
                    if let cp = try? await direct.checkpoint(sourceID: "direct") { position = cp ?? 0 }
                }
            }
            return unknown
        }

        // Under the workload: the etcd leader dies.
        let mc = try await QSClient.connect(host: "127.0.0.1", port: members[0].port)
        _ = await Harness.eventually(timeout: .seconds(30)) { ((try? await mc.head().index) ?? 0) >= 40 }
        let leader = try XCTUnwrap(etcd.leader(), "etcd has no leader")
        try etcd.kill(leader)
        let headAtKill = try await mc.head().index
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { etcd.leader() != nil }, "the two etcd members left elected no leader")

        try await sourceWriter.value
        let unknown = try await directWriter.value
        let sourceHead = try await sc.head().index
        let caughtUp = await Harness.eventually(timeout: .seconds(60)) {
            ((try? await mc.checkpoint(sourceID: "legacy")) ?? nil) == sourceHead
        }
        XCTAssertTrue(caughtUp, "bridge did not catch up: \(bridge.log.suffix(3000))")
        let directCP = try await direct.checkpoint(sourceID: "direct")
        XCTAssertEqual(directCP, 120, "direct writer: \(unknown) unknown outcomes")
        try bridge.stop()

        // Every member and the replica end at one head, and hold the same records.
        let clients = try await members.asyncMap { try await QSClient.connect(host: "127.0.0.1", port: $0.port) }
        let rc = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        let head = try await mc.head()
        XCTAssertGreaterThan(head.index, headAtKill, "writes went on after the etcd leader died")
        for c in clients + [rc] {
            let same = await Harness.eventually(timeout: .seconds(20)) { (try? await c.head()) == head }
            XCTAssertTrue(same, "a member or the replica did not reach head \(head.index)")
        }
        try assertVerified(members[0].address, against: [members[1].address, members[2].address, replica.address])

        // Nothing applied twice or lost: each direct position is in the log exactly once,
        // the legacy positions only go up, and the chain is the one every member holds.
        let entries = try await clients[2].entries(from: 1, count: 10_000)
        XCTAssertEqual(entries.count, Int(head.index))
        var directPositions = [UInt64](), legacy: UInt64 = 0
        for e in entries {
            let entry = try LogEntry.decode(e.bytes)
            switch entry.origin.sourceID {
            case "direct": directPositions.append(entry.origin.position)
            case "legacy":
                XCTAssertGreaterThan(entry.origin.position, legacy, "legacy position applied twice or out of order at \(e.index)")
                legacy = entry.origin.position
            default: XCTFail("unexpected source \(entry.origin.sourceID)")
            }
        }
        XCTAssertEqual(directPositions, Array(1...120))
        for i in 1...120 {
            let value = try await clients[0].get(Array("d\(i)".utf8))
            XCTAssertEqual(value?.value, Array("x".utf8), "d\(i)")
        }
        for c in clients + [rc, mc, sc, direct] { await c.close() }
    }

    /// A bridge given every member's address writes to the first; that member is
    /// SIGKILLed under the workload; the bridge moves to another member, the batch in flight
    /// is resolved through the checkpoint, and after the member's restart all three hold
    /// the same log with every source position once (docs/ha.md, "Clients fail over").
    func testABridgeMovesToAnotherMemberWhenItsMemberIsKilled() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        var members = try (0..<3).map { try member($0, etcd: etcd) }
        for m in members {
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 },
                          "member not following: \(m.daemon.log)")
        }
        let source = try RootNode(data: tmp.appendingPathComponent("src"), logDir: tmp)
        let sc = try await QSClient.connect(host: "127.0.0.1", port: source.port)
        for i in 0..<300 {
            _ = try await sc.write([.set(key: Array("s\(i % 60)".utf8), value: Array("v\(i)".utf8), expiry: nil)], sourceID: "writer")
        }
        let sourceHead = try await sc.head().index
        let bridge = try DaemonProcess("qsqsbridge", ["--source", "qs://\(source.address)", "--root", members.map(\.address).joined(separator: ","),
                                                      "--mode", "batched", "--source-id", "legacy", "--batch-max-ops", "5",
                                                      "--batch-interval", "20ms", "--admin", "127.0.0.1:0", "--log-format", "text"],
                                       logDir: tmp, ready: true)
        let bridgeAdmin = try bridge.port("admin")
        let m1 = try await QSClient.connect(host: "127.0.0.1", port: members[1].port)
        let started = await Harness.eventually(timeout: .seconds(30)) { ((try? await m1.checkpoint(sourceID: "legacy")) ?? nil ?? 0) >= 60 }
        XCTAssertTrue(started, "the bridge did not start writing: \(bridge.log.suffix(2000))")
        XCTAssertEqual(metricValue(port: bridgeAdmin, "qs_bridge_root_in_use{address=\"\(members[0].address)\"}"), 1)

        // The member the bridge writes to dies mid-stream.
        _ = try members[0].daemon.stop(signal: SIGKILL)
        let killed = ContinuousClock.now
        let atKill = try await m1.checkpoint(sourceID: "legacy") ?? 0
        XCTAssertLessThan(atKill, sourceHead, "the bridge finished before the kill: nothing tested")
        let movedOn = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(10)) {
            ((try? await m1.checkpoint(sourceID: "legacy")) ?? nil ?? 0) > atKill + 5
        }
        let failover = ContinuousClock.now - killed
        XCTAssertTrue(movedOn, "the bridge did not move on: \(bridge.log.suffix(3000))")
        print("bridge failover: \(Int(failover.seconds * 1000)) ms from SIGKILL of its member to its next batches committed through another")
        XCTAssertEqual(metricValue(port: bridgeAdmin, "qs_bridge_root_failovers_total"), 1)
        XCTAssertEqual(metricValue(port: bridgeAdmin, "qs_bridge_root_in_use{address=\"\(members[0].address)\"}"), 0)
        XCTAssertTrue(bridge.log.contains("root failover") && bridge.log.contains(members[0].address), String(bridge.log.suffix(2000)))

        let caughtUp = await Harness.eventually(timeout: .seconds(60)) { ((try? await m1.checkpoint(sourceID: "legacy")) ?? nil) == sourceHead }
        XCTAssertTrue(caughtUp, "bridge did not catch up: \(bridge.log.suffix(3000))")
        try bridge.stop()

        // A writer of a new source id started while the first member is still down has no
        // position to compare the next member with: the member says it is one of a root
        // cluster (one log through etcd), so the writer takes it.
        let fresh = try Harness.run("qsqsbridge", ["--source", "qs://\(source.address)", "--root", members.map(\.address).joined(separator: ","),
                                                   "--mode", "batched", "--source-id", "fresh", "--once", "--batch-interval", "20ms",
                                                   "--log-format", "text"], killAfter: .seconds(60))
        XCTAssertEqual(fresh.status, 0, String(decoding: fresh.stderr.suffix(3000), as: UTF8.self))
        let freshCheckpoint = try await m1.checkpoint(sourceID: "fresh")
        XCTAssertEqual(freshCheckpoint, sourceHead)

        // The killed member comes back on its data and catches up from etcd.
        members[0] = try RootNode(data: members[0].data, logDir: tmp, extraArgs: members[0].extraArgs)
        let clients = try await members.asyncMap { try await QSClient.connect(host: "127.0.0.1", port: $0.port) }
        let head = try await m1.head()
        for c in clients {
            let same = await Harness.eventually(timeout: .seconds(20)) { (try? await c.head()) == head }
            XCTAssertTrue(same, "a member did not reach head \(head.index)")
        }
        try assertVerified(members[1].address, against: [members[0].address, members[2].address])
        // Each source position once, in order, ending at the source's head.
        var last: UInt64 = 0
        for e in try await m1.entries(from: 1, count: 10_000) {
            let entry = try LogEntry.decode(e.bytes)
            XCTAssertGreaterThan(entry.origin.position, last, "legacy position applied twice or out of order at \(e.index)")
            last = entry.origin.position
        }
        XCTAssertEqual(last, sourceHead)
        for i in 240..<300 {
            let value = try await m1.get(Array("s\(i % 60)".utf8))
            XCTAssertEqual(value?.value, Array("v\(i)".utf8))
        }
        for c in clients + [m1, sc] { await c.close() }
    }

    /// The keys and values etcd holds under `/qs/t/<prefix>`.
    func etcdKeys(_ etcd: EtcdCluster, _ prefix: String) -> [(key: String, value: [UInt8])] { etcd.keys("/qs/t/\(prefix)") }

    func firstLogIndexInEtcd(_ etcd: EtcdCluster) -> UInt64 { etcd.firstLogIndex(cluster: "t") }

    /// A member stopped while the cluster writes past etcd's window (`--etcd-log-window
    /// 20`) comes back behind it: it takes a peer's snapshot, then follows etcd, and ends
    /// identical to the others (docs/ha.md, "Catching up from a peer's snapshot").
    func testAMemberBehindEtcdsWindowCatchesUpFromAPeersSnapshot() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let window = ["--etcd-log-window", "20"]
        let m1 = try RootNode(data: tmp.appendingPathComponent("m1"), logDir: tmp,
                              extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--log-format", "text"] + window)
        let m2 = try RootNode(data: tmp.appendingPathComponent("m2"), logDir: tmp,
                              extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--log-format", "text"] + window)
        let m0args = ["--etcd", etcd.urls, "--cluster", "t", "--log-format", "text", "--cluster-peers", "\(m1.address),\(m2.address)"] + window
        var m0 = try RootNode(data: tmp.appendingPathComponent("m0"), logDir: tmp, extraArgs: m0args)
        let c1 = try await QSClient.connect(host: "127.0.0.1", port: m1.port)
        var position: UInt64 = 0
        func write(_ n: Int) async throws {
            for _ in 0..<n {
                position += 1
                let r = try await ClusterWrites.put(c1, sourceID: "w", expected: position - 1, new: position,
                                                    operations: [.set(key: Array("k\(position % 7)".utf8), value: Array("v\(position)".utf8), expiry: nil)])
                if let r { XCTAssertEqual(r, .applied(logIndex: position, kept: 1, dropped: 0)) }
            }
        }
        try await write(10)
        // Every member says in etcd how far it has applied: m0's key holds the window at 10.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10), pollEvery: .milliseconds(200)) {
            let applied = etcdKeys(etcd, "applied/")
            return applied.count == 3 && applied.allSatisfy { $0.value == [0, 0, 0, 0, 0, 0, 0, 10] }
        }, "applied/ keys: \(etcdKeys(etcd, "applied/"))")
        XCTAssertEqual(try m0.daemon.stop(), 0)

        // Past the window: once m0's applied/ key has expired (its lease: 10 s), the others
        // compact below it.
        try await write(60)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(6), pollEvery: .milliseconds(200)) { firstLogIndexInEtcd(etcd) == 11 },
                      "etcd keeps the log from \(firstLogIndexInEtcd(etcd)): the stopped member's applied/ key should hold it at 11")
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) { firstLogIndexInEtcd(etcd) > 11 },
                      "etcd kept the log from \(firstLogIndexInEtcd(etcd)): the stopped member still holds the window")

        m0 = try RootNode(data: m0.data, logDir: tmp, extraArgs: m0args)
        let c0 = try await QSClient.connect(host: "127.0.0.1", port: m0.port)
        let head = try await c1.head()
        let same = await Harness.eventually(timeout: .seconds(20)) { (try? await c0.head()) == head }
        XCTAssertTrue(same, "m0 did not catch up: \(m0.daemon.log.suffix(3000))")
        // The store is replaced before the count and the log line are written.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { m0.daemon.log.contains("caught up from a peer's snapshot") },
                      String(m0.daemon.log.suffix(2000)))
        XCTAssertEqual(m0.metric("qs_cluster_snapshot_catchups_total"), 1)

        // It follows etcd and takes writes again; every member ends identical.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { httpGet(port: m0.adminPort, path: "/readyz")?.status == 200 })
        let r = try await ClusterWrites.put(c0, sourceID: "w", expected: position, new: position + 1, operations: [.delete(key: Array("k0".utf8))])
        if let r { XCTAssertEqual(r, .applied(logIndex: position + 1, kept: 1, dropped: 0)) }
        let c2 = try await QSClient.connect(host: "127.0.0.1", port: m2.port)
        let final = try await c0.head()
        for c in [c1, c2] {
            let caught = await Harness.eventually(timeout: .seconds(10)) { (try? await c.head()) == final }
            XCTAssertTrue(caught)
        }
        try assertVerified(m1.address, against: [m0.address, m2.address])
        for c in [c0, c1, c2] { await c.close() }
    }

    /// A member cut off from etcd (a partition: every etcd connection blackholed, through
    /// an in-process proxy) acknowledges no write and says so on /readyz, while the other
    /// members go on taking writes; once the partition heals it catches up and ends
    /// identical, and every position of the writer it refused is in the log once.
    func testAMemberPartitionedFromEtcdAcknowledgesNothingAndRejoins() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let proxies = try etcd.members.map { try FaultProxy(upstreamPort: $0.clientPort) }
        defer { proxies.forEach { $0.close() } }
        let m0 = try RootNode(data: tmp.appendingPathComponent("m0"), logDir: tmp,
                              extraArgs: ["--etcd", proxies.map { "http://\($0.address)" }.joined(separator: ","), "--cluster", "t",
                                          "--etcd-timeout", "2s", "--log-format", "text"])
        let m1 = try member(1, etcd: etcd), m2 = try member(2, etcd: etcd)
        for m in [m0, m1, m2] {
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 }, m.daemon.log)
        }
        let c0 = try await QSClient.connect(host: "127.0.0.1", port: m0.port)
        let c1 = try await QSClient.connect(host: "127.0.0.1", port: m1.port)
        let op = { (p: UInt64) -> [Mutation] in [.set(key: Array("p\(p)".utf8), value: Array("x".utf8), expiry: nil)] }
        for p in UInt64(1)...5 {
            let r = try await ClusterWrites.put(c0, sourceID: "a", expected: p - 1, new: p, operations: op(p))
            if let r { XCTAssertEqual(r, .applied(logIndex: p, kept: 1, dropped: 0)) }
        }

        for proxy in proxies { proxy.fault = .blackhole }
        // Writes to the partitioned member are refused, never acknowledged.
        var refused = 0
        for p in UInt64(6)...7 {
            do {
                let r = try await c0.batch(sourceID: "a", expected: 5, new: p, operations: op(p))
                XCTFail("a partitioned member acknowledged \(r)")
            } catch let ClientError.server(code, message) {
                XCTAssertEqual(ErrorCode(rawValue: code), .storageError, message)
                refused += 1
            }
        }
        XCTAssertEqual(refused, 2)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(15)) { httpGet(port: m0.adminPort, path: "/readyz")?.status == 503 },
                      "the partitioned member still says it is ready")
        // The others go on: another source writes through m1.
        for p in UInt64(1)...5 {
            let r = try await ClusterWrites.put(c1, sourceID: "b", expected: p - 1, new: p, operations: [.set(key: Array("b\(p)".utf8), value: Array("y".utf8), expiry: nil)])
            if let r, case .applied = r {} else if let r { return XCTFail("m1: \(r)") }
        }

        for proxy in proxies { proxy.fault = .none }
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: m0.adminPort, path: "/readyz")?.status == 200 }, String(m0.daemon.log.suffix(2000)))
        // The refused batches' outcome is resolved through the checkpoint: each of them
        // may have reached etcd once the partition healed, never both.
        let cp = try await c1.checkpoint(sourceID: "a") ?? 0
        XCTAssertTrue([5, 6, 7].contains(cp), "checkpoint \(cp)")
        let r = try await ClusterWrites.put(c0, sourceID: "a", expected: cp, new: 8, operations: op(8))
        if let r, case .applied = r {} else if let r { return XCTFail("after the partition: \(r)") }

        // Conditional writes (qsrest's) commit through etcd too: the second member decides
        // against the state the first one committed.
        let cw = { (expected: UInt64) -> Request in
            .writes(.init(token: [], sourceID: "cw", expected: expected, new: expected + 1, writes: [
                ConditionalWrite(.add, key: Array("cw".utf8), value: Array("first".utf8)),
                ConditionalWrite(.increment(by: 5, origin: 0), key: Array("n".utf8)),
            ]))
        }
        guard case let .written(_, first) = try await c0.send(cw(0)) else { return XCTFail("conditional writes on m0") }
        XCTAssertEqual(first, [.done, .number(5)])
        guard case let .written(_, second) = try await c1.send(cw(1)) else { return XCTFail("conditional writes on m1") }
        XCTAssertEqual(second, [.exists, .number(10)])
        let head = try await c1.head()
        let c2 = try await QSClient.connect(host: "127.0.0.1", port: m2.port)
        for c in [c0, c2] {
            let same = await Harness.eventually(timeout: .seconds(10)) { (try? await c.head()) == head }
            XCTAssertTrue(same)
        }
        try assertVerified(m1.address, against: [m0.address, m2.address])
        var positions = [UInt64]()
        for e in try await c1.entries(from: 1, count: 1000) {
            let entry = try LogEntry.decode(e.bytes)
            if entry.origin.sourceID == "a" { positions.append(entry.origin.position) }
        }
        XCTAssertEqual(positions, Array(1...5) + (cp > 5 ? [cp] : []) + [8])
        let n = try await c2.get(Array("n".utf8))
        XCTAssertEqual(n?.value, [0, 0, 0, 0, 0, 0, 0, 10])
        for c in [c0, c1, c2] { await c.close() }
    }
}

extension Array {
    func asyncMap<T>(_ body: (Element) async throws -> T) async rethrows -> [T] {
        var out = [T]()
        for e in self { out.append(try await body(e)) }
        return out
    }
}
