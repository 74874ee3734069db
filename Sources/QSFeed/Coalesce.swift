import QSModel

/// Merges a batch's operations so that later writes to a key win: the result applied in
/// one transaction leaves the same state as applying every operation in order, with each
/// key written at most once (a clear keeps its place and removes earlier writes it covers).
///
/// A batch without a clear and without two writes to one key (a backlog of distinct keys)
/// is returned as it is after one pass (`writesDistinctKeys`).
public func coalesce(_ operations: [Mutation]) -> [Mutation] {
    guard !writesDistinctKeys(operations) else { return operations }
    var decided = Set<CoalesceKey>(minimumCapacity: operations.count)
    var clearedPrefixes = [[UInt8]]()
    var kept = [Mutation]()
    kept.reserveCapacity(operations.count)
    func coveredByLaterClear(_ key: [UInt8]) -> Bool {
        clearedPrefixes.contains { key.starts(with: $0) }
    }
    for op in operations.reversed() {
        switch op {
        case let .set(key, _, _), let .delete(key):
            if coveredByLaterClear(key) || !decided.insert(CoalesceKey(key)).inserted { continue }
            kept.append(op)
        case let .clearPrefix(prefix):
            if clearedPrefixes.contains(where: { prefix.starts(with: $0) }) { continue }
            clearedPrefixes.append(prefix)
            kept.append(op)
        }
    }
    return kept.reversed()
}

/// A key hashed as one byte string (`[UInt8]` itself feeds the hasher byte by byte).
struct CoalesceKey: Hashable {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}

/// Whether `operations` holds no clear and no key written twice: one pass over an open
/// addressing table of operation indices and 64-bit key hashes (keys compared only when
/// their hashes are equal), with no key retained and no `Hasher` run. A probe longer than
/// `maxProbe` (keys chosen to collide) answers false, which sends the batch through the
/// `Set`-based merge: the same result, at its cost.
func writesDistinctKeys(_ operations: [Mutation]) -> Bool {
    let maxProbe = 32
    var size = 16
    while size < operations.count * 2 { size <<= 1 }
    let mask = size - 1
    var slots = [(hash: UInt64, index: Int)](repeating: (0, -1), count: size)
    // Through the buffer: each operation read in place, not copied (and released) in turn.
    return operations.withUnsafeBufferPointer { ops in
        for i in ops.indices {
            let h: UInt64
            switch ops[i] {
            case let .set(key, _, _), let .delete(key): h = KeyHash.of(key)
            case .clearPrefix: return false
            }
            var at = Int(truncatingIfNeeded: h) & mask, probes = 0
            while true {
                let slot = slots[at]
                if slot.index < 0 {
                    slots[at] = (h, i)
                    break
                }
                if slot.hash == h, KeyHash.key(of: ops[slot.index]) == KeyHash.key(of: ops[i]) { return false }
                probes += 1
                if probes > maxProbe { return false }
                at = (at + 1) & mask
            }
        }
        return true
    }
}

/// A seeded 64-bit hash of a key's bytes (8 at a time, multiply and rotate), for
/// `writesDistinctKeys`. The seed is drawn once per process.
enum KeyHash {
    static let seed = UInt64.random(in: .min ... .max)

    static func of(_ key: [UInt8]) -> UInt64 {
        key.withUnsafeBytes { raw -> UInt64 in
            var h = seed ^ UInt64(raw.count) &* 0x9E37_79B9_7F4A_7C15
            var i = 0
            while i + 8 <= raw.count {
                h = mix(h, raw.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                i += 8
            }
            if i < raw.count {
                var tail: UInt64 = 0
                for j in i..<raw.count { tail = tail << 8 | UInt64(raw[j]) }
                h = mix(h, tail)
            }
            h ^= h >> 33
            h &*= 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 33
            return h
        }
    }

    @inline(__always)
    static func mix(_ h: UInt64, _ w: UInt64) -> UInt64 {
        let m = (h ^ w) &* 0x9FB2_1C65_1E98_DF25
        return (m << 29 | m >> 35) &+ 0x94D0_49BB_1331_11EB
    }

    @inline(__always)
    static func key(of op: Mutation) -> [UInt8] {
        switch op {
        case let .set(key, _, _), let .delete(key), let .clearPrefix(key): return key
        }
    }
}
