import KTFormats
import NIOCore
import NIOHTTP1
import QSNet

/// A KT connection, once its first byte has told which protocol it speaks.
enum KTConnection: Sendable {
    /// HTTP: RPC and RESTful requests.
    case http(NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>)
    /// KT's binary protocol (first byte ≥ 0x80, e.g. 0xBA get_bulk), which KT serves on its
    /// HTTP port too and which clients such as ukt use for get and get_bulk.
    case binary(NIOAsyncChannel<KTBinaryRequest, ByteBuffer>)
}

/// A new KT connection and, once its first byte is in, the protocol it speaks.
struct SniffedConnection: Sendable {
    let channel: any Channel
    let `protocol`: EventLoopFuture<KTConnection>

    /// Puts the shared `ProtocolSniffer` in `channel`'s pipeline: a first byte ≥ 0x80 is
    /// KT's binary protocol, anything else HTTP.
    static func sniff(_ channel: any Channel, maxBinaryBytes: Int) throws -> SniffedConnection {
        let promise = channel.eventLoop.makePromise(of: KTConnection.self)
        let sniffer = ProtocolSniffer(promise: promise) { first, channel -> KTConnection in
            let ops = channel.pipeline.syncOperations
            if first >= 0x80 {
                try ops.addHandler(ByteToMessageHandler(KTBinaryFrameDecoder(maxBytes: maxBinaryBytes)))
                return .binary(try NIOAsyncChannel(wrappingChannelSynchronously: channel))
            }
            try ops.configureHTTPServerPipeline(withErrorHandling: true)
            return .http(try NIOAsyncChannel(wrappingChannelSynchronously: channel))
        }
        try channel.pipeline.syncOperations.addHandler(sniffer)
        return SniffedConnection(channel: channel, protocol: promise.futureResult)
    }
}

/// Whole binary requests, at most `maxBytes` each (a larger one is an error that closes
/// the connection, so a connection's buffer stays bounded).
struct KTBinaryFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = KTBinaryRequest
    let maxBytes: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let request = try KTBinaryRequestDecoder.next(&buffer) else {
            if buffer.readableBytes > maxBytes {
                throw KTBinaryProtocolError(reason: "request larger than \(maxBytes) bytes", offset: 0)
            }
            return .needMoreData
        }
        context.fireChannelRead(wrapInboundOut(request))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
