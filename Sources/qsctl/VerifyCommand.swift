import ArgumentParser
import Foundation
import QSBytes
import QSClient
import QSDaemon
import QSNet
import QSModel
import QSWire

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare a node with another node (--against) or with a KT server (--kt); exits 1 on any difference.",
        discussion: """
            Against a node: heads and hashes, then a digest of each key range (about --range-size \
            records), then the differing keys of differing ranges, one JSON line each. Against KT: \
            every KT record is looked up in QS and every QS key under a mapped prefix in KT. Both \
            stream, so keyspaces larger than memory work; expiry is judged at one instant (--at).
            """)

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: ArgumentHelp("The other node, HOST:PORT. (env: QS_CTL_VERIFY_AGAINST)", valueName: "host:port"))
    var against: OrNone<Address> = QSEnv.value("QS_CTL_VERIFY_AGAINST", .none, flag: "--against")
    @Option(help: ArgumentHelp("A KT server's HTTP address, HOST:PORT. (env: QS_CTL_VERIFY_KT)", valueName: "host:port"))
    var kt: OrNone<TCPAddress> = QSEnv.value("QS_CTL_VERIFY_KT", .none, flag: "--kt")
    @Option(help: ArgumentHelp("With --kt: KT database index → QS key prefix, as qsktbridge's. (env: QS_CTL_VERIFY_DB_MAP)", valueName: "map"))
    var dbMap: KTDBMap = QSEnv.value("QS_CTL_VERIFY_DB_MAP", KTDBMap.single, flag: "--db-map")
    @Option(help: ArgumentHelp("Judge expiry at this instant (epoch seconds); 0, the default, for now. (env: QS_CTL_VERIFY_AT)", valueName: "epoch"))
    var at: UInt64 = QSEnv.value("QS_CTL_VERIFY_AT", UInt64(0), flag: "--at")
    @Option(help: ArgumentHelp("Records per compared range. (env: QS_CTL_VERIFY_RANGE_SIZE)", valueName: "n"))
    var rangeSize: UInt32 = QSEnv.value("QS_CTL_VERIFY_RANGE_SIZE", UInt32(10_000), flag: "--range-size")
    @Flag(inversion: .prefixedNo, help: "Compare the keyspaces only, not the heads (for a target fed in batched mode). (env: QS_CTL_VERIFY_KEYSPACE_ONLY)")
    var keyspaceOnly = QSEnv.flag("QS_CTL_VERIFY_KEYSPACE_ONLY", flag: "--keyspace-only")

    func validate() throws {
        guard (against.value == nil) != (kt.value == nil) else { throw ValidationError("give exactly one of --against HOST:PORT or --kt HOST:PORT") }
        guard rangeSize > 0 else { throw ValidationError("--range-size must be positive") }
    }

    func run() async throws {
        let instant = at == 0 ? wallClockSeconds() : at
        let differences: Int
        if let against = against.value {
            differences = try await verifyNodes(against, instant)
        } else if let kt = kt.value {
            differences = try await KTVerifier(node: options, kt: kt.endpoint, prefixes: dbMap.prefixes, instant: instant).run()
        } else {
            throw ValidationError("give exactly one of --against HOST:PORT or --kt HOST:PORT")
        }
        if differences > 0 { throw Exit.notFound }
    }

    func diffLine(_ key: [UInt8], _ a: Record?, _ b: Record?) -> String {
        func r(_ x: Record?) -> String {
            guard let x else { return "null" }
            return "{\"value\":\"\(b64(x.value))\",\"xt\":\(x.expiry.map { String($0) } ?? "null")}"
        }
        return "{\"key\":\"\(b64(key))\",\"node\":\(r(a)),\"other\":\(r(b))}"
    }

    func verifyNodes(_ against: Address, _ instant: UInt64) async throws -> Int {
        var other = NodeOptions()
        other.node = against
        other.writeTokenFile = ""
        let b = try await other.connect()
        return try await options.withClient { a in
            let ha = try await a.head(), hb = try await b.head()
            var differences = 0
            if ha != hb {
                fail("heads differ: node at \(ha.index) \(hexString(ha.hash)), other at \(hb.index) \(hexString(hb.hash))")
                if !keyspaceOnly { differences += 1 }
            } else {
                fail("heads equal: index \(ha.index), hash \(hexString(ha.hash))")
            }
            var cursor = [UInt8]()
            var keys: UInt64 = 0, ranges = 0, differingRanges = 0
            let started = ContinuousClock.now
            while true {
                let da = try await a.digest(after: cursor, through: [], limit: rangeSize, asOf: instant)
                let upper = da.more ? da.last : []
                let db = try await b.digest(after: cursor, through: upper, limit: rangeSize &* 4, asOf: instant)
                ranges += 1
                keys += da.count
                if da.count != db.count || da.hash != db.hash || db.more {
                    differingRanges += 1
                    let ra = try await a.rangeRecords(after: cursor, through: upper, limit: rangeSize, asOf: instant)
                    let rb = try await b.rangeRecords(after: cursor, through: upper, limit: rangeSize &* 4, asOf: instant)
                    var mapB = [[UInt8]: Record]()
                    for r in rb { mapB[r.key] = r.record }
                    for r in ra {
                        let other = mapB.removeValue(forKey: r.key)
                        if other != r.record {
                            differences += 1
                            printLine(diffLine(r.key, r.record, other))
                        }
                    }
                    for (k, v) in mapB.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
                        differences += 1
                        printLine(diffLine(k, nil, v))
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
            fail(String(format: "compared %llu keys in %d ranges (%.0f keys/s); %d ranges differ; %d differences",
                        keys, ranges, Double(keys) / secs, differingRanges, differences))
            await b.close()
            return differences
        }
    }
}
