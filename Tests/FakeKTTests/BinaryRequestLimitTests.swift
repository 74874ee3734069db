import FakeKT
import KTFormats
import Logging
import QSNet
import QSTesting
import XCTest

/// fakekt holds at most `maxBinaryRequestBytes` of one binary request while it arrives.
final class BinaryRequestLimitTests: XCTestCase {
    func testARequestOverTheLimitIsAnsweredWithAnErrorAndClosed() async throws {
        let port = try await start(maxBinaryRequestBytes: 1024)
        // A set_bulk of one record whose value is larger than the limit, cut one byte past it.
        let record = KTBinaryRecord(db: 0, key: [1], value: [UInt8](repeating: 7, count: 4096), expiration: Int64.max)
        let request = KTBinaryRequest.setBulk(flags: 0, records: [record]).encoded()
        let s = try TestSocket(port: port)
        try s.send(Array(request.prefix(1025)))
        XCTAssertEqual(try s.readToEnd(), [KTBinaryMagic.error])

        // A request within the limit is served, on a new connection.
        let small = KTBinaryRecord(db: 0, key: [1], value: [UInt8](repeating: 7, count: 900), expiration: Int64.max)
        let t = try TestSocket(port: port)
        try t.send(KTBinaryRequest.setBulk(flags: 0, records: [small]).encoded())
        XCTAssertEqual(try t.read(5), KTBinaryResponse.setBulk(hits: 1).encoded())
    }

    private func start(maxBinaryRequestBytes: Int) async throws -> Int {
        var config = FakeKTConfiguration()
        config.port = 0
        config.threads = 1
        config.maxBinaryRequestBytes = maxBinaryRequestBytes
        var logger = Logger(label: "fakekt-test")
        logger.logLevel = .error
        let server = try FakeKTServer(configuration: config, logger: logger)
        let running = try await InProcessServices([server], logger: logger)
        addTeardownBlock { try await running.stop() }
        return try await server.listener.port()
    }
}
