import KTFormats
import NIOCore
import NIOHTTP1
import NIOPosix
import QSNet

/// One answer of KT's HTTP RPC: the status code and the TSV columns (decoded).
public struct KTRPCAnswer: Sendable {
    public var status: Int
    public var columns: [[UInt8]: [UInt8]]

    public subscript(_ name: String) -> [UInt8]? { columns[Array(name.utf8)] }
    public func string(_ name: String) -> String? { self[name].map { String(decoding: $0, as: UTF8.self) } }
    /// KT's `ERROR` column, for messages.
    public var error: String { string("ERROR") ?? "status \(status)" }
}

/// One procedure call: its name and parameters (sent in column encoding B, base64).
public struct KTRPCCall: Sendable {
    public var procedure: String
    public var parameters: [(String, [UInt8])]

    public init(_ procedure: String, _ parameters: [(String, [UInt8])] = []) {
        self.procedure = procedure
        self.parameters = parameters
    }
}

/// A client of KT's HTTP RPC (`POST /rpc/NAME`, TSV bodies), as any KT client speaks it:
/// one keep-alive connection on which a page of calls is pipelined (all requests written,
/// then the answers read in order), so a cursor walk costs one round trip per page rather
/// than per record. ktserver and fakekt both answer pipelined requests in order.
public struct KTRPCClient: Sendable {
    public let host: String
    public let port: Int
    /// With no byte of an answer for this long, the connection is given up.
    public let timeout: Duration
    /// The largest answer accepted (a record's value plus its columns).
    public let maxAnswerBytes: Int

    public var name: String { "kt://\(host):\(port)" }

    public init(host: String, port: Int, timeout: Duration = .seconds(10), maxAnswerBytes: Int = 256 << 20) {
        self.host = host
        self.port = port
        self.timeout = timeout
        self.maxAnswerBytes = maxAnswerBytes
    }

    /// The connection `body` calls through; closed when `body` returns or throws.
    public func withConnection<T: Sendable>(_ body: (KTRPCConnection) async throws -> T) async throws -> T {
        let readTimeout = TimeAmount.nanoseconds(Int64(timeout.seconds * 1e9))
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try IdleTimeout.install(readTimeout: readTimeout, in: ops, error: KTRPCError.timeout)
                    try ops.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        let host = self.host, port = self.port, limit = maxAnswerBytes
        return try await channel.executeThenClose { inbound, outbound in
            let connection = KTRPCConnection(host: host, port: port, limit: limit, inbound: inbound.makeAsyncIterator(), outbound: outbound)
            return try await body(connection)
        }
    }
}

/// Why a KT RPC call failed (apart from an error status, which is an answer).
public enum KTRPCError: Error, CustomStringConvertible, Sendable {
    case timeout
    case closed
    case tooLarge(Int)
    case unexpected(String)

    public var description: String {
        switch self {
        case .timeout: return "no answer from KT's HTTP RPC within the source timeout"
        case .closed: return "KT closed the HTTP connection"
        case let .tooLarge(n): return "a KT answer larger than \(n) bytes"
        case let .unexpected(what): return "unexpected HTTP answer from KT: \(what)"
        }
    }
}

/// One open connection of `KTRPCClient`; used by one task at a time.
public final class KTRPCConnection {
    let host: String
    let port: Int
    let limit: Int
    var inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>

    init(host: String, port: Int, limit: Int, inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
         outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>) {
        self.host = host
        self.port = port
        self.limit = limit
        self.inbound = inbound
        self.outbound = outbound
    }

    /// One call.
    public func call(_ procedure: String, _ parameters: [(String, [UInt8])] = []) async throws -> KTRPCAnswer {
        try await pipeline([KTRPCCall(procedure, parameters)])[0]
    }

    /// Sends every call, then reads their answers in order.
    public func pipeline(_ calls: [KTRPCCall]) async throws -> [KTRPCAnswer] {
        var parts = [HTTPClientRequestPart]()
        parts.reserveCapacity(calls.count * 3)
        for c in calls {
            var body = [UInt8]()
            for (name, value) in c.parameters {
                body += KTColumnEncoding.base64.encode(Array(name.utf8)) + [9] + KTColumnEncoding.base64.encode(value) + [10]
            }
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/rpc/\(c.procedure)")
            head.headers.add(name: "Host", value: "\(host):\(port)")
            head.headers.add(name: "Content-Type", value: "\(KTTSV.mediaType); colenc=B")
            head.headers.add(name: "Content-Length", value: String(body.count))
            parts.append(.head(head))
            if !body.isEmpty { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
        }
        try await outbound.write(contentsOf: parts)
        var answers = [KTRPCAnswer]()
        answers.reserveCapacity(calls.count)
        while answers.count < calls.count { answers.append(try await readAnswer()) }
        return answers
    }

    private func readAnswer() async throws -> KTRPCAnswer {
        var status = 0
        var contentType = ""
        var body = [UInt8]()
        while let part = try await inbound.next() {
            switch part {
            case let .head(h):
                status = Int(h.status.code)
                contentType = h.headers.first(name: "Content-Type") ?? ""
            case let .body(buffer):
                guard body.count + buffer.readableBytes <= limit else { throw KTRPCError.tooLarge(limit) }
                body += buffer.readableBytesView
            case .end:
                guard status != 0 else { throw KTRPCError.unexpected("an answer without a status line") }
                var columns = [[UInt8]: [UInt8]]()
                if case let .tsv(encoding) = KTTSV.bodyKind(contentType: contentType) {
                    for (name, value) in KTTSV.parse(body, encoding: encoding) { columns[name] = value }
                }
                return KTRPCAnswer(status: status, columns: columns)
            }
        }
        throw KTRPCError.closed
    }
}
