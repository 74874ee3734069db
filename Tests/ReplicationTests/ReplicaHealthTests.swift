import Foundation
import NIOConcurrencyHelpers
import QSClient
import QSTesting
import QSWire
import XCTest

/// A replica's signals come from one status value: `qsctl status`, `/readyz` and
/// `/metrics` agree, and the root word's age grows while the upstream is dead.
final class ReplicaHealthTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("replica-health")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    struct Signals {
        var statusSubscribed: Bool?
        var statusRootAge: Double?
        var statusUpstream: String?
        var ready: Int?
        var readyBody: String
        var metricSubscribed: Double?
        var metricRootAge: Double?
    }

    func signals(_ node: ReplicaNode) async throws -> Signals {
        let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        defer { Task { await c.close() } }
        let status = try JSONSerialization.jsonObject(with: Data(try await c.status().utf8)) as? [String: Any] ?? [:]
        let upstream = status["upstream"] as? [String: Any]
        let ready = httpGet(port: node.adminPort, path: "/readyz")
        return Signals(statusSubscribed: upstream?["subscribed"] as? Bool, statusRootAge: status["root_age_seconds"] as? Double,
                       statusUpstream: upstream?["address"] as? String,
                       ready: ready?.status, readyBody: ready?.body ?? "",
                       metricSubscribed: node.metric("qs_replica_subscribed"), metricRootAge: node.metric("qs_replica_root_age_seconds"))
    }

    /// An upstream whose root time is an hour ahead of this machine's clock and never moves
    /// (a root whose clock was ahead and then died, a broken or hostile upstream): the
    /// replica's root age grows from its own clock, /readyz turns 503 past --ready-lag, and it
    /// leaves the upstream past --stale-after. Before, the future time was kept as the root's
    /// word: "root word 0.0 s old" and ready for the hour of the skew, in every replica below.
    func testARootTimeAheadOfTheClockThatStandsStillDoesNotLookFresh() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        XCTAssertEqual(try Harness.run("qsctl", ["--node", root.address, "put", "k", "v"]).status, 0)
        let data = tmp.appendingPathComponent("r")
        var replica = try ReplicaNode(data: data, upstreams: [root.address], logDir: tmp)
        try await waitFor("the replica at the root's head", timeout: .seconds(20)) { replica.metric("qs_replica_head_index") == 1 }
        XCTAssertEqual(try replica.daemon.stop(), 0)
        let fake = try FutureRootUpstream(head: 1, rootTimeNs: UInt64(Date().timeIntervalSince1970 * 1e9) + 3_600_000_000_000)
        defer { fake.stop() }
        replica = try ReplicaNode(data: data, upstreams: ["127.0.0.1:\(fake.port)"], logDir: tmp,
                                  extraArgs: ["--ready-lag", "2s", "--stale-after", "6s"])
        try await waitFor("heartbeats from the fake upstream", timeout: .seconds(20), pollEvery: .milliseconds(100)) { fake.heartbeats > 3 }
        try await waitFor("the root age past --ready-lag", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            (replica.metric("qs_replica_root_age_seconds") ?? 0) > 2.5
        }
        let ready = try XCTUnwrap(httpGet(port: replica.adminPort, path: "/readyz"))
        XCTAssertEqual(ready.status, 503, ready.body)
        let left = await Harness.eventually(timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            replica.daemon.log.contains("leaving upstream")
        }
        XCTAssertTrue(left, replica.daemon.log)
        XCTAssertTrue(replica.daemon.log.contains("ahead of this node's clock"), replica.daemon.log)
        XCTAssertEqual(try replica.daemon.stop(), 0)
    }

    /// A replica moved to a node behind it (a mirror that stopped short of the root) is
    /// not subscribed: its status showed the old upstream's head as the new one's ("behind
    /// 0 entries") and /readyz said only "trying X". Now the head is unknown until the new
    /// upstream speaks, and /readyz says the upstream is behind and by how much.
    func testAMoveToAnUpstreamBehindTheReplicaIsNamed() async throws {
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let new = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        for i in 0..<3 { XCTAssertEqual(try Harness.run("qsctl", ["--node", legacy.address, "put", "k\(i)", "v"]).status, 0) }
        let mirror = try Harness.run("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", new.address, "--mode", "compatible", "--once"],
                                     killAfter: .seconds(60))
        XCTAssertEqual(mirror.status, 0, String(decoding: mirror.stderr, as: UTF8.self))
        for i in 3..<5 { XCTAssertEqual(try Harness.run("qsctl", ["--node", legacy.address, "put", "k\(i)", "v"]).status, 0) }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("r"), upstreams: [legacy.address], logDir: tmp)
        try await waitFor("the replica at L's head", timeout: .seconds(20)) { replica.metric("qs_replica_head_index") == 5 }
        // Its own address (bound on port 0): refused, as at start; it subscribed to itself
        // and said "subscribed yes, behind 0 entries".
        let itself = httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: Array(replica.address.utf8))
        XCTAssertNotEqual(itself?.status, 200, itself?.body ?? "")
        XCTAssertTrue(itself?.body.contains("upstream \(replica.address) is this replica's own address") == true, itself?.body ?? "")
        // localhost for 127.0.0.1: refused as the list is taken (no connection needed, so an
        // empty replica, not listening yet, is told too).
        let local = httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: Array("localhost:\(replica.port)".utf8))
        XCTAssertNotEqual(local?.status, 200, local?.body ?? "")
        XCTAssertTrue(local?.body.contains("upstream localhost:\(replica.port) is this replica's own address") == true, local?.body ?? "")
        // Itself under a spelling no list check knows (an IPv4-mapped IPv6 address, as a
        // host name or the machine's address would be): taken, left once connected (the far
        // end is its own listener and answers with its node id), and /readyz says so.
        let spelled = "[::ffff:127.0.0.1]:\(replica.port)"
        let other = httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: Array(spelled.utf8))
        XCTAssertEqual(other?.status, 200, other?.body ?? "")
        try await waitFor("/readyz naming the upstream as the replica itself", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            httpGet(port: replica.adminPort, path: "/readyz")?.body.contains("upstream \(spelled) is this replica itself") == true
        }
        XCTAssertNotEqual(httpGet(port: replica.adminPort, path: "/readyz")?.status, 200)
        let moved = httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: Array(new.address.utf8))
        XCTAssertEqual(moved?.status, 200, moved?.body ?? "")
        try await waitFor("/readyz naming the upstream behind", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            httpGet(port: replica.adminPort, path: "/readyz")?.body.contains("\(new.address) is behind this replica (its head 3, this replica's 5)") == true
        }
        let c = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        let status = try JSONSerialization.jsonObject(with: Data(try await c.status().utf8)) as? [String: Any] ?? [:]
        await c.close()
        let upstream = try XCTUnwrap(status["upstream"] as? [String: Any])
        XCTAssertEqual(upstream["address"] as? String, new.address)
        XCTAssertTrue(upstream["head"] is NSNull, "nothing heard from N: \(upstream)")
        let table = String(decoding: try Harness.run("qsctl", ["--node", replica.address, "status"]).stdout, as: UTF8.self)
        XCTAssertTrue(table.contains("upstream head unknown  behind unknown entries"), table)
    }

    /// An empty replica bootstraps before it listens, so itself under a spelling no list
    /// check knows (an IPv4-mapped address here, as a host name or the machine's address
    /// would be) refuses the connection instead of answering with its node id: the refusal
    /// at an address and port of its own listener is named as itself, and an edited
    /// --upstream-file then takes it to its root.
    func testAnEmptyReplicaGivenItselfUnderAnotherSpellingSaysSoWhileItBootstraps() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await w.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "w")
        // A free port for the replica: connections to it are refused until it binds it.
        let held = try RefusingPort()
        held.close()
        let spelled = "[::ffff:127.0.0.1]:\(held.port)"
        let file = tmp.appendingPathComponent("upstreams")
        try Data(spelled.utf8).write(to: file)
        let socket = tmp.appendingPathComponent("admin.sock").path
        let node = try DaemonProcess("qsnode", ["--role", "replica", "--data", tmp.appendingPathComponent("r").path,
                                                "--listen", "127.0.0.1:\(held.port)", "--upstream-file", file.path,
                                                "--admin", "unix:" + socket, "--log-format", "text"], logDir: tmp)
        // A RocksDB replica opens its store and listens first (its bootstrap comes after):
        // the connected check names it.
        let listensFirst = ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb"
        try await waitFor("/readyz naming the upstream as the replica itself", timeout: .seconds(20), pollEvery: .milliseconds(50)) {
            guard let r = httpRequest(unixPath: socket, path: "/readyz"), r.status == 503 else { return false }
            return listensFirst ? r.body.contains("upstream \(spelled) is this replica itself (the connection reached its own write listener")
                : r.body.contains("upstream \(spelled) is this replica itself: it names this machine's address")
                    && r.body.contains("own port \(held.port), where nothing listens until the replica has bootstrapped")
        }
        try Data(root.address.utf8).write(to: file)
        // Read each round while the empty store bootstraps; a running node on SIGHUP.
        if listensFirst { kill(node.pid, SIGHUP) }
        try await waitFor("the replica bootstrapped from its root", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
            httpRequest(unixPath: socket, path: "/readyz")?.status == 200
        }
        let r = try await QSClient.connect(host: "127.0.0.1", port: held.port)
        let value = try await r.get(Array("k".utf8))
        XCTAssertEqual(value?.value, Array("v".utf8))
        await r.close()
        await w.close()
        try node.stop()
    }

    func testRootAgeGrowsWhileTheUpstreamIsDeadAndEverySignalAgrees() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("r"), upstreams: [root.address], logDir: tmp)
        try await waitFor("the replica subscribed and ready", timeout: .seconds(20)) {
            let s = try await self.signals(replica)
            return s.statusSubscribed == true && s.ready == 200 && s.metricSubscribed == 1
        }
        try root.daemon.stop(signal: SIGKILL)
        try await waitFor("every signal to say 'not subscribed'", timeout: .seconds(10)) {
            let s = try await self.signals(replica)
            return s.statusSubscribed == false && s.ready == 503 && s.metricSubscribed == 0
        }
        let s = try await signals(replica)
        XCTAssertTrue(s.readyBody.contains("not subscribed"), s.readyBody)
        // Why, in words: not NIO's "SingleConnectionFailure(…)" dump.
        try await waitFor("/readyz saying why the upstream was left", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            httpGet(port: replica.adminPort, path: "/readyz")?.body.contains("left it last: the connection to the node failed: Connection refused") == true
        }
        XCTAssertEqual(s.statusUpstream, root.address)
        let first = try XCTUnwrap(s.metricRootAge)
        try await waitFor("qs_replica_root_age_seconds to grow by 2 s past \(first)", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            (replica.metric("qs_replica_root_age_seconds") ?? 0) >= first + 2
        }
        let later = try await signals(replica)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(later.statusRootAge), first + 2, "qsctl status reads the same age")
        // The table's "behind N entries" is the upstream's last word: it says how old.
        try await waitFor("the root word over 5 s old", timeout: .seconds(15), pollEvery: .milliseconds(200)) {
            (replica.metric("qs_replica_root_age_seconds") ?? 0) > 6
        }
        let table = String(decoding: try Harness.run("qsctl", ["--node", "127.0.0.1:\(replica.port)", "status"]).stdout, as: UTF8.self)
        XCTAssertTrue(table.contains("entries (as last heard,"), table)

    }

    /// A large entry on a slow link (2 MB at 200 KB/s: ten seconds for one frame, its
    /// heartbeat after it) is not silence: the watchdog judges only once bytes stop flowing
    /// (it cut the subscription every 5 s, and the replica never got past the entry).
    func testALargeEntryOnASlowLinkIsNotTakenForSilence() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let proxy = try FaultProxy(upstreamPort: root.port)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [proxy.address], logDir: tmp)
        try await waitFor("the replica subscribed", timeout: .seconds(20), pollEvery: .milliseconds(50)) {
            replica.metric("qs_replica_subscribed") == 1
        }
        proxy.fault = .bandwidth(bytesPerSecond: 200_000)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await c.write([.set(key: Array("big".utf8), value: incompressibleBytes(2 << 20), expiry: nil)], sourceID: "t")
        let head = try await c.head()
        await c.close()
        try await waitFor("the large entry applied through the slow link", timeout: .seconds(60), pollEvery: .milliseconds(100)) {
            replica.metric("qs_replica_head_index") == Double(head.index)
        }
        XCTAssertFalse(replica.daemon.log.contains("sent no heartbeat"), replica.daemon.log)
        proxy.close()
    }

    /// An entry damaged on the way (a byte of its value inverted past TCP's checksum) does
    /// not continue the chain the subscription checked: counted as damage, never applied,
    /// asked for again (it was logged as "the histories diverged", and counted nowhere).
    func testAnEntryDamagedOnTheWayIsCountedAsDamageAndFetchedAgain() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let proxy = try FaultProxy(upstreamPort: root.port)
        // Inside the value of the one large entry: the subscription sends only heartbeats before it.
        proxy.fault = .flipByte(at: 100_000)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [proxy.address], logDir: tmp)
        try await waitFor("the replica subscribed", timeout: .seconds(20), pollEvery: .milliseconds(50)) {
            replica.metric("qs_replica_subscribed") == 1
        }
        let value = incompressibleBytes(200 << 10)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await c.write([.set(key: Array("big".utf8), value: value, expiry: nil)], sourceID: "t")
        let head = try await c.head()
        await c.close()
        try await waitFor("the entry applied whole after the damaged copy was refused", timeout: .seconds(30), pollEvery: .milliseconds(50)) {
            replica.metric("qs_replica_head_index") == Double(head.index)
        }
        XCTAssertTrue(proxy.hasFlipped)
        XCTAssertEqual(replica.metric("qs_replica_damaged_entries_total"), 1)
        XCTAssertTrue(replica.daemon.log.contains("damaged on the way or by the upstream"), replica.daemon.log)
        XCTAssertFalse(replica.daemon.log.contains("histories diverged"), replica.daemon.log)
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        let got = try await r.get(Array("big".utf8))
        XCTAssertEqual(got?.value, value)
        await r.close()
        proxy.close()
    }

    /// An upstream that trickles (a byte a second: never a whole heartbeat for 20 s, yet
    /// never 5 s without a byte) is left once the replica has waited 5 s without a heartbeat,
    /// and the next upstream followed; it stayed on it (until the queued heartbeats, older
    /// and older, showed it stale a minute later).
    func testAnUpstreamThatTricklesIsLeftWithinSecondsForTheNext() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await c.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "t")
        await c.close()
        let proxy = try FaultProxy(upstreamPort: root.port)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [proxy.address, root.address], logDir: tmp)
        try await waitFor("the replica following through the proxy", timeout: .seconds(20), pollEvery: .milliseconds(50)) {
            replica.metric("qs_replica_subscribed") == 1 && replica.metric("qs_replica_head_index") == 1
        }
        proxy.fault = .bandwidth(bytesPerSecond: 1)
        let left = await Harness.eventually(timeout: .seconds(20)) {
            replica.daemon.log.contains("sent no heartbeat for") && (replica.metric("qs_replica_upstream_switches_total") ?? 0) >= 1
        }
        XCTAssertTrue(left, replica.daemon.log)
        try await waitFor("following the root directly", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            httpGet(port: replica.adminPort, path: "/readyz")?.status == 200
        }
        proxy.close()
    }

    /// A replica of a replica whose root is gone stays subscribed while the root's word
    /// ages: its /readyz says it is too stale, not the words it says when ready.
    func testAStaleReplicaSaysSoInReadyz() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let first = try ReplicaNode(data: tmp.appendingPathComponent("r1"), upstreams: [root.address], logDir: tmp)
        let second = try ReplicaNode(data: tmp.appendingPathComponent("r2"), upstreams: [first.address], logDir: tmp,
                                     extraArgs: ["--stale-after", "8s", "--log-format", "text"])
        try await waitFor("the second replica ready", timeout: .seconds(20)) {
            httpGet(port: second.adminPort, path: "/readyz")?.status == 200
        }
        let fresh = try XCTUnwrap(httpGet(port: second.adminPort, path: "/readyz"))
        XCTAssertTrue(fresh.body.contains("root word") && !fresh.body.contains("too stale"), fresh.body)
        try root.daemon.stop(signal: SIGKILL)
        try await waitFor("the second replica's /readyz 503, too stale, still subscribed", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            guard let r = httpGet(port: second.adminPort, path: "/readyz"), r.status == 503 else { return false }
            return r.body.contains("too stale to serve: the root's last word is") && r.body.contains("more than --ready-lag")
                && r.body.contains("subscribed to \(first.address)")
        }
        // Past --stale-after it leaves that upstream again and again: /readyz says why, and the
        // log says so once a minute, not at every try.
        try await waitFor("the second replica's /readyz naming why it left its upstream", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            guard let r = httpGet(port: second.adminPort, path: "/readyz"), r.status == 503 else { return false }
            return r.body.contains("not subscribed to an upstream (trying \(first.address); left it last: the root's freshest word through this upstream is")
        }
        // Five seconds of tries (one every second or two), logged once.
        let trying = ContinuousClock.now
        try await waitFor("five seconds of tries", timeout: .seconds(10), pollEvery: .milliseconds(200)) { ContinuousClock.now - trying > .seconds(5) }
        XCTAssertEqual(second.daemon.log.components(separatedBy: "leaving upstream").count - 1, 1, second.daemon.log)
        XCTAssertLessThanOrEqual(second.daemon.log.components(separatedBy: "subscribing").count - 1, 2, second.daemon.log)
        XCTAssertGreaterThan(try XCTUnwrap(second.metric("qs_replica_upstreams_left_total")), 2, "each leave is counted")
    }

    /// A replica pointed at a root of another history that is shorter than its own (a
    /// foreign root, a fork) was told "behind" and said so: it now compares its own entry at
    /// that root's head, counts the divergence and says it is another history.
    func testAnUpstreamOfAnotherHistoryIsNotCalledBehind() async throws {
        let a = try RootNode(data: tmp.appendingPathComponent("a"), logDir: tmp)
        let b = try RootNode(data: tmp.appendingPathComponent("b"), logDir: tmp)
        for i in 0..<6 {
            XCTAssertEqual(try Harness.run("qsctl", ["--node", a.address, "put", "a\(i)", "v"]).status, 0)
        }
        for i in 0..<2 {
            XCTAssertEqual(try Harness.run("qsctl", ["--node", b.address, "put", "b\(i)", "v"]).status, 0)
        }
        let data = tmp.appendingPathComponent("r")
        var replica = try ReplicaNode(data: data, upstreams: [a.address], logDir: tmp)
        let ac = try await QSClient.connect(host: "127.0.0.1", port: a.port)
        let head = try await ac.head()
        await ac.close()
        try await waitFor("the replica holds A's head", timeout: .seconds(20)) {
            let c = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
            defer { Task { await c.close() } }
            return try await c.head() == head
        }
        XCTAssertEqual(try replica.daemon.stop(), 0)
        replica = try ReplicaNode(data: data, upstreams: [b.address], logDir: tmp)
        // Tried again and again (B may be fixed): counted every time, said once a minute.
        try await waitFor("the divergence counted three times", timeout: .seconds(30)) {
            (replica.metric("qs_replica_diverged_total") ?? 0) >= 3
        }
        XCTAssertTrue(replica.daemon.log.contains("upstream has another history: its head differs"), replica.daemon.log)
        XCTAssertEqual(replica.daemon.log.components(separatedBy: "upstream has another history").count - 1, 1, replica.daemon.log)
        XCTAssertFalse(replica.daemon.log.contains("upstream is behind this replica"), replica.daemon.log)
        // /readyz says why it is not subscribed, not only "trying".
        let ready = httpGet(port: replica.adminPort, path: "/readyz")
        XCTAssertEqual(ready?.status, 503)
        XCTAssertTrue(ready?.body.contains("has another history (qsctl rebootstrap --from") ?? false, ready?.body ?? "no answer")
    }

    func testPostUpstreamRewritesTheUpstreamFileAndCountsTheMove() async throws {
        let a = try RootNode(data: tmp.appendingPathComponent("a"), logDir: tmp)
        let b = try RootNode(data: tmp.appendingPathComponent("b"), logDir: tmp)
        let file = tmp.appendingPathComponent("upstreams")
        try "\(a.address)\n".write(to: file, atomically: true, encoding: .utf8)
        let data = tmp.appendingPathComponent("r")
        var replica = try ReplicaNode(data: data, upstreams: [a.address], logDir: tmp, extraArgs: ["--upstream-file", file.path])
        try await waitFor("subscribed to A", timeout: .seconds(20)) {
            let s = try await self.signals(replica)
            return s.statusSubscribed == true && s.statusUpstream == a.address
        }
        // A browser's cross-origin POST (a page the operator has open) reaches the admin
        // port too: refused, named in the log, nothing changed.
        let browser = try XCTUnwrap(httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: Array(b.address.utf8),
                                             headers: [("Origin", "http://evil.example")]))
        XCTAssertEqual(browser.status, 403, browser.body)
        XCTAssertTrue(replica.daemon.log.contains("admin request from a browser refused"), replica.daemon.log)
        XCTAssertEqual(try String(contentsOf: file, encoding: .utf8).split(separator: "\n").filter { !$0.hasPrefix("#") }, [Substring(a.address)])
        let posted = try XCTUnwrap(httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: Array(b.address.utf8)))
        XCTAssertEqual(posted.status, 200, posted.body)
        XCTAssertTrue(replica.daemon.log.contains("admin action"), replica.daemon.log)
        let written = try String(contentsOf: file, encoding: .utf8)
        XCTAssertEqual(written.split(separator: "\n").filter { !$0.hasPrefix("#") }, [Substring(b.address)])
        try await waitFor("subscribed to B", timeout: .seconds(20)) {
            let s = try await self.signals(replica)
            return s.statusSubscribed == true && s.statusUpstream == b.address
        }
        XCTAssertEqual(replica.metric("qs_replica_upstream_switches_total"), 1)
        // The move survives a restart: the file now names B.
        XCTAssertEqual(try replica.daemon.stop(), 0)
        replica = try ReplicaNode(data: data, upstreams: [a.address], logDir: tmp, extraArgs: ["--upstream-file", file.path])
        try await waitFor("subscribed to B after the restart", timeout: .seconds(20)) {
            let s = try await self.signals(replica)
            return s.statusSubscribed == true && s.statusUpstream == b.address
        }
    }
}

/// A write-port upstream that answers every connection with heartbeats only: head `head`,
/// root time `rootTimeNs`, every 100 ms, whatever the subscriber asked.
final class FutureRootUpstream: @unchecked Sendable {
    private var peer: LoopbackPeer!
    private let sent = NIOLockedValueBox(0)

    var port: Int { peer.port }
    var heartbeats: Int { sent.withLockedValue { $0 } }

    init(head: UInt64, rootTimeNs: UInt64) throws {
        let beat = Response.heartbeat(head: head, rootTimeNs: rootTimeNs).frame()
        let bytes = withUnsafeBytes(of: UInt32(1 + beat.payload.count).bigEndian) { Array($0) } + [beat.type] + beat.payload
        let sent = self.sent
        peer = try LoopbackPeer { [weak self] c in
            while let self, !self.peer.isStopped, LoopbackPeer.send(c, bytes) {
                sent.withLockedValue { $0 += 1 }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
    }

    func stop() { peer.stop() }
}
