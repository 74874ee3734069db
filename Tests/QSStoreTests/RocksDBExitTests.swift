import Foundation
import NIOConcurrencyHelpers
import QSModel
import QSStore
import QSTesting
import XCTest

/// A process that exits with RocksDB stores still open and busy exits with its own status.
/// librocksdb's static destructors run at `exit`; a DB still open then (a store a test never
/// shut down, one released by a task ending as the process exits) met them in its
/// background threads, a store thread's write or its own `deinit`, and the process died of
/// SIGABRT ("pthread lock: Invalid argument") instead — the XCTest runner did, after every
/// test had passed. The child is this test bundle itself, running the test below.
final class RocksDBExitTests: XCTestCase {
    static let childVariable = "QS_TEST_ROCKSDB_EXIT_CHILD"

    func testAProcessExitingWithRocksDBStoresOpenAndBusyExitsWithItsStatus() throws {
        let dir = try Harness.tempDir("rocksdb-exit")
        var failed = true
        defer { Harness.cleanUp(dir, failed: failed) }
        let runs = 8
        for run in 0..<runs {
            let child = Process()
            child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            child.arguments = ["QSStoreTests.RocksDBExitTests/testChildExitsWithStoresOpenAndBusy"]
            var environment = ProcessInfo.processInfo.environment
            environment[Self.childVariable] = dir.appendingPathComponent("run-\(run)").path
            child.environment = environment
            let log = dir.appendingPathComponent("run-\(run).log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            child.standardOutput = handle
            child.standardError = handle
            try child.run()
            let exited = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                child.waitUntilExit()
                exited.signal()
            }
            guard exited.wait(timeout: .now() + 60) == .success else {
                child.terminate()
                return XCTFail("run \(run): the child did not exit within 60 s")
            }
            try handle.close()
            let said = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            XCTAssertEqual(child.terminationReason, .exit, "run \(run): the child died of signal \(child.terminationStatus): \(said.suffix(2000))")
            XCTAssertEqual(child.terminationStatus, 0, "run \(run): \(said.suffix(2000))")
            XCTAssertTrue(said.contains("stores busy at the test's end"), "run \(run): the child never got its stores busy: \(said.suffix(2000))")
            guard child.terminationReason == .exit, child.terminationStatus == 0 else { return }
        }
        failed = false
    }

    /// The child: three RocksDB stores, each written and read without pause by tasks that
    /// never end; the test returns with them all busy and XCTest exits the process.
    func testChildExitsWithStoresOpenAndBusy() throws {
        guard let path = ProcessInfo.processInfo.environment[Self.childVariable] else {
            throw XCTSkip("run as a child process by testAProcessExitingWithRocksDBStoresOpenAndBusyExitsWithItsStatus")
        }
        let writes = NIOLockedValueBox(0)
        var stores: [Store] = []
        for n in 0..<3 {
            let store = try Store(directory: "\(path)/store-\(n)", engine: .rocksdb)
            stores.append(store)
            for writer in 0..<2 {
                Task.detached {
                    var position = UInt64(0)
                    let source = "writer-\(writer)"
                    while true {
                        let key = Array("k-\(writer)-\(position % 100)".utf8)
                        let value = [UInt8](repeating: UInt8(truncatingIfNeeded: position), count: 4096)
                        do {
                            _ = try await store.applyBatch(sourceID: source, expected: position, new: position + 1,
                                                           operations: [.set(key: key, value: value, expiry: nil)])
                            position += 1
                            writes.withLockedValue { $0 += 1 }
                        } catch {
                            return
                        }
                        _ = try? await store.get(key)
                    }
                }
            }
            // Reads on the tasks' own threads (as the read ports do), and a store opened and
            // released over and over (its `deinit` closing the DB on a task's thread).
            Task.detached {
                while true {
                    _ = try? store.readInline { try $0.get(Array("k-0-1".utf8)) }
                    await Task.yield()
                }
            }
            Task.detached {
                var round = 0
                while true {
                    round += 1
                    await Task.yield()
                    guard let passing = try? Store(directory: "\(path)/passing-\(n)", engine: .rocksdb) else { continue }
                    _ = try? await passing.applyBatch(sourceID: "s", expected: UInt64(round - 1), new: UInt64(round),
                                                      operations: [.set(key: Array("p".utf8), value: Array("\(round)".utf8), expiry: nil)])
                }
            }
        }
        let deadline = Date(timeIntervalSinceNow: 30)
        while writes.withLockedValue({ $0 }) < 100, Date() < deadline { usleep(2_000) }
        XCTAssertGreaterThanOrEqual(writes.withLockedValue { $0 }, 100, "the stores took too few writes")
        print("stores busy at the test's end: \(writes.withLockedValue { $0 }) writes")
        withExtendedLifetime(stores) {}
    }
}
