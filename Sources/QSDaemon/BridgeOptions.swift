import ArgumentParser
import Foundation
import Logging
import QSFeed
import QSModel
import QSNet

/// The options every bridge shares: where the root is, which checkpoint, how to batch.
public struct BridgeOptions: ParsableArguments, Sendable {
    @Option(help: ArgumentHelp("The QS root's write address, HOST:PORT or unix:PATH, or several separated by commas (a root cluster's members, or a root and the one it is cut over to): one is written to, the next taken when it is unreachable, fails, takes no writes or is stale. (env: QS_ROOT)", valueName: "host:port[,…]"))
    public var root: AddressList = QSEnv.value("QS_ROOT", AddressList(.tcp(host: "127.0.0.1", port: 7400)))

    @Option(help: ArgumentHelp("With several --root addresses: leave the one in use as stale when its head stands still this long while another address's head is past it, e.g. 5s. (env: QS_ROOT_STALE_AFTER)", valueName: "duration"))
    public var rootStaleAfter: Interval = QSEnv.value("QS_ROOT_STALE_AFTER", Interval(RootWriter.staleAfter))

    @Option(help: ArgumentHelp("Checkpoint name at the root; bridges of one source share it. Default: derived from the source. (env: QS_SOURCE_ID)", valueName: "id"))
    public var sourceID: String = QSEnv.string("QS_SOURCE_ID") ?? ""

    @Option(help: ArgumentHelp("Flush a batch this often, e.g. 500ms. (env: QS_BATCH_INTERVAL)", valueName: "duration"))
    public var batchInterval: Interval = QSEnv.value("QS_BATCH_INTERVAL", Interval(.milliseconds(500)))

    @Option(help: ArgumentHelp("Flush sooner once a batch holds this many operations (entries in compatible mode). (env: QS_BATCH_MAX_OPS)", valueName: "n"))
    public var batchMaxOps: Int = QSEnv.value("QS_BATCH_MAX_OPS", 10_000)

    @Option(help: ArgumentHelp("Flush sooner once a batch holds this many bytes, e.g. 16MiB. (env: QS_BATCH_MAX_BYTES)", valueName: "size"))
    public var batchMaxBytes: ByteSize = QSEnv.value("QS_BATCH_MAX_BYTES", ByteSize(16 << 20))

    @Option(help: ArgumentHelp("Batches sent to the root before the bridge waits for the oldest one's answer, 1 to \(BridgeOptions.maxBatchesInFlight): with 2 the next batch reaches the root while it commits the one before (each batch's expected position is the new position of the one before it, so compare-and-swap still applies each position once); 1 waits for each answer. The bridge holds at most this many batches of changes. (env: QS_BATCHES_IN_FLIGHT)", valueName: "n"))
    public var batchesInFlight: Int = QSEnv.value("QS_BATCHES_IN_FLIGHT", BatchLimits.defaultBatchesInFlight, flag: "--batches-in-flight")

    @Flag(inversion: .prefixedNo, help: "Flush a batch as soon as the source says it has sent everything it has (a KT heartbeat, sent each time KT's update-log reader reaches its end, at most every 0.1 s), so --batch-interval is an upper bound: a change waits for the next tick only while the source is busy. Off: batches go every --batch-interval or when full. (env: QS_FLUSH_WHEN_CAUGHT_UP)")
    public var flushWhenCaughtUp: Bool = QSEnv.flag("QS_FLUSH_WHEN_CAUGHT_UP", default: true, flag: "--flush-when-caught-up")

    /// The most `--batches-in-flight` takes: the root reads no more than 32 requests ahead on a connection.
    public static let maxBatchesInFlight = 8

    @Option(help: ArgumentHelp("A change too big to write (over --batch-max-bytes, or over the root's --max-frame-bytes when sent alone): stop the bridge naming its key and size, or skip it, counted and logged (batched mode only). (env: QS_ON_OVERSIZED)", valueName: "stop|skip"))
    public var onOversized: OversizedPolicy = QSEnv.value("QS_ON_OVERSIZED", .stop)

