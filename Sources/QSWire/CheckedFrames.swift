import CXXHash
import QSBytes

/// Writes checked end to end (docs/protocol.md, "Checked frames"). TCP's 16-bit checksum
/// lets a damaged segment through now and then; the log's hash chain protects entries
/// from the root on (replicas, mirrors), but a batch damaged between a writer and its root
/// was applied as it arrived, and the root's chain then vouched for the damage. So a
/// writer wraps its writes (and its hello, which tells it whether the node knows this
/// envelope) as `0x30 innerType:u8 xxh3:u64 innerPayload`, where `xxh3` is XXH3-64 of the
/// inner payload seeded with the inner type. The node checks it before it decodes the
/// request inside: a mismatch is answered `damaged` (nothing applied) and the connection
/// closed; the writer sends the request again.
public enum CheckedFrames {
    /// The envelope's frame type.
    public static let tag: UInt8 = 0x30
    /// The envelope's own bytes before the inner payload: the inner type and the checksum.
    public static let headerBytes = 9
    /// How a node older than the envelope names it when it refuses it (`malformed`).
    public static let unknownToNode = "unknown request type 0x30"

    /// Whether a writer wraps requests of this frame type: the writes, a source's
    /// descriptor, and the hello that tells it whether the node checks them.
    public static func wraps(_ type: UInt8) -> Bool { wrapped.contains(type) }

    /// Built once: `wraps` is asked for every frame a client sends.
    private static let wrapped = FrameDecoder.LargeFrames.writeTypes.union([Request.Tag.hello.rawValue, Request.Tag.setDescriptor.rawValue])

    /// The checksum of a request's payload, seeded with its type.
    public static func checksum(type: UInt8, payload: [UInt8]) -> UInt64 {
        payload.withUnsafeBytes { checksum(type: type, payload: $0) }
    }

    static func checksum(type: UInt8, payload: UnsafeRawBufferPointer) -> UInt64 {
        XXH3_64bits_withSeed(payload.baseAddress, payload.count, UInt64(type))
    }

    /// `frame` in the envelope.
    public static func wrap(_ frame: Frame) -> Frame {
        var payload = [UInt8]()
        payload.reserveCapacity(headerBytes + frame.payload.count)
        payload.append(frame.type)
        let sum = checksum(type: frame.type, payload: frame.payload)
        for shift in stride(from: 56, through: 0, by: -8) { payload.append(UInt8(truncatingIfNeeded: sum >> UInt64(shift))) }
        payload += frame.payload
        return Frame(type: tag, payload: payload)
    }

    /// The request inside an envelope whose checksum holds. A checksum that does not is
    /// a `DecodeError` refused with `damaged`; an envelope too short to hold its header, or
    /// one inside another, is malformed.
    public static func unwrap(_ frame: Frame) throws(DecodeError) -> Frame {
        guard frame.payload.count >= headerBytes else {
            throw DecodeError(offset: 5, reason: "a checked frame of \(frame.payload.count) bytes is shorter than its \(headerBytes)-byte header")
        }
        let type = frame.payload[0]
        guard type != tag else { throw DecodeError(offset: 5, reason: "a checked frame inside another") }
        let sent = frame.payload[1..<headerBytes].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let inner = Frame(type: type, payload: Array(frame.payload[headerBytes...]))
        guard checksum(type: type, payload: inner.payload) == sent else {
            throw DecodeError(offset: 5, reason: "the frame's bytes do not match the checksum its sender wrote (damaged on the way): nothing was applied; send it again",
                              kind: .refused(code: ErrorCode.damaged.rawValue))
        }
        return inner
    }
}
