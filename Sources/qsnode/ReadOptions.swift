import ArgumentParser
import Logging
import QSReads
import QSDaemon
import QSNet
import QSModel
import QSStore
import ServiceLifecycle

/// The read interfaces of a node: memcached and KT HTTP, on TCP and Unix sockets. Each is
/// served only when its address is given.
struct ReadOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Serve the memcached text protocol (read-only) on HOST:PORT; none when unset. (env: QS_MEMCACHED)", valueName: "host:port"))
    var memcached: OrNone<TCPAddress> = QSEnv.value("QS_MEMCACHED", .none)

    @Option(help: ArgumentHelp("Serve the memcached text protocol on this Unix socket path; none when unset. (env: QS_MEMCACHED_UNIX)", valueName: "path"))
    var memcachedUnix: String = QSEnv.string("QS_MEMCACHED_UNIX") ?? ""

    @Option(help: ArgumentHelp("Serve KT's HTTP RPC and RESTful reads on HOST:PORT; none when unset. (env: QS_KT_HTTP)", valueName: "host:port"))
    var ktHttp: OrNone<TCPAddress> = QSEnv.value("QS_KT_HTTP", .none)

    @Option(help: ArgumentHelp("Serve KT's HTTP RPC and RESTful reads on this Unix socket path; none when unset. (env: QS_KT_HTTP_UNIX)", valueName: "path"))
    var ktHttpUnix: String = QSEnv.string("QS_KT_HTTP_UNIX") ?? ""

    @Option(help: ArgumentHelp("The most bytes of KT HTTP request bodies still arriving, and of what their parses build (estimated from their lines: about 180 bytes a line, and the body twice), that the KT port's connections hold together, e.g. 256MiB: a body that would pass it is answered 503 and its connection closed, a request whose parse would pass it alone 413 (one body is at most 32MiB). A binary get_bulk holds its bytes and 48 bytes a key until answered (refused past it with KT's error reply). (env: QS_KT_MAX_PENDING_BYTES)", valueName: "size"))
    var ktMaxPendingBytes: ByteSize = QSEnv.value("QS_KT_MAX_PENDING_BYTES", ByteSize(256 << 20))

    @Option(help: ArgumentHelp("The most bytes of large replies (64KiB or more) that clients of the read ports and of the write port's reads have not read yet, held together, e.g. 256MiB: a get whose large reply would pass it is refused (memcached SERVER_ERROR out of memory writing get response, KT HTTP 503 with Retry-After, KT binary's error reply, the write port's busy to a connection without a token), counted in qs_read_reply_memory_refusals_total, and the client may try again. One reply larger than this is still served while nothing else is held. (env: QS_READ_REPLY_MEMORY)", valueName: "size"))
    var readReplyMemory: ByteSize = QSEnv.value("QS_READ_REPLY_MEMORY", ByteSize(ReplyMemory.defaultLimit))

    @Option(help: ArgumentHelp("KT databases as key prefixes, INDEX[:NAME]=PREFIX,…, e.g. 0=,1:aux.kct=aux/; database 0 is what memcached reads. (env: QS_KT_DB_MAP)", valueName: "map"))
    var ktDbMap: KTDatabaseMapOption = QSEnv.value("QS_KT_DB_MAP", KTDatabaseMapOption(map: .single))

    @Option(help: ArgumentHelp("Whether stored values end with 4 bytes of memcached flags, as KT's memcached plug-in with opts=f wrote them: true or false. Default false, as KT's plug-in without opts=f: values are served whole with flags 0. (env: QS_MEMCACHED_FLAGS_IN_VALUE)", valueName: "bool"))
    var memcachedFlagsInValue: Bool = QSEnv.flag("QS_MEMCACHED_FLAGS_IN_VALUE", default: false)

    @Option(help: ArgumentHelp("Threads that answer memcached connections: each serves one busy connection with blocking reads (a get costs a read and a write, no epoll wait or thread hop), and a connection quiet for 200 ms waits on one epoll thread, which answers it itself when it sends again after a pause (1 ms or more: one wake-up a request, as memcached's own threads); past this many busy connections they take turns. Threads are made as connections need them. 0: serve memcached on the event loops like the other listeners. At most \(Self.maxMemcachedThreads), with --kt-http-threads (each holds one of LMDB's reader slots). (env: QS_MEMCACHED_THREADS)", valueName: "n"))
    var memcachedThreads: Int = QSEnv.value("QS_MEMCACHED_THREADS", Self.defaultMemcachedThreads)

    @Option(help: ArgumentHelp("Threads that answer KT HTTP's simple reads (GET or HEAD /KEY, GET /rpc/get) as --memcached-threads answers memcached; a connection's first other request (a body, another procedure, KT's binary protocol) moves it to the event loops for good. 0: serve KT HTTP on the event loops. At most \(Self.maxMemcachedThreads), with --memcached-threads. (env: QS_KT_HTTP_THREADS)", valueName: "n"))
    var ktHttpThreads: Int = QSEnv.value("QS_KT_HTTP_THREADS", Self.defaultMemcachedThreads)

    /// Reader threads answer memcached by default: half the instructions of a `get` on the
    /// event loops and one system call fewer (docs/benchmarks.md, "Thirty-fourth session").
    static let defaultMemcachedThreads = 32

    static let maxMemcachedThreads = 128

    func validate() throws {
        guard (0...Self.maxMemcachedThreads).contains(memcachedThreads) else {
            throw ValidationError("--memcached-threads \(memcachedThreads) (or QS_MEMCACHED_THREADS) must be 0 (serve on the event loops) to \(Self.maxMemcachedThreads), e.g. 32")
        }
        guard (0...Self.maxMemcachedThreads).contains(ktHttpThreads) else {
            throw ValidationError("--kt-http-threads \(ktHttpThreads) (or QS_KT_HTTP_THREADS) must be 0 (serve on the event loops) to \(Self.maxMemcachedThreads), e.g. 32")
        }
        // Each reader thread holds one of LMDB's 256 reader slots for its life; the event
        // loops, the write port's reads, scans and snapshots need theirs too.
        guard memcachedThreads + ktHttpThreads <= Self.maxMemcachedThreads else {
            throw ValidationError("--memcached-threads \(memcachedThreads) and --kt-http-threads \(ktHttpThreads) (or QS_MEMCACHED_THREADS, QS_KT_HTTP_THREADS) come to \(memcachedThreads + ktHttpThreads) reader threads, more than \(Self.maxMemcachedThreads) together (each holds one of the store's reader slots): lower one, e.g. 32 each")
        }
        guard readReplyMemory.bytes >= 1 << 20 else {
            throw ValidationError("--read-reply-memory \(readReplyMemory) (or QS_READ_REPLY_MEMORY) must be at least 1MiB, e.g. 256MiB")
        }
        guard ktMaxPendingBytes.bytes >= 1 << 20 else {
            throw ValidationError("--kt-max-pending-bytes \(ktMaxPendingBytes) (or QS_KT_MAX_PENDING_BYTES) must be at least 1MiB, e.g. 256MiB")
        }
    }

    /// The node's one budget for large replies not yet read, shared by every read port and
    /// the write port's reads: what matters is the node's memory.
    func replyBudget() -> ReplyMemory {
        ReplyMemory.exported(limit: readReplyMemory.bytes)
    }

    /// The read servers the flags ask for, their large replies held against `replies`.
    func services(store: Store, replies: ReplyMemory, limits: ConnectionLimits, logger: Logger) throws -> [any Service] {
        let map = ktDbMap.map
        var out = [any Service]()
        let mc = endpoints(memcached, memcachedUnix)
        if !mc.isEmpty {
            var config = MemcachedServer.Configuration(databases: map, valueFormat: .init(flagsInValue: memcachedFlagsInValue),
                                                       threads: memcachedThreads)
            config.replyMemory = replies
            logger.notice(memcachedFlagsInValue
                ? "memcached: values end with 4 bytes of flags (KT's plug-in with opts=f); a value without them is served short"
                : "memcached: values served whole with flags 0 (KT's plug-in without opts=f); --memcached-flags-in-value true if KT ran with opts=f",
                metadata: ["memcached-flags-in-value": "\(memcachedFlagsInValue)"])
            out.append(MemcachedServer(store: store, endpoints: mc, logger: logger, configuration: config, connections: limits))
        }
        let kt = endpoints(ktHttp, ktHttpUnix)
        if !kt.isEmpty {
            var config = KTHTTPReadServer.Configuration(databases: map, maxPendingBytes: ktMaxPendingBytes.bytes)
            config.replyMemory = replies
            config.threads = ktHttpThreads
            out.append(KTHTTPReadServer(store: store, endpoints: kt, logger: logger, configuration: config, connections: limits))
        }
        return out
    }

    /// The read listeners the flags ask for, by listener name.
    var listeners: [(listener: String, endpoints: [Endpoint])] {
        [("memcached", endpoints(memcached, memcachedUnix)), ("kt-http", endpoints(ktHttp, ktHttpUnix))].filter { !$0.endpoints.isEmpty }
    }

    private func endpoints(_ tcp: OrNone<TCPAddress>, _ unix: String) -> [Endpoint] {
        var out = [Endpoint]()
        if let e = tcp.value?.endpoint { out.append(e) }
        if !unix.isEmpty { out.append(.unix(path: unix)) }
        return out
    }
}

/// `--kt-db-map`: KT databases as key prefixes.
struct KTDatabaseMapOption: ExpressibleByArgument, DescribedArgument, CustomStringConvertible {
    let map: KTDatabaseMap

    init(map: KTDatabaseMap) { self.map = map }

    init?(argument: String) {
        guard let m = try? KTDatabaseMap(parsing: argument) else { return nil }
        map = m
    }

    static let expectation = "INDEX[:NAME]=PREFIX[,…], for example 0=,1:aux.kct=aux/"
    var description: String { map.description }
    var defaultValueDescription: String { description }
}
