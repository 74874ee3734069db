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
    /// `KTConnectionEnds`: whether the client sent its end (the channel allows half-closure:
    /// the requests before it are answered, as ktserver answers them).
    case binary(NIOAsyncChannel<KTBinaryRead, ByteBuffer>, KTBinaryShare, KTConnectionEnds)
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
                let share = KTBinaryShare(pending), ends = KTConnectionEnds()
                try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                try ops.addHandler(InputEndWatch(ends))
                try ops.addHandler(ByteToMessageHandler(KTBinaryReadDecoder(share: share), maximumBufferSize: maxBinaryBytes))
                return .binary(try NIOAsyncChannel(wrappingChannelSynchronously: channel), share, ends)
            }
            // The HTTP handlers drain the connection themselves (the fast path, then NIO's
            // pipeline handler once it has the connection): the listener's drain is
            // handed over to them.
            RequestDrain.installed(in: ops)?.handOverToPipeline()
            // A client's end (a half-close right after its requests) is the HTTP handlers'
            // to act on: what came before it is answered whole, then the connection closes.
            // (Without it NIO closed the channel at the end: a 6 MiB answer was cut at 3 MB.)
            try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            try http(channel)
            return .http
        }
        try channel.pipeline.syncOperations.addHandler(sniffer)
        return promise.futureResult
    }
}

/// Notes a binary connection's end (`ChannelEvent.inputClosed`) for the work of its
/// requests off the loops, and passes it on: the session answers the requests before it,
/// then closes. (The drain is the connection's `RequestDrain`'s: a request in flight is
/// answered, then it closes.)
private final class InputEndWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let ends: KTConnectionEnds

    init(_ ends: KTConnectionEnds) {
        self.ends = ends
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let end = event as? ChannelEvent, end == .inputClosed { ends.inputEnded.store(true, ordering: .relaxed) }
        context.fireUserInboundEventTriggered(event)
    }
}
