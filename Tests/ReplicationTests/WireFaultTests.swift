import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// A `FaultProxy` between a replica and its upstream: through every fault of the wire the
/// replica ends with the root's head (same index, same chained hash) and records, and
/// `/readyz` says 503 while no word of the root gets through and 200 once it has caught up.
final class WireFaultTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("repl-wire")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testReplicaToUpstreamThroughEveryFaultEndsWithTheRootsHistory() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let proxy = try FaultProxy(upstreamPort: root.port)
        defer { proxy.close() }
        let w = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        var n = 0
        func write(_ count: Int) async throws {
            for _ in 0..<count {
                _ = try await w.write([.set(key: Array("k\(n % 41)".utf8), value: Array("v\(n)".utf8), expiry: nil)], sourceID: "t")
                n += 1
            }
        }
        try await write(10)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("r"), upstreams: [proxy.address], logDir: tmp,
                                      extraArgs: ["--ready-lag", "2s"])
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        func ready() -> Int? { httpGet(port: replica.adminPort, path: "/readyz")?.status }
        func sameAsRoot() async -> Bool {
            guard let a = try? await w.head(), let b = try? await r.head(), a == b else { return false }
            guard let sa = try? await dumpState(w), let sb = try? await dumpState(r) else { return false }
            return sa == sb
        }
        try await waitFor("the replica bootstrapped, caught up and ready", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
            ready() == 200 ? await sameAsRoot() : false
        }
        for fault in FaultProxy.Fault.wireFaults {
            proxy.fault = fault
            try await write(30)
            switch fault {
            case .delay, .bandwidth:
                try await waitFor("\(fault): caught up through the slow wire", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
                    await sameAsRoot()
                }
            case .halfOpen:
                try await waitFor("\(fault): the silent subscription replaced and caught up", timeout: .seconds(30),
                                  pollEvery: .milliseconds(50)) { await sameAsRoot() }
            default:
                try await waitFor("\(fault): /readyz 503 while no word of the root passes", timeout: .seconds(15),
                                  pollEvery: .milliseconds(50)) { ready() == 503 }
                XCTAssertTrue(replica.daemon.isRunning, "\(fault): the replica keeps trying")
            }
            proxy.fault = .none
            try await write(5)
            try await waitFor("after \(fault): the replica at the root's head with its records and /readyz 200", timeout: .seconds(30),
                              pollEvery: .milliseconds(50)) { ready() == 200 ? await sameAsRoot() : false }
        }
        _ = try await verifyLog(r, sourceID: "t")
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { replica.metric("qs_replica_bootstraps_total") == 1 }, "faults on the wire never cost a bootstrap")  // counted just after the head shows
        XCTAssertGreaterThanOrEqual(proxy.connectionsAccepted, 3, "the replica reconnected after the drop and the reset")
        await r.close()
        await w.close()
    }
}
