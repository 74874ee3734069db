import ArgumentParser
import Foundation
import QSBytes
import QSClient
import QSDaemon
import QSModel
import QSNet

/// Exit code of `wait` when the position was not reached in time.
let timedOutExit = ExitCode(5)

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a node's role, head, upstream and freshness, and each source's checkpoint and lag.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: outputHelp("QS_CTL_STATUS_OUTPUT", "table for people; json (or jsonl, the same one line) the node's status object."))
    var output: OutputFormat = QSEnv.value("QS_CTL_STATUS_OUTPUT", OutputFormat.table, flag: "--output")

    func run() async throws {
        let json = try await options.withClient { try await $0.status() }
        if output != .table {
            printLine(json)
            return
        }
        guard let s = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            fail("the node's status is not a JSON object")
            throw Exit.serverError
        }
        let head = s["head"] as? [String: Any] ?? [:]
        // A root's write role: open (takes writes), mirror (takes compatible appends only,
        // after `qsctl demote` or while mirroring), promoted (a former mirror taking writes).
        let writeRole = (s["write_role"] as? String).map { $0 == "replica" ? "" : "  writes \($0 == "mirror" ? "mirror (compatible appends only)" : $0 == "promoted" ? "promoted (takes writes)" : "open (takes writes)")" } ?? ""
        printLine("node     \(s["node_id"] ?? "?")  role \(s["role"] ?? "?")\(writeRole)")
        if let f = s["writes_failing"] as? [String: Any] {
            let since = (f["since_ns"] as? NSNumber).map { String(format: " for %.0f s", max(0, Double(wallClockNanoseconds() &- $0.uint64Value) / 1e9)) } ?? ""
            printLine("writes   FAILING\(since): \(f["failure"] ?? "?") (\(f["message"] ?? "")): \(f["remedy"] ?? "")")
        }
        printLine("head     index \(head["index"] ?? "?")  hash \(head["hash"] ?? "?")")
        printLine("log      retained from index \(s["log_first_index"] ?? "?"); \(s["subscribers"] ?? 0) subscriber(s)")
        if let age = s["root_age_seconds"] as? Double { printLine(String(format: "freshness root word %.1f s old", age)) }
        if let u = s["upstream"] as? [String: Any] {
            // The upstream's head is what it last said: a silent upstream (stopped, cut off)
            // says nothing new, so "behind 0" is only as fresh as the root word.
            let heard = (u["heard_seconds_ago"] as? Double).flatMap { $0 > 5 ? String(format: " (as last heard, %.0f s ago)", $0) : nil } ?? ""
            let known = { (v: Any?) in v.flatMap { $0 is NSNull ? nil : "\($0)" } ?? "unknown" }
            printLine("upstream \(u["address"] ?? "?")  subscribed \((u["subscribed"] as? Bool) == true ? "yes" : "no")  upstream head \(known(u["head"]))  behind \(known(u["lag_entries"])) entries\(heard)")
        }
        if let m = s["mirror"] as? [String: Any] {
            let by = (m["followed_by"] as? [[String: Any]] ?? []).map { "\($0["client"] ?? "?") from \($0["peer"] ?? "?")" }
            let through = (m["through_cluster"] as? Bool) == true ? "a compatible bridge writing to another member of the cluster" : nil
            // Not following with a compatible bridge still connected: it has been silent for
            // more than 5 s (stopped, hung, or cut off from its source's answers).
            let silent = (s["writers"] as? [[String: Any]] ?? []).filter { ($0["client"] as? String)?.contains("mode=compatible") == true }
                .map { w in "\(w["client"] ?? "?") from \(w["peer"] ?? "?")" + ((w["last_request_age_seconds"] as? Double).map { String(format: ", silent %.0f s", $0) } ?? "") }
            let not = silent.isEmpty ? "no (no compatible bridge connected)"
                : "no (a compatible bridge is connected but silent: stopped or hung? " + silent.joined(separator: "; ") + ")"
            printLine("mirror   following \((m["following"] as? Bool) == true ? "yes: " + (through ?? by.joined(separator: "; ")) : not)"
                      + ((m["last_append_age_seconds"] as? Double).map { String(format: "; last append %.1f s ago", $0) } ?? ""))
            if let seen = m["sources_seen"] as? [String], !seen.isEmpty {
                printLine("mirror   sources seen: \(seen.joined(separator: ", "))")
            } else if m["sources_seen_unknown"] as? Bool == true {
                printLine("mirror   sources seen: not known yet (a cluster member catching up with etcd; promote waits for them)")
            }
        }
        for w in s["writers"] as? [[String: Any]] ?? [] {
            printLine("writer   \(w["peer"] ?? "?")  \(w["client"] ?? "?")")
        }
        let sources = s["sources"] as? [[String: Any]] ?? []
        if !sources.isEmpty {
            // A replica's or a mirror's checkpoints move only with the log entries it holds:
            // a quiet source's heartbeats move the writable root's checkpoint alone (no
            // entry), so the column there is the age of the newest change, not a lag.
            let takesWrites = s["role"] as? String == "root" && !NodeStatus.isMirror(s)
            printLine("")
            printLine("SOURCE".padding(toLength: 40, withPad: " ", startingAt: 0) + " CHECKPOINT".padding(toLength: 22, withPad: " ", startingAt: 0)
                      + (takesWrites ? " LAG" : " LAST CHANGE (a quiet source moves only the writable root's checkpoint; how current this node is: freshness above)"))
            for src in sources {
                let lag = (src["lag_seconds"] as? Double).map { String(format: takesWrites ? "%.1f s" : "%.1f s ago", $0) } ?? "-"
                // A source still in its initial copy has a checkpoint that is the copy's cursor,
                // not a feed position: its lag says nothing yet about how current the data is.
                let copying = (src["initial_copy"] as? Bool) == true ? "  (initial copy in progress)"
                    : (src["writer_connected"] as? Bool) == false ? "  (no writer connected: its bridge is down, or the source is retired)" : ""
                printLine("\(src["source_id"] ?? "?")".padding(toLength: 40, withPad: " ", startingAt: 0) + " "
                          + "\(src["checkpoint"] ?? "?")".padding(toLength: 21, withPad: " ", startingAt: 0) + " " + lag + copying)
            }
        }
        // How each source's writer maps what it reads into keys, as recorded at the root.
        let descriptors = (s["source_descriptors"] as? [String: Any] ?? [:]).compactMapValues { $0 as? String }
        if !descriptors.isEmpty {
            printLine("")
            printLine("SOURCE".padding(toLength: 40, withPad: " ", startingAt: 0) + " MAPPING (recorded by its writer)")
            for (id, d) in descriptors.sorted(by: { $0.key < $1.key }) {
                printLine(id.padding(toLength: 40, withPad: " ", startingAt: 0) + " " + d)
            }
        }
    }
}

