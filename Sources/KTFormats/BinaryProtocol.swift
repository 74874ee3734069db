import NIOCore
import QSBytes

/// A record in binary set_bulk requests and get_bulk replies:
/// `db:u16 ksiz:u32 vsiz:u32 xt:i64 key value`.
public struct KTBinaryRecord: Sendable, Hashable {
    public var db: UInt16
    public var key: [UInt8]
    public var value: [UInt8]
    /// In a request, KT's requested `xt` (relative if ≥ 0, absolute if < 0); in a reply, the
    /// stored expiration time.
    public var expiration: Int64

    public init(db: UInt16, key: [UInt8], value: [UInt8], expiration: Int64) {
        self.db = db
        self.key = key
        self.value = value
        self.expiration = expiration
    }

    func encode(into w: inout ByteWriter) {
        w.writeU16(db)
        w.writeU32(UInt32(key.count))
        w.writeU32(UInt32(value.count))
        w.writeI64(expiration)
        w.writeBytes(key)
        w.writeBytes(value)
    }
}

/// A key in binary remove_bulk and get_bulk requests: `db:u16 ksiz:u32 key`.
public struct KTBinaryKey: Sendable, Hashable {
    public var db: UInt16
    public var key: [UInt8]

    public init(db: UInt16, key: [UInt8]) {
        self.db = db
        self.key = key
    }
}

/// A request of KT's binary protocol. Each starts with its magic byte and `flags:u32`.
public enum KTBinaryRequest: Sendable, Hashable {
    /// `0xB8 flags rnum:u32 records`.
    case setBulk(flags: UInt32, records: [KTBinaryRecord])
    /// `0xB9 flags rnum:u32 keys`.
    case removeBulk(flags: UInt32, keys: [KTBinaryKey])
    /// `0xBA flags rnum:u32 keys`.
    case getBulk(flags: UInt32, keys: [KTBinaryKey])
    /// `0xB4 flags nsiz:u32 rnum:u32 name (ksiz:u32 vsiz:u32 key value)*`.
    case playScript(flags: UInt32, name: [UInt8], arguments: [KTPair])
    /// `0xB1 flags ts:u64 sid:u16`.
    case replication(ReplicationRequest)

    /// Whether the client asked for no reply.
    public var noReply: Bool {
        switch self {
        case .setBulk(let f, _), .removeBulk(let f, _), .getBulk(let f, _), .playScript(let f, _, _):
            return f & KTBinaryMagic.noReplyFlag != 0
        case .replication: return false
        }
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        switch self {
        case .setBulk(let flags, let records):
            w.writeU8(KTBinaryMagic.setBulk)
            w.writeU32(flags)
            w.writeU32(UInt32(records.count))
            for r in records { r.encode(into: &w) }
        case .removeBulk(let flags, let keys), .getBulk(let flags, let keys):
            if case .removeBulk = self { w.writeU8(KTBinaryMagic.removeBulk) } else { w.writeU8(KTBinaryMagic.getBulk) }
            w.writeU32(flags)
            w.writeU32(UInt32(keys.count))
            for k in keys {
                w.writeU16(k.db)
                w.writeU32(UInt32(k.key.count))
                w.writeBytes(k.key)
            }
        case .playScript(let flags, let name, let arguments):
            w.writeU8(KTBinaryMagic.playScript)
            w.writeU32(flags)
            w.writeU32(UInt32(name.count))
            w.writeU32(UInt32(arguments.count))
            w.writeBytes(name)
            for a in arguments { a.encode(into: &w) }
        case .replication(let request):
            return request.encoded()
        }
        return w.bytes
    }
}

/// A key/value pair of binary play_script.
public struct KTPair: Sendable, Hashable {
    public var key: [UInt8]
    public var value: [UInt8]

    public init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
    }

    func encode(into w: inout ByteWriter) {
        w.writeU32(UInt32(key.count))
        w.writeU32(UInt32(value.count))
        w.writeBytes(key)
        w.writeBytes(value)
    }
}

