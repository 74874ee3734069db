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
    @Option(help: ArgumentHelp("Serve the memcached text protocol (read-only) on HOST:PORT; empty for none. (env: QS_MEMCACHED)", valueName: "host:port"))
    var memcached: String = QSEnv.string("QS_MEMCACHED") ?? ""

    @Option(help: ArgumentHelp("Serve the memcached text protocol on this Unix socket path; empty for none. (env: QS_MEMCACHED_UNIX)", valueName: "path"))
    var memcachedUnix: String = QSEnv.string("QS_MEMCACHED_UNIX") ?? ""

    @Option(help: ArgumentHelp("Serve KT's HTTP RPC and RESTful reads on HOST:PORT; empty for none. (env: QS_KT_HTTP)", valueName: "host:port"))
    var ktHttp: String = QSEnv.string("QS_KT_HTTP") ?? ""

    @Option(help: ArgumentHelp("Serve KT's HTTP RPC and RESTful reads on this Unix socket path; empty for none. (env: QS_KT_HTTP_UNIX)", valueName: "path"))
    var ktHttpUnix: String = QSEnv.string("QS_KT_HTTP_UNIX") ?? ""

    @Option(help: ArgumentHelp("KT databases as key prefixes, INDEX[:NAME]=PREFIX,…, e.g. 0=,1:aux.kct=aux/; database 0 is what memcached reads. (env: QS_KT_DB_MAP)", valueName: "map"))
    var ktDbMap: String = QSEnv.string("QS_KT_DB_MAP") ?? "0="

    @Option(help: ArgumentHelp("Whether stored values end with 4 bytes of memcached flags, as KT's memcached plug-in with opts=f wrote them: true or false. (env: QS_MEMCACHED_FLAGS_IN_VALUE)", valueName: "bool"))
    var memcachedFlagsInValue: Bool = QSEnv.flag("QS_MEMCACHED_FLAGS_IN_VALUE", default: true)

    func validate() throws {
        for (flag, text) in [("--memcached", memcached), ("--kt-http", ktHttp)] where !text.isEmpty {
            guard case .tcp = try? Endpoint(parsing: text) else {
                throw ValidationError("\(flag) '\(text)' is not HOST:PORT (for example 127.0.0.1:11211)")
            }
        }
        do { _ = try KTDatabaseMap(parsing: ktDbMap) } catch { throw ValidationError("--kt-db-map: \(error)") }
    }

    /// The read servers the flags ask for.
    func services(store: Store, logger: Logger) throws -> [any Service] {
        let map = try KTDatabaseMap(parsing: ktDbMap)
        var out = [any Service]()
        let mc = try endpoints(memcached, memcachedUnix)
        if !mc.isEmpty {
            let config = MemcachedServer.Configuration(databases: map, valueFormat: .init(flagsInValue: memcachedFlagsInValue))
            out.append(MemcachedServer(store: store, endpoints: mc, logger: logger, configuration: config))
        }
        let kt = try endpoints(ktHttp, ktHttpUnix)
        if !kt.isEmpty {
            out.append(KTHTTPReadServer(store: store, endpoints: kt, logger: logger,
                                        configuration: .init(databases: map)))
        }
        return out
    }

    private func endpoints(_ tcp: String, _ unix: String) throws -> [Endpoint] {
        var out = [Endpoint]()
        if !tcp.isEmpty { out.append(try Endpoint(parsing: tcp)) }
        if !unix.isEmpty { out.append(.unix(path: unix)) }
        return out
    }
}
