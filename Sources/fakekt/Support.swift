import Foundation

/// Appends log lines to a file (`-log`).
struct FileLogStream: TextOutputStream, Sendable {
    let handle: FileHandle

    init?(path: String) {
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        guard let h = FileHandle(forWritingAtPath: path) else { return nil }
        h.seekToEndOfFile()
        handle = h
    }

    mutating func write(_ string: String) {
        handle.write(Data(string.utf8))
    }
}
