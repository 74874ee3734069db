import Foundation
import KTFormats
import NIOCore
import QSCaptures
import QSModel
import QSWire

/// The seed corpus of every target, built from the recorded fixtures (`Fixtures/kt/*`:
/// a KT replication stream, ulog files, RPC and memcached transcripts) and from the QS
/// encoders over the same changes. Each seed is at most `FuzzTarget.maxInputBytes` long.
struct Seeds {
    let fixtures: String
    private var seeds: [FuzzTarget: [[UInt8]]] = [:]

    struct Missing: Error, CustomStringConvertible {
        let path: String
        var description: String { "no recorded fixtures under \(path): pass the Fixtures directory of the repository" }
    }

    init(fixtures: String) throws {
        self.fixtures = fixtures
        let ktDir = fixtures + "/kt"
        let sets = ((try? FileManager.default.contentsOfDirectory(atPath: ktDir)) ?? []).sorted().map { ktDir + "/" + $0 }
        guard !sets.isEmpty else { throw Missing(path: ktDir) }
        var messages: [KTUpdateMessage] = []
        for dir in sets {
            messages += kt(stream: dir + "/stream.bin")
            ulogs(dir + "/ulog")
            rpc(dir + "/rpc.jsonl")
            memcached(dir + "/memcached.jsonl")
        }
        updates(messages)
        qs(messages)
        times()
    }

    /// `X-Kt-Xt` texts of every form KT reads, and numbers at the edges of 64 bits.
    private mutating func times() {
        for text in ["1700000000", "30", "5m", "1d", "0x6553F100", "2026-12-05T10:00:00+09:00", "2026-12-05", "2026/12/05 10:00:00",
                     "Sat, 05 Dec 2026 10:00:00 GMT", "05 Dec 2026 10:00:00 +0900", "Sat, 05 Dec 2026 10:00:00 PST",
                     "2026-9223372036854775808", "-9223372036854775808-12-05T10:00:00", "2026-12-05T10:00:00-99:99",
                     "9223372036854775807d", "05 Dec -9223372036854775808 10:00:00"] {
            add(.ktTime, Array(text.utf8))
        }
    }

    func write(to out: String) throws -> [(FuzzTarget, Int)] {
        var counts: [(FuzzTarget, Int)] = []
        for target in FuzzTarget.allCases {
            let dir = out + "/" + target.rawValue
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let list = seeds[target] ?? []
            for (i, seed) in list.enumerated() {
                try Data(seed).write(to: URL(fileURLWithPath: dir + String(format: "/seed-%04d", i)))
            }
            counts.append((target, list.count))
        }
        return counts
    }

    private mutating func add(_ target: FuzzTarget, _ bytes: [UInt8]) {
        guard bytes.count <= FuzzTarget.maxInputBytes, !(seeds[target] ?? []).contains(bytes) else { return }
        seeds[target, default: []].append(bytes)
    }

    private func read(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { [UInt8]($0) }
    }

    /// Frames of a recorded replication stream: its opening (acceptance and the first
    /// frames) and runs of frames from its middle; returns the update messages.
    private mutating func kt(stream path: String) -> [KTUpdateMessage] {
        guard let bytes = read(path) else { return [] }
        let frames = decodeStream(ReplicationFrameDecoder(), bytes, chunk: 0).messages
        let encoded = frames.map { $0.encoded() }
        for start in stride(from: 0, to: encoded.count, by: max(1, encoded.count / 16)) {
            var run: [UInt8] = []
            for e in encoded[start...] {
                if run.count + e.count > 1024 { break }
                run += e
            }
            add(.ktReplication, run)
            add(.capture, run)
        }
        add(.ktReplication, ReplicationFrame.heartbeat(timestamp: 1_700_000_000_000_000_000).encoded())
        add(.ktReplication, ReplicationFrame.refused.encoded())
        return frames.compactMap { frame in
            guard case let .update(_, message) = frame, !message.isEmpty else { return nil }
            return try? KTUpdateMessage(decoding: message)
        }
    }

