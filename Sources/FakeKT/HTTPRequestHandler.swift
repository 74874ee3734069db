import Foundation
import KTFormats
import NIOCore
import NIOHTTP1

/// A whole HTTP request, as the procedures see it.
struct KTHTTPRequest {
    var method: HTTPMethod
    var uri: String
    var headers: HTTPHeaders
    var body: [UInt8]
}

/// A reply: status, extra headers (in order) and body.
struct KTHTTPResponse {
    var status: Int
    var headers: [(String, String)] = []
    var body: [UInt8] = []
    /// For HEAD: the length to announce without a body.
    var announcedLength: Int? = nil
}

/// Collects each HTTP request and answers it from the core; keeps the connection alive
/// unless the client asked otherwise.
final class HTTPRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    private let core: FakeKTCore
    private let connection: UInt64
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// Graceful shutdown has begun: the request in flight is answered, then the connection closes.
    private var quiescing = false

    init(core: FakeKTCore, connection: UInt64) {
        self.core = core
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
        case .body(var b):
            body += b.readBytes(length: b.readableBytes) ?? []
        case .end:
            guard let head else { return }
            self.head = nil
            let host = context.channel.localAddress.map { "\($0.ipAddress ?? "localhost"):\($0.port ?? 0)" } ?? "localhost"
            let request = KTHTTPRequest(method: head.method, uri: head.uri, headers: head.headers, body: body)
            let response = core.http(request, connection: connection, serverName: host,
                                     peer: context.channel.remoteAddress?.description ?? "?")
            write(response, keepAlive: head.isKeepAlive && !quiescing, method: head.method, context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        quiescing = true
        if head == nil { context.close(promise: nil) }
    }

    /// Serializes the reply the way KT does (NIO's encoder would drop the Content-Length
    /// KT sends with 204 replies).
    private func write(_ r: KTHTTPResponse, keepAlive: Bool, method: HTTPMethod, context: ChannelHandlerContext) {
        var text = "HTTP/1.1 \(r.status) \(KTHTTPStatus.reason(r.status))\r\n"
        text += "Server: KyotoTycoon/\(FakeKTCore.version)\r\n"
        text += "Date: \(HTTPDate.format(Date()))\r\n"
        if !keepAlive { text += "Connection: close\r\n" }
        for (n, v) in r.headers { text += "\(n): \(v)\r\n" }
        text += "Content-Length: \(r.announcedLength ?? r.body.count)\r\n\r\n"
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count + r.body.count)
        buffer.writeString(text)
        if method != .HEAD { buffer.writeBytes(r.body) }
        let written = context.writeAndFlush(wrapOutboundOut(buffer))
        if !keepAlive {
            written.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        core.withStore { $0.closeCursors(connection: connection) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        core.reportMalformed("http: \(error)", peer: context.channel.remoteAddress?.description ?? "?")
        let body = "400 Bad Request (malformed request)\n"
        let text = "HTTP/1.1 400 Bad Request\r\nServer: KyotoTycoon/\(FakeKTCore.version)\r\nDate: \(HTTPDate.format(Date()))\r\n"
            + "Connection: close\r\nContent-Length: \(body.utf8.count)\r\nContent-Type: text/plain\r\n\r\n" + body
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: text)))
            .whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }
}

/// HTTP dates as KT writes them.
enum HTTPDate {
    static func format(_ date: Date) -> String {
        format(epochSeconds: Int64(date.timeIntervalSince1970))
    }

    static func format(epochSeconds: Int64) -> String {
        var t = time_t(epochSeconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(days[Int(tm.tm_wday) % 7]), \(two(tm.tm_mday)) \(months[Int(tm.tm_mon) % 12]) \(tm.tm_year + 1900) \(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)) GMT"
    }
}
