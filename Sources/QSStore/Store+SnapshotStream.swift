import CLinux
import CXXHash
import Foundation
import QSModel

/// XXH3-128 over a stream of bytes: what names a snapshot's bytes when a cut-off transfer
/// resumes (the prefix the client holds) and when it ends (the whole file). One task or
/// one thread at a time uses it.
public final class SnapshotDigest: @unchecked Sendable {
    private let state: OpaquePointer

    public init() {
        // XXH3_createState only fails when malloc does.
        state = XXH3_createState()!
        XXH3_128bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        XXH3_128bits_update(state, base, bytes.count)
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The digest so far: 16 bytes, the high half first.
    public var bytes: [UInt8] {
        let h = XXH3_128bits_digest(state)
        var out = [UInt8]()
        out.reserveCapacity(16)
        for half in [h.high64, h.low64] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: half >> UInt64(shift))) }
        }
        return out
    }
}

/// Where a streamed snapshot starts (`Store.streamSnapshot`): the head it stands at, its
/// size, the offset its chunks start from (0, or the resumed client's), and, when a
/// resume was asked for and refused, why (the client then starts over).
public struct SnapshotStreamStart: Sendable {
    public let head: Head
    public let size: UInt64
    public let offset: UInt64
    public let refused: String?
}

/// LMDB's compacting copy (`mdb_env_copyfd2`) running on a thread of its own into a pipe,
/// read from the other end on a second thread: the snapshot goes from the environment to
/// the socket without a file in between. The copy thread blocks while the pipe is full,
/// so a slow client slows the copy and nothing piles up in memory.
final class CopyStream: @unchecked Sendable {
    private let readFD: Int32
    private let reader = StoreThreads(name: "qs-snapshot-read", count: 1)
    private let done = NSCondition()
    // Guarded by `done`.
    private var ended = false
    private var failure: (any Error)?
    private var closed = false

    /// The copy thread's nice value (0 is the node's own; 19 the lowest).
    static let copyNice: Int32 = 10

    init(environment: LMDBEnvironment) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw StoreError.io("cannot make a pipe for a snapshot: errno \(errno)") }
        readFD = fds[0]
        let writeFD = fds[1]
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // A bigger pipe means fewer wake-ups per MiB (F_SETPIPE_SZ, 1031; best effort).
        _ = fcntl(writeFD, 1031, Int32(1 << 20))
        let thread = Thread { [self] in
            // A client gone makes the read end close: the copy then fails with EPIPE
            // instead of the process taking SIGPIPE.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &set, nil)
            // The copy yields the CPU to the node's reads: a snapshot served to another
            // replica must not slow this one's readers (issue 12 point 2). On Linux a
            // thread's nice value is its own (`setpriority` on its thread id).
            _ = qs_set_thread_nice(Self.copyNice)
            var error: (any Error)?
            do { try environment.copy(toFileDescriptor: writeFD, compact: true) } catch let e { error = e }
            close(writeFD)
            done.lock()
            ended = true
            failure = error
            done.broadcast()
            done.unlock()
        }
        thread.name = "qs-snapshot-copy"
        thread.start()
    }

    /// Blocks until the copy has written its first bytes, or ended: once it has, its read
    /// transaction is open (LMDB opens it before writing anything).
    func waitStarted() {
        var p = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, -1) < 0 && errno == EINTR {}
    }

    /// `prefix` and then up to `count` bytes of the copy in a buffer `make` gives, fewer
    /// only at the end of the copy (none: the end). The buffer is made and filled on the
    /// reading thread, so it is filled in place, never copied.
    func read<B: SnapshotBuffer>(into make: @escaping @Sendable () -> B, after prefix: ArraySlice<UInt8> = [],
                                 upTo count: Int) async throws -> B {
        let fd = readFD
        return try await reader.run {
            var out = make()
            if !prefix.isEmpty {
                out.appendSnapshotBytes(upTo: prefix.count) { p in
                    prefix.withUnsafeBytes { p.copyMemory(from: $0) }
                    return prefix.count
                }
            }
            _ = try fill(&out, from: fd, upTo: count, "the snapshot copy's pipe")
            return out
        }
    }

    /// After the end of the stream: waits for the copy thread and throws what the copy threw.
    func finish() async throws {
        try await reader.run { [self] in
            done.lock()
            while !ended { done.wait() }
            let failure = self.failure
            done.unlock()
            self.closeReadEnd()
            if let failure { throw failure }
        }
        reader.stop()
    }

    /// Stops a copy not read to its end: closes the read end (the copy fails with EPIPE)
    /// and waits for the copy thread.
    func abort() async {
        _ = try? await reader.run { [self] in
            self.closeReadEnd()
            done.lock()
            while !ended { done.wait() }
            done.unlock()
        }
        reader.stop()
    }

    private func closeReadEnd() {
        done.lock()
        defer { done.unlock() }
        if !closed {
            closed = true
            close(readFD)
        }
    }
}

extension Store {
    /// The bytes of a snapshot chunk (the last may be shorter).
    public static let snapshotChunkBytes = 1 << 20

