import NIOCore
import NIOEmbedded
import NIOTestUtils
@testable import QSReads
import XCTest

/// The memcached decoder and value format, without sockets.
final class MemcachedCodecTests: XCTestCase {
    func k(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testDecoderSplitsCommandsAtEveryByteBoundary() throws {
        let limits = MemcachedLimits()
        try ByteToMessageDecoderVerifier.verifyDecoder(stringInputOutputPairs: [
            ("get a b\r\n", [.get(keys: [k("a"), k("b")], withCAS: false)]),
            ("gets a\n", [.get(keys: [k("a")], withCAS: true)]),
            ("get\r\n", [.get(keys: [], withCAS: false)]),
            ("version\r\nstats\r\nquit\r\n", [.version, .stats, .quit]),
            // The data block of a refused storage command is consumed, not read as commands.
            ("set k 0 0 5\r\nget x\r\nget y\r\n", [.write(command: "set", noreply: false), .get(keys: [k("y")], withCAS: false)]),
            ("cas k 0 0 2 99 noreply\r\nhi\r\n", [.write(command: "cas", noreply: true)]),
            ("delete k\r\nincr n 5\r\nflush_all\r\n", [.write(command: "delete", noreply: false), .write(command: "incr", noreply: false),
                                                      .write(command: "flush_all", noreply: false)]),
            ("bogus command\r\n", [.malformed(reply: "ERROR", reason: "unknown command 'bogus'", close: false)]),
            ("set k 0 0\r\n", [.malformed(reply: "CLIENT_ERROR invalid parameters", reason: "set with 3 arguments", close: false)]),
            ("set k 0 0 x\r\n", [.malformed(reply: "CLIENT_ERROR bad command line format",
                                            reason: "set: data length is not a number", close: false)]),
        ], decoderFactory: { MemcachedDecoder(limits: limits) })
    }

    func testOverlongLineIsRefusedOnceAndTheRestDiscarded() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MemcachedDecoder(limits: MemcachedLimits(maxLineBytes: 16))))
        try channel.writeInbound(ByteBuffer(string: "get " + String(repeating: "a", count: 40) + "\r\nget b\r\n"))
        XCTAssertEqual(try channel.readInbound(as: MemcachedCommand.self),
                       .malformed(reply: "CLIENT_ERROR line too long", reason: "command line longer than 16 bytes", close: true))
        XCTAssertNil(try channel.readInbound(as: MemcachedCommand.self))
        _ = try channel.finish()
    }

    func testKeyLongerThanTheLimitIsAClientError() throws {
        let (command, _) = MemcachedLineParser.parse(k("get abcdef")[...], limits: MemcachedLimits(maxKeyBytes: 4))
        XCTAssertEqual(command, .malformed(reply: "CLIENT_ERROR key too long", reason: "key of 6 bytes, the limit is 4", close: false))
    }

    func testFlagsAreTheValuesLastFourBytesBigEndian() {
        let f = MemcachedValueFormat(flagsInValue: true)
        let (flags, data) = f.split([0x61, 0x62, 0x63, 0, 0, 1, 5])
        XCTAssertEqual(flags, 261)
        XCTAssertEqual(Array(data), [0x61, 0x62, 0x63])
        XCTAssertEqual(f.split([1, 2]).flags, 0)
        XCTAssertEqual(Array(f.split([1, 2]).data), [1, 2])
        XCTAssertEqual(Array(MemcachedValueFormat(flagsInValue: false).split([1, 2, 3, 4, 5]).data), [1, 2, 3, 4, 5])
    }

    func testCasUniqueDependsOnlyOnTheRecord() {
        let a = MemcachedValueFormat.casUnique(value: [1, 2, 3], expiry: nil)
        XCTAssertEqual(a, MemcachedValueFormat.casUnique(value: [1, 2, 3], expiry: nil))
        XCTAssertNotEqual(a, MemcachedValueFormat.casUnique(value: [1, 2, 4], expiry: nil))
        XCTAssertNotEqual(a, MemcachedValueFormat.casUnique(value: [1, 2, 3], expiry: 10))
    }
}

/// The KT database map and KT's date format.
final class KTDatabaseMapTests: XCTestCase {
    func testMapParsesIndexesNamesAndPrefixes() throws {
        let map = try KTDatabaseMap(parsing: "0:main.kch=,1:aux.kct=aux/")
        XCTAssertEqual(map.database(forParameter: nil)?.index, 0)
        XCTAssertEqual(map.database(forParameter: Array("1".utf8))?.prefix, Array("aux/".utf8))
        XCTAssertEqual(map.database(forParameter: Array("aux.kct".utf8))?.index, 1)
        XCTAssertNil(map.database(forParameter: Array("2".utf8)))
        XCTAssertNil(map.database(forParameter: Array("nope".utf8)))
        // Database 0 does not see database 1's records.
        let db0 = try XCTUnwrap(map.database(index: 0))
        XCTAssertFalse(map.owns(db0, key: Array("aux/x".utf8)))
        XCTAssertTrue(map.owns(db0, key: Array("auxx".utf8)))
        XCTAssertThrowsError(try KTDatabaseMap(parsing: "0=,0=a/"))
        XCTAssertThrowsError(try KTDatabaseMap(parsing: "0=x/,1=x/"))
        XCTAssertThrowsError(try KTDatabaseMap(parsing: "x=a/"))
        XCTAssertEqual(map.description, "0:main.kch=,1:aux.kct=aux/")
    }

    func testHTTPDateIsKTsXtHeaderFormat() {
        XCTAssertEqual(httpDate(1_795_561_298), "Tue, 24 Nov 2026 23:01:38 GMT")
        XCTAssertEqual(httpDate(0), "Thu, 01 Jan 1970 00:00:00 GMT")
        XCTAssertEqual(httpDate(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT")
    }
}
