import KTFormats

/// `match_similar` as Kyoto Cabinet computes it: the Levenshtein distance over bytes, or
/// over code points when `utf` is set, each decoded as Kyoto Cabinet's `strutftoucs` does.
enum SimilarKeys {
    /// Keys within `range` of `origin`, ordered by distance and then by key, at most `max`
    /// of them (`max` < 0: no limit; 0: none). A key whose length differs from the
    /// origin's by more than `range` is skipped without computing its distance.
    static func match(origin: [UInt8], keys: [[UInt8]], range: Int64, utf: Bool, max: Int64) -> [[UInt8]] {
        guard max != 0 else { return [] }
        let range = range < 0 ? 1 : range
        // The origin goes through a C string in utf mode: it ends at its first zero byte.
        let originUnits: [UInt32] = utf ? decode(Array(origin.prefix { $0 != 0 })) : origin.map(UInt32.init)
        var found: [(distance: Int, key: [UInt8])] = []
        for key in keys {
            let units: [UInt32] = utf ? decode(key) : key.map(UInt32.init)
            guard Int64(abs(units.count - originUnits.count)) <= range else { continue }
            let d = distance(originUnits, units)
            if Int64(d) <= range { found.append((d, key)) }
        }
        found.sort { $0.distance != $1.distance ? $0.distance < $1.distance : $0.key.lexicographicallyPrecedes($1.key) }
        let limit = max < 0 ? found.count : Int(Swift.min(Int64(found.count), max))
        return found.prefix(limit).map(\.key)
    }

    /// Kyoto Cabinet's lenient UTF-8 decoder: a lead byte whose continuation bytes are cut
    /// short by a zero byte (or the end) is dropped, overlong forms are dropped, lead bytes
    /// up to 0xFD take up to five continuation bytes, and continuation bytes are not checked.
    static func decode(_ bytes: [UInt8]) -> [UInt32] {
        var out: [UInt32] = []
        out.reserveCapacity(bytes.count)
        let n = bytes.count
        func at(_ j: Int) -> UInt32 { j < n ? UInt32(bytes[j]) : 0 }
        var i = 0
        while i < n {
            let c = UInt32(bytes[i])
            // (continuation bytes, mask of the lead byte, smallest value not overlong)
            let form: (Int, UInt32, UInt32)?
            switch c {
            case ..<0x80: form = nil; out.append(c)
            case ..<0xE0: form = (1, 0x1F, 0x80)
            case ..<0xF0: form = (2, 0x0F, 0x800)
            case ..<0xF8: form = (3, 0x07, 0x10000)
            case ..<0xFC: form = (4, 0x03, 0x200000)
            case ..<0xFE: form = (5, 0x01, 0x4000000)
            default: form = nil
            }
            if let (count, mask, least) = form, (1...count).allSatisfy({ at(i + $0) != 0 }) {
                var v = c & mask
                for j in 1...count { v = v << 6 | (at(i + j) & 0x3F) }
                if v >= least { out.append(v) }
                i += count
            }
            i += 1
        }
        return out
    }

    /// The Levenshtein distance.
    static func distance(_ a: [UInt32], _ b: [UInt32]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = Swift.min(substitution, previous[j] + 1, current[j - 1] + 1)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// The script processor of a ktserver built without Lua, which is what answers once a
/// script file is given (`-scr`): `echo` returns its arguments, any other name is not
/// implemented.
enum ScriptProcessor {
    /// The results of procedure `name`, or nil when there is no such procedure.
    static func call(_ name: [UInt8], _ arguments: [(key: [UInt8], value: [UInt8])]) -> [KTPair]? {
        guard name == Array("echo".utf8) else { return nil }
        var map: [[UInt8]: [UInt8]] = [:]
        for (k, v) in arguments { map[k] = v }
        return map.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map { KTPair(key: $0.key, value: $0.value) }
    }
}
