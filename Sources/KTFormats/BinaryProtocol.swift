import NIOCore

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

    func encode(into out: inout [UInt8]) {
        BE.append(db, 2, to: &out)
        BE.append(UInt32(key.count), 4, to: &out)
        BE.append(UInt32(value.count), 4, to: &out)
        BE.append(expiration, 8, to: &out)
        out.append(contentsOf: key)
        out.append(contentsOf: value)
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
        var out: [UInt8] = []
        switch self {
        case .setBulk(let flags, let records):
            out.append(KTBinaryMagic.setBulk)
            BE.append(flags, 4, to: &out)
            BE.append(UInt32(records.count), 4, to: &out)
            for r in records { r.encode(into: &out) }
        case .removeBulk(let flags, let keys), .getBulk(let flags, let keys):
            if case .removeBulk = self { out.append(KTBinaryMagic.removeBulk) } else { out.append(KTBinaryMagic.getBulk) }
            BE.append(flags, 4, to: &out)
            BE.append(UInt32(keys.count), 4, to: &out)
            for k in keys {
                BE.append(k.db, 2, to: &out)
                BE.append(UInt32(k.key.count), 4, to: &out)
                out.append(contentsOf: k.key)
            }
        case .playScript(let flags, let name, let arguments):
            out.append(KTBinaryMagic.playScript)
            BE.append(flags, 4, to: &out)
            BE.append(UInt32(name.count), 4, to: &out)
            BE.append(UInt32(arguments.count), 4, to: &out)
            out.append(contentsOf: name)
            for a in arguments { a.encode(into: &out) }
        case .replication(let request):
            out = request.encoded()
        }
        return out
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

    func encode(into out: inout [UInt8]) {
        BE.append(UInt32(key.count), 4, to: &out)
        BE.append(UInt32(value.count), 4, to: &out)
        out.append(contentsOf: key)
        out.append(contentsOf: value)
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
        var out: [UInt8] = []
        switch self {
        case .setBulk(let hits):
            out.append(KTBinaryMagic.setBulk)
            BE.append(hits, 4, to: &out)
        case .removeBulk(let hits):
            out.append(KTBinaryMagic.removeBulk)
            BE.append(hits, 4, to: &out)
        case .getBulk(let records):
            out.append(KTBinaryMagic.getBulk)
            BE.append(UInt32(records.count), 4, to: &out)
            for r in records { r.encode(into: &out) }
        case .playScript(let results):
            out.append(KTBinaryMagic.playScript)
            BE.append(UInt32(results.count), 4, to: &out)
            for p in results { p.encode(into: &out) }
        case .error:
            out.append(KTBinaryMagic.error)
        }
        return out
    }
}

/// A malformed binary request or reply.
public struct KTBinaryProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    /// Offset from the start of the frame.
    public var offset: Int

    public init(reason: String, offset: Int) {
        self.reason = reason
        self.offset = offset
    }
    public var description: String { "\(reason) at offset \(offset)" }
}

extension ByteCursor {
    mutating func record(limit: UInt32) throws(KTBinaryProtocolError) -> KTBinaryRecord? {
        guard let db = u16(), let ksiz = u32(), let vsiz = u32(), let xt = int(Int64.self) else { return nil }
        guard ksiz <= limit, vsiz <= limit else {
            throw KTBinaryProtocolError(reason: "record size over \(limit)", offset: offset)
        }
        guard let key = bytes(Int(ksiz)), let value = bytes(Int(vsiz)) else { return nil }
        return KTBinaryRecord(db: db, key: key, value: value, expiration: xt)
    }

    mutating func key(limit: UInt32) throws(KTBinaryProtocolError) -> KTBinaryKey? {
        guard let db = u16(), let ksiz = u32() else { return nil }
        guard ksiz <= limit else { throw KTBinaryProtocolError(reason: "key size over \(limit)", offset: offset) }
        guard let key = bytes(Int(ksiz)) else { return nil }
        return KTBinaryKey(db: db, key: key)
    }

