import ArgumentParser
import Foundation

/// Reads a token file (`--write-token-file`, `--replication-token-file`,
/// `--admin-token-file`, `--upstream-token-file`, `--source-token-file`): its bytes with
/// trailing newlines and spaces dropped. A node's own tokens must be at least 16 bytes.
public enum TokenFile {
    public static func read(_ path: String, flag: String, minimumBytes: Int = 0) throws -> [UInt8] {
        guard let raw = FileManager.default.contents(atPath: path) else {
            throw ValidationError("\(flag) \(path) cannot be read: check the path and permissions")
        }
        var bytes = [UInt8](raw)
        while let last = bytes.last, last == 10 || last == 13 || last == 32 { bytes.removeLast() }
        guard bytes.count >= max(minimumBytes, 1) else {
            throw ValidationError("\(flag) \(path) holds \(bytes.count) bytes: use a token of at least \(max(minimumBytes, 1)) bytes (head -c 32 /dev/urandom | base64)")
        }
        return bytes
    }

    /// The token in `path`, or nil when no file is given.
    public static func optional(_ path: String, flag: String, minimumBytes: Int = 0) throws -> [UInt8]? {
        path.isEmpty ? nil : try read(path, flag: flag, minimumBytes: minimumBytes)
    }
}
