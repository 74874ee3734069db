import Foundation
import QSKTFeed
import QSTesting
import XCTest

/// `KTRPCClient` against a `fakekt`: pipelined pages of calls read back in order, as the
/// bridge's initial copy and `qsctl verify --kt` walk KT. Under `make tsan` this is where
/// the client's handoff of answers from the event loop to the reading task is exercised.
final class KTRPCClientTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("ktrpc")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testACursorWalkInPipelinedPagesReadsEveryRecordInOrder() async throws {
        let kt = try FakeKTProcess(logDir: tmp, databases: ["main.kct"])
        let count = 3000
        var i = 0
        while i < count {
            var p: [(String, [UInt8])] = [("DB", Array("0".utf8))]
            for j in i..<min(i + 1000, count) { p.append(("_k\(String(format: "%05d", j))", Array("v\(j)".utf8))) }
            XCTAssertEqual(kt.rpc("set_bulk", p).status, 200)
            i += 1000
        }
        let client = KTRPCClient(host: "127.0.0.1", port: kt.port, timeout: .seconds(30))
        let keys = try await client.withConnection { kt in
            let db = ("DB", Array("0".utf8)), cur = ("CUR", Array("1".utf8))
            let jumped = try await kt.call("cur_jump", [db, cur])
            XCTAssertEqual(jumped.status, 200, jumped.error)
            let step = KTRPCCall("cur_get", [db, cur, ("step", Array("true".utf8))])
            var keys = [String]()
            var more = true
            while more {
                for answer in try await kt.pipeline(Array(repeating: step, count: 500)) {
                    guard answer.status == 200, let key = answer.string("key") else {
                        more = false
                        break
                    }
                    XCTAssertEqual(answer.string("value"), "v\(Int(key.dropFirst()) ?? -1)")
                    keys.append(key)
                    // Another await between answers, as verify's QS lookups: the rest of the
                    // page is buffered in the channel's inbound stream meanwhile.
                    if keys.count % 7 == 0 { await Task.yield() }
                }
            }
            return keys
        }
        XCTAssertEqual(keys, (0..<count).map { "k" + String(format: "%05d", $0) })
    }

    func testAnAnswerOverTheLimitFailsTheCall() async throws {
        let kt = try FakeKTProcess(logDir: tmp, databases: ["main.kct"])
        kt.set("big", String(repeating: "x", count: 5000))
        kt.set("small", "y")
        let client = KTRPCClient(host: "127.0.0.1", port: kt.port, maxAnswerBytes: 1000)
        let small = try await client.withConnection { try await $0.call("get", [("key", Array("small".utf8))]) }
        XCTAssertEqual(small.status, 200)
        XCTAssertEqual(small.string("value"), "y")
        do {
            _ = try await client.withConnection { try await $0.call("get", [("key", Array("big".utf8))]) }
            XCTFail("an answer of 5,000 bytes was taken with a limit of 1,000")
        } catch let error as KTRPCError {
            guard case .tooLarge(1000) = error else { return XCTFail("\(error)") }
        }
    }
}
