import CLMDB
import Foundation
import NIOConcurrencyHelpers
import QSModel

/// A failure that stops every write until the operator (or the filesystem) changes
/// something, told apart because each has its own remedy.
public enum WriteFailure: String, Sendable, Equatable {
    /// The filesystem holding the store has no room left (ENOSPC, EDQUOT): free space;
    /// writes succeed again by themselves once there is room.
    case diskFull = "disk full"
    /// The LMDB map is full: raise `--map-size` (the disk may have room).
    case mapFull = "store full"
    /// The disk failed a read or write (EIO): check the device.
    case io = "I/O error"

    /// The kind of `error`, nil for an error that is not about the storage (a refused
    /// request, a conflict, a broken chain).
    public static func classify(_ error: any Error) -> WriteFailure? {
        if let e = error as? LMDBError {
            if e.isMapFull { return .mapFull }
            if e.isDiskFull { return .diskFull }
            if e.code == EIO { return .io }
            return nil
        }
        if let e = error as? RocksDBError {
            if e.isDiskFull { return .diskFull }
            if e.isIOError { return .io }
            return nil
        }
        if case .diskFull? = error as? StoreError { return .diskFull }
        return nil
    }

    /// What the operator does about it.
    public var remedy: String {
        switch self {
        case .diskFull: return "free space on the filesystem holding the data directory; writes resume by themselves once there is room"
        case .mapFull: return "raise --map-size and restart the node"
        case .io: return "the disk failed a read or write: check the device and the kernel log"
        }
    }
}

/// The outcome of the store's last write transaction: nil while writes succeed, else the
/// kind of the failure, its message and since when (ns since the epoch). A write that
/// commits clears it, so a node recovers by itself when the cause goes away.
public final class WriteHealth: Sendable {
    public struct Failing: Sendable, Equatable {
        public var failure: WriteFailure
        public var message: String
        public var sinceNs: UInt64
    }

    private let state = NIOLockedValueBox<Failing?>(nil)

    public init() {}

    public var failing: Failing? { state.withLockedValue { $0 } }

    /// A write committed. After a full disk, only once there is room again: a small write
    /// can commit on pages LMDB reuses while every batch still fails (`stillFull`).
    func succeeded(stillFull: () -> Bool) {
        guard let failing else { return }
        if failing.failure == .diskFull && stillFull() { return }
        state.withLockedValue { $0 = nil }
    }

    func failed(_ error: any Error) {
        guard let kind = WriteFailure.classify(error) else { return }
        let now = wallClockNanoseconds()
        state.withLockedValue {
            if $0?.failure != kind { $0 = Failing(failure: kind, message: "\(error)", sinceNs: now) } else { $0?.message = "\(error)" }
        }
    }

    /// Records a failure seen outside a write transaction (a snapshot's file writes).
    public func note(_ error: any Error) { failed(error) }
}

extension Store {
    /// Free bytes under which a filesystem counts as full (see `diskFullIfShortOfRoom`).
    static let roomAfterDiskFull: UInt64 = 1 << 20

    /// LMDB reports a short page write as EIO (`mdb_page_flush`), which is what a full
    /// filesystem gives it (tmpfs and ext4 write what fits): an EIO while the store's
    /// filesystem has less than 1 MiB free is a full disk.
    func diskFullIfShortOfRoom(_ error: any Error) -> any Error {
        guard let e = error as? LMDBError, e.code == EIO, let free = Store.freeBytes(at: directory), free < Store.roomAfterDiskFull else { return error }
        return StoreError.diskFull("\(e.operation) could not write its pages to \(directory) (\(free) bytes free; LMDB reports the short write as an I/O error)")
    }

    /// Bytes an unprivileged process may still write on the filesystem holding `path`
    /// (`statvfs`), nil when it cannot be asked.
    public static func freeBytes(at path: String) -> UInt64? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        return UInt64(s.f_bavail) * UInt64(s.f_frsize)
    }
}
