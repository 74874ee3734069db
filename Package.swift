// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [.swiftLanguageMode(.v6)]

func nio(_ name: String) -> Target.Dependency { .product(name: name, package: "swift-nio") }
func lifecycle(_ name: String) -> Target.Dependency { .product(name: name, package: "swift-service-lifecycle") }
var log: Target.Dependency { .product(name: "Logging", package: "swift-log") }
var metrics: Target.Dependency { .product(name: "Metrics", package: "swift-metrics") }
var argumentParser: Target.Dependency { .product(name: "ArgumentParser", package: "swift-argument-parser") }

let package = Package(
    name: "quicksilver-bridge",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "qsnode", targets: ["qsnode"]),
        .executable(name: "qsctl", targets: ["qsctl"]),
        .executable(name: "qsbench", targets: ["qsbench"]),
        .executable(name: "qsktbridge", targets: ["qsktbridge"]),
        .executable(name: "fakekt", targets: ["fakekt"]),
        .executable(name: "qsqsbridge", targets: ["qsqsbridge"]),
        .executable(name: "qsrest", targets: ["qsrest"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // liblmdb through pkg-config; only QSStore imports it.
        .systemLibrary(
            name: "CLMDB",
            pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]
        ),
        // librocksdb through pkg-config (its C API, rocksdb/c.h): the second storage engine;
        // only QSStore imports it.
        .systemLibrary(
            name: "CRocksDB",
            pkgConfig: "rocksdb",
            providers: [.apt(["librocksdb-dev"])]
        ),
        // libxxhash (XXH3) through pkg-config: the records' checksums; only QSStore imports it.
        .systemLibrary(
            name: "CXXHash",
            pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]
        ),
        // Linux calls Swift's Glibc module leaves out (sync_file_range: a received snapshot
        // written back to disk while it arrives; epoll and eventfd: the threaded listener).
        .systemLibrary(name: "CLinux"),
        // Byte readers/writers and encodings shared by every binary format.
        .target(name: "QSBytes", swiftSettings: swiftSettings),
        // The values every side shares: mutations, records, log entries and their bytes,
        // heads, the chained hash, the wall clock. Pure: no LMDB, no NIO.
        .target(
            name: "QSModel",
            dependencies: ["QSBytes", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // The store: keyspace, hash-chained log, checkpoints over LMDB or RocksDB (one enum
        // seam, Engine.swift), on threads it owns (one writer, readers, a background thread);
        // the only module that touches either engine.
        .target(
            name: "QSStore",
            dependencies: ["CLinux", "CLMDB", "CRocksDB", "CXXHash", "QSBytes", "QSModel", .product(name: "Crypto", package: "swift-crypto"),
                           metrics, nio("NIOConcurrencyHelpers")],
            swiftSettings: swiftSettings
        ),
        // The QS write and replication protocol: frames and messages, pure codecs.
        .target(
            name: "QSWire",
            dependencies: ["CXXHash", "QSBytes", "QSModel", nio("NIOCore")],
            swiftSettings: swiftSettings
        ),
        // Networking basics: endpoints, backoff, the one listener (graceful drain, protocol
        // sniffing, idle timeouts), the ready file, token gates, the HTTP request loop.
        .target(
            name: "QSNet",
            dependencies: [
                "CLinux", "QSBytes", metrics,
                nio("NIOCore"), nio("NIOPosix"), nio("NIOConcurrencyHelpers"), nio("NIOHTTP1"),
                .product(name: "NIOExtras", package: "swift-nio-extras"), log, lifecycle("ServiceLifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A client of the QS write protocol (qsctl, bridges, benchmarks) and its log subscription.
        .target(
            name: "QSClient",
            dependencies: [
                "QSBytes", "QSModel", "QSNet", "QSWire",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), nio("NIOPosix"), .product(name: "NIOExtras", package: "swift-nio-extras"),
            ],
            swiftSettings: swiftSettings
        ),
        // A client of etcd's v3 API over its JSON gateway (txn, range, watch), on NIO's HTTP/1:
        // what a root cluster's members commit and follow the log through.
        .target(
            name: "QSEtcd",
            dependencies: [nio("NIOCore"), nio("NIOPosix"), nio("NIOHTTP1"), nio("NIOConcurrencyHelpers"), log],
            swiftSettings: swiftSettings
        ),
        // The node: root write handler, replication server and client, log trimming.
        .target(
            name: "QSNode",
            dependencies: [
                "QSBytes", "QSClient", "QSEtcd", "QSModel", "QSNet", "QSStore", "QSWire",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), nio("NIOPosix"),
                log, metrics, lifecycle("ServiceLifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The read side of a node: memcached text protocol and KT HTTP RPC/REST reads.
        .target(
            name: "QSReads",
            dependencies: [
                "KTFormats", "QSBytes", "QSModel", "QSNet", "QSStore",
                nio("NIOCore"), nio("NIOPosix"), nio("NIOHTTP1"), nio("NIOConcurrencyHelpers"),
                log, metrics, lifecycle("ServiceLifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Every recording format and its readers: KT replication captures, QS log captures,
        // reading any recording back (`qsctl feed show|stats`), and the one helper that
        // feeds a file in chunks to the decoder that reads the same format from a socket.
        .target(
            name: "QSCaptures",
            dependencies: ["KTFormats", "QSBytes", "QSModel", "QSWire", nio("NIOCore")],
            swiftSettings: swiftSettings
        ),
        // The shared feed consumer of every bridge: source → batcher → root writer; the QS
        // log (live and captured) as a source.
        .target(
            name: "QSFeed",
            dependencies: [
                "QSCaptures", "QSClient", "QSModel", "QSNet", "QSWire",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), log, metrics, lifecycle("ServiceLifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Kyoto Tycoon formats: update-log messages, ulog files, replication and binary
        // protocol frames, HTTP RPC TSV, expiration rules.
        .target(
            name: "KTFormats",
            dependencies: ["QSBytes", nio("NIOCore")],
            swiftSettings: swiftSettings
        ),
        // The KT sources of the feed consumer: live replication, ulog directories, captures, and the initial copy of a KT over its HTTP RPC.
        .target(
            name: "QSKTFeed",
            dependencies: [
                "KTFormats", "QSBytes", "QSCaptures", "QSFeed", "QSModel", "QSNet", "QSWire",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), nio("NIOPosix"), nio("NIOHTTP1"), log, metrics,
            ],
            swiftSettings: swiftSettings
        ),
        // Recording live feeds (KT replication, QS log) into capture files.
        .target(
            name: "QSRecording",
            dependencies: [
                "KTFormats", "QSCaptures", "QSClient", "QSKTFeed", "QSModel", "QSNet", "QSWire",
                log,
            ],
            swiftSettings: swiftSettings
        ),
        // A fake Kyoto Tycoon server, usable in-process, for tests and demos.
        .target(
            name: "FakeKT",
            dependencies: [
                "KTFormats", "QSNet",
                nio("NIOCore"), nio("NIOPosix"), nio("NIOHTTP1"), nio("NIOConcurrencyHelpers"),
                log, metrics, lifecycle("ServiceLifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The write service producers move to from KT: KT HTTP RPC/REST writes, the TOML ACL,
        // per-producer quotas and metrics, batches of conditional writes into the root over
        // the feed consumer's root writer, usage per producer.
        .target(
            name: "QSRest",
            dependencies: [
                "KTFormats", "QSBytes", "QSClient", "QSFeed", "QSModel", "QSNet", "QSWire",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), nio("NIOPosix"), nio("NIOHTTP1"),
                log, metrics, lifecycle("ServiceLifecycle"), .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Daemon wiring shared by the executables: option groups with QS_* fallbacks,
        // logging and metrics bootstrap, the admin HTTP server, running a bridge.
        .target(
            name: "QSDaemon",
            dependencies: [
                "CLinux", "QSFeed", "QSKTFeed", "QSModel", "QSNet",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), nio("NIOPosix"), nio("NIOHTTP1"),
                argumentParser, log, metrics, .product(name: "Prometheus", package: "swift-prometheus"),
                lifecycle("ServiceLifecycle"), lifecycle("UnixSignals"),
            ],
            swiftSettings: swiftSettings
        ),
        // A fake Kyoto Tycoon: ktserver's command line over the FakeKT library.
        .executableTarget(
            name: "fakekt",
            dependencies: ["FakeKT", "QSDaemon", "QSNet", argumentParser, log, lifecycle("ServiceLifecycle")],
            swiftSettings: swiftSettings
        ),
        // KT update feed (live replication, ulog directory, capture) → QS root.
        .executableTarget(
            name: "qsktbridge",
            dependencies: ["QSDaemon", "QSFeed", "QSKTFeed", "QSModel", "QSNet", argumentParser, log, lifecycle("ServiceLifecycle")],
            swiftSettings: swiftSettings
        ),
        // A QS node's log (or a capture of it) → another QS root, compatible or batched.
        .executableTarget(
            name: "qsqsbridge",
            dependencies: ["QSDaemon", "QSFeed", "QSNet", argumentParser, log],
            swiftSettings: swiftSettings
        ),
        // qsrest: KT producers' writes → QS root, per-producer keyspaces and quotas.
        .executableTarget(
            name: "qsrest",
            dependencies: ["QSDaemon", "QSFeed", "QSNet", "QSRest", argumentParser, log, lifecycle("ServiceLifecycle")],
            swiftSettings: swiftSettings
        ),
        // A QS node: root or replica, with its write, replication and read servers.
        .executableTarget(
            name: "qsnode",
            dependencies: [
                "QSBytes", "QSDaemon", "QSEtcd", "QSModel", "QSNet", "QSNode", "QSReads", "QSStore", "QSWire",
                argumentParser, log, lifecycle("ServiceLifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The operator CLI: keys, log, status, wait, verify, lag, record and inspect feeds, usage per producer.
        .executableTarget(
            name: "qsctl",
            dependencies: [
                "KTFormats", "QSBytes", "QSCaptures", "QSClient", "QSDaemon", "QSKTFeed", "QSModel", "QSNet", "QSRecording", "QSRest", "QSWire",
                argumentParser, log, lifecycle("UnixSignals"), nio("NIOCore"),
            ],
            swiftSettings: swiftSettings
        ),
        // `make bench`: every figure as a ratio against a reference measured in the same run.
        .executableTarget(
            name: "qsbench",
            dependencies: [
                "KTFormats", "QSBytes", "QSClient", "QSDaemon", "QSModel", "QSNet", "QSStore", "QSTesting", "QSWire",
                argumentParser, .product(name: "Crypto", package: "swift-crypto"), nio("NIOCore"),
            ],
            swiftSettings: swiftSettings
        ),
        // `make fuzz`: one libFuzzer entry over every decoder of outside bytes (built with
        // -sanitize=fuzzer,address -DQS_FUZZ); without the fuzzer it replays inputs and writes seeds.
        .executableTarget(
            name: "qsfuzz",
            dependencies: ["KTFormats", "QSBytes", "QSCaptures", "QSModel", "QSReads", "QSWire", nio("NIOCore"), nio("NIOEmbedded"),
                           nio("NIOHTTP1")],
            swiftSettings: swiftSettings
        ),
        // Test helpers: start real processes on loopback and wait for readiness.
        .target(
            name: "QSTesting",
            dependencies: ["QSClient", "QSModel", "QSNet", "QSWire", log, lifecycle("ServiceLifecycle")],
            swiftSettings: swiftSettings
        ),
        // The store against real LMDB: batches, log, checkpoints, threads.
        .testTarget(name: "QSStoreTests", dependencies: ["QSBytes", "QSModel", "QSStore", "QSTesting", nio("NIOConcurrencyHelpers")], swiftSettings: swiftSettings),
        // QS frame and message codecs, byte by byte.
        .testTarget(
            name: "QSWireTests",
            dependencies: ["QSBytes", "QSModel", "QSWire", nio("NIOCore"), nio("NIOTestUtils")],
            swiftSettings: swiftSettings
        ),
        // KT codecs against the recorded fixtures.
        .testTarget(
            name: "KTFormatsTests",
            dependencies: ["KTFormats", "QSBytes", nio("NIOCore"), nio("NIOTestUtils"), nio("NIOEmbedded")],
            swiftSettings: swiftSettings
        ),
        // Capture readers: a file and a socket decode the same bytes to the same values.
        .testTarget(
            name: "QSCapturesTests",
            dependencies: [
                "KTFormats", "QSBytes", "QSCaptures", "QSWire",
                nio("NIOCore"), nio("NIOEmbedded"), nio("NIOTestUtils"),
            ],
            swiftSettings: swiftSettings
        ),
        // fakekt in-process: RPCs, binary protocol, replication, ulogs, faults.
        .testTarget(
            name: "FakeKTTests",
            dependencies: ["FakeKT", "KTFormats", "QSBytes", "QSNet", "QSTesting", nio("NIOCore"), nio("NIOPosix"), log],
            swiftSettings: swiftSettings
        ),
        // The feed consumer with a scripted source and root; KT translation.
        .testTarget(
            name: "QSFeedTests",
            dependencies: [
                "KTFormats", "QSClient", "QSFeed", "QSKTFeed", "QSModel", "QSNet", "QSTesting", "QSWire",
                nio("NIOConcurrencyHelpers"), nio("NIOCore"), log, lifecycle("ServiceLifecycleTestKit"),
            ],
            swiftSettings: swiftSettings
        ),
        // Bridges as real processes: exactly-once, replays, live KT, rollback drill.
        .testTarget(
            name: "BridgeTests",
            dependencies: ["QSClient", "QSModel", "QSStore", "QSTesting", "QSWire"],
            swiftSettings: swiftSettings
        ),
        // qsctl record and feed against live KT and QS feeds and fixtures.
        .testTarget(
            name: "RecordingTests",
            dependencies: ["QSCaptures", "QSClient", "QSModel", "QSStore", "QSTesting", nio("NIOConcurrencyHelpers")],
            swiftSettings: swiftSettings
        ),
        // Replicas as real processes: subscribe, bootstrap, move upstream.
        .testTarget(
            name: "ReplicationTests",
            dependencies: ["QSClient", "QSModel", "QSStore", "QSTesting", "QSWire", nio("NIOConcurrencyHelpers")],
            swiftSettings: swiftSettings
        ),
        // memcached and KT HTTP reads, in-process and against recorded transcripts.
        .testTarget(
            name: "QSReadsTests",
            dependencies: [
                "KTFormats", "QSClient", "QSModel", "QSNet", "QSReads", "QSStore", "QSTesting", "QSWire",
                nio("NIOCore"), nio("NIOConcurrencyHelpers"), nio("NIOHTTP1"), nio("NIOTestUtils"), nio("NIOEmbedded"), log,
            ],
            swiftSettings: swiftSettings
        ),
        // A root cluster on a real etcd cluster: members, bridges failing over between them, a replica, etcd's leader
        // killed, a member behind etcd's window, a member partitioned from etcd.
        .testTarget(
            name: "ClusterTests",
            dependencies: ["QSClient", "QSEtcd", "QSModel", "QSTesting", "QSWire"],
            swiftSettings: swiftSettings
        ),
        // qsrest: the ACL, conditional writes at the store, quotas; qsrest as a process with
        // curl and raw HTTP producers, SIGKILL of qsrest and of the root under load.
        .testTarget(
            name: "QSRestTests",
            dependencies: [
                "QSBytes", "QSClient", "QSModel", "QSRest", "QSStore", "QSTesting", "QSWire",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Root nodes as real processes, qsctl, the write-protocol handler on a test channel.
        .testTarget(
            name: "QSNodeTests",
            dependencies: [
                "QSClient", "QSModel", "QSNet", "QSNode", "QSStore", "QSTesting", "QSWire",
                nio("NIOCore"), nio("NIOConcurrencyHelpers"), nio("NIOEmbedded"), nio("NIOPosix"), log, metrics,
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

