/// Why bytes could not be decoded: always names what was being read and the byte offset
/// (from the start of the message, frame, stream or file being decoded) where it went wrong.
/// The one decode error of every binary format: QS frames and messages, log entries, KT
/// update messages, ulog files, replication and binary-protocol frames, captures.
public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of wrong, for callers that answer differently (a protocol error code, a
    /// truncated recording that is not corrupt).
    public enum Kind: Sendable, Equatable {
        /// The input ends inside a structure.
        case truncated
        /// A declared length over the limit.
        case tooLarge
        /// A magic byte, tag, length or field that the format does not allow.
        case malformed
        /// Well formed, but refused by the reader from its first bytes, with the protocol's
        /// error code to answer (a frame too long for a peer without the write token).
        case refused(code: UInt16)
    }

    public let kind: Kind
    public let offset: Int
    public let reason: String

    public init(offset: Int, reason: String, kind: Kind = .malformed) {
        self.kind = kind
        self.offset = offset
        self.reason = reason
    }

    /// A byte that is not the magic (or operation code) the format wants there.
    public static func badMagic(_ found: UInt8, expected: String, offset: Int) -> DecodeError {
        DecodeError(offset: offset, reason: "bad magic 0x\(String(found, radix: 16)) (expected \(expected))")
    }

    /// The input ends inside a `what` that starts at `offset`, `present` bytes of it there:
    /// what a stream decoder throws at the end of its input.
    public static func endsInside(_ what: String, offset: Int, present: Int) -> DecodeError {
        DecodeError(offset: offset, reason: "input ends inside a \(what) (\(present) bytes of it present)", kind: .truncated)
    }

    /// The same error with its offset counted from `base` bytes earlier (a message decoded
    /// inside a frame, a stream that starts after a file header).
    public func shifted(by base: Int) -> DecodeError {
        DecodeError(offset: offset + base, reason: reason, kind: kind)
    }

    public var description: String { "\(reason) at byte offset \(offset)" }
}
