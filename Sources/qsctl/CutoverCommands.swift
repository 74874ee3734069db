import ArgumentParser
import Foundation
import NIOCore
import QSBytes
import QSClient
import QSDaemon
import QSModel
import QSNet
import QSWire

// Moving the writers from one root to another: promote a compatible mirror, demote a
// root to a mirror, and the cut-over that does both safely (docs/runbook.md).

struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a compatible mirror into a writable root that continues the same log.",
        discussion: """
            The node keeps its log, keyspace and per-source checkpoints (they travelled with the \
            mirrored entries), so a bridge pointed at it resumes where it stopped on the old root. \
            It then refuses compatible appends: a qsqsbridge still feeding it stops. Carries the \
            node's admin token (--admin-token-file); a node without one takes role changes \
            from this machine only. The node logs the change. Prefer 'qsctl cutover', \
            which first demotes the old root and makes sure the mirror holds its head. Before \
            promoting a mirror, qsctl asks the roots its qsqsbridges read (live, silent, or seen \
            since it was last promoted, kept across restarts), and what each is fed from in \
            turn (a replica's upstream, a mirror's sources; 16 hops). Refused (exit 2) even \
            with --force: a source that answers and takes writes (two roots would fork the \
            history), one that answers holding entries the mirror lacks (writes it \
            acknowledged would be lost), or one that answers but refuses qsctl's token. Refused \
            without --force: a source that does not answer, one on another history, and a \
            mirror nothing feeds (a root demoted by a cut-over: the root it handed its writes to \
            takes them). A mirror a live qsqsbridge feeds from a demoted source is promoted once \
            it holds that source's head (index and hash: every write the source acknowledged).
            """)

    @ParentCommand var parent: Qsctl

    @Flag(help: "Promote a mirror whose source does not answer (gone for good), one on another history, or a demoted root nothing feeds (you are undoing a demote). Never overrides a source that answers and takes writes or holds entries the mirror lacks. (env: QS_CTL_PROMOTE_FORCE)")
    var force: Bool = QSEnv.flag("QS_CTL_PROMOTE_FORCE", flag: "--force")

    func run() async throws {
        try await checkTheSources()
        try await changeRole(.promote, parent.options, becomes: "a writable root")
    }

    /// What a compatible mirror's source roots say before it becomes a root. The sources
    /// are those its bridges name in their hellos: live ones, connected but silent ones, and
    /// those seen before, kept in the store across restarts (`NodeStatus.knownSources`). Refused whatever
    /// --force says: a source that answers and takes writes (two roots would fork), or one
    /// that answers, demoted, holding entries the mirror lacks (writes it acknowledged
    /// would be lost). Without --force, also refused: a source that does not answer, one on
    /// another history, and a mirror nothing feeds (the root its source handed the writes to
    /// is unknown); a live bridge's demoted source holding exactly the mirror's head is what
    /// `cutover` waits for, and the promote goes ahead.
    func checkTheSources() async throws {
        let options = parent.options
        let status = try await options.withClient { try await $0.status() }
        let s = NodeStatus.parse(status) ?? [:]
        let node = options.node
        guard NodeStatus.isMirror(s) else { return }
        if (s["mirror"] as? [String: Any])?["sources_seen_unknown"] as? Bool == true {
            fail("\(node) is a compatible mirror that cannot say yet which roots its qsqsbridges read (a root cluster member still catching up with etcd, or a store it cannot read): whether promoting it would fork cannot be checked. Run again once 'qsctl --node \(node) status' lists them (--force does not override this). Nothing changed")
            throw Exit.usage
        }
        let following = (s["mirror"] as? [String: Any])?["following"] as? Bool == true
        let sources = NodeStatus.knownSources(s).map(Address.init)
        let mine = try await options.withClient { try await $0.head() }
        // Each finding: the node's address (for the commands suggested) and how it was
        // reached (for the words: "A (through B)" when fed through another node).
        var writable = [(address: String, name: String)](), silent = [String](), refusing = [String]()
        var longer = [(address: String, name: String, head: Head)](), other = [(address: String, name: String, head: Head)]()
        for answer in await Self.ask(sources, options: options, mine: mine) {
            switch answer.finding {
            case .writable: writable.append((answer.address, answer.name))
            case let .longer(head): longer.append((answer.address, answer.name, head))
            case let .other(head): other.append((answer.address, answer.name, head))
            case let .silent(why): silent.append("\(answer.name) (\(why))")
            case let .refused(why): refusing.append("\(answer.name) (\(why))")
            case .holdsNoMore: break
            }
        }
        let feeds = following ? "that a qsqsbridge still feeds" : "that no qsqsbridge feeds now"
        let dropping = "--force does not override a root that answers: if that root is to be dropped for good, stop it first. Nothing changed"
        if !refusing.isEmpty {
            fail("\(node) is a compatible mirror \(feeds), and its source \(refusing.joined(separator: ", ")) answers but cannot be checked, so whether it takes writes is unknown. Give qsctl a token it takes (--read-token-file, or --write-token-file), or wait until it lists the roots it reads ('qsctl status'), and run again. --force does not override a node that answers. Nothing changed")
            throw Exit.usage
        }
        if !writable.isEmpty {
            fail("\(node) is a compatible mirror \(feeds), and its source \(writable.map(\.name).joined(separator: ", ")) still takes writes: promoting \(node) would make two roots whose histories fork. Run \(following ? "" : "its qsqsbridge again ('qsqsbridge --source qs://\(writable[0].address) --root \(node) --mode compatible'), then ")'qsctl cutover --from \(writable[0].address) --to \(node)' (it demotes the source first and waits for the mirror to hold its head). \(dropping)")
            throw Exit.usage
        }
        if let (source, name, theirs) = longer.first {
            fail("\(node) is a compatible mirror \(feeds), and its source \(name)\(name == source ? ", demoted," : ",") holds index \(theirs.index) and \(node) only \(mine.index): promoting \(node) now would lose the \(theirs.index - mine.index == 1 ? "entry" : "\(theirs.index - mine.index) entries") between (writes \(source) acknowledged) and fork the two histories. Wait until it holds \(source)'s head ('qsctl --node \(node) wait --head-of \(source)'; a 'qsqsbridge --source qs://\(source) --root \(node) --mode compatible' must feed it), then promote it; or give the writes back to \(source) ('qsctl --node \(source) promote --force'). \(dropping)")
            throw Exit.usage
        }
        if force { return }
        if let (_, name, theirs) = other.first {
            fail("\(node) is a compatible mirror \(feeds), and its source \(name) holds index \(theirs.index) (hash \(hexString(theirs.hash).prefix(16))) and \(node) index \(mine.index) (hash \(hexString(mine.hash).prefix(16))): not the same history. Find which root holds the writes ('qsctl --node ROOT status' of each) before promoting either; if \(node) is the one, run again with --force. Nothing changed")
            throw Exit.usage
        }
        if !silent.isEmpty {
            fail("\(node) is a compatible mirror \(feeds), and whether its source takes writes is unknown: \(silent.joined(separator: ", ")). If that root is gone for good, run again with --force; otherwise demote it first ('qsctl --node SOURCE demote') or use 'qsctl cutover'. Nothing changed")
            throw Exit.usage
        }
        if following {
            if !sources.isEmpty { return }
            let through = (s["mirror"] as? [String: Any])?["through_cluster"] as? Bool == true
            let what = through ? "the bridge writes to another member of this cluster, which names it (promote through that member, or use 'qsctl cutover --from SOURCE --to \(node)')"
                : "a source it does not name"
            fail("\(node) is a compatible mirror that a qsqsbridge still feeds, and whether its source takes writes is unknown: \(what). If that root is gone for good, run again with --force; otherwise demote it first ('qsctl --node SOURCE demote') or use 'qsctl cutover'. Nothing changed")
            throw Exit.usage
        }
        // A mirror nothing feeds: a demoted root (a cut-over handed its writes to another
        // root), or a mirror whose bridge stopped. Where the writes went is unknown.
        let known = sources.isEmpty ? "" : " (its source \(sources.map { "\($0)" }.joined(separator: ", ")) is demoted and holds \(node)'s head, but which root it handed its writes to is unknown)"
        fail("\(node) is a compatible mirror (demoted, or fed by a qsqsbridge that has stopped) and no qsqsbridge feeds it now\(known): the root it handed its writes to, or mirrored, most likely still takes them, and promoting \(node) would make two roots whose histories fork. To give \(node) the writes, run 'qsctl cutover --from THAT_ROOT --to \(node)' (it demotes that root first and waits for \(node) to hold its head). If no other root took the writes (you are undoing a demote of \(node)) or that root is gone for good, run again with --force. Nothing changed")
        throw Exit.usage
    }
}