/// A reply of KT's binary protocol.
public enum KTBinaryResponse: Sendable, Hashable {
    /// `0xB8 hits:u32`.
    case setBulk(hits: UInt32)
    /// `0xB9 hits:u32`.
    case removeBulk(hits: UInt32)
    /// `0xBA hits:u32 records` (records carry stored expiration times).
    case getBulk(records: [KTBinaryRecord])
    /// `0xB4 rnum:u32 pairs`.
    case playScript(results: [KTPair])
    /// `0xBF`: the request failed.
    case error

    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        switch self {
        case .setBulk(let hits):
            w.writeU8(KTBinaryMagic.setBulk)
            w.writeU32(hits)
        case .removeBulk(let hits):
            w.writeU8(KTBinaryMagic.removeBulk)
            w.writeU32(hits)
        case .getBulk(let records):
            w.writeU8(KTBinaryMagic.getBulk)
            w.writeU32(UInt32(records.count))
            for r in records { r.encode(into: &w) }
        case .playScript(let results):
            w.writeU8(KTBinaryMagic.playScript)
            w.writeU32(UInt32(results.count))
            for p in results { p.encode(into: &w) }
        case .error:
            w.writeU8(KTBinaryMagic.error)
        }
        return w.bytes
    }
}

extension ByteReader {
    mutating func size(_ what: String, limit: UInt32) throws(DecodeError) -> Int {
        let at = offset
        let n = try readU32(what)
        guard n <= limit else { throw DecodeError(offset: at, reason: "\(what) \(n) over \(limit)", kind: .tooLarge) }
        return Int(n)
    }

    mutating func record(limit: UInt32) throws(DecodeError) -> KTBinaryRecord {
        let db = try readU16("record db")
        let ksiz = try size("record key size", limit: limit)
        let vsiz = try size("record value size", limit: limit)
        let xt = try readI64("record expiration")
        return KTBinaryRecord(db: db, key: try readBytes(ksiz, "record key"), value: try readBytes(vsiz, "record value"), expiration: xt)
    }

    mutating func key(limit: UInt32) throws(DecodeError) -> KTBinaryKey {
        let db = try readU16("key db")
        let ksiz = try size("key size", limit: limit)
        return KTBinaryKey(db: db, key: try readBytes(ksiz, "key"))
    }

    mutating func pair(limit: UInt32) throws(DecodeError) -> KTPair {
        let ksiz = try size("pair key size", limit: limit)
        let vsiz = try size("pair value size", limit: limit)
        return KTPair(key: try readBytes(ksiz, "pair key"), value: try readBytes(vsiz, "pair value"))
    }

    /// `count` items read by `item`.
    mutating func list<T>(_ count: UInt32, _ item: (inout Self) throws(DecodeError) -> T) throws(DecodeError) -> [T] {
        var out: [T] = []
        for _ in 0..<count { out.append(try item(&self)) }
        return out
    }
}

