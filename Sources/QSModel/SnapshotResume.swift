/// What a client holds of a snapshot that was cut off, sent to ask for the rest of it
/// (docs/protocol.md, "SnapshotFrom"; docs/replication.md, "Resuming a bootstrap"): which
/// snapshot it is (the head it stands at and its size), how many bytes of it the client
/// holds, and the XXH3-128 digest of those bytes. The sender continues only when its own
/// copy has the same head, the same size and the same first `offset` bytes.
public struct SnapshotResume: Sendable, Equatable {
    public var index: UInt64
    public var hash: [UInt8]
    public var size: UInt64
    public var offset: UInt64
    /// XXH3-128 of the first `offset` bytes, 16 bytes, high half first.
    public var digest: [UInt8]

    public init(index: UInt64, hash: [UInt8], size: UInt64, offset: UInt64, digest: [UInt8]) {
        self.index = index
        self.hash = hash
        self.size = size
        self.offset = offset
        self.digest = digest
    }
}
