import Foundation
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
        let fd = self.fd, path = self.path
        return try await threads.run {
            var out = [UInt8](repeating: 0, count: count)
            var got = 0
            while got < count {
                let n = out.withUnsafeMutableBytes { p in
                    pread(fd, p.baseAddress! + got, count - got, off_t(offset) + off_t(got))
                }
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw StoreError.io("cannot read the snapshot file \(path): errno \(errno)") }
                if n == 0 { break }
                got += n
            }
            out.removeLast(count - got)
            return out
        }
    }
}

/// Where a snapshot received from another node is written, by `Store.installSnapshot`.
/// Writes run on the store's background thread.
public final class SnapshotWriter: Sendable {
    let fd: Int32
    let path: String
    let threads: StoreThreads

    init(fd: Int32, path: String, threads: StoreThreads) {
        self.fd = fd
        self.path = path
        self.threads = threads
    }

    /// Appends `bytes` to the file.
    public func write(_ bytes: [UInt8]) async throws {
        let fd = self.fd, path = self.path
        try await threads.run { try writeAll(fd, bytes, path) }
    }
}

private func writeAll(_ fd: Int32, _ bytes: [UInt8], _ path: String) throws {
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { p in Glibc.write(fd, p.baseAddress! + done, bytes.count - done) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else {
            if errno == ENOSPC || errno == EDQUOT { throw StoreError.diskFull("cannot write \(path): no space left on its filesystem") }
            throw StoreError.io("cannot write \(path): errno \(errno)")
        }
        done += n
    }
}

extension Store {
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
        let dir = stagingDirectory + "/.bootstrap-" + UUID().uuidString
        let path = dir + "/data.mdb"
        let writer = try await background.run { () throws -> SnapshotWriter in
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
            let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            guard fd >= 0 else {
                try? FileManager.default.removeItem(atPath: dir)
                throw StoreError.io("cannot create \(path): errno \(errno)")
            }
            return SnapshotWriter(fd: fd, path: path, threads: self.background)
        }
        let cleanUp: @Sendable () -> Void = { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let announced: Head
            do {
                announced = try await receive(writer)
            } catch {
                _ = try? await background.run { close(writer.fd) }
                throw error
            }
            let received = try await background.run { () throws -> Store in
                let synced = fsync(writer.fd) == 0
                let syncErrno = errno
                close(writer.fd)
                guard synced else { throw StoreError.io("cannot flush \(path) to disk: errno \(syncErrno)") }
                // The sender's engine decides the format: LMDB's copy is an environment
                // of its own, a RocksDB checkpoint is unpacked first. Either is installed
                // record by record, so the engines may differ.
                var received = dir
                if RocksDBCheckpointPack.isPack(path) {
                    received = dir + "/checkpoint"
                    try RocksDBCheckpointPack.unpack(path, into: received)
                    try FileManager.default.removeItem(atPath: path)
                }
                let snapshot = try Store(directory: received, readOnly: true)
                let found = try snapshot.readNow { try $0.head() }
                guard found.index == announced.index, found.hash == announced.hash else {
                    throw StoreError.snapshotMismatch(announced: announced, found: found)
                }
                _ = try snapshot.readNow { try $0.verifyChain() }
                if let mine, mine.index > 0 {
                    let theirs = try snapshot.readNow { try $0.provableHash(at: mine.index) }
                    guard theirs == mine.hash else { throw StoreError.snapshotDiverged(mine: mine, theirs: theirs) }
                }
                return snapshot
            }
            let head = try await replaceContents(with: received)
            try await background.run(cleanUp)
            return head
        } catch {
            try? await background.run(cleanUp)
            throw error
        }
    }
}
