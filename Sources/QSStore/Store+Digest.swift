import QSModel
import Crypto
import QSBytes

/// A digest of the live records of one key range.
public struct RangeDigest: Sendable, Equatable {
    public var count: UInt64
    public var hash: [UInt8]
    /// The last stored key covered (empty when the range held nothing).
    public var last: [UInt8]
    /// Whether records remain after `last` (the limit was reached).
    public var more: Bool
}

extension StoreTransaction {
    /// Digests the live records after stored key `after` (nil: from the start) up to and
    /// including `through` (nil: no bound), at most `limit` of them, expiry judged at
    /// `now`: SHA-256 over `key:blob32 value:blob32 xt:u64 (0: none)` of each record in
    /// stored-key order. Two nodes with equal digests over the same range hold the same
    /// records there.
    public func digest(after: [UInt8]?, through: [UInt8]?, limit: Int, now: UInt64) throws -> RangeDigest {
        var hasher = SHA256()
        var count: UInt64 = 0
        var last = [UInt8]()
        var more = false
        var seen = 0
        try txn.forEach(kv, from: after ?? [KeyEncoding.tag]) { sk, value in
            if let after, sk == after { return true }
            if let through, !sk.lexicographicallyPrecedes(through), sk != through { return false }
            if seen >= limit {
                more = true
                return false
            }
            seen += 1
            last = sk
            let (key, record) = try decodeRecord(sk, value)
            if record.isExpired(at: now) { return true }
            var w = ByteWriter(capacity: key.count + record.value.count + 16)
            w.writeBlob32(key)
            w.writeBlob32(record.value)
            w.writeU64(record.expiry ?? 0)
            hasher.update(data: w.bytes)
            count += 1
            return true
        }
        return RangeDigest(count: count, hash: Array(hasher.finalize()), last: last, more: more)
    }

    /// Records (live at `now`) in the range `after` < stored key ≤ `through`, for listing
    /// the differences of a range whose digests differ.
    public func records(after: [UInt8]?, through: [UInt8]?, now: UInt64, limit: Int) throws -> [(key: [UInt8], record: Record)] {
        var out = [(key: [UInt8], record: Record)]()
        try txn.forEach(kv, from: after ?? [KeyEncoding.tag]) { sk, value in
            if let after, sk == after { return true }
            if let through, !sk.lexicographicallyPrecedes(through), sk != through { return false }
            guard out.count < limit else { return false }
            let (key, record) = try decodeRecord(sk, value)
            if !record.isExpired(at: now) { out.append((key, record)) }
            return true
        }
        return out
    }
}

extension Store {
    /// See `StoreTransaction.digest`.
    public func digest(after: [UInt8]?, through: [UInt8]?, limit: Int, now: UInt64) async throws -> RangeDigest {
        try await read { try $0.digest(after: after, through: through, limit: limit, now: now) }
    }

    /// See `StoreTransaction.records`.
    public func records(after: [UInt8]?, through: [UInt8]?, now: UInt64, limit: Int) async throws -> [(key: [UInt8], record: Record)] {
        try await read { try $0.records(after: after, through: through, now: now, limit: limit) }
    }
}
