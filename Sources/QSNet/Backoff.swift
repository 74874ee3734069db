/// Capped exponential backoff with jitter: 100 ms, 200 ms, … up to `cap`.
public struct Backoff: Sendable {
    public let initial: Duration
    public let cap: Duration
    private var current: Duration

    public init(initial: Duration = .milliseconds(100), cap: Duration = .seconds(5)) {
        self.initial = initial
        self.cap = cap
        current = initial
    }

    /// The next delay (between half and all of the current step), then doubles the step.
    public mutating func next() -> Duration {
        let d = current
        current = min(current * 2, cap)
        let jitter = Double.random(in: 0.5...1.0)
        return d * jitter
    }

    public mutating func reset() { current = initial }
}
