import KTFormats
import NIOCore
import NIOTestUtils
import QSBytes
import XCTest

final class BinaryProtocolTests: XCTestCase {
    let records = [
        KTBinaryRecord(db: 0, key: Array("a".utf8), value: [0, 1, 2], expiration: Int64.max),
        KTBinaryRecord(db: 1, key: [0xFF, 0x09], value: [], expiration: -1_795_561_298),
    ]

    func testSetBulkBytes() {
        let r = KTBinaryRequest.setBulk(flags: KTBinaryMagic.noReplyFlag, records: [KTBinaryRecord(db: 1, key: [0x41], value: [0x42], expiration: 10)])
        XCTAssertEqual(r.encoded(), [0xB8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 10, 0x41, 0x42])
        XCTAssertTrue(r.noReply)
    }

    func testRequestDecoderOnEverySplit() throws {
        let requests: [KTBinaryRequest] = [
            .setBulk(flags: 0, records: records),
            .removeBulk(flags: 1, keys: [KTBinaryKey(db: 0, key: [1]), KTBinaryKey(db: 2, key: [])]),
            .getBulk(flags: 0, keys: [KTBinaryKey(db: 1, key: Array("key".utf8))]),
            .playScript(flags: 0, name: Array("echo".utf8), arguments: [KTPair(key: [1], value: [2, 3])]),
            .replication(ReplicationRequest(flags: 0, timestamp: 12345, sid: 99)),
        ]
        var input = ByteBuffer()
        for r in requests { input.writeBytes(r.encoded()) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(input, requests)], decoderFactory: { KTBinaryRequestDecoder() })
    }

    func testResponseDecoderOnEverySplit() throws {
        let responses: [KTBinaryResponse] = [
            .setBulk(hits: 2), .removeBulk(hits: 0), .getBulk(records: records),
            .playScript(results: [KTPair(key: [9], value: [])]), .error,
        ]
        var input = ByteBuffer()
        for r in responses { input.writeBytes(r.encoded()) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(input, responses)], decoderFactory: { KTBinaryResponseDecoder() })
    }

    func testUnknownMagicThrows() {
        var buffer = ByteBuffer(bytes: [0xB7, 0, 0, 0, 0])
        XCTAssertThrowsError(try KTBinaryRequestDecoder.next(&buffer)) { error in
            XCTAssertEqual(error as? DecodeError, DecodeError(offset: 0, reason: "unknown magic 0xb7"))
        }
    }

    func testOversizedKeyThrows() {
        var buffer = ByteBuffer(bytes: [0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertThrowsError(try KTBinaryRequestDecoder.next(&buffer))
    }
}