struct Demote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a root into a compatible mirror continuing its own head.",
        discussion: """
            The node then refuses batches (bridges writing to it wait and retry) and takes \
            compatible appends that continue its head: 'qsqsbridge --source qs://NEW --root \
            THIS --mode compatible' keeps it in step with the new root, and replicas can move \
            back to it. Prints the head it was demoted at. Carries the admin token \
            (--admin-token-file), as promote does; the node logs the change.
            """)

    @ParentCommand var parent: Qsctl

    func run() async throws {
        try await changeRole(.demote, parent.options, becomes: "a compatible mirror")
    }
}

/// Promotes or demotes `options.node` and prints what it became and at which head.
func changeRole(_ change: Request.RoleChange, _ options: NodeOptions, becomes: String) async throws {
    let admin = try options.adminToken()
    let head = try await options.withClient { client in
        do {
            return try await client.changeRole(change, adminToken: admin)
        } catch ClientError.server(let code, let message) where ErrorCode(rawValue: code) == .unauthorized && admin == nil {
            // Without --admin-token-file the write token went in its place.
            throw ClientError.server(code: code, message: message + " (qsctl had no --admin-token-file, QS_CTL_ADMIN_TOKEN_FILE, and sent its write token instead: give it the node's admin token file)")
        }
    }
    printLine("\(options.node) is \(becomes) at index \(head.index) hash \(hexString(head.hash))")
}

