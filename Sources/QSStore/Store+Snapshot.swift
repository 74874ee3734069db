import CLinux
import Foundation
import NIOConcurrencyHelpers
import QSBytes
import QSModel

/// A consistent, compacted copy of a store in a file of its own, made by
/// `Store.withSnapshot` and deleted when its closure returns. Reads run on the store's
/// background thread.
public final class SnapshotFile: Sendable {
    /// Where the copy stands.
    public let head: Head
    /// Its size in bytes.
    public let size: UInt64
    let fd: Int32
    let path: String
    let threads: StoreThreads

    init(head: Head, size: UInt64, fd: Int32, path: String, threads: StoreThreads) {
        self.head = head
        self.size = size
        self.fd = fd
        self.path = path
        self.threads = threads
    }

    /// Up to `count` bytes from `offset`; fewer only at the end of the file.
    public func read(at offset: UInt64, upTo count: Int) async throws -> [UInt8] {
        try await read(at: offset, upTo: count, into: { [UInt8]() })
    }

    /// Up to `count` bytes from `offset` in a buffer `make` gives (filled in place on the
    /// background thread); fewer only at the end of the file.
    public func read<B: SnapshotBuffer>(at offset: UInt64, upTo count: Int, into make: @escaping @Sendable () -> B) async throws -> B {
        let fd = self.fd, path = self.path
        return try await threads.run {
            var out = make()
            _ = try fill(&out, from: fd, at: offset, upTo: count, "the snapshot file \(path)")
            return out
        }
    }
}

/// Where a snapshot received from another node is written, by `Store.installSnapshot`:
/// the staging directory's `.bootstrap-partial/data.mdb`, kept when a transfer is cut off
/// so the next one can resume it (`held()`). Writes run on the store's
/// background thread, one after another; bytes are written as they arrive, and their
/// digest is computed as they are written. Every `writeBehindBytes` the disk's writeback
/// of what arrived is started on a thread of its own (`flusher`), so the one fsync at the
/// end, before the copy is installed, finds little left to write.
public final class SnapshotWriter: @unchecked Sendable {
    let fd: Int32
    let path: String
    let idPath: String
    let threads: StoreThreads
    /// Runs the write-behind (`sync_file_range`), then the final fsync and the close, in
    /// that order: the fd stays open until every job queued on it has run.
    let flusher = StoreThreads(name: "qs-snapshot-flush", count: 1)
    /// Bytes written between two starts of writeback.
    static let writeBehindBytes: UInt64 = 8 << 20
    // Touched only on `threads` (one background thread), in order.
    private var digest = SnapshotDigest()
    private var named = false
    private var expected: [UInt8]?
    private var written: UInt64 = 0
    private var writtenBack: UInt64 = 0

    init(fd: Int32, path: String, idPath: String, threads: StoreThreads) {
        self.fd = fd
        self.path = path
        self.idPath = idPath
        self.threads = threads
    }

    /// Names the snapshot being received (its head and size) and where its bytes start:
    /// at 0 the file is emptied; at `offset` > 0 (a resumed transfer) the file must hold
    /// that snapshot's first `offset` bytes, which are kept (the sender compared their
    /// digest). The name is written beside the file, so a transfer cut off, even by a
    /// restart, can be resumed.
    public func begin(index: UInt64, hash: [UInt8], size: UInt64, offset: UInt64) async throws {
        try await threads.run { [self] in
            if offset > 0 {
                guard let held = PartialSnapshotID.read(idPath), held == PartialSnapshotID(index: index, hash: hash, size: size) else {
                    throw StoreError.io("the sender resumed at \(offset) bytes a snapshot that is not the one held in \(path)")
                }
            }
            guard ftruncate(fd, off_t(offset)) == 0, lseek(fd, off_t(offset), SEEK_SET) == off_t(offset) else {
                throw StoreError.io("cannot cut \(path) to \(offset) bytes: errno \(errno)")
            }
            digest = SnapshotDigest()
            if offset > 0 { try digestFile(fd, upTo: offset, path, into: digest) }
            written = offset
            writtenBack = 0
            try PartialSnapshotID(index: index, hash: hash, size: size).write(idPath)
            named = true
        }
    }

    /// What is held of a snapshot whose transfer was cut off (its name, how many bytes
    /// and their digest), to ask the sender for the rest; nil when nothing is. Reads the
    /// bytes held once.
    public func held() async -> SnapshotResume? {
        try? await threads.run { [self] () throws -> SnapshotResume? in
            guard let id = PartialSnapshotID.read(idPath) else { return nil }
            var st = stat()
            guard fstat(fd, &st) == 0, st.st_size > 0, UInt64(st.st_size) <= id.size else { return nil }
            let digest = SnapshotDigest()
            try digestFile(fd, upTo: UInt64(st.st_size), path, into: digest)
            return SnapshotResume(index: id.index, hash: id.hash, size: id.size, offset: UInt64(st.st_size), digest: digest.bytes)
        }
    }

