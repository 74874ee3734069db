import NIOConcurrencyHelpers

extension Task where Failure == any Error {
    /// The task's value, or `CancellationError` as soon as the task waiting for it is
    /// cancelled; the task itself runs on for whoever else waits for it (a connection attempt
    /// shared by several callers: one shutting down does not wait for its 10 s hello).
    public func valueUnlessCancelled() async throws -> Success {
        let waiter = NIOLockedValueBox<(continuation: CheckedContinuation<Success, any Error>?, over: Bool)>((nil, false))
        /// The continuation, once: to the first of the task's end and the cancellation.
        @Sendable func take() -> CheckedContinuation<Success, any Error>? {
            waiter.withLockedValue { w in
                w.over = true
                defer { w.continuation = nil }
                return w.continuation
            }
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let cancelled = waiter.withLockedValue { w -> Bool in
                    if w.over { return true }
                    w.continuation = continuation
                    return false
                }
                if cancelled {
                    continuation.resume(throwing: Swift.CancellationError())
                    return
                }
                Task<Void, Never> {
                    let result = await self.result
                    take()?.resume(with: result)
                }
            }
        } onCancel: {
            take()?.resume(throwing: Swift.CancellationError())
        }
    }
}
