import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// A change no batch can carry does not wedge a bridge: it stops it, naming the key, its
/// size and the flag to change, or (`--on-oversized skip`) is skipped, counted and logged;
/// whatever came before it is applied either way.
final class PoisonRecordTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("poison")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    static let base: UInt64 = 1_764_000_000_000_000_000

    /// A KT replication capture (acceptance byte, then update frames) of sets in database 0.
    func capture(_ sets: [(key: String, valueBytes: Int)]) throws -> URL {
        var bytes: [UInt8] = [0xB1]
        for (i, set) in sets.enumerated() {
            let key = Array(set.key.utf8)
            let value = [UInt8](repeating: 0xFF, count: 5) + [UInt8](repeating: UInt8(ascii: "v"), count: set.valueBytes)
            var message: [UInt8] = [0, 1, 0, 0, 0xA1] + Self.varnum(key.count) + Self.varnum(value.count) + key
            message += value
            bytes += [0xB1] + Self.bigEndian(Self.base + UInt64(i + 1), 8) + Self.bigEndian(UInt64(message.count), 4) + message
        }
        let url = tmp.appendingPathComponent("feed-\(UUID().uuidString.prefix(4)).bin")
        try Data(bytes).write(to: url)
        return url
    }

    static func bigEndian(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * (n - 1 - $0))) } }

    /// KT's varnum: 7 bits a byte, most significant first, high bit set on all but the last.
    static func varnum(_ n: Int) -> [UInt8] {
        var out = [UInt8(n & 0x7F)], v = n >> 7
        while v > 0 {
            out.insert(UInt8(v & 0x7F) | 0x80, at: 0)
            v >>= 7
        }
        return out
    }

    func keys(_ client: QSClient) async throws -> Set<String> {
        Set(try await dumpState(client).keys.map { String(decoding: $0, as: UTF8.self) })
    }

    func testAChangeOverTheBridgesLimitStopsItNamingKeyAndSizeOrIsSkippedWhenAsked() async throws {
        let feed = try capture([("k1", 10), ("big", 2000), ("k3", 10)])
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let stop = try Harness.run("qsktbridge", ["--root", root.address, "--source", "capture:\(feed.path)", "--source-id", "a",
                                                  "--batch-max-bytes", "1000", "--once", "--log-format", "text"])
        let err = String(decoding: stop.stderr, as: UTF8.self)
        XCTAssertNotEqual(stop.status, 0, err)
        XCTAssertTrue(err.contains("key 'big' with 2003 bytes of key and value"), err)
        XCTAssertTrue(err.contains("--batch-max-bytes") && err.contains("--on-oversized skip"), err)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let got1 = try await client.checkpoint(sourceID: "a")
        XCTAssertEqual(got1, Self.base + 1, "what came before it is applied")
        let got2 = try await keys(client)
        XCTAssertEqual(got2, ["k1"])

        let skip = try Harness.run("qsktbridge", ["--root", root.address, "--source", "capture:\(feed.path)", "--source-id", "b",
                                                  "--batch-max-bytes", "1000", "--on-oversized", "skip", "--once", "--log-format", "text"])
        let skipErr = String(decoding: skip.stderr, as: UTF8.self)
        XCTAssertEqual(skip.status, 0, skipErr)
        XCTAssertTrue(skipErr.contains("skipped a change too big to write") && skipErr.contains("key 'big'"), skipErr)
        let got3 = try await client.checkpoint(sourceID: "b")
        XCTAssertEqual(got3, Self.base + 3, "the checkpoint moves past it")
        let got4 = try await keys(client)
        XCTAssertEqual(got4, ["k1", "k3"])
        await client.close()
    }

    func testTheRootsFrameLimitSplitsBatchesThenStopsAtTheChangeNoFrameCarries() async throws {
        // Each of k1…k3 fits a 1 KiB frame alone, not together; "big" fits none.
        let feed = try capture([("k1", 600), ("k2", 600), ("k3", 600), ("big", 1500), ("k5", 10)])
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--max-frame-bytes", "1024"])
        let r = try Harness.run("qsktbridge", ["--root", root.address, "--source", "capture:\(feed.path)", "--source-id", "a",
                                               "--once", "--log-format", "text"])
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertNotEqual(r.status, 0, err)
        XCTAssertTrue(err.contains("key 'big' with 1503 bytes of key and value") && err.contains("--max-frame-bytes"), err)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let got5 = try await client.checkpoint(sourceID: "a")
        XCTAssertEqual(got5, Self.base + 3)
        let got6 = try await keys(client)
        XCTAssertEqual(got6, ["k1", "k2", "k3"])

        let skip = try Harness.run("qsktbridge", ["--root", root.address, "--source", "capture:\(feed.path)", "--source-id", "a",
                                                  "--on-oversized", "skip", "--once", "--log-format", "text"])
        XCTAssertEqual(skip.status, 0, String(decoding: skip.stderr, as: UTF8.self))
        let got7 = try await client.checkpoint(sourceID: "a")
        XCTAssertEqual(got7, Self.base + 5)
        let got8 = try await keys(client)
        XCTAssertEqual(got8, ["k1", "k2", "k3", "k5"])
        await client.close()
    }
}
