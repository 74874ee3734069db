import FakeKT
import Foundation
import KTFormats
import XCTest

/// Every recorded request of `basic/rpc.jsonl` gets the recorded status, body and headers
/// (Date and Server aside; the REST Location names this server's own address).
final class RPCConformanceTests: XCTestCase {
    func testEveryRecordedRequestGetsTheRecordedResponse() async throws {
        let recordedAt = try Self.recordedAt()
        let harness = try await ServerHarness.start(timeSource: { Double(recordedAt) + 0.5 })
        addTeardownBlock { try await harness.stop() }
        let lines = String(decoding: try Data(contentsOf: ServerHarness.fixtures.appendingPathComponent("basic/rpc.jsonl")), as: UTF8.self)
            .split(separator: "\n")
        XCTAssertEqual(lines.count, 42)
        for line in lines {
            let pair = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let request = try XCTUnwrap(pair["request"] as? [String: Any])
            let response = try XCTUnwrap(pair["response"] as? [String: Any])
            let method = try XCTUnwrap(request["method"] as? String)
            let path = try XCTUnwrap(request["path"] as? String)
            let headers = try XCTUnwrap(request["headers"] as? [String: String])
            let body = [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(request["body_b64"] as? String))))
            let got = try harness.http(method, path, headers: headers, body: body)

            let expectedStatus = try XCTUnwrap((response["status"] as? NSNumber)?.intValue)
            let expectedBody = [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(response["body_b64"] as? String))))
            var expectedHeaders: [String: String] = [:]
            for (k, v) in try XCTUnwrap(response["headers"] as? [String: String]) { expectedHeaders[k.lowercased()] = v }
            var gotHeaders = got.headers
            gotHeaders["date"] = nil
            gotHeaders["server"] = nil
            let label = "\(method) \(path)"
            XCTAssertEqual(got.status, expectedStatus, label)

            if path == "/rpc/ulog_list" {
                // The paths, sizes and timestamps are this server's own files.
                let text = String(decoding: got.body, as: UTF8.self)
                let files = text.split(separator: "\n")
                XCTAssertEqual(files.count, 1, text)
                XCTAssertTrue(files.first?.hasPrefix("\(harness.ulogDirectory)/0000000001.ulog\t") ?? false, text)
                continue
            }
            if let location = expectedHeaders["location"], let range = location.range(of: "localhost:31791") {
                expectedHeaders["location"] = location.replacingCharacters(in: range, with: "127.0.0.1:\(harness.port)")
            }
            XCTAssertEqual(gotHeaders, expectedHeaders, label)
            XCTAssertEqual(String(decoding: got.body, as: UTF8.self), String(decoding: expectedBody, as: UTF8.self), label)
            XCTAssertEqual(got.body, expectedBody, label)
        }
    }

    static func recordedAt() throws -> Int64 {
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: ServerHarness.fixtures.appendingPathComponent("basic/meta.json"))) as? [String: Any])
        return try XCTUnwrap((meta["recorded_at"] as? NSNumber)?.int64Value)
    }
}
