import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import Synchronization

/// What a threaded listener's connections speak: requests read from a blocking socket by
/// one of the listener's threads and answered in place. Everything here runs on that
/// thread; a connection moves between threads only through the listener's lock.
public protocol ThreadedProtocol: Sendable {
    /// One thread's own state (a read transaction kept for reuse), made once per thread.
    associatedtype Worker
    /// One connection's own state (its framing), made when it is accepted.
    associatedtype Connection

    func makeWorker() -> Worker
    func open(peer: String) -> Connection
    /// Answers the whole requests in `input` into `out` (left unread: a request not yet
    /// whole); `flush` writes `out` when it grows large and says whether to go on: false
    /// (the socket takes no more now) stops answering, the requests left stay in `input`
    /// (`.paused`), answered once the socket took the replies before them. `held`: what
    /// `out`'s replies hold of `replyMemory`, taken as they are built (the check and the
    /// hold in one step) and handed on with `out`: to `flush`, then to the listener, which
    /// gives it back once the socket has taken them or keeps it for what waits.
    func received(_ input: inout ByteBuffer, connection: inout Connection, into out: inout ByteBuffer, held: inout Int,
                  worker: Worker, flush: (inout ByteBuffer, inout Int) -> Bool) -> Answering
    func closed(_ connection: Connection)
    /// The budget a reply waiting for its socket is held against (`ReplyMemory`), if any.
    var replyMemory: ReplyMemory? { get }

    /// What the event loops are told of a connection `received` handed over
    /// (`Answering.handOver`).
    associatedtype HandOff: Sendable = Void
    /// The connection leaves the threads for the event loops (instead of `closed`): what
    /// the pipeline set up for it there needs to know.
    func handOff(_ connection: Connection) -> HandOff
}

extension ThreadedProtocol {
    public var replyMemory: ReplyMemory? { nil }
}

extension ThreadedProtocol where HandOff == Void {
    public func handOff(_ connection: Connection) { closed(connection) }
}

/// What answering the requests of a read came to.
public enum Answering: Sendable, Equatable {
    /// Every whole request answered.
    case open
    /// Stopped because the peer does not take the replies: the whole requests left wait,
    /// unread, until it has taken them (no request is answered past a reply not taken).
    case paused
    /// Close once what was answered is written.
    case close
    /// The rest of the connection is the event loops': the replies answered are written
    /// first, then the bytes left in the input (from the request the protocol does not
    /// take on a thread) go to the pipeline the listener sets up there
    /// (`Listener.runThreaded(_:serving:handedOver:handle:)`), as if the socket had just
    /// read them.
    case handOver
}

/// Tuning of a threaded listener.
public struct ThreadedServing: Sendable, Equatable {
    /// Threads that each serve one busy connection at a time, made as connections need them.
    public var threads: Int
    /// A connection that sends nothing for this long gives its thread back and waits on the
    /// listener's epoll (parked) until it sends again.
    public var parkAfter: TimeAmount

    public static let defaultParkAfter = TimeAmount.milliseconds(200)
    /// A parked connection whose request comes at least this long after its last bytes is
    /// answered by the epoll thread itself (one read that does not wait, its answers, parked
    /// again: one wake-up a request, as on an event loop, where a hop to a worker and the
    /// worker's wait cost two or three); sooner, it goes to a worker's blocking reads. Nil:
    /// always a worker.
    public var inlineAfter: TimeAmount?

    public static let defaultInlineAfter = TimeAmount.milliseconds(1)

    /// The most time the epoll thread spends answering parked connections itself in one
    /// batch of events (the rest of the batch goes to workers), and the time one answer may
    /// take before its connection goes to workers from then on (`ThreadedConnection.heavy`):
    /// accepts, timeouts and the other parked connections wait while it answers.
    public var inlineBudget: TimeAmount

    public static let defaultInlineBudget = TimeAmount.milliseconds(1)

    public init(threads: Int, parkAfter: TimeAmount = defaultParkAfter, inlineAfter: TimeAmount? = defaultInlineAfter,
                inlineBudget: TimeAmount = defaultInlineBudget) {
        self.threads = threads
        self.parkAfter = parkAfter
        self.inlineAfter = inlineAfter
        self.inlineBudget = inlineBudget
    }
}

extension Listener {
    /// Serves on threads of its own instead of the event loops, for a read protocol whose
    /// answers never wait: each busy connection is read by a thread in blocking `read`s and
    /// answered by that thread (a request costs a `read` and a `write`, no `epoll_wait`
    /// and no hop between threads); a connection that goes quiet for
    /// `serving.parkAfter` is parked on one epoll thread (which also accepts) and handed to
    /// a free thread when it sends again. At most `serving.threads` connections are served
    /// at once; past that a thread whose connection has another request ready parks it
    /// behind the ones waiting (round robin), so no connection starves.
    ///
    /// The listener's caps, idle timeout (idle, request deadline and write timeout), its
    /// counters and log lines, the ready file's addresses and the graceful drain are those of
    /// the event-loop listener: on shutdown no connection is accepted or read any more, and
    /// each closes once what it answered is written.
    public func runThreaded<P: ThreadedProtocol>(_ proto: P, serving: ThreadedServing) async throws {
        try await runThreaded(proto, serving: serving, handOver: nil as ThreadedHandOver<P.HandOff, Void>?) { _ in }
    }

    /// As `runThreaded(_:serving:)`, for a protocol whose threads answer the common requests
    /// and hand the connection to the event loops at the first they do not
    /// (`Answering.handOver`): there the connection is set up as an accepted one would be
    /// (`configure`, given what `ThreadedProtocol.handOff` says of it, with the listener's
    /// guard, drain and counting), the replies the thread answered are written first, the
    /// bytes it did not take are read as if they had just arrived, and `handle` runs as the
    /// connection's task. The connection keeps its place under the listener's caps until
    /// it closes there, and the graceful drain reaches it there too.
    public func runThreaded<P: ThreadedProtocol, Connection: Sendable>(
        _ proto: P, serving: ThreadedServing,
        handedOver configure: @escaping @Sendable (any Channel, P.HandOff) throws -> Connection,
        handle: @escaping @Sendable (AcceptedConnection<Connection>) async -> Void) async throws {
        try await runThreaded(proto, serving: serving, handOver: ThreadedHandOver(listener: self, configure: configure), handle: handle)
    }

