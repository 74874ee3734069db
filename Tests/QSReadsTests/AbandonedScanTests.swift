import Foundation
import KTFormats
import Logging
import NIOCore
import QSNet
@testable import QSReads
import QSStore
import QSTesting
import XCTest

/// Work whose client is gone (its connection closed) stops: scans between pages, a binary
/// `get_bulk` every 4,096 keys (`KTRequestAbandoned`). Scans of the whole store carried on
/// after their connection closed, holding one of the two scan slots, and delayed a graceful
/// stop. (Whether a connection has closed is the channel's; here the question is asked of a
/// counter, so the test does not race the event loop.)
final class AbandonedScanTests: XCTestCase {
    var tmp: URL!
    var store: Store!

    override func setUp() async throws {
        tmp = try Harness.tempDir("abandoned")
        store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        _ = try await store.applyBatch(sourceID: "test", expected: 0, new: 1,
                                       operations: (0..<10_000).map { .set(key: Array(String(format: "k%05d", $0).utf8), value: [1], expiry: nil) })
    }

    override func tearDown() async throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    /// Asked how many times, and gone from the `after`th question on.
    final class Gone: @unchecked Sendable {
        let lock = NSLock()
        var asked = 0
        let after: Int
        init(after: Int) { self.after = after }
        func ask() -> Bool {
            lock.lock()
            defer { lock.unlock() }
            asked += 1
            return asked >= after
        }
    }

    func testAScanStopsBetweenPagesOnceItsClientIsGone() async throws {
        var procedures = KTProcedures(databases: .single, clock: { 2_000_000_000 }, limits: ScanLimits(pageSize: 1000), started: Date(),
                                      connections: { 0 })
        // Present for the first three pages: a scan of ten pages stops before the fourth.
        let gone = Gone(after: 4)
        procedures.abandoned = { gone.ask() }
        let p = procedures
        let params = KTRPCParameters(query: Array("regex=nothing".utf8)[...], contentType: nil, body: [])
        do {
            _ = try await store.read { txn in try p.call("match_regex", params, in: txn) }
            XCTFail("the scan ran to its end")
        } catch is KTRequestAbandoned {}
        XCTAssertEqual(gone.asked, 4)
        // A client that stays gets the whole answer.
        procedures.abandoned = { false }
        let q = procedures
        let all = try await store.read { txn in try q.call("match_prefix", KTRPCParameters(query: Array("prefix=k".utf8)[...], contentType: nil, body: []), in: txn) }
        XCTAssertEqual(all.status, 200)
        XCTAssertTrue(String(decoding: all.body.readableBytesView, as: UTF8.self).contains("num\t10000"))
    }

    func testABinaryGetBulkStopsOnceItsClientIsGone() async throws {
        var logger = Logger(label: "abandoned")
        logger.logLevel = .error
        let session = KTBinarySession(store: store, databases: .single, clock: { 2_000_000_000 }, maxRequestBytes: 32 << 20,
                                      metrics: ReadMetrics(interface: "abandoned_test"), logger: logger,
                                      replyMemory: ReplyMemory(limit: 256 << 20), scans: ScanGate(limit: 2))
        let request = KTBinaryRequest.getBulk(flags: 0, keys: (0..<10_000).map { KTBinaryKey(db: 0, key: Array(String(format: "k%05d", $0).utf8)) }).encoded()
        let keys = KTBinaryKeys(keys: ByteBuffer(bytes: request.dropFirst(9)), count: 10_000)
        let gone = Gone(after: 2)
        do {
            _ = try await store.read { txn in try session.gather(keys, abandoned: { gone.ask() }, txn) }
            XCTFail("the get_bulk ran to its end")
        } catch is KTRequestAbandoned {}
        XCTAssertEqual(gone.asked, 2, "asked every 4,096 keys: stopped at the 8,192nd of 10,000")
        let (parts, reply) = try await store.read { txn in try session.gather(keys, abandoned: { false }, txn) }
        var whole = ByteBuffer()
        for var part in parts { whole.writeBuffer(&part) }
        guard case let .getBulk(records)? = try KTBinaryResponseDecoder.next(&whole) else { return XCTFail("not a get_bulk reply") }
        XCTAssertEqual(records.count, 10_000)
        var held = reply
        held.release()
    }
}
