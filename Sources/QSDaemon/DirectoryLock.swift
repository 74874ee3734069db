import Foundation
import QSNet
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on a daemon's data directory (`flock` on `DIR/qsnode.lock`, which
/// holds the owner's pid): a second process on the same directory is refused at once
/// instead of serving writes with the same node id. The kernel releases the lock when the
/// process ends, however it ends; the file stays.
public final class DirectoryLock: Sendable {
    public let path: String
    let fd: Int32
    /// The directory, and whether this lock made it (it did not exist).
    let directory: String
    public let madeDirectory: Bool

    public static let fileName = "qsnode.lock"

    /// Takes the lock, creating the directory if missing; throws naming the directory
    /// and the process holding it.
    public init(directory: String) throws {
        self.directory = directory
        var isDirectory: ObjCBool = false
        madeDirectory = !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw ConfigError("cannot create the data directory \(directory): \(fileErrorText(error))")
        }
        path = directory + "/" + Self.fileName
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ConfigError("cannot open \(path) to lock the data directory: \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let why = errno
            var holder = ""
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buffer, buffer.count, 0)
            if n > 0, let pid = Int32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) {
                holder = " by process \(pid)"
            }
            close(fd)
            if why == EWOULDBLOCK {
                throw ConfigError("the data directory \(directory) is in use\(holder) (lock \(path)): one qsnode per directory; stop the other one or use another --data")
            }
            throw ConfigError("cannot lock the data directory \(directory) (\(path)): \(String(cString: strerror(why)))")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, pid, pid.count, 0)
    }

    /// For a start that fails before anything is made: a directory this lock made, holding
    /// nothing but the lock file, is taken away (never anything else: `rmdir` refuses a
    /// directory with other files in it).
    public func removeIfMadeEmpty() {
        guard madeDirectory else { return }
        unlink(path)
        rmdir(directory)
    }

    deinit { close(fd) }
}