/// Server side: decodes whole binary requests. A request declares no total length, so a
/// listener bounds it with `ByteToMessageHandler(KTBinaryRequestDecoder(), maximumBufferSize:)`;
/// a key, value or name over KT's own limit (`dataMaxSize`) is refused as soon as its size
/// arrives. Errors name the offset from the start of the request. (A read node's KT port
/// decodes with its own decoder, which walks a `get_bulk` as it arrives and leaves its keys
/// unparsed: `KTBinaryReadDecoder` in QSReads.)
public struct KTBinaryRequestDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = KTBinaryRequest

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> KTBinaryRequest? {
        try Self.next(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> KTBinaryRequest? {
        try Self.next(&buffer)
    }

    /// A request other than `get_bulk`, from its first five bytes (what follows is
    /// discarded: the connection closes after the refusal); nil for `get_bulk` or before
    /// five bytes. For a server that answers only `get_bulk` (a read node): every other
    /// request is known from its magic and flags alone, with no records, keys or arguments,
    /// so a large write is refused before it is read.
    public static func refusedEarly(_ buffer: ByteBuffer) throws(DecodeError) -> KTBinaryRequest? {
        guard let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), magic != KTBinaryMagic.getBulk,
              let flags = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self) else { return nil }
        switch magic {
        case KTBinaryMagic.setBulk: return .setBulk(flags: flags, records: [])
        case KTBinaryMagic.removeBulk: return .removeBulk(flags: flags, keys: [])
        case KTBinaryMagic.playScript: return .playScript(flags: flags, name: [], arguments: [])
        default: return nil  // replication's header is small; an unknown magic is refused by `next`
        }
    }

    /// Takes one whole request off `buffer`, or returns `nil` (consuming nothing).
    public static func next(_ buffer: inout ByteBuffer) throws(DecodeError) -> KTBinaryRequest? {
        let limit = KTBinaryMagic.dataMaxSize
        guard let (request, length) = try ByteReader.prefix(of: buffer.readableBytesView, { r throws(DecodeError) -> KTBinaryRequest in
            let magic = try r.readU8("magic")
            let known = [KTBinaryMagic.setBulk, KTBinaryMagic.removeBulk, KTBinaryMagic.getBulk, KTBinaryMagic.playScript, KTBinaryMagic.replication]
            guard known.contains(magic) else { throw DecodeError(offset: 0, reason: "unknown magic 0x\(String(magic, radix: 16))") }
            let flags = try r.readU32("flags")
            switch magic {
            case KTBinaryMagic.setBulk:
                let n = try r.readU32("record count")
                return .setBulk(flags: flags, records: try r.list(n) { r throws(DecodeError) in try r.record(limit: limit) })
            case KTBinaryMagic.removeBulk, KTBinaryMagic.getBulk:
                let n = try r.readU32("key count")
                let keys = try r.list(n) { r throws(DecodeError) in try r.key(limit: limit) }
                return magic == KTBinaryMagic.removeBulk ? .removeBulk(flags: flags, keys: keys) : .getBulk(flags: flags, keys: keys)
            case KTBinaryMagic.playScript:
                let nsiz = try r.size("name size", limit: limit)
                let n = try r.readU32("argument count")
                let name = try r.readBytes(nsiz, "name")
                return .playScript(flags: flags, name: name, arguments: try r.list(n) { r throws(DecodeError) in try r.pair(limit: limit) })
            default:
                let ts = try r.readU64("replication timestamp")
                let sid = try r.readU16("replication sid")
                return .replication(ReplicationRequest(flags: flags, timestamp: ts, sid: sid))
            }
        }) else { return nil }
        buffer.moveReaderIndex(forwardBy: length)
        return request
    }
}

/// Client side: decodes whole binary replies (errors as `KTBinaryRequestDecoder`'s).
public struct KTBinaryResponseDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = KTBinaryResponse
    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> KTBinaryResponse? {
        try Self.next(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> KTBinaryResponse? {
        try Self.next(&buffer)
    }

    /// Takes one whole reply off `buffer`, or returns `nil` (consuming nothing).
    public static func next(_ buffer: inout ByteBuffer) throws(DecodeError) -> KTBinaryResponse? {
        let limit = KTBinaryMagic.dataMaxSize
        guard let (response, length) = try ByteReader.prefix(of: buffer.readableBytesView, { r throws(DecodeError) -> KTBinaryResponse in
            let magic = try r.readU8("magic")
            switch magic {
            case KTBinaryMagic.setBulk, KTBinaryMagic.removeBulk:
                let hits = try r.readU32("hits")
                return magic == KTBinaryMagic.setBulk ? .setBulk(hits: hits) : .removeBulk(hits: hits)
            case KTBinaryMagic.getBulk:
                let n = try r.readU32("record count")
                return .getBulk(records: try r.list(n) { r throws(DecodeError) in try r.record(limit: limit) })
            case KTBinaryMagic.playScript:
                let n = try r.readU32("pair count")
                return .playScript(results: try r.list(n) { r throws(DecodeError) in try r.pair(limit: limit) })
            case KTBinaryMagic.error:
                return .error
            default:
                throw DecodeError(offset: 0, reason: "unknown magic 0x\(String(magic, radix: 16))")
            }
        }) else { return nil }
        buffer.moveReaderIndex(forwardBy: length)
        return response
    }
}
