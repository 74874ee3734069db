import KTFormats
import NIOCore
import NIOHTTP1

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
}

/// Looks at the first byte a KT client sends and sets up the pipeline for HTTP or for the
/// binary protocol, then steps aside. A connection speaks one protocol for its lifetime.
final class KTProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    let promise: EventLoopPromise<KTConnection>
    let maxBinaryBytes: Int
    private var resolved = false

    init(promise: EventLoopPromise<KTConnection>, maxBinaryBytes: Int) {
        self.promise = promise
        self.maxBinaryBytes = maxBinaryBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard !resolved, let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        resolved = true
        do {
            let ops = context.pipeline.syncOperations
            let connection: KTConnection
            if first >= 0x80 {
                try ops.addHandler(ByteToMessageHandler(KTBinaryFrameDecoder(maxBytes: maxBinaryBytes)))
                connection = .binary(try NIOAsyncChannel(wrappingChannelSynchronously: context.channel))
            } else {
                try ops.configureHTTPServerPipeline(withErrorHandling: true)
                connection = .http(try NIOAsyncChannel(wrappingChannelSynchronously: context.channel))
            }
            promise.succeed(connection)
            context.fireChannelRead(data)
            ops.removeHandler(context: context, promise: nil)
        } catch {
            promise.fail(error)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !resolved {
            resolved = true
            promise.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
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
