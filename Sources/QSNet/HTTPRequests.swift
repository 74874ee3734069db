import NIOCore
import NIOHTTP1

/// The request loop of an HTTP connection served as an async sequence (the KT read port,
/// qsrest): requests in order, each body gathered up to `maxBodyBytes`, each marked in
/// flight on `drain` from its head to its answer (graceful shutdown closes the connection
/// after it). A body over the limit is answered by `tooLarge` and the connection closed;
/// otherwise `answer` writes the reply (`true`: keep the connection open).
public enum HTTPRequests {
    public static func serve(
        _ inbound: NIOAsyncChannelInboundStream<HTTPServerRequestPart>, maxBodyBytes: Int, drain: RequestDrain?,
        tooLarge: (HTTPRequestHead) async throws -> Void,
        answer: (HTTPRequestHead, [UInt8]) async throws -> Bool
    ) async throws {
        var head: HTTPRequestHead?
        var body = ByteBuffer()
        var over = false
        for try await part in inbound {
            switch part {
            case let .head(h):
                drain?.begin()
                head = h
                body.clear()
                over = false
            case var .body(chunk):
                if body.readableBytes + chunk.readableBytes > maxBodyBytes {
                    over = true
                } else if !over {
                    body.writeBuffer(&chunk)
                }
            case .end:
                guard let h = head else { continue }
                head = nil
                if over {
                    try await tooLarge(h)
                    return
                }
                let keepAlive = try await answer(h, Array(body.readableBytesView))
                drain?.end()
                if !keepAlive { return }
            }
        }
    }
}
