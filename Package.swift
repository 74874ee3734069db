// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [.swiftLanguageMode(.v6)]

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
        // Byte readers/writers and encodings shared by every binary format.
        .target(name: "QSBytes", swiftSettings: swiftSettings),
        // The LMDB environment, keyspace, transaction log and checkpoints.
        .target(
            name: "QSStore",
            dependencies: [
                "CLMDB", "QSBytes",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The QS write protocol: frames and messages, pure codecs.
        .target(
            name: "QSWire",
            dependencies: [
                "QSStore",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Configuration, logging, metrics, admin HTTP, lifecycle: shared by every executable.
        .target(
            name: "QSService",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A client of the QS write protocol (qsctl, bridges, benchmarks).
        .target(
            name: "QSClient",
            dependencies: [
                "QSWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
            ],
            swiftSettings: swiftSettings
        ),
        // The node: root write handler (replication and reads to come).
        .target(
            name: "QSNode",
            dependencies: [
                "QSStore", "QSWire", "QSService", "QSClient",
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The read side of a node: memcached text protocol and KT HTTP RPC/REST reads.
        .target(
            name: "QSReads",
            dependencies: [
                "QSStore", "KTFormats", "QSService",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The shared feed consumer of every bridge: source → batcher → root writer.
        .target(
            name: "QSFeed",
            dependencies: [
                "QSClient", "QSService", "QSStore", "QSWire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Kyoto Tycoon formats: update-log messages, ulog files, replication and binary
        // protocol frames, HTTP RPC TSV, expiration rules.
        .target(
            name: "KTFormats",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // The KT sources of the feed consumer: live replication, ulog directories, captures.
        .target(
            name: "QSKTFeed",
            dependencies: [
                "KTFormats", "QSFeed", "QSStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // Recording live feeds (KT replication, QS log) into files, and reading recordings
        // back for `qsctl feed show|stats`.
        .target(
            name: "QSRecording",
            dependencies: [
                "KTFormats", "QSKTFeed", "QSFeed", "QSClient", "QSService", "QSStore", "QSWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // A fake Kyoto Tycoon server, usable in-process, for tests and demos.
        .target(
            name: "FakeKT",
            dependencies: [
                "KTFormats",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "fakekt",
            dependencies: [
                "FakeKT",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "qsktbridge",
            dependencies: [
                "QSKTFeed", "QSFeed", "QSService",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "qsqsbridge",
            dependencies: [
                "QSFeed", "QSService",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "qsnode",
            dependencies: [
                "QSNode", "QSReads", "QSService", "QSBytes",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "qsctl",
            dependencies: [
                "QSClient", "QSService", "QSBytes", "QSRecording", "QSKTFeed", "QSFeed", "KTFormats",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "qsbench",
            dependencies: [
                "QSStore", "QSClient", "QSService", "QSTesting", "KTFormats",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // Test helpers: start real processes on free ports and wait for readiness.
        .target(
            name: "QSTesting",
            dependencies: ["QSClient"],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "QSStoreTests", dependencies: ["QSStore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "QSWireTests",
            dependencies: [
                "QSWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KTFormatsTests",
            dependencies: [
                "KTFormats",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FakeKTTests",
            dependencies: [
                "FakeKT",
                "KTFormats",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "QSFeedTests",
            dependencies: ["QSFeed", "QSKTFeed", "KTFormats", "QSStore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "BridgeTests",
            dependencies: ["QSTesting", "QSClient", "QSStore", "KTFormats"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RecordingTests",
            dependencies: ["QSTesting", "QSClient", "QSStore", "QSFeed", "QSRecording"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ReplicationTests",
            dependencies: ["QSTesting", "QSClient", "QSStore", "QSWire"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "QSReadsTests",
            dependencies: [
                "QSReads", "QSStore", "QSTesting", "QSClient", "KTFormats",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "QSNodeTests",
            dependencies: ["QSTesting", "QSClient", "QSStore"],
            swiftSettings: swiftSettings
        ),
    ]
)
