import QSBytes

/// A damaged recording, KT or QS: where (the byte offset of the frame that is cut or
/// corrupt) and why. Everything before `offset` is whole and was delivered.
public struct CaptureDamage: Error, CustomStringConvertible, Sendable, Equatable {
    public let path: String
    public let offset: Int
    public let reason: String
    /// True when the file ends inside a frame (a recorder killed mid-write), false for a
    /// corrupt frame.
    public let truncated: Bool

    public init(path: String, offset: Int, reason: String, truncated: Bool) {
        self.path = path
        self.offset = offset
        self.reason = reason
        self.truncated = truncated
    }

    /// A decode error met reading the capture at `path`.
    public init(path: String, _ error: DecodeError) {
        self.init(path: path, offset: error.offset, reason: error.reason, truncated: error.kind == .truncated)
    }

    /// Says each thing once: "capture F is cut short at byte offset N: input ends inside a
    /// frame (K bytes of it present)" for a recorder stopped mid-write, "capture F is
    /// damaged at byte offset N: …" for a corrupt frame.
    public var description: String {
        "capture \(path) is \(truncated ? "cut short" : "damaged") at byte offset \(offset): \(reason)"
    }
}
