import Foundation
import KTFormats
import Logging
import Metrics
import NIOConcurrencyHelpers

/// The state shared by every connection of one fake server: the store behind a lock, the
/// fault plan, the ulog file writer, logging and metrics.
public final class FakeKTCore: Sendable {
    let configuration: FakeKTConfiguration
    let store: NIOLockedValueBox<Store>
    let faults: NIOLockedValueBox<FaultPlan>
    let ulogWriter: ULogWriter?
    let logger: Logger
    let malformedCounter: Counter
    let requestCounter: Counter
    let startTime: Date
    private let connectionIDs = NIOLockedValueBox<UInt64>(0)

    init(configuration: FakeKTConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        self.startTime = Date()
        malformedCounter = Counter(label: "fakekt_malformed_requests_total")
        requestCounter = Counter(label: "fakekt_requests_total")
        // With no database named, ktserver opens one stash database (`:`).
        var store = try Store(databaseArguments: configuration.databases.isEmpty ? [":"] : configuration.databases,
                              sid: configuration.sid)
        if let dir = configuration.ulogDirectory {
            let existing = try ULogDirectory.load(dir)
            store.restore(existing.records, newestTimestamp: existing.newestTimestamp)
            do {
                ulogWriter = try ULogWriter(directory: dir, limit: configuration.ulogLimit,
                                            resume: existing, logger: logger)
            } catch {
                // A read-only directory (such as recorded fixtures) is still served;
                // new updates then live in memory only.
                logger.warning("update log directory is not writable; new updates are kept in memory",
                               metadata: ["directory": "\(dir)", "error": "\(error)"])
                ulogWriter = nil
            }
        } else {
            ulogWriter = nil
        }
        self.store = NIOLockedValueBox(store)
        self.faults = NIOLockedValueBox(configuration.faults)
    }

    /// Milliseconds since the epoch, from the configured time source.
    func nowMillis() -> UInt64 {
        let seconds = configuration.timeSource?() ?? Date().timeIntervalSince1970
        return UInt64(max(0, seconds * 1000))
    }

    /// Runs `body` on the store under the lock at the current time, then hands the records
    /// it logged to the ulog writer (in order, still under the lock).
    func withStore<T>(_ body: (inout Store) throws -> T) rethrows -> T {
        try store.withLockedValue { store in
            store.nowMillis = nowMillis()
            defer {
                let pending = store.takePending()
                if !pending.isEmpty { ulogWriter?.append(pending) }
            }
            return try body(&store)
        }
    }

    func nextConnectionID() -> UInt64 {
        connectionIDs.withLockedValue { id in
            id += 1
            return id
        }
    }

    /// Counts and logs a malformed request.
    func reportMalformed(_ what: String, peer: String) {
        malformedCounter.increment()
        logger.warning("malformed request", metadata: ["peer": "\(peer)", "error": "\(what)"])
    }

    /// Waits until every logged update is in the ulog files.
    public func flushUpdateLog() {
        ulogWriter?.sync()
    }
}