    private func runThreaded<P: ThreadedProtocol, Connection: Sendable>(
        _ proto: P, serving: ThreadedServing, handOver: ThreadedHandOver<P.HandOff, Connection>?,
        handle: @escaping @Sendable (AcceptedConnection<Connection>) async -> Void) async throws {
        let name = self.name, logger = self.logger, backlog = self.backlog
        let sockets: [ListeningSocket]
        do {
            sockets = try endpoints.map { try ListeningSocket(listener: name, endpoint: $0, backlog: backlog) }
        } catch {
            bound.fail(error)
            throw error
        }
        var adopt: (@Sendable (HandedOver<P.HandOff>) -> Void)?
        if let handOver {
            adopt = { (h: HandedOver<P.HandOff>) in handOver.adopt(h) }
        }
        let server: ThreadedServer<P>
        do {
            server = try ThreadedServer(listener: self, proto: proto, sockets: sockets, serving: serving, adopt: adopt)
        } catch {
            for s in sockets { s.close() }
            bound.fail(error)
            throw error
        }
        for s in sockets {
            logger.info("\(name) listening", metadata: ["listener": "\(name)", "address": "\(s.address)", "threads": "\(serving.threads)"])
        }
        bound.succeed(sockets.map(\.address))
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { connections in
                    connections.addTask {
                        await server.run()
                        handOver?.threadsFinished()
                    }
                    guard let handOver else { return }
                    for await accepted in handOver.accepted {
                        connections.addTask { await Listener.serve(accepted, handle) }
                    }
                }
            } onGracefulShutdown: {
                logger.info("\(name) draining: no new connections, finishing requests in flight",
                            metadata: ["listener": "\(name)"])
                server.stop(abort: false)
                handOver?.stop(abort: false)
            }
        } onCancel: {
            server.stop(abort: true)
            handOver?.stop(abort: true)
        }
        logger.info("\(name) stopped", metadata: ["listener": "\(name)"])
    }
}

/// A bound, listening socket of a threaded listener (non-blocking, so the epoll thread's
/// accepts never wait).
struct ListeningSocket: Sendable {
    let fd: Int32
    let address: Endpoint
    let isTCP: Bool

    init(listener: String, endpoint: Endpoint, backlog: Int) throws {
        do {
            switch endpoint {
            case let .tcp(host, port):
                let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
                fd = try Self.bind(address, family: address.protocol.rawValue)
                isTCP = true
            case let .unix(path):
                if let st = try? FileManager.default.attributesOfItem(atPath: path), st[.type] as? FileAttributeType == .typeSocket {
                    unlink(path)
                }
                fd = try Self.bind(try SocketAddress(unixDomainSocketPath: path), family: AF_UNIX)
                isTCP = false
            }
            guard listen(fd, Int32(clamping: backlog)) == 0 else { throw IOError(errnoCode: errno, reason: "listen") }
            address = try Self.boundAddress(fd, endpoint)
        } catch {
            throw ListenError(listener: listener, endpoint: endpoint, underlying: error)
        }
    }

    static func bind(_ address: SocketAddress, family: Int32) throws -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        var one: Int32 = 1
        if family != AF_UNIX {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let rc = address.withSockAddr { sa, len in Glibc.bind(fd, sa, socklen_t(len)) }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw IOError(errnoCode: e, reason: "bind")
        }
        return fd
    }

    private static func boundAddress(_ fd: Int32, _ endpoint: Endpoint) throws -> Endpoint {
        guard case .tcp = endpoint else { return endpoint }
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0 else { throw IOError(errnoCode: errno, reason: "getsockname") }
        let address = SocketAddress(storage)
        return .tcp(host: address.ipAddress ?? "unknown", port: address.port ?? 0)
    }

    func close() {
        Glibc.close(fd)
        if case let .unix(path) = address { unlink(path) }
    }
}

extension SocketAddress {
    /// The address in `storage` (IPv4, IPv6 or a Unix path).
    init(_ storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let sin = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            self = SocketAddress(sin, host: "")
        case AF_INET6:
            let sin6 = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            self = SocketAddress(sin6, host: "")
        default:
            let sun = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_un.self) }
            self = SocketAddress(sun)
        }
    }
}

/// One accepted connection of a threaded listener: owned by one thread at a time (a
/// worker serving it, the epoll thread while it is parked, the queue in between).
final class ThreadedConnection<P: ThreadedProtocol>: @unchecked Sendable {
    let fd: Int32
    let peer: String
    let peerIP: String?
    var state: P.Connection
    var input: ByteBuffer
    /// Registered with the epoll thread (re-armed on each park; `EPOLLONESHOT`).
    var registered = false
    /// Queued while every thread was busy (counted in `waiting`).
    var starving = false
    var lastRead: NIODeadline
    /// When the request not yet whole began (its first byte), nil when none is.
    var partialSince: NIODeadline?
    /// Replies the socket did not take yet: the connection waits for it to be writable
    /// (parked for `EPOLLOUT`) and reads nothing meanwhile.
    var pendingOut: ByteBuffer? {
        didSet {
            // A reply partly taken keeps the memory of all of it, the part taken included:
            // once that part is the larger (and over 1 MiB), the rest moves to a buffer of its
            // own. (Sixty-four connections each taking part of a 4 MiB reply held 21 MiB by
            // this count, with 264 MiB of the node's memory.)
            if var p = pendingOut, p.readerIndex >= ReplyMemory.keptBufferBytes, p.readerIndex >= p.readableBytes {
                var rest = ByteBufferAllocator().buffer(capacity: p.readableBytes)
                rest.writeBuffer(&p)
                pendingOut = rest
            }
            // A large reply waiting for the socket is held against the read ports' budget:
            // the bytes its buffer holds, taken or not (the difference taken or given
            // back: never all given back and taken again, where another could pass).
            guard let memory else { return }
            let now = pendingOut.map { $0.writerIndex >= ReplyMemory.largeReply ? $0.writerIndex : 0 } ?? 0
            if now != held {
                memory.change(from: held, to: now)
                held = now
            }
        }
    }
    let memory: ReplyMemory?
    /// Bytes of `pendingOut` held against `memory`.
    private var held = 0