struct Cutover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move the writes from root --from to its compatible mirror --to: demote, wait for the mirror to hold the head, promote.",
        discussion: """
            Checks that --to is a compatible mirror holding a prefix of --from's log, demotes \
            --from (it stops taking batches; its head is final), waits until --to holds that \
            head (same index, same chained hash), then promotes --to. If --to does not get \
            there within --timeout, --from is promoted back and the command exits 5: nothing \
            changed but a pause in writes. Exit 2: nothing changed (the roles are not right, or \
            a node could not be reached or did not answer before the demote). Exit 3: no root \
            may take writes (the message says what to run). Exit 0: --to takes the writes; point the bridges at \
            it, and feed --from from it (qsqsbridge --source qs://TO --root FROM --mode \
            compatible) to keep the way back open. --admin-token-file must hold the admin \
            token of both roots (or run it on their machine when they have none).
            """)

    @ParentCommand var parent: Qsctl

    @Option(help: ArgumentHelp("The root that takes writes now, HOST:PORT. (env: QS_CTL_CUTOVER_FROM)", valueName: "host:port"))
    var from: OrNone<Address> = QSEnv.value("QS_CTL_CUTOVER_FROM", .none, flag: "--from")

    @Option(help: ArgumentHelp("Its compatible mirror, to take writes next, HOST:PORT. (env: QS_CTL_CUTOVER_TO)", valueName: "host:port"))
    var to: OrNone<Address> = QSEnv.value("QS_CTL_CUTOVER_TO", .none, flag: "--to")

    @Option(help: ArgumentHelp("How long the mirror may take to reach the demoted root's head, e.g. 30s. (env: QS_CTL_CUTOVER_TIMEOUT)", valueName: "duration"))
    var timeout: Interval = QSEnv.value("QS_CTL_CUTOVER_TIMEOUT", Interval(.seconds(30)), flag: "--timeout")

    func validate() throws {
        guard let from = from.value, let to = to.value else { throw ValidationError("--from HOST:PORT and --to HOST:PORT are required") }
        guard from != to else { throw ValidationError("--from and --to name the same node") }
    }

    func run() async throws {
        guard let fromAddress = from.value, let toAddress = to.value else { throw Exit.usage }
        var fromOptions = parent.options, toOptions = parent.options
        fromOptions.node = fromAddress
        toOptions.node = toAddress
        let admin = try parent.options.adminToken()
        // Before the demote nothing has changed: a node that cannot be reached or does not
        // answer ends the cut-over with exit 2, as a refusal does (3 is kept for "no root
        // takes writes" and a failed undo).
        let old: QSClient, new: QSClient
        do {
            old = try await fromOptions.connect()
        } catch {
            fail("nothing changed: the cut-over did not start")
            throw Exit.usage
        }
        do {
            new = try await toOptions.connect()
        } catch {
            await old.close()
            fail("nothing changed: the cut-over did not start")
            throw Exit.usage
        }
        defer { Task { await old.close(); await new.close() } }
        do {
            try await checkReady(old: old, new: new, from: fromAddress, to: toAddress)
        } catch let e as ExitCode {
            throw e
        } catch {
            let (address, cause) = (error as? Unanswered).map { ($0.address, $0.error) } ?? (nil, error)
            fail("nothing changed: \(parent.options.describe(cause, address))")
            throw Exit.usage
        }

        // Every call below waits at most --request-timeout, and the wait for the mirror at
        // most --timeout in all: a node that stops answering ends the cut-over, undone,
        // instead of hanging it with the old root demoted.
        let request = parent.options.requestTimeAmount
        // From the demote on, SIGINT and SIGTERM do not cut the cut-over short (no root would
        // take writes): they end the wait for the mirror, and the old root is promoted back
        // before qsctl exits (130).
        let interrupted = Interruption()
        defer { interrupted.stop() }
        let final: Head
        do {
            final = try await old.changeRole(.demote, adminToken: admin)
        } catch let refusal as ClientError where !Self.outcomeUnknown(refusal) {
            fail("demoting \(fromAddress) was refused, nothing changed: \(refusal)")
            throw Exit.serverError
        } catch {
            // No answer, or a cluster whose etcd did not confirm: the demote may have
            // happened, or may still. Promoting it again settles it either way.
            fail("demoting \(fromAddress): the outcome is unknown (\(parent.options.describe(error, fromAddress))); promoting it again so that it takes writes whatever happened")
            // On a connection of its own: the one that lost the answer may be closed.
            let fresh = try? await fromOptions.connect()
            try await restore(fresh ?? old, fromAddress, admin, request)
            await fresh?.close()
            throw Exit.serverError
        }
        fail("\(fromAddress) demoted at index \(final.index) hash \(hexString(final.hash)); waiting for \(toAddress) to hold it")

        let deadline = ContinuousClock.now + timeout.duration
        func bounded() -> TimeAmount {
            let left = deadline - ContinuousClock.now
            let ns = max(Int64(left.seconds * 1e9), 100_000_000)
            return .nanoseconds(min(ns, request.nanoseconds))
        }
        // The last poll's failure while no answer came for a whole --request-timeout: a
        // mirror killed or hung during the wait is reported as not answering, not as slow.
        // A mirror restarted during the wait is asked again on a new connection.
        var mirror = new
        var unanswered: (any Error)?
        var lastAnswer = ContinuousClock.now
        let (writeToken, readToken) = try parent.options.tokens()
        func poll(_ last: Head) async -> Head {
            do {
                let head = try await mirror.head(timeout: bounded())
                (unanswered, lastAnswer) = (nil, ContinuousClock.now)
                return head
            } catch {
                if ContinuousClock.now - lastAnswer >= .nanoseconds(request.nanoseconds) { unanswered = error }
                if ContinuousClock.now < deadline, let fresh = try? await QSClient.connect(to: toAddress.endpoint, token: writeToken, readToken: readToken, requestTimeout: bounded()) {
                    let stale = mirror
                    mirror = fresh
                    Task { await stale.close() }
                }
                return last
            }
        }
        defer { let last = mirror; Task { await last.close() } }
        var reached = await poll(.empty)
        while reached != final && reached.index <= final.index && ContinuousClock.now < deadline && !interrupted.happened {
            try? await Task.sleep(for: .milliseconds(50))
            reached = await poll(reached)
        }
        if interrupted.happened {
            fail("interrupted (\(interrupted.name)): undoing the cut-over before exiting")
        } else if reached.index == final.index && reached.hash == final.hash {
            do {
                let head = try await mirror.changeRole(.promote, adminToken: admin)
                await recordHandover(old, from: fromAddress, to: toAddress)
                printDone(head)
                return
            } catch let refusal as ClientError where !Self.outcomeUnknown(refusal) {
                fail("promoting \(toAddress) was refused: \(refusal)")
            } catch {
                // No answer, or a cluster whose etcd did not confirm: the promote may have
                // happened, or may still (an etcd transaction that timed out can commit
                // later), and promoting the old root back then would leave two roots taking
                // writes. Demoting the new root again settles it: once that is answered it
                // is a mirror for good (a late promote compares the role's revision, which
                // the demote moved).
                fail("promoting \(toAddress): the outcome is unknown (\(parent.options.describe(error, toAddress))); demoting it again before \(fromAddress) takes the writes back")
                // On a connection of its own: the one that lost the answer may be closed.
                let fresh = try? await toOptions.connect()
                defer { if let fresh { Task { await fresh.close() } } }
                let fence = fresh ?? mirror
                do {
                    _ = try await fence.changeRole(.demote, adminToken: admin, timeout: request)
                } catch {
                    switch try? await writeRole(fence, timeout: request) {
                    case "promoted"?, "open"?:
                        let head = (try? await fence.head(timeout: request)) ?? final
                        await recordHandover(old, from: fromAddress, to: toAddress)
                        printDone(head)
                        return
                    default:
                        fail("NO ROOT TAKES WRITES: \(fromAddress) is demoted and whether \(toAddress) was promoted is unknown (it could not be demoted again: \(parent.options.describe(error, toAddress))). Run 'qsctl --node \(toAddress) status' once it answers: if it takes writes, it is the new root; if it is a mirror, run 'qsctl --node \(toAddress) demote' and then 'qsctl --node \(fromAddress) promote --force'. Never promote both.")
                        throw Exit.serverError
                    }
                }
                fail("\(toAddress) demoted again: it is a mirror")
            }
        } else if reached.index >= final.index {
            fail("\(toAddress) reached index \(reached.index) with hash \(hexString(reached.hash)), not \(fromAddress)'s head \(final.index) hash \(hexString(final.hash)): it does not mirror \(fromAddress)")
        } else if let unanswered {
            fail("\(toAddress) stopped answering while \(fromAddress) waited for it (\(unanswered)); it last held index \(reached.index) of \(final.index)")
        } else {
            fail("\(toAddress) did not reach \(fromAddress)'s head \(final.index) within \(timeout) (it is at \(reached.index)): check the qsqsbridge feeding it (its log, qs_bridge_lag_seconds) and that \(toAddress) answers")
        }
        // Undo: the old root takes writes again.
        do {
            _ = try await old.changeRole(.promote, adminToken: admin, timeout: request)
        } catch {
            fail("UNDO FAILED, NO ROOT TAKES WRITES: \(fromAddress) is still demoted (\(parent.options.describe(error, fromAddress))). Once it answers, run: qsctl --node \(fromAddress) promote --force (\(toAddress) is a mirror: it was never promoted)")
            throw Exit.serverError
        }
        fail(unanswered == nil
            ? "cut-over undone: \(fromAddress) takes writes again, \(toAddress) is still a mirror"
            : "cut-over undone: \(fromAddress) takes writes again; \(toAddress) was never promoted (once it answers it is a mirror)")
        throw interrupted.happened ? ExitCode(130) : timedOutExit
    }

    /// Tells the demoted root where its writes went (a hello naming `handed-to=qs://TO`,
    /// which it records with the sources its mirror bridges name): a mirror fed from it is
    /// then refused a promote while TO takes writes (it asks what its source is fed from).
    /// A failure only weakens that check: said, not fatal.
    func recordHandover(_ old: QSClient, from: Address, to: Address) async {
        let token = (try? parent.options.tokens().write) ?? []
        do {
            let answer = try await old.send(.hello(token: token, client: "qsctl cutover handed-to=qs://\(to)"), timeout: parent.options.requestTimeAmount)
            if case let .error(_, message) = answer { throw ClientError.unexpected(message) }
        } catch {
            fail("note: \(from) could not record that its writes went to \(to) (\(error)): a mirror fed from \(from) is not refused a promote by it; feed \(from) from \(to) (runbook section 6), which records it")
        }
    }

    /// Whether a failed role change may still have happened: no answer, or a cluster whose
    /// etcd did not confirm the change (`storage-error`); any other answer is a refusal that
    /// changed nothing.
    static func outcomeUnknown(_ error: ClientError) -> Bool {
        guard case let .server(code, _) = error else { return true }
        return ErrorCode(rawValue: code) == .storageError
    }

    /// After a demote whose outcome is unknown: promotes the node again and says where it
    /// stands (a promote of a root that takes writes changes nothing).
    func restore(_ client: QSClient, _ address: Address, _ admin: [UInt8]?, _ request: TimeAmount) async throws {
        do {
            _ = try await client.changeRole(.promote, adminToken: admin, timeout: request)
        } catch {
            fail("UNDO FAILED, NO ROOT MAY TAKE WRITES: \(address) could not be promoted again (\(parent.options.describe(error, address))). Once it answers, run 'qsctl --node \(address) status'; if it says mirror, run 'qsctl --node \(address) promote --force'")
            return
        }
        fail("\(address) takes writes (promoted again); nothing else changed")
    }

    func printDone(_ head: Head) {
        guard let fromAddress = from.value, let toAddress = to.value else { return }
        printLine("cut-over done: \(toAddress) is the writable root at index \(head.index) hash \(hexString(head.hash)); \(fromAddress) is a compatible mirror. Point the bridges at \(toAddress) and feed \(fromAddress) with: qsqsbridge --source qs://\(toAddress) --root \(fromAddress) --mode compatible")
    }

    /// Refuses a cut-over that cannot succeed, before anything changes: `to` must be a
    /// compatible mirror whose log is a prefix of `from`'s, and `from` must take writes.
    func checkReady(old: QSClient, new: QSClient, from: Address, to: Address) async throws {
        let oldRole = try await Unanswered.naming(from) { try await writeRole(old) }
        let newRole = try await Unanswered.naming(to) { try await writeRole(new) }
        guard oldRole != "mirror", oldRole != "replica" else {
            if oldRole == "mirror", newRole == "mirror" {
                // Both mirrors: nothing takes writes (a cut-over killed between its demote
                // and its promote, or its undo). Say which one to promote.
                let (oldHead, newHead) = (try await Unanswered.naming(from) { try await old.head() },
                                          try await Unanswered.naming(to) { try await new.head() })
                let which = newHead == oldHead
                    ? "\(to) holds \(from)'s head (index \(oldHead.index)): finish the cut-over with 'qsctl --node \(to) promote', or undo it with 'qsctl --node \(from) promote --force'"
                    : "\(to) does not hold \(from)'s head (index \(newHead.index) against \(oldHead.index)): undo the cut-over with 'qsctl --node \(from) promote --force' (or wait until \(to) holds it: 'qsctl --node \(to) wait --head-of \(from)', then 'qsctl --node \(to) promote')"
                fail("NO ROOT TAKES WRITES: \(from) and \(to) are both compatible mirrors (a cut-over interrupted between its demote and its promote?). \(which); nothing changed")
                throw Exit.usage
            }
            if oldRole == "mirror", newRole == "open" || newRole == "promoted" {
                fail("\(from) is a compatible mirror and \(to) takes writes: this cut-over looks done already (to give the writes back, feed \(from) from \(to) and run 'qsctl cutover --from \(to) --to \(from)'); nothing changed")
                throw Exit.usage
            }
            fail("\(from) is a \(oldRole == "mirror" ? "compatible mirror" : "replica"), not the root taking writes: nothing changed")
            throw Exit.usage
        }
        guard newRole != "replica" else {
            fail("\(to) is a replica (it follows an upstream and takes no writes), not a root that can take over: start a root (qsnode --role root) on empty data, feed it with qsqsbridge --source qs://\(from) --root NEW_ROOT --mode compatible, and cut over to that root; nothing changed")
            throw Exit.usage
        }
        guard newRole == "mirror" else {
            fail("\(to) is not a compatible mirror (it is \(newRole)): start qsqsbridge --source qs://\(from) --root \(to) --mode compatible first; nothing changed")
            throw Exit.usage
        }
        let newHead = try await Unanswered.naming(to) { try await new.head() }
        // A mirror nothing feeds cannot reach the head the demote will fix, unless it holds
        // it already: the cut-over would only stop the writes and undo itself. A bridge
        // just started may not have said hello yet: waited for, within --timeout.
        let deadline = ContinuousClock.now + timeout.duration
        while true {
            let fed = try await Unanswered.naming(to) { try await NodeStatus.parse(new.status()).map { ($0["mirror"] as? [String: Any])?["following"] as? Bool == true } } ?? false
            if fed { break }
            let (theirs, mine) = (try await Unanswered.naming(from) { try await old.head() }, try await Unanswered.naming(to) { try await new.head() })
            if theirs == mine { break }
            guard ContinuousClock.now < deadline else {
                fail("\(to) is a compatible mirror that no qsqsbridge feeds (waited \(timeout), --timeout), and it does not hold \(from)'s head: it could not catch up once \(from) is demoted. Start 'qsqsbridge --source qs://\(from) --root \(to) --mode compatible' first; nothing changed")
                throw Exit.usage
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        guard newHead.index > 0 else { return }
        let there = try await Unanswered.naming(from) { try await old.entries(from: newHead.index, count: 1).first }
        guard let there, there.index == newHead.index else {
            fail("\(from) no longer retains entry \(newHead.index) (\(to)'s head) to compare histories, or is behind it: nothing changed")
            throw Exit.usage
        }
        guard there.hash == newHead.hash else {
            fail("\(to) has another history than \(from) (at index \(newHead.index) the hashes differ): nothing changed")
            throw Exit.usage
        }
    }

    func writeRole(_ client: QSClient, timeout: TimeAmount? = nil) async throws -> String {
        let json = try await client.status(timeout: timeout)
        let s = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        return s?["write_role"] as? String ?? "unknown"
    }
}

/// A call to `address` that failed with `error`: which of two nodes did not answer.
struct Unanswered: Error {
    let address: Address
    let error: any Error

    static func naming<T>(_ address: Address, _ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch { throw Unanswered(address: address, error: error) }
    }
}

/// SIGINT and SIGTERM caught while it lives (`stop` gives them back their default): the
/// cut-over asks `happened` and finishes safely instead of dying half-way.
final class Interruption: @unchecked Sendable {
    private let lock = NSLock()
    private var caught: Int32?
    private var sources: [any DispatchSourceSignal] = []

    init() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [weak self] in
                self?.lock.withLock { if self?.caught == nil { self?.caught = sig } }
                fail("\(sig == SIGINT ? "SIGINT" : "SIGTERM"): finishing the cut-over safely (the old root is promoted back unless the new one already took the writes)")
            }
            source.resume()
            sources.append(source)
        }
    }

    var happened: Bool { lock.withLock { caught != nil } }
    var name: String { lock.withLock { caught == SIGINT ? "SIGINT" : "SIGTERM" } }

    func stop() {
        for s in sources { s.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}