struct Wait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until a root has applied a source up to a position (a cut-over barrier), or until a node holds another's head.",
        discussion: """
            Exits 0 once checkpoint(SOURCE_ID) ≥ the position, 5 when --timeout passes first, 1 at \
            once when the root has no checkpoint of that name (the known ids are listed). A KT \
            bridge moves its checkpoint on KT's heartbeats too (KT's clock minus 1 s), so \
            '--until now' completes about a second and a batch interval later even when KT is \
            quiet.

            With --head-of OTHER instead: reads OTHER's head once, then exits 0 once the node's \
            log holds that entry (same index, same chained hash: the node is a copy of OTHER up \
            to there, as a mirror or a replica of it becomes), 5 when --timeout passes first, 1 \
            when the node holds another entry at that index or its own head is not in OTHER's \
            log (another history: it never will) or \
            no longer retains that index to compare (compare with verify --against). \
            Under writes OTHER moves on meanwhile; the wait is for where it was.
            """)

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: ArgumentHelp("The source id whose checkpoint to watch (qsctl status lists them). (env: QS_CTL_WAIT_SOURCE_ID)", valueName: "id"))
    var sourceID: String = QSEnv.string("QS_CTL_WAIT_SOURCE_ID") ?? ""
    @Option(help: ArgumentHelp("The position to reach: now, an RFC 3339 time or a KT timestamp (KT sources), index:N (QS log sources); a bare small number is refused as ambiguous. (env: QS_CTL_WAIT_UNTIL)", valueName: "position"))
    var until: String = QSEnv.string("QS_CTL_WAIT_UNTIL") ?? ""
    @Option(help: ArgumentHelp("Instead of --source-id and --until: wait until the node holds the head that node (HOST:PORT) has now (index and chained hash). (env: QS_CTL_WAIT_HEAD_OF)", valueName: "host:port"))
    var headOf: OrNone<Address> = QSEnv.value("QS_CTL_WAIT_HEAD_OF", .none, flag: "--head-of")
    @Option(help: ArgumentHelp("With --head-of: file holding one of that node's tokens, presented to read it from another machine (two roots of a cutover may have different tokens); default: the token qsctl reads --node with. (env: QS_CTL_WAIT_HEAD_OF_TOKEN_FILE)", valueName: "file"))
    var headOfTokenFile: String = QSEnv.string("QS_CTL_WAIT_HEAD_OF_TOKEN_FILE") ?? ""
    @Option(help: ArgumentHelp("Give up after this long, e.g. 30s. (env: QS_CTL_WAIT_TIMEOUT)", valueName: "duration"))
    var timeout: Interval = QSEnv.value("QS_CTL_WAIT_TIMEOUT", Interval(.seconds(60)), flag: "--timeout")
    @Option(help: outputHelp("QS_CTL_WAIT_OUTPUT", "table prints the position reached; json {source_id, reached, until, position}, or with --head-of {head_of, index, hash, node_index}."))
    var output: OutputFormat = QSEnv.value("QS_CTL_WAIT_OUTPUT", OutputFormat.table, flag: "--output")

    func validate() throws {
        if headOf.value != nil {
            guard sourceID.isEmpty && until.isEmpty else {
                throw ValidationError("give either --head-of HOST:PORT or --source-id with --until, not both")
            }
            return
        }
        // From the environment it may be meant for --head-of runs only: ignored without.
        if !headOfTokenFile.isEmpty && QSEnv.string("QS_CTL_WAIT_HEAD_OF_TOKEN_FILE") != headOfTokenFile {
            throw ValidationError("--head-of-token-file applies to --head-of only: --source-id reads --node with its --read-token-file")
        }
        guard !sourceID.isEmpty else { throw ValidationError("--source-id is required (or --head-of HOST:PORT to wait for another node's head)") }
        guard !until.isEmpty else { throw ValidationError("--until is required: \(WaitTarget.forms)") }
        do { _ = try WaitTarget(parsing: until) } catch { throw ValidationError("\(error)") }
    }

    func run() async throws {
        if let other = headOf.value { return try await waitForHead(of: other) }
        let target = try WaitTarget(parsing: until)
        let position = target.position()
        let deadline = ContinuousClock.now + timeout.duration
        let reached = try await options.withClient { client -> UInt64 in
            guard var last = try await client.checkpoint(sourceID: sourceID) else {
                let known = try await knownSourceIDs(client)
                fail("\(options.node) holds no checkpoint named '\(sourceID)'; known source ids: \(known.isEmpty ? "none" : known.joined(separator: ", "))")
                throw Exit.notFound
            }
            // A KT source in its initial copy counts the copy's batches (small numbers) until
            // the copy ends at the KT timestamp it started from: wait through it.
            if target.isTimestamp && !SourcePosition.isKTTimestamp(last), try await copying(client) {
                fail("\(sourceID) is in its initial copy (\(last) batches so far); waiting for it to end and the feed to pass \(target)")
                while !SourcePosition.isKTTimestamp(last) && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(200))
                    last = try await client.checkpoint(sourceID: sourceID) ?? last
                }
                guard SourcePosition.isKTTimestamp(last) else {
                    throw timedOut("\(sourceID) is still in its initial copy (\(last) batches); see the bridge's qs_bridge_copy_* metrics for its progress and ETA")
                }
            }
            if SourcePosition.isKTTimestamp(last) != target.isTimestamp {
                fail(target.isTimestamp
                     ? "\(sourceID) is positioned by log index (checkpoint \(last)), not by KT timestamp: give --until index:N"
                     : "\(sourceID) is positioned by KT timestamp (checkpoint \(last)): give --until now, an RFC 3339 time or a KT timestamp")
                throw Exit.usage
            }
            while last < position && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                last = try await client.checkpoint(sourceID: sourceID) ?? last
            }
            return last
        }
        guard reached >= position else { throw timedOut("\(sourceID) is at \(reached), not yet \(position) (--until \(target))") }
        report(json: "{\"source_id\":\(jsonString(sourceID)),\"reached\":\(reached),\"until\":\(jsonString(target.description)),\"position\":\(position)}",
               table: "\(sourceID) reached \(reached) (--until \(target) = \(position))")
    }

    func timedOut(_ what: String) -> ExitCode {
        fail("timed out after \(timeout): " + what)
        return timedOutExit
    }

    func report(json: String, table: String) {
        var out = Output(output, listing: false)
        out.item(json: json, table: table)
        out.finish()
    }
}

