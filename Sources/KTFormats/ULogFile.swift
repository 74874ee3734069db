/// Kyoto Tycoon's update-log files, `NNNNNNNNNN.ulog` (ten decimal digits).
///
/// A file is a 17-byte header, `0xA0 size:u64 ts:u64` (the file's size and the newest
/// timestamp logged so far, rewritten after each flush), then records
/// `0xA1 ts:u64 size:u32 message 0xA2`. Numbers are big endian.
public enum ULogFile {
    public static let headerMagic: UInt8 = 0xA0
    public static let recordBegin: UInt8 = 0xA1
    public static let recordEnd: UInt8 = 0xA2
    public static let headerSize = 17
    /// Framing bytes around a record's message.
    public static let recordOverhead = 14
    public static let fileExtension = "ulog"

    /// The header of a ulog file.
    public struct Header: Sendable, Hashable {
        /// The file's size in bytes when the header was written.
        public var size: UInt64
        /// The newest timestamp logged (by the server, in any file) when it was written.
        public var timestamp: UInt64

        public init(size: UInt64, timestamp: UInt64) {
            self.size = size
            self.timestamp = timestamp
        }

        public func encoded() -> [UInt8] {
            var out: [UInt8] = [ULogFile.headerMagic]
            BE.append(size, 8, to: &out)
            BE.append(timestamp, 8, to: &out)
            return out
        }

        public init<C: Collection>(decoding bytes: C) throws(KTFormatError) where C.Element == UInt8 {
            let b = ArraySlice(bytes)
            guard b.count >= ULogFile.headerSize else { throw .truncated(what: "ulog header", offset: b.count) }
            guard b[b.startIndex] == ULogFile.headerMagic else {
                throw .badMagic(expected: "0xA0", found: b[b.startIndex], offset: 0)
            }
            size = BE.read(b, at: 1, width: 8) ?? 0
            timestamp = BE.read(b, at: 9, width: 8) ?? 0
        }
    }

    /// One logged update: its timestamp and the message bytes.
    public struct Record: Sendable, Hashable {
        public var timestamp: UInt64
        public var message: [UInt8]

        public init(timestamp: UInt64, message: [UInt8]) {
            self.timestamp = timestamp
            self.message = message
        }

        /// The record's bytes in a ulog file.
        public func encoded() -> [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(message.count + ULogFile.recordOverhead)
            encode(into: &out)
            return out
        }

        public func encode(into out: inout [UInt8]) {
            out.append(ULogFile.recordBegin)
            BE.append(timestamp, 8, to: &out)
            BE.append(UInt32(message.count), 4, to: &out)
            out.append(contentsOf: message)
            out.append(ULogFile.recordEnd)
        }

        /// The decoded message.
        public func decodedMessage() throws(KTFormatError) -> KTUpdateMessage {
            try KTUpdateMessage(decoding: message)
        }
    }

    /// The contents of one ulog file.
    public struct Contents: Sendable, Hashable {
        public var header: Header
        public var records: [Record]
        /// Bytes after the last whole record (a record still being written); 0 normally.
        public var trailingBytes: Int

        public init(header: Header, records: [Record], trailingBytes: Int = 0) {
            self.header = header
            self.records = records
            self.trailingBytes = trailingBytes
        }
    }

    /// Parses a whole file. A partial record at the end is reported in `trailingBytes`
    /// rather than thrown, since KT appends to the newest file while readers read it.
    public static func parse(_ bytes: [UInt8]) throws(KTFormatError) -> Contents {
        let header = try Header(decoding: bytes)
        var records: [Record] = []
        var pos = headerSize
        while pos < bytes.count {
            guard bytes[pos] == recordBegin else {
                throw .badMagic(expected: "record begin 0xA1", found: bytes[pos], offset: pos)
            }
            let slice = bytes[...]
            guard let ts = BE.read(slice, at: pos + 1, width: 8),
                  let size = BE.read(slice, at: pos + 9, width: 4),
                  pos + recordOverhead + Int(size) <= bytes.count
            else { break }
            let end = pos + 13 + Int(size)
            guard bytes[end] == recordEnd else {
                throw .badMagic(expected: "record end 0xA2", found: bytes[end], offset: end)
            }
            records.append(Record(timestamp: ts, message: Array(bytes[(pos + 13)..<end])))
            pos = end + 1
        }
        return Contents(header: header, records: records, trailingBytes: bytes.count - pos)
    }

    /// A whole file: the header (its size made to match) and the records.
    public static func encode(records: [Record], timestamp: UInt64? = nil) -> [UInt8] {
        var body: [UInt8] = []
        for r in records { r.encode(into: &body) }
        let header = Header(size: UInt64(headerSize + body.count),
                            timestamp: timestamp ?? records.map(\.timestamp).max() ?? 0)
        return header.encoded() + body
    }

    /// The records of several files (in file-number order) with a timestamp greater than
    /// `timestamp`: what a replication client resuming from `timestamp` is owed.
    public static func records(after timestamp: UInt64, in files: [Contents]) -> [Record] {
        files.flatMap { $0.records.filter { $0.timestamp > timestamp } }
    }

    /// The file name for a file number: ten digits, zero padded, `.ulog`.
    public static func fileName(number: UInt32) -> String {
        let digits = String(number)
        return String(repeating: "0", count: max(0, 10 - digits.count)) + digits + "." + fileExtension
    }

    /// The file number of a ulog file name, or `nil` if the name is not one.
    public static func fileNumber(of name: String) -> UInt32? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[1] == fileExtension, parts[0].count == 10,
              parts[0].allSatisfy({ $0.isASCII && $0.isNumber })
        else { return nil }
        return UInt32(parts[0])
    }
}
