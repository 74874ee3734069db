import Foundation
import Logging
import MetricsTestKit
import NIOCore
import NIOEmbedded
import NIOPosix
import QSModel
import QSNet
import QSStore
import QSTesting
import QSWire
import XCTest
@testable import QSNode

/// The write-protocol handler on a testing channel: bytes in, bytes out, no sockets. Store
/// work runs off the channel's loop, so every answer is awaited with a deadline.
final class WriteProtocolHandlerTests: XCTestCase {
    var tmp: URL!
    let token: [UInt8] = Array("secret".utf8)

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("handler")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A root's request handling over a fresh store, with metrics the test can read.
    struct Node {
        let core: NodeCore
        let metrics: TestMetrics

        func bad() -> Int64 { metrics.counterTotal(label: "qs_bad_frames_total") }
    }

    func node(token: [UInt8]? = nil, adminToken: [UInt8]? = nil, data: String = "data") throws -> Node {
        let store = try Store(directory: tmp.appendingPathComponent(data).path, mapSize: 64 << 20)
        let metrics = TestMetrics()
        let logger = Logger(label: "handler-test") { _ in SwiftLogNoOpLogHandler() }
        let core = NodeCore(store: store, token: token, adminToken: adminToken, metrics: NodeMetrics(factory: metrics), logger: logger)
        return Node(core: core, metrics: metrics)
    }

    /// A connected channel with the write server's pipeline, for `maxFrameBytes`.
    func connection(to node: Node, maxFrameBytes: Int = 1 << 20, from peer: String = "127.0.0.1",
                    arriving: PendingBytes? = nil) async throws -> NIOAsyncTestingChannel {
        let core = node.core
        let channel = try await NIOAsyncTestingChannel { channel in
            let logger = Logger(label: "handler-test") { _ in SwiftLogNoOpLogHandler() }
            try WriteServer.configure(channel, core: core, maxFrameBytes: maxFrameBytes, arriving: arriving, logger: logger)
        }
        try await channel.connect(to: SocketAddress(ipAddress: peer, port: 4000)).get()
        addTeardownBlock { _ = try? await channel.finish(acceptAlreadyClosed: true) }
        return channel
    }

    /// `length:u32 type:u8 payload` for each request, in one buffer.
    func bytes(_ requests: [Request]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for r in requests {
            let frame = r.frame()
            buffer.writeInteger(UInt32(1 + frame.payload.count))
            buffer.writeInteger(frame.type)
            buffer.writeBytes(frame.payload)
        }
        return buffer
    }

    /// Reads `count` answers off the channel, waiting for each with a deadline.
    func answers(_ count: Int, from channel: NIOAsyncTestingChannel, timeout: Duration = .seconds(10)) async throws -> [Response] {
        var buffer = ByteBuffer()
        var out = [Response]()
        let deadline = ContinuousClock.now + timeout
        while out.count < count {
            if var chunk = try await channel.readOutbound(as: ByteBuffer.self) {
                buffer.writeBuffer(&chunk)
                while let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
                      buffer.readableBytes >= 4 + Int(length) {
                    buffer.moveReaderIndex(forwardBy: 4)
                    guard length > 0, let type = buffer.readInteger(as: UInt8.self),
                          let payload = buffer.readBytes(length: Int(length) - 1) else {
                        throw TimedOut("an answer frame of length \(length)")
                    }
                    out.append(try Response.decode(Frame(type: type, payload: payload)))
                }
                continue
            }
            guard ContinuousClock.now < deadline else {
                throw TimedOut("waited \(timeout) for \(count) answers; got \(out)")
            }
            try await Task.sleep(for: .milliseconds(1))
        }
        XCTAssertEqual(buffer.readableBytes, 0, "bytes after the last answer")
        return out
    }

    func send(_ requests: [Request], to channel: NIOAsyncTestingChannel) async throws {
        try await channel.writeInbound(bytes(requests))
    }

