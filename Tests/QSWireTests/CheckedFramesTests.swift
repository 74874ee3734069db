import NIOCore
import QSBytes
import QSModel
import QSWire
import XCTest

/// The checked envelope writers put their writes in (`CheckedFrames`): what goes in
/// comes out, any byte of it damaged is refused as `damaged`, and a large checked write is
/// judged by its token as a plain one is.
final class CheckedFramesTests: XCTestCase {
    let batch = Request.batch(.init(token: Array("tok".utf8), sourceID: "s", expected: 4, new: 5,
                                    operations: [.set(key: Array("k".utf8), value: Array(repeating: 7, count: 300), expiry: nil)]))

    func testAWrappedRequestDecodesAsItself() throws {
        let wrapped = CheckedFrames.wrap(batch.frame())
        XCTAssertEqual(wrapped.type, CheckedFrames.tag)
        XCTAssertEqual(wrapped.payload.count, CheckedFrames.headerBytes + batch.frame().payload.count)
        XCTAssertEqual(try Request.decode(wrapped), batch)
    }

    func testEveryByteDamagedIsRefusedAsDamagedOrMalformed() throws {
        let wrapped = CheckedFrames.wrap(batch.frame())
        for i in 0..<wrapped.payload.count {
            var bad = wrapped
            bad.payload[i] ^= 0x01
            XCTAssertThrowsError(try Request.decode(bad), "byte \(i)") { error in
                guard let e = error as? DecodeError else { return XCTFail("\(error)") }
                // The inner type byte: another request type, seeding another checksum, or an envelope inside one.
                if i == 0 { return }
                XCTAssertEqual(e.kind, .refused(code: ErrorCode.damaged.rawValue), "byte \(i)")
            }
        }
        XCTAssertThrowsError(try Request.decode(Frame(type: CheckedFrames.tag, payload: [1, 2, 3])))
        XCTAssertThrowsError(try Request.decode(CheckedFrames.wrap(CheckedFrames.wrap(Request.head.frame()))))
    }

    /// A checked batch over `openBytes` is admitted with the right token and refused
    /// `unauthorized` with another, from its first bytes, as a plain batch is.
    func testALargeCheckedWriteIsJudgedByItsToken() throws {
        let token = Array("tok".utf8)
        let large = LargeFrames(openBytes: 1024, writable: true, admits: { $0 == token }, tokenLength: token.count)
        for (t, admitted) in [(token, true), (Array("bad".utf8), false)] {
            let request = Request.batch(.init(token: t, sourceID: "s", expected: 0, new: 1,
                                              operations: [.set(key: [1], value: Array(repeating: 7, count: 4000), expiry: nil)]))
            var decoder = FrameDecoder(maxFrameBytes: 1 << 20, largeFrames: large)
            var buffer = ByteBuffer()
            try FrameEncoder().encode(data: CheckedFrames.wrap(request.frame()), out: &buffer)
            if admitted {
                XCTAssertEqual(try decoder.decode(buffer: &buffer).map { try Request.decode($0) }, request)
            } else {
                XCTAssertThrowsError(try decoder.decode(buffer: &buffer)) { error in
                    XCTAssertEqual((error as? DecodeError)?.kind, .refused(code: ErrorCode.unauthorized.rawValue))
                }
            }
        }
    }
}

private typealias LargeFrames = FrameDecoder.LargeFrames
