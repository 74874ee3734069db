import Foundation
import KTFormats
import NIOCore
import NIOEmbedded
import NIOHTTP1
import QSBytes
import QSCaptures
import QSModel
import QSReads
import QSWire

/// One decoder that takes bytes from outside (a socket, a file), and what must hold for
/// any input: no crash, no hang, the same result however the stream is split, and a
/// value that encodes back to bytes decoding to the same value.
enum FuzzTarget: String, CaseIterable {
    case ktUpdate = "kt-update"
    case ktReplication = "kt-replication"
    case ulog
    case ktBinaryRequest = "kt-binary-request"
    case ktBinaryResponse = "kt-binary-response"
    case ktHTTP = "kt-http"
    case ktHTTPRequest = "kt-http-request"
    case memcached
    case qsFrames = "qs-frames"
    case qsLargeFrames = "qs-large-frames"
    case qsRequest = "qs-request"
    case qsResponse = "qs-response"
    case capture
    case logEntry = "log-entry"
    case ktTime = "kt-time"

    /// Input lengths the targets are run with (`-max_len`): the longest seed is cut there.
    static let maxInputBytes = 4096

    func run(_ bytes: [UInt8]) {
        let name = rawValue
        switch self {
        case .ktUpdate:
            Self.updateMessage(bytes, name)
        case .ktReplication:
            let expectAcceptance = bytes.first == KTBinaryMagic.replication || bytes.first == KTBinaryMagic.error
            let out = decodeAnySplit(ReplicationFrameDecoder(expectAcceptance: expectAcceptance, maxMessageBytes: 1 << 20), bytes, name)
            for frame in out.messages {
                guard case let .update(_, message) = frame else { continue }
                if !message.isEmpty { Self.updateMessage(message, name) }
                check(decodeStream(ReplicationFrameDecoder(expectAcceptance: false), frame.encoded(), chunk: 0).messages == [frame],
                      name, "an update frame does not decode back from its encoding")
            }
        case .ulog:
            let whole: ULogFile.Contents
            do { whole = try ULogFile.parse(bytes) } catch { return }
            let records = decodeAnySplit(ULogRecordDecoder(maxMessageBytes: 1 << 20), Array(bytes.dropFirst(ULogFile.headerSize)), name)
            check(records.messages.starts(with: whole.records), name, "the record decoder and ULogFile.parse disagree")
            for record in whole.records {
                if let message = try? record.decodedMessage() { Self.updateMessage(message.encoded(), name) }
                check((try? ULogFile.parse(ULogFile.encode(records: [record])).records) == [record], name,
                      "a record does not decode back from its encoding")
            }
        case .ktBinaryRequest:
            for request in decodeAnySplit(KTBinaryRequestDecoder(), bytes, name).messages {
                var again = ByteBuffer(bytes: request.encoded())
                check((try? KTBinaryRequestDecoder.next(&again)) == request, name, "a request does not decode back from its encoding")
            }
            // A read node's decoder (get_bulk walked as it arrives, its keys left unparsed):
            // each get_bulk's keys walk to the general decoder's parse, each key once.
            for case let .getBulk(flags, count, keys, _) in decodeAnySplit(KTBinaryReadDecoder(), bytes, name).messages {
                var whole = ByteBuffer(integer: KTBinaryMagic.getBulk)
                whole.writeInteger(flags)
                whole.writeInteger(count)
                whole.writeImmutableBuffer(keys)
                guard case let .getBulk(_, parsed)? = try? KTBinaryRequestDecoder.next(&whole) else {
                    check(false, name, "a get_bulk the read decoder took whole does not parse")
                    continue
                }
                var once: [KTBinaryKey] = [], seen = Set<KTBinaryKey>(), walked: [KTBinaryKey] = []
                for k in parsed where seen.insert(k).inserted { once.append(k) }
                KTBinaryKeys(keys: keys, count: count).forEachOnce { db, key in walked.append(KTBinaryKey(db: db, key: Array(key))) }
                check(walked == once, name, "a get_bulk's keys walk to other keys than its parse")
            }
        case .ktBinaryResponse:
            for response in decodeAnySplit(KTBinaryResponseDecoder(), bytes, name).messages {
                var again = ByteBuffer(bytes: response.encoded())
                check((try? KTBinaryResponseDecoder.next(&again)) == response, name, "a reply does not decode back from its encoding")
            }
        case .ktHTTP:
            Self.ktHTTP(bytes, name)
        case .ktHTTPRequest:
            Self.ktHTTPRequest(bytes, name)
        case .memcached:
            _ = decodeAnySplit(MemcachedDecoder(limits: MemcachedLimits(maxLineBytes: 512, maxKeyBytes: 250, maxDataBytes: 1024)),
                               bytes, name)
        case .qsFrames:
            let frames = decodeAnySplit(FrameDecoder(maxFrameBytes: 1 << 20), bytes, name)
            for frame in frames.messages { Self.qsMessage(frame, name) }
            Self.snapshotStream(bytes, frames, name)
        case .qsLargeFrames:
            Self.largeFrames(bytes, name)
        case .qsRequest, .qsResponse:
            guard let type = bytes.first else { return }
            let tag = self == .qsRequest ? type & 0x7F : type | 0x80
            Self.qsMessage(Frame(type: tag, payload: Array(bytes.dropFirst())), name)
        case .capture:
            Self.capture(bytes, name)
        case .ktTime:
            // A producer's `X-Kt-Xt` (qsrest, fakekt): any bytes, no trap.
            _ = KTHTTPDate.parse(String(decoding: bytes, as: UTF8.self))
        case .logEntry:
            // A compatible mirror forwards what `summary` accepts: exactly what `decode` does.
            let summary = try? LogEntry.summary(of: bytes)
            guard let entry = try? LogEntry.decode(bytes) else {
                check(summary == nil, name, "summary accepts an entry decode refuses")
                return
            }
            check(summary?.operations == entry.operations.count, name, "summary refuses (or miscounts) an entry decode accepts")
            check((try? LogEntry.decode(entry.encoded())) == entry, name, "an entry does not decode back from its encoding")
        }
    }