    func waitClosed(_ channel: NIOAsyncTestingChannel) async throws {
        try await waitFor("the connection closed") { !channel.isActive }
    }

    func batch(_ expected: UInt64, _ new: UInt64, _ operations: [Mutation], token: [UInt8] = []) -> Request {
        .batch(.init(token: token, sourceID: "src", expected: expected, new: new, operations: operations))
    }

    func errorCode(_ response: Response?) -> ErrorCode? {
        guard case let .error(code, _) = response else { return nil }
        return ErrorCode(rawValue: code)
    }

    // MARK: requests

    func testValidBatchIsAppliedAndAnswered() async throws {
        let node = try node()
        let channel = try await connection(to: node)
        try await send([batch(0, 3, [.set(key: [1], value: [10], expiry: 4_000_000_000), .set(key: [2], value: [20], expiry: nil)])], to: channel)
        let applied = try await answers(1, from: channel)
        XCTAssertEqual(applied, [.applied(logIndex: 1, kept: 2, dropped: 0)])
        try await send([.get(key: [1]), .getCheckpoint(sourceID: "src")], to: channel)
        let read = try await answers(2, from: channel)
        XCTAssertEqual(read, [.value(Record(value: [10], expiry: 4_000_000_000)), .checkpoint(3)])
        XCTAssertTrue(channel.isActive)
        XCTAssertEqual(node.metrics.counterTotal(label: "qs_batches_applied_total"), 1)
        XCTAssertEqual(node.metrics.counterTotal(label: "qs_ops_applied_total"), 2)
    }

    /// Reads from another machine need one of the node's tokens, presented once per
    /// connection (`auth`, or a hello that passed the write gate); a local peer reads
    /// without one, and a node without tokens answers anyone.
    func testReadsFromAnotherMachineNeedOneOfTheNodesTokens() async throws {
        let admin = Array("admin-token-0123456789".utf8), replication = Array("replication-token-0123".utf8)
        let store = try Store(directory: tmp.appendingPathComponent("guarded").path, mapSize: 64 << 20)
        let metrics = TestMetrics()
        let core = NodeCore(store: store, token: token, replicationToken: replication, adminToken: admin,
                            metrics: NodeMetrics(factory: metrics), logger: Logger(label: "handler-test") { _ in SwiftLogNoOpLogHandler() })
        let guarded = Node(core: core, metrics: metrics)
        func readFailures() -> Int64 { metrics.counterTotal(label: "qs_auth_failures_total", dimensions: [("interface", "read")]) }
        var channel = try await connection(to: guarded)
        try await send([batch(0, 1, [.set(key: [1], value: [10], expiry: nil)], token: token)], to: channel)
        _ = try await answers(1, from: channel)

        for read in [Request.get(key: [1]), .head, .status, .readLog(from: 1, count: 1), .getCheckpoint(sourceID: "src"),
                     .scan(prefix: [], cursor: [], limit: 10, asOf: 0), .digest(after: [], through: [], limit: 10, asOf: 0)] {
            channel = try await connection(to: guarded, from: "10.1.2.3")
            try await send([read], to: channel)
            let refused = try await answers(1, from: channel)
            XCTAssertEqual(errorCode(refused.first), .unauthorized, "\(read.name) from another machine without a token")
            try await waitClosed(channel)
        }
        XCTAssertEqual(readFailures(), 7)

        channel = try await connection(to: guarded, from: "10.1.2.3")
        try await send([.auth(token: Array("not-a-token".utf8))], to: channel)
        let wrong = try await answers(1, from: channel)
        XCTAssertEqual(errorCode(wrong.first), .unauthorized, "a wrong token")
        try await waitClosed(channel)
        XCTAssertEqual(readFailures(), 8)

        for presented in [token, replication, admin] {
            channel = try await connection(to: guarded, from: "10.1.2.3")
            try await send([.auth(token: presented), .get(key: [1]), .getCheckpoint(sourceID: "src")], to: channel)
            let read = try await answers(3, from: channel)
            guard case .head = read.first else { return XCTFail("auth with one of the node's tokens: \(read)") }
            XCTAssertEqual(Array(read.dropFirst()), [.value(Record(value: [10], expiry: nil)), .checkpoint(1)])
        }
        channel = try await connection(to: guarded, from: "10.1.2.3")
        try await send([.hello(token: token, client: "bridge"), .getCheckpoint(sourceID: "src")], to: channel)
        let afterHello = try await answers(2, from: channel)
        XCTAssertEqual(afterHello.last, .checkpoint(1), "a hello that passed proves the write token")
        channel = try await connection(to: guarded, from: "10.1.2.3")
        try await send([.hello(token: replication, client: "bridge")], to: channel)
        let notWrite = try await answers(1, from: channel)
        XCTAssertEqual(errorCode(notWrite.first), .unauthorized, "the replication token is not the write token")
        XCTAssertEqual(readFailures(), 8, "counted by the write gate")

        channel = try await connection(to: guarded, from: "::1")
        try await send([.get(key: [1])], to: channel)
        let local = try await answers(1, from: channel)
        XCTAssertEqual(local, [.value(Record(value: [10], expiry: nil))], "a local peer reads without a token")

        let open = try node(data: "open")
        channel = try await connection(to: open, from: "10.1.2.3")
        try await send([.head], to: channel)
        guard case .head = try await answers(1, from: channel).first else { return XCTFail("a node without tokens answers anyone") }
    }