    /// Appends `bytes` to the file (written from the memory they are in: a socket's
    /// buffer is not copied first), and starts the writeback of the last
    /// `writeBehindBytes` written once that many are.
    public func write<B: SnapshotBytes>(_ bytes: B) async throws {
        try await threads.run { [self] in
            let count = try bytes.withSnapshotBytes { p in
                try writeAll(fd, p, path)
                digest.update(p)
                return p.count
            }
            written += UInt64(count)
            if written - writtenBack >= Self.writeBehindBytes {
                let fd = self.fd, from = Int64(writtenBack), count = Int64(written - writtenBack)
                writtenBack = written
                // Best effort: an error here shows again at the final fsync, which is checked.
                flusher.submit { _ = sync_file_range(fd, from, count, UInt32(QS_SYNC_FILE_RANGE_WRITE)) }
            }
        }
    }

    /// Flushes the file to disk (fsync: what the write-behind left, and its metadata) when
    /// `sync`, then closes it, after the write-behind queued; the error when the flush
    /// failed. Called once, after the last write.
    func close(sync: Bool) async -> StoreError? {
        defer { flusher.stop() }
        let fd = self.fd, path = self.path
        do {
            return try await flusher.run { () -> StoreError? in
                let synced = !sync || fsync(fd) == 0
                let syncErrno = errno
                Glibc.close(fd)
                return synced ? nil : StoreError.io("cannot flush \(path) to disk: errno \(syncErrno)")
            }
        } catch {
            // Only a stopped flusher refuses a job, and it stops here.
            Glibc.close(fd)
            return StoreError.io("cannot flush \(path) to disk: \(error)")
        }
    }

    /// The sender's digest of the whole file (`snapshotDone`): `Store.installSnapshot`
    /// refuses a copy whose bytes do not have it.
    public func expect(digest: [UInt8]) async throws {
        try await threads.run { [self] in expected = digest }
    }

    /// Whether the file is worth keeping for a resume (it was named) and, when the sender
    /// gave one, whether its digest matches. Background thread only.
    func state() -> (named: Bool, digestMatches: Bool?) {
        (named, expected.map { $0 == digest.bytes })
    }
}

/// The name of a partly received snapshot, kept beside it (`snapshot-id`): the head it
/// stands at and its size, as `index hash-hex size`.
struct PartialSnapshotID: Equatable {
    var index: UInt64
    var hash: [UInt8]
    var size: UInt64

    static func read(_ path: String) -> PartialSnapshotID? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard parts.count == 3, let index = UInt64(parts[0]), let size = UInt64(parts[2]), parts[1].count == 64 else { return nil }
        var hash = [UInt8]()
        var chars = parts[1].makeIterator()
        while let a = chars.next(), let b = chars.next() {
            guard let byte = UInt8(String([a, b]), radix: 16) else { return nil }
            hash.append(byte)
        }
        return PartialSnapshotID(index: index, hash: hash, size: size)
    }

    func write(_ path: String) throws {
        do {
            try "\(index) \(hexString(hash)) \(size)\n".write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw StoreError.io("cannot write \(path): \(error)")
        }
    }
}

/// Feeds the first `count` bytes of the file `fd` into `digest`.
private func digestFile(_ fd: Int32, upTo count: UInt64, _ path: String, into digest: SnapshotDigest) throws {
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    var done: UInt64 = 0
    while done < count {
        let want = Int(min(UInt64(buffer.count), count - done))
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, want, off_t(done)) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw StoreError.io("cannot read \(path) back at \(done): \(n < 0 ? "errno \(errno)" : "it ends there")") }
        buffer.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        done += UInt64(n)
    }
}

private func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, _ path: String) throws {
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else {
            if errno == ENOSPC || errno == EDQUOT { throw StoreError.diskFull("cannot write \(path): no space left on its filesystem") }
            throw StoreError.io("cannot write \(path): errno \(errno)")
        }
        done += n
    }
}

extension Store {
    /// Where a snapshot being received is written and kept when cut off.
    var partialSnapshotDirectory: String { stagingDirectory + "/.bootstrap-partial" }

