import Foundation
import KTFormats
import Logging

/// What a ulog directory already holds when the server starts.
struct ULogDirectory: Sendable {
    var records: [ULogFile.Record] = []
    /// The newest timestamp in any header or record.
    var newestTimestamp: UInt64 = 0
    /// The highest file number present, 0 if none.
    var lastFileNumber: UInt32 = 0

    /// Reads every `NNNNNNNNNN.ulog` file of `path` in file-number order. A missing directory
    /// is empty. A file whose header is unreadable is an error.
    static func load(_ path: String) throws -> ULogDirectory {
        var result = ULogDirectory()
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: path) else { return result }
        let numbered = names.compactMap { n in ULogFile.fileNumber(of: n).map { ($0, n) } }.sorted { $0.0 < $1.0 }
        for (number, name) in numbered {
            let data = try Data(contentsOf: URL(fileURLWithPath: path).appendingPathComponent(name))
            let bytes = [UInt8](data)
            let contents: ULogFile.Contents
            do {
                contents = try ULogFile.parse(Array(bytes.prefix(Int(clamping: max(UInt64(ULogFile.headerSize), (try? ULogFile.Header(decoding: bytes).size) ?? 0)))))
            } catch {
                throw FakeKTError.badUpdateLog("\(name): \(error)")
            }
            result.records += contents.records
            result.newestTimestamp = max(result.newestTimestamp, contents.header.timestamp, contents.records.last?.timestamp ?? 0)
            result.lastFileNumber = number
        }
        return result
    }

    /// KT's `ulog_list`: each file's path, size and newest timestamp, from its header.
    static func list(_ path: String) -> [(path: String, header: ULogFile.Header)] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return [] }
        return names.filter { ULogFile.fileNumber(of: $0) != nil }.sorted().compactMap { name in
            let full = (path as NSString).appendingPathComponent(name)
            guard let handle = FileHandle(forReadingAtPath: full) else { return nil }
            defer { try? handle.close() }
            guard let data = try? handle.read(upToCount: ULogFile.headerSize),
                  let header = try? ULogFile.Header(decoding: [UInt8](data)) else { return nil }
            return (full, header)
        }
    }
}

/// Errors that stop the server from starting.
public enum FakeKTError: Error, CustomStringConvertible {
    case badUpdateLog(String)
    case badConfiguration(String)

    public var description: String {
        switch self {
        case .badUpdateLog(let s): return "unreadable update log: \(s)"
        case .badConfiguration(let s): return s
        }
    }
}