    /// The header and first records of each ulog file.
    private mutating func ulogs(_ dir: String) {
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
            guard let bytes = read(dir + "/" + name), let contents = try? ULogFile.parse(bytes) else { continue }
            var records: [ULogFile.Record] = []
            for r in contents.records {
                if ULogFile.encode(records: records + [r]).count > 2048 { break }
                records.append(r)
            }
            add(.ulog, ULogFile.encode(records: records, timestamp: contents.header.timestamp))
        }
    }

    /// Each recorded RPC request as the kt-http target reads it: Content-Type, query, body.
    private mutating func rpc(_ path: String) {
        for object in jsonLines(path) {
            guard let request = object["request"] as? [String: Any] else { continue }
            let headers = request["headers"] as? [String: String] ?? [:]
            let path = request["path"] as? String ?? ""
            let query = path.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            let body = (request["body_b64"] as? String).flatMap { Data(base64Encoded: $0) } ?? Data()
            add(.ktHTTP, Array("\(headers["Content-Type"] ?? "")\n\(query)\n".utf8) + [UInt8](body))
            // The whole request as it came on the socket, and as the fast path's GET.
            let method = request["method"] as? String ?? "GET"
            var head = "\(method) \(path) HTTP/1.1\r\nHost: kt\r\n"
            for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
            if !body.isEmpty { head += "Content-Length: \(body.count)\r\n" }
            add(.ktHTTPRequest, Array((head + "\r\n").utf8) + [UInt8](body))
            add(.ktHTTPRequest, Array("GET \(path) HTTP/1.1\r\nConnection: close\r\n\r\nHEAD \(path) HTTP/1.0\r\n\r\n".utf8))
        }
    }

    /// Each recorded memcached request, alone and all of them in one stream.
    private mutating func memcached(_ path: String) {
        var all: [UInt8] = []
        for object in jsonLines(path) {
            guard let b64 = object["request_b64"] as? String, let bytes = Data(base64Encoded: b64) else { continue }
            add(.memcached, [UInt8](bytes))
            all += bytes
        }
        add(.memcached, all)
    }

    private func jsonLines(_ path: String) -> [[String: Any]] {
        guard let text = read(path) else { return [] }
        return text.split(separator: 0x0A).compactMap { try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any] }
    }

    /// Update messages of every kind, and the binary protocol's requests and replies over them.
    private mutating func updates(_ messages: [KTUpdateMessage]) {
        var kinds: Set<String> = []
        for m in messages.prefix(2000) {
            let kind: String
            switch m.operation {
            case .set: kind = "set\(m.db)"
            case .remove: kind = "remove\(m.db)"
            case .clear: kind = "clear\(m.db)"
            }
            if kinds.insert(kind).inserted || seeds[.ktUpdate, default: []].count < 32 { add(.ktUpdate, m.encoded()) }
        }
        add(.ktUpdate, KTUpdateMessage(sid: 1, db: 0, operation: .clear).encoded())
        var records: [KTBinaryRecord] = [], keys: [KTBinaryKey] = []
        for m in messages.prefix(8) {
            if case let .set(key, value, xt) = m.operation {
                records.append(KTBinaryRecord(db: m.db, key: key, value: value, expiration: xt))
                keys.append(KTBinaryKey(db: m.db, key: key))
            }
        }
        let pairs = records.map { KTPair(key: $0.key, value: $0.value) }
        let requests: [KTBinaryRequest] = [
            .setBulk(flags: 0, records: records), .setBulk(flags: KTBinaryMagic.noReplyFlag, records: Array(records.prefix(1))),
            .removeBulk(flags: 0, keys: keys), .getBulk(flags: 0, keys: keys),
            .playScript(flags: 0, name: Array("echo".utf8), arguments: pairs),
            .replication(ReplicationRequest(timestamp: 0, sid: 9)),
        ]
        for r in requests { add(.ktBinaryRequest, r.encoded()) }
        add(.ktBinaryRequest, requests.flatMap { $0.encoded() })
        let replies: [KTBinaryResponse] = [.setBulk(hits: 3), .removeBulk(hits: 1), .getBulk(records: records), .playScript(results: pairs), .error]
        for r in replies { add(.ktBinaryResponse, r.encoded()) }
    }

    /// Log entries over the recorded changes, and every QS request and response around them.
    private mutating func qs(_ messages: [KTUpdateMessage]) {
        let ops: [Mutation] = messages.prefix(64).map { m in
            switch m.operation {
            case let .set(key, value, xt): return .set(key: key, value: value, expiry: xt >= KTExpiration.never ? nil : UInt64(xt))
            case let .remove(key): return .delete(key: key)
            case .clear: return .clearPrefix([])
            }
        }
        var stored: [StoredEntry] = []
        var hash = [UInt8](repeating: 0, count: 32)
        for (i, chunk) in stride(from: 0, to: ops.count, by: 4).enumerated() {
            let entry = LogEntry(commitTimeNs: 1_700_000_000_000_000_000 + UInt64(i), origin: Origin(sourceID: "kt:basic", position: UInt64(i + 1)),
                                 operations: Array(ops[chunk..<min(ops.count, chunk + 4)]))
            let bytes = entry.encoded()
            add(.logEntry, bytes)
            hash = ChainHash.next(previous: hash, entry: bytes)
            stored.append(StoredEntry(index: UInt64(i + 1), hash: hash, bytes: bytes))
        }
        // A source's descriptor (version 3) and an initial copy's batch (version 2).
        add(.logEntry, LogEntry(commitTimeNs: 1_700_000_000_000_000_000, origin: Origin(sourceID: "kt:basic", position: 0),
                                descriptor: "db-map 0=,1=aux/").encoded())
        add(.logEntry, LogEntry(commitTimeNs: 1_700_000_000_000_000_000, origin: Origin(sourceID: "kt:basic", position: 1),
                                operations: Array(ops.prefix(2)), copyCursor: [1, 2, 3]).encoded())
        let key = stored.isEmpty ? Array("k".utf8) : Array("zone:1/rule:1".utf8)
        let requests: [Request] = [
            .batch(Request.Batch(token: Array("t".utf8), sourceID: "kt:basic", expected: 1, new: 2, operations: Array(ops.prefix(6)))),
            .getCheckpoint(sourceID: "kt:basic"), .head, .readLog(from: 1, count: 10), .get(key: key),
            .scan(prefix: Array("zone:".utf8), cursor: [], limit: 100, asOf: 0),
            .subscribe(fromIndex: 0, hash: [UInt8](repeating: 0, count: 32), token: []),
            .snapshot(token: Array("t".utf8)), .append(token: [], entries: PackedEntries(Array(stored.prefix(2))), sourceTimeNs: 5),
            .digest(after: [], through: key, limit: 1000, asOf: 0), .status,
            .rangeRecords(after: [], through: [], limit: 10, asOf: 0), .hello(token: [], client: "qsfuzz"),
            .changeRole(token: [], change: .promote),
            .setDescriptor(token: Array("t".utf8), sourceID: "kt:basic", descriptor: "db-map 0=", replace: false),
        ]
        let head = Head(index: UInt64(stored.count), hash: hash, commitTimeNs: 1)
        let responses: [Response] = [
            .applied(logIndex: 3, kept: 2, dropped: 1), .applied(logIndex: nil, kept: 0, dropped: 4), .conflict(current: 7),
            .checkpoint(9), .checkpoint(nil), .head(head), .entries(Array(stored.prefix(3))),
            .value(Record(value: Array("v".utf8), expiry: 10)), .value(nil),
            .page(records: [.init(key: key, record: Record(value: [1, 2], expiry: nil))], next: key),
            .error(.malformed, "bad frame"), .heartbeat(head: 3, rootTimeNs: 4),
            .snapshotBegin(index: 3, hash: hash, size: 4096), .snapshotChunk([1, 2, 3]), .snapshotEnd,
            .digest(count: 2, hash: hash, last: key, more: true), .status("{\"role\":\"root\"}"),
        ]
        var stream: [UInt8] = []
        for r in requests {
            let f = r.frame()
            add(.qsRequest, [f.type] + f.payload)
            stream += QSCapture.bytes(of: f)
        }
        // Writes as writers send them: in the checked envelope.
        for r in requests where CheckedFrames.wraps(r.frame().type) {
            let f = CheckedFrames.wrap(r.frame())
            add(.qsRequest, [f.type] + f.payload)
        }
        for r in responses {
            let f = r.frame()
            add(.qsResponse, [f.type] + f.payload)
            stream += QSCapture.bytes(of: f)
        }
        add(.qsFrames, Array(stream.prefix(FuzzTarget.maxInputBytes)))
        // The large-frame rule: every request bare and in the envelope (the writes with the
        // node's token, another token, none), each its own input (the first refusal ends a
        // stream), and the writes one after the other.
        var writes: [UInt8] = []
        let other = Request.batch(Request.Batch(token: Array("x".utf8), sourceID: "kt:basic", expected: 1, new: 2, operations: Array(ops.prefix(2))))
        for r in requests + [other] {
            for f in [r.frame(), CheckedFrames.wrap(r.frame())] {
                add(.qsLargeFrames, QSCapture.bytes(of: f))
                if case .batch = r, r != other { writes += QSCapture.bytes(of: f) }
            }
        }
        add(.qsLargeFrames, Array(writes.prefix(FuzzTarget.maxInputBytes)))
        // A QS capture: its header, then entries and heartbeat frames as a subscription sends them.
        var capture = QSCapture.header(fromIndex: 0, hash: [UInt8](repeating: 0, count: 32))
        for chunk in stride(from: 0, to: stored.count, by: 2) {
            capture += QSCapture.bytes(of: Response.entries(Array(stored[chunk..<min(stored.count, chunk + 2)])).frame())
            capture += QSCapture.bytes(of: Response.heartbeat(head: stored[chunk].index, rootTimeNs: 1).frame())
            if capture.count > 3000 { break }
        }
        add(.capture, capture)
    }
}