    /// Streams a snapshot of the store: calls `start` once with where it stands, then
    /// `chunk` with its bytes in order, and returns the XXH3-128 digest of the whole file.
    ///
    /// On LMDB the compacted copy (`mdb_env_copyfd2`) runs on a thread of its own into a
    /// pipe and is read straight from it: no file on this node. Its size is read from the
    /// copy's meta page before any chunk goes out, and its head is read while the writer
    /// thread waits for the copy to open its read transaction (a few milliseconds), so
    /// both are the copy's own.
    ///
    /// With `resume`, the chunks start at `resume.offset` when this copy stands at the
    /// same head, has the same size and the same first `resume.offset` bytes (their digest
    /// is compared; a compacted copy of an unchanged store is the same bytes, docs/
    /// replication.md "Resuming a bootstrap"). Otherwise they start at 0 and
    /// `SnapshotStreamStart.refused` says why. A RocksDB store streams its packed
    /// checkpoint (a file in the staging directory) and never resumes.
    public func streamSnapshot(resume: SnapshotResume?, start: (SnapshotStreamStart) async throws -> Void,
                               chunk: ([UInt8]) async throws -> Void) async throws -> [UInt8] {
        try await streamSnapshot(resume: resume, buffers: { [UInt8]() }, start: start, chunk: chunk)
    }

    /// `streamSnapshot`, each chunk read straight into a buffer `buffers` makes (a frame
    /// the caller sends as it is), on the thread that reads the copy: the bytes reach the
    /// caller's memory once, from the copy's pipe, and are not copied again here.
    public func streamSnapshot<B: SnapshotBuffer>(resume: SnapshotResume?, buffers make: @escaping @Sendable () -> B,
                                                  start: (SnapshotStreamStart) async throws -> Void,
                                                  chunk: (B) async throws -> Void) async throws -> [UInt8] {
        guard case let .lmdb(lmdb) = engine else {
            return try await withSnapshot { file in
                try await start(SnapshotStreamStart(head: file.head, size: file.size, offset: 0,
                                                    refused: resume == nil ? nil : "a RocksDB node's snapshots are not resumable"))
                let whole = SnapshotDigest()
                var offset: UInt64 = 0
                while true {
                    let bytes = try await file.read(at: offset, upTo: Self.snapshotChunkBytes, into: make)
                    let count = bytes.withSnapshotBytes { whole.update($0); return $0.count }
                    if count == 0 { break }
                    offset += UInt64(count)
                    try await chunk(bytes)
                }
                return whole.bytes
            }
        }
        var resume = resume
        var refused: String?
        while true {
            let copy = try CopyStream(environment: lmdb.environment)
            do {
                let head = try await writer.run { () throws -> Head in
                    copy.waitStarted()
                    return try self.readNow { try $0.head() }
                }
                let pageSize = lmdb.environment.pageSize
                let metas = try await copy.read(into: { [UInt8]() }, upTo: 2 * pageSize)
                let size = try Self.compactCopySize(metas: metas, pageSize: pageSize)
                var target: UInt64 = 0
                if let r = resume {
                    if r.index != head.index || r.hash != head.hash {
                        refused = "this node now stands at index \(head.index), the snapshot held stands at \(r.index)"
                    } else if r.size != size {
                        refused = "this node's snapshot at index \(head.index) now has \(size) bytes, the one held \(r.size)"
                    } else if r.offset > size {
                        refused = "the client holds \(r.offset) bytes of a \(size)-byte snapshot"
                    } else {
                        target = r.offset
                    }
                }
                if target == 0 {
                    try await start(SnapshotStreamStart(head: head, size: size, offset: 0, refused: refused))
                }
                let whole = SnapshotDigest(), prefix = SnapshotDigest()
                var leftover = metas[...]
                var position: UInt64 = 0
                var mismatch = false
                while true {
                    let limit = position < target ? Int(min(UInt64(Self.snapshotChunkBytes), target - position)) : Self.snapshotChunkBytes
                    // The meta pages read first lead the first chunk.
                    let lead = leftover.prefix(limit)
                    leftover = leftover.dropFirst(lead.count)
                    let bytes = try await copy.read(into: make, after: lead, upTo: limit - lead.count)
                    let count = bytes.withSnapshotBytes { whole.update($0); return $0.count }
                    if count == 0 { break }
                    if position < target {
                        bytes.withSnapshotBytes { prefix.update($0) }
                        position += UInt64(count)
                        if position == target {
                            guard prefix.bytes == resume?.digest else {
                                mismatch = true
                                break
                            }
                            try await start(SnapshotStreamStart(head: head, size: size, offset: target, refused: nil))
                        }
                    } else {
                        position += UInt64(count)
                        try await chunk(bytes)
                    }
                }
                if mismatch {
                    await copy.abort()
                    refused = "the first \(target) bytes of this node's snapshot at index \(head.index) differ from the ones held"
                    resume = nil
                    continue
                }
                try await copy.finish()
                guard position == size else {
                    throw StoreError.io("the snapshot copy had \(position) bytes where its meta page announced \(size)")
                }
                return whole.bytes
            } catch {
                await copy.abort()
                throw error
            }
        }
    }

    /// The size of a compacted LMDB copy, from its two meta pages (the first bytes it
    /// writes): meta page 1 holds the last page number (`mm_last_pg`, at byte 136 of the
    /// page on a 64-bit build) after the magic number (byte 16).
    static func compactCopySize(metas: [UInt8], pageSize: Int) throws -> UInt64 {
        guard metas.count == 2 * pageSize else {
            throw StoreError.io("the snapshot copy ended after \(metas.count) bytes, before its meta pages")
        }
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(metas[at + $1]) << (8 * UInt32($1)) } }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(metas[at + $1]) << (8 * UInt64($1)) } }
        let meta = pageSize + 16
        guard u32(meta) == 0xBEEF_C0DE else {
            throw StoreError.io("the snapshot copy's second page is not an LMDB meta page (magic \(String(u32(meta), radix: 16)))")
        }
        return (u64(meta + 120) + 1) * UInt64(pageSize)
    }
}