    /// Writes a consistent, compacted copy of the environment into `directory` (which
    /// must exist and be empty) as `data.mdb`, on the background thread, and returns the
    /// head it stands at. Readers and the writer go on meanwhile.
    public func snapshot(into directory: String) async throws -> Head {
        try await background.run { try self.snapshotNow(into: directory, packed: false).head }
    }

    /// Writes a consistent copy of the environment to an open file descriptor (a file or
    /// a pipe) on the background thread (`mdb_env_copyfd2`, compacting unless told not to).
    public func copy(toFileDescriptor fd: Int32, compact: Bool = true) async throws {
        try await background.run { try self.engine.copy(toFileDescriptor: fd, compact: compact) }
    }

    /// Flushes to disk what `noSync` commits left in memory (benchmarks' bulk loads).
    public func sync() async throws {
        try await background.run { try self.engine.sync() }
    }

    /// Writes what the engine holds in memory to its files and, on RocksDB, compacts them
    /// (memtables flushed, every table compacted), so the files are what a store of this
    /// data settles into; on LMDB, a sync. For measurements (qsbench's `engines` suite).
    public func settle() async throws {
        try await background.run {
            switch self.engine {
            case .lmdb: try self.engine.sync()
            case let .rocksdb(e): try e.flushAndCompact()
            }
        }
    }

