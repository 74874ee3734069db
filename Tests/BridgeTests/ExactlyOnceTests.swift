import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// Resume after SIGKILL and duplicate bridges: nothing lost, nothing applied twice.
final class ExactlyOnceTests: XCTestCase {
    var tmp: URL!
    let dbMap = "0=main/,1=aux/"
    let prefixes = [0: "main/", 1: "aux/"]

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("once")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func bridgeArgs(_ node: RootNode, _ fx: KTFixture) -> [String] {
        ["--root", node.address, "--source", "capture:\(fx.stream.path)", "--db-map", dbMap, "--allow-clear",
         "--source-id", "kt-main", "--batch-max-ops", "25", "--log-format", "text"]
    }

    func testSIGKILLAtAnyMomentThenRestartLosesNothingAndAppliesNothingTwice() async throws {
        let fx = try KTFixture("medium")
        let node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ReplayTests.noPurge)
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        var kills = 0
        var lastCheckpoint: UInt64 = 0
        // Kill three times at growing checkpoints, then let a last run finish.
        for _ in 0..<3 {
            let bridge = try DaemonProcess("qsktbridge", bridgeArgs(node, fx), logDir: tmp)
            let target = lastCheckpoint
            var seen: UInt64 = 0
            let moved = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(5)) {
                seen = (try? await client.checkpoint(sourceID: "kt-main")) ?? 0
                return seen > target || !bridge.isRunning
            }
            XCTAssertTrue(moved)
            if !bridge.isRunning { break }
            try bridge.stop(signal: SIGKILL)
            kills += 1
            lastCheckpoint = seen
        }
        XCTAssertGreaterThan(kills, 0, "the bridge finished before it could be killed")
        // The watching connection would sit idle through the last run, which can outlast the
        // root's idle timeout (60 s) under ThreadSanitizer: the state is read on a new one.
        await client.close()
        let final = try Harness.run("qsktbridge", bridgeArgs(node, fx))
        XCTAssertEqual(final.status, 0, String(decoding: final.stderr, as: UTF8.self))
        let reader = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let got = try await dumpState(reader, at: fx.recordedAt)
        XCTAssertEqual(got, try fx.expectedState(prefixes: prefixes))
        let positions = try await verifyLog(reader, sourceID: "kt-main")
        XCTAssertGreaterThan(positions.count, 1)
        await reader.close()
    }

    func testThreeBridgesWithOneSourceIDAreHarmless() async throws {
        let fx = try KTFixture("medium")
        let node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ReplayTests.noPurge)
        let bridges = try (0..<3).map { _ in try DaemonProcess("qsktbridge", bridgeArgs(node, fx), logDir: tmp) }
        // A minute; three instrumented bridges and root took 80 s under ThreadSanitizer on two
        // loaded cores, so three there.
        let limit: Duration = Harness.sanitizer == nil ? .seconds(60) : .seconds(180)
        XCTAssertTrue(Harness.waitUntil(timeout: limit) { bridges.allSatisfy { !$0.isRunning } },
                      "the three bridges did not finish within \(limit)" + (Harness.sanitizer.map { " (widened from 60 s under the \($0) sanitizer)" } ?? ""))
        for b in bridges {
            b.process.waitUntilExit()
            XCTAssertEqual(b.process.terminationStatus, 0, b.log)
        }
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let got = try await dumpState(client, at: fx.recordedAt)
        XCTAssertEqual(got, try fx.expectedState(prefixes: prefixes))
        _ = try await verifyLog(client, sourceID: "kt-main")
        // At least one bridge met another's writes (conflicts are how duplicates stay harmless).
        let conflicted = bridges.contains { $0.log.contains("conflict") }
        XCTAssertTrue(conflicted, "three bridges racing on one checkpoint should conflict at least once")
        await client.close()
    }

    func testBridgeWaitsForARootThatIsDownThenCatchesUp() async throws {
        let fx = try KTFixture("basic")
        // The bridge is pointed at the root before the root exists: at a Unix socket path,
        // which the root binds when it starts (no port has to be guessed in advance).
        let socket = tmp.appendingPathComponent("root.sock").path
        let bridge = try DaemonProcess("qsktbridge", ["--root", "unix:\(socket)", "--source", "capture:\(fx.stream.path)",
                                                      "--db-map", "0=,1=aux/", "--source-id", "late", "--log-format", "text"], logDir: tmp)
        XCTAssertTrue(Harness.waitUntil { bridge.log.contains("retrying") }, bridge.log)
        XCTAssertTrue(bridge.isRunning, "the bridge waits for the root instead of giving up")
        let node = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--unix", socket] + ReplayTests.noPurge)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { !bridge.isRunning }, bridge.log)
        bridge.process.waitUntilExit()
        XCTAssertEqual(bridge.process.terminationStatus, 0, bridge.log)
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let got = try await dumpState(client, at: fx.recordedAt)
        XCTAssertEqual(got, try fx.expectedState(prefixes: [0: "", 1: "aux/"]))
        await client.close()
    }

    func testRootRestartedWhileABatchIsInFlightDoesNotWedgeTheBridge() async throws {
        let fx = try KTFixture("basic")
        let data = tmp.appendingPathComponent("root")
        // The bridge reaches the root at a Unix socket path, which the restarted root binds
        // again (a TCP port given up could be taken by another process meanwhile).
        let socket = tmp.appendingPathComponent("root.sock").path
        var root = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket] + ReplayTests.noPurge)
        let bridge = try DaemonProcess("qsktbridge", ["--root", "unix:\(socket)", "--source", "ulog:\(fx.ulog.path)", "--db-map", "0=,1=aux/",
                                                      "--source-id", "u", "--batch-max-ops", "20", "--log-format", "text"], logDir: tmp)
        XCTAssertTrue(Harness.waitUntil { bridge.log.contains("reading source") }, bridge.log)
        XCTAssertEqual(try root.daemon.stop(signal: SIGTERM), 0)
        root = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket] + ReplayTests.noPurge)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let last = try ULogLast.timestamp(fx.ulog)
        let done = await Harness.eventually(timeout: .seconds(30)) { (try? await c.checkpoint(sourceID: "u")) == last }
        XCTAssertTrue(done, bridge.log)
        let got = try await dumpState(c, at: fx.recordedAt)
        XCTAssertEqual(got, try fx.expectedState(prefixes: [0: "", 1: "aux/"]))
        XCTAssertEqual(try bridge.stop(), 0, "the bridge stops cleanly after the root came back")
        await c.close()
    }
}

/// The newest timestamp of a ulog directory (the last record of its last file).
enum ULogLast {
    static func timestamp(_ dir: URL) throws -> UInt64 {
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".ulog") }.sorted()
        let bytes = [UInt8](try Data(contentsOf: dir.appendingPathComponent(files.last!)))
        var pos = 17, last: UInt64 = 0
        while pos + 13 <= bytes.count {
            var ts: UInt64 = 0
            for i in 1...8 { ts = ts << 8 | UInt64(bytes[pos + i]) }
            var size = 0
            for i in 9...12 { size = size << 8 | Int(bytes[pos + i]) }
            last = ts
            pos += 14 + size
        }
        return last
    }
}