    /// Replies the socket did not take, and what of `memory` they took as they were built
    /// (`ThreadedProtocol.received`'s `held`): that hold becomes `pendingOut`'s.
    func owe(_ out: ByteBuffer, held built: Int) {
        precondition(pendingOut == nil, "replies owed while others still wait")
        held = built
        pendingOut = out
    }
    /// When the socket last took bytes of `pendingOut` (the write timeout's start).
    var lastWrite: NIODeadline
    /// Close once `pendingOut` is written (`quit`, a line too long).
    var closeAfterWrite = false
    /// Lingering until then at most (`LingeringClose`): answered for the last time, its
    /// output shut, what the peer still sends read and dropped until its end.
    var lingerEnds: NIODeadline?
    /// Whole requests in `input` not answered yet: answering stopped at a reply the socket
    /// did not take (`Answering.paused`); they are answered before anything more is read.
    var unanswered = false
    /// Its answers once took the epoll thread `inlineBudget` or more: a worker answers it
    /// from then on, however quiet it is.
    var heavy = false

    init(fd: Int32, peer: String, peerIP: String?, state: P.Connection, memory: ReplyMemory?) {
        self.memory = memory
        self.fd = fd
        self.peer = peer
        self.peerIP = peerIP
        self.state = state
        input = ByteBufferAllocator().buffer(capacity: 4096)
        lastRead = .now()
        lastWrite = lastRead
    }
}

/// A worker thread as the epoll thread sees it: the thread, to interrupt its `read` of a
/// quiet connection when another connection waits for a thread, and since when that
/// connection has been quiet (uptime nanoseconds; 0 while the thread is not in `read`).
final class ThreadedWorker: Sendable {
    let thread: pthread_t
    let quietSince = Atomic<UInt64>(0)

    init(thread: pthread_t) {
        self.thread = thread
    }
}

/// The interrupt signal's handler, installed once per process.
private let interruptSignalInstalled: Bool = qs_install_interrupt_signal() == 0

/// The threads, the queue and the epoll of one `runThreaded`.
final class ThreadedServer<P: ThreadedProtocol>: @unchecked Sendable {
    typealias Conn = ThreadedConnection<P>

    private let proto: P
    private let serving: ThreadedServing
    private let sockets: [ListeningSocket]
    private let listenerName: String
    private let logger: Logger
    private let counter: ConnectionCounter
    private let timeout: TimeAmount
    private let refusals = RateLimitedLog()
    private let epoll: Int32
    private let wake: Int32

    private struct State {
        var ready: [Conn] = []
        var readyHead = 0
        var parked: [Int32: Conn] = [:]
        /// Connections a worker holds, by descriptor (for the drain's `shutdown`).
        var active: [Int32: Conn] = [:]
        /// The live workers, for the epoll thread to interrupt.
        var threads: [ObjectIdentifier: ThreadedWorker] = [:]
        var workers = 0
        /// Workers waiting for a connection, and wake-ups sent to them not yet taken.
        var idleWorkers = 0
        var wakeups = 0
        var stopping = false
        var aborting = false
        /// `run` closed the epoll and wake descriptors.
        var closedDescriptors = false
        var epollDone = false
        var finished: CheckedContinuation<Void, Never>?

        var readyCount: Int { ready.count - readyHead }
        var done: Bool { stopping && epollDone && workers == 0 && active.isEmpty && parked.isEmpty && readyCount == 0 }
    }

    /// Guards `state`; idle workers wait on it for a connection.
    private let lock = NSCondition()
    private var state = State()
    /// Connections queued while every thread was busy: a thread whose connection has more to
    /// read parks it behind them instead (read without the lock after each request).
    private let waiting = Atomic<Int>(0)
    /// `state.stopping`, read without the lock after each request.
    private let stopped = Atomic<Bool>(false)

    /// Takes a connection handed to the event loops (`Answering.handOver`); nil: the
    /// protocol hands none over (one that does is closed).
    private let adopt: (@Sendable (HandedOver<P.HandOff>) -> Void)?

