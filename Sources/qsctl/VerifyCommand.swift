import ArgumentParser
import Foundation
import QSBytes
import QSClient
import QSDaemon
import QSNet
import QSRest
import QSModel
import QSWire

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare a node with another node (--against) or with a KT server (--kt); exits 1 on any difference.",
        discussion: """
            Against a node: heads and hashes — equal, the node behind (its head is in the \
            other's history), ahead, or diverged (the logs part) —, then a digest of each key \
            range (about --range-size records), then the differing keys of differing ranges. \
            Under write load the two heads seldom meet: a node behind is reported so, with the \
            writes it has yet to apply as differences; for an exact answer compare while the \
            writes are stopped (as at a cut-over, the old root demoted). \
            Against KT: every KT record is looked up in QS and every QS key under a mapped prefix \
            in KT. Both stream, so keyspaces larger than memory work; expiry is judged at one \
            instant (--at), and against KT a record that expires while it is being compared \
            (KT and the node each judge by their own clock) is not a difference; once producers \
            write through qsrest, --exclude-acl leaves their prefixes out. In table \
            output keys and values are escaped to printable text \
            (\\xNN for other bytes); in json/jsonl they are base64, and the heads and the \
            summary are objects of their own ("kind": "heads", "difference", "summary").
            """)

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: ArgumentHelp("The other node, HOST:PORT. (env: QS_CTL_VERIFY_AGAINST)", valueName: "host:port"))
    var against: OrNone<Address> = QSEnv.value("QS_CTL_VERIFY_AGAINST", .none, flag: "--against")
    @Option(help: ArgumentHelp("With --against: file holding one of that node's tokens, presented to read it from another machine (two roots of a cutover may have different tokens); default: the token qsctl reads --node with. (env: QS_CTL_VERIFY_AGAINST_TOKEN_FILE)", valueName: "file"))
    var againstTokenFile: String = QSEnv.string("QS_CTL_VERIFY_AGAINST_TOKEN_FILE") ?? ""
    @Option(help: ArgumentHelp("A KT server's HTTP address, HOST:PORT. (env: QS_CTL_VERIFY_KT)", valueName: "host:port"))
    var kt: OrNone<TCPAddress> = QSEnv.value("QS_CTL_VERIFY_KT", .none, flag: "--kt")
    @Option(help: ArgumentHelp("With --kt: KT database index → QS key prefix, as qsktbridge's. (env: QS_CTL_VERIFY_DB_MAP)", valueName: "map"))
    var dbMap: KTDBMap = QSEnv.value("QS_CTL_VERIFY_DB_MAP", KTDBMap.single, flag: "--db-map")
    @Option(help: ArgumentHelp("With --kt: leave out the QS keys under the prefixes of this qsrest ACL's producers, on both sides: producers that write through qsrest no longer write to KT, so KT's copy of their keys is stale by design. (env: QS_CTL_VERIFY_EXCLUDE_ACL)", valueName: "file"))
    var excludeAcl: String = QSEnv.string("QS_CTL_VERIFY_EXCLUDE_ACL") ?? ""
    @Option(help: ArgumentHelp("Judge expiry at this instant (epoch seconds); 0, the default, for now. (env: QS_CTL_VERIFY_AT)", valueName: "epoch"))
    var at: UInt64 = QSEnv.value("QS_CTL_VERIFY_AT", UInt64(0), flag: "--at")
    @Option(help: ArgumentHelp("Records per compared range. (env: QS_CTL_VERIFY_RANGE_SIZE)", valueName: "n"))
    var rangeSize: UInt32 = QSEnv.value("QS_CTL_VERIFY_RANGE_SIZE", UInt32(10_000), flag: "--range-size")
    @Flag(inversion: .prefixedNo, help: "Compare the keyspaces only, not the heads (for a target fed in batched mode). (env: QS_CTL_VERIFY_KEYSPACE_ONLY)")
    var keyspaceOnly = QSEnv.flag("QS_CTL_VERIFY_KEYSPACE_ONLY", flag: "--keyspace-only")
    @Option(help: outputHelp("QS_CTL_VERIFY_OUTPUT", "table a difference a line, keys escaped; json/jsonl objects with base64 keys."))
    var output: OutputFormat = QSEnv.value("QS_CTL_VERIFY_OUTPUT", OutputFormat.table, flag: "--output")

    func validate() throws {
        guard (against.value == nil) != (kt.value == nil) else { throw ValidationError("give exactly one of --against HOST:PORT or --kt HOST:PORT") }
        guard rangeSize > 0 else { throw ValidationError("--range-size must be positive") }
        // From the environment it is meant for --kt runs: --against ignores it.
        if !excludeAcl.isEmpty && kt.value == nil && QSEnv.string("QS_CTL_VERIFY_EXCLUDE_ACL") != excludeAcl {
            throw ValidationError("--exclude-acl applies to --kt only: two QS nodes are compared whole")
        }
        if !againstTokenFile.isEmpty && against.value == nil && QSEnv.string("QS_CTL_VERIFY_AGAINST_TOKEN_FILE") != againstTokenFile {
            throw ValidationError("--against-token-file applies to --against only: KT is read over its HTTP port without a token")
        }
    }

    func run() async throws {
        let instant = at == 0 ? wallClockSeconds() : at
        let differences: Int
        if let against = against.value {
            differences = try await verifyNodes(against, instant)
        } else if let kt = kt.value {
            var verifier = KTVerifier(node: options, kt: kt.endpoint, prefixes: dbMap.prefixes, instant: instant, output: output)
            if !excludeAcl.isEmpty {
                do {
                    verifier.excluded = try ACL.load(path: excludeAcl).producers.flatMap(\.prefixes)
                    for (db, prefix) in dbMap.prefixes.sorted(by: { $0.key < $1.key })
                    where verifier.excluded.contains(where: { prefix.starts(with: $0) }) {
                        fail("warning: --exclude-acl covers all of KT database \(db) (QS prefix '\(String(decoding: prefix, as: UTF8.self))'): nothing of it is compared")
                    }
                } catch {
                    fail("--exclude-acl: \(error)")
                    throw Exit.usage
                }
            }
            differences = try await verifier.run()
        } else {
            throw ValidationError("give exactly one of --against HOST:PORT or --kt HOST:PORT")
        }
        if differences > 0 { throw Exit.notFound }
    }

    /// How two heads relate: the same, one a prefix of the other's history, or diverged.
    enum HeadRelation: String {
        case equal, behind, ahead, diverged
        /// The other's log no longer holds the shorter head's index (trimmed): cannot tell.
        case unknown
    }

    static func relation(_ a: QSClient, _ ha: Head, _ b: QSClient, _ hb: Head) async throws -> HeadRelation {
        if ha.index == hb.index { return ha.hash == hb.hash ? .equal : .diverged }
        let (shorter, longer) = ha.index < hb.index ? (ha, b) : (hb, a)
        let behind: HeadRelation = ha.index < hb.index ? .behind : .ahead
        if shorter.index == 0 { return behind }
        guard let e = try await longer.entries(from: shorter.index, count: 1).first, e.index == shorter.index else { return .unknown }
        return e.hash == shorter.hash ? behind : .diverged
    }

    func sideJSON(_ x: Record?) -> String {
        guard let x else { return "null" }
        return "{\"value\":\"\(b64(x.value))\",\"xt\":\(x.expiry.map { String($0) } ?? "null")}"
    }

    func sideTable(_ x: Record?) -> String {
        guard let x else { return "absent" }
        return printable(x.value) + (x.expiry.map { " (xt \($0))" } ?? "")
    }

    func headJSON(_ h: Head) -> String { "{\"index\":\(h.index),\"hash\":\"\(hexString(h.hash))\"}" }

    func verifyNodes(_ against: Address, _ instant: UInt64) async throws -> Int {
        let other = options.reading(against, tokenFile: againstTokenFile, flag: "--against-token-file")
        let b = try await other.connect()
        var out = Output(output, listing: true)
        defer { out.finish() }
        func difference(_ key: [UInt8], _ a: Record?, _ b: Record?) {
            out.item(json: "{\"kind\":\"difference\",\"key\":\"\(b64(key))\",\"node\":\(sideJSON(a)),\"other\":\(sideJSON(b))}",
                     table: "\(printable(key))\tnode: \(sideTable(a))\tother: \(sideTable(b))")
        }
        return try await options.withClient { a in
            let ha = try await a.head(), hb = try await b.head()
            let relation = try await Self.relation(a, ha, b, hb)
            var differences = 0
            let said: String
            switch relation {
            case .equal: said = "heads equal: index \(ha.index), hash \(hexString(ha.hash))"
            case .behind: said = "the node is behind: its head (index \(ha.index)) is in the other's history, which is at \(hb.index)"
            case .ahead: said = "the other is behind: its head (index \(hb.index)) is in the node's history, which is at \(ha.index)"
            case .diverged: said = "heads diverged: node at \(ha.index) \(hexString(ha.hash)), other at \(hb.index) \(hexString(hb.hash)); the logs part"
            case .unknown: said = "heads differ: node at \(ha.index), other at \(hb.index); the longer log no longer holds the shorter head's index, so behind or diverged cannot be told"
            }
            if relation != .equal && !keyspaceOnly { differences += 1 }
            fail(said)
            if output != .table { out.item(json: "{\"kind\":\"heads\",\"relation\":\"\(relation)\",\"node\":\(headJSON(ha)),\"other\":\(headJSON(hb))}", table: "") }
            var cursor = [UInt8]()
            var keys: UInt64 = 0, ranges = 0, differingRanges = 0, keysDiffering = 0
            let started = ContinuousClock.now
            while true {
                let da = try await a.digest(after: cursor, through: [], limit: rangeSize, asOf: instant)
                let upper = da.more ? da.last : []
                let db = try await b.digest(after: cursor, through: upper, limit: rangeSize &* 4, asOf: instant)
                ranges += 1
                keys += da.count
                if da.count != db.count || da.hash != db.hash || db.more {
                    differingRanges += 1
                    // Both sides read to `upper` (a range that grew since its digest is not cut
                    // short on one side), and each key found different is read again on both
                    // before it is listed: under writes the two range reads are moments apart,
                    // and a key equal on both nodes is no difference.
                    let ra = try await a.rangeRecords(after: cursor, through: upper, limit: rangeSize &* 4, asOf: instant)
                    let rb = try await b.rangeRecords(after: cursor, through: upper, limit: rangeSize &* 4, asOf: instant)
                    var mapB = [[UInt8]: Record]()
                    for r in rb { mapB[r.key] = r.record }
                    var candidates = [[UInt8]]()
                    for r in ra {
                        let other = mapB.removeValue(forKey: r.key)
                        if other != r.record { candidates.append(r.key) }
                    }
                    candidates += mapB.keys
                    for k in candidates.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                        let x = try await a.get(k).flatMap { $0.isExpired(at: instant) ? nil : $0 }
                        let y = try await b.get(k).flatMap { $0.isExpired(at: instant) ? nil : $0 }
                        if x != y {
                            differences += 1
                            keysDiffering += 1
                            difference(k, x, y)
                        }
                    }
                }
                if isatty(2) == 1 { FileHandle.standardError.write(Data("\rverified \(keys) keys in \(ranges) ranges".utf8)) }
                if da.more {
                    cursor = da.last
                } else if db.more {
                    cursor = db.last
                } else {
                    break
                }
            }
            let secs = max((ContinuousClock.now - started).seconds, 0.001)
            if isatty(2) == 1 { FileHandle.standardError.write(Data("\n".utf8)) }
            // The keys listed, and the heads apart from them (one difference more when they
            // are not equal: the summary counted it among the keys').
            let heads = differences > keysDiffering ? "; and the heads differ (above)" : ""
            // A range whose digests differed but whose keys all read equal again moved under
            // writes between the two digests: no difference.
            let moved = differingRanges > 0 && keysDiffering == 0
                ? " (the range digests differed, read moments apart under writes; every key read again was equal)" : ""
            fail(String(format: "compared %llu keys in %d ranges (%.0f keys/s); %d ranges differ; %d keys differ",
                        keys, ranges, Double(keys) / secs, differingRanges, keysDiffering) + moved + heads)
            if output != .table {
                out.item(json: "{\"kind\":\"summary\",\"keys\":\(keys),\"ranges\":\(ranges),\"differing_ranges\":\(differingRanges),\"keys_differing\":\(keysDiffering),\"differences\":\(differences)}", table: "")
            }
            await b.close()
            return differences
        }
    }
}
