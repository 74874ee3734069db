import Foundation
import Logging
import QSModel
import QSNet
import QSReads
import QSStore
import QSTesting
import XCTest

/// The in-place read paths: memcached lines answered from the socket's bytes (split
/// anywhere, pipelined, a refused write's data block skipped), KT `GET /KEY` and
/// `/rpc/get` answered from LMDB's map, and the event loop's kept read transaction, which
/// must see every write committed before the request, on the same connection.
final class InPlaceReadTests: XCTestCase {
    var tmp: URL!
    var store: Store!
    var reads: InProcessReads!
    var position: UInt64 = 0

    override func setUp() async throws {
        tmp = try Harness.tempDir("inplace")
        store = try await Store.open(directory: tmp.appendingPathComponent("data").path, noSync: true)
        reads = try await InProcessReads(store: store, directory: tmp, clock: { 2_000_000_000 })
    }

    override func tearDown() async throws {
        await reads.stop()
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func set(_ key: String, _ value: String, expiry: UInt64? = nil) async throws {
        // The memcached server here reads KT's plug-in values (flags in the last 4 bytes).
        _ = try await store.applyBatch(sourceID: "test", expected: position, new: position + 1,
                                       operations: [.set(key: Array(key.utf8), value: Array(value.utf8) + [0, 0, 0, 7], expiry: expiry)])
        position += 1
    }

    /// Reads exactly `count` bytes (the reply's length is known).
    func read(_ client: TestClient, _ count: Int) -> String {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while out.count < count {
            let n = buffer.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, min($0.count, count - out.count), 0) }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func testMemcachedLinesSplitAnywhereArePipelinedAndSeeEveryCommittedWrite() async throws {
        try await set("a", "one")
        try await set("b", "two")
        // The event-loop server and the reader threads' alike.
        let clients = [try XCTUnwrap(TestClient(port: reads.memcachedPort)), try XCTUnwrap(TestClient(port: reads.memcachedThreadedPort))]
        // Byte by byte: a get, a refused set whose data block holds a command-like line, a
        // gets, a get of a missing key among present ones, a version.
        let stream = "get a b\r\nset k 0 0 7\r\nget b\r\n\r\ngets a\r\nget x a\r\nversion\r\n"
        for byte in stream.utf8 {
            for client in clients { client.send(String(UnicodeScalar(byte))) }
        }
        let cas = MemcachedValueFormat.casUnique(value: Array("one".utf8) + [0, 0, 0, 7], expiry: nil)
        let expected = "VALUE a 7 3\r\none\r\nVALUE b 7 3\r\ntwo\r\nEND\r\n"
            + "SERVER_ERROR read-only: write through the QS root\r\n"
            + "VALUE a 7 3 \(cas)\r\none\r\nEND\r\n"
            + "VALUE a 7 3\r\none\r\nEND\r\n"
            + "VERSION KyotoTycoon/0.9.56b\r\n"
        for client in clients { XCTAssertEqual(read(client, expected.utf8.count), expected) }
        // The same connection (the same event loop's or thread's kept transaction) sees a
        // new write, a new key and an expired record hidden.
        try await set("a", "ONE")
        try await set("c", "three")
        try await set("b", "gone", expiry: 1_000)
        let next = "VALUE a 7 3\r\nONE\r\nVALUE c 7 5\r\nthree\r\nEND\r\n"
        for client in clients {
            client.send("get a c b\r\n")
            XCTAssertEqual(read(client, next.utf8.count), next)
        }
    }

    /// Database 0 under a prefix (`--kt-db-map 0=main/,…`): memcached reads `main/KEY`, its
    /// stored key built on the stack, and leaves a longer prefix's keys to their database.
    func testMemcachedReadsDatabaseZerosPrefixAndNotALongerOnes() async throws {
        await reads.stop()
        reads = try await InProcessReads(store: store, directory: tmp,
                                         databases: try KTDatabaseMap(parsing: "0=main/,1=main/aux/"), clock: { 2_000_000_000 })
        try await set("main/a", "one")
        try await set("a", "bare")
        try await set("main/aux/b", "aux")
        try await set("main/" + String(repeating: "k", count: 240), "long")
        let clients = [try XCTUnwrap(TestClient(port: reads.memcachedPort)), try XCTUnwrap(TestClient(port: reads.memcachedThreadedPort))]
        let expected = "VALUE a 7 3\r\none\r\nVALUE \(String(repeating: "k", count: 240)) 7 4\r\nlong\r\nEND\r\n"
        for client in clients {
            client.send("get a aux/b \(String(repeating: "k", count: 240)) x\r\n")
            XCTAssertEqual(read(client, expected.utf8.count), expected)
        }
    }

    func testKTGetAndRPCGetInPlaceMatchTheGeneralPathAndSeeNewWrites() async throws {
        try await set("k/1", "first")
        let client = try XCTUnwrap(TestClient(port: reads.ktPort))
        func get(_ path: String) -> String {
            client.send("GET \(path) HTTP/1.1\r\nHost: test\r\n\r\n")
            var out = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            // Head, then as many body bytes as Content-Length says.
            while true {
                if let r = RawHTTPResponse(out), let length = r.headers["content-length"].flatMap({ Int($0) }), r.body.count >= length { break }
                let n = buffer.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                out += buffer[0..<n]
            }
            return String(decoding: out, as: UTF8.self)
        }
        // The general path answers the same requests once the query holds more than the key
        // (`?x`, `&DB=0`): both must give the same bytes.
        func same(_ inPlace: String, _ general: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertEqual(get(inPlace), expected, file: file, line: line)
            XCTAssertEqual(get(general), expected, file: file, line: line)
        }
        same("/k%2F1", "/k%2F1?x", "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfirst\0\0\0\u{7}")
        // A control byte in the value: KT column-encodes the reply (the general path does).
        let encoded = get("/rpc/get?key=k%2F1&DB=0")
        XCTAssertTrue(encoded.contains("colenc="), encoded)
        XCTAssertEqual(get("/rpc/get?key=k%2F1"), encoded)
        // A printable value is answered in place, and a new write is seen on the same connection.
        _ = try await store.applyBatch(sourceID: "test", expected: position, new: position + 1,
                                       operations: [.set(key: Array("k/1".utf8), value: Array("second".utf8), expiry: nil)])
        position += 1
        same("/rpc/get?key=k%2F1", "/rpc/get?key=k%2F1&DB=0",
             "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/tab-separated-values\r\n\r\nvalue\tsecond\n")
        same("/k%2F1", "/k%2F1?x", "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
        // Missing and expiring records take the general path.
        XCTAssertTrue(get("/missing").hasPrefix("HTTP/1.1 404 "))
        try await set("k/2", "later", expiry: 3_000_000_000)
        XCTAssertTrue(get("/k%2F2").contains("X-Kt-Xt: "))
    }
}
