import Foundation
import KTFormats
import XCTest

/// `X-Kt-Xt` of a RESTful PUT read as KT 0.9.56 reads it (`kt::strmktime`): each row is what
/// a real ktserver stored for the header (the expiry a GET then showed, 404 for one already
/// past, none for a record that never expires).
final class KTTimeTextTests: XCTestCase {
    enum Stored: Equatable {
        case at(Int64)
        case expired
        case never
    }

    /// What KT's REST PUT does with the parsed time: an absolute expiry when it is in
    /// (0, XTMAX), otherwise none.
    func stored(_ header: String, now: Int64) -> Stored {
        guard let t = KTHTTPDate.parse(header), t > 0, t < KTExpiration.never else { return .never }
        return t <= now ? .expired : .at(t)
    }

    func testHeadersAreReadAsARealKyotoTycoonReadsThem() {
        let cases: [(String, Stored)] = [
            ("4000000000", .at(4000000000)),
            ("0xEE6B2800", .at(4000000000)),
            ("0XEE6B2800", .at(4000000000)),
            (" 4000000000 ", .at(4000000000)),
            ("4000000000s", .at(4000000000)),
            ("66666667m", .at(4000000020)),
            ("1111112h", .at(4000003200)),
            ("46297d", .at(4000060800)),
            ("46297 D", .at(4000060800)),
            ("1d", .expired),
            ("5m", .expired),
            ("-5", .never),
            ("+5", .never),
            ("+4000000000", .never),
            ("junk", .never),
            ("0", .never),
            ("0x", .never),
            ("2030-01-02T03:04:05+09:00", .at(1893521045)),
            ("2030-01-02T03:04:05.123-02:30", .at(1893562445)),
            ("2030-01-02T03:04:05Z", .at(1893553445)),
            ("2030-01-02", .at(1893542400)),
            ("2030-01", .at(1893456000)),
            ("2030-1-2", .at(1893456000)),
            ("2030/01/02 03:04:05", .at(1893553445)),
            ("2030/01/02", .at(1893542400)),
            ("2030/01/02 03:04:05+01:00", .at(1893549845)),
            ("Wed, 02 Jan 2030 03:04:05 GMT", .at(1893553445)),
            ("02 Jan 2030 03:04:05 +0900", .at(1893521045)),
            ("Wed, 02 Jan 2030 03:04:05 PST", .at(1893582245)),
            ("Wed, 02 Jan 2030 03:04:05 -0130", .at(1893558845)),
            ("Wed, 02 jan 2030", .at(1893542400)),
            ("2 January 2030", .never),
            ("Wed, 02 Foo 2030 03:04:05 GMT", .never),
            ("02 Jan 30 03:04:05 GMT", .never),
            ("Wed, 02 Jan 2030 3:04:05 GMT", .at(1893542400)),
            ("99999999999", .at(99999999999)),
            ("1099511627775", .never),
            ("1099511627776", .never),
            ("2030-13-45T25:61:61", .at(1928887321)),
            ("12345678901234567890", .never),
            ("4000000000x", .never),
            ("4e9", .never),
            ("3600.9", .never),
            ("Wed, 32 Jan 2030 00:00:00 GMT", .at(1896134400)),
        ]
        let now = Int64(Date().timeIntervalSince1970)
        for (header, kt) in cases {
            XCTAssertEqual(stored(header, now: now), kt, "X-Kt-Xt: \(header)")
        }
        // The unit forms are seconds since the epoch, not from now: "1d" is 1970-01-02.
        XCTAssertEqual(KTHTTPDate.parse("1d"), 86_400)
        XCTAssertEqual(KTHTTPDate.parse("5m"), 300)
        XCTAssertNil(KTHTTPDate.parse(""))
        XCTAssertNil(KTHTTPDate.parse("junk"))
    }

    /// Numbers at the edges of 64 bits in every field wrap as KT's do, never trap: one
    /// producer's header must not stop the process serving every producer.
    func testFieldsAtTheEdgesOf64BitsWrapInsteadOfTrapping() {
        let edges = ["9223372036854775807", "-9223372036854775808", "9223372036854775808", "99999999999999999999"]
        for n in edges {
            for text in ["2026-\(n)", "2026-12-\(n)", "\(n)-12-05", "2026-12-05T\(n)", "2026-12-05T10:\(n)", "2026-12-05T10:00:\(n)",
                         "2026-12-05T10:00:00+\(n)", "05 Dec \(n) 10:00:00 GMT", "\(n) Dec 2026", "\(n)d", "\(n)h", "0x\(n)ffffffff",
                         "2026/\(n)/05 10:00:00", "Sat, 05 Dec 2026 \(n):00:00 PST"] {
                _ = KTHTTPDate.parse(text)
            }
        }
        // What the trap hid: the month wraps as KT's int arithmetic does, a time is read.
        XCTAssertNotNil(KTHTTPDate.parse("2026-9223372036854775808"))
    }
}
