import QSCaptures
import XCTest

/// The bounded structures behind `qsctl feed stats`.
final class FeedStatisticsTests: XCTestCase {
    func testSizeHistogramPercentilesAreWithinOneSixteenth() {
        var h = SizeHistogram()
        for s in 1...10_000 { h.add(s) }
        XCTAssertEqual(h.count, 10_000)
        XCTAssertEqual(h.max, 10_000)
        for (p, exact) in [(0.5, 5000), (0.9, 9000), (0.99, 9900)] {
            let got = h.percentile(p)
            XCTAssertLessThanOrEqual(got, exact)
            XCTAssertGreaterThanOrEqual(got, exact - exact / 16, "p\(p)")
        }
        var small = SizeHistogram()
        for s in [3, 3, 3, 40] { small.add(s) }
        XCTAssertEqual(small.percentile(0.5), 3)
        XCTAssertEqual(small.percentile(1), 40)
    }

    func testHeavyHittersKeepTheFrequentKeysInBoundedSpace() {
        var hh = HeavyHitters<Int>(capacity: 8)
        for i in 0..<10_000 {
            hh.add(i % 3 == 0 ? 1 : (i % 5 == 0 ? 2 : 1000 + i))  // keys 1 and 2 are frequent, the rest unique
        }
        let top = hh.top(2)
        XCTAssertEqual(top.map(\.key), [1, 2])
        XCTAssertGreaterThanOrEqual(top[0].count, 3334 - hh.maxUndercount)
        XCTAssertLessThanOrEqual(top[0].count, 3334)
        XCTAssertEqual(hh.maxUndercount, 10_000 / 9)
    }

    func testTimelineMergesBucketsToStayBounded() {
        var t = Timeline(maxBuckets: 4)
        for s in UInt64(100)..<UInt64(110) { t.add(second: s) }
        XCTAssertEqual(t.widthSeconds, 4)
        XCTAssertEqual(t.counts, [4, 4, 2])
        XCTAssertEqual(t.startSecond, 100)
    }
}
