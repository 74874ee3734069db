import Foundation
import KTFormats
import NIOCore
import NIOHTTP1
import NIOPosix
import QSModel
import QSNet

/// What a request asks, from its head and body to the writes it queues (`prepare`), and
/// its answer once they are committed or not (`conclude`): one connection's loop
/// (`RequestHandler.serve`) calls these for each request.
extension RequestHandler {
    /// The credential a request carries: Basic `user:token` or Bearer `token`.
    static func credential(_ headers: HTTPHeaders) -> (user: String?, token: [UInt8])? {
        guard let value = headers.first(name: "authorization") else { return nil }
        let parts = value.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        let scheme = parts[0].lowercased(), rest = parts[1].trimmingCharacters(in: .whitespaces)
        if scheme == "bearer" { return (nil, Array(rest.utf8)) }
        guard scheme == "basic", let decoded = Data(base64Encoded: rest) else { return nil }
        let bytes = Array(decoded)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        return (String(decoding: bytes[..<colon], as: UTF8.self), Array(bytes[(colon + 1)...]))
    }

    /// A request's refusal for want of a valid credential (counted and logged once).
    struct Refusal: Error {
        let reply: RestReply
    }

    /// The producer a request's head names with a valid credential, or its 401.
    func authenticate(_ head: HTTPRequestHead, peer: String) -> Result<ACL.Producer, Refusal> {
        let credential = Self.credential(head.headers)
        guard let (user, token) = credential, let producer = access.authenticate(user: user, token: token) else {
            metrics.authFailures.increment()
            authLog.warning(logger, "request refused: no valid producer credential", peer: peer,
                            metadata: ["user": "\(credential?.user ?? "-")", "credential": "\(credential == nil ? "missing" : "refused")"])
            let why = credential == nil ? "a producer's credential is needed" : "the producer's credential is not accepted (unknown producer or wrong token)"
            return .failure(Refusal(reply: .text(401, "\(why): HTTP Basic producer:token or Authorization: Bearer token, as in the ACL (token_sha256 is the SHA-256 of the token)",
                                                 headers: [("WWW-Authenticate", "Basic realm=\"qsrest\"")])))
        }
        return .success(producer)
    }

    /// What a request comes to before the root: an answer now, or writes to queue.
    enum Prepared {
        case reply(RestReply)
        case writes(PreparedWrites)
    }

    /// A request's writes, checked (credential, keyspace, quota), to queue; `conclude`
    /// makes the answer from what the queue answered.
    struct PreparedWrites: Sendable {
        let list: [ConditionalWrite]
        let bytes: Int
        let procedure: String
        let producer: String
        let peer: String
        let start: ContinuousClock.Instant
        let reply: @Sendable (WriteQueue.Answer) -> RestReply
    }

    /// Checks a whole request (credential, procedure, keyspace, quota: a request past its
    /// soft quota waits here) and says what it comes to.
    /// The memory a parse of an RPC request builds, at most: its map
    /// (`KTRPCParameters.parseBytes`) and a write for each entry (`ConditionalWrite.heldBytes`).
    /// Measured (release build, qsrest's peak RSS): a 30 MB `set_bulk` of 2.5 M short
    /// records took 813 MB before the parse was streamed, 686 MB after (about 250 bytes a
    /// record beyond the body, the batch sent to the root included); this estimates 730 MB.
    static func parseBytes(query: ArraySlice<UInt8>?, contentType: String?, body: [UInt8]) -> (entries: Int, bytes: Int) {
        let (entries, bytes) = KTRPCParameters.parseBytes(query: query, contentType: contentType, body: body)
        // Each write's key is the database's prefix and a copy of the record's name: the
        // body's bytes once more at most.
        return (entries, bytes + entries * ConditionalWrite.heldOverhead + body.count)
    }
    static let parseBytesPerEntry = KTRPCParameters.parseBytesPerEntry + ConditionalWrite.heldOverhead