    /// Promote and demote take the admin token when the node has one (the write token is
    /// not enough); without one, only a local peer may change the role.
    func testRoleChangesTakeTheAdminTokenOrALocalPeer() async throws {
        let admin = Array("admin-token-0123456789".utf8)
        let guarded = try node(token: token, adminToken: admin)
        var channel = try await connection(to: guarded)
        try await send([.changeRole(token: token, change: .demote)], to: channel)
        let refused = try await answers(1, from: channel)
        XCTAssertEqual(errorCode(refused.first), .unauthorized, "the write token does not change a role")
        XCTAssertEqual(guarded.metrics.counterTotal(label: "qs_auth_failures_total"), 1)
        let role1 = try await guarded.core.store.writeRole()
        XCTAssertEqual(role1, .open)
        channel = try await connection(to: guarded, from: "10.1.2.3")
        try await send([.changeRole(token: admin, change: .demote)], to: channel)
        guard case .head = try await answers(1, from: channel).first else { return XCTFail("the admin token demotes, from anywhere") }
        let role2 = try await guarded.core.store.writeRole()
        XCTAssertEqual(role2, .mirror)

        let open = try node(token: token, data: "data2")
        channel = try await connection(to: open, from: "10.1.2.3")
        try await send([.changeRole(token: token, change: .demote)], to: channel)
        let remote = try await answers(1, from: channel)
        XCTAssertEqual(errorCode(remote.first), .unauthorized, "no admin token: a remote peer cannot change the role")
        let role3 = try await open.core.store.writeRole()
        XCTAssertEqual(role3, .open)
        channel = try await connection(to: open)
        try await send([.changeRole(token: token, change: .demote)], to: channel)
        guard case .head = try await answers(1, from: channel).first else { return XCTFail("a local peer with the write token demotes") }
        let role4 = try await open.core.store.writeRole()
        XCTAssertEqual(role4, .mirror)
    }

