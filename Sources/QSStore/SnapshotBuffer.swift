import Glibc

/// Bytes of a snapshot on their way between LMDB's copy and a socket, or a socket and the
/// received file, in the memory of whoever moves them: an array, or a socket's own buffer
/// (QSNode wraps NIO's `ByteBuffer`, which this module does not link), so a snapshot is
/// read from the copy's pipe straight into the buffer that goes to the socket, and written
/// to the file straight from the buffer the socket filled.
public protocol SnapshotBytes: Sendable {
    /// The bytes, for the length of `body`.
    func withSnapshotBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T
}

/// `SnapshotBytes` that can be filled in place.
public protocol SnapshotBuffer: SnapshotBytes {
    /// Appends at most `count` bytes that `fill` writes into the memory it is given (at
    /// least `count` bytes long) and counts (its result, at most `count`).
    mutating func appendSnapshotBytes(upTo count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows
}

extension Array: SnapshotBytes where Element == UInt8 {
    public func withSnapshotBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try withUnsafeBytes(body)
    }
}

extension Array: SnapshotBuffer where Element == UInt8 {
    public mutating func appendSnapshotBytes(upTo count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows {
        let start = self.count
        append(contentsOf: repeatElement(0, count: count))
        var filled = 0
        defer { removeLast(count - filled) }
        filled = try withUnsafeMutableBytes { try fill(UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
    }
}

/// Fills `buffer` with up to `count` bytes read from `fd` (at `offset` with pread, else
/// from its position), fewer only at its end; returns how many.
func fill<B: SnapshotBuffer>(_ buffer: inout B, from fd: Int32, at offset: UInt64? = nil, upTo count: Int,
                             _ what: @autoclosure () -> String) throws -> Int {
    var got = 0
    while got < count {
        var n = 0
        buffer.appendSnapshotBytes(upTo: count - got) { p in
            if let offset {
                n = pread(fd, p.baseAddress!, p.count, off_t(offset) + off_t(got))
            } else {
                n = read(fd, p.baseAddress!, p.count)
            }
            return max(n, 0)
        }
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw StoreError.io("cannot read \(what()): errno \(errno)") }
        if n == 0 { break }
        got += n
    }
    return got
}
