import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// The new root takes over and hands back, under a live KT workload: `qsctl cutover`
/// demotes L, waits for N to hold L's head and promotes N; a bridge pointed at N resumes
/// from the checkpoint that travelled with the mirrored entries; L, demoted, follows N, and
/// a replica moves back to it; then the writes go back to L the same way. Every node ends
/// equal and KT's feed was applied exactly once.
final class CutoverTests: XCTestCase {
    var tmp: URL!
    var token: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cutover")
        token = tmp.appendingPathComponent("write-token")
        try "cutover-test-token-0123456789\n".write(to: token, atomically: true, encoding: .utf8)
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func qsctl(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let r = try Harness.run("qsctl", ["--write-token-file", token.path] + args)
        return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
    }

    func root(_ name: String) throws -> RootNode {
        try RootNode(data: tmp.appendingPathComponent(name), logDir: tmp, extraArgs: ["--write-token-file", token.path])
    }

    func ktBridge(_ kt: FakeKTProcess, host: String, root: RootNode) throws -> DaemonProcess {
        try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(host):\(kt.port)", "--db-map", "0=,1=aux/", "--sid", "99",
                                         "--write-token-file", token.path, "--batch-interval", "100ms",
                                         "--shutdown-timeout", "3s", "--log-format", "text"], logDir: tmp)
    }

    func mirrorBridge(from source: RootNode, to target: RootNode) throws -> DaemonProcess {
        try mirrorBridge(from: source.address, to: target)
    }

    func mirrorBridge(from source: String, to target: RootNode) throws -> DaemonProcess {
        try DaemonProcess("qsqsbridge", ["--source", "qs://\(source)", "--root", target.address, "--mode", "compatible",
                                         "--write-token-file", token.path, "--batch-interval", "100ms", "--log-format", "text"], logDir: tmp)
    }

    func writeRole(_ c: QSClient) async -> String? {
        await status(c)["write_role"] as? String
    }

    func status(_ c: QSClient) async -> [String: Any] {
        guard let json = try? await c.status(),
              let s = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return [:] }
        return s
    }

    func subscribedUpstream(_ c: QSClient) async -> String? {
        guard let u = await status(c)["upstream"] as? [String: Any], u["subscribed"] as? Bool == true else { return nil }
        return u["address"] as? String
    }

    /// L with a few entries and N, its compatible mirror holding them all.
    func mirroredPair() async throws -> (legacy: RootNode, new: RootNode, mirror: DaemonProcess, lc: QSClient, nc: QSClient) {
        let legacy = try root("L"), new = try root("N")
        for i in 0..<5 {
            let put = try qsctl(["--node", legacy.address, "put", "k\(i)", "v\(i)"])
            XCTAssertEqual(put.status, 0, put.err)
        }
        let mirror = try mirrorBridge(from: legacy, to: new)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        let nc = try await QSClient.connect(host: "127.0.0.1", port: new.port)
        let head = try await lc.head()
        let held = await Harness.eventually(timeout: .seconds(30)) { (try? await nc.head()) == head }
        XCTAssertTrue(held, "N did not mirror L:\n\(mirror.log)")
        return (legacy, new, mirror, lc, nc)
    }

    /// The mirror stops answering after L is demoted (a hung process keeps its
    /// connections): the cut-over ends within its --timeout and a request timeout, L takes
    /// writes again, and it says so. Before, it waited for N's answer for a minute a call.
    func testCutoverWhoseMirrorHangsEndsInTimeAndIsUndone() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        // N holds L's head, but the mirror bridge hangs (its connection stays, so N still
        // counts as fed): L's next entry never reaches N.
        kill(mirror.pid, SIGSTOP)
        defer { kill(mirror.pid, SIGCONT) }
        let put = try qsctl(["--node", legacy.address, "put", "after", "stop"])
        XCTAssertEqual(put.status, 0, put.err)
        // N answers the cut-over's checks, then hangs: SIGSTOP once the demote is logged.
        let stopper = Thread {
            _ = Harness.waitUntil(timeout: .seconds(30)) { legacy.daemon.log.contains("demoted") }
            kill(new.daemon.pid, SIGSTOP)
        }
        stopper.start()
        defer { kill(new.daemon.pid, SIGCONT) }
        let r = try Harness.run("qsctl", ["--write-token-file", token.path, "--request-timeout", "1s",
                                          "cutover", "--from", legacy.address, "--to", new.address, "--timeout", "3s"],
                                killAfter: .seconds(60))
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 5, err)
        XCTAssertTrue(err.contains("cut-over undone"), err)
        // A mirror that hangs during the wait is reported as not answering, not as slow.
        XCTAssertTrue(err.contains("\(new.address) stopped answering") && err.contains("was never promoted"), err)
        let role = await writeRole(lc)
        XCTAssertEqual(role, "promoted", "L takes writes again")
        let again = try qsctl(["--node", legacy.address, "put", "again", "yes"])
        XCTAssertEqual(again.status, 0, again.err)
        kill(new.daemon.pid, SIGCONT)
        let roleN = await writeRole(nc)
        XCTAssertEqual(roleN, "mirror", "N was never promoted")
        for c in [lc, nc] { await c.close() }
    }

    /// A cluster's promote whose etcd transaction is not confirmed (no quorum in time, a
    /// lost answer) may still commit: the node answers storage-error "may still take
    /// effect". Before, the cut-over took that for a refusal and promoted the old root back
    /// while the new one became writable: two roots. Now it demotes the new root again
    /// first (answered: a mirror for good), and only then gives the writes back.
    func testAPromoteWhoseOutcomeIsUnknownIsSettledBeforeTheOldRootTakesWritesBack() async throws {
        let legacy = try root("L")
        for i in 0..<3 { XCTAssertEqual(try qsctl(["--node", legacy.address, "put", "k\(i)", "v"]).status, 0) }
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        let fake = try UncertainMirror(head: try await lc.head())
        defer { fake.stop() }
        let r = try Harness.run("qsctl", ["--write-token-file", token.path, "--request-timeout", "2s",
                                          "cutover", "--from", legacy.address, "--to", "127.0.0.1:\(fake.port)", "--timeout", "5s"],
                                killAfter: .seconds(60))
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 5, err)
        XCTAssertTrue(err.contains("the outcome is unknown") && err.contains("demoting it again"), err)
        XCTAssertTrue(err.contains("cut-over undone"), err)
        XCTAssertEqual(fake.role, "mirror", "the new root stays a mirror")
        let role = await writeRole(lc)
        XCTAssertEqual(role, "promoted", "L takes writes again")
        fake.stop()

        // The promote's answer lost with its connection: the new root is demoted again on a
        // connection of its own (before, the dead one was used: "NO ROOT TAKES WRITES", exit
        // 3, with the new root in fact writable and nothing settled).
        let closing = try UncertainMirror(head: try await lc.head(), closesOnPromote: true)
        defer { closing.stop() }
        let lost = try Harness.run("qsctl", ["--write-token-file", token.path, "--request-timeout", "2s",
                                             "cutover", "--from", legacy.address, "--to", "127.0.0.1:\(closing.port)", "--timeout", "5s"],
                                   killAfter: .seconds(60))
        let lostErr = String(decoding: lost.stderr, as: UTF8.self)
        XCTAssertEqual(lost.status, 5, lostErr)
        XCTAssertTrue(lostErr.contains("cut-over undone"), lostErr)
        XCTAssertEqual(closing.role, "mirror", "the new root stays a mirror")
        let again = await writeRole(lc)
        XCTAssertEqual(again, "promoted", "L takes writes again")
        await lc.close()
    }

    /// SIGINT (or SIGTERM) while the cut-over waits for the mirror, L demoted: qsctl does not
    /// die with no root taking writes; it promotes L back, says so and exits 130. Before,
    /// SIGINT was ignored and SIGTERM killed it half-way.
    func testAnInterruptedCutoverIsUndoneBeforeQsctlExits() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        kill(mirror.pid, SIGSTOP)
        defer { kill(mirror.pid, SIGCONT) }
        XCTAssertEqual(try qsctl(["--node", legacy.address, "put", "after", "stop"]).status, 0)
        let interrupter = Thread {
            _ = Harness.waitUntil(timeout: .seconds(30)) { legacy.daemon.log.contains("demoted") }
            _ = try? Harness.run("/usr/bin/pkill", ["-INT", "-f", "cutover --from \(legacy.address) --to \(new.address)"])
        }
        interrupter.start()
        let started = ContinuousClock.now
        let r = try Harness.run("qsctl", ["--write-token-file", token.path, "cutover", "--from", legacy.address, "--to", new.address,
                                          "--timeout", "120s"], killAfter: .seconds(60))
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 130, err)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(30), "ended at the interrupt, not --timeout")
        XCTAssertTrue(err.contains("SIGINT") && err.contains("cut-over undone"), err)
        let role = await writeRole(lc)
        XCTAssertEqual(role, "promoted", "L takes writes again")
        let roleN = await writeRole(nc)
        XCTAssertEqual(roleN, "mirror")
        for c in [lc, nc] { await c.close() }
    }

    /// A mirror that does not answer before anything changes: the cut-over gives up after
    /// the request timeout, exit 2 (nothing changed, as the runbook says; it was 3, the
    /// code of "no root takes writes"), and L was never demoted. A --to that is no node
    /// (nothing listening, or a KT port) likewise, naming what the address is likely to be. qsctl's other commands end the
    /// same way against a hung node, naming the flag.
    func testCutoverToAHungMirrorChangesNothing() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        kill(new.daemon.pid, SIGSTOP)
        defer { kill(new.daemon.pid, SIGCONT) }
        let r = try Harness.run("qsctl", ["--write-token-file", token.path, "--request-timeout", "1s",
                                          "cutover", "--from", legacy.address, "--to", new.address, "--timeout", "3s"],
                                killAfter: .seconds(60))
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 2, err)
        XCTAssertTrue(err.contains("nothing changed") && err.contains("--request-timeout"), err)
        let kt = try FakeKTProcess(logDir: tmp)
        let toKT = try qsctl(["--request-timeout", "5s", "cutover", "--from", legacy.address, "--to", "127.0.0.1:\(kt.port)", "--timeout", "3s"])
        XCTAssertEqual(toKT.status, 2, toKT.err)
        XCTAssertTrue(toKT.err.contains("nothing changed") && toKT.err.contains("not a node's write port"), toKT.err)
        let nobody = try qsctl(["cutover", "--from", legacy.address, "--to", "127.0.0.1:1", "--timeout", "3s"])
        XCTAssertEqual(nobody.status, 2, nobody.err)
        XCTAssertTrue(nobody.err.contains("cannot connect to node 127.0.0.1:1") && nobody.err.contains("nothing changed"), nobody.err)
        let role = await writeRole(lc)
        XCTAssertEqual(role, "open")
        let head = try Harness.run("qsctl", ["--node", new.address, "--request-timeout", "1s", "head"], killAfter: .seconds(60))
        let headErr = String(decoding: head.stderr, as: UTF8.self)
        XCTAssertEqual(head.status, 3, headErr)
        XCTAssertTrue(headErr.contains("did not answer within 1s (--request-timeout)"), headErr)
        let bad = try Harness.run("qsctl", ["--node", new.address, "head"], env: ["QS_CTL_REQUEST_TIMEOUT": "0s"])
        XCTAssertEqual(bad.status, 2, String(decoding: bad.stderr, as: UTF8.self))
        kill(new.daemon.pid, SIGCONT)
        XCTAssertEqual(try mirror.stop(), 0, mirror.log)
        for c in [lc, nc] { await c.close() }
    }

    /// `qsctl promote` of a mirror whose bridge still reads from a root taking writes would
    /// make two roots whose histories fork: refused (exit 2), nothing changed. A demoted
    /// source holding entries the mirror lacks: refused, even with --force. Once the mirror
    /// holds the demoted root's head (the manual cut-over), the same command promotes.
    func testPromoteOfAMirrorWhoseSourceStillTakesWritesIsRefused() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        let refused = try qsctl(["--node", new.address, "promote"])
        XCTAssertEqual(refused.status, 2, refused.err)
        XCTAssertTrue(refused.err.contains("still takes writes") && refused.err.contains("qsctl cutover --from \(legacy.address)"), refused.err)
        let stillMirror = await writeRole(nc)
        XCTAssertEqual(stillMirror, "mirror")
        // The mirror's bridge stalled while L took writes, then L demoted: N does not hold
        // what L acknowledged, and promoting it would lose them and fork. Refused.
        kill(mirror.pid, SIGSTOP)
        var stalled = true
        defer { if stalled { kill(mirror.pid, SIGCONT) } }
        let put = try qsctl(["--node", legacy.address, "put", "acknowledged", "1"])
        XCTAssertEqual(put.status, 0, put.err)
        let demoted = try qsctl(["--node", legacy.address, "demote"])
        XCTAssertEqual(demoted.status, 0, demoted.err)
        let head = try await lc.head()
        let behind = try qsctl(["--node", new.address, "promote"])
        XCTAssertEqual(behind.status, 2, behind.err)
        XCTAssertTrue(behind.err.contains("holds index \(head.index)") && behind.err.contains("wait --head-of \(legacy.address)"), behind.err)
        // Forced too: L answers holding entries N lacks (--force is for a source gone for
        // good); before, --force promoted N at once and L's acknowledged writes were lost.
        let forced = try qsctl(["--node", new.address, "promote", "--force"])
        XCTAssertEqual(forced.status, 2, forced.err)
        XCTAssertTrue(forced.err.contains("holds index \(head.index)") && forced.err.contains("--force does not override"), forced.err)
        let stillBehind = await writeRole(nc)
        XCTAssertEqual(stillBehind, "mirror")
        // qsctl status says the stopped bridge is connected but silent, not that none is.
        var table = ""
        let silent = Harness.waitUntil(timeout: .seconds(20), pollEvery: .milliseconds(250)) {
            table = (try? self.qsctl(["--node", new.address, "status"]).out) ?? ""
            return table.contains("following no (a compatible bridge is connected but silent")
        }
        XCTAssertTrue(silent, table)
        XCTAssertTrue(table.contains("sources seen: qs://\(legacy.address)"), table)
        kill(mirror.pid, SIGCONT)
        stalled = false
        let held = await Harness.eventually(timeout: .seconds(30)) { (try? await nc.head()) == head }
        XCTAssertTrue(held)
        let promoted = try qsctl(["--node", new.address, "promote"])
        XCTAssertEqual(promoted.status, 0, promoted.err)
        let role = await writeRole(nc)
        XCTAssertEqual(role, "promoted")
        _ = try? mirror.stop()
        // The demoted legacy root, nothing feeding it: promoting it back would fork the history
        // N now continues. Refused, nothing changed.
        let back = try qsctl(["--node", legacy.address, "promote"])
        XCTAssertEqual(back.status, 2, back.err)
        XCTAssertTrue(back.err.contains("two roots whose histories fork") && back.err.contains("qsctl cutover --from THAT_ROOT --to \(legacy.address)"), back.err)
        let legacyRole = await writeRole(lc)
        XCTAssertEqual(legacyRole, "mirror")
        for c in [lc, nc] { await c.close() }
    }

    /// The roots a mirror's bridges read are kept in its store: restarted with no bridge
    /// connected, it still names its demoted source, and `promote --force` still refuses to
    /// drop the entries that source holds and it lacks. Before, a restart forgot the source
    /// and --force promoted at once.
    func testAMirrorRestartedWithoutItsBridgeStillAsksItsSource() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        XCTAssertEqual(try mirror.stop(), 0, mirror.log)
        await nc.close()
        let put = try qsctl(["--node", legacy.address, "put", "acknowledged", "1"])
        XCTAssertEqual(put.status, 0, put.err)
        XCTAssertEqual(try qsctl(["--node", legacy.address, "demote"]).status, 0)
        let head = try await lc.head()
        XCTAssertEqual(try new.daemon.stop(), 0, new.daemon.log)
        let restarted = try RootNode(data: new.data, logDir: tmp, extraArgs: ["--write-token-file", token.path])
        let status = try qsctl(["--node", restarted.address, "status"])
        XCTAssertTrue(status.out.contains("sources seen: qs://\(legacy.address)"), status.out + status.err)
        let forced = try qsctl(["--node", restarted.address, "promote", "--force"])
        XCTAssertEqual(forced.status, 2, forced.err)
        XCTAssertTrue(forced.err.contains("holds index \(head.index)") && forced.err.contains("--force does not override"), forced.err)
        let rc = try await QSClient.connect(host: "127.0.0.1", port: restarted.port)
        let role = await writeRole(rc)
        XCTAssertEqual(role, "mirror")
        for c in [lc, rc] { await c.close() }
    }

    /// A mirror fed through another node — a replica of the root, or a mirror of it — is a
    /// copy of that root as much: promote asks what each source is fed from in turn and
    /// refuses (even with --force) while the root at the chain's end takes writes, naming
    /// the chain. Before, it asked the first hop only (a replica, a mirror: neither takes
    /// writes, both at the same head) and promoted: two roots.
    func testPromoteFollowsAChainOfCopiesToTheRootThatTakesWrites() async throws {
        let legacy = try root("L")
        for i in 0..<3 { XCTAssertEqual(try qsctl(["--node", legacy.address, "put", "k\(i)", "v\(i)"]).status, 0) }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("R"), upstreams: [legacy.address], logDir: tmp)
        let viaReplica = try root("N"), middle = try root("M"), viaMirror = try root("O")
        let bridges = try [mirrorBridge(from: replica.address, to: viaReplica),
                           mirrorBridge(from: legacy, to: middle), mirrorBridge(from: middle, to: viaMirror)]
        defer { bridges.forEach { _ = try? $0.stop() } }
        let head = try await QSClient.connect(host: "127.0.0.1", port: legacy.port).head()
        for node in [viaReplica, viaMirror] {
            let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
            let held = await Harness.eventually(timeout: .seconds(30)) { (try? await c.head()) == head }
            XCTAssertTrue(held, "\(node.address) did not reach L's head")
            await c.close()
        }
        for (node, hop) in [(viaReplica, replica.address), (viaMirror, middle.address)] {
            for args in [["promote"], ["promote", "--force"]] {
                let r = try qsctl(["--node", node.address] + args)
                XCTAssertEqual(r.status, 2, r.err)
                XCTAssertTrue(r.err.contains("its source \(legacy.address) (through \(hop)) still takes writes")
                              && r.err.contains("'qsctl cutover --from \(legacy.address) --to \(node.address)'"), r.err)
            }
        }
    }

    /// Two mirrors of L; the cut-over hands L's writes to one (N). The other (O) is still
    /// fed from L, demoted, at its head: the cut-over told L where its writes went, so a
    /// promote of O asks N through L and is refused (even with --force) while N takes
    /// writes. Before, L "held no more" and O was promoted: two roots.
    func testAPromoteOfAnotherMirrorOfARootHandedOverIsRefused() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        let other = try root("O")
        let toOther = try mirrorBridge(from: legacy, to: other)
        defer { _ = try? toOther.stop(); _ = try? mirror.stop() }
        let oc = try await QSClient.connect(host: "127.0.0.1", port: other.port)
        let head = try await lc.head()
        let held = await Harness.eventually(timeout: .seconds(30)) { (try? await oc.head()) == head }
        XCTAssertTrue(held, toOther.log)
        let cut = try qsctl(["cutover", "--from", legacy.address, "--to", new.address, "--timeout", "20s"])
        XCTAssertEqual(cut.status, 0, cut.err)
        XCTAssertEqual(try qsctl(["--node", new.address, "put", "after", "cutover"]).status, 0)
        for args in [["promote"], ["promote", "--force"]] {
            let r = try qsctl(["--node", other.address] + args)
            XCTAssertEqual(r.status, 2, r.err)
            XCTAssertTrue(r.err.contains("its source \(new.address) (through \(legacy.address)) still takes writes"), r.err)
        }
        let role = await writeRole(oc)
        XCTAssertEqual(role, "mirror")
        for c in [lc, nc, oc] { await c.close() }
    }

    /// A source address now answered by a writable root of another history (its entry at
    /// the mirror's head differs: an address reused, a bridge pointed at the wrong root)
    /// is not taken for a second root of this history: refused without --force, as another
    /// history is, and passed with it. Before, it was refused for good, even with --force.
    func testAWritableRootOfAnotherHistoryAtASourcesAddressIsNotTakenForTheSource() async throws {
        let (legacy, new, mirror, lc, nc) = try await mirroredPair()
        XCTAssertEqual(try mirror.stop(), 0, mirror.log)
        XCTAssertEqual(try qsctl(["--node", legacy.address, "demote"]).status, 0)
        let stranger = try root("X")
        for i in 0..<8 { XCTAssertEqual(try qsctl(["--node", stranger.address, "put", "x\(i)", "\(i)"]).status, 0) }
        // A bridge from X says hello (X is recorded), then stops: N holds another history.
        let wrong = try mirrorBridge(from: stranger, to: new)
        let recorded = Harness.waitUntil(timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            ((try? self.qsctl(["--node", new.address, "status"]).out) ?? "").contains("qs://\(stranger.address)")
        }
        XCTAssertTrue(recorded, wrong.log)
        _ = try? wrong.stop()
        let plain = try qsctl(["--node", new.address, "promote"])
        XCTAssertEqual(plain.status, 2, plain.err)
        XCTAssertTrue(plain.err.contains("its source \(stranger.address) holds index 8") && plain.err.contains("not the same history"), plain.err)
        let forced = try qsctl(["--node", new.address, "promote", "--force"])
        XCTAssertEqual(forced.status, 0, forced.err)
        for c in [lc, nc] { await c.close() }
    }

    /// `qsnode --mirror` on an empty --data (the runbook's way back for a root whose data is
    /// gone): a mirror before any listener opens, so a stale writer (qsctl put here, a KT
    /// bridge whose unit still names it) is refused from the first write, where an empty
    /// root took it; the mirror bridge then fills it and it is promoted once it holds the
    /// demoted source's head. A writable root with entries is refused --mirror, naming what
    /// to do; so is --mirror on a replica.
    func testARootStartedWithMirrorOnEmptyDataTakesOnlyTheMirrorBridge() async throws {
        let source = try root("N")
        for i in 0..<5 { XCTAssertEqual(try qsctl(["--node", source.address, "put", "k\(i)", "v\(i)"]).status, 0) }
        let back = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp, extraArgs: ["--write-token-file", token.path, "--mirror"])
        let stale = try qsctl(["--node", back.address, "put", "stale", "1"])
        XCTAssertEqual(stale.status, 3, stale.err)
        XCTAssertTrue(stale.err.contains("compatible mirror"), stale.err)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: back.port)
        let nc = try await QSClient.connect(host: "127.0.0.1", port: source.port)
        let role = await writeRole(lc)
        XCTAssertEqual(role, "mirror")
        let mirror = try mirrorBridge(from: source, to: back)
        XCTAssertEqual(try qsctl(["--node", source.address, "demote"]).status, 0)
        let head = try await nc.head()
        let held = await Harness.eventually(timeout: .seconds(30)) { (try? await lc.head()) == head }
        XCTAssertTrue(held, mirror.log)
        let promoted = try qsctl(["--node", back.address, "promote"])
        XCTAssertEqual(promoted.status, 0, promoted.err)
        _ = try? mirror.stop()
        XCTAssertEqual(try qsctl(["--node", back.address, "put", "after", "1"]).status, 0)
        // The same cut-over run again: said to be done already, nothing changed.
        let again = try qsctl(["cutover", "--from", source.address, "--to", back.address, "--timeout", "3s"])
        XCTAssertEqual(again.status, 2, again.err)
        XCTAssertTrue(again.err.contains("looks done already"), again.err)
        for c in [lc, nc] { await c.close() }

        // A writable root holding entries: not demoted by a start flag.
        let writable = tmp.appendingPathComponent("W")
        let w = try root("W")
        XCTAssertEqual(try qsctl(["--node", w.address, "put", "k", "v"]).status, 0)
        try w.daemon.stop()
        let refused = try Harness.run("qsnode", ["--data", writable.path, "--listen", "127.0.0.1:0", "--mirror"], killAfter: .seconds(30))
        let said = String(decoding: refused.stderr, as: UTF8.self)
        XCTAssertNotEqual(refused.status, 0, said)
        XCTAssertTrue(said.contains("--mirror: --data \(writable.path) is a writable root (open) at index 1") && said.contains("demote"), said)
        let replica = try Harness.run("qsnode", ["--role", "replica", "--upstream", source.address, "--data", tmp.appendingPathComponent("R").path, "--mirror"], killAfter: .seconds(30))
        XCTAssertEqual(replica.status, 64, String(decoding: replica.stderr, as: UTF8.self))
        XCTAssertTrue(String(decoding: replica.stderr, as: UTF8.self).contains("use it with --role root"))
    }

    /// A bridge given `--root L,N` while KT is quiet: KT's heartbeats move the bridge's
    /// checkpoint at L without a log entry, so N (L's mirror, holding L's head) holds an
    /// older one. After a clean cut-over the bridge makes the same move at N and writes on
    /// there. Before, it passed N over as "not a copy" and wrote nothing until restarted.
    func testABridgeGivenBothRootsWritesOnAfterACutoverWhileItsSourceWasQuiet() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let sourceID = "kt:127.0.0.1:\(kt.port)"
        let legacy = try root("L"), new = try root("N")
        let bridge = try DaemonProcess("qsktbridge", ["--root", "\(legacy.address),\(new.address)", "--source", "kt://127.0.0.1:\(kt.port)",
                                                     "--sid", "99", "--write-token-file", token.path, "--batch-interval", "100ms",
                                                     "--shutdown-timeout", "3s", "--log-format", "text"], logDir: tmp)
        let mirror = try mirrorBridge(from: legacy, to: new)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        let nc = try await QSClient.connect(host: "127.0.0.1", port: new.port)
        for i in 0..<5 { kt.set("k\(i)", "v\(i)") }
        // KT quiet: its heartbeats move L's checkpoint past the last entry N mirrored.
        let quiet = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            guard let l = try? await lc.head(), l.index > 0, (try? await nc.head()) == l,
                  let cpL = try? await lc.checkpoint(sourceID: sourceID), let cpN = try? await nc.checkpoint(sourceID: sourceID) else { return false }
            return cpL > cpN
        }
        XCTAssertTrue(quiet, "L's checkpoint moved without an entry:\n\(bridge.log)")
        let cut = try qsctl(["cutover", "--from", legacy.address, "--to", new.address, "--timeout", "30s"])
        XCTAssertEqual(cut.status, 0, cut.out + cut.err)
        kt.set("after", "cutover")
        let written = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            (try? await nc.get(Array("after".utf8)))?.value == Array("cutover".utf8)
        }
        XCTAssertTrue(written, "the bridge writes on at N after the cut-over:\n\(bridge.log)")
        XCTAssertTrue(bridge.log.contains("root failover"), bridge.log)
        // The mirror bridge stopped at the promotion (N refuses compatible appends).
        _ = try? mirror.stop()
        XCTAssertEqual(try bridge.stop(), 0, bridge.log)
        for c in [lc, nc] { await c.close() }
    }

    /// A bridge started with `--root A,B` where A is an empty root and B holds the source's
    /// checkpoint: it writes to B from B's checkpoint, and nothing into A. Before, it took A
    /// (first, answering) and copied the whole source into it.
    func testABridgeStartedWithAnEmptyRootFirstWritesToTheRootThatHoldsItsSource() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let empty = try root("A"), holder = try root("B")
        for i in 0..<5 { kt.set("k\(i)", "v\(i)") }
        let first = try ktBridge(kt, host: "127.0.0.1", root: holder)
        let hc = try await QSClient.connect(host: "127.0.0.1", port: holder.port)
        let copied = await Harness.eventually(timeout: .seconds(30)) { (try? await hc.get(Array("k4".utf8)))?.value == Array("v4".utf8) }
        XCTAssertTrue(copied, first.log)
        XCTAssertEqual(try first.stop(), 0, first.log)
        let bridge = try DaemonProcess("qsktbridge", ["--root", "\(empty.address),\(holder.address)", "--source", "kt://127.0.0.1:\(kt.port)",
                                                     "--db-map", "0=,1=aux/", "--sid", "99", "--write-token-file", token.path,
                                                     "--batch-interval", "100ms", "--shutdown-timeout", "3s", "--log-format", "text"], logDir: tmp)
        kt.set("later", "x")
        let written = await Harness.eventually(timeout: .seconds(30)) { (try? await hc.get(Array("later".utf8)))?.value == Array("x".utf8) }
        XCTAssertTrue(written, bridge.log)
        let ec = try await QSClient.connect(host: "127.0.0.1", port: empty.port)
        let emptyHead = try await ec.head().index
        XCTAssertEqual(emptyHead, 0, "the empty root took the source:\n\(bridge.log)")
        XCTAssertTrue(bridge.log.contains("not the root this source writes to"), bridge.log)
        XCTAssertEqual(try bridge.stop(), 0, bridge.log)
        for c in [hc, ec] { await c.close() }
    }

    func testCutoverAndHandBackUnderALiveKTWorkload() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let sourceID = "kt:127.0.0.1:\(kt.port)"
        let legacy = try root("L"), new = try root("N")
        // The bridge names KT "localhost"; the one on N later says 127.0.0.1: one source id.
        var bridge = try ktBridge(kt, host: "localhost", root: legacy)
        var mirror = try mirrorBridge(from: legacy, to: new)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        let nc = try await QSClient.connect(host: "127.0.0.1", port: new.port)

        let workload = KTWorkload { i in
            kt.set("zone/\(i % 40)", "v\(i)")
            if i % 7 == 0 { kt.set("rule/\(i % 5)", "r\(i)", db: 1) }
        }
        defer { workload.stop() }

        let upstreams = tmp.appendingPathComponent("r-upstreams")
        try legacy.address.write(to: upstreams, atomically: true, encoding: .utf8)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("R"), upstreams: [legacy.address], logDir: tmp,
                                      extraArgs: ["--upstream-file", upstreams.path])
        let rc = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        let flowing = await Harness.eventually(timeout: .seconds(30)) {
            let upstream = await self.subscribedUpstream(rc)
            return ((try? await nc.head().index) ?? 0) > 20 && upstream == legacy.address
        }
        XCTAssertTrue(flowing, "N mirrors L and the replica follows L:\n\(mirror.log)\n\(replica.daemon.log)")
        let named = try await lc.checkpoint(sourceID: sourceID)
        XCTAssertNotNil(named, "a localhost bridge names its source by address:\n\(bridge.log)")

        // A cut-over to a mirror nothing feeds is refused before anything changes: stop the
        // mirror, let L move on.
        XCTAssertEqual(try mirror.stop(), 0, mirror.log)
        let stalled = try await nc.head().index
        _ = await Harness.eventually(timeout: .seconds(20)) { ((try? await lc.head().index) ?? 0) > stalled + 2 }
        let unfed = try qsctl(["cutover", "--from", legacy.address, "--to", new.address, "--timeout", "1s"])
        XCTAssertEqual(unfed.status, 2, unfed.out + unfed.err)
        XCTAssertTrue(unfed.err.contains("no qsqsbridge feeds") && unfed.err.contains("nothing changed"), unfed.err)
        let stillOpen = await writeRole(lc)
        XCTAssertEqual(stillOpen, "open")
        // One whose mirror cannot catch up in time (its bridge hangs) is undone.
        mirror = try mirrorBridge(from: legacy, to: new)
        _ = await Harness.eventually(timeout: .seconds(20)) { (try? await nc.head().index) ?? 0 > stalled }
        kill(mirror.pid, SIGSTOP)
        _ = await Harness.eventually(timeout: .seconds(20)) { ((try? await lc.head().index) ?? 0) > ((try? await nc.head().index) ?? 0) + 2 }
        let undone = try qsctl(["cutover", "--from", legacy.address, "--to", new.address, "--timeout", "1s"])
        kill(mirror.pid, SIGCONT)
        XCTAssertEqual(undone.status, 5, undone.out + undone.err)
        XCTAssertTrue(undone.err.contains("cut-over undone") && undone.err.contains("did not reach"), undone.err)
        XCTAssertFalse(undone.err.contains("stopped answering"), undone.err)
        _ = try? mirror.stop()
        let roleNCMirror = await writeRole(nc)
        XCTAssertEqual(roleNCMirror, "mirror")
        let afterUndo = try await lc.head().index
        let lWrites = await Harness.eventually(timeout: .seconds(20)) { ((try? await lc.head().index) ?? 0) > afterUndo }
        XCTAssertTrue(lWrites, "L takes the bridge's writes again after the undo:\n\(bridge.log)")

        // The real cut-over.
        mirror = try mirrorBridge(from: legacy, to: new)
        let cut = try qsctl(["cutover", "--from", legacy.address, "--to", new.address, "--timeout", "30s"])
        XCTAssertEqual(cut.status, 0, cut.out + cut.err)
        XCTAssertTrue(cut.out.contains("cut-over done"), cut.out)
        let lHead = try await lc.head(), nHead = try await nc.head()
        XCTAssertEqual(nHead, lHead, "N holds L's head at the promotion")
        let roleLCMirror = await writeRole(lc)
        XCTAssertEqual(roleLCMirror, "mirror")
        let roleNCPromoted = await writeRole(nc)
        XCTAssertEqual(roleNCPromoted, "promoted")
        // The roles are metrics too: one root of the two takes writes.
        XCTAssertEqual(legacy.metric("qs_write_role{role=\"mirror\"}"), 1)
        XCTAssertEqual(legacy.metric("qs_write_role{role=\"promoted\"}"), 0)
        XCTAssertEqual(new.metric("qs_write_role{role=\"promoted\"}"), 1)
        XCTAssertEqual(replica.metric("qs_write_role{role=\"replica\"}"), 1)
        // The checkpoint travelled with the entries: the bridge on N starts where L's stopped.
        let cpL = try await lc.checkpoint(sourceID: sourceID)
        let cpN = try await nc.checkpoint(sourceID: sourceID)
        XCTAssertEqual(cpN, cpL)
        // The mirror bridge stops on its next append, saying why.
        let mirrorStopped = Harness.waitUntil(timeout: .seconds(20)) { !mirror.isRunning }
        XCTAssertTrue(mirrorStopped, mirror.log)
        if mirrorStopped { XCTAssertNotEqual(mirror.process.terminationStatus, 0) }
        XCTAssertTrue(mirror.log.contains("this root was promoted"), mirror.log)
        // L refuses the old bridge's batches (it waits, it does not stop); a bridge on N takes over.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { bridge.log.contains("compatible mirror") }, bridge.log)
        XCTAssertTrue(bridge.isRunning, "a bridge facing a demoted root waits:\n\(bridge.log)")
        let oldBridge = bridge
        bridge = try ktBridge(kt, host: "127.0.0.1", root: new)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { bridge.log.contains("after=\(cpL ?? 0)") },
                      "resumes from the travelled checkpoint \(cpL ?? 0):\n\(bridge.log)")
        XCTAssertTrue([0, 75].contains(try oldBridge.stop()), oldBridge.log)
        let nProgress = await Harness.eventually(timeout: .seconds(20)) { ((try? await nc.head().index) ?? 0) > nHead.index + 2 }
        XCTAssertTrue(nProgress, "N takes the writes:\n\(bridge.log)")

        // L follows N; the replica moves to N and back to L.
        mirror = try mirrorBridge(from: new, to: legacy)
        for target in [new, legacy] {
            try target.address.write(to: upstreams, atomically: true, encoding: .utf8)
            kill(replica.daemon.pid, SIGHUP)
            let moved = await Harness.eventually(timeout: .seconds(30)) { await self.subscribedUpstream(rc) == target.address }
            XCTAssertTrue(moved, "the replica moved to \(target.address):\n\(replica.daemon.log)")
            let h = try await rc.head().index
            let follows = await Harness.eventually(timeout: .seconds(30)) { ((try? await rc.head().index) ?? 0) > h }
            XCTAssertTrue(follows, "the replica follows the writes through \(target.address):\n\(mirror.log)")
        }

        // Hand back: the writes return to L.
        let back = try qsctl(["cutover", "--from", new.address, "--to", legacy.address, "--timeout", "30s"])
        XCTAssertEqual(back.status, 0, back.out + back.err)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { !mirror.isRunning }, mirror.log)
        XCTAssertTrue([0, 75].contains(try bridge.stop()), bridge.log)
        bridge = try ktBridge(kt, host: "localhost", root: legacy)
        mirror = try mirrorBridge(from: legacy, to: new)

        XCTAssertTrue(workload.stop(), "the workload thread did not stop")
        kt.set("cutover/last", "done")
        let settled = await Harness.eventually(timeout: .seconds(30)) {
            ((try? await lc.get(Array("cutover/last".utf8)))??.value) == Array("done".utf8)
        }
        XCTAssertTrue(settled, bridge.log)
        let final = try await lc.head()
        for (name, c) in [("N", nc), ("R", rc)] {
            let same = await Harness.eventually(timeout: .seconds(30)) { (try? await c.head()) == final }
            XCTAssertTrue(same, "\(name) did not reach L's head \(final.index)")
        }
        for node in [new.address, replica.address] {
            let v = try qsctl(["--node", legacy.address, "verify", "--against", node])
            XCTAssertEqual(v.status, 0, "verify against \(node): \(v.out)\(v.err)")
        }
        let verifyKT = try qsctl(["--node", legacy.address, "verify", "--kt", kt.address, "--db-map", "0=,1=aux/"])
        XCTAssertEqual(verifyKT.status, 0, verifyKT.out + verifyKT.err)
        // Exactly once across both roots: the source's positions only increase along the log.
        let positions = try await verifyLog(nc, sourceID: sourceID)
        XCTAssertGreaterThan(positions.count, 30)
        let positionsL = try await verifyLog(lc, sourceID: sourceID)
        XCTAssertEqual(positionsL, positions)
        for c in [lc, nc, rc] { await c.close() }
        XCTAssertEqual(try mirror.stop(), 0, mirror.log)
        XCTAssertEqual(try bridge.stop(), 0, bridge.log)
    }
}