    init(listener: Listener, proto: P, sockets: [ListeningSocket], serving: ThreadedServing,
         adopt: (@Sendable (HandedOver<P.HandOff>) -> Void)? = nil) throws {
        self.proto = proto
        self.adopt = adopt
        self.serving = serving
        self.sockets = sockets
        listenerName = listener.name
        logger = listener.logger
        counter = listener.counter
        timeout = listener.limits.idleTimeout
        _ = interruptSignalInstalled
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw IOError(errnoCode: errno, reason: "epoll_create1") }
        wake = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        guard wake >= 0 else {
            Glibc.close(epoll)
            throw IOError(errnoCode: errno, reason: "eventfd")
        }
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u64 = UInt64(UInt32(bitPattern: wake))
        epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &ev)
        for s in sockets {
            ev.data.u64 = UInt64(UInt32(bitPattern: s.fd))
            epoll_ctl(epoll, EPOLL_CTL_ADD, s.fd, &ev)
        }
    }

    /// Runs the epoll thread and returns once every connection is closed after `stop`.
    func run() async {
        startThread("epoll") { [self] in epollLoop() }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = lock.withLock { () -> Bool in
                if state.done { return true }
                state.finished = c
                return false
            }
            if now { c.resume() }
        }
        lock.withLock {
            state.closedDescriptors = true
            Glibc.close(wake)
            Glibc.close(epoll)
        }
    }

    /// Graceful (`abort` false): accepts and reads no more; each connection closes once what
    /// it answered is written. Abort: every connection is shut down at once.
    func stop(abort: Bool) {
        lock.withLock {
            state.stopping = true
            stopped.store(true, ordering: .relaxed)
            if abort { state.aborting = true }
            // A worker blocked in `read` sees the end of its input and closes the connection.
            for fd in state.active.keys { shutdown(fd, Int32(abort ? SHUT_RDWR : SHUT_RD)) }
            lock.broadcast()
            if !state.closedDescriptors {
                var one: UInt64 = 1
                _ = write(wake, &one, 8)
            }
        }
    }

    // MARK: the epoll thread: accepts, parked connections, idle timeouts, the drain

    private func epollLoop() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        // What the epoll thread answers quiet connections with, made at the first.
        var inlineWorker: (worker: P.Worker, me: ThreadedWorker)?
        var inlineOut = ByteBufferAllocator().buffer(capacity: 4096)
        var lastSweep = NIODeadline.now()
        var listening = true
        while true {
            // While connections wait for a thread, look again soon: a thread in `read` of a
            // quiet connection may have missed its interrupt.
            let wait: Int32 = waiting.load(ordering: .relaxed) > 0 ? 5 : 1000
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, 64, wait) }
            if n < 0 && errno != EINTR {
                logger.error("\(listenerName): epoll_wait failed", metadata: ["listener": "\(listenerName)", "errno": "\(errno)"])
            }
            let stopping = lock.withLock { state.stopping }
            if stopping {
                if listening {
                    listening = false
                    for s in sockets { s.close() }
                }
                // Parked connections close; those still owed replies get them first, all
                // at once (`drainOwed`), each bounded by the idle timeout (held as active
                // meanwhile, so an abort shuts them down).
                let parked = lock.withLock { () -> [Conn] in
                    let all = Array(state.parked.values)
                    state.parked.removeAll()
                    for c in all where c.pendingOut != nil { state.active[c.fd] = c }
                    return all
                }
                var owing = [Int32: Conn]()
                for c in parked {
                    if c.pendingOut != nil {
                        owing[c.fd] = c
                    } else {
                        close(c, reason: nil)
                    }
                }
                drainOwed(owing, events: &events)
                let done = lock.withLock { () -> CheckedContinuation<Void, Never>? in
                    state.epollDone = true
                    return finishIfDone()
                }
                done?.resume()
                return
            }
            let batchStart = NIODeadline.now()
            for i in 0..<max(Int(n), 0) {
                let fd = Int32(truncatingIfNeeded: events[i].data.u64)
                if fd == wake {
                    var v: UInt64 = 0
                    _ = read(wake, &v, 8)
                } else if let s = sockets.first(where: { $0.fd == fd }) {
                    accept(on: s)
                } else {
                    let now = NIODeadline.now()
                    let taken = lock.withLock { () -> (Conn, inline: Bool)? in
                        // Draining since this batch began: left parked for the drain, next
                        // in this loop, which writes what it owes and closes it.
                        guard !state.stopping, let c = state.parked.removeValue(forKey: fd) else { return nil }
                        // Quiet (its last bytes `serving.inlineAfter` ago or more), owed
                        // nothing, not one whose answers took long here before, and this
                        // thread not yet `inlineBudget` into this batch: answered here
                        // (`ThreadedServing.inlineAfter`); else a worker takes it.
                        let inline = c.lingerEnds == nil && !c.heavy && now - batchStart < serving.inlineBudget
                            && (serving.inlineAfter.map { c.pendingOut == nil && !c.unanswered && now - c.lastRead >= $0 } ?? false)
                        if inline { state.active[c.fd] = c }
                        return (c, inline)
                    }
                    guard let (c, inline) = taken else { continue }
                    if c.lingerEnds != nil {
                        dropLingering(c, onEpollThread: true)
                    } else if inline {
                        let w = inlineWorker ?? (proto.makeWorker(), ThreadedWorker(thread: pthread_self()))
                        inlineWorker = w
                        serve(c, worker: w.worker, me: w.me, out: &inlineOut, wait: false)
                        if NIODeadline.now() - now >= serving.inlineBudget { c.heavy = true }
                    } else {
                        enqueue(c)
                    }
                }
            }
            if waiting.load(ordering: .relaxed) > 0 { interruptQuietest() }
            let now = NIODeadline.now()
            if now - lastSweep >= .milliseconds(500) {
                lastSweep = now
                sweep(now)
            }
        }
    }

    /// The drain's last writes: every connection owed replies is written as its socket
    /// takes them, side by side (a peer reading slowly holds back only itself), and closed
    /// once written, once broken, or once it took nothing for the idle timeout
    /// (`write-timeout`). They were written one after the other in blocking writes, so a few
    /// slow readers held the shutdown for the idle timeout each.
    private func drainOwed(_ connections: [Int32: Conn], events: inout [epoll_event]) {
        var owing = connections
        func finish(_ c: Conn, _ reason: CloseReason?) {
            owing[c.fd] = nil
            c.pendingOut = nil
            lock.withLock { _ = state.active.removeValue(forKey: c.fd) }
            close(c, reason: reason)
        }
        func arm(_ c: Conn) -> Bool {
            var ev = epoll_event()
            ev.events = EPOLLOUT.rawValue | EPOLLONESHOT.rawValue
            ev.data.u64 = UInt64(UInt32(bitPattern: c.fd))
            let rc = epoll_ctl(epoll, c.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev)
            if rc == 0 { c.registered = true }
            return rc == 0
        }
        // What the socket takes now; the rest waits for it to be writable.
        func step(_ c: Conn) {
            guard var pending = c.pendingOut else { return }
            let before = pending.readableBytes
            let result = writeSome(c.fd, &pending)
            if pending.readableBytes < before { c.lastWrite = .now() }
            switch result {
            case .done, .broken: finish(c, nil)
            case .blocked:
                c.pendingOut = pending
                if !arm(c) { finish(c, nil) }
            }
        }
        for c in Array(owing.values) { step(c) }
        while !owing.isEmpty {
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, Int32($0.count), 100) }
            for i in 0..<max(Int(n), 0) {
                let fd = Int32(truncatingIfNeeded: events[i].data.u64)
                if fd == wake {
                    var v: UInt64 = 0
                    _ = read(wake, &v, 8)
                } else if let c = owing[fd] {
                    step(c)
                }
            }
            let now = NIODeadline.now()
            let aborting = lock.withLock { state.aborting }
            for c in Array(owing.values) where aborting || (timeout.nanoseconds > 0 && now - c.lastWrite >= timeout) {
                finish(c, aborting ? nil : .writeTimeout)
            }
        }
    }

    private func accept(on socket: ListeningSocket) {
        while true {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept4(socket.fd, $0, &len, Int32(SOCK_CLOEXEC.rawValue)) }
            }
            if fd < 0 {
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK { return }
                if e == EINTR || e == ECONNABORTED { continue }
                refusals.warning(logger, "\(listenerName): accept failed: \(String(cString: strerror(e)))", peer: "accept",
                                 metadata: ["listener": "\(listenerName)"])
                // Out of descriptors: let the epoll wait breathe instead of spinning.
                usleep(10_000)
                return
            }
            var peerIP: String?
            var peer = "unix"
            if socket.isTCP {
                let address = SocketAddress(storage)
                peerIP = address.ipAddress
                peer = address.peerDescription
                var one: Int32 = 1
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            } else if case let .unix(path) = socket.address {
                peer = path
            }
            if let refusal = counter.admit(peer: peerIP) {
                refusals.warning(logger, "\(listenerName) refused a connection", peer: peerIP ?? "unix",
                                 metadata: ["listener": "\(listenerName)", "reason": "\(refusal.rawValue)",
                                            "limit": "\(Listener.limit(refusal, counter))"])
                Glibc.close(fd)
                continue
            }
            Self.setTimeout(fd, SO_RCVTIMEO, serving.parkAfter)
            if timeout.nanoseconds > 0 { Self.setTimeout(fd, SO_SNDTIMEO, timeout) }
            // Parked until it sends: a connection that sends nothing holds no thread.
            park(Conn(fd: fd, peer: peer, peerIP: peerIP, state: proto.open(peer: peer), memory: proto.replyMemory))
        }
    }

    /// Closes parked connections past the idle timeout (or with a request not whole within
    /// it), and lingering ones past theirs.
    private func sweep(_ now: NIODeadline) {
        let expired = lock.withLock { () -> [(Conn, CloseReason?)] in
            var out = [(Conn, CloseReason?)]()
            for (fd, c) in state.parked {
                if let ends = c.lingerEnds {
                    // Lingering (`LingeringClose`): ends at its deadline or the peer's quiet.
                    guard now >= ends || now - c.lastRead >= LingeringClose.idle else { continue }
                    out.append((c, nil))
                } else if timeout.nanoseconds <= 0 {
                    continue
                } else if c.pendingOut != nil {
                    guard now - c.lastWrite >= timeout else { continue }
                    out.append((c, .writeTimeout))
                } else if let since = c.partialSince, now - since >= timeout {
                    out.append((c, .requestTimeout))
                } else if now - c.lastRead >= timeout {
                    out.append((c, .idleTimeout))
                } else {
                    continue
                }
                state.parked[fd] = nil
            }
            return out
        }
        for (c, reason) in expired { close(c, reason: reason) }
    }

    /// Connections wait for a thread while every thread is busy: the threads in `read` of
    /// the connections quiet longest are interrupted, one per waiting connection, and park
    /// them (a thread answering a request parks its connection after the answer anyway).
    private func interruptQuietest() {
        lock.withLock {
            let n = waiting.load(ordering: .relaxed)
            guard n > 0 else { return }
            var quiet = [(since: UInt64, worker: ThreadedWorker)]()
            for w in state.threads.values {
                let since = w.quietSince.load(ordering: .relaxed)
                if since != 0 { quiet.append((since, w)) }
            }
            quiet.sort { $0.since < $1.since }
            for q in quiet.prefix(n) { pthread_kill(q.worker.thread, qs_interrupt_signal()) }
        }
    }

    // MARK: the queue and the workers

    private func enqueue(_ c: Conn) {
        let next = lock.withLock { () -> EnqueueOutcome in
            if state.stopping { return .close }
            state.ready.append(c)
            if state.idleWorkers > state.wakeups {
                state.wakeups += 1
                lock.signal()
                return .queued
            }
            guard state.workers < serving.threads else {
                c.starving = true
                waiting.add(1, ordering: .relaxed)
                return .queued
            }
            state.workers += 1
            return .spawn
        }
        if case .close = next {
            closeAndFinish(c, reason: nil)
        } else if case .spawn = next {
            startThread("read") { [self] in workerLoop() }
        }
    }

    /// The next connection to serve; nil when the thread is to end (stopping, or idle long).
    private func take(_ me: ThreadedWorker) -> Conn? {
        let idleSince = NIODeadline.now()
        lock.lock()
        while true {
            if state.readyCount > 0 {
                let c = state.ready[state.readyHead]
                state.readyHead += 1
                if state.readyHead == state.ready.count {
                    state.ready.removeAll(keepingCapacity: true)
                    state.readyHead = 0
                } else if state.readyHead >= 1024 {
                    state.ready.removeFirst(state.readyHead)
                    state.readyHead = 0
                }
                if c.starving {
                    c.starving = false
                    waiting.subtract(1, ordering: .relaxed)
                }
                state.active[c.fd] = c
                if state.stopping { shutdown(c.fd, Int32(state.aborting ? SHUT_RDWR : SHUT_RD)) }
                lock.unlock()
                return c
            }
            // Idle threads beyond two end after ten seconds without work.
            if state.stopping || (state.workers > 2 && NIODeadline.now() - idleSince >= .seconds(10)) {
                state.workers -= 1
                state.threads[ObjectIdentifier(me)] = nil
                let done = finishIfDone()
                lock.unlock()
                done?.resume()
                return nil
            }
            state.idleWorkers += 1
            _ = lock.wait(until: Date(timeIntervalSinceNow: 1))
            state.idleWorkers -= 1
            if state.wakeups > 0 { state.wakeups -= 1 }
        }
    }

    private func workerLoop() {
        let worker = proto.makeWorker()
        _ = qs_unblock_interrupt_signal()
        let me = ThreadedWorker(thread: pthread_self())
        lock.withLock { state.threads[ObjectIdentifier(me)] = me }
        var out = ByteBufferAllocator().buffer(capacity: 4096)
        while let c = take(me) {
            serve(c, worker: worker, me: me, out: &out)
        }
    }

    private enum EnqueueOutcome { case queued, spawn, close }

    private enum Outcome {
        case park
        case parkForWrite
        case close(CloseReason?)
        /// Answered for the last time (the protocol closes it: `quit`, a line too long):
        /// closed lingering, as `LingeringClose` closes a channel.
        case linger
        /// To the event loops, with the replies the socket did not take yet and when the
        /// request left began (nil: in this read).
        case handOver(owed: ByteBuffer, held: Int, since: NIODeadline?)
    }

    /// Serves `c` until it parks, closes or is handed over. `wait` false (the epoll thread
    /// answering a quiet connection inline): one read that does not wait and its answers,
    /// then it parks again.
    private func serve(_ c: Conn, worker: P.Worker, me: ThreadedWorker, out: inout ByteBuffer, wait: Bool = true) {
        let onEpollThread = !wait
        while true {
            let outcome = step(c, worker: worker, me: me, out: &out, wait: wait)
            switch outcome {
            case nil:
                if wait { continue }
                if c.unanswered {
                    // Requests left unanswered behind a reply the socket has taken since:
                    // nothing will come to wake it for them, so a worker answers them.
                    lock.withLock { _ = state.active.removeValue(forKey: c.fd) }
                    enqueue(c)
                } else {
                    park(c, onEpollThread: true)
                }
                return
            case .park?:
                park(c, onEpollThread: onEpollThread)
                return
            case .parkForWrite?:
                park(c, forWrite: true, onEpollThread: onEpollThread)
                return
            case let .close(reason)?:
                lock.withLock { _ = state.active.removeValue(forKey: c.fd) }
                closeAndFinish(c, reason: reason)
                return
            case .linger?:
                // Its output shut after the last answer (written: the socket took it all);
                // what the peer still sends is dropped on the epoll thread until its end.
                shutdown(c.fd, Int32(SHUT_WR))
                c.lingerEnds = .now() + LingeringClose.most
                dropLingering(c, onEpollThread: onEpollThread)
                return
            case let .handOver(owed, held, since)?:
                handOver(c, owed: owed, held: held, since: since, onEpollThread: onEpollThread)
                return
            }
        }
    }

    /// One read and its answers (or, when replies are owed, a write); nil: go on reading.
    private func step(_ c: Conn, worker: P.Worker, me: ThreadedWorker, out: inout ByteBuffer, wait: Bool) -> Outcome? {
        if c.pendingOut != nil { return resumeWrite(c) }
        // Draining: what has arrived is answered (one read without waiting), then it closes.
        let draining = stopped.load(ordering: .relaxed)
        c.input.reserveCapacity(minimumWritableBytes: 4096)
        if c.unanswered {
            // The replies before them are taken: the requests waiting are answered, nothing read.
            c.unanswered = false
            return answer(c, worker: worker, out: &out, draining: draining, read: false)
        }
        me.quietSince.store(c.lastRead.uptimeNanoseconds, ordering: .relaxed)
        let n = c.input.withUnsafeMutableWritableBytes { recv(c.fd, $0.baseAddress, $0.count, draining || !wait ? Int32(MSG_DONTWAIT) : 0) }
        me.quietSince.store(0, ordering: .relaxed)
        if n > 0 {
            c.input.moveWriterIndex(forwardBy: n)
            c.lastRead = .now()
            return answer(c, worker: worker, out: &out, draining: draining, read: true)
        }
        if n == 0 || draining { return .close(nil) }
        if !wait && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { return .park }
        switch errno {
        case EINTR:
            // Interrupted because another connection waits for a thread: this quiet one parks.
            return waiting.load(ordering: .relaxed) > 0 ? .park : nil
        case EAGAIN, EWOULDBLOCK:
            // Quiet for `parkAfter`: past the request deadline or the idle timeout it
            // closes, else the thread is given back.
            let now = NIODeadline.now()
            if timeout.nanoseconds > 0 {
                if let since = c.partialSince, now - since >= timeout { return .close(.requestTimeout) }
                if now - c.lastRead >= timeout { return .close(.idleTimeout) }
            }
            return .park
        default:
            return .close(nil)
        }
    }

    /// Answers the whole requests in the connection's input (`read`: bytes just read), and
    /// writes the replies as far as the socket takes them; nil: go on reading.
    private func answer(_ c: Conn, worker: P.Worker, out: inout ByteBuffer, draining: Bool, read: Bool) -> Outcome? {
        let before = c.input.readerIndex
        var broken = false
        // What `out`'s replies hold of the reply budget, taken as they were built: given back
        // once the socket has taken them (here, at any way out), or handed on with what waits.
        var held = 0
        let memory = c.memory
        defer { if held > 0 { memory?.release(held) } }
        let answered = proto.received(&c.input, connection: &c.state, into: &out, held: &held, worker: worker) { buffer, held in
            // Written as far as the socket takes it now; once it takes no more, answering
            // stops and the rest waits (in `out`, then `pendingOut`).
            switch self.writeSome(c.fd, &buffer) {
            case .broken: broken = true; return false
            case .blocked: return false
            case .done:
                if held > 0 { memory?.release(held) }
                held = 0
                return true
            }
        }
        if broken { return .close(nil) }
        // Draining, a connection is not handed over: its socket's reading side is shut
        // (`stop`), which the event loops would take for the peer's end and close it with
        // replies unwritten. What was answered is written and it closes, as any here.
        if answered == .handOver && !draining {
            guard adopt != nil else {
                logger.error("\(listenerName): the protocol handed a connection over with no event-loop pipeline to take it; closed",
                             metadata: ["listener": "\(listenerName)", "peer": "\(c.peer)"])
                return .close(nil)
            }
            var owed = ByteBuffer(), owedHeld = 0
            if out.readableBytes > 0 {
                switch writeSome(c.fd, &out) {
                case .broken:
                    return .close(nil)
                case .blocked:
                    owed = out
                    owedHeld = held
                    held = 0
                    out = ByteBufferAllocator().buffer(capacity: 4096)
                case .done:
                    break
                }
            }
            if out.capacity > Self.keptOutputBytes { out = ByteBufferAllocator().buffer(capacity: 4096) }
            // The request left began in an earlier read unless one before it was answered now.
            return .handOver(owed: owed, held: owedHeld, since: c.input.readerIndex == before ? c.partialSince : nil)
        }
        if answered == .paused {
            c.unanswered = true
        } else if c.input.readableBytes == 0 {
            c.input.clear()
            c.partialSince = nil
        } else {
            // What is left began in this read if a request before it was whole.
            if read && (c.partialSince == nil || c.input.readerIndex != before) { c.partialSince = c.lastRead }
            c.input.discardReadBytes()
        }
        let open = answered == .open || answered == .paused
        if out.readableBytes > 0 {
            switch writeSome(c.fd, &out) {
            case .broken:
                return .close(nil)
            case .blocked:
                // The peer does not take the replies now: the thread is given back and
                // the connection waits for the socket to be writable, reading nothing.
                c.owe(out, held: held)
                held = 0
                c.lastWrite = .now()
                c.closeAfterWrite = !open
                out = ByteBufferAllocator().buffer(capacity: 4096)
                return .parkForWrite
            case .done:
                break
            }
        }
        // A reply buffer grown large is not kept for the thread's life.
        if out.capacity > Self.keptOutputBytes { out = ByteBufferAllocator().buffer(capacity: 4096) }
        if draining { return .close(nil) }
        if !open { return .linger }
        if c.unanswered { return nil }
        if timeout.nanoseconds > 0, let since = c.partialSince, c.lastRead - since >= timeout { return .close(.requestTimeout) }
        // Others wait for a thread and none is free: this one goes to the back.
        if waiting.load(ordering: .relaxed) > 0 { return .park }
        return nil
    }

    /// Reply bytes a thread keeps room for between requests.
    static var keptOutputBytes: Int { 1 << 20 }

    /// The socket became writable (or broke) for a connection owed replies.
    private func resumeWrite(_ c: Conn) -> Outcome? {
        guard var pending = c.pendingOut else { return nil }
        if stopped.load(ordering: .relaxed) {
            // Draining: what was answered is written (blocking, bounded by the send timeout), then it closes.
            c.pendingOut = nil
            _ = blockingWrite(c.fd, &pending)
            return .close(nil)
        }
        let before = pending.readableBytes
        let result = writeSome(c.fd, &pending)
        if pending.readableBytes < before { c.lastWrite = .now() }
        switch result {
        case .broken:
            c.pendingOut = nil
            return .close(nil)
        case .blocked:
            c.pendingOut = pending
            return .parkForWrite
        case .done:
            c.pendingOut = nil
            return c.closeAfterWrite ? .linger : nil
        }
    }

    private enum WriteResult { case done, blocked, broken }

    /// Writes as much of `buffer` as the socket takes without waiting.
    private func writeSome(_ fd: Int32, _ buffer: inout ByteBuffer) -> WriteResult {
        while buffer.readableBytes > 0 {
            let n = buffer.withUnsafeReadableBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 {
                buffer.moveReaderIndex(forwardBy: n)
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return .blocked
            } else {
                buffer.clear()
                return .broken
            }
        }
        buffer.clear()
        return .done
    }

    /// Writes all of `buffer`, waiting (bounded by the socket's send timeout): the drain's
    /// last replies. False when the peer took nothing for the idle timeout or broke.
    private func blockingWrite(_ fd: Int32, _ buffer: inout ByteBuffer) -> Bool {
        while buffer.readableBytes > 0 {
            let n = buffer.withUnsafeReadableBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                buffer.moveReaderIndex(forwardBy: n)
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    /// Gives `c` to the event loops (`adopt`): out of this server's books (its place under
    /// the listener's caps goes with it), off the epoll, its state handed off, its unread
    /// bytes and unwritten replies passed on.
    /// Draining began meanwhile (its `shutdown` may have reached the socket): the replies
    /// are written and it closes instead.
    /// `held`: what of the reply budget `owed`'s replies took as they were built.
    private func handOver(_ c: Conn, owed: ByteBuffer, held: Int, since: NIODeadline?, onEpollThread: Bool = false) {
        let handing = lock.withLock { () -> Bool? in
            state.active.removeValue(forKey: c.fd)
            if state.stopping {
                // On the epoll thread, a blocking write would hold up the whole drain: the
                // connection joins the parked ones the drain is about to write to and close.
                guard onEpollThread else { return false }
                if owed.readableBytes > 0 { c.owe(owed, held: held) } else { c.memory?.release(held) }
                state.parked[c.fd] = c
                return nil
            }
            if c.registered { epoll_ctl(epoll, EPOLL_CTL_DEL, c.fd, nil) }
            return true
        }
        guard let handing else { return }
        guard handing else {
            var owed = owed
            _ = blockingWrite(c.fd, &owed)
            c.memory?.release(held)
            closeAndFinish(c, reason: nil)
            return
        }
        c.registered = false
        let off = proto.handOff(c.state)
        var leftover = c.input
        c.input = ByteBuffer()
        if leftover.readableBytes == 0 { leftover = ByteBuffer() }
        adopt?(HandedOver(fd: c.fd, peerIP: c.peerIP, handOff: off, leftover: leftover, owed: owed, requestSince: since,
                               memory: proto.replyMemory, held: held))
    }

    /// Hands `c` to the epoll thread until it is readable (or, `forWrite`, writable).
    /// `onEpollThread`: called by the epoll thread itself, which, once draining, leaves it
    /// to its drain (next in its loop) instead of writing what it owes in a blocking write.
    private func park(_ c: Conn, forWrite: Bool = false, onEpollThread: Bool = false) {
        // A parked connection holds no buffer unless it holds part of a request.
        if c.input.readableBytes == 0 && c.input.capacity > 0 { c.input = ByteBuffer() }
        let closeNow = lock.withLock { () -> Bool in
            state.active.removeValue(forKey: c.fd)
            if state.stopping {
                guard onEpollThread else { return true }
                state.parked[c.fd] = c
                return false
            }
            state.parked[c.fd] = c
            var ev = epoll_event()
            // (Not `EPOLLRDHUP` while owed replies: a peer that shut its side down but still
            // reads would wake it at once, again and again.)
            ev.events = (forWrite ? EPOLLOUT.rawValue : EPOLLIN.rawValue | EPOLLRDHUP.rawValue) | EPOLLONESHOT.rawValue
            ev.data.u64 = UInt64(UInt32(bitPattern: c.fd))
            let rc = epoll_ctl(epoll, c.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev)
            if rc != 0 {
                state.parked[c.fd] = nil
                return true
            }
            c.registered = true
            return false
        }
        if closeNow {
            // Draining began meanwhile: what was answered is still written first.
            if var pending = c.pendingOut {
                c.pendingOut = nil
                _ = blockingWrite(c.fd, &pending)
            }
            closeAndFinish(c, reason: nil)
        }
    }

    private func close(_ c: Conn, reason: CloseReason?) {
        if let reason {
            counter.closed(reason)
            if reason == .requestTimeout {
                refusals.warning(logger, "\(listenerName) closed a connection: no whole request within --idle-timeout of its first byte",
                                 peer: c.peerIP ?? "unix", metadata: ["listener": "\(listenerName)", "reason": "\(reason.rawValue)"])
            }
        }
        proto.closed(c.state)
        c.pendingOut = nil
        discardUnread(c.fd)
        Glibc.close(c.fd)
        counter.release(peer: c.peerIP)
    }

    /// A lingering connection (`Conn.lingerEnds`): what came is dropped; closed at the peer's
    /// end, else parked with the epoll thread until more comes (or the sweep ends it).
    private func dropLingering(_ c: Conn, onEpollThread: Bool) {
        if discardUnread(c.fd) {
            lock.withLock { _ = state.active.removeValue(forKey: c.fd) }
            closeAndFinish(c, reason: nil)
        } else {
            c.lastRead = .now()
            park(c, onEpollThread: onEpollThread)
        }
    }

    /// Reads and drops what the peer sent and nobody will read (a request after a `quit`, the
    /// rest of a line too long), at most 256 KiB and without waiting: closed with unread bytes,
    /// the socket would answer with a reset, and the peer could lose the reply it has not
    /// read yet; emptied, it ends with a FIN after the reply, as on the event loops. True
    /// when the peer's end (or an error) came: nothing more will.
    @discardableResult
    private func discardUnread(_ fd: Int32) -> Bool {
        withUnsafeTemporaryAllocation(byteCount: 16 << 10, alignment: 1) { scratch in
            var total = 0
            while total < 256 << 10 {
                let n = recv(fd, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT))
                if n == 0 { return true }
                if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR }
                total += n
            }
            return false
        }
    }

    /// Closes `c` (its worker or the epoll thread gave it up) and ends `run` if that was the
    /// drain's last connection.
    private func closeAndFinish(_ c: Conn, reason: CloseReason?) {
        close(c, reason: reason)
        let done = lock.withLock { finishIfDone() }
        done?.resume()
    }

    /// A thread of this listener, named after it (as `ps -L` and /proc show it: the kernel
    /// keeps 15 bytes of a name), with a small stack.
    private func startThread(_ role: String, _ body: @escaping @Sendable () -> Void) {
        let name = String(decoding: Array("\(listenerName)-\(role)".utf8.prefix(15)), as: UTF8.self)
        let t = Thread {
            _ = pthread_setname_np(pthread_self(), name)
            body()
        }
        t.name = name
        t.stackSize = 512 << 10
        t.start()
    }

    /// Under the lock: the continuation to resume when the drain is complete.
    private func finishIfDone() -> CheckedContinuation<Void, Never>? {
        guard state.done, let c = state.finished else { return nil }
        state.finished = nil
        return c
    }

    private static func setTimeout(_ fd: Int32, _ option: Int32, _ amount: TimeAmount) {
        let ns = max(amount.nanoseconds, 1_000)
        var tv = timeval(tv_sec: Int(ns / 1_000_000_000), tv_usec: Int((ns % 1_000_000_000) / 1_000))
        setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}
