import CXXHash
import QSModel
import QSBytes

/// How user keys map to LMDB keys, so that keys of any length (including empty keys and
/// keys longer than LMDB's 511-byte limit) are stored whole, never truncated.
///
/// - A key of up to `inlineLimit` (477) bytes is stored as `0x01 ‖ key`.
/// - A longer key is stored as `0x01 ‖ key[0..<478] ‖ SHA-256(key)` (exactly 511 bytes), and
///   the full key is kept in the record.
///
/// Short stored keys are at most 478 bytes and long ones exactly 511, so the two forms
/// never collide. Order is preserved except among long keys sharing their first 478 bytes,
/// which sort by hash. A prefix scan uses the stored form of the prefix's first 478 bytes
/// and filters on the full key.
public struct KeyEncoding: Sendable {
    public static let tag: UInt8 = 0x01
    public let inlineLimit: Int
    public let prefixLength: Int

    /// `maxKeySize` is LMDB's limit (`mdb_env_get_maxkeysize`).
    public init(maxKeySize: Int) {
        // tag + prefix + 32-byte hash must fit in maxKeySize.
        prefixLength = maxKeySize - 1 - 32
        inlineLimit = prefixLength - 1
    }

    public func isLong(_ key: [UInt8]) -> Bool { key.count > inlineLimit }
    public func isLong(_ key: UnsafeRawBufferPointer) -> Bool { key.count > inlineLimit }

    public func storedKey(_ key: [UInt8]) -> [UInt8] {
        withStoredKey(key) { Array($0) }
    }

    /// The stored key's length for `key`.
    @inline(__always)
    func storedKeyCount(_ keyCount: Int) -> Int {
        keyCount <= inlineLimit ? 1 + keyCount : 1 + prefixLength + 32
    }

    /// Calls `body` with `key`'s stored key, in a buffer on the stack (at most LMDB's
    /// 511 bytes): a write path needs no array per key.
    @inline(__always)
    public func withStoredKey<T>(_ key: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try key.withUnsafeBytes { try withStoredKey($0, body) }
    }

    /// `withStoredKey` of a key in place (a packed batch's).
    @inline(__always)
    public func withStoredKey<T>(_ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try withUnsafeTemporaryAllocation(byteCount: storedKeyCount(key.count), alignment: 1) { out in
            var w = RawByteWriter(out)
            w.writeU8(Self.tag)
            if key.count <= inlineLimit {
                w.writeBytes(key)
            } else {
                w.writeBytes(UnsafeRawBufferPointer(rebasing: key[0..<prefixLength]))
                ChainHash.digest(key).withUnsafeBytes { w.writeBytes($0) }
            }
            precondition(w.remaining == 0, "a stored key announced \(out.count) bytes and wrote \(w.offset)")
            return try body(UnsafeRawBufferPointer(out))
        }
    }

    /// The stored-key range start for a prefix scan.
    public func storedScanPrefix(_ prefix: [UInt8]) -> [UInt8] {
        [Self.tag] + prefix.prefix(prefixLength)
    }
}

/// Record layout in the kv database (store format 2, docs/storage.md):
/// `flags:u8 (bit0 expiry, bit1 long key, bit2 checksum) [expiry:u64] [fullKey:blob32] value check:u64`,
/// where `check` is XXH3-64 of every byte before it, seeded with XXH3-64 of the stored key:
/// a flipped bit anywhere in the record (or a record found under another key) fails it.
/// Format 1 records (before checksums) have no bit 2 and no `check`; a format 2 store
/// refuses them.
enum RecordCodec {
    static let checksumFlag: UInt8 = 4
    static let checksumBytes = 8

    /// The checksum of a record's `body` (its bytes before the checksum) under `storedKey`.
    @inline(__always)
    static func checksum(storedKey: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer) -> UInt64 {
        let seed = XXH3_64bits(storedKey.baseAddress, storedKey.count)
        return XXH3_64bits_withSeed(body.baseAddress, body.count, seed)
    }

    /// Whether a stored record has an expiry (its flags byte says so; an empty, damaged
    /// record counts as one, left to the decoder to report).
    static func mayExpire(_ raw: [UInt8]) -> Bool {
        raw.first.map { $0 & 1 != 0 } ?? true
    }

    static func encode(_ record: Record, storedKey: [UInt8], fullKey: [UInt8]?) -> [UInt8] {
        storedKey.withUnsafeBytes { sk in
            [UInt8](encodedCount: encodedCount(record, fullKey: fullKey)) { encode(record, storedKey: sk, fullKey: fullKey, into: &$0) }
        }
    }

    /// Calls `body` with the record's encoding in a temporary buffer (on the stack when it
    /// is small): the write path needs no array per record.
    @inline(__always)
    static func withEncoded<T>(value: UnsafeRawBufferPointer, expiry: UInt64?, storedKey: UnsafeRawBufferPointer,
                               fullKey: UnsafeRawBufferPointer?, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try withUnsafeTemporaryAllocation(byteCount: encodedCount(valueCount: value.count, expiry: expiry, fullKey: fullKey?.count),
                                          alignment: 8) { out in
            var w = RawByteWriter(out)
            encode(value: value, expiry: expiry, storedKey: storedKey, fullKey: fullKey, into: &w)
            precondition(w.remaining == 0, "a record announced \(out.count) bytes and wrote \(w.offset)")
            return try body(UnsafeRawBufferPointer(out))
        }
    }

    @inline(__always)
    static func encodedCount(_ record: Record, fullKey: [UInt8]?) -> Int {
        encodedCount(valueCount: record.value.count, expiry: record.expiry, fullKey: fullKey?.count)
    }

