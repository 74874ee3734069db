import Foundation
import KTFormats
import QSBytes
import QSCaptures
import QSFeed
import QSModel

/// A KT update-log directory (`NNNNNNNNNN.ulog` files): replays the records after the
/// position in file order, then follows the directory as KT appends and rotates (or, with
/// `once`, stops at its end). Files are read in chunks: memory does not grow with them.
///
/// What would lose records stops the bridge instead, naming the file: a record stamped out
/// of KT's increasing order or far in the future (`KTTimestampOrder`), a file missing between
/// two others, a first start on a directory whose first files were removed (it does not hold
/// KT's whole history, and a ulog source cannot copy KT's records). A file replaced by a
/// rename is read on from the same offset; the file being read removed with nothing numbered
/// after it (KT restarted on an emptied directory, numbering from 1 again) is followed by
/// the timestamps of the files there now. Caught up (at the end of the newest file), the
/// source says so once a second, so the bridge's lag stays 0 while KT is quiet.
public struct KTULogSource: FeedSource {
    public let directory: String
    public let translator: KTTranslator
    public let once: Bool
    public let pollInterval: Duration
    public let maxMessageBytes: Int
    public var name: String { "ulog:\(directory)" }

    public init(directory: String, translator: KTTranslator, once: Bool, pollInterval: Duration = .milliseconds(100),
                maxMessageBytes: Int = Int(KTBinaryMagic.dataMaxSize)) {
        self.directory = directory
        self.translator = translator
        self.once = once
        self.pollInterval = pollInterval
        self.maxMessageBytes = maxMessageBytes
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

    /// How long a record may stay cut at the end of the newest file before it is logged.
    static let stuckWarningAfter = Duration.seconds(10)

    private func follow(after position: UInt64, run: inout ChangeRun,
                        deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        var current: (number: UInt32, path: String)?
        var reader: ULogReader?
        var last = position
        var order = KTTimestampOrder()
        /// A resume's first file whose predecessor was removed, until its first record is read.
        var resumedPastRemoved: UInt32?
        let logger = translator.logger, corrupt = translator.metrics.corruptFrames
        var caughtUpSaid: ContinuousClock.Instant?
        /// A record cut at the end of the newest file: where, since when, and whether it was logged.
        var cut: (offset: Int, since: ContinuousClock.Instant, logged: Bool)?
        /// The record read and not yet applied because its file's header does not cover it
        /// yet (KT rewrites the header, size and newest timestamp, after each flush): held
        /// until it does. A record the header covers must be stamped at or before the
        /// header's timestamp; one stamped after it is damaged and never applied (a timestamp
        /// damaged upward by less than a day was applied before the next record showed the
        /// disorder, moving the checkpoint past every later record).
        var held: (record: ULogFile.Record, at: Int, end: Int)?
        /// The header of the file being read, as last read.
        var header: ULogFile.Header?
        /// The timestamp of the last record its header covered (applied, or skipped as at or
        /// before the position).
        var passed: UInt64?
        /// A file renamed over the one being read, seen without a whole first record (logged once).
        var replacementSeen: FileIdentity?
        /// The timestamp of the first record of the file being read, once read.
        var firstStamp: UInt64?
        if position == 0, let oldest = try files().first, oldest.number > 1 {
            throw FeedError.stop("ulog directory \(directory) starts at \(ULogFile.fileName(number: oldest.number)), not 0000000001.ulog: KT's first update-log files were removed, so it does not hold KT's whole history, and a ulog source cannot copy KT's records. Migrate from the server itself (--source kt://HOST:PORT copies KT's records first, --initial-copy auto), or restore the removed files")
        }
        while true {
            try Task.checkCancellation()
            let all = try files()
            if reader == nil {
                let pick: (number: UInt32, path: String)?
                if let c = current {
                    // The next file after the one read to its end: KT numbers them one by one.
                    pick = all.first { $0.number > c.number }
                    if let p = pick, p.number != c.number &+ 1 {
                        corrupt.increment()
                        throw FeedError.stop("ulog file \(ULogFile.fileName(number: c.number &+ 1)) is missing from \(directory), between \(ULogFile.fileName(number: c.number)) and \(ULogFile.fileName(number: p.number)): the records it held would be lost. Every record before it was applied; restore the file (or migrate again from the server: --source kt://HOST:PORT)")
                    }
                } else {
                    // Start with the first file that may hold records after `last`: skip files
                    // whose up-to-date header (its size the file's) says their newest record
                    // is at or before it. A header not rewritten since the last records (a
                    // crash between the two) is not trusted: the file is read.
                    pick = try all.enumerated().first { i, f in
                        guard i < all.count - 1, let h = try? ULogReader.header(of: f.path) else { return true }
                        return !(h.timestamp <= last && h.size == (try? ULogReader.size(of: f.path)))
                    }?.element
                }
                if let p = pick {
                    if p.number == all.last?.number, (try? ULogReader.size(of: p.path)) ?? 0 < ULogFile.headerSize {
                        // The newest file, created and not yet given its header (KT writes it
                        // at its first flush; a full disk can leave it empty): waited for.
                    } else {
                        reader = try ULogReader(path: p.path, maxMessageBytes: maxMessageBytes)
                        firstStamp = nil
                        // A resume whose file's predecessor was removed: its first record
                        // tells whether anything after the checkpoint may have gone with it.
                        if current == nil, last > 0, p.number > 1, !all.contains(where: { $0.number == p.number - 1 }) {
                            resumedPastRemoved = p.number
                        }
                        current = p
                    }
                }
            }
            if var r = reader, let c = current {
                while true {
                    if let h = held {
                        // Covered by the header now: read again from the file, with what
                        // follows it. Bytes no header covered may have been dropped and
                        // written anew meanwhile (KT restarted after a crash drops them), so
                        // what was read of them is not trusted.
                        header = try ULogReader.header(of: r.path)
                        guard let hd = header, UInt64(h.end) <= hd.size else { break }
                        r = try ULogReader(path: r.path, maxMessageBytes: maxMessageBytes, at: h.at)
                        reader = r
                        held = nil
                        order.rewind(to: passed)
                    }
                    guard let (at, record) = try r.next() else { break }
                    if at == ULogFile.headerSize { firstStamp = record.timestamp }
                    let next = (record: record, at: at, end: r.offset)
                    try order.check(record.timestamp, at: "ulog file \(r.path), the record at byte offset \(at)", corrupt: corrupt)
                    if header.map({ UInt64(next.end) > $0.size }) ?? true { header = try ULogReader.header(of: r.path) }
                    guard let h = header, UInt64(next.end) <= h.size else {
                        held = next
                        break
                    }
                    guard record.timestamp <= h.timestamp else {
                        corrupt.increment()
                        throw FeedError.stop("ulog file \(r.path), the record at byte offset \(at): its timestamp \(record.timestamp) is after the newest its file's header vouches for (\(h.timestamp)), which KT writes after the record, so the record is damaged. Every record before it was applied, none from it on: repair or remove the damaged record, then start the bridge again")
                    }
                    passed = record.timestamp
                    if let n = resumedPastRemoved {
                        resumedPastRemoved = nil
                        if record.timestamp > last {
                            // Files before it were removed and it starts after the checkpoint:
                            // whether they held records after it cannot be told (a trim right
                            // at the checkpoint looks the same as a loss).
                            logger.warning("resuming at a ulog file whose predecessor was removed and whose first record is after the bridge's checkpoint: if the removed files held records after the checkpoint, they are lost (remove only files the bridge has applied: KT's ulog_remove with ts at or below the checkpoint)",
                                           metadata: ["file": "\(ULogFile.fileName(number: n))", "checkpoint": "\(last)", "first-record": "\(record.timestamp)"])
                        }
                    }
                    guard record.timestamp > last else { continue }
                    last = record.timestamp
                    if run.append(try translator.change(timestamp: record.timestamp, message: record.message)) {
                        try await run.deliver(deliver)
                    }
                }
                try await run.deliver(deliver)
                reader = r
                // At the end of this file: move on if a newer file exists.
                if all.contains(where: { $0.number > c.number }) {
                    if r.partialBytes > 0 {
                        corrupt.increment()
                        throw FeedError.stop("ulog file \(r.path) ends inside a record at byte offset \(r.offset) although a newer file exists: the file is damaged")
                    }
                    if let h = held {
                        // Its header is final now, and does not cover it: KT itself drops
                        // such bytes when it opens the file.
                        corrupt.increment()
                        throw FeedError.stop("ulog file \(r.path) has a record at byte offset \(h.at) past the \(header?.size ?? 0) bytes its header vouches for although a newer file exists: the file is damaged (KT drops such records when it opens the file)")
                    }
                    reader = nil
                    header = nil
                    cut = nil
                    continue
                }
                // Labeled: a file not ready to be judged skips the checks until the next poll.
                checks: do {
                    // The file being read gone from under its name: removed with nothing numbered
                    // after it, or replaced by a rename with another file (another first record).
                    // Either is KT restarted on an emptied directory (numbering from 1 again):
                    // followed by timestamps from here. A copy of the same file renamed over it
                    // (rsync, cp then mv: the same first record) is read on from the same place.
                    var gone: String?
                    let now = FileIdentity(path: r.path)
                    if now == nil && !once {
                        gone = "was removed and no file is numbered after it"
                    } else if let now, let opened = r.identity, now != opened {
                        switch ULogReader.firstRecordStamp(of: r.path, maxMessageBytes: maxMessageBytes) {
                        case nil:
                            // Not a whole first record yet (a new file KT has not flushed to):
                            // waited for, before its size is held against what was read.
                            if replacementSeen != now {
                                replacementSeen = now
                                logger.notice("ulog file being read was replaced by a file with no whole record yet: waiting for its first record, to tell a copy of it from a new file (KT restarted on an emptied directory?)",
                                              metadata: ["file": "\(r.path)", "offset": "\(r.offset)"])
                            }
                            break checks
                        case let first? where firstStamp == nil || first == firstStamp:
                            logger.notice("ulog file replaced by a copy of it (renamed over it): reading on from the same byte offset",
                                          metadata: ["file": "\(r.path)", "offset": "\(r.offset)"])
                            reader = try ULogReader(path: r.path, maxMessageBytes: maxMessageBytes, at: r.offset)
                            header = nil
                            continue
                        case let first?:
                            gone = "was replaced by another file, whose first record (\(first)) is not the one read (\(firstStamp ?? 0)),"
                        }
                    }
                    if let gone {
                        logger.warning("ulog file being read \(gone) (KT restarted on an emptied update-log directory?): following the files there now by their timestamps; records KT logged into the old file after the bridge read it are lost",
                                       metadata: ["file": "\(r.path)", "offset": "\(r.offset)"])
                        reader = nil
                        current = nil
                        header = nil
                        held = nil
                        cut = nil
                        continue
                    }
                    if let size = try? ULogReader.size(of: r.path), size < UInt64(r.offset + r.partialBytes) {
                        let applied = held?.at ?? r.offset
                        // KT drops only what its header does not cover: a file cut below its
                        // own header's size was cut by something else.
                        let covered = (try? ULogReader.header(of: r.path))?.size ?? .max
                        if size >= UInt64(applied), size >= covered {
                            // Only bytes no header covered are gone, none applied: KT drops them
                            // when it opens the file (restarted after a crash between a record's
                            // write and its header's). Read on from the last applied record's end.
                            logger.notice("ulog file shrank to what its header covers (KT restarted after a crash drops the bytes past it): nothing applied was lost, reading on from the end of the last applied record",
                                          metadata: ["file": "\(r.path)", "size": "\(size)", "offset": "\(applied)"])
                            reader = try ULogReader(path: r.path, maxMessageBytes: maxMessageBytes, at: applied)
                            order.rewind(to: passed)
                            header = nil
                            held = nil
                            cut = nil
                            continue
                        }
                        // KT's update logs only grow: a shorter file was cut (a wrong rotation
                        // tool, a restore): what it held past its end is gone from it.
                        corrupt.increment()
                        throw FeedError.stop("ulog file \(r.path) was truncated: it now holds \(size) bytes, and \(r.offset + r.partialBytes) were read from it. KT's update logs only grow: restore the file, or if KT's log was reset, migrate again from the server (--source kt://HOST:PORT)")
                    }
                    if r.partialBytes == 0 && held == nil {
                        cut = nil
                        // Caught up: KT has logged nothing newer than what was read (as its own
                        // heartbeats say over replication), so the lag is 0, not growing.
                        let t = ContinuousClock.now
                        if !once, caughtUpSaid.map({ t - $0 >= .seconds(1) }) ?? true {
                            caughtUpSaid = t
                            try await deliver(.heartbeat(sourceTimeNs: wallClockNanoseconds()))
                        }
                    } else if let was = cut, was.offset == held?.at ?? r.offset {
                        if !was.logged, ContinuousClock.now - was.since >= Self.stuckWarningAfter {
                            cut?.logged = true
                            logger.warning(held == nil
                                ? "ulog's newest file has ended inside a record for 10 s (KT still writing a large record, or a damaged one: the bridge waits for it, and /readyz reports the lag)"
                                : "ulog's newest record has not been covered by its file's header for 10 s (KT rewrites the header after each flush: a KT that stopped mid-flush, or a damaged header; the bridge waits, and /readyz reports the lag)",
                                metadata: ["file": "\(r.path)", "offset": "\(held?.at ?? r.offset)", "bytes-after": "\(r.partialBytes)"])
                        }
                    } else {
                        cut = (held?.at ?? r.offset, .now, false)
                    }
                }
            }
            if once {
                if let r = reader, let h = held {
                    logger.warning("ulog's last record is past the size its file's header vouches for (KT had not rewritten the header yet?); stopping before it",
                                   metadata: ["file": "\(r.path)", "offset": "\(h.at)"])
                } else if let r = reader, r.partialBytes > 0 {
                    logger.warning("ulog ends inside a record (still being written?); stopping before it",
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
    /// The file opened (a path renamed over later names another).
    let identity: FileIdentity?

    static func header(of path: String) throws -> ULogFile.Header {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw FeedError.stop("cannot open ulog file \(path): \(String(cString: strerror(errno)))")
        }
        defer { try? h.close() }
        let bytes = [UInt8](try h.read(upToCount: ULogFile.headerSize) ?? Data())
        do { return try ULogFile.Header(decoding: bytes) } catch { throw FeedError.stop("ulog file \(path) has a bad header: \(error)") }
    }

    /// The file's size now.
    static func size(of path: String) throws -> UInt64 {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return (attributes[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// The timestamp of the file's first record; nil while the file holds no whole header
    /// and first record (or cannot be read).
    static func firstRecordStamp(of path: String, maxMessageBytes: Int) -> UInt64? {
        guard let r = try? ULogReader(path: path, maxMessageBytes: maxMessageBytes) else { return nil }
        defer { r.file.close() }
        return (try? r.next())??.record.timestamp
    }

    /// Opens `path` at `offset` (a record's start; the first one's by default).
    init(path: String, maxMessageBytes: Int = Int(KTBinaryMagic.dataMaxSize), at offset: Int = ULogFile.headerSize) throws {
        self.path = path
        _ = try Self.header(of: path)
        do {
            file = try DecodingFileReader(path: path, decoder: ULogRecordDecoder(maxMessageBytes: maxMessageBytes),
                                          startOffset: offset,
                                          maximumBufferSize: maxMessageBytes + ULogFile.recordOverhead)
        } catch {
            throw FeedError.stop("cannot open ulog file \(path): \(error)")
        }
        identity = file.fileIdentity
    }

    /// File offset of the next record.
    var offset: Int { file.offset }
    /// Bytes after the last complete record.
    var partialBytes: Int { file.unprocessedBytes }

    /// The next record and its byte offset in the file.
    func next() throws -> (offset: Int, record: ULogFile.Record)? {
        do {
            return try file.next().map { ($0.offset, $0.message) }
        } catch let error as DecodeError {
            throw FeedError.stop("ulog file \(path) is damaged: \(error)")
        }
    }
}