    mutating func pair(limit: UInt32) throws(KTBinaryProtocolError) -> KTPair? {
        guard let ksiz = u32(), let vsiz = u32() else { return nil }
        guard ksiz <= limit, vsiz <= limit else {
            throw KTBinaryProtocolError(reason: "pair size over \(limit)", offset: offset)
        }
        guard let k = bytes(Int(ksiz)), let v = bytes(Int(vsiz)) else { return nil }
        return KTPair(key: k, value: v)
    }
}

/// Server side: decodes whole binary requests.
public struct KTBinaryRequestDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = KTBinaryRequest
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let request = try Self.next(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(request))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// Takes one whole request off `buffer`, or returns `nil` (consuming nothing).
    public static func next(_ buffer: inout ByteBuffer) throws(KTBinaryProtocolError) -> KTBinaryRequest? {
        var c = ByteCursor(buffer)
        let limit = KTBinaryMagic.dataMaxSize
        guard let magic = c.u8(), let flags = c.u32() else { return nil }
        let request: KTBinaryRequest
        switch magic {
        case KTBinaryMagic.setBulk:
            guard let n = c.u32() else { return nil }
            var records: [KTBinaryRecord] = []
            for _ in 0..<n {
                guard let r = try c.record(limit: limit) else { return nil }
                records.append(r)
            }
            request = .setBulk(flags: flags, records: records)
        case KTBinaryMagic.removeBulk, KTBinaryMagic.getBulk:
            guard let n = c.u32() else { return nil }
            var keys: [KTBinaryKey] = []
            for _ in 0..<n {
                guard let k = try c.key(limit: limit) else { return nil }
                keys.append(k)
            }
            request = magic == KTBinaryMagic.removeBulk ? .removeBulk(flags: flags, keys: keys) : .getBulk(flags: flags, keys: keys)
        case KTBinaryMagic.playScript:
            guard let nsiz = c.u32(), let n = c.u32() else { return nil }
            guard nsiz <= limit else { throw KTBinaryProtocolError(reason: "name size over \(limit)", offset: c.offset) }
            guard let name = c.bytes(Int(nsiz)) else { return nil }
            var args: [KTPair] = []
            for _ in 0..<n {
                guard let p = try c.pair(limit: limit) else { return nil }
                args.append(p)
            }
            request = .playScript(flags: flags, name: name, arguments: args)
        case KTBinaryMagic.replication:
            guard let ts = c.u64(), let sid = c.u16() else { return nil }
            request = .replication(ReplicationRequest(flags: flags, timestamp: ts, sid: sid))
        default:
            throw KTBinaryProtocolError(reason: "unknown magic 0x\(String(magic, radix: 16))", offset: 0)
        }
        buffer.moveReaderIndex(forwardBy: c.offset)
        return request
    }
}

/// Client side: decodes whole binary replies.
public struct KTBinaryResponseDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = KTBinaryResponse
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let response = try Self.next(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(response))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    public static func next(_ buffer: inout ByteBuffer) throws(KTBinaryProtocolError) -> KTBinaryResponse? {
        var c = ByteCursor(buffer)
        let limit = KTBinaryMagic.dataMaxSize
        guard let magic = c.u8() else { return nil }
        let response: KTBinaryResponse
        switch magic {
        case KTBinaryMagic.setBulk, KTBinaryMagic.removeBulk:
            guard let hits = c.u32() else { return nil }
            response = magic == KTBinaryMagic.setBulk ? .setBulk(hits: hits) : .removeBulk(hits: hits)
        case KTBinaryMagic.getBulk:
            guard let n = c.u32() else { return nil }
            var records: [KTBinaryRecord] = []
            for _ in 0..<n {
                guard let r = try c.record(limit: limit) else { return nil }
                records.append(r)
            }
            response = .getBulk(records: records)
        case KTBinaryMagic.playScript:
            guard let n = c.u32() else { return nil }
            var pairs: [KTPair] = []
            for _ in 0..<n {
                guard let p = try c.pair(limit: limit) else { return nil }
                pairs.append(p)
            }
            response = .playScript(results: pairs)
        case KTBinaryMagic.error:
            response = .error
        default:
            throw KTBinaryProtocolError(reason: "unknown magic 0x\(String(magic, radix: 16))", offset: 0)
        }
        buffer.moveReaderIndex(forwardBy: c.offset)
        return response
    }
}