    /// The write token the `qs-large-frames` target's node requires, and the length past
    /// which its frames are large (small, so fuzzed frames are).
    static let largeFrameToken = Array("t".utf8)
    static let largeFrameOpenBytes = 16

    /// A write server's decoder with its rule for large frames (`FrameDecoder.LargeFrames`,
    /// judged from a frame's first bytes before it is buffered, also inside the checked
    /// envelope): the same frames and the same refusal however the stream is split, and
    /// every frame it lets through over `openBytes` is a batch, conditional writes or an
    /// append, bare or in the envelope, whose token is the node's.
    private static func largeFrames(_ bytes: [UInt8], _ name: String) {
        let token = largeFrameToken
        let rule = FrameDecoder.LargeFrames(openBytes: largeFrameOpenBytes, writable: true, admits: { $0 == token },
                                            tokenLength: token.count)
        for frame in decodeAnySplit(FrameDecoder(maxFrameBytes: 1 << 20, largeFrames: rule), bytes, name).messages
        where 1 + frame.payload.count > largeFrameOpenBytes {
            var type = frame.type
            var payload = frame.payload[...]
            if type == CheckedFrames.tag {
                check(payload.count >= CheckedFrames.headerBytes, name, "a large envelope shorter than its header was let through")
                type = payload.first ?? 0
                payload = payload.dropFirst(CheckedFrames.headerBytes)
            }
            check(FrameDecoder.LargeFrames.writeTypes.contains(type), name, "a large frame of type \(type) was let through: only writes may be large")
            let length = payload.prefix(4).reduce(0) { $0 << 8 | Int($1) }
            check(payload.count >= 4 + token.count && length == token.count && Array(payload.dropFirst(4).prefix(token.count)) == token,
                  name, "a large write without the node's token was let through")
        }
    }

    private static func updateMessage(_ bytes: [UInt8], _ name: String) {
        guard let message = try? KTUpdateMessage(decoding: bytes) else { return }
        check((try? KTUpdateMessage(decoding: message.encoded())) == message, name,
              "an update message does not decode back from its encoding")
    }

