import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import QSNet
import ServiceLifecycle

/// What `/readyz` reports: ready or not, and why.
public struct Readiness: Sendable {
    public var ready: Bool
    public var detail: String

    public init(ready: Bool, detail: String) {
        self.ready = ready
        self.detail = detail
    }
}

/// An admin operation behind `POST /PATH`: takes the request body, answers whether it
/// worked and a message.
public typealias AdminAction = @Sendable (_ body: String) -> (ok: Bool, message: String)

/// A report behind `GET /PATH` that takes a while to make (a scan): runs off the event
/// loop, takes the query string (after `?`, empty without one) and answers a status, a
/// content type and a body. Gated like the actions.
public typealias AdminReport = @Sendable (_ query: String) async -> (status: Int, contentType: String, body: String)

/// The admin HTTP server: `/healthz` (the process is up), `/readyz` (the daemon's own
/// check), `/metrics` (Prometheus text) and the daemon's `POST` actions, which need
/// `Authorization: Bearer TOKEN` when `actionGate` holds a token (401 otherwise), as do
/// its `GET` reports (`reports`, e.g. qsrest's `/usage`).
/// `beforeScrape` runs right before `/metrics` is rendered, so gauges that depend on the
/// clock (lag, ages, connected) are recorded from the present rather than from the last event.
public struct AdminServer: ListeningService {
    public let listener: Listener
    let registry: PrometheusCollectorRegistry
    let readiness: @Sendable () -> Readiness
    let actions: [String: AdminAction]
    let reports: [String: AdminReport]
    let actionGate: TokenGate?
    let beforeScrape: @Sendable () -> Void
    let logger: Logger

    public init(endpoint: Endpoint, registry: PrometheusCollectorRegistry, logger: Logger,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, limits: ConnectionLimits = ConnectionLimits(),
                actions: [String: AdminAction] = [:], reports: [String: AdminReport] = [:], actionGate: TokenGate? = nil,
                beforeScrape: @escaping @Sendable () -> Void = {},
                readiness: @escaping @Sendable () -> Readiness = { Readiness(ready: true, detail: "ok") }) {
        self.registry = registry
        self.readiness = readiness
        self.actions = actions
        self.reports = reports
        self.actionGate = actionGate
        self.beforeScrape = beforeScrape
        self.logger = logger
        // NIO's HTTP server pipeline drains on the listener's quiesce event: an idle
        // connection closes, a request in flight gets its answer first.
        listener = Listener(name: "admin", endpoints: [endpoint], drain: .pipeline, limits: limits, group: group, logger: logger)
    }

    public func run() async throws {
        let registry = self.registry
        let readiness = self.readiness
        let actions = self.actions
        let reports = self.reports
        let gate = self.actionGate
        let beforeScrape = self.beforeScrape, logger = self.logger
        try await listener.run { channel in
            try channel.pipeline.syncOperations.configureHTTPServerPipeline()
            try channel.pipeline.syncOperations.addHandler(AdminHandler(registry: registry, readiness: readiness, actions: actions, reports: reports, gate: gate,
                                                                        beforeScrape: beforeScrape, logger: logger))
        }
    }
}

