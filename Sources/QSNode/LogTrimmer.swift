import Logging
import QSModel
import QSStore
import ServiceLifecycle

/// Keeps the log to its retention window (`--log-retention` entries), trimming in short
/// transactions every few seconds on the store's background thread (never in the writer's
/// queue). Replicas further behind than the window bootstrap.
public struct LogTrimmer: Service {
    let store: Store
    let retain: UInt64
    let logger: Logger

    public init(store: Store, retain: UInt64, logger: Logger) {
        self.store = store
        self.retain = retain
        self.logger = logger
    }

    public func run() async throws {
        do {
            try await trimUntilShutdown()
        } catch is CancellationError {
            return
        }
    }

    private func trimUntilShutdown() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let store = self.store, retain = self.retain
                var removed = 0
                repeat {
                    removed = try await store.trimLog(retain: retain)
                    if removed > 0 { logger.debug("log trimmed", metadata: ["entries": "\(removed)"]) }
                } while removed > 0 && !Task.isCancelled
                try await Task.sleep(for: .seconds(5))
            }
        }
    }
}
