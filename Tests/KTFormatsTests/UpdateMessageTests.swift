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
