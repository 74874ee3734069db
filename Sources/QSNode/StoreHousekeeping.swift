import Logging
import Metrics
import QSModel
import QSStore
import ServiceLifecycle

/// A root's purge of expired records: walks the keyspace in bounded steps (at most
/// `batch` deletes and ten times as many records looked at per transaction, one step per
/// `interval`, so at most `batch` / `interval` records a second) and deletes what has
/// expired as ordinary logged batches under the source id `qs:expiry`. Replicas apply the
/// deletes from the log like any other, so every node reclaims the space and stays
/// identical. After a full pass it waits `interval` × 10 before the next.
/// A compatible mirror does not purge: its source's purges reach it through the log.
/// A root cluster's member commits each step through etcd (`ClusterMember.purgeExpired`):
/// the members apply the same deletes from the committed log.
public struct ExpiryPurger: Service {
    public static let sourceID = "qs:expiry"
    let store: Store
    let cluster: ClusterMember?
    let batch: Int
    let interval: Duration
    let logger: Logger
    let purged: Counter

    public init(store: Store, cluster: ClusterMember? = nil, batch: Int, interval: Duration, logger: Logger,
                factory: any MetricsFactory = MetricsSystem.factory) {
        self.store = store
        self.cluster = cluster
        self.batch = batch
        self.interval = interval
        self.logger = logger
        purged = Counter(label: "qs_expired_purged_total", factory: factory)
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await purgeUntilShutdown() }
        } catch is CancellationError {
            return
        }
    }

    private func purgeUntilShutdown() async throws {
        var cursor: [UInt8]?
        var passPurged = 0
        while !Task.isCancelled {
            let step: StoreTransaction.PurgeStep
            do {
                step = if let cluster {
                    try await cluster.purgeExpired(after: cursor, scanLimit: batch * 10, maxDeletes: batch,
                                                   now: wallClockSeconds(), sourceID: Self.sourceID)
                } else {
                    try await store.purgeExpired(after: cursor, scanLimit: batch * 10, maxDeletes: batch,
                                                 now: wallClockSeconds(), sourceID: Self.sourceID)
                }
            } catch StoreError.compatibleOnly {
                // A mirror: its source purges, and the deletes arrive through the log.
                try await Task.sleep(for: interval * 10)
                continue
            } catch {
                logger.error("expiry purge failed; retrying at the next step", metadata: ["error": "\(error)"])
                try await Task.sleep(for: interval * 10)
                continue
            }
            if step.purged > 0 {
                purged.increment(by: step.purged)
                passPurged += step.purged
                logger.debug("expired records purged", metadata: ["records": "\(step.purged)", "log-index": "\(step.logIndex ?? 0)"])
            }
            cursor = step.next
            if cursor == nil {
                if passPurged > 0 { logger.info("expiry purge pass done", metadata: ["records": "\(passPurged)"]) }
                passPurged = 0
                try await Task.sleep(for: interval * 10)
            } else {
                try await Task.sleep(for: interval)
            }
        }
    }
}

/// The store's map usage as gauges (`qs_store_map_used_bytes`, `qs_store_map_size_bytes`),
/// refreshed every `interval` on every node: alert before the map is full (a full map
/// refuses every write with storage-full until `--map-size` is raised). On RocksDB, its
/// cache, memtables and files instead (`qs_store_rocksdb_*`); on both, the node's own
/// memory apart from the engine's (`qs_node_own_memory_bytes`).
public struct StoreUsageGauges: Service {
    let store: Store
    let interval: Duration
    let used: Gauge
    let size: Gauge
    let blockCache: Gauge
    let blockCacheCapacity: Gauge
    let memtables: Gauge
    let memtableBudget: Gauge
    let tableReaders: Gauge
    let sst: Gauge
    let wal: Gauge
    let ownMemory: Gauge

    public init(store: Store, interval: Duration = .seconds(5), factory: any MetricsFactory = MetricsSystem.factory) {
        self.store = store
        self.interval = interval
        used = Gauge(label: "qs_store_map_used_bytes", factory: factory)
        size = Gauge(label: "qs_store_map_size_bytes", factory: factory)
        blockCache = Gauge(label: "qs_store_rocksdb_block_cache_bytes", factory: factory)
        blockCacheCapacity = Gauge(label: "qs_store_rocksdb_block_cache_capacity_bytes", factory: factory)
        memtables = Gauge(label: "qs_store_rocksdb_memtable_bytes", factory: factory)
        memtableBudget = Gauge(label: "qs_store_rocksdb_memtable_budget_bytes", factory: factory)
        tableReaders = Gauge(label: "qs_store_rocksdb_table_readers_bytes", factory: factory)
        sst = Gauge(label: "qs_store_rocksdb_sst_bytes", factory: factory)
        wal = Gauge(label: "qs_store_rocksdb_wal_bytes", factory: factory)
        ownMemory = Gauge(label: "qs_node_own_memory_bytes", factory: factory)
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                while !Task.isCancelled {
                    let u = try await store.usage()
                    // A RocksDB store has no map (its size is 0): both stay 0, so the
                    // "map filling" ratio is 0/0 and never fires there.
                    if u.mapSizeBytes > 0 {
                        used.record(u.usedBytes)
                        size.record(u.mapSizeBytes)
                    }
                    let m = try await store.engineMemory()
                    if let m {
                        blockCache.record(m.blockCacheBytes)
                        blockCacheCapacity.record(m.blockCacheCapacityBytes)
                        memtables.record(m.memtableBytes)
                        memtableBudget.record(m.memtableBudgetBytes)
                        tableReaders.record(m.tableReadersBytes)
                        sst.record(m.sstBytes)
                        wal.record(m.walBytes)
                    }
                    if let anon = ProcessMemory.statusBytes("RssAnon") { ownMemory.record(max(0, anon - (m?.inMemoryBytes ?? 0))) }
                    try await Task.sleep(for: interval)
                }
            }
        } catch is CancellationError {
            return
        }
    }
}