    /// `budget`: what the request's body was held against as it arrived (its producer's
    /// share of the arriving bytes); its parse is held against it too while it runs.
    func prepare(_ head: HTTPRequestHead, body: [UInt8], peer: String, budget: PendingBytes?) async -> Prepared {
        let start = ContinuousClock.now
        let producer: ACL.Producer
        switch authenticate(head, peer: peer) {
        case let .success(p): producer = p
        case let .failure(refusal): return .reply(refusal.reply)  // the ACL changed since the head (a reload)
        }
        let m = metrics.producer(producer.name)
        m.requests.increment()
        let uri = Array(head.uri.utf8)[...]
        let q = uri.firstIndex(of: UInt8(ascii: "?"))
        let path = q.map { uri[..<$0] } ?? uri
        let query = q.map { uri[uri.index(after: $0)...] }
        let rpcPrefix = Array("/rpc/".utf8)
        let writes = self.writes
        let parse: @Sendable () -> KTWriteRequest = {
            if path.starts(with: rpcPrefix) {
                let name = String(decoding: KTColumnEncoding.urlDecode(path.dropFirst(rpcPrefix.count)), as: UTF8.self)
                return writes.rpc(name, KTRPCParameters(query: query, contentType: head.headers.first(name: "content-type"), body: body))
            }
            return writes.rest(method: head.method.rawValue, path: path, body: body,
                               mode: head.headers.first(name: "x-kt-mode"), xtHeader: head.headers.first(name: "x-kt-xt"))
        }
        // What the parse will build, held against the arriving budget while it is built: a
        // body of short lines builds ~20 times its bytes (30 MB of 2.5 M records: 650 MB),
        // which the budget's count of the body's bytes did not show. Refused like a body
        // that would pass the budget (503, try again), or as too large when it never fits.
        var held = 0
        defer { budget?.release(held) }
        if path.starts(with: rpcPrefix), let budget {
            let (entries, need) = Self.parseBytes(query: query, contentType: head.headers.first(name: "content-type"), body: body)
            let most = min(budget.limit, budget.parent?.limit ?? .max)
            // The body's own bytes are held against the same budget until the request is queued.
            if need + body.count > most {
                metrics.arrivingRefused.increment()
                arrivingLog.log(logger, .warning, "request refused: its parse would build more than the arriving budget holds", budget: "parse of \(producer.name)",
                                metadata: ["peer": "\(peer)", "producer": "\(producer.name)", "entries": "\(entries)", "parse-bytes": "\(need)", "limit-bytes": "\(most)"])
                let fits = max(1, (most - 2 * body.count) / Self.parseBytesPerEntry)
                return .reply(.error(413, "a request of \(entries) lines or fields would build about \(need >> 20) MiB to parse, more than producer \(producer.name)'s share of the arriving bytes (\(most >> 20) MiB, --max-arriving-bytes-per-producer, --max-arriving-bytes) holds; send fewer records a request (about \(fits) would fit); nothing of this request was written"))
            }
            if let refusedBy = budget.take(need) {
                metrics.arrivingRefused.increment()
                let what = refusedBy.parent == nil ? "the bodies arriving and being parsed on all connections hold all of --max-arriving-bytes"
                    : "the producer's bodies arriving and being parsed hold all of its share, --max-arriving-bytes-per-producer"
                arrivingLog.log(logger, .warning, "request refused: \(what)", budget: refusedBy.parent == nil ? "arriving bytes" : "arriving bytes of \(producer.name)",
                                metadata: ["peer": "\(peer)", "producer": "\(producer.name)", "limit-bytes": "\(refusedBy.limit)", "before": "parse"])
                return .reply(RestReply.error(503, "\(what); nothing of this request was written: try again").adding(("Retry-After", "1")))
            }
            held = need
        }
        // A bulk request with more records than the producer's quota lets one request have
        // is refused before its parse (about 27 bytes built per body byte): counted in one
        // pass, as an upper bound.
        if path.starts(with: rpcPrefix), body.count >= Self.offloadedBodyBytes,
           case let records = KTRPCParameters.recordBound(contentType: head.headers.first(name: "content-type"), body: body),
           let why = access.neverFits(producer: producer.name, writes: records) {
            m.refusedQuota.increment()
            quotaLog.log(logger, .notice, "write refused: larger than the quota allows one request", budget: "fits \(producer.name)",
                         metadata: ["peer": "\(peer)", "producer": "\(producer.name)", "reason": "\(why)", "before": "parse"])
            return .reply(.error(413, "producer \(producer.name)'s quota: \(why) (its records counted before it was parsed); nothing of this request was written"))
        }
        // A large body is parsed on NIO's thread pool, not on the tasks' executor: two
        // set_bulks of a million records at once held both of Swift's cooperative threads
        // for their parse, and every other producer's request waited (a set: 14.6 s).
        let request: KTWriteRequest
        if body.count >= Self.offloadedBodyBytes, let parsed = try? await NIOThreadPool.singleton.runIfActive(parse) {
            request = parsed
        } else {
            request = parse()
        }
        switch request {
        case let .immediate(reply, procedure, bad):
            if let bad {
                metrics.badRequests.increment()
                badLog.warning(logger, "bad request", peer: peer, metadata: ["producer": "\(producer.name)", "procedure": "\(procedure)", "reason": "\(bad)"])
            }
            return .reply(reply)
        case let .writes(list, procedure, reply):
            if let outside = list.first(where: { !producer.may(write: $0.key) }) {
                m.refusedKeyspace.increment()
                let key = String(decoding: outside.key.prefix(200), as: UTF8.self)
                let allowed = producer.prefixes.map { String(decoding: $0, as: UTF8.self) }.joined(separator: ", ")
                keyspaceLog.warning(logger, "write refused: outside the producer's keyspace", peer: peer,
                                metadata: ["producer": "\(producer.name)", "procedure": "\(procedure)", "key": "\(key)"])
                return .reply(.error(403, "key '\(key)' is outside producer \(producer.name)'s keyspace (\(allowed)); nothing of this request was written"))
            }
            let bytes = list.reduce(0) { $0 + $1.payloadBytes }
            switch access.take(producer: producer.name, writes: max(list.count, 1), bytes: bytes) {
            case .pass: break
            case let .delay(d):
                m.delayed.increment()
                try? await Task.sleep(for: d)
            case let .refuse(after):
                m.refusedQuota.increment()
                quotaLog.log(logger, .notice, "write refused: over quota", budget: "over \(producer.name)",
                             metadata: ["peer": "\(peer)", "producer": "\(producer.name)", "retry-after": "\(after)"])
                return .reply(.error(429, "producer \(producer.name) is over its quota (writes_per_second/bytes_per_second); retry after \(after) s")
                    .adding(("Retry-After", "\(after)")))
            case let .neverFits(why):
                m.refusedQuota.increment()
                quotaLog.log(logger, .notice, "write refused: larger than the quota allows one request", budget: "fits \(producer.name)",
                             metadata: ["peer": "\(peer)", "producer": "\(producer.name)", "reason": "\(why)"])
                return .reply(.error(413, "producer \(producer.name)'s quota: \(why); nothing of this request was written"))
            }
            return .writes(PreparedWrites(list: list, bytes: bytes, procedure: procedure, producer: producer.name, peer: peer, start: start, reply: reply))
        }
    }

