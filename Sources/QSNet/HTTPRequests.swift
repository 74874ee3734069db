import NIOCore
import NIOHTTP1

/// The request loop of an HTTP connection served as an async sequence (the KT read port,
/// qsrest): requests in order, each body gathered up to `maxBodyBytes`, each marked in
/// flight on `drain` from its head to its answer (graceful shutdown closes the connection
/// after it). A body over the limit is answered by `tooLarge` and the connection closed;
/// otherwise `answer` writes the reply (`true`: keep the connection open).
///
/// `refuse` sees each request's head before its body: when it answers (and returns true),
/// the body is read and dropped, not gathered, and the connection closes after it. So is a
/// body whose `Content-Length` is over the limit, answered by `tooLarge` at once: nothing
/// is held for a request that will be refused (qsrest: no credential, no buffered body).
///
/// `pending`: the budget a request's body is held against, asked of each request after
/// `refuse` has seen its head (the listener's connections together, or a producer's share
/// of that: `PendingBytes.parent`), from the body's arrival until `answer` returns: a body
/// that would pass it is answered by `overBudget` (told which budget refused) at once, the
/// rest of it dropped, and the connection closes. Without it, N connections each sending
/// an allowed body held N × `maxBodyBytes` (qsrest, 60 producers' connections and 30 MB
/// bodies: 1.75 GB).
public enum HTTPRequests {
    public static func serve(
        _ inbound: NIOAsyncChannelInboundStream<HTTPServerRequestPart>, maxBodyBytes: Int, drain: RequestDrain?,
        pending: (HTTPRequestHead) -> PendingBytes? = { _ in nil },
        refuse: (HTTPRequestHead) async throws -> Bool = { _ in false },
        tooLarge: (HTTPRequestHead) async throws -> Void,
        overBudget: (HTTPRequestHead, PendingBytes) async throws -> Void = { _, _ in },
        answer: (HTTPRequestHead, [UInt8]) async throws -> Bool
    ) async throws {
        var head: HTTPRequestHead?
        var body = ByteBuffer()
        var over = false
        /// This request was answered from its head; its body is dropped.
        var answered = false
        /// The budget of the request being read, and the bytes of `body` held against it.
        var budget: PendingBytes?
        var reserved = 0
        defer { budget?.release(reserved) }
        for try await part in inbound {
            switch part {
            case let .head(h):
                drain?.begin()
                head = h
                body.clearReleasingLargeStorage()
                over = false
                answered = false
                budget = nil
                if try await refuse(h) {
                    answered = true
                } else if let declared = h.headers.first(name: "content-length").flatMap(Int.init), declared > maxBodyBytes {
                    try await tooLarge(h)
                    answered = true
                } else {
                    budget = pending(h)
                }
            case var .body(chunk):
                if answered { continue }
                if body.readableBytes + chunk.readableBytes > maxBodyBytes {
                    over = true
                } else if !over {
                    if let b = budget {
                        if let refusedBy = b.take(chunk.readableBytes) {
                            // Answered now, not once the rest has come: the connection closes.
                            b.release(reserved)
                            reserved = 0
                            body.clearReleasingLargeStorage()
                            answered = true
                            if let h = head { try await overBudget(h, refusedBy) }
                            continue
                        }
                        reserved += chunk.readableBytes
                    }
                    body.writeBuffer(&chunk)
                }
            case .end:
                guard let h = head else { continue }
                head = nil
                if answered {
                    drain?.end()
                    return
                }
                if over {
                    try await tooLarge(h)
                    return
                }
                drain?.answering()
                let bytes = Array(body.readableBytesView)
                body.clearReleasingLargeStorage()
                let keepAlive = try await answer(h, bytes)
                // Parsed and queued (the queue holds its writes against its own budget).
                budget?.release(reserved)
                reserved = 0
                drain?.end()
                if !keepAlive { return }
            }
        }
    }
}
