import KTFormats
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import QSNet

/// A KT connection, once its first byte has told which protocol it speaks.
enum KTConnection: Sendable {
    /// HTTP: RPC and RESTful requests, answered by the pipeline's `KTFastHTTPHandler` (and
    /// `KTHTTPHandler` behind NIO's HTTP pipeline, once the fast path hands over).
    case http
    /// KT's binary protocol (first byte ≥ 0x80, e.g. 0xBA get_bulk), which KT serves on its
    /// HTTP port too and which clients such as ukt use for get and get_bulk.
    case binary(NIOAsyncChannel<KTBinaryRequest, ByteBuffer>, KTBinaryShare)
}

/// One binary connection's share of the KT port's budget for requests still arriving
/// (`PendingBytes`): what it holds, given back when a request is whole and when the
/// connection ends (either may come first; giving back twice gives nothing).
final class KTBinaryShare: Sendable {
    let pending: PendingBytes
    private let held = NIOLockedValueBox(0)

    init(_ pending: PendingBytes) {
        self.pending = pending
    }

    func reserve(_ n: Int) -> Bool {
        guard pending.reserve(n) else { return false }
        held.withLockedValue { $0 += n }
        return true
    }

    func releaseAll() {
        let n = held.withLockedValue { n in
            defer { n = 0 }
            return n
        }
        pending.release(n)
    }

    var budget: KTBinaryRequestDecoder.Budget {
        KTBinaryRequestDecoder.Budget(reserve: { [self] in reserve($0) }, releaseAll: { [self] in releaseAll() })
    }
}

extension KTConnection {
    /// Puts the shared `ProtocolSniffer` in `channel`'s pipeline and returns the protocol
    /// the first byte announces, once it is in: ≥ 0x80 is KT's binary protocol, its
    /// requests decoded by `KTBinaryRequestDecoder` with at most `maxBinaryBytes` buffered
    /// (a larger request fails the connection with NIO's `PayloadTooLargeError`); anything
    /// else is HTTP, whose handler `http` adds.
    static func sniff(_ channel: any Channel, maxBinaryBytes: Int, pending: PendingBytes, replies: ReplyMemory,
                      http: @escaping (any Channel) throws -> Void) throws -> EventLoopFuture<KTConnection> {
        let promise = channel.eventLoop.makePromise(of: KTConnection.self)
        let sniffer = ProtocolSniffer(promise: promise) { first, channel -> KTConnection in
            let ops = channel.pipeline.syncOperations
            if first >= 0x80 {
                let share = KTBinaryShare(pending)
                try ops.addHandler(ByteToMessageHandler(KTBinaryRequestDecoder(getBulkOnly: true, budget: share.budget), maximumBufferSize: maxBinaryBytes))
                // Its replies are written from a task: counted here until the socket takes them.
                try ops.addHandler(ReplyMemoryCounter(memory: replies), position: .first)
                return .binary(try NIOAsyncChannel(wrappingChannelSynchronously: channel), share)
            }
            // The HTTP handlers drain the connection themselves (the fast path, then NIO's
            // pipeline handler once it has the connection): the listener's drain is
            // handed over to them.
            RequestDrain.installed(in: ops)?.handOverToPipeline()
            try http(channel)
            return .http
        }
        try channel.pipeline.syncOperations.addHandler(sniffer)
        return promise.futureResult
    }
}
