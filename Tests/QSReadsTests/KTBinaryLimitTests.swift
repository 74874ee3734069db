import Foundation
import KTFormats
import Logging
import QSNet
import QSReads
import QSStore
import QSTesting
import XCTest

/// The KT port holds at most `maxBodyBytes` of one binary request (NIO's
/// `maximumBufferSize` on `KTBinaryRequestDecoder`).
final class KTBinaryLimitTests: XCTestCase {
    func testABinaryRequestOverTheLimitClosesTheConnection() async throws {
        let tmp = try Harness.tempDir("kt-binary-limit")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let store = try Store(directory: tmp.appendingPathComponent("data").path, mapSize: 64 << 20)
        var logger = Logger(label: "reads-test")
        logger.logLevel = .error
        let kt = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                  configuration: .init(maxBodyBytes: 1024))
        let running = try await InProcessServices([kt], logger: logger)
        addTeardownBlock { try await running.stop() }
        let port = try await kt.listener.port()

        // A get_bulk whose one key is larger than the limit, cut one byte past it: no answer,
        // and the server closes at once (a server still waiting for the rest would keep the
        // connection open until the socket's 10 s receive timeout).
        let big = KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: [UInt8](repeating: 0x61, count: 4096))]).encoded()
        let started = ContinuousClock.now
        XCTAssertEqual(RawSocket.exchange(port: port, Array(big.prefix(1025))), [])
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "closed by the server, not by the receive timeout")

        // Within the limit: answered (nothing stored), then a set_bulk is refused with 0xBF and closes.
        let small = KTBinaryRequest.getBulk(flags: 0, keys: [KTBinaryKey(db: 0, key: [UInt8](repeating: 0x61, count: 900))]).encoded()
        let refused = KTBinaryRequest.setBulk(flags: 0, records: []).encoded()
        XCTAssertEqual(RawSocket.exchange(port: port, small + refused),
                       KTBinaryResponse.getBulk(records: []).encoded() + [KTBinaryMagic.error])

        // A set_bulk far over the limit: refused from its first bytes (a read node takes no
        // writes), not held until the limit closes the connection without a word.
        let huge = KTBinaryRequest.setBulk(flags: 0, records: [KTBinaryRecord(db: 0, key: Array("k".utf8), value: [UInt8](repeating: 0x62, count: 8192),
                                                                             expiration: KTExpiration.never)]).encoded()
        XCTAssertEqual(RawSocket.exchange(port: port, Array(huge.prefix(2048))), [KTBinaryMagic.error])
    }
}
