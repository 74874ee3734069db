import NIOCore
import QSBytes

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
            var w = ByteWriter(capacity: ULogFile.headerSize)
            w.writeU8(ULogFile.headerMagic)
            w.writeU64(size)
            w.writeU64(timestamp)
            return w.bytes
        }

        /// Decodes the header at the start of `bytes` (a file's first bytes).
        public init(decoding bytes: [UInt8]) throws(DecodeError) {
            var r = ByteReader(bytes)
            let magic = try r.readU8("ulog header")
            guard magic == ULogFile.headerMagic else { throw .badMagic(magic, expected: "ulog header 0xA0", offset: 0) }
            size = try r.readU64("ulog header size")
            timestamp = try r.readU64("ulog header timestamp")
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
            var w = ByteWriter(capacity: message.count + ULogFile.recordOverhead)
            w.writeU8(ULogFile.recordBegin)
            w.writeU64(timestamp)
            w.writeU32(UInt32(message.count))
            w.writeBytes(message)
            w.writeU8(ULogFile.recordEnd)
            out.append(contentsOf: w.bytes)
        }

        /// The decoded message.
        public func decodedMessage() throws(DecodeError) -> KTUpdateMessage {
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

    /// Parses a whole file held in memory, with the same decoder that reads a file in
    /// chunks (`ULogRecordDecoder`). A partial record at the end is reported in
    /// `trailingBytes` rather than thrown, since KT appends to the newest file while readers
    /// read it.
    public static func parse(_ bytes: [UInt8]) throws(DecodeError) -> Contents {
        let header = try Header(decoding: bytes)
        let processor = NIOSingleStepByteToMessageProcessor(ULogRecordDecoder())
        var records: [Record] = []
        do {
            try processor.process(buffer: ByteBuffer(bytes: bytes[headerSize...])) { records.append($0) }
        } catch let error as DecodeError {
            throw error.shifted(by: headerSize)
        } catch {
            throw DecodeError(offset: headerSize, reason: "\(error)")
        }
        return Contents(header: header, records: records, trailingBytes: processor.unprocessedBytes)
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

/// Splits the records of a ulog file (the bytes after its header) into `ULogFile.Record`s:
/// `0xA1 ts:u64 size:u32 message 0xA2`. The same decoder reads a file in chunks
/// (`ULogFile.parse`, the bridge's ulog source) and a socket. Offsets in errors count from
/// the first byte decoded; a record claiming a message over `maxMessageBytes` is refused
/// as soon as its size arrives, and input that ends inside a record is a truncation error
/// at the end of the stream (`decodeLast`).
public struct ULogRecordDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = ULogFile.Record
    public let maxMessageBytes: Int
    /// Bytes consumed so far: the offset of the next record.
    public private(set) var consumed = 0

    public init(maxMessageBytes: Int = Int(KTBinaryMagic.dataMaxSize)) {
        self.maxMessageBytes = maxMessageBytes
    }

    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> ULogFile.Record? {
        let limit = maxMessageBytes
        guard let (record, length) = try ByteReader.prefix(of: buffer.readableBytesView, base: consumed, { r throws(DecodeError) in
            let start = r.offset
            let begin = try r.readU8("record")
            guard begin == ULogFile.recordBegin else { throw .badMagic(begin, expected: "record begin 0xA1", offset: start) }
            let ts = try r.readU64("record timestamp")
            let size = Int(try r.readU32("record size"))
            guard size <= limit else {
                throw DecodeError(offset: start, reason: "record claims a \(size)-byte message, over the \(limit)-byte limit", kind: .tooLarge)
            }
            let message = try r.readBytes(size, "record message")
            let end = try r.readU8("record end")
            guard end == ULogFile.recordEnd else { throw .badMagic(end, expected: "record end 0xA2", offset: r.offset - 1) }
            return ULogFile.Record(timestamp: ts, message: message)
        }) else { return nil }
        buffer.moveReaderIndex(forwardBy: length)
        consumed += length
        return record
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> ULogFile.Record? {
        if let record = try decode(buffer: &buffer) { return record }
        if buffer.readableBytes > 0 { throw .endsInside("record", offset: consumed, present: buffer.readableBytes) }
        return nil
    }
}