final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    let readiness: @Sendable () -> Readiness
    let actions: [String: AdminAction]
    let reports: [String: AdminReport]
    let gate: TokenGate?
    let beforeScrape: @Sendable () -> Void
    let logger: Logger
    private var head: HTTPRequestHead?
    private var requestBody = [UInt8]()
    /// A whole request not answered yet because the peer had not taken the answers before
    /// it: answered when the channel is writable again. NIO's pipeline handler gives the
    /// next request only after this one's answer and reads nothing meanwhile, so a peer
    /// that pipelines `GET /metrics` and reads nothing costs the answers past the
    /// high-water mark, not one a request (one connection took a node to 7.7 GB in 20 s).
    private var waiting: HTTPRequestHead?
    static let maxBody = 64 << 10
    static let browserLog = RateLimitedLog(window: .seconds(10))

    init(registry: PrometheusCollectorRegistry, readiness: @escaping @Sendable () -> Readiness, actions: [String: AdminAction],
         reports: [String: AdminReport] = [:], gate: TokenGate?, beforeScrape: @escaping @Sendable () -> Void, logger: Logger) {
        self.logger = logger
        self.registry = registry
        self.readiness = readiness
        self.actions = actions
        self.reports = reports
        self.gate = gate
        self.beforeScrape = beforeScrape
    }

    /// The token of an `Authorization: Bearer TOKEN` header, empty when there is none.
    static func bearer(_ headers: HTTPHeaders) -> [UInt8] {
        guard let value = headers.first(name: "Authorization") else { return [] }
        let parts = value.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return [] }
        var token = Array(parts[1].utf8)
        while let last = token.last, last == 32 || last == 9 { token.removeLast() }
        return token
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(h):
            head = h
            requestBody = []
        case var .body(buffer):
            if requestBody.count + buffer.readableBytes <= Self.maxBody, let bytes = buffer.readBytes(length: buffer.readableBytes) {
                requestBody += bytes
            }
        case .end:
            if let head {
                if context.channel.isWritable {
                    respond(context: context, head)
                } else {
                    waiting = head
                }
            }
            head = nil
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let h = waiting {
            waiting = nil
            respond(context: context, h)
        }
        context.fireChannelWritabilityChanged()
    }

    private func respond(context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let (status, type, body): (HTTPResponseStatus, String, [UInt8])
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts.first.map(String.init) ?? head.uri
        switch (head.method, path) {
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            (status, type, body) = (.ok, "text/plain", Array("ok\n".utf8))
        case (.GET, "/readyz"), (.HEAD, "/readyz"):
            let r = readiness()
            (status, type, body) = (r.ready ? .ok : .serviceUnavailable, "text/plain", Array((r.detail + "\n").utf8))
        case (.GET, "/metrics"):
            beforeScrape()
            (status, type, body) = (.ok, "text/plain; version=0.0.4", registry.emitToBuffer())
        case let (.POST, p) where actions[p] != nil, let (.GET, p) where reports[p] != nil:
            let peer = context.remoteAddress?.peerDescription ?? "unknown"
            // A browser's request (it names its page's origin): a page the operator opens
            // must not reach a node's actions, token or none (a cross-origin POST of text
            // needs no consent from the server). qsctl and curl send no Origin.
            if let origin = head.headers.first(name: "origin") ?? head.headers.first(name: "sec-fetch-site") {
                Self.browserLog.warning(logger, "admin request from a browser refused", peer: peer, metadata: ["path": "\(p)", "origin": "\(origin)"])
                (status, type, body) = (.forbidden, "text/plain", Array("refused: a browser's request (Origin or Sec-Fetch-Site: \(origin)); admin actions and reports take requests from qsctl or curl only\n".utf8))
                break
            }
            if let refusal = gate?.check(Self.bearer(head.headers), peer: peer) {
                (status, type, body) = (.unauthorized, "text/plain", Array((refusal + ", as 'Authorization: Bearer TOKEN'\n").utf8))
                break
            }
            if let action = actions[p], head.method == .POST {
                let r = action(String(decoding: requestBody, as: UTF8.self))
                logger.notice("admin action", metadata: ["path": "\(p)", "peer": "\(peer)", "ok": "\(r.ok)", "answer": "\(r.message)"])
                (status, type, body) = (r.ok ? .ok : .badRequest, "text/plain", Array((r.message + "\n").utf8))
                break
            }
            guard let report = reports[p] else { return }
            // Made on Swift's pool, answered on the connection's event loop: NIO's HTTP
            // pipeline holds the connection's next request until this answer's end.
            let query = parts.count > 1 ? String(parts[1]) : ""
            let promise = context.eventLoop.makePromise(of: (status: Int, contentType: String, body: String).self)
            promise.completeWithTask { await report(query) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { r in
                let (handler, context) = bound.value
                handler.send(context: context, head, status: HTTPResponseStatus(statusCode: r.status), type: r.contentType,
                             body: Array(r.body.utf8))
            }
            return
        default:
            let more = reports.keys.sorted().map { ", GET \($0)" }.joined()
            (status, type, body) = (.notFound, "text/plain", Array("not found: try /healthz, /readyz or /metrics\(more)\n".utf8))
        }
        send(context: context, head, status: status, type: type, body: body)
    }

    private func send(context: ChannelHandlerContext, _ head: HTTPRequestHead, status: HTTPResponseStatus, type: String, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: String(body.count))
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        }
        let keepAlive = head.isKeepAlive
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
