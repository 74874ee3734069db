import ArgumentParser
import Foundation
import Logging
import QSBytes
import QSNode
import QSReads
import QSDaemon
import QSEtcd
import QSNet
import QSModel
import QSStore
import QSWire
import ServiceLifecycle

@main
struct QSNodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsnode",
        abstract: "A Quicksilver node: an LMDB-backed key-value store with a hash-chained transaction log.",
        discussion: """
            A root node (--role root) accepts compare-and-swap batch writes on the QS write protocol \
            (docs/protocol.md) from bridges and operators. Every flag can also be set through the \
            environment variable named after it (QS_ and the flag in capitals, as shown).
            `qsnode check --data DIR` verifies a store instead (its log's hash chain, every \
            record's checksum, its checkpoints) and says what is wrong in words.
            """ + "\n\n" + DaemonExitCodes.help,
        version: QSVersion.string
    )

    static func main() async {
        // `qsnode check --data DIR` verifies a store; anything else runs a node.
        let args = CommandLine.arguments.dropFirst()
        guard args.first == "check" else { return await runCommand() }
        do {
            let command = try QSNodeCheck.parseAsRoot(Array(args.dropFirst()))
            try QSEnv.checkRefusals()
            try await execute(command)
        } catch {
            QSNodeCheck.exitReporting(error)
        }
    }

    enum Role: String, ExpressibleByArgument, CaseIterable {
        case root, replica
    }

    enum Engine: String, ExpressibleByArgument, CaseIterable {
        case lmdb, rocksdb

        var kind: EngineKind {
            switch self {
            case .lmdb: return .lmdb
            case .rocksdb: return .rocksdb
            }
        }
    }

    /// `--rocksdb-compression`: RocksDB's block compression; `true`/`false` (the flag was a
    /// boolean for LZ4) still mean lz4 and none.
    enum Compression: String, ExpressibleByArgument, CaseIterable {
        case lz4, zstd, none

        init?(argument: String) {
            switch argument.lowercased() {
            case "true": self = .lz4
            case "false": self = .none
            default: self.init(rawValue: argument.lowercased())
            }
        }

        var kind: RocksDBCompression {
            switch self {
            case .lz4: return .lz4
            case .zstd: return .zstd
            case .none: return .none
            }
        }
    }

    @Option(help: ArgumentHelp("The node's role: root accepts writes; replica follows --upstream. (env: QS_ROLE)", valueName: "role"))
    var role: Role = QSEnv.value("QS_ROLE", .root)

    @Option(help: ArgumentHelp("Directory of the node's store (an LMDB environment or a RocksDB database, see --engine), created if missing. (env: QS_DATA)", valueName: "dir"))
    var data: String = QSEnv.string("QS_DATA") ?? ""

    @Option(help: ArgumentHelp("Address of the QS write protocol, HOST:PORT; loopback unless told otherwise. (env: QS_LISTEN)", valueName: "host:port"))
    var listen: Address = QSEnv.value("QS_LISTEN", Address(.tcp(host: "127.0.0.1", port: 7400)))

    @Option(help: ArgumentHelp("Also serve the QS write protocol on this Unix socket path. (env: QS_UNIX)", valueName: "path"))
    var unix: String = QSEnv.string("QS_UNIX") ?? ""

    @Option(help: ArgumentHelp("File holding the token every write must carry; without it writes are not authenticated. (env: QS_WRITE_TOKEN_FILE)", valueName: "file"))
    var writeTokenFile: String = QSEnv.string("QS_WRITE_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("File holding the token replicas (and qsqsbridge, qsctl record) must present to subscribe or take a snapshot; without it --listen must be loopback. (env: QS_REPLICATION_TOKEN_FILE)", valueName: "file"))
    var replicationTokenFile: String = QSEnv.string("QS_REPLICATION_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("A replica: file holding the upstreams' replication token, presented on subscribe and snapshot (a root cluster member presents it to --cluster-peers for a snapshot). (env: QS_UPSTREAM_TOKEN_FILE)", valueName: "file"))
    var upstreamTokenFile: String = QSEnv.string("QS_UPSTREAM_TOKEN_FILE") ?? ""

    @Flag(help: ArgumentHelp("A root: start as a compatible mirror. An empty store (no log entry, no checkpoint) is made one before any listener opens, so nothing but a compatible qsqsbridge writes to it: how a root whose data is gone comes back to follow the new root (docs/runbook.md, section 8) without a stale writer taking it for a root meanwhile. A store that is a mirror already (a demoted root) stays one; a writable store holding entries is refused (demote it with qsctl demote instead). Not with --etcd: a cluster's role is in etcd. (env: QS_MIRROR)"))
    var mirror: Bool = QSEnv.flag("QS_MIRROR", flag: "--mirror")

    @Option(help: ArgumentHelp("Where bootstraps being received are written (room for a whole copy of the store; a transfer cut off is kept there and resumed) and a RocksDB node's snapshots for replicas are staged (an LMDB node streams its copy without a file); default: inside --data. (env: QS_STAGING_DIR)", valueName: "dir"))
    var stagingDir: String = QSEnv.string("QS_STAGING_DIR") ?? ""

    @Option(help: ArgumentHelp("An empty LMDB replica takes its first snapshot straight into --data before its store opens and its read and write listeners start: written once, as it arrives, in flat memory, resumed after a cut (docs/replication.md, \"Bootstrapping an empty replica\"). Meanwhile --admin already answers: /healthz 200, /metrics, /readyz 503 with the bootstrap's progress; the ready file is written once it is installed and every listener is up. false: open the empty store at once and install the snapshot into it in one transaction (memory grows with the snapshot). (env: QS_BOOTSTRAP_INTO_DATA_DIR)", valueName: "bool"))
    var bootstrapIntoDataDir: Bool = QSEnv.flag("QS_BOOTSTRAP_INTO_DATA_DIR", default: true)

    @Option(help: ArgumentHelp("A root deletes expired records in logged batches of at most this many (replicas apply them from the log); 0 turns the purge off. (env: QS_EXPIRY_PURGE_BATCH)", valueName: "n"))
    var expiryPurgeBatch: Int = QSEnv.value("QS_EXPIRY_PURGE_BATCH", 1000)

    @Option(help: ArgumentHelp("Pause between two purge batches (so at most --expiry-purge-batch records per interval); ten times this after a full pass over the keyspace. (env: QS_EXPIRY_PURGE_INTERVAL)", valueName: "duration"))
    var expiryPurgeInterval: Interval = QSEnv.value("QS_EXPIRY_PURGE_INTERVAL", Interval(.seconds(1)))

    @Option(name: .customLong("engine"), help: ArgumentHelp("Storage engine of a new store: lmdb (the default) or rocksdb. An existing store is opened with the engine that wrote it; naming the other one is refused (docs/storage.md, \"Engines\"). (env: QS_ENGINE)", valueName: "engine"))
    var engineOption: Engine?

    /// `--engine`, else `QS_ENGINE` (refused in `validate` when not an engine, as the flag is).
    /// nil: the engine that wrote the store, LMDB for a new one.
    var engine: Engine? { engineOption ?? QSEnv.optional("QS_ENGINE") }

    @Option(help: ArgumentHelp("RocksDB only: the block cache's size, the bound on cached data blocks, indexes and filters, e.g. 64MiB. (env: QS_ROCKSDB_BLOCK_CACHE)", valueName: "size"))
    var rocksdbBlockCache: ByteSize = QSEnv.value("QS_ROCKSDB_BLOCK_CACHE", ByteSize(64 << 20))

    @Option(help: ArgumentHelp("RocksDB only: each table's memtable size before it is flushed; all memtables together are bounded by four times this, e.g. 16MiB (64MiB in all). (env: QS_ROCKSDB_WRITE_BUFFER)", valueName: "size"))
    var rocksdbWriteBuffer: ByteSize = QSEnv.value("QS_ROCKSDB_WRITE_BUFFER", ByteSize(16 << 20))

    @Option(help: ArgumentHelp("RocksDB only: how data blocks are compressed: lz4 (the default), zstd (fewer bytes, more CPU) or none; true and false mean lz4 and none. (env: QS_ROCKSDB_COMPRESSION)", valueName: "kind"))
    var rocksdbCompression: Compression = QSEnv.value("QS_ROCKSDB_COMPRESSION", .lz4)

    @Option(help: ArgumentHelp("LMDB map size: the most the store can hold, e.g. 8GiB. (env: QS_MAP_SIZE)", valueName: "size"))
    var mapSize: ByteSize = QSEnv.value("QS_MAP_SIZE", ByteSize(8 << 30))

    @Option(help: ArgumentHelp("Largest protocol frame accepted, e.g. 64MiB; larger frames are refused. Past 1MiB only writes are taken, and on a node with --write-token-file only those carrying the token, checked before the rest of the frame is read (docs/protocol.md). (env: QS_MAX_FRAME_BYTES)", valueName: "size"))
    var maxFrameBytes: ByteSize = QSEnv.value("QS_MAX_FRAME_BYTES", ByteSize(64 << 20))

    @Option(help: ArgumentHelp("The most bytes of write-port frames still arriving that connections which have presented no token hold together, e.g. 64MiB; a frame that would pass it is refused busy and its connection closed. Writes admitted by their token (frames over 1MiB) and connections that presented a token are not counted. (env: QS_MAX_ARRIVING_FRAME_BYTES)", valueName: "size"))
    var maxArrivingFrameBytes: ByteSize = QSEnv.value("QS_MAX_ARRIVING_FRAME_BYTES", ByteSize(WriteServer.defaultMaxArrivingBytes))

    @Option(help: ArgumentHelp("A replica's upstream nodes, HOST:PORT[,HOST:PORT…], in order of preference. (env: QS_UPSTREAM)", valueName: "list"))
    var upstream: OrNone<AddressList> = QSEnv.value("QS_UPSTREAM", .none)

    @Option(help: ArgumentHelp("A file holding the replica's upstream list (as --upstream, or one per line); it wins over --upstream and is re-read on SIGHUP. (env: QS_UPSTREAM_FILE)", valueName: "file"))
    var upstreamFile: String = QSEnv.string("QS_UPSTREAM_FILE") ?? ""

    @Option(help: ArgumentHelp("A replica moves to its next upstream when the root's freshest word through the current one is older than this. (env: QS_STALE_AFTER)", valueName: "duration"))
    var staleAfter: Interval = QSEnv.value("QS_STALE_AFTER", Interval(.seconds(30)))

    @Option(help: ArgumentHelp("Log entries kept for replicas to catch up from; older ones are trimmed, and a replica further behind bootstraps from a snapshot. (env: QS_LOG_RETENTION)", valueName: "entries"))
    var logRetention: UInt64 = QSEnv.value("QS_LOG_RETENTION", 1_000_000)

    @Option(help: ArgumentHelp("A root cluster member: the etcd client URLs, http://HOST:PORT[,…]; batches commit through etcd and the member applies the cluster's log from it (docs/ha.md). Needs --cluster. (env: QS_ETCD)", valueName: "urls"))
    var etcd: String = QSEnv.string("QS_ETCD") ?? ""

    @Option(help: ArgumentHelp("With --etcd: the root cluster's name, the prefix /qs/NAME/ of its keys in etcd; every member of one cluster gives the same. (env: QS_CLUSTER)", valueName: "name"))
    var cluster: String = QSEnv.string("QS_CLUSTER") ?? ""

    @Option(help: ArgumentHelp("With --etcd: the etcd user this member authenticates as (etcd's authentication: a user whose role may read and write /qs/NAME/, docs/ha.md); needs --etcd-password-file. Without it the member presents no credentials, and etcd must take requests from anyone who reaches it. (env: QS_ETCD_USER)", valueName: "name"))
    var etcdUser: String = QSEnv.string("QS_ETCD_USER") ?? ""

    @Option(help: ArgumentHelp("With --etcd-user: a file holding that user's etcd password (trailing newlines and spaces dropped), read again at each authentication (a rotated password is taken without a restart). (env: QS_ETCD_PASSWORD_FILE)", valueName: "file"))
    var etcdPasswordFile: String = QSEnv.string("QS_ETCD_PASSWORD_FILE") ?? ""

    @Option(help: ArgumentHelp("With --etcd: how long an etcd request may take before the write is refused as not committed (outcome unknown). (env: QS_ETCD_TIMEOUT)", valueName: "duration"))
    var etcdTimeout: Interval = QSEnv.value("QS_ETCD_TIMEOUT", Interval(.seconds(5)))

    @Option(help: ArgumentHelp("With --etcd: the most bytes the etcd cluster takes in one request (its --max-request-bytes, 1.5 MiB by default): a batch whose log entry does not fit one etcd transaction is refused as too large (bridges send it in smaller batches; a single change that large is refused by name) instead of being retried for good. (env: QS_ETCD_MAX_REQUEST_BYTES)", valueName: "size"))
    var etcdMaxRequestBytes: ByteSize = QSEnv.value("QS_ETCD_MAX_REQUEST_BYTES", ByteSize(ClusterMember.etcdMaxRequestBytes))

    @Option(help: ArgumentHelp("With --etcd: log entries kept in etcd behind the head (and behind every member's applied index); a member further behind catches up from a snapshot. (env: QS_ETCD_LOG_WINDOW)", valueName: "entries"))
    var etcdLogWindow: UInt64 = QSEnv.value("QS_ETCD_LOG_WINDOW", 10_000)

    @Option(help: ArgumentHelp("With --etcd: how long a member's applied/ key outlives its last write (written every 2 s), whole seconds, at least 3s: a member stopped or cut off for longer no longer holds etcd's log window open, and catches up from a peer's snapshot if it returns behind it. (env: QS_ETCD_APPLIED_TTL)", valueName: "duration"))
    var etcdAppliedTTL: Interval = QSEnv.value("QS_ETCD_APPLIED_TTL", Interval(ClusterMember.appliedTTL))

    @Option(help: ArgumentHelp("With --etcd: the other members' write addresses, HOST:PORT[,…]; a member further behind than the log etcd keeps catches up from a snapshot of the first that gives one, then from etcd. (env: QS_CLUSTER_PEERS)", valueName: "list"))
    var clusterPeers: OrNone<AddressList> = QSEnv.value("QS_CLUSTER_PEERS", .none)

    @OptionGroup var reads: ReadOptions

    @OptionGroup var service: ServiceOptions

    func validate() throws {
        _ = engine
        guard !data.isEmpty else {
            throw ValidationError("--data is required: the directory of the node's store (or set QS_DATA)")
        }
        if role == .replica {
            guard upstream.value != nil || !upstreamFile.isEmpty else {
                throw ValidationError("--role replica needs --upstream HOST:PORT[,HOST:PORT…] or --upstream-file FILE (or QS_UPSTREAM / QS_UPSTREAM_FILE)")
            }
            for up in try upstreamEndpoints() {
                // Itself: it would subscribe to its own log, once a second, for ever.
                if up == listen.endpoint || (!unix.isEmpty && up == .unix(path: unix)) || HostAddress.namesByLoopback(up, own: listen.endpoint) {
                    throw ValidationError("upstream \(up) is this replica's own address (--listen / --unix): give the address of the node it follows")
                }
                if case let .tcp(_, port) = up, port == 0 {
                    throw ValidationError("upstream \(up) has port 0: give the port the upstream listens on (its --listen)")
                }
            }
        } else if upstream.value != nil || !upstreamFile.isEmpty {
            // A replica's flags on a root: most likely a replica whose --role was left out
            // (root is the default), which would otherwise start writable, following nothing.
            throw ValidationError("--upstream / --upstream-file (or QS_UPSTREAM / QS_UPSTREAM_FILE) name what a replica follows, but this node's role is root (--role, QS_ROLE; root is the default): add --role replica to make it a replica, or drop the upstream to run a root")
        }
        // A name that does not resolve is that, before it is "not loopback".
        if !listen.endpoint.isLocalOnly, let why = Listener.unresolved(listen.endpoint) {
            throw ValidationError("--listen \(listen): \(why)")
        }
        // Replication and admin actions are open to whoever reaches them without a token.
        if !listen.endpoint.isLocalOnly && replicationTokenFile.isEmpty {
            throw ValidationError("--listen \(listen) is not loopback and no --replication-token-file is set: anyone who reaches it could subscribe to the log or take a snapshot. Give --replication-token-file FILE (or QS_REPLICATION_TOKEN_FILE; replicas present it with --upstream-token-file), or listen on 127.0.0.1")
        }
        if !listen.endpoint.isLocalOnly && role == .root && writeTokenFile.isEmpty {
            throw ValidationError("--listen \(listen) is not loopback and no --write-token-file is set: anyone who reaches this root could write to it. Give --write-token-file FILE (or QS_WRITE_TOKEN_FILE; bridges, qsrest and qsctl present it with their --write-token-file), or listen on 127.0.0.1")
        }
        guard expiryPurgeBatch >= 0 else { throw ValidationError("--expiry-purge-batch must be 0 (off) or more, e.g. 1000") }
        guard expiryPurgeInterval.duration > .zero else { throw ValidationError("--expiry-purge-interval must be more than 0, e.g. 1s") }
        guard staleAfter.duration > .zero else { throw ValidationError("--stale-after must be more than 0, e.g. 30s") }
        if mirror {
            guard role == .root else { throw ValidationError("--mirror starts a root as a compatible mirror: use it with --role root (a replica follows --upstream, it is no root)") }
            guard etcd.isEmpty, cluster.isEmpty else {
                throw ValidationError("--mirror does not go with --etcd/--cluster: a root cluster's role is in etcd; make the cluster a mirror with qsctl demote through a member")
            }
        }
        if !etcd.isEmpty || !cluster.isEmpty {
            guard role == .root else { throw ValidationError("--etcd and --cluster make a root cluster member: use them with --role root") }
            guard !etcd.isEmpty, !cluster.isEmpty else {
                throw ValidationError("a root cluster member needs both --etcd http://HOST:PORT[,…] and --cluster NAME (or QS_ETCD and QS_CLUSTER)")
            }
            guard etcdAppliedTTL.duration >= ClusterMember.appliedInterval + .seconds(1), etcdAppliedTTL.duration.components.attoseconds == 0 else {
                throw ValidationError("--etcd-applied-ttl \(etcdAppliedTTL) (or QS_ETCD_APPLIED_TTL) must be whole seconds and at least 3s, e.g. 10s: the member rewrites its applied/ key every 2 s, and etcd's leases count in seconds")
            }
            guard etcdAppliedTTL.duration <= .seconds(86_400) else {
                throw ValidationError("--etcd-applied-ttl \(etcdAppliedTTL) (or QS_ETCD_APPLIED_TTL) is over a day: a member stopped for good would hold etcd's log window open that long (etcd keeping every entry since), e.g. 10s; a member back after longer catches up from a peer's snapshot")
            }
            guard cluster.utf8.allSatisfy({ $0 < 0x80 && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")) }) else {
                throw ValidationError("--cluster '\(cluster)': use letters, digits, '-', '_' and '.' only")
            }
            do { _ = try etcdURLs.map(EtcdClient.parse) } catch { throw ValidationError("--etcd: \(error)") }
            guard etcdTimeout.duration >= .milliseconds(100) else { throw ValidationError("--etcd-timeout \(etcdTimeout) (or QS_ETCD_TIMEOUT) is shorter than an etcd commit can take (a quorum fsync): give 100ms or more, e.g. 5s") }
            guard etcdMaxRequestBytes.bytes >= 256 << 10 else { throw ValidationError("--etcd-max-request-bytes \(etcdMaxRequestBytes) is less than 256KiB: give the etcd cluster's --max-request-bytes (1.5MiB by default)") }
            guard etcdLogWindow > 0 else { throw ValidationError("--etcd-log-window must be at least 1 entry, e.g. 10000") }
            _ = try etcdCredentials()
        } else if clusterPeers.value != nil {
            throw ValidationError("--cluster-peers names a root cluster member's peers: use it with --etcd and --cluster")
        } else if !etcdUser.isEmpty || !etcdPasswordFile.isEmpty {
            throw ValidationError("--etcd-user and --etcd-password-file (or QS_ETCD_USER, QS_ETCD_PASSWORD_FILE) are a root cluster member's etcd credentials: use them with --etcd and --cluster")
        }
        guard logRetention > 0 else { throw ValidationError("--log-retention must be at least 1 entry") }
        guard rocksdbBlockCache.bytes >= 1 << 20, rocksdbWriteBuffer.bytes >= 1 << 20 else {
            throw ValidationError("--rocksdb-block-cache and --rocksdb-write-buffer must be at least 1MiB each, e.g. 64MiB and 16MiB")
        }
        guard mapSize.bytes >= 1 << 20 else { throw ValidationError("--map-size must be at least 1MiB, e.g. 8GiB") }
        guard maxFrameBytes.bytes >= 1024 else {
            throw ValidationError("--max-frame-bytes must be at least 1KiB, e.g. 64MiB")
        }
        guard maxArrivingFrameBytes.bytes >= 2 << 20 else {
            throw ValidationError("--max-arriving-frame-bytes \(maxArrivingFrameBytes) (or QS_MAX_ARRIVING_FRAME_BYTES) must be at least 2MiB (a frame of 1MiB, the most any client may send, and more), e.g. 64MiB")
        }
    }

    /// The etcd user and password (`--etcd-user`, `--etcd-password-file`), nil when none is given.
    func etcdCredentials() throws -> EtcdCredentials? {
        guard !etcdUser.isEmpty || !etcdPasswordFile.isEmpty else { return nil }
        guard !etcdUser.isEmpty, !etcdPasswordFile.isEmpty else {
            throw ValidationError("--etcd-user and --etcd-password-file (or QS_ETCD_USER, QS_ETCD_PASSWORD_FILE) go together: give the etcd user and the file holding its password")
        }
        let bytes = try TokenFile.read(etcdPasswordFile, flag: "--etcd-password-file")
        guard let password = String(validating: bytes, as: UTF8.self) else {
            throw ValidationError("--etcd-password-file \(etcdPasswordFile) is not UTF-8 text: etcd passwords are text")
        }
        return EtcdCredentials(user: etcdUser, password: password, passwordFile: etcdPasswordFile)
    }

    func run() async throws {
        let (logger, registry) = service.bootstrap(label: "qsnode")
        let listenEndpoint = listen.endpoint
        let token = try TokenFile.optional(writeTokenFile, flag: "--write-token-file", minimumBytes: 16)
        let replicationToken = try TokenFile.optional(replicationTokenFile, flag: "--replication-token-file", minimumBytes: 16)
        let upstreamToken = try TokenFile.optional(upstreamTokenFile, flag: "--upstream-token-file") ?? []
        // One process per data directory: a second one would serve writes with the same node id.
        let lock: DirectoryLock
        do {
            lock = try DirectoryLock(directory: data)
        } catch {
            logger.critical("cannot take the data directory", metadata: ["data": "\(data)", "error": "\(error)"])
            throw StartError("--data \(data): \(error)")
        }
        // Every address is checked before the store is created or a snapshot downloaded (a
        // second node on this directory was told so by the lock, before its ports); a data
        // directory the lock made is taken away again.
        do {
            try service.checkListenersAvailable([("write", [listenEndpoint] + (unix.isEmpty ? [] : [.unix(path: unix)]))] + reads.listeners)
        } catch {
            lock.removeIfMadeEmpty()
            throw error
        }
        // The admin server starts first and keeps its address for the process's life: while
        // an empty replica bootstraps (minutes for a large store) it already answers
        // /healthz, /metrics and /readyz (503, saying how far the bootstrap is), and it stops
        // last. Each phase below installs its own readiness check and actions.
        let phase = AdminPhase(starting: "\(role.rawValue): starting, the store is not open yet")
        let admin = try service.adminEndpoint().map {
            AdminServer(endpoint: $0, registry: registry, logger: logger, limits: service.connectionLimits,
                        actions: phase.actions(role == .replica ? ["/rebootstrap", "/upstream"] : []),
                        actionGate: try service.adminGate(logger: logger),
                        beforeScrape: { phase.beforeScrape() }) { phase.readiness() }
        }
        let group = service.phasedGroup(first: admin.map { [$0] } ?? [], phase: phase, body: {
            try await self.serve(phase: phase, admin: admin, tokens: (token, replicationToken, upstreamToken), logger: logger)
        }, logger: logger)
        try await group.run()
        withExtendedLifetime(lock) {}
    }

    /// Everything after the admin server: an empty replica's bootstrap, the store, and the
    /// node's services, run as a group nested in the one the admin server runs in.
    func serve(phase: AdminPhase, admin: AdminServer?, tokens: (write: [UInt8]?, replication: [UInt8]?, upstream: [UInt8]),
               logger: Logger) async throws {
        let (token, replicationToken, upstreamToken) = tokens
        // An empty LMDB replica takes its first snapshot straight into the data directory,
        // before the store opens (written once, in flat memory; docs/replication.md).
        let staging = stagingDir.isEmpty ? data : stagingDir
        // The head an empty replica's bootstrap installed, its whole chain checked by it.
        var bootstrapped: Head?
        if role == .replica, bootstrapIntoDataDir, EngineKind.found(in: data) == nil, (engine?.kind ?? .lmdb) == .lmdb,
           Store.canBootstrapEmpty(directory: data, staging: staging) {
            let progress = EmptyBootstrapProgress()
            let unavailable = "is not available while the empty store bootstraps: wait until /readyz says the store is open, or stop the node and restart it with other --upstream addresses"
            phase.enter(readiness: { Readiness(ready: false, detail: "replica: " + progress.detail + "; reads and writes start once it is installed") },
                        unavailable: unavailable)
            let initial = try upstreamEndpoints()
            // The list is read again at each round (an edited --upstream-file is taken
            // without a restart), and SIGHUP, the documented reload, must not kill the node
            // meanwhile (its default action; the reload service starts with the store).
            signal(SIGHUP, SIG_IGN)
            let file = upstreamFile, logger = logger
            let upstreams: @Sendable () -> [Endpoint] = {
                guard !file.isEmpty else { return initial }
                do { return try UpstreamReloader.read(file) } catch {
                    logger.error("cannot read --upstream-file: keeping the list read before", metadata: ["file": "\(file)", "error": "\(error)"])
                    return initial
                }
            }
            bootstrapped = await cancelWhenGracefulShutdown {
                await EmptyReplicaBootstrap.run(data: data, staging: staging, upstreams: upstreams, token: upstreamToken,
                                                metrics: ReplicaMetrics(), own: [listen.endpoint] + (unix.isEmpty ? [] : [.unix(path: unix)]),
                                                progress: progress, logger: logger)
            }
            if Task.isShuttingDownGracefully {
                logger.info("stopped during the bootstrap of the empty store; what arrived is kept for the next start to resume",
                            metadata: ["data": "\(data)"])
                return
            }
        }
        phase.enter(readiness: { Readiness(ready: false, detail: "\(role.rawValue): opening the store") },
                    unavailable: "is not available yet: the store is opening")
        let store: Store
        do {
            store = try await Store.open(directory: data, mapSize: mapSize.bytes, stagingDirectory: stagingDir, engine: engine?.kind ?? EngineKind.found(in: data) ?? .lmdb,
                                         rocksDB: RocksDBOptions(blockCacheBytes: rocksdbBlockCache.bytes, writeBufferBytes: rocksdbWriteBuffer.bytes,
                                                                 compression: rocksdbCompression.kind),
                                         chainCheckedAt: bootstrapped)
        } catch {
            logger.critical("cannot open the store", metadata: ["data": "\(data)", "error": "\(error)"])
            throw ExitCode(1)
        }
        store.integrity.onProblem { problem in
            logger.critical("store damaged: not served", metadata: ["data": "\(data)", "problem": "\(problem)"])
        }
        if role == .root, let problem = store.integrity.problem {
            throw StartError("--data \(data): the store is damaged (\(problem)); a root does not serve a damaged store. Run qsnode check --data \(data) to see everything that is wrong, then restore the directory from a copy or make this node a replica of a sound root")
        }
        if mirror { try await startAsMirror(store, logger: logger) }
        let (head, nodeID) = try await store.read { txn in (try txn.head(), try txn.identity()) }
        logger.info("store open", metadata: ["data": "\(data)", "head-index": "\(head.index)",
                                             "head-hash": "\(hexString(head.hash))", "node-id": "\(nodeID)"])
        let watcher = LogWatcher()
        let etcdClient = etcd.isEmpty ? nil : try EtcdClient(urls: etcdURLs, timeout: etcdTimeout.duration, credentials: try etcdCredentials(), logger: logger)
        if let etcdClient, let credentials = etcdClient.credentials {
            // A wrong password or unknown user stops the start; etcd out of reach does not
            // (the member keeps trying, /readyz says why).
            do {
                try await etcdClient.authenticateNow()
            } catch let EtcdError.unauthenticated(why) {
                throw StartError("--etcd-user \(credentials.user): \(why)")
            } catch {
                logger.warning("etcd not reached to authenticate; the member keeps trying", metadata: ["error": "\(error)"])
            }
        }
        let member = etcdClient.map { etcdClient in ClusterMember(etcd: etcdClient, cluster: cluster,
                                                        store: store, watcher: watcher, nodeID: nodeID, window: etcdLogWindow, appliedTTL: etcdAppliedTTL.duration,
                                                        peers: clusterPeers.value?.endpoints ?? [], peerToken: upstreamToken,
                                                        maxRequestBytes: etcdMaxRequestBytes.bytes,
                                                        instance: "host \(ProcessInfo.processInfo.hostName) data \(data) | pid \(getpid()) listen \(listen)",
                                                        logger: logger) }
        let replies = reads.replyBudget()
        let core = NodeCore(store: store, token: token, replicationToken: replicationToken,
                            adminToken: try service.adminToken(), writable: role == .root, watcher: watcher,
                            cluster: member, replyMemory: replies, logger: logger)
        core.metrics.logHead.record(Double(head.index))
        try await core.loadWriteRole()
        var endpoints = [listen.endpoint]
        if !unix.isEmpty { endpoints.append(.unix(path: unix)) }
        let writeServer = WriteServer(core: core, endpoints: endpoints, maxFrameBytes: maxFrameBytes.bytes,
                                      maxArrivingBytes: maxArrivingFrameBytes.bytes, limits: service.connectionLimits, logger: logger)
        var services: [any Service] = [
            writeServer,
            LogTrimmer(store: store, retain: logRetention, logger: logger),
            StoreUsageGauges(store: store),
        ]
        if let member {
            services.append(member)
            logger.info("root cluster member", metadata: ["cluster": "\(cluster)", "etcd": "\(etcd)"])
        }
        // A cluster member's purge commits through etcd like its other writes.
        if role == .root && expiryPurgeBatch > 0 {
            services.append(ExpiryPurger(store: store, cluster: member, batch: expiryPurgeBatch, interval: expiryPurgeInterval.duration, logger: logger))
        }
        let replica: ReplicaService? = role == .replica
            ? ReplicaService(core: core, upstreams: try upstreamEndpoints(), staleAfter: staleAfter.duration,
                             upstreamToken: upstreamToken, own: { [writeListener = writeServer.listener] in writeListener.boundNow }, logger: logger)
            : nil
        let writeListener = writeServer.listener
        let upstreams = replica.map { UpstreamReloader(path: upstreamFile, replica: $0, own: { writeListener.boundNow }, logger: logger) }
        if let replica { services.append(replica) }
        // SIGHUP re-reads --upstream-file; without one there is nothing to reload.
        var reload: (@Sendable () -> Void)?
        if let upstreams, !upstreamFile.isEmpty { reload = { upstreams.reload() } }

        services += try reads.services(store: store, replies: replies, limits: service.connectionLimits, logger: logger)
        let readyLag = service.readyLagSeconds
        do {
            var actions = [String: AdminAction]()
            if let replica {
                // POST /rebootstrap with HOST:PORT replaces this store with that node's
                // snapshot, whatever its history: the operator's explicit action.
                actions["/rebootstrap"] = { body in
                    let text = body.trimmingCharacters(in: .whitespacesAndNewlines)
                    guard let endpoint = AddressList(argument: text)?.endpoints, endpoint.count == 1 else {
                        return (false, "rebootstrap refused: the body must be one upstream address, HOST:PORT or unix:PATH (got '\(text.prefix(200))')")
                    }
                    replica.requestRebootstrap(from: endpoint[0])
                    return (true, "rebootstrap from \(endpoint[0]) requested: this store will be replaced by its snapshot; watch qs_replica_rebootstraps_total and the log")
                }
            }
            if let upstreams {
                // POST /upstream with a list (as --upstream) replaces the upstream list, and
                // rewrites --upstream-file when there is one, so the move survives a restart.
                actions["/upstream"] = { body in
                    do {
                        let list = try upstreams.apply(body)
                        return (true, "upstreams: " + list.map(\.description).joined(separator: ",")
                            + (upstreamFile.isEmpty ? " (not persisted: no --upstream-file)" : " (written to \(upstreamFile))"))
                    } catch {
                        return (false, "upstream list not changed: \(error)")
                    }
                }
            }
            // The node is serving: its own checks from here on.
            phase.enter(readiness: {
                if let problem = store.integrity.problem {
                    return Readiness(ready: false, detail: "store damaged, not served: \(problem)")
                }
                if let failing = store.writeHealth.failing { return Self.readiness(failing) }
                if let member {
                    let s = member.status
                    return Readiness(ready: s.following, detail: "root cluster member: \(s.detail)")
                }
                guard let replica else { return Readiness(ready: true, detail: "root: store open") }
                return Self.readiness(replica.status, readyLag: readyLag)
            }, beforeScrape: {
                replica?.refreshGauges()
                member?.refreshGauges()
                core.recordWriteRole()
            }, actions: actions,
            unavailable: "is not offered by a \(role.rawValue)")
        }
        var failure: (any Error)?
        do {
            try await service.serviceGroup(services.map { .init(service: $0) }, logger: logger, reload: reload,
                                           nested: true, alsoListening: admin.map { [$0.listener] } ?? []).run()
        } catch {
            failure = error
        }
        phase.enter(readiness: { Readiness(ready: false, detail: "\(role.rawValue): stopped, the store is closed") },
                    unavailable: "is not available: the node is stopping")
        // Closed before the process exits, whether the services ended well or not: the
        // writes already queued commit, and RocksDB's background work and DB are closed (its
        // static destructors at exit would otherwise meet its live threads: SIGABRT instead
        // of the exit status the node means).
        let finalHead: Head?
        do {
            finalHead = try await store.shutDown()
        } catch {
            logger.warning("node stopped without closing its store", metadata: ["data": "\(data)", "error": "\(error)"])
            if let failure { throw failure }
            return
        }
        if let failure { throw failure }
        logger.info("node stopped cleanly", metadata: ["head-index": "\(finalHead.map { "\($0.index)" } ?? "?")"])
    }

    /// `--mirror`: an empty store becomes a compatible mirror before any listener opens; a
    /// mirror stays one; a writable store holding entries or checkpoints is refused, since
    /// demoting it at a start could strand writes a writer still needs (qsctl demote says
    /// where it stands when it changes).
    func startAsMirror(_ store: Store, logger: Logger) async throws {
        let outcome = try await store.write { txn -> (WriteRole, Head, Bool) in
            let role = try txn.writeRole(), head = try txn.head()
            let empty = try head.index == 0 && txn.checkpoints().isEmpty
            if role != .mirror && empty { try txn.setWriteRole(.mirror) }
            return (role, head, empty)
        }
        switch outcome {
        case (.mirror, let head, _):
            logger.info("a compatible mirror already (--mirror)", metadata: ["head-index": "\(head.index)"])
        case (_, _, true):
            logger.notice("started as a compatible mirror (--mirror): an empty store; it takes compatible appends only, until qsctl promote")
        case let (role, head, _):
            throw StartError("--mirror: --data \(data) is a writable root (\(role.rawValue)) at index \(head.index) with checkpoints or entries: it is not made a mirror at a start, since writers may still need what it took. Start it without --mirror, then run 'qsctl --node \(listen) demote' once no writer needs it (or, if its data is to be dropped, start on an empty --data)")
        }
    }

    /// `/readyz` while writes fail for want of room or of a working disk: the last write
    /// failed, and a write that commits makes the node ready again by itself.
    static func readiness(_ failing: WriteHealth.Failing) -> Readiness {
        let since = Double(wallClockNanoseconds() &- failing.sinceNs) / 1e9
        return Readiness(ready: false, detail: String(format: "writes failing for %.0f s: ", max(since, 0))
                             + "\(failing.failure.rawValue): \(failing.failure.remedy) (\(failing.message))")
    }

    /// A replica's `/readyz`, from the node's one upstream status (as `qsctl status` and
    /// `/metrics` read it).
    static func readiness(_ s: UpstreamStatus, readyLag: Double) -> Readiness {
        let upstream = s.upstream ?? "?"
        guard s.subscribed else {
            return Readiness(ready: false, detail: "replica: not subscribed to an upstream (trying \(upstream)\(s.leftBecause.map { "; left it last: \($0)" } ?? ""))")
        }
        guard let age = s.rootAgeSeconds else { return Readiness(ready: false, detail: "replica: subscribed to \(upstream), no word from the root yet") }
        guard age <= readyLag else {
            return Readiness(ready: false, detail: String(format: "replica: too stale to serve: the root's last word is %.1f s old, more than --ready-lag %.1f s (subscribed to %@)",
                                                          age, readyLag, upstream))
        }
        return Readiness(ready: true, detail: String(format: "replica: subscribed to %@, root word %.1f s old (--ready-lag %.1f s)",
                                                     upstream, age, readyLag))
    }

    var etcdURLs: [String] { etcd.split(separator: ",").map(String.init) }

    func upstreamEndpoints() throws -> [Endpoint] {
        if !upstreamFile.isEmpty {
            do { return try UpstreamReloader.read(upstreamFile) } catch { throw ValidationError("--upstream-file: \(error)") }
        }
        return upstream.value?.endpoints ?? []
    }
}
