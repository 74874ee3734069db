import KTFormats
import QSBytes
import XCTest

final class UpdateMessageTests: XCTestCase {
    func testSetMatchesFixtureBytes() throws {
        // The first record of basic/ulog/0000000001.ulog.
        let key = Array("zone:10/rule:107".utf8)
        let m = KTUpdateMessage(sid: 7, db: 0, operation: .set(key: key, value: [], expiration: KTExpiration.never))
        XCTAssertEqual(m.encoded(), [0, 7, 0, 0, 0xA1, 0x10, 0x05] + key + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertEqual(try KTUpdateMessage(decoding: m.encoded()), m)
    }

    func testRoundTrips() throws {
        let big = [UInt8](repeating: 0xAB, count: 70_000)
        let messages = [
            KTUpdateMessage(sid: 1, db: 3, operation: .set(key: [0, 9, 10, 0xFF], value: big, expiration: 1_795_561_298)),
            KTUpdateMessage(sid: 65535, db: 1, operation: .remove(key: [])),
            KTUpdateMessage(sid: 0, db: 0, operation: .clear),
        ]
        for m in messages { XCTAssertEqual(try KTUpdateMessage(decoding: m.encoded()), m) }
    }

    /// Set messages are read by a direct path; whatever it does not take (a varnum of five
    /// bytes, a cut or inconsistent message) goes the general way, with the same result.
    func testSetDirectPathAgreesWithGeneralPath() throws {
        let key = [UInt8](repeating: 0x6B, count: 200), value = [UInt8](repeating: 0x76, count: 20_000)
        let m = KTUpdateMessage(sid: 0x1234, db: 0x0102, operation: .set(key: key, value: value, expiration: 0x12_3456_789A))
        let bytes = m.encoded()
        XCTAssertEqual(try KTUpdateMessage(decoding: bytes), m)
        // Sizes written with more bytes than needed (five for the key size).
        let padded: [UInt8] = [0, 7, 0, 0, 0xA1, 0x80, 0x80, 0x80, 0x80, 0x02, 0x80, 0x06] + [0x41, 0x42] + [0, 0, 0, 0, 9] + [0x43]
        XCTAssertEqual(try KTUpdateMessage(decoding: padded),
                       KTUpdateMessage(sid: 7, db: 0, operation: .set(key: [0x41, 0x42], value: [0x43], expiration: 9)))
        // Every cut, and one byte too many, is refused.
        for cut in [4, 5, 6, 7, 100, 205, 206, bytes.count - 1] {
            XCTAssertThrowsError(try KTUpdateMessage(decoding: Array(bytes[..<cut])), "cut at \(cut)")
        }
        XCTAssertThrowsError(try KTUpdateMessage(decoding: bytes + [0]))
    }

    /// `init(taking:)` reads every message as `init(decoding:)` does, refuses what it
    /// refuses with the same error, and leaves a message someone else holds as it was.
    func testTakingAgreesWithDecoding() throws {
        let messages: [[UInt8]] = [
            KTUpdateMessage(sid: 1, db: 0, operation: .set(key: Array("k".utf8), value: Array("value".utf8), expiration: 77)).encoded(),
            KTUpdateMessage(sid: 1, db: 3, operation: .set(key: [], value: [], expiration: KTExpiration.never)).encoded(),
            KTUpdateMessage(sid: 2, db: 1, operation: .remove(key: Array("gone".utf8))).encoded(),
            KTUpdateMessage(sid: 2, db: 1, operation: .clear).encoded(),
            [0, 7, 0, 0, 0xA1, 0x80, 0x80, 0x80, 0x80, 0x02, 0x80, 0x06] + [0x41, 0x42] + [0, 0, 0, 0, 9] + [0x43],
        ]
        let refused: [[UInt8]] = [[0, 7, 0, 0, 0xA9], [0, 7, 0, 0, 0xA1, 1, 2, 0x41, 0, 0], [0, 7, 0], messages[0] + [0], Array(messages[0].dropLast())]
        for bytes in messages {
            let expected = try KTUpdateMessage(decoding: bytes)
            XCTAssertEqual(try KTUpdateMessage(taking: Array(bytes)), expected) // unshared: the value keeps its storage
            let shared = bytes
            XCTAssertEqual(try KTUpdateMessage(taking: shared), expected)
            XCTAssertEqual(shared, bytes, "a shared message is left as it was")
        }
        for bytes in refused {
            var general: DecodeError?, taking: DecodeError?
            do { _ = try KTUpdateMessage(decoding: bytes) } catch { general = error }
            do { _ = try KTUpdateMessage(taking: Array(bytes)) } catch { taking = error }
            XCTAssertNotNil(general, "\(bytes)")
            XCTAssertEqual(taking, general, "\(bytes)")
        }
    }

    func testRejectsUnknownOperation() {
        XCTAssertThrowsError(try KTUpdateMessage(decoding: [0, 7, 0, 0, 0xA9])) { error in
            XCTAssertEqual(error as? DecodeError, .badMagic(0xA9, expected: "update operation 0xA1/0xA2/0xA5", offset: 4))
        }
    }

    func testRejectsShortValue() {
        XCTAssertThrowsError(try KTUpdateMessage(decoding: [0, 7, 0, 0, 0xA1, 1, 2, 0x41, 0, 0]))
        XCTAssertThrowsError(try KTUpdateMessage(decoding: [0, 7, 0]))
    }
}