extension Wait {
    /// `--head-of OTHER`: OTHER's head now, then the node's log until it holds that entry.
    func waitForHead(of other: Address) async throws {
        let o = options.reading(other, tokenFile: headOfTokenFile, flag: "--head-of-token-file")
        let deadline = ContinuousClock.now + timeout.duration
        let (target, reached) = try await o.withClient { theirs in
            let target = try await theirs.head()
            return (target, try await options.withClient { client -> Head? in
                while true {
                    // Verify's comparison of two heads: the node's entry at OTHER's head once
                    // it is past it, OTHER's entry at the node's head while it is behind.
                    let head = try await client.head()
                    switch try await Verify.relation(client, head, theirs, target) {
                    case .equal, .ahead:
                        return head
                    case .behind:
                        break
                    case .diverged:
                        fail("\(options.node) (head \(head.index), \(hexString(head.hash))) and \(other) (head \(target.index), \(hexString(target.hash))) are of another history: it will never hold \(other)'s head")
                        throw Exit.notFound
                    case .unknown:
                        fail("\(options.node) is at \(head.index) and the longer log no longer retains the shorter head's index to compare with \(other)'s head \(target.index): compare with qsctl verify --against")
                        throw Exit.notFound
                    }
                    if ContinuousClock.now >= deadline { return nil }
                    try await Task.sleep(for: .milliseconds(100))
                }
            })
        }
        guard let reached else {
            throw timedOut("\(options.node) has not reached \(other)'s head (index \(target.index)); is something feeding it (its mirror bridge, its upstream)?")
        }
        report(json: "{\"head_of\":\(jsonString(other.description)),\"index\":\(target.index),\"hash\":\"\(hexString(target.hash))\",\"node_index\":\(reached.index)}",
               table: "\(options.node) holds \(other)'s head: index \(target.index), hash \(hexString(target.hash)) (its own head is at \(reached.index))")
    }

    /// Whether the source's initial copy is in progress (the node holds its copy cursor).
    func copying(_ client: QSClient) async throws -> Bool {
        guard case let .value(record) = try await client.send(.getCopyCursor(sourceID: sourceID), timeout: .seconds(30)) else { return false }
        return record != nil
    }
}

/// The source ids a node holds checkpoints for, from its status.
func knownSourceIDs(_ client: QSClient) async throws -> [String] {
    let json = try await client.status()
    let s = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
    let sources = s?["sources"] as? [[String: Any]] ?? []
    return sources.compactMap { $0["source_id"] as? String }.sorted()
}
