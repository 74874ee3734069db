import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// A root cluster's log entries travel through etcd, one transaction each, and etcd takes
/// at most `--max-request-bytes` (1.5 MiB by default) a request. A batch whose entry does not
/// fit is refused at once as too large, named, and the cluster goes on taking writes;
/// qsrest sends the requests of such a batch again in smaller ones. Before, the member asked
/// etcd, took its refusal for "no quorum" and the writer sent the same batch again for good:
/// every writer of the cluster stood still while /readyz said 200.
final class ClusterLimitsTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cluster-limits")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testABatchLargerThanEtcdTakesIsRefusedAndTheClusterWritesOn() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let member = try RootNode(data: tmp.appendingPathComponent("m0"), logDir: tmp,
                                  extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "3s", "--log-format", "text"])
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: member.adminPort, path: "/readyz")?.status == 200 }, member.daemon.log)
        let client = try await QSClient.connect(host: "127.0.0.1", port: member.port)
        let big = [UInt8](repeating: 0x61, count: 2 << 20)
        do {
            _ = try await client.write([.set(key: Array("big".utf8), value: big, expiry: nil)], sourceID: "t")
            XCTFail("a 2 MiB entry was taken by a cluster whose etcd takes 1.5 MiB")
        } catch let ClientError.server(code, message) {
            XCTAssertEqual(ErrorCode(rawValue: code), .frameTooLarge, message)
            XCTAssertTrue(message.contains("more than the root cluster's etcd takes in one request"), message)
        }
        _ = try await client.write([.set(key: Array("small".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "t")
        let small = try await client.get(Array("small".utf8))
        XCTAssertEqual(small?.value, Array("v".utf8))

        // qsrest: three requests of 600 KB in one batch (1.8 MB) are sent again in smaller
        // batches, and all three are acknowledged.
        let acl = tmp.appendingPathComponent("acl.toml")
        try Data("""
            [producers.p]
            token_sha256 = "16fcec8da95a36ff8e552b60694e68ff0b8596090162247accd798559f7daad1"
            prefixes = ["p/"]
            """.utf8).write(to: acl)  // the SHA-256 of "p-token"
        let rest = try DaemonProcess("qsrest", ["--root", member.address, "--listen", "127.0.0.1:0", "--acl", acl.path,
                                                "--admin", "127.0.0.1:0", "--batch-interval", "1s", "--commit-timeout", "10s",
                                                "--source-id", "rest", "--log-format", "text"], logDir: tmp, ready: true)
        let port = try rest.port("rest")
        let body = tmp.appendingPathComponent("body")
        try Data(repeating: 0x62, count: 600_000).write(to: body)
        let statuses = NIOLockedStatuses()
        let threads = (0..<3).map { i in
            Thread {
                let r = try? Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", "p:p-token", "-X", "PUT",
                                                           "--data-binary", "@\(body.path)", "http://127.0.0.1:\(port)/p%2F\(i)"])
                statuses.add(r.map { String(decoding: $0.stdout, as: UTF8.self) } ?? "curl failed")
            }
        }
        threads.forEach { $0.start() }
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { statuses.all.count == 3 }, rest.log)
        XCTAssertEqual(statuses.all.sorted(), ["201", "201", "201"], rest.log)
        for i in 0..<3 {
            let got = try await client.get(Array("p/\(i)".utf8))
            XCTAssertEqual(got?.value.count, 600_000)
        }
        XCTAssertEqual(httpGet(port: member.adminPort, path: "/readyz")?.status, 200)
        await client.close()
        XCTAssertEqual(try rest.stop(), 0, rest.log)
    }
}

/// Answers gathered from several threads.
final class NIOLockedStatuses: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ s: String) { lock.withLock { list.append(s) } }
    var all: [String] { lock.withLock { list } }
}
