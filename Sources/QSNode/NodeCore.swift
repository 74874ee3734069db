import Logging
import QSService
import QSBytes
import QSStore
import QSWire

/// What the node does with each request, independent of sockets: the store, the write
/// token and the metrics. Runs on the node's thread pool (LMDB calls block).
public final class NodeCore: Sendable {
    public let store: Store
    public let metrics: NodeMetrics
    let token: [UInt8]?
    let logger: Logger
    /// Caps on what one read request may ask for.
    public static let maxLogEntriesPerRead: UInt32 = 10_000
    public static let maxRecordsPerPage: UInt32 = 10_000

    public init(store: Store, token: [UInt8]?, metrics: NodeMetrics = NodeMetrics(), logger: Logger) {
        self.store = store
        self.token = token
        self.metrics = metrics
        self.logger = logger
        if let head = try? store.head() { metrics.logHead.record(Double(head.index)) }
    }

    /// Checks a write's token in constant time; nil when it passes.
    public func authorize(_ request: Request) -> Response? {
        guard let token, case let .batch(b) = request else { return nil }
        if constantTimeEqual(token, b.token) { return nil }
        metrics.authFailures.increment()
        let why = b.token.isEmpty ? "missing write token" : "wrong write token"
        return .error(.unauthorized, "\(why): this node requires the token from its --write-token-file on every write")
    }

    /// Executes an authorized, decoded request. Never throws: failures become error
    /// responses (and are counted and logged).
    public func handle(_ request: Request, peer: String) -> Response {
        metrics.request(request.name).increment()
        do {
            switch request {
            case let .batch(b):
                let start = ContinuousClock.now
                let outcome = try store.applyBatch(sourceID: b.sourceID, expected: b.expected, new: b.new, operations: b.operations)
                metrics.batchApply.recordSeconds((ContinuousClock.now - start).seconds)
                switch outcome {
                case let .applied(index, kept, dropped):
                    metrics.batchesApplied.increment()
                    metrics.opsApplied.increment(by: kept)
                    metrics.identicalDropped.increment(by: dropped)
                    if let index { metrics.logHead.record(Double(index)) }
                    return .applied(logIndex: index, kept: UInt32(kept), dropped: UInt32(dropped))
                case let .conflict(current):
                    metrics.conflicts.increment()
                    logger.debug("batch conflict", metadata: ["source-id": "\(b.sourceID)", "expected": "\(b.expected)",
                                                              "current": "\(current)", "peer": "\(peer)"])
                    return .conflict(current: current)
                }
            case let .getCheckpoint(sid):
                return .checkpoint(try store.checkpoint(sourceID: sid))
            case .head:
                return .head(try store.head())
            case let .readLog(from, count):
                return .entries(try store.entries(from: from, count: Int(min(count, Self.maxLogEntriesPerRead))))
            case let .get(key):
                guard let record = try store.get(key), !record.isExpired(at: wallClockSeconds()) else { return .value(nil) }
                return .value(record)
            case let .scan(prefix, cursor, limit, asOf):
                let page = try store.scan(prefix: prefix, after: cursor.isEmpty ? nil : cursor,
                                          limit: Int(min(max(limit, 1), Self.maxRecordsPerPage)),
                                          now: asOf == 0 ? wallClockSeconds() : asOf)
                return .page(records: page.records.map { .init(key: $0.key, record: $0.record) }, next: page.next)
            }
        } catch let error as StoreError {
            metrics.invalidRequests.increment()
            logger.warning("request refused", metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            return .error(.invalidRequest, "\(error)")
        } catch let error as LMDBError where error.isMapFull {
            metrics.storageErrors.increment()
            logger.error("store is full: raise --map-size", metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            return .error(.storageFull, "the node's store is full (LMDB map size reached); nothing was written: the operator must raise --map-size")
        } catch {
            metrics.storageErrors.increment()
            logger.error("storage error", metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            return .error(.storageError, "storage error, nothing was written: \(error)")
        }
    }
}
