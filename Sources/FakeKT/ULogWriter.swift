import Dispatch
import Foundation
import KTFormats
import Logging
import NIOConcurrencyHelpers

/// Appends logged updates to ulog files in KT's format, on its own serial queue (never on
/// an event loop). After every batch the header is rewritten with the file size and the
/// newest timestamp; a batch that finds the current file at or past the size limit first
/// opens the next file, as KT does.
final class ULogWriter: Sendable {
    private let queue = DispatchQueue(label: "fakekt.ulog-writer")
    private let directory: String
    private let limit: UInt64
    private let logger: Logger
    /// Used only from `queue`; the lock makes that checkable.
    private let state: NIOLockedValueBox<State>

    private struct State {
        var number: UInt32
        var handle: FileHandle?
        var size: UInt64
        var newest: UInt64
    }

    init(directory: String, limit: UInt64?, resume: ULogDirectory, logger: Logger) throws {
        self.directory = directory
        self.limit = limit.flatMap { $0 > 0 ? $0 : nil } ?? UInt64.max
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let number = max(resume.lastFileNumber, 1)
        var state = State(number: number, handle: nil, size: 0, newest: resume.newestTimestamp)
        let path = Self.path(directory, number)
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: Data(ULogFile.Header(size: UInt64(ULogFile.headerSize), timestamp: resume.newestTimestamp).encoded())) else {
                throw FakeKTError.badUpdateLog("cannot create \(path)")
            }
        }
        guard let handle = FileHandle(forUpdatingAtPath: path) else {
            throw FakeKTError.badUpdateLog("cannot open \(path) for writing")
        }
        let header = try ULogFile.Header(decoding: [UInt8](handle.readData(ofLength: ULogFile.headerSize)))
        // Drop anything past the size the header vouches for, as KT does on open.
        let end = try handle.seekToEnd()
        if end > header.size { try handle.truncate(atOffset: header.size) }
        state.handle = handle
        state.size = min(end, header.size)
        self.state = NIOLockedValueBox(state)
    }

    static func path(_ directory: String, _ number: UInt32) -> String {
        (directory as NSString).appendingPathComponent(ULogFile.fileName(number: number))
    }

    func append(_ records: [ULogFile.Record]) {
        queue.async { self.write(records) }
    }

    /// Returns once every record appended before the call is written.
    func sync() {
        queue.sync {}
    }

    private func write(_ records: [ULogFile.Record]) {
        state.withLockedValue { state in write(records, &state) }
    }

    private func write(_ records: [ULogFile.Record], _ state: inout State) {
        do {
            if state.size > 0, state.size >= limit { try rotate(&state) }
            guard let handle = state.handle else { return }
            var bytes: [UInt8] = []
            for r in records {
                r.encode(into: &bytes)
                state.newest = max(state.newest, r.timestamp)
            }
            try handle.seek(toOffset: state.size)
            try handle.write(contentsOf: bytes)
            state.size += UInt64(bytes.count)
            try writeHeader(state)
        } catch {
            logger.error("writing the update log failed", metadata: ["error": "\(error)", "directory": "\(directory)"])
        }
    }

    private func writeHeader(_ state: State) throws {
        guard let handle = state.handle else { return }
        try handle.seek(toOffset: 0)
        try handle.write(contentsOf: ULogFile.Header(size: state.size, timestamp: state.newest).encoded())
    }

    private func rotate(_ state: inout State) throws {
        try state.handle?.close()
        state.number += 1
        let path = Self.path(directory, state.number)
        guard FileManager.default.createFile(atPath: path, contents: Data()),
              let handle = FileHandle(forUpdatingAtPath: path) else {
            state.handle = nil
            throw FakeKTError.badUpdateLog("cannot create \(path)")
        }
        state.handle = handle
        state.size = UInt64(ULogFile.headerSize)
        try writeHeader(state)
    }
}