    /// The answer to prepared writes from what the queue answered.
    func conclude(_ w: PreparedWrites, _ result: Result<WriteQueue.Answer, any Error>) -> RestReply {
        let m = metrics.producer(w.producer)
        let (producer, procedure, peer) = (w.producer, w.procedure, w.peer)
        do {
            let answer = try result.get()
            m.writes.increment(by: w.list.count)
            m.bytes.increment(by: w.bytes)
            m.latency.recordSeconds((ContinuousClock.now - w.start).seconds)
            return w.reply(answer)
        } catch WriteQueue.Refusal.busy {
            m.refusedQuota.increment()
            return .error(503, "\(WriteQueue.Refusal.busy)").adding(("Retry-After", "1"))
        } catch let refusal as WriteQueue.Refusal where refusal.isHalted {
            m.failed.increment()
            return .error(503, "\(refusal)")
        } catch let refusal as WriteQueue.Refusal where refusal.isTooLarge {
            m.failed.increment()
            return .error(413, "\(refusal); nothing was acknowledged")
        } catch let refusal as WriteQueue.Refusal where refusal.isNotCommitted {
            m.failed.increment()
            commitLog.log(logger, .error, "write not committed in time", budget: "not committed",
                          metadata: ["peer": "\(peer)", "producer": "\(producer)", "procedure": "\(procedure)", "error": "\(refusal)"])
            return .error(503, "\(refusal)").adding(("Retry-After", "1"))
        } catch {
            m.failed.increment()
            commitLog.log(logger, .error, "write failed", budget: "failed",
                          metadata: ["peer": "\(peer)", "producer": "\(producer)", "procedure": "\(procedure)", "error": "\(error)"])
            return .error(503, "\(error); nothing was acknowledged: retry").adding(("Retry-After", "1"))
        }
    }
}
