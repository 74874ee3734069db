import Foundation
import KTFormats
import NIOCore
import XCTest

final class TSVTests: XCTestCase {
    /// The reply written straight into a buffer is byte for byte the serialized one, in
    /// every encoding KT would pick (names ordered by their encoded form).
    func testAReplyWrittenIntoABufferIsTheSerializedOne() {
        var rng = SystemRandomNumberGenerator()
        let alphabets: [[UInt8]] = [Array("abcdefghij".utf8), Array("ab c=&%\t".utf8), Array(0...255)]
        for round in 0..<600 {
            let alphabet = alphabets[round % alphabets.count]
            var map: [[UInt8]: [UInt8]] = [:]
            for _ in 0..<Int.random(in: 0...12, using: &rng) {
                let key = (0..<Int.random(in: 0...6, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
                map[key] = (0..<Int.random(in: 0...(round % 7 == 0 ? 3000 : 40), using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            }
            let (type, body) = KTTSV.reply(map)
            let (bufferType, buffer) = KTTSV.replyBuffer(map)
            XCTAssertEqual(bufferType, type)
            XCTAssertEqual(Array(buffer.readableBytesView), body, "\(map)")
        }
    }

    func testColumnEncodingsRoundTrip() {
        let samples: [[UInt8]] = [[], Array("plain".utf8), [0, 9, 10, 13, 0x3D, 0x25, 0x2B, 0x20, 0x7F, 0x80, 0xFF], Array(0...255)]
        for e in KTColumnEncoding.allCases {
            for s in samples { XCTAssertEqual(e.decode(e.encode(s)), s, "\(e)") }
        }
    }

    func testEncodingsMatchKT() {
        XCTAssertEqual(String(decoding: KTColumnEncoding.url.encode(Array("v\t3\n".utf8)), as: UTF8.self), "v%093%0a")
        XCTAssertEqual(String(decoding: KTColumnEncoding.quotedPrintable.encode([0x3D, 0x41, 0x0A, 0xFF]), as: UTF8.self), "=3DA=0A=FF")
        XCTAssertEqual(String(decoding: KTColumnEncoding.base64.encode(Array("value".utf8)), as: UTF8.self), "dmFsdWU=")
        XCTAssertEqual(KTColumnEncoding.url.decode(Array("a+b%41".utf8)), Array("a bA".utf8))
    }

    func testParseAndContentType() {
        XCTAssertEqual(KTTSV.bodyKind(contentType: "text/tab-separated-values; colenc=B"), .tsv(.base64))
        XCTAssertEqual(KTTSV.bodyKind(contentType: "text/tab-separated-values"), .tsv(nil))
        XCTAssertEqual(KTTSV.bodyKind(contentType: "application/x-www-form-urlencoded"), .form)
        let pairs = KTTSV.parse(Array("a2V5\tdC9h\r\nnoline\ndmFsdWU=\tMQ==\n".utf8), encoding: .base64)
        XCTAssertEqual(pairs.map(\.name), [Array("key".utf8), Array("value".utf8)])
        XCTAssertEqual(pairs.map(\.value), [Array("t/a".utf8), Array("1".utf8)])
    }

    func testReplyPicksKTEncoding() {
        // From basic/rpc.jsonl: get_bulk answered with colenc=U.
        let reply = KTTSV.reply([Array("_k1".utf8): Array("v1".utf8), Array("_k3".utf8): Array("v\t3\n".utf8), Array("num".utf8): Array("2".utf8)])
        XCTAssertEqual(reply.contentType, "text/tab-separated-values; colenc=U")
        XCTAssertEqual(String(decoding: reply.body, as: UTF8.self), "_k1\tv1\n_k3\tv%093%0a\nnum\t2\n")
        let plain = KTTSV.reply([Array("b".utf8): Array("x y".utf8), Array("a".utf8): Array("1".utf8)])
        XCTAssertEqual(plain.contentType, "text/tab-separated-values")
        XCTAssertEqual(String(decoding: plain.body, as: UTF8.self), "a\t1\nb\tx y\n")
        // Only control bytes count as binary; bytes >= 0x80 go out raw, as KT sends them.
        let high = KTTSV.reply([Array("value".utf8): [UInt8](repeating: 0x80, count: 40)])
        XCTAssertEqual(high.contentType, "text/tab-separated-values")
        let binary = KTTSV.reply([Array("value".utf8): [UInt8](repeating: 0x01, count: 40)])
        XCTAssertEqual(binary.contentType, "text/tab-separated-values; colenc=B")
    }
}

/// The column encodings against references written plainly: the byte sets spelled out,
/// base64 as Foundation writes it, KT's length estimate (`checkmapenc`) byte by byte.
final class ColumnEncodingTests: XCTestCase {
    static let urlSafe = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.~".utf8)

    func testURLEncodingKeepsExactlyLettersDigitsAndUnderscoreDashDotTilde() {
        for c in 0...255 {
            let encoded = KTColumnEncoding.url.encode([UInt8(c)])
            let expected = Self.urlSafe.contains(UInt8(c)) ? [UInt8(c)] : Array(String(format: "%%%02x", c).utf8)
            XCTAssertEqual(encoded, expected, "byte \(c)")
        }
    }

    func testQuotedPrintableAndHexDigits() {
        for c in 0...255 {
            let encoded = KTColumnEncoding.quotedPrintable.encode([UInt8(c)])
            let quoted = c == 0x3D || c < 0x20 || c > 0x7E
            XCTAssertEqual(encoded, quoted ? Array(String(format: "=%02X", c).utf8) : [UInt8(c)], "byte \(c)")
        }
    }

    func testBase64MatchesFoundationAtEveryLengthAndByte() {
        var rng = SystemRandomNumberGenerator()
        for length in 0...64 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            XCTAssertEqual(String(decoding: KTColumnEncoding.base64.encode(bytes), as: UTF8.self), Data(bytes).base64EncodedString(), "length \(length)")
        }
        let all = Array(UInt8(0)...UInt8(255))
        XCTAssertEqual(String(decoding: KTColumnEncoding.base64.encode(all), as: UTF8.self), Data(all).base64EncodedString())
    }

    /// KT's estimate as `checkmapenc` writes it: at most 255 bytes of each column looked
    /// at, base64 `size * 6 / 4 + 3`, URL 1 for `isalnum` and `_-.!~*'()`, 3 otherwise;
    /// binary for a control byte or a column over 255 bytes.
    func testTheEncodingEstimateIsKTs() {
        let urlCounted = Self.urlSafe.union("!*'()".utf8)
        func reference(_ columns: [[UInt8]]) -> KTColumnEncoding? {
            var binary = false, base64 = 0, url = 0
            for column in columns {
                var size = column.count
                if size > 255 { size = 255; binary = true }
                base64 += size * 6 / 4 + 3
                for c in column.prefix(size) {
                    if c < 0x20 || c == 0x7F { binary = true }
                    url += urlCounted.contains(c) ? 1 : 3
                }
            }
            return binary ? (base64 < url ? .base64 : .url) : nil
        }
        var rng = SystemRandomNumberGenerator()
        let alphabets: [[UInt8]] = [Array(0...255), Array("ab!*'()~%\t\n".utf8), Array("abcdefgh\u{01}".utf8), Array(0x20...0x7F)]
        for round in 0..<2_000 {
            let alphabet = alphabets[round % alphabets.count]
            let columns = (0..<Int.random(in: 1...4, using: &rng)).map { _ in
                (0..<Int.random(in: 0...300, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            }
            var estimate = KTTSV.EncodingEstimate()
            for column in columns { column.withUnsafeBytes { estimate.account($0) } }
            XCTAssertEqual(estimate.encoding, reference(columns), "columns \(columns)")
        }
    }
}

/// The record bound a bulk request is judged on before its parse.
final class RecordBoundTests: XCTestCase {
    func testTheBoundIsTheRecordCountForEveryEncodingAndNeverBelowIt() {
        var rng = SystemRandomNumberGenerator()
        for encoding in [nil] + KTColumnEncoding.allCases.map(Optional.some) {
            for _ in 0..<50 {
                var body = [UInt8]()
                // Records, other parameters, and names that only look like records when encoded.
                for _ in 0..<Int.random(in: 0..<40, using: &rng) {
                    let kind = Int.random(in: 0..<4, using: &rng)
                    let name: [UInt8] = kind == 0 ? Array("DB".utf8) : kind == 1 ? Array("X\u{5F}y".utf8)
                        : [0x5F] + (0..<Int.random(in: 0..<6, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    let value = (0..<Int.random(in: 0..<6, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    body += (encoding?.encode(name) ?? name) + [0x09] + (encoding?.encode(value) ?? value) + [0x0A]
                }
                let contentType = "text/tab-separated-values" + (encoding.map { "; colenc=\(Character(UnicodeScalar($0.rawValue)))" } ?? "")
                let params = KTRPCParameters(query: nil, contentType: contentType, body: body)
                XCTAssertGreaterThanOrEqual(KTRPCParameters.recordBound(contentType: contentType, body: body), params.underscored.count, "\(String(describing: encoding))")
                XCTAssertGreaterThanOrEqual(KTRPCParameters.entryBound(query: nil, contentType: contentType, body: body), params.values.count, "\(String(describing: encoding))")
            }
        }
        let tsv = Array("_a\t1\n_b\t2\nDB\t0\n_c\t3\n".utf8)
        XCTAssertEqual(KTRPCParameters.recordBound(contentType: "text/tab-separated-values", body: tsv), 3)
        let form = Array("_a=1&%5Fb=2;DB=0& _c=3&x=_".utf8)
        XCTAssertEqual(KTRPCParameters.recordBound(contentType: "application/x-www-form-urlencoded", body: form), 3)
        XCTAssertEqual(KTRPCParameters(query: nil, contentType: "application/x-www-form-urlencoded", body: form).underscored.count, 3)
        XCTAssertEqual(KTRPCParameters.recordBound(contentType: nil, body: tsv), 0)
        // Every entry a parse can build, records or not (what qsrest holds its parse against).
        XCTAssertEqual(KTRPCParameters.entryBound(query: nil, contentType: "text/tab-separated-values", body: tsv), 5)
        XCTAssertEqual(KTRPCParameters.entryBound(query: Array("a=1&b=2".utf8)[...], contentType: "application/x-www-form-urlencoded", body: form), 7)
        XCTAssertEqual(KTRPCParameters.entryBound(query: Array("a=1".utf8)[...], contentType: nil, body: tsv), 1)
        XCTAssertEqual(KTRPCParameters.entryBound(query: nil, contentType: "application/octet-stream", body: tsv), 0)
    }
}
