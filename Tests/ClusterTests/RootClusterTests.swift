import Foundation
import QSClient
import QSModel
import QSTesting
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
        try? FileManager.default.removeItem(at: tmp)
    }

    func member(_ i: Int, etcd: EtcdCluster) throws -> RootNode {
        try RootNode(data: tmp.appendingPathComponent("m\(i)"), logDir: tmp,
                     extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "3s", "--log-format", "text"])
    }

    func qsctl(_ args: [String]) throws -> (status: Int32, out: String) {
        let r = try Harness.run("qsctl", args)
        return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
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
        for node in [members[1].address, members[2].address, replica.address] {
            let v = try qsctl(["--node", members[0].address, "verify", "--against", node])
            XCTAssertEqual(v.status, 0, "verify against \(node): \(v.out)")
        }

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
}

extension Array {
    func asyncMap<T>(_ body: (Element) async throws -> T) async rethrows -> [T] {
        var out = [T]()
        for e in self { out.append(try await body(e)) }
        return out
    }
}