    /// A compatible mirror bridge whose source is still empty probes its target with empty
    /// appends: an empty target is a mirror from then on (a writer pointed at it is refused,
    /// rather than forking it from the history it is to carry); a root with entries is not
    /// changed by a probe.
    func testAnEmptyRootProbedByAMirrorBecomesAMirror() async throws {
        let empty = try node(token: token)
        var channel = try await connection(to: empty)
        try await send([.append(token: token, entries: PackedEntries([]), sourceTimeNs: 1), batch(0, 1, [.delete(key: [1])], token: token)], to: channel)
        let probed = try await answers(2, from: channel)
        XCTAssertEqual(probed.first, .applied(logIndex: nil, kept: 0, dropped: 0))
        XCTAssertEqual(errorCode(probed.last), .notWritable, "\(probed)")
        let role1 = try await empty.core.store.writeRole()
        XCTAssertEqual(role1, .mirror)

        let written = try node(token: token, data: "data2")
        channel = try await connection(to: written)
        try await send([batch(0, 1, [.set(key: [1], value: [1], expiry: nil)], token: token),
                        .append(token: token, entries: PackedEntries([]), sourceTimeNs: 1),
                        batch(1, 2, [.set(key: [2], value: [2], expiry: nil)], token: token)], to: channel)
        let later = try await answers(3, from: channel)
        XCTAssertEqual(later, [.applied(logIndex: 1, kept: 1, dropped: 0), .applied(logIndex: 1, kept: 0, dropped: 0),
                               .applied(logIndex: 2, kept: 1, dropped: 0)])
        let role2 = try await written.core.store.writeRole()
        XCTAssertEqual(role2, .open)

        // No entry yet, but a writer's checkpoint (a quiet KT's heartbeats): not changed either.
        let checkpointed = try node(token: token, data: "data3")
        channel = try await connection(to: checkpointed)
        try await send([batch(0, 5, [], token: token), .append(token: token, entries: PackedEntries([]), sourceTimeNs: 1)], to: channel)
        let quiet = try await answers(2, from: channel)
        XCTAssertEqual(quiet.last, .applied(logIndex: nil, kept: 0, dropped: 0), "\(quiet)")
        let role3 = try await checkpointed.core.store.writeRole()
        XCTAssertEqual(role3, .open)
    }

    func testCASConflictAnswersTheCurrentCheckpoint() async throws {
        let node = try node()
        let channel = try await connection(to: node)
        try await send([batch(0, 5, [.set(key: [1], value: [1], expiry: nil)])], to: channel)
        let first = try await answers(1, from: channel)
        XCTAssertEqual(first, [.applied(logIndex: 1, kept: 1, dropped: 0)])
        try await send([batch(0, 7, [.set(key: [1], value: [2], expiry: nil)]), .get(key: [1])], to: channel)
        let second = try await answers(2, from: channel)
        XCTAssertEqual(second, [.conflict(current: 5), .value(Record(value: [1], expiry: nil))])
        XCTAssertTrue(channel.isActive, "a conflict is an answer, not a reason to close")
        XCTAssertEqual(node.metrics.counterTotal(label: "qs_conflicts_total"), 1)
    }

    /// Requests sent back to back, more than the handler queues, are answered in order.
    func testPipelinedRequestsAreAnsweredInOrder() async throws {
        let node = try node()
        let channel = try await connection(to: node)
        var requests = [Request]()
        var expected = [Response]()
        for i in UInt64(0)..<100 {
            requests.append(batch(i, i + 1, [.set(key: [UInt8(i)], value: [UInt8(i)], expiry: nil)]))
            expected.append(.applied(logIndex: i + 1, kept: 1, dropped: 0))
            requests.append(.get(key: [UInt8(i)]))
            expected.append(.value(Record(value: [UInt8(i)], expiry: nil)))
        }
        requests += [batch(7, 8, []), .getCheckpoint(sourceID: "src")]
        expected += [.conflict(current: 100), .checkpoint(100)]
        try await send(requests, to: channel)
        let all = try await answers(expected.count, from: channel)
        XCTAssertEqual(all, expected)
        XCTAssertTrue(channel.isActive)
    }

