import Foundation
import KTFormats
import QSBytes
import QSCaptures
import QSFeed

/// A KT update-log directory (`NNNNNNNNNN.ulog` files): replays the records after the
/// position in file order, then follows the directory as KT appends and rotates (or, with
/// `once`, stops at its end). Files are read in chunks: memory does not grow with them.
public struct KTULogSource: FeedSource {
    public let directory: String
    public let translator: KTTranslator
    public let once: Bool
    public let pollInterval: Duration
    public var name: String { "ulog:\(directory)" }

    public init(directory: String, translator: KTTranslator, once: Bool, pollInterval: Duration = .milliseconds(100)) {
        self.directory = directory
        self.translator = translator
        self.once = once
        self.pollInterval = pollInterval
    }

    /// The directory's ulog files, by number.
    func files() throws -> [(number: UInt32, path: String)] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw FeedError.stop("cannot read ulog directory \(directory): \(error.localizedDescription)")
        }
        return names.compactMap { n in ULogFile.fileNumber(of: n).map { ($0, directory + "/" + n) } }.sorted { $0.number < $1.number }
    }

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        // Records go to the consumer in runs (one hop for many), delivered whenever the
        // run is full, at the end of the records there are now, and before an error.
        try await ChangeRun.reading(deliver) { run in
            try await follow(after: position, run: &run, deliver: deliver)
        }
    }

    private func follow(after position: UInt64, run: inout ChangeRun,
                        deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        var current: UInt32?
        var reader: ULogReader?
        var last = position
        while true {
            try Task.checkCancellation()
            let all = try files()
            if reader == nil {
                // Start with the first file that may hold records after `last`: skip files
                // whose (up-to-date) header says their newest record is at or before it.
                var pick: (UInt32, String)?
                for (i, f) in all.enumerated() {
                    if let c = current, f.number <= c { continue }
                    let isNewest = i == all.count - 1
                    if !isNewest, let h = try? ULogReader.header(of: f.path), h.timestamp <= last { continue }
                    pick = (f.number, f.path)
                    break
                }
                if let (n, p) = pick {
                    reader = try ULogReader(path: p)
                    current = n
                }
            }
            if let r = reader {
                while let record = try r.next() {
                    guard record.timestamp > last else { continue }
                    last = record.timestamp
                    if run.append(try translator.change(timestamp: record.timestamp, message: record.message)) {
                        try await run.deliver(deliver)
                    }
                }
                try await run.deliver(deliver)
                reader = r
                // At the end of this file: move on if a newer file exists.
                if let c = current, all.contains(where: { $0.number > c }) {
                    if r.partialBytes > 0 {
                        throw FeedError.stop("ulog file \(r.path) ends inside a record at byte offset \(r.offset) although a newer file exists: the file is damaged")
                    }
                    reader = nil
                    continue
                }
            }
            if once {
                if let r = reader, r.partialBytes > 0 {
                    translator.logger.warning("ulog ends inside a record (still being written?); stopping before it",
                                              metadata: ["file": "\(r.path)", "offset": "\(r.offset)"])
                }
                return
            }
            try await Task.sleep(for: pollInterval)
        }
    }
}

/// Reads one ulog file record by record with `ULogRecordDecoder`, fed from the file in
/// chunks; `next()` returns nil at the current end of the file and may be called again
/// once the file has grown.
struct ULogReader {
    let path: String
    let file: DecodingFileReader<ULogRecordDecoder>

    static func header(of path: String) throws -> ULogFile.Header {
        guard let h = FileHandle(forReadingAtPath: path) else { throw FeedError.stop("cannot open ulog file \(path)") }
        defer { try? h.close() }
        let bytes = [UInt8](try h.read(upToCount: ULogFile.headerSize) ?? Data())
        do { return try ULogFile.Header(decoding: bytes) } catch { throw FeedError.stop("ulog file \(path) has a bad header: \(error)") }
    }

    init(path: String, maxMessageBytes: Int = Int(KTBinaryMagic.dataMaxSize)) throws {
        self.path = path
        _ = try Self.header(of: path)
        do {
            file = try DecodingFileReader(path: path, decoder: ULogRecordDecoder(maxMessageBytes: maxMessageBytes),
                                          startOffset: ULogFile.headerSize,
                                          maximumBufferSize: maxMessageBytes + ULogFile.recordOverhead)
        } catch {
            throw FeedError.stop("cannot open ulog file \(path)")
        }
    }

    /// File offset of the next record.
    var offset: Int { file.offset }
    /// Bytes after the last complete record.
    var partialBytes: Int { file.unprocessedBytes }

    func next() throws -> ULogFile.Record? {
        do {
            return try file.next()?.message
        } catch let error as DecodeError {
            throw FeedError.stop("ulog file \(path) is damaged: \(error)")
        }
    }
}
