import KTFormats
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
    case binary(NIOAsyncChannel<KTBinaryRead, ByteBuffer>, KTBinaryShare)
}

extension KTConnection {
    /// Puts the shared `ProtocolSniffer` in `channel`'s pipeline and returns the protocol
    /// the first byte announces, once it is in: ≥ 0x80 is KT's binary protocol, its
    /// requests decoded by `KTBinaryReadDecoder` with at most `maxBinaryBytes` buffered
    /// (a larger request fails the connection with NIO's `PayloadTooLargeError`); anything
    /// else is HTTP, whose handler `http` adds.
    static func sniff(_ channel: any Channel, maxBinaryBytes: Int, pending: PendingBytes,
                      http: @escaping (any Channel) throws -> Void) throws -> EventLoopFuture<KTConnection> {
        let promise = channel.eventLoop.makePromise(of: KTConnection.self)
        let sniffer = ProtocolSniffer(promise: promise) { first, channel -> KTConnection in
            let ops = channel.pipeline.syncOperations
            if first >= 0x80 {
                let share = KTBinaryShare(pending)
                try ops.addHandler(ByteToMessageHandler(KTBinaryReadDecoder(share: share), maximumBufferSize: maxBinaryBytes))
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
