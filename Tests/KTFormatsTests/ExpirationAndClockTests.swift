import KTFormats
import XCTest

final class ExpirationAndClockTests: XCTestCase {
    let now: Int64 = 1_795_560_698

    func testRelativeAbsoluteAndNever() {
        XCTAssertEqual(KTExpiration.stored(requested: 600, now: now), now + 600)
        XCTAssertEqual(KTExpiration.stored(requested: -1, now: now), 1)
        XCTAssertEqual(KTExpiration.stored(requested: -1_795_561_298, now: now), 1_795_561_298)
        XCTAssertEqual(KTExpiration.stored(requested: nil, now: now), KTExpiration.never)
        XCTAssertEqual(KTExpiration.stored(requested: Int64.max, now: now), KTExpiration.never)
        XCTAssertEqual(KTExpiration.stored(requested: Int64.min, now: now), KTExpiration.never)
        XCTAssertEqual(KTExpiration.never, 1_099_511_627_775)
    }

    func testExpiry() {
        XCTAssertFalse(KTExpiration.isExpired(now, at: now))
        XCTAssertTrue(KTExpiration.isExpired(now - 1, at: now))
    }

    func testParseInteger() {
        XCTAssertEqual(KTExpiration.parseInteger(Array("600".utf8)), 600)
        XCTAssertEqual(KTExpiration.parseInteger(Array("-1x".utf8)), -1)
        XCTAssertEqual(KTExpiration.parseInteger(Array("abc".utf8)), 0)
        // As a real ktserver answers /rpc/increment with these `num`s on a new key: past 64
        // bits the digits wrap; any control byte before them is whitespace.
        XCTAssertEqual(KTExpiration.parseInteger(Array("99999999999999999999".utf8)), 7_766_279_631_452_241_919)
        XCTAssertEqual(KTExpiration.parseInteger(Array("-99999999999999999999".utf8)), -7_766_279_631_452_241_919)
        XCTAssertEqual(KTExpiration.parseInteger([0x0B, 0x0C] + Array("-12".utf8)), -12)
    }

    func testClockIsUniqueAndIncreasing() {
        var clock = KTClock()
        XCTAssertEqual(clock.next(nowMillis: 1_795_560_695_831), 1_795_560_695_831_000_000)
        XCTAssertEqual(clock.next(nowMillis: 1_795_560_695_831), 1_795_560_695_831_000_001)
        XCTAssertEqual(clock.next(nowMillis: 1_795_560_695_830), 1_795_560_695_831_000_002)
        XCTAssertEqual(clock.next(nowMillis: 1_795_560_695_900), 1_795_560_695_900_000_000)
        var resumed = KTClock(resumingAfter: 1_795_560_696_287_000_001)
        XCTAssertEqual(resumed.next(nowMillis: 1_795_560_696_000), 1_795_560_696_288_000_001)
    }
}
