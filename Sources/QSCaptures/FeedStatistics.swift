/// Sizes in a bounded log-bucket histogram: exact below 64, then 16 buckets per power of
/// two, so a percentile is within 1/16 of the true value whatever the number of samples.
public struct SizeHistogram: Sendable {
    private var buckets = [Int](repeating: 0, count: 64 + 16 * 58)
    public private(set) var count = 0
    public private(set) var max = 0
    public private(set) var total = 0

    public init() {}

    static func bucket(_ size: Int) -> Int {
        if size < 64 { return size }
        let power = Int.bitWidth - size.leadingZeroBitCount - 1  // ≥ 6
        let sub = (size >> (power - 4)) & 15
        return 64 + (power - 6) * 16 + sub
    }

    /// The smallest size of a bucket.
    static func lowerBound(_ bucket: Int) -> Int {
        if bucket < 64 { return bucket }
        let power = (bucket - 64) / 16 + 6
        return (1 << power) | ((bucket - 64) % 16) << (power - 4)
    }

    public mutating func add(_ size: Int) {
        buckets[Self.bucket(Swift.max(0, size))] += 1
        count += 1
        total += size
        max = Swift.max(max, size)
    }

    /// The size below which `p` (0…1) of the samples fall (a bucket's lower bound).
    public func percentile(_ p: Double) -> Int {
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, Int((p * Double(count)).rounded(.up)))
        var seen = 0
        for (i, n) in buckets.enumerated() where n > 0 {
            seen += n
            if seen >= rank { return Swift.min(Self.lowerBound(i), max) }
        }
        return max
    }
}

/// The most frequent keys with Misra–Gries counters: at most `capacity` keys are held;
/// a key's reported count is at most `total / (capacity + 1)` below its true count, and
/// every key more frequent than that is held.
public struct HeavyHitters<Key: Hashable & Comparable & Sendable>: Sendable {
    public let capacity: Int
    private var counters: [Key: Int] = [:]
    public private(set) var total = 0

    public init(capacity: Int = 1024) {
        self.capacity = capacity
    }

    public mutating func add(_ key: Key) {
        total += 1
        if let c = counters[key] {
            counters[key] = c + 1
        } else if counters.count < capacity {
            counters[key] = 1
        } else {
            // Decrement every counter (this key's included): each round removes `capacity`
            // counts, so the rounds cost O(total) in all.
            for (k, c) in counters { counters[k] = c > 1 ? c - 1 : nil }
        }
    }

    /// The `n` largest counters, largest first (ties by key bytes).
    public func top(_ n: Int) -> [(key: Key, count: Int)] {
        counters.map { ($0.key, $0.value) }
            .sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
            .prefix(n).map { (key: $0.0, count: $0.1) }
    }

    /// How far below the true count a reported count may be.
    public var maxUndercount: Int { total / (capacity + 1) }
}

/// Updates over time in at most `maxBuckets` buckets: the bucket width starts at one
/// second and doubles (merging neighbours) whenever the recording spans more buckets.
public struct Timeline: Sendable {
    public let maxBuckets: Int
    public private(set) var startSecond: UInt64?
    public private(set) var widthSeconds: UInt64 = 1
    public private(set) var counts: [Int] = []

    public init(maxBuckets: Int = 120) {
        self.maxBuckets = maxBuckets
    }

    public mutating func add(second: UInt64) {
        guard let start = startSecond else {
            startSecond = second
            counts = [1]
            return
        }
        // Positions only grow in a recording; a stray earlier time lands in the first bucket.
        var i = Int((second > start ? second - start : 0) / widthSeconds)
        while i >= maxBuckets {
            var merged = [Int]()
            for j in stride(from: 0, to: counts.count, by: 2) { merged.append(counts[j] + (j + 1 < counts.count ? counts[j + 1] : 0)) }
            counts = merged
            widthSeconds *= 2
            i = Int((second > start ? second - start : 0) / widthSeconds)
        }
        if i >= counts.count { counts.append(contentsOf: [Int](repeating: 0, count: i - counts.count + 1)) }
        counts[i] += 1
    }
}

/// A key within its database (KT index, or QS origin source id).
public struct DatabaseKey: Hashable, Comparable, Sendable {
    public var db: String
    public var key: [UInt8]

    public static func < (a: DatabaseKey, b: DatabaseKey) -> Bool {
        a.db != b.db ? a.db < b.db : a.key.lexicographicallyPrecedes(b.key)
    }
}

/// What `qsctl feed stats` reports, gathered in one pass with bounded memory.
public struct FeedStatistics: Sendable {
    /// Counts by database (KT index, or QS origin source id), then by operation.
    public private(set) var byDatabase: [String: [String: Int]] = [:]
    public private(set) var updates = 0
    public private(set) var heartbeats = 0
    public private(set) var undecodable = 0
    public private(set) var firstPosition: UInt64?
    public private(set) var lastPosition: UInt64?
    public var keySizes = SizeHistogram()
    public var valueSizes = SizeHistogram()
    public var busiestKeys: HeavyHitters<DatabaseKey>
    public var timeline: Timeline

    public init(keyCapacity: Int = 1024, timelineBuckets: Int = 120) {
        busiestKeys = HeavyHitters(capacity: keyCapacity)
        timeline = Timeline(maxBuckets: timelineBuckets)
    }

    public mutating func add(_ item: RecordedItem) {
        switch item {
        case .heartbeat: heartbeats += 1
        case .undecodable: undecodable += 1
        case let .update(u):
            updates += 1
            if firstPosition == nil { firstPosition = u.position }
            lastPosition = u.position
            let db = u.db.map { String($0) } ?? u.originSource ?? "?"
            byDatabase[db, default: [:]][u.op, default: 0] += 1
            keySizes.add(u.key.count)
            if let v = u.value { valueSizes.add(v.count) }
            if u.op != "clear" { busiestKeys.add(DatabaseKey(db: db, key: u.key)) }
            timeline.add(second: u.timeNs / 1_000_000_000)
        }
    }
}