    /// A peer that pipelines batches and goes away: the batch already at the writer is
    /// committed, what was still queued behind it is dropped (never acknowledged, nobody
    /// to answer), not run after the peer is gone.
    func testBatchesQueuedBehindAGonePeerAreDropped() async throws {
        let node = try node()
        let store = node.core.store
        // Hold the writer thread so the first batch waits there while the peer leaves.
        let gate = DispatchSemaphore(value: 0), holding = StopFlag()
        let held = Task { try await store.write { _ in holding.set(); gate.wait() } }
        try await waitFor("the writer is held") { holding.isSet }
        let channel = try await connection(to: node)
        try await send([batch(0, 1, [.set(key: [1], value: [1], expiry: nil)]),
                        batch(1, 2, [.set(key: [2], value: [2], expiry: nil)]),
                        batch(2, 3, [.set(key: [3], value: [3], expiry: nil)])], to: channel)
        try await channel.close()
        gate.signal()
        try await held.value
        try await waitFor("the first batch is answered") { node.metrics.counterTotal(label: "qs_batches_applied_total") == 1 }
        // Whatever the answer's task queued on the loop has run; a write after it is behind
        // any batch the handler sent on.
        try await channel.testingEventLoop.executeInContext {}
        try await store.write { _ in }
        let checkpoint = try await store.checkpoint(sourceID: "src")
        XCTAssertEqual(checkpoint, 1, "the batches queued behind the gone peer were not run")
        let value = try await store.get([2])
        XCTAssertNil(value)
    }

    // MARK: refusals

    func testWrongTokenIsRefusedAndTheConnectionClosed() async throws {
        let node = try node(token: token)
        for sent in [Array("wrong".utf8), []] {
            let channel = try await connection(to: node)
            try await send([batch(0, 1, [.set(key: [1], value: [1], expiry: nil)], token: sent), .head], to: channel)
            let answer = try await answers(1, from: channel)
            XCTAssertEqual(errorCode(answer.first), .unauthorized)
            try await waitClosed(channel)
            let after = try await channel.readOutbound(as: ByteBuffer.self)
            XCTAssertNil(after, "nothing answered after the refusal")
        }
        XCTAssertEqual(node.metrics.counterTotal(label: "qs_auth_failures_total", dimensions: [("interface", "write")]), 2)
        // Nothing was written; the right token is taken.
        let channel = try await connection(to: node)
        try await send([.getCheckpoint(sourceID: "src"), batch(0, 1, [.set(key: [1], value: [1], expiry: nil)], token: token)], to: channel)
        let withToken = try await answers(2, from: channel)
        XCTAssertEqual(withToken, [.checkpoint(nil), .applied(logIndex: 1, kept: 1, dropped: 0)])
    }