    /// Writes the snapshot into `directory`; returns where it stands and its one file:
    /// LMDB's compacted copy (`data.mdb`, an environment of its own), or a RocksDB
    /// checkpoint packed into `checkpoint.qsr` (`RocksDBCheckpointPack`), or, not `packed`,
    /// the checkpoint's files themselves (a store of its own; the path is the directory).
    func snapshotNow(into directory: String, packed: Bool = true) throws -> (head: Head, path: String) {
        if case let .rocksdb(rocks) = engine, !packed {
            // RocksDB makes the checkpoint's directory itself: the empty one goes first.
            guard rmdir(directory) == 0 else { throw StoreError.io("cannot use \(directory) for a snapshot (it must exist and be empty): errno \(errno)") }
            try rocks.checkpoint(into: directory)
            return (try Store(directory: directory, readOnly: true).readNow { try $0.head() }, directory)
        }
        if case let .rocksdb(rocks) = engine {
            let checkpoint = directory + "/checkpoint"
            try rocks.checkpoint(into: checkpoint)
            let head = try Store(directory: checkpoint, readOnly: true).readNow { try $0.head() }
            let path = directory + "/checkpoint.qsr"
            try RocksDBCheckpointPack.pack(directory: checkpoint, into: path)
            try FileManager.default.removeItem(atPath: checkpoint)
            return (head, path)
        }
        let path = directory + "/data.mdb"
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw StoreError.io("cannot create snapshot file \(path): errno \(errno)") }
        do {
            try engine.copy(toFileDescriptor: fd, compact: true)
            fsync(fd)
            close(fd)
        } catch {
            close(fd)
            throw error
        }
        let copy = try Store(directory: directory, readOnly: true)
        return (try copy.readNow { try $0.head() }, path)
    }

    /// Makes a snapshot (a consistent, compacted copy of the store in a scratch directory
    /// under `stagingDirectory`) on the background thread, hands it to `body` and deletes it
    /// afterwards. The copy never holds up the writer or the readers.
    public func withSnapshot<T>(_ body: (SnapshotFile) async throws -> T) async throws -> T {
        let dir = stagingDirectory + "/.snapshot-" + UUID().uuidString
        let file = try await background.run { () throws -> SnapshotFile in
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
            do {
                let (head, path) = try self.snapshotNow(into: dir)
                let fd = Glibc.open(path, O_RDONLY)
                guard fd >= 0 else { throw StoreError.io("cannot open the snapshot file \(path): errno \(errno)") }
                var st = stat()
                guard fstat(fd, &st) == 0 else {
                    close(fd)
                    throw StoreError.io("cannot stat the snapshot file \(path): errno \(errno)")
                }
                return SnapshotFile(head: head, size: UInt64(st.st_size), fd: fd, path: path, threads: self.background)
            } catch {
                try? FileManager.default.removeItem(atPath: dir)
                throw error
            }
        }
        let cleanUp: @Sendable () throws -> Void = {
            close(file.fd)
            try? FileManager.default.removeItem(atPath: dir)
        }
        do {
            let result = try await body(file)
            try await background.run(cleanUp)
            return result
        } catch {
            try? await background.run(cleanUp)
            throw error
        }
    }

    /// Receives a snapshot made by another node's `withSnapshot` and installs it:
    /// `receive` writes the bytes through the `SnapshotWriter` it is given and returns
    /// the head the sender announced (its index and hash are checked). The copy is checked (its head against the
    /// announcement, its whole hash chain) on the background thread, then replaces this
    /// store's contents in one write transaction on the writer thread (readers see the
    /// old state or the new one). The scratch file is deleted in every case. Returns the
    /// new head.
    ///
    /// With `continuing`, the snapshot is installed only when its history contains that
    /// head with the same chained hash (a retained entry, its window's base or its trail
    /// of trimmed hashes); otherwise `snapshotDiverged` is thrown and nothing changes. A
    /// non-empty replica passes its own head: it never trades its history away.
    @discardableResult
    public func installSnapshot(continuing mine: Head? = nil, _ receive: (SnapshotWriter) async throws -> Head) async throws -> Head {
        let dir = partialSnapshotDirectory
        let received = try await Self.receiveChecked(into: dir, threads: background, continuing: mine, receive)
        let cleanUp: @Sendable () -> Void = { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let head = try await replaceContents(with: received)
            try await background.run(cleanUp)
            return head
        } catch {
            try? await background.run(cleanUp)
            throw error
        }
    }

    /// Receives a snapshot into `dir` (its `data.mdb`, created with the directory when
    /// absent, kept when the transfer is cut off) through `receive`, flushes it to disk
    /// once, and checks it on `threads`: the sender's digest of the whole file when it gave
    /// one (computed as the bytes were written), the head against the announcement, the
    /// whole hash chain, and with `mine` that its history holds that head. The flush and
    /// the checks run at once (the checks read the pages just written, from memory); the
    /// copy is returned only when both succeeded, opened read-only. A copy that fails a
    /// check is deleted.
    static func receiveChecked(into dir: String, threads: StoreThreads, continuing mine: Head?,
                               _ receive: (SnapshotWriter) async throws -> Head) async throws -> Store {
        let path = dir + "/data.mdb"
        let writer = try await threads.run { () throws -> SnapshotWriter in
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let fd = Glibc.open(path, O_RDWR | O_CREAT, 0o600)
            guard fd >= 0 else {
                try? FileManager.default.removeItem(atPath: dir)
                throw StoreError.io("cannot create \(path): errno \(errno)")
            }
            return SnapshotWriter(fd: fd, path: path, idPath: dir + "/snapshot-id", threads: threads)
        }
        let cleanUp: @Sendable () -> Void = { try? FileManager.default.removeItem(atPath: dir) }
        let announced: Head
        do {
            announced = try await receive(writer)
        } catch {
            // A transfer cut off keeps what arrived of a named snapshot, to be resumed: named
            // by this attempt, or by an earlier one whose bytes this attempt never reached
            // (an upstream refusing connections for a moment, a restart before its answer,
            // no room for it yet: they were deleted, and the transfer started over).
            _ = await writer.close(sync: false)
            _ = try? await threads.run {
                if !writer.state().named && PartialSnapshotID.read(dir + "/snapshot-id") == nil { cleanUp() }
            }
            throw error
        }
        async let flushFailure = writer.close(sync: true)
        let checked: Result<Store, any Error>
        do {
            checked = .success(try await threads.run { () throws -> Store in
                if writer.state().digestMatches == false {
                    throw StoreError.corrupt("the snapshot received in \(path) does not have the digest its sender announced: it was not installed")
                }
                // The sender's engine decides the format: LMDB's copy is an environment
                // of its own, a RocksDB checkpoint is unpacked first. Either is installed
                // record by record, so the engines may differ.
                var received = dir
                if RocksDBCheckpointPack.isPack(path) {
                    received = dir + "/checkpoint"
                    try RocksDBCheckpointPack.unpack(path, into: received)
                    try FileManager.default.removeItem(atPath: path)
                }
                // The whole chain is checked below: the open's check of its newest entries
                // would read the same entries once more.
                let snapshot = try Store(directory: received, readOnly: true, chainCheckedAt: announced)
                let found = try snapshot.readNow { try $0.head() }
                guard found.index == announced.index, found.hash == announced.hash else {
                    throw StoreError.snapshotMismatch(announced: announced, found: found)
                }
                try snapshot.verifyChainInHalves()
                if let mine, mine.index > 0 {
                    let theirs = try snapshot.readNow { try $0.provableHash(at: mine.index) }
                    guard theirs == mine.hash else { throw StoreError.snapshotDiverged(mine: mine, theirs: theirs) }
                }
                return snapshot
            })
        } catch {
            checked = .failure(error)
        }
        do {
            if let failure = await flushFailure { throw failure }
            return try checked.get()
        } catch {
            try? await threads.run(cleanUp)
            throw error
        }
    }

    /// `verifyChain` of a store nothing writes (a snapshot received, opened read-only): the
    /// log in two halves at once, each on a thread of its own in its own read transaction,
    /// the second from the stored hash at which the first ends (which the first checks).
    /// The same check as `verifyChain`, in about half the time on two cores.
    public func verifyChainInHalves() throws {
        let (window, head) = try readNow { (try $0.logWindow(), try $0.head()) }
        let count = head.index >= window.firstIndex ? head.index + 1 - window.firstIndex : 0
        guard count >= 2 else {
            _ = try readNow { try $0.verifyChain() }
            return
        }
        let mid = window.firstIndex + count / 2
        let halves = NIOLockedValueBox([Int: Result<(next: UInt64, hash: [UInt8]), any Error>]())
        DispatchQueue.concurrentPerform(iterations: 2) { half in
            let outcome = Result {
                try self.readNow { txn in
                    if half == 0 { return try txn.verifyLinks(from: window.firstIndex, through: mid - 1, previous: window.baseHash) }
                    guard let previous = try txn.hash(at: mid - 1) else { throw StoreError.brokenChain(index: mid - 1) }
                    return try txn.verifyLinks(from: mid, through: nil, previous: previous)
                }
            }
            halves.withLockedValue { $0[half] = outcome }
        }
        let (first, second) = halves.withLockedValue { ($0[0], $0[1]) }
        guard let first, let second else { throw StoreError.brokenChain(index: window.firstIndex) }
        let a = try first.get(), b = try second.get()
        guard a.next == mid, b.next == head.index + 1, b.hash == head.hash else { throw StoreError.brokenChain(index: head.index) }
    }

    /// Bootstraps a data directory that holds no store yet (an empty replica, before its
    /// store is opened): receives the snapshot into `staging`'s `.bootstrap-partial`
    /// (resuming what a transfer cut off left there), checks it as `installSnapshot`
    /// does, gives it a node id of its own and moves it into place as `directory`'s
    /// `data.mdb`. The snapshot's bytes are written once, as they arrive, and none of it
    /// is held in memory: what `installSnapshot`'s one big transaction cannot offer.
    /// `staging` must be on `directory`'s filesystem (`canBootstrapEmpty`). Returns the
    /// head, or nil when the snapshot is not an LMDB environment (a RocksDB sender's
    /// checkpoint): it is dropped and the store is bootstrapped once open.
    public static func bootstrapEmpty(directory: String, staging: String,
                                      _ receive: (SnapshotWriter) async throws -> Head) async throws -> Head? {
        let dir = staging + "/.bootstrap-partial"
        let threads = StoreThreads(name: "qs-store-bootstrap", count: 1)
        defer { threads.stop() }
        let checked: Head?
        do {
            // Closed at the end of this block: LMDB must not have one environment open twice.
            let received = try await receiveChecked(into: dir, threads: threads, continuing: nil, receive)
            checked = try await threads.run { () throws -> Head? in
                guard case .lmdb = received.engine else { return nil }
                return try received.readNow { try $0.head() }
            }
        }
        return try await threads.run { () throws -> Head? in
            defer { try? FileManager.default.removeItem(atPath: dir) }
            guard let head = checked else { return nil }
            // A node id of its own (the sender's is not this node's), written in place. The
            // node's own open then does what an open does (an older format upgraded); given
            // the head returned (`chainCheckedAt`), it skips the check of the chain's tail,
            // which `receiveChecked` has just checked whole in this file.
            do {
                let engine = try LMDBEngine(directory: dir, mapSize: 8 << 30, readOnly: false, noSync: false)
                var id = [UInt8](repeating: 0, count: 16)
                for i in id.indices { id[i] = UInt8.random(in: 0...255) }
                try Engine.lmdb(engine).write { try $0.put(.meta, Self.identityKey, Array(hexString(id).utf8)) }
            }
            guard rename(dir + "/data.mdb", directory + "/data.mdb") == 0 else {
                throw StoreError.io("cannot move the checked snapshot \(dir)/data.mdb into \(directory): errno \(errno)")
            }
            let dfd = Glibc.open(directory, O_RDONLY | O_DIRECTORY)
            if dfd >= 0 {
                fsync(dfd)
                close(dfd)
            }
            return head
        }
    }

    /// Whether `bootstrapEmpty` can move a snapshot from `staging` into `directory`: both
    /// exist on one filesystem.
    public static func canBootstrapEmpty(directory: String, staging: String) -> Bool {
        var a = stat(), b = stat()
        return stat(directory, &a) == 0 && stat(staging, &b) == 0 && a.st_dev == b.st_dev
    }
}
