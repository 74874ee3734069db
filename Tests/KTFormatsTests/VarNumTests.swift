import KTFormats
import QSBytes
import XCTest

final class VarNumTests: XCTestCase {
    func testKnownEncodings() {
        XCTAssertEqual(VarNum.encode(0), [0x00])
        XCTAssertEqual(VarNum.encode(0x7F), [0x7F])
        XCTAssertEqual(VarNum.encode(0x80), [0x81, 0x00])
        XCTAssertEqual(VarNum.encode(0x3FFF), [0xFF, 0x7F])
        XCTAssertEqual(VarNum.encode(0x4000), [0x81, 0x80, 0x00])
    }

    func testRoundTrip() {
        for v: UInt64 in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 1 << 35, UInt64.max] {
            let e = VarNum.encode(v)
            XCTAssertEqual(VarNum.decode(e + [0xAA])?.value, v)
            XCTAssertEqual(VarNum.decode(e)?.length, e.count)
        }
    }

    func testTruncatedIsNil() {
        XCTAssertNil(VarNum.decode([0x81]))
        XCTAssertNil(VarNum.decode([UInt8]()))
    }
}