    /// The bytes of frames still arriving from connections without a token are held to one
    /// budget (`--max-arriving-frame-bytes`): past it a frame is refused busy, counted, and
    /// its connection closed; a connection that presented a token, and a write admitted by
    /// its token, hold nothing; a connection's bytes are given back when it closes. (A
    /// thousand connections each sending 1 MiB less a byte, no token needed, made a node
    /// hold a gigabyte.)
    func testFramesArrivingWithoutATokenAreHeldToOneBudget() async throws {
        let node = try node(token: token)
        let budget = PendingBytes(limit: 2 << 20)
        /// The first `n` bytes of a frame declaring 1 MiB (a get: any client may send it).
        func partial(_ n: Int) -> ByteBuffer {
            var b = ByteBuffer()
            b.writeInteger(UInt32(1 << 20))
            b.writeInteger(Request.get(key: []).frame().type)
            b.writeBytes([UInt8](repeating: 0x61, count: n - 5))
            return b
        }
        let first = try await connection(to: node, from: "10.0.0.1", arriving: budget)
        try await first.writeInbound(partial(1_000_000))
        XCTAssertEqual(budget.inUse, 1_000_000)
        let second = try await connection(to: node, from: "10.0.0.2", arriving: budget)
        try await second.writeInbound(partial(1_000_000))
        try await second.writeInbound(ByteBuffer(bytes: [UInt8](repeating: 0x61, count: 40_000)))
        XCTAssertEqual(budget.inUse, 2_040_000)
        // A third passes it: refused busy, counted, closed; what it held given back.
        let third = try await connection(to: node, from: "10.0.0.3", arriving: budget)
        try await third.writeInbound(partial(100_000))
        let refused = try await answers(1, from: third)
        XCTAssertEqual(errorCode(refused.first), .busy)
        try await waitClosed(third)
        XCTAssertEqual(node.metrics.counterTotal(label: "qs_write_arriving_frame_refusals_total"), 1)
        XCTAssertEqual(budget.inUse, 2_040_000)

        // A connection that presented the token holds nothing, and is not refused.
        let trusted = try await connection(to: node, from: "10.0.0.4", arriving: budget)
        try await send([.auth(token: token)], to: trusted)
        _ = try await answers(1, from: trusted)
        try await trusted.writeInbound(partial(1_000_000))
        XCTAssertEqual(budget.inUse, 2_040_000)
        XCTAssertTrue(trusted.isActive)
        // Nor does a write over 1 MiB admitted by its token, on a connection without one.
        let writer = try await connection(to: node, maxFrameBytes: 4 << 20, from: "10.0.0.5", arriving: budget)
        var write = bytes([batch(0, 1, [.set(key: [1], value: [UInt8](repeating: 1, count: 2 << 20), expiry: nil)], token: token)])
        try await writer.writeInbound(write.readSlice(length: 1_500_000)!)
        XCTAssertEqual(budget.inUse, 2_040_000)
        try await writer.writeInbound(write)
        let applied = try await answers(1, from: writer)
        XCTAssertEqual(applied, [.applied(logIndex: 1, kept: 1, dropped: 0)])

        // Closing gives a connection's bytes back.
        try await first.close()
        try await second.close()
        XCTAssertEqual(budget.inUse, 0)
    }

    /// A frame refused while requests before it on the connection are still owed their
    /// answers is answered in its turn, after them: written at once, `busy` (other
    /// connections filling the arriving budget) took the place of an applied batch's answer.
    func testARefusedFrameIsAnsweredAfterTheRequestsBeforeIt() async throws {
        let node = try node()
        let budget = PendingBytes(limit: 2 << 20)
        XCTAssertTrue(budget.reserve(2 << 20), "other connections hold the whole budget")
        let channel = try await connection(to: node, arriving: budget)
        // A whole batch, then the first 100 bytes of a 1,000-byte get, in one read.
        var input = bytes([batch(0, 1, [.set(key: [1], value: [1], expiry: nil)])])
        input.writeInteger(UInt32(1000))
        input.writeInteger(Request.get(key: []).frame().type)
        input.writeBytes([UInt8](repeating: 0x61, count: 95))
        try await channel.writeInbound(input)
        let answers = try await answers(2, from: channel)
        XCTAssertEqual(answers.first, .applied(logIndex: 1, kept: 1, dropped: 0))
        XCTAssertEqual(errorCode(answers.last), .busy)
        try await waitClosed(channel)
    }

    /// A write carrying the write token holds nothing of the arriving budget from its first
    /// bytes, before its connection is trusted (a frame under 1 MiB arriving in pieces was
    /// held, and refused busy while connections without a token filled the budget).
    func testAWriteCarryingTheTokenIsNotHeldBeforeItsConnectionIsTrusted() async throws {
        let node = try node(token: token)
        let budget = PendingBytes(limit: 2 << 20)
        XCTAssertTrue(budget.reserve(2 << 20), "connections without a token hold the whole budget")
        let writer = try await connection(to: node, from: "10.0.0.9", arriving: budget)
        var write = bytes([batch(0, 1, [.set(key: [1], value: [UInt8](repeating: 1, count: 200_000), expiry: nil)], token: token)])
        try await writer.writeInbound(write.readSlice(length: 100_000)!)
        XCTAssertEqual(budget.inUse, 2 << 20)
        try await writer.writeInbound(write)
        let applied = try await answers(1, from: writer)
        XCTAssertEqual(applied, [.applied(logIndex: 1, kept: 1, dropped: 0)])
        // One with a wrong token is held (and here refused busy).
        let other = try await connection(to: node, from: "10.0.0.10", arriving: budget)
        var wrong = bytes([batch(1, 2, [.set(key: [2], value: [UInt8](repeating: 1, count: 200_000), expiry: nil)], token: Array("wrong!".utf8))])
        try await other.writeInbound(wrong.readSlice(length: 100_000)!)
        let refused = try await answers(1, from: other)
        XCTAssertEqual(errorCode(refused.first), .busy)
    }

