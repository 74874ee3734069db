import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// Full disks say so: on a real filesystem that runs out of room (a small tmpfs, mounted
/// when the tests may mount one), a write is refused as `disk-full` — not a full map, not an
/// I/O error —, `/readyz` fails while writes cannot succeed, nothing acknowledged is lost,
/// and the node recovers by itself once space returns. A replica checks the room a
/// snapshot needs before fetching it, and waits instead of retrying every second.
final class DiskFullTests: XCTestCase {
    var tmp: URL!
    var mounts: [URL] = []

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("diskfull")
    }

    override func tearDownWithError() throws {
        for m in mounts.reversed() { _ = try? Harness.run("/usr/bin/umount", ["-l", m.path]) }
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A tmpfs of `size` at a new directory; skips the test where mounting is not allowed.
    func smallDisk(_ name: String, size: String) throws -> URL {
        let dir = tmp.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let r = try Harness.run("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", dir.path])
        guard r.status == 0 else {
            throw XCTSkip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): \(String(decoding: r.stderr, as: UTF8.self))")
        }
        mounts.append(dir)
        return dir
    }

    func resize(_ dir: URL, to size: String) throws {
        let r = try Harness.run("/usr/bin/mount", ["-o", "remount,size=\(size)", dir.path])
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
    }

    func testARootOnAFullDiskRefusesAsDiskFullFailsReadyzAndRecoversByItself() async throws {
        let disk = try smallDisk("root", size: "4m")
        let root = try RootNode(data: disk.appendingPathComponent("data"), logDir: tmp, extraArgs: ["--map-size", "64MiB"])
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        var acknowledged = [String]()
        var refusal: String?
        let value = [UInt8](repeating: 0x61, count: 64 << 10)
        for i in 0..<200 {
            do {
                _ = try await client.write([.set(key: Array("k\(i)".utf8), value: value, expiry: nil)], sourceID: "t", attempts: 1)
                acknowledged.append("k\(i)")
            } catch let ClientError.server(code, message) {
                XCTAssertEqual(ErrorCode(rawValue: code), .diskFull, message)
                refusal = message
                break
            }
        }
        let message = try XCTUnwrap(refusal, "the 4 MiB disk filled")
        XCTAssertTrue(message.contains("disk full"), message)
        let ready = try XCTUnwrap(httpGet(port: root.adminPort, path: "/readyz"))
        XCTAssertEqual(ready.status, 503)
        XCTAssertTrue(ready.body.contains("disk full") && ready.body.contains("free space"), ready.body)
        XCTAssertTrue(root.daemon.log.contains("disk full"), root.daemon.log)
        // qsctl status says the same as /readyz: the root keeps its role, its writes fail.
        let status = try Harness.run("qsctl", ["--node", root.address, "status"])
        let table = String(decoding: status.stdout, as: UTF8.self)
        XCTAssertTrue(table.contains("writes   FAILING") && table.contains("disk full") && table.contains("free space"), table)
        // A batch resent after its answer was lost (compare-and-swap at a position already
        // passed) writes nothing: it gets its conflict, which tells the writer it committed,
        // not a disk-full that would have it answer a committed write as failed.
        // With the disk filled to the last byte.
        let filler = disk.appendingPathComponent("filler")
        _ = try Harness.run("/usr/bin/dd", ["if=/dev/zero", "of=\(filler.path)", "bs=4096"])
        let stored = try await client.checkpoint(sourceID: "t")
        let position = try XCTUnwrap(stored)
        let resent = try await client.batch(sourceID: "t", expected: position - 1, new: position,
                                            operations: [.set(key: Array("k0".utf8), value: value, expiry: nil)])
        XCTAssertEqual(resent, .conflict(current: position))
        try FileManager.default.removeItem(at: filler)

        // Room again: the next write succeeds without a restart and /readyz follows.
        try resize(disk, to: "64m")
        _ = try await client.write([.set(key: Array("after".utf8), value: value, expiry: nil)], sourceID: "t", attempts: 1)
        XCTAssertEqual(httpGet(port: root.adminPort, path: "/readyz")?.status, 200)
        let healthy = String(decoding: try Harness.run("qsctl", ["--node", root.address, "status"]).stdout, as: UTF8.self)
        XCTAssertFalse(healthy.contains("FAILING"), healthy)
        // Nothing acknowledged was lost, across a restart too.
        await client.close()
        _ = try root.daemon.stop()
        let again = try RootNode(data: root.data, logDir: tmp)
        let c2 = try await QSClient.connect(host: "127.0.0.1", port: again.port)
        let keys = Set(try await dumpState(c2).keys.map { String(decoding: $0, as: UTF8.self) })
        XCTAssertEqual(keys, Set(acknowledged + ["after"]))
        await c2.close()
    }

    func testAReplicaWithoutRoomForASnapshotWaitsWithoutFetchingItThenBootstrapsOnceThereIsRoom() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        // Incompressible: a RocksDB snapshot (compressed SST files) is then as large as LMDB's.
        for i in 0..<8 {
            _ = try await client.write([.set(key: Array("k\(i)".utf8), value: incompressibleBytes(512 << 10, seed: UInt64(i) + 1), expiry: nil)], sourceID: "t")
        }
        let head = try await client.head()
        await client.close()

        // An empty LMDB replica waits for room before its store opens (its ports closed), a
        // RocksDB one once it is open: its admin server (a Unix socket here) says so.
        let disk = try smallDisk("replica", size: "2m")
        let socket = tmp.appendingPathComponent("admin.sock").path, readyFile = tmp.appendingPathComponent("replica.ready.json").path
        let replica = try DaemonProcess("qsnode", ["--role", "replica", "--data", disk.appendingPathComponent("data").path, "--listen", "127.0.0.1:0",
                                                   "--upstream", root.address, "--admin", "unix:" + socket, "--ready-file", readyFile,
                                                   "--log-format", "text"], logDir: tmp)
        func metric(_ name: String) -> Double? {
            guard let body = httpRequest(unixPath: socket, path: "/metrics")?.body else { return nil }
            return body.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        try await waitFor("the replica to find no room", timeout: .seconds(15), pollEvery: .milliseconds(100)) {
            (metric("qs_replica_disk_full_waits_total") ?? 0) >= 1
        }
        let ready = try XCTUnwrap(httpRequest(unixPath: socket, path: "/readyz"))
        XCTAssertEqual(ready.status, 503)
        XCTAssertTrue(ready.body.contains("disk full"), ready.body)
        XCTAssertTrue(replica.log.contains("a snapshot of"), replica.log)
        // While it waits, its lag is the upstream's head now, not a figure from before.
        try await waitFor("the lag read from the upstream while waiting", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            metric("qs_replica_lag_entries") == Double(head.index)
        }
        // It waits (5 s first, less a jitter of at most half) instead of fetching again
        // every second.
        try await Task.sleep(for: .seconds(2))
        XCTAssertEqual(metric("qs_replica_disk_full_waits_total"), 1)
        XCTAssertEqual(root.metric("qs_snapshots_served_total") ?? 0, 0, "no snapshot was taken whole by a replica without room for it")

        try resize(disk, to: "64m")
        try await waitFor("the replica bootstrapped by itself", timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            metric("qs_replica_head_index") == Double(head.index)
        }
        if ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] != "rocksdb" {
            // LMDB: the fast way, written once before the store opened (a RocksDB replica
            // bootstraps once its store is open, and waits for room there).
            XCTAssertTrue(replica.log.contains("into=the data directory, before the store opened"), replica.log)
        }
        try await waitFor("the replica ready", timeout: .seconds(15), pollEvery: .milliseconds(100)) {
            httpRequest(unixPath: socket, path: "/readyz")?.status == 200
        }
        XCTAssertEqual(try replica.stop(), 0)
    }
}
