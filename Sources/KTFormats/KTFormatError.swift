/// A malformed KT frame, message or file. Offsets count bytes from the start of the
/// frame, message or file being decoded.
public enum KTFormatError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A magic or operation byte that the format does not allow.
    case badMagic(expected: String, found: UInt8, offset: Int)
    /// The input ends inside a structure.
    case truncated(what: String, offset: Int)
    /// A length or field that contradicts the rest of the input.
    case invalid(what: String, offset: Int)

    public var description: String {
        switch self {
        case .badMagic(let expected, let found, let offset):
            return "bad magic 0x\(String(found, radix: 16)) at offset \(offset) (expected \(expected))"
        case .truncated(let what, let offset):
            return "truncated \(what) at offset \(offset)"
        case .invalid(let what, let offset):
            return "invalid \(what) at offset \(offset)"
        }
    }
}