    /// KT's HTTP parameters: the first line is a Content-Type, the second a URL query,
    /// the rest the body; each is read as the read server reads it.
    private static func ktHTTP(_ bytes: [UInt8], _ name: String) {
        let lines = bytes.split(separator: 0x0A, maxSplits: 2, omittingEmptySubsequences: false)
        let contentType = String(decoding: lines.first ?? [], as: UTF8.self)
        let query = lines.count > 1 ? Array(lines[1]) : []
        let body = lines.count > 2 ? Array(lines[2]) : []
        _ = KTTSV.parseForm(query)
        _ = KTColumnEncoding.urlDecode(query)
        switch KTTSV.bodyKind(contentType: contentType) {
        case .form: _ = KTTSV.parseForm(body)
        case let .tsv(encoding): _ = KTTSV.parse(body, encoding: encoding)
        case .other: break
        }
        // Every column encoding gives back what it encoded, and TSV what it serialized.
        for encoding in KTColumnEncoding.allCases {
            _ = encoding.decode(body)
            check(encoding.decode(encoding.encode(body)) == body, name, "colenc=\(encoding) does not decode what it encoded")
        }
        check(KTColumnEncoding.urlDecode(KTColumnEncoding.urlEncode(body)) == body, name, "URL decoding does not give back what was encoded")
        var pairs: [[UInt8]: [UInt8]] = [:]
        for (n, v) in KTTSV.parse(body, encoding: nil) { pairs[n] = v }
        let sorted = KTTSV.sorted(pairs)
        let encoding = KTTSV.bestEncoding(for: sorted)
        let parsed = KTTSV.parse(KTTSV.serialize(sorted, encoding: encoding), encoding: encoding)
        check(parsed.map(\.name) == sorted.map(\.key) && parsed.map(\.value) == sorted.map(\.value), name,
              "a TSV reply does not parse back to its pairs")
    }