    /// A source descriptor is a write: refused without the write token (nothing recorded),
    /// recorded with it, and another one is answered with the one held, unchanged.
    func testASourceDescriptorTakesTheWriteTokenAndIsComparedOnceRecorded() async throws {
        let node = try node(token: token)
        for sent in [Array("wrong".utf8), []] {
            let channel = try await connection(to: node)
            try await send([.setDescriptor(token: sent, sourceID: "src", descriptor: "db-map 0=", replace: false)], to: channel)
            let answer = try await answers(1, from: channel)
            XCTAssertEqual(errorCode(answer.first), .unauthorized)
            try await waitClosed(channel)
        }
        let descriptors = try await node.core.store.descriptors()
        XCTAssertEqual(descriptors, [:], "nothing recorded without the token")
        let channel = try await connection(to: node)
        // An empty descriptor asks which one is held, recording nothing.
        try await send([.setDescriptor(token: token, sourceID: "src", descriptor: "", replace: false),
                        .setDescriptor(token: token, sourceID: "src", descriptor: "db-map 0=", replace: false),
                        .setDescriptor(token: token, sourceID: "src", descriptor: "db-map 0=a/", replace: false),
                        .setDescriptor(token: token, sourceID: "src", descriptor: "", replace: true),
                        .head], to: channel)
        let answered = try await answers(5, from: channel)
        XCTAssertEqual(Array(answered.prefix(4)), [.value(nil),
                                                   .value(Record(value: Array("db-map 0=".utf8), expiry: nil)),
                                                   .value(Record(value: Array("db-map 0=".utf8), expiry: nil)),
                                                   .value(Record(value: Array("db-map 0=".utf8), expiry: nil))])
        guard case let .head(head) = answered.last else { return XCTFail("\(answered)") }
        XCTAssertEqual(head.index, 1, "one entry: the first descriptor's")
        XCTAssertEqual(node.metrics.counterTotal(label: "qs_source_descriptor_refusals_total"), 1, "the other one refused, counted")
        let status = try await node.core.statusJSON()
        XCTAssertTrue(status.contains(#""source_descriptors":{"src":"db-map 0="}"#), status)
    }

    /// A writer's hello checks the token at once: the head with the right one, a refusal
    /// and a close with a wrong one.
    func testHelloChecksTheTokenBeforeAnyWrite() async throws {
        let node = try node(token: token)
        let refused = try await connection(to: node)
        try await send([.hello(token: Array("wrong".utf8), client: "test"), .head], to: refused)
        let answer = try await answers(1, from: refused)
        XCTAssertEqual(errorCode(answer.first), .unauthorized)
        try await waitClosed(refused)
        let accepted = try await connection(to: node)
        try await send([.hello(token: token, client: "test")], to: accepted)
        let welcome = try await answers(1, from: accepted)
        guard case let .head(h)? = welcome.first else { return XCTFail("hello answered \(welcome)") }
        XCTAssertEqual(h.index, 0)
    }

    /// Each bad frame: an error answer naming what was wrong, the bad-frame counter, a close.
    func testBadFramesGetAnErrorReplyACountAndAClose() async throws {
        let node = try node()
        let cases: [(name: String, bytes: [UInt8], code: ErrorCode)] = [
            ("unknown request type", [0, 0, 0, 3, 0x7E, 1, 2], .malformed),
            ("batch payload cut short", [0, 0, 0, 5, 0x01, 0, 0, 0, 9], .malformed),
            ("length over the limit", [0x00, 0x20, 0x00, 0x00, 0x01], .frameTooLarge),
            ("length zero", [0, 0, 0, 0], .malformed),
            ("HTTP", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), .frameTooLarge),
        ]
        for (n, c) in cases.enumerated() {
            let channel = try await connection(to: node)
            try await channel.writeInbound(ByteBuffer(bytes: c.bytes))
            let answer = try await answers(1, from: channel)
            XCTAssertEqual(errorCode(answer.first), c.code, c.name)
            try await waitClosed(channel)
            XCTAssertEqual(node.bad(), Int64(n + 1), c.name)
        }
        // A frame cut short by the end of the stream.
        let channel = try await connection(to: node)
        try await channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 50, 0x01, 1, 2]))
        let early = try await channel.readOutbound(as: ByteBuffer.self)
        XCTAssertNil(early, "half a frame is no request yet")
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        let answer = try await answers(1, from: channel)
        XCTAssertEqual(errorCode(answer.first), .malformed)
        try await waitClosed(channel)
        XCTAssertEqual(node.bad(), Int64(cases.count + 1))
    }

    /// Requests before a bad frame are answered; nothing after it is.
    func testRequestsBeforeABadFrameAreAnswered() async throws {
        let node = try node()
        let channel = try await connection(to: node)
        var buffer = bytes([batch(0, 1, [.set(key: [1], value: [1], expiry: nil)]), .getCheckpoint(sourceID: "src")])
        buffer.writeBytes([0, 0, 0, 1, 0x7E])
        buffer.writeImmutableBuffer(bytes([.head]))
        try await channel.writeInbound(buffer)
        let all = try await answers(3, from: channel)
        XCTAssertEqual(Array(all.prefix(2)), [.applied(logIndex: 1, kept: 1, dropped: 0), .checkpoint(1)])
        XCTAssertEqual(errorCode(all.last), .malformed)
        try await waitClosed(channel)
        let after = try await channel.readOutbound(as: ByteBuffer.self)
        XCTAssertNil(after)
    }

    // MARK: shutdown

    /// Asked to quiesce with a request in flight, the handler answers it, then closes.
    func testQuiesceAnswersTheRequestInFlightThenCloses() async throws {
        let node = try node()
        let channel = try await connection(to: node)
        try await send([batch(0, 1, [.set(key: [1], value: [1], expiry: nil)])], to: channel)
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        let answered = try await answers(1, from: channel)
        XCTAssertEqual(answered, [.applied(logIndex: 1, kept: 1, dropped: 0)])
        try await waitClosed(channel)
    }

    // MARK: threads

    /// Every write-protocol request touches the writers' table from whichever event loop
    /// carries its connection. Four threads at once keep it whole, and under `make tsan` the
    /// lock is one ThreadSanitizer sees (`Synchronization.Mutex`'s futex was reported here).
    func testWritersTakeRequestsFromManyThreadsAtOnce() {
        let writers = Writers()
        DispatchQueue.concurrentPerform(iterations: 4) { i in
            let peer = "127.0.0.1:\(5000 + i)"
            writers.hello(peer: peer, client: "bridge-\(i)")
            for n in 0..<2_000 { writers.touch(peer: peer, append: n % 2 == 0) }
            if i == 3 { writers.gone(peer: peer) }
        }
        XCTAssertEqual(writers.list.map(\.client).sorted(), ["bridge-0", "bridge-1", "bridge-2"])
        XCTAssertTrue(writers.list.allSatisfy { $0.lastAppendNs != nil })
        XCTAssertGreaterThan(writers.lastAppendNs, 0)
    }
}