    @Option(help: ArgumentHelp("File holding the root's write token. (env: QS_WRITE_TOKEN_FILE)", valueName: "file"))
    public var writeTokenFile: String = QSEnv.string("QS_WRITE_TOKEN_FILE") ?? ""

    @Flag(inversion: .prefixedNo, help: "Stop once the source's end (a ulog directory's, a capture's, a QS node's head at start) is applied, instead of following it. (env: QS_ONCE)")
    public var once: Bool = QSEnv.flag("QS_ONCE")

    public init() {}

    public func validate() throws {
        guard batchInterval.duration > .zero else { throw ValidationError("--batch-interval must be more than 0, e.g. 500ms") }
        guard batchMaxOps > 0 else { throw ValidationError("--batch-max-ops must be positive") }
        guard batchMaxBytes.bytes > 0 else { throw ValidationError("--batch-max-bytes must be more than 0, e.g. 16MiB") }
        guard (1...Self.maxBatchesInFlight).contains(batchesInFlight) else {
            throw ValidationError("--batches-in-flight \(batchesInFlight) (or QS_BATCHES_IN_FLIGHT) must be between 1 and \(Self.maxBatchesInFlight): 2 keeps the root busy while the bridge prepares the next batch, 1 waits for each answer")
        }
        try validateRootStaleAfter(rootStaleAfter)
        try validateSourceID(sourceID, flag: "--source-id")
    }

    public func limits(mode: WriteMode) -> BatchLimits {
        BatchLimits(interval: batchInterval.duration, maxOps: batchMaxOps, maxBytes: batchMaxBytes.bytes, mode: mode, oversized: onOversized,
                    batchesInFlight: batchesInFlight, flushWhenCaughtUp: flushWhenCaughtUp)
    }

    /// The write token from `--write-token-file` (trailing newline dropped).
    public func token() throws -> [UInt8] {
        try TokenFile.optional(writeTokenFile, flag: "--write-token-file") ?? []
    }

    /// The bridge's writer to `--root` (failing over along its list), introducing itself as `client` (what it is and reads,
    /// shown in the root's status); a refused token stops it at start-up naming its file.
    /// `sourceID`: the id its batches carry (nil for a compatible mirror's appends).
    public func rootWriter(client: String, sourceID: String?, logger: Logger, metrics: FeedMetrics) throws -> RootWriter {
        let origin = writeTokenFile.isEmpty ? "an empty write token (no --write-token-file)" : "the token in --write-token-file \(writeTokenFile)"
        return RootWriter(endpoints: root.endpoints, token: try token(), logger: logger, metrics: metrics.root, client: client, tokenOrigin: origin,
                          staleAfter: rootStaleAfter.duration, sourceID: sourceID)
    }
}

/// Refuses a `--source-id` the root could not keep a checkpoint under (qsktbridge,
/// qsqsbridge, qsrest); empty means the default, derived at start.
public func validateSourceID(_ id: String, flag: String) throws {
    guard !id.isEmpty, let why = Origin.problem(sourceID: id) else { return }
    throw ValidationError("\(flag) (or QS_SOURCE_ID) is \(why): the root keeps checkpoints under ids of 1 to \(Origin.maxSourceIDBytes) bytes; give a shorter one")
}

/// Refuses a `--root-stale-after` too short to tell a stale root from a busy one
/// (qsktbridge, qsqsbridge, qsrest).
public func validateRootStaleAfter(_ value: Interval) throws {
    guard value.duration >= .milliseconds(100) else {
        throw ValidationError("--root-stale-after \(value) (or QS_ROOT_STALE_AFTER) must be at least 100ms, e.g. 5s: how long the root's head may stand still while another --root address's is ahead")
    }
}

extension WriteMode: ExpressibleByArgument {}
extension OversizedPolicy: ExpressibleByArgument {}
