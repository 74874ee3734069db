import NIOCore
import NIOHTTP1
import NIOPosix

/// One HTTP/1.1 exchange with an etcd member's JSON gateway: a POST with a JSON body, the
/// answer's status and body delivered as it arrives (a watch is an answer that does not end).
enum EtcdHTTP {
    typealias Channel = NIOAsyncChannel<EtcdResponsePart, HTTPClientRequestPart>

    /// Connects to `host:port` (refused or unreachable: throws before anything was sent).
    static func connect(host: String, port: Int, timeout: TimeAmount) async throws -> Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(EtcdResponseParts())
                    return try Channel(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Sends one POST of `body` to `path` and calls `onBody` with each piece of the answer's
    /// body; returns the status once the answer ends (or `onBody` returns false).
    /// `authorization`: the token etcd gave for the client's credentials.
    /// `notSent`: what to throw when the connection closed before the request left
    /// (default `NotSent`).
    static func post(_ channel: Channel, host: String, path: String, body: [UInt8], authorization: String?,
                     notSent: @Sendable (NotSent) -> any Error = { $0 },
                     onBody: (ByteBuffer) async throws -> Bool) async throws -> HTTPResponseStatus {
        try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
            head.headers.add(name: "Host", value: host)
            if let authorization { head.headers.add(name: "Authorization", value: authorization) }
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: "\(body.count)")
            head.headers.add(name: "Connection", value: "close")
            do {
                try await outbound.write(.head(head))
                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
            } catch {
                // The connection closed before the whole request left: etcd has not got it.
                throw notSent(NotSent(underlying: error))
            }
            try await outbound.write(.end(nil))
            var status = HTTPResponseStatus.ok
            for try await part in inbound {
                switch part {
                case let .status(code): status = HTTPResponseStatus(statusCode: code)
                case let .body(b): if try await !onBody(b) { return status }
                case .end: return status
                }
            }
            throw EtcdError.connectionLost("the answer ended before it was complete")
        }
    }
}

/// A request whose connection closed before all of it was written (a member closing or
/// dying just after accepting): etcd cannot have executed it, so it may go again.
struct NotSent: Error, CustomStringConvertible {
    let underlying: any Error
    var description: String { "the connection closed before the request was sent: \(underlying)" }
}

/// An answer's parts as they cross from the event loop to the reading task: the head is
/// reduced to its status code on the event loop. An `HTTPResponseHead` would carry heap
/// storage written there, and a value resumed into the reader's continuation before it
/// reaches its await crosses with no order ThreadSanitizer sees (docs/reliability.md,
/// "Continuations"); a bare code has nothing to race on.
enum EtcdResponsePart: Sendable {
    case status(Int)
    case body(ByteBuffer)
    case end
}

/// Turns NIO's response parts into `EtcdResponsePart`s, on the event loop.
final class EtcdResponseParts: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = EtcdResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head): context.fireChannelRead(wrapInboundOut(.status(Int(head.status.code))))
        case let .body(body): context.fireChannelRead(wrapInboundOut(.body(body)))
        case .end: context.fireChannelRead(wrapInboundOut(.end))
        }
    }
}
