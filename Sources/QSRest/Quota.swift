/// A producer's quota: two token buckets (writes and bytes per second) filled at the ACL's
/// rates. A request within the rate passes; past it, the request waits for the tokens it
/// needs (the producer is slowed down) as long as that wait stays under `maxDelay`; a
/// request that would wait longer is refused with the time after which to retry (429, or
/// 503 when the whole service is over its own limit).
public struct Quota: Sendable {
    public struct Bucket: Sendable {
        let rate: Double
        let burst: Double
        var tokens: Double
        var at: ContinuousClock.Instant

        init(rate: Int, burstSeconds: Double, now: ContinuousClock.Instant) {
            self.rate = Double(rate)
            burst = max(Double(rate) * burstSeconds, 1)
            tokens = burst
            at = now
        }

        mutating func refill(_ now: ContinuousClock.Instant) {
            let dt = Double((now - at).components.seconds) + Double((now - at).components.attoseconds) / 1e18
            tokens = min(burst, tokens + max(dt, 0) * rate)
            at = now
        }

        /// Seconds until `n` tokens are there (0 if they are).
        func wait(for n: Double) -> Double { tokens >= n ? 0 : (n - tokens) / rate }
    }

    var writes: Bucket?
    var bytes: Bucket?
    let maxDelay: Double

    public init(writesPerSecond: Int?, bytesPerSecond: Int?, maxDelay: Duration, burst: Duration = .seconds(1),
                now: ContinuousClock.Instant = .now) {
        let b = Double(burst.components.seconds) + Double(burst.components.attoseconds) / 1e18
        writes = writesPerSecond.map { Bucket(rate: $0, burstSeconds: b, now: now) }
        bytes = bytesPerSecond.map { Bucket(rate: $0, burstSeconds: b, now: now) }
        self.maxDelay = Double(maxDelay.components.seconds) + Double(maxDelay.components.attoseconds) / 1e18
    }

    public enum Decision: Sendable, Equatable {
        case pass
        /// Wait this long, then go (the tokens are taken now).
        case delay(Duration)
        /// Refuse; retry after this many seconds (at least 1).
        case refuse(retryAfter: Int)
        /// Refuse for good: even a full bucket and the longest delay would not cover it
        /// (what it needs, what one request can have); retrying the same request cannot pass.
        case neverFits(String)
    }

    /// Why a request of `n` writes and `size` bytes can never pass, whatever the buckets
    /// hold (a full bucket and the longest delay would not cover it); nil when it can.
    public func neverFits(writes n: Int, bytes size: Int) -> String? {
        for (bucket, need, unit) in [(writes, Double(n), "writes"), (bytes, Double(size), "bytes")] {
            guard let bucket, need > bucket.burst + bucket.rate * maxDelay else { continue }
            let most = Int(bucket.burst + bucket.rate * maxDelay)
            return "this request needs \(Int(need)) \(unit) and one request can have at most \(most) (the quota's one-second burst plus --quota-max-delay at its rate): split it"
        }
        return nil
    }

    /// Takes `writes` writes and `bytes` bytes from the buckets, or says to refuse (taking
    /// nothing). Tokens may go negative: a delayed request has spent them in advance.
    public mutating func take(writes n: Int, bytes size: Int, now: ContinuousClock.Instant = .now) -> Decision {
        writes?.refill(now)
        bytes?.refill(now)
        if let why = neverFits(writes: n, bytes: size) { return .neverFits(why) }
        let wait = max(writes?.wait(for: Double(n)) ?? 0, bytes?.wait(for: Double(size)) ?? 0)
        if wait > maxDelay {
            return .refuse(retryAfter: max(1, Int((wait - maxDelay).rounded(.up))))
        }
        writes?.tokens -= Double(n)
        bytes?.tokens -= Double(size)
        return wait == 0 ? .pass : .delay(.nanoseconds(Int64(wait * 1e9)))
    }
}