    /// The KT HTTP fast path's parser (`KTFastRequest`): a request it takes is whole (a
    /// shorter prefix waits for more, more bytes after it change nothing) and reads in
    /// NIO's HTTP decoder as the same method, target, version and keep-alive, without a
    /// body — so whatever it answers, the NIO path would have answered alike.
    private static func ktHTTPRequest(_ bytes: [UInt8], _ name: String) {
        func parse(_ b: ArraySlice<UInt8>) -> KTFastRequest.Parse { b.withUnsafeBytes { KTFastRequest.parse($0) } }
        let parsed = parse(bytes[...])
        guard case let .request(r) = parsed else {
            if parsed == .incomplete { check(bytes.count < KTFastRequest.maxHeadBytes, name, "a head past the limit waits for more") }
            return
        }
        check(r.length <= bytes.count && r.target.upperBound < r.length && r.length <= KTFastRequest.maxHeadBytes, name,
              "a request's bounds lie outside its bytes")
        check(parse(bytes[..<r.length]) == parsed, name, "a request reads differently without what follows it")
        check(parse(bytes[..<(r.length - 1)]) == .incomplete, name, "a request cut short does not wait for more")
        check(parse(bytes[..<r.length] + Array("GET / HTTP/1.1\r\n".utf8)) == parsed, name, "bytes after a request change it")
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder()))
        defer { _ = try? channel.finish() }
        let head: HTTPRequestHead?
        var end = false
        do {
            try channel.writeInbound(ByteBuffer(bytes: bytes[..<r.length]))
            if case let .head(h)? = try channel.readInbound(as: HTTPServerRequestPart.self) { head = h } else { head = nil }
            if case .end? = try channel.readInbound(as: HTTPServerRequestPart.self) { end = true }
        } catch {
            check(false, name, "NIO refuses a request the fast path takes: \(error)")
            return
        }
        guard let head else { return check(false, name, "NIO reads no head from a request the fast path takes") }
        let target = String(decoding: bytes[r.target], as: UTF8.self)
        check(head.method == (r.kind == .restHead ? .HEAD : .GET) && head.uri == target && head.version.minor == Int(r.minorVersion)
              && head.isKeepAlive == r.keepAlive && end, name,
              "NIO reads \(head.method) \(head.uri) 1.\(head.version.minor) keep-alive \(head.isKeepAlive) end \(end), the fast path \(r)")
    }

    private static func qsMessage(_ frame: Frame, _ name: String) {
        if frame.type < 0x80 {
            guard let request = try? Request.decode(frame) else { return }
            check((try? Request.decode(request.frame())) == request, name, "a request does not decode back from its frame")
            if case let .batch(b) = request {
                // A root walks an accepted batch's operations unchecked: the walk must read
                // exactly what the decoder reads.
                var r = ByteReader(Array(b.packed.bytes))
                let decoded = try? Mutation.decodeList(from: &r)
                check(decoded == b.operations && PackedMutations(b.operations) == b.packed, name,
                      "a batch's operations read in place differ from the decoder's")
            }
            if case let .append(_, entries, _) = request {
                // A root appends an accepted list walking it unchecked: the walk must read
                // the entries the list encodes.
                check(PackedEntries(entries.entries) == entries, name, "an append's entries read in place differ from their encoding")
            }
        } else {
            // A replica reads an entries response in place: it must accept and refuse what
            // the decoder does, with the same error, and read the same entries.
            let packed = Result { try Response.packedEntries(frame) }
            guard let response = try? Response.decode(frame) else {
                if frame.type == Response.entries([]).frame().type, case .success = packed {
                    check(false, name, "an entries response the decoder refuses is read in place")
                }
                return
            }
            check((try? Response.decode(response.frame())) == response, name, "a response does not decode back from its frame")
            if case let .entries(list) = response {
                check((try? packed.get())??.entries == list, name, "an entries response read in place differs from the decoder's")
                for e in list {
                    _ = try? LogEntry.decode(e.bytes)
                    let inPlace = try? LogEntry.decodePacked(e.bytes[...]), copied = try? LogEntry.decodePacked(e.bytes)
                    check(inPlace?.operations.mutations == copied?.operations.mutations, name, "an entry read in a slice differs from the entry read in its array")
                }
            }
        }
    }

    /// A snapshot receiver's decoder reads the same stream as the frame decoder, however it
    /// is split: the same frames, each chunk frame's payload passed on in parts, the same error.
    private static func snapshotStream(_ bytes: [UInt8], _ frames: Decoded<Frame>, _ name: String) {
        // Chunks' bytes as one run between other frames: what a receiver writes.
        func joined(_ parts: [SnapshotStreamPart]) -> [SnapshotStreamPart] {
            var out = [SnapshotStreamPart]()
            for part in parts {
                if case let .chunkBytes(more) = part, case var .chunkBytes(run)? = out.last {
                    run.writeImmutableBuffer(more)
                    out[out.count - 1] = .chunkBytes(run)
                } else {
                    out.append(part)
                }
            }
            return out
        }
        let expected = joined(frames.messages.map { frame in
            frame.type == 0x8A ? .chunkBytes(ByteBuffer(bytes: frame.payload)) : .frame(frame)
        })
        for piece in [0, 1, max(1, (bytes.count + 7) / 8)] where piece == 0 || (bytes.count > piece && (piece > 1 || bytes.count <= 64)) {
            let parts = decodeStream(SnapshotStreamDecoder(maxFrameBytes: 1 << 20), bytes, chunk: piece)
            check(parts.error == frames.error, name,
                  "the snapshot stream decoder ended with \(parts.error ?? "no error"), the frame decoder with \(frames.error ?? "no error")")
            if frames.error == nil {
                check(joined(parts.messages) == expected, name, "the snapshot stream decoder read other frames than the frame decoder")
            }
        }
    }

    /// A capture file (KT's stream.bin format or a QS capture) read back as `qsctl feed` reads it.
    private static func capture(_ bytes: [UInt8], _ name: String) {
        let path = scratchFile
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            fatalError("cannot write \(path): set TMPDIR to a writable directory")
        }
        guard var reader = try? RecordingReader(path: path) else { return }
        var statistics = FeedStatistics()
        while let item = try? reader.next() { statistics.add(item) }
    }

    private static let scratchFile = NSTemporaryDirectory() + "/qsfuzz-capture-\(getpid())"
}
