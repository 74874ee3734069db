import Foundation
import QSNet
import QSTesting
import XCTest

/// Every daemon listens on port 0 when asked and tells what it bound in its ready file.
final class ReadyFileTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("ready-file")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testQsnodeListsEveryListenerWithItsRealAddress() throws {
        let writeSocket = tmp.appendingPathComponent("w.sock").path
        let node = try DaemonProcess("qsnode", ["--data", tmp.appendingPathComponent("d").path,
                                                "--listen", "127.0.0.1:0", "--unix", writeSocket,
                                                "--memcached", "127.0.0.1:0", "--kt-http", "127.0.0.1:0",
                                                "--admin", "127.0.0.1:0", "--log-format", "text"],
                                     logDir: tmp, ready: true)
        XCTAssertEqual(node.listeners.map(\.name), ["write", "write", "memcached", "kt-http", "admin"])
        XCTAssertEqual(node.listeners[1].address, "unix:\(writeSocket)")
        var ports = Set<Int>()
        for name in ["write", "memcached", "kt-http", "admin"] {
            let port = try node.port(name)
            XCTAssertNotEqual(port, 0, name)
            XCTAssertTrue(Harness.isListening(port: port), "\(name) on \(port)")
            XCTAssertTrue(node.log.contains("\(name) listening"), node.log)
            XCTAssertTrue(node.log.contains("127.0.0.1:\(port)"), "the log line gives the real port; log:\n\(node.log)")
            ports.insert(port)
        }
        XCTAssertEqual(ports.count, 4)
        let readyFile = try XCTUnwrap(node.readyFile)
        XCTAssertEqual(try node.stop(), 0, node.log)
        XCTAssertFalse(FileManager.default.fileExists(atPath: readyFile.path), "the ready file goes with the daemon")
    }

    func testBridgesAndFakeKTTakePortZero() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        XCTAssertNotEqual(kt.port, 0)
        XCTAssertEqual(kt.daemon.listeners.map(\.name), ["kt"])
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let ktBridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                        "--admin", "127.0.0.1:0", "--log-format", "text"], logDir: tmp, ready: true)
        let qsBridge = try DaemonProcess("qsqsbridge", ["--source", "qs://\(root.address)", "--root", target.address,
                                                        "--admin", "127.0.0.1:0", "--log-format", "text"], logDir: tmp, ready: true)
        for bridge in [ktBridge, qsBridge] {
            XCTAssertEqual(bridge.listeners.map(\.name), ["admin"], bridge.log)
            XCTAssertEqual(httpGet(port: try bridge.port("admin"), path: "/healthz")?.status, 200, bridge.log)
            XCTAssertEqual(try bridge.stop(), 0, bridge.log)
        }
        XCTAssertEqual(try kt.daemon.stop(), 0, kt.daemon.log)
    }
}
