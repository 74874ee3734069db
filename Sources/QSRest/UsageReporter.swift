import QSClient
import QSModel
import QSNet

/// qsrest's `GET /usage` (admin port): the same `UsageReport` as `qsctl usage --acl`, for
/// the ACL in force, measured on a node of its own connection, so a scan never queues
/// behind or in front of the batches on the writer's connection.
///
/// A scan reads `pageSize` records a request; each page is one read transaction on the
/// node's reader pool, which never waits for (or holds up) its writer. A report is kept
/// for `maxAge` and served with its age; requests arriving while a scan runs wait for that
/// scan instead of starting another, so a busy dashboard costs one scan per `maxAge`.
public actor UsageReporter {
    public struct Measured: Sendable {
        public var report: UsageReport
        /// The node scanned.
        public var node: Endpoint
        /// When the scan finished (wall clock, seconds) and how long it took.
        public var measuredAt: UInt64
        public var took: Duration
        let finished: ContinuousClock.Instant
        let acl: ACL

        /// `{"node", "measured_at", "age_seconds", "scan_seconds", "producers", "unowned"}`:
        /// `UsageReport.json`'s fields after the measurement's own.
        public func json(now: ContinuousClock.Instant = .now) -> String {
            let age = (now - finished).seconds, took = took.seconds
            return "{\"node\":\"\(node)\",\"measured_at\":\(measuredAt),\"age_seconds\":\(Int(age)),\"scan_seconds\":\(took),"
                + report.json.dropFirst()
        }
    }

    let nodes: [Endpoint]
    let token: [UInt8]
    let pageSize: UInt32
    public nonisolated let maxAge: Duration
    private var last: Measured?
    private var running: Task<Measured, any Error>?

    /// `nodes`: scanned in order, the first that answers (a replica given with
    /// `--usage-node`, else qsrest's `--root` list).
    public init(nodes: [Endpoint], token: [UInt8], maxAge: Duration, pageSize: UInt32 = 1000) {
        self.nodes = nodes
        self.token = token
        self.maxAge = maxAge
        self.pageSize = pageSize
    }

    /// The report for `acl`: the kept one when it is younger than `maxAge` and was made
    /// for the same ACL (`fresh` asks for a new scan), else a new scan's.
    public func usage(acl: ACL, fresh: Bool = false) async throws -> Measured {
        if !fresh, let last, last.acl == acl, ContinuousClock.now - last.finished < maxAge { return last }
        if let running {
            let m = try await running.value
            if m.acl == acl { return m }
        }
        let nodes = self.nodes, token = self.token, pageSize = self.pageSize
        let task = Task<Measured, any Error> {
            let start = ContinuousClock.now
            var failures = [String]()
            for node in nodes {
                let client: QSClient
                do {
                    client = try await QSClient.connect(to: node, token: token)
                } catch {
                    failures.append("\(node): \(error)")
                    continue
                }
                do {
                    let report = try await UsageReport.measure(client, acl: acl, pageSize: pageSize)
                    await client.close()
                    let end = ContinuousClock.now
                    return Measured(report: report, node: node, measuredAt: wallClockSeconds(), took: end - start, finished: end, acl: acl)
                } catch {
                    await client.close()
                    failures.append("\(node): \(error)")
                }
            }
            throw UsageUnavailable(failures: failures)
        }
        running = task
        defer { if running == task { running = nil } }
        let m = try await task.value
        last = m
        return m
    }
}

extension UsageReporter {
    /// The admin port's `GET /usage?…` for `acl`: `format=table` for `qsctl usage`'s table
    /// (default JSON), `fresh=1` to scan now whatever the kept report's age. 503 when no
    /// node could be scanned.
    public func answer(query: String, acl: ACL) async -> (status: Int, contentType: String, body: String) {
        let params = Set(query.split(separator: "&").map(String.init))
        do {
            let m = try await usage(acl: acl, fresh: params.contains("fresh=1"))
            if params.contains("format=table") {
                let age = Int((ContinuousClock.now - m.finished).seconds)
                return (200, "text/plain", "# node \(m.node), measured \(age) s ago\n" + m.report.table + "\n")
            }
            return (200, "application/json", m.json() + "\n")
        } catch {
            return (503, "text/plain", "\(error)\n")
        }
    }
}

/// No node of the list could be scanned.
public struct UsageUnavailable: Error, CustomStringConvertible {
    public let failures: [String]
    public var description: String {
        "no node could be scanned for usage (\(failures.joined(separator: "; "))); check --usage-node or --root, and for a refusal --usage-node-token-file (QS_USAGE_NODE_TOKEN_FILE: a token of that node, a replica's --replication-token-file)"
    }
}