/// A compatible mirror as qsctl sees one over the write protocol, holding `head`, whose
/// promote answers as a cluster member's does when etcd did not confirm the transaction
/// (storage-error "may still take effect") although it took effect: its role becomes
/// promoted. A demote is answered and makes it a mirror again.
final class UncertainMirror: @unchecked Sendable {
    private var peer: LoopbackPeer!
    private let lock = NSLock()
    private var currentRole = "mirror"

    var port: Int { peer.port }
    var role: String { lock.withLock { currentRole } }

    /// `closesOnPromote`: the promote takes effect and its connection is closed unanswered
    /// (an answer lost with the connection) instead of answered storage-error.
    init(head: Head, closesOnPromote: Bool = false) throws {
        peer = try LoopbackPeer { [weak self] c in
            while let self, let request = self.readFrame(c) {
                if closesOnPromote, case .changeRole(_, .promote)? = try? Request.decode(request) {
                    _ = self.respond(request, head: head)
                    shutdown(c, Int32(SHUT_RDWR))
                    return
                }
                let f = self.respond(request, head: head).frame()
                guard LoopbackPeer.send(c, withUnsafeBytes(of: UInt32(1 + f.payload.count).bigEndian) { Array($0) } + [f.type] + f.payload) else { return }
            }
        }
    }

    private func respond(_ frame: Frame, head: Head) -> Response {
        switch try? Request.decode(frame) {
        case .status?:
            return .status("{\"write_role\": \"\(role)\"}")
        case .head?:
            return .head(head)
        case let .changeRole(_, change)?:
            return lock.withLock {
                if change == .promote {
                    currentRole = "promoted"
                    return .error(code: ErrorCode.storageError.rawValue, message: "the root cluster's etcd did not commit the role change (no quorum, or unreachable?): request timed out; it may still take effect")
                }
                currentRole = "mirror"
                return .head(head)
            }
        default:
            return .error(code: ErrorCode.invalidRequest.rawValue, message: "not served by this test's mirror")
        }
    }

    private func readFrame(_ fd: Int32) -> Frame? {
        func read(_ n: Int) -> [UInt8]? {
            var out = [UInt8](repeating: 0, count: n), got = 0
            while got < n {
                let r = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard r > 0 else { return nil }
                got += r
            }
            return out
        }
        guard let len = read(4) else { return nil }
        let n = Int(len.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        guard n >= 1, let body = read(n) else { return nil }
        return Frame(type: body[0], payload: Array(body[1...]))
    }

    func stop() { peer.stop() }
}