    @inline(__always)
    static func encodedCount(valueCount: Int, expiry: UInt64?, fullKey: Int?) -> Int {
        1 + (expiry == nil ? 0 : 8) + (fullKey.map { 4 + $0 } ?? 0) + valueCount + checksumBytes
    }

    @inline(__always)
    static func encode(_ record: Record, storedKey: UnsafeRawBufferPointer, fullKey: [UInt8]?, into w: inout RawByteWriter) {
        record.value.withUnsafeBytes { value in
            if let fullKey {
                fullKey.withUnsafeBytes { encode(value: value, expiry: record.expiry, storedKey: storedKey, fullKey: $0, into: &w) }
            } else {
                encode(value: value, expiry: record.expiry, storedKey: storedKey, fullKey: nil, into: &w)
            }
        }
    }

    @inline(__always)
    static func encode(value: UnsafeRawBufferPointer, expiry: UInt64?, storedKey: UnsafeRawBufferPointer,
                       fullKey: UnsafeRawBufferPointer?, into w: inout RawByteWriter) {
        var flags: UInt8 = checksumFlag
        if expiry != nil { flags |= 1 }
        if fullKey != nil { flags |= 2 }
        w.writeU8(flags)
        if let expiry { w.writeU64(expiry) }
        if let fullKey {
            w.writeU32(UInt32(fullKey.count))
            w.writeBytes(fullKey)
        }
        w.writeBytes(value)
        w.writeU64(checksum(storedKey: storedKey, body: w.written))
    }

    /// The bytes of `raw` that hold the record's fields (the checksum left out), after
    /// checking the checksum; a record without one is refused when `requireChecksum`.
    @inline(__always)
    static func verified(_ raw: UnsafeRawBufferPointer, storedKey: UnsafeRawBufferPointer,
                         requireChecksum: Bool) throws -> UnsafeRawBufferPointer {
        guard let flags = raw.first else { throw StoreError.corruptRecord(storedKey: Array(storedKey), reason: "record of 0 bytes") }
        guard flags & checksumFlag != 0 else {
            if requireChecksum {
                throw StoreError.corruptRecord(storedKey: Array(storedKey), reason: "record without its checksum (flags \(flags)) in a format 2 store")
            }
            return raw
        }
        guard raw.count >= 1 + checksumBytes else {
            throw StoreError.corruptRecord(storedKey: Array(storedKey), reason: "record of \(raw.count) bytes, too short for its checksum")
        }
        let body = UnsafeRawBufferPointer(rebasing: raw[0..<(raw.count - checksumBytes)])
        var stored: UInt64 = 0
        for i in body.count..<raw.count { stored = stored << 8 | UInt64(raw[i]) }
        let computed = checksum(storedKey: storedKey, body: body)
        guard stored == computed else {
            throw StoreError.corruptRecord(storedKey: Array(storedKey),
                                           reason: "checksum mismatch (stored \(String(stored, radix: 16)), computed \(String(computed, radix: 16)))")
        }
        return body
    }

    /// The record in `bytes` seen in place after checking its checksum, nil when it keeps a
    /// full key other than `key` (the layout of `decode`, without copying the value).
    static func view(_ raw: UnsafeRawBufferPointer, storedKey: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer,
                     requireChecksum: Bool) throws -> RecordView? {
        let bytes = try verified(raw, storedKey: storedKey, requireChecksum: requireChecksum)
        let flags = bytes[0]
        var at = 1
        func u(_ width: Int, _ what: String) throws -> UInt64 {
            guard bytes.count - at >= width else {
                throw StoreError.corruptRecord(storedKey: Array(storedKey), reason: "record too short for its \(what)")
            }
            var v: UInt64 = 0
            for i in at..<(at + width) { v = v << 8 | UInt64(bytes[i]) }
            at += width
            return v
        }
        let expiry = flags & 1 != 0 ? try u(8, "expiry") : nil
        if flags & 2 != 0 {
            let n = Int(try u(4, "full key length"))
            guard bytes.count - at >= n else { throw StoreError.corruptRecord(storedKey: Array(storedKey), reason: "record too short for its full key") }
            guard UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)]).elementsEqual(key) else { return nil }
            at += n
        }
        return RecordView(expiry: expiry, value: UnsafeRawBufferPointer(rebasing: bytes[at...]))
    }

    /// Decodes a stored record after checking its checksum; returns the full key
    /// (recovered from the stored key when it was stored inline).
    static func decode(storedKey: [UInt8], _ raw: [UInt8], requireChecksum: Bool) throws -> (key: [UInt8], record: Record) {
        try storedKey.withUnsafeBytes { sk in
            try raw.withUnsafeBytes { rawBytes in
                let bytes = try verified(rawBytes, storedKey: sk, requireChecksum: requireChecksum)
                var r = ByteReader(Array(bytes))
                do {
                    let flags = try r.readU8("record flags")
                    let expiry = flags & 1 != 0 ? try r.readU64("record expiry") : nil
                    let key: [UInt8]
                    if flags & 2 != 0 {
                        key = try r.readBlob32("record full key")
                    } else {
                        key = Array(storedKey.dropFirst())
                    }
                    let value = Array(bytes[r.offset...])
                    return (key, Record(value: value, expiry: expiry))
                } catch let error as DecodeError {
                    throw StoreError.corruptRecord(storedKey: storedKey, reason: "\(error)")
                }
            }
        }
    }
}

/// A stored record seen in place by `StoreTransaction.withRecord`: its expiry and its value
/// bytes, valid only inside the closure that received it.
public struct RecordView {
    /// Absolute expiry in epoch seconds, nil for never.
    public let expiry: UInt64?
    public let value: UnsafeRawBufferPointer

    /// As `Record.isExpired(at:)`: past its expiry second, as KT.
    public func isExpired(at now: UInt64) -> Bool {
        guard let expiry else { return false }
        return expiry < now
    }
}
