import Foundation
import QSClient
import QSTesting
import XCTest

/// A `FaultProxy` between a bridge and KT, and between a bridge and its root: through
/// every fault of the wire the root ends equal to KT, no source position is applied twice,
/// and `/readyz` says 503 while the bridge cannot progress and 200 once it has caught up.
final class WireFaultTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("wire")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testBridgeToKTThroughEveryFaultEndsEqualToKT() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let proxy = try FaultProxy(upstreamPort: kt.port)
        defer { proxy.close() }
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        try await exercise(proxy, kt: kt, root: root, bridgeRoot: root.address, bridgeSource: proxy.address)
    }

    func testBridgeToRootThroughEveryFaultEndsEqualToKT() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let proxy = try FaultProxy(upstreamPort: root.port)
        defer { proxy.close() }
        // Half-open: a batch sent into a connection the root no longer has waits out the
        // write call's 15 s timeout (/readyz says "connected but not answering" after 4 s),
        // then the bridge reconnects and sends it again under compare-and-swap.
        try await exercise(proxy, kt: kt, root: root, bridgeRoot: proxy.address, bridgeSource: kt.address)
    }

    /// Each fault in turn while KT takes writes; the test talks to KT and the root directly.
    func exercise(_ proxy: FaultProxy, kt: FakeKTProcess, root: RootNode, bridgeRoot: String, bridgeSource: String,
                  faults: [FaultProxy.Fault] = FaultProxy.Fault.wireFaults) async throws {
        let bridge = try DaemonProcess("qsktbridge", ["--root", bridgeRoot, "--source", "kt://\(bridgeSource)", "--source-id", "kt",
                                                      "--db-map", "0=", "--sid", "99", "--batch-interval", "100ms",
                                                      "--source-timeout", "1s", "--ready-lag", "2s",
                                                      "--admin", "127.0.0.1:0", "--log-format", "text"], logDir: tmp, ready: true)
        let admin = try bridge.port("admin")
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        var n = 0
        func writeKT(_ count: Int) {
            for _ in 0..<count {
                kt.set("k\(n % 37)", "v\(n)")
                if n % 5 == 0 { kt.remove("k\((n + 11) % 37)") }
                n += 1
            }
        }
        func equalToKT() async -> Bool {
            guard let state = try? await dumpState(c) else { return false }
            return state.mapValues(\.value) == kt.state(prefixes: [0: ""])
        }
        func ready() -> Int? { httpGet(port: admin, path: "/readyz")?.status }
        writeKT(20)
        try await waitFor("the bridge caught up and ready", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
            ready() == 200 ? await equalToKT() : false
        }
        for fault in faults {
            proxy.fault = fault
            writeKT(30)
            switch fault {
            case .delay, .bandwidth:
                // A slow wire still carries everything.
                try await waitFor("\(fault): caught up through the slow wire", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
                    await equalToKT()
                }
            case .halfOpen:
                // The dead connection is noticed and replaced (new connections pass).
                // Up to the write call's 15 s timeout, plus a reconnect, on a busy machine.
                try await waitFor("\(fault): the silent connection replaced and caught up", timeout: .seconds(60),
                                  pollEvery: .milliseconds(50)) { await equalToKT() }
            default:
                try await waitFor("\(fault): /readyz 503 while nothing can pass", timeout: .seconds(15), pollEvery: .milliseconds(50)) {
                    ready() == 503
                }
                XCTAssertTrue(bridge.isRunning, "\(fault): the bridge keeps trying")
            }
            proxy.fault = .none
            writeKT(5)
            try await waitFor("after \(fault): the root equal to KT and /readyz 200", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
                ready() == 200 ? await equalToKT() : false
            }
        }
        let positions = try await verifyLog(c, sourceID: "kt")
        XCTAssertFalse(positions.isEmpty)
        // A dropped or reset connection is made again (a partition may be outlived by the old one).
        let cut = faults.filter { $0 == .drop || $0 == .reset }.count
        XCTAssertGreaterThanOrEqual(proxy.connectionsAccepted, 1 + cut, "the bridge reconnected after each cut")
        XCTAssertEqual(try bridge.stop(), 0, bridge.log)
        await c.close()
    }
}
