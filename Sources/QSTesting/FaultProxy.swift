import Foundation

/// An in-process TCP proxy on a loopback port the kernel picks, forwarding to `upstream`,
/// that breaks the wire on demand: put it between two processes (a bridge and KT, a bridge
/// and its root, a replica and its upstream) and switch `fault` while they run.
///
/// Each connection is served by one thread polling both sockets (non-blocking), so a
/// fault takes effect on open connections at once, within a poll interval.
public final class FaultProxy: @unchecked Sendable {
    /// What the wire does.
    public enum Fault: Sendable, Equatable, CustomStringConvertible {
        /// Bytes pass as they come.
        case none
        /// Every byte arrives this much later (order kept), in both directions.
        case delay(Duration)
        /// Open connections are closed (FIN both ways), new ones are closed as soon as
        /// accepted: the peer is gone and says so.
        case drop
        /// As `drop`, with a reset (RST): the peer's socket errors instead of reading an end.
        case reset
        /// Open connections lose their upstream without the client hearing of it: the
        /// client's bytes are read and thrown away, nothing comes back, no end is sent (a
        /// peer that crashed, or a NAT that forgot the flow). New connections pass.
        case halfOpen
        /// A partition: nothing passes either way, not even an end of stream; bytes wait in
        /// the kernel's buffers and flow again (none lost) when the fault is lifted, unless
        /// an end closes the connection first. New connections are accepted and wait too.
        case blackhole
        /// At most this many bytes per second in each direction of each connection.
        case bandwidth(bytesPerSecond: Int)
        /// Bytes pass as they come, but the byte at this offset of what the upstream sends
        /// on a connection arrives inverted, once in the proxy's life (the first connection
        /// to get that far): damage in transit that TCP's checksum missed.
        case flipByte(at: Int)
        /// As `flipByte`, in what the client sends: the byte at this offset of a
        /// connection's bytes to the upstream arrives inverted, once in the proxy's life.
        case flipSentByte(at: Int)
        /// The upstream's answers wait in the proxy (none lost) until the fault is lifted;
        /// what the client sends passes: a server whose answers are slow to come back, so a
        /// test can see what a client sends before it has an answer.
        case holdReplies

        public var description: String {
            switch self {
            case .none: return "none"
            case let .delay(d): return "delay \(d)"
            case .drop: return "drop"
            case .reset: return "reset"
            case .halfOpen: return "half-open"
            case .blackhole: return "blackhole"
            case let .bandwidth(rate): return "bandwidth \(rate) B/s"
            case let .flipByte(at): return "byte \(at) from the upstream flipped, once"
            case let .flipSentByte(at): return "byte \(at) to the upstream flipped, once"
            case .holdReplies: return "hold replies"
            }
        }
    }

    public let port: Int
    public let upstreamHost: String
    public let upstreamPort: Int
    private let listenFD: Int32
    private let lock = NSLock()
    private var current: Fault = .none
    /// Bumped by every change of fault, so connections act once on a one-shot fault.
    private var generation = 0
    private var closed = false
    private var accepted = 0
    private var open = 0
    private var forwarded = 0
    private var flipped = false

    /// Listens on 127.0.0.1, port 0, and forwards each connection to `upstreamHost:upstreamPort`.
    public init(upstreamHost: String = "127.0.0.1", upstreamPort: Int) throws {
        self.upstreamHost = upstreamHost
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket() failed: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 && listen(fd, 128) == 0
            }
        }
        guard ok else {
            let error = errno
            Foundation.close(fd)
            throw HarnessError("the fault proxy cannot listen on a loopback port: errno \(error)")
        }
        listenFD = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        let acceptor = Thread { [self] in acceptLoop() }
        acceptor.name = "fault-proxy-accept"
        acceptor.start()
    }

    /// `127.0.0.1:PORT`, the address to give the client instead of the upstream's.
    public var address: String { "127.0.0.1:\(port)" }

    /// The fault in force; setting it acts on open connections within milliseconds.
    public var fault: Fault {
        get { lock.withLock { current } }
        set {
            lock.withLock {
                current = newValue
                generation += 1
            }
        }
    }

    /// Connections accepted since the start.
    public var connectionsAccepted: Int { lock.withLock { accepted } }
    /// Connections open now.
    public var openConnections: Int { lock.withLock { open } }
    /// Bytes delivered, both directions together.
    public var bytesForwarded: Int { lock.withLock { forwarded } }

    /// Stops accepting and closes every connection.
    public func close() {
        let wasOpen = lock.withLock { () -> Bool in
            defer { closed = true }
            return !closed
        }
        if wasOpen { shutdown(listenFD, Int32(SHUT_RDWR)) }
    }

    deinit { close() }

    private var isClosed: Bool { lock.withLock { closed } }

    private func state() -> (Fault, Int) { lock.withLock { (current, generation) } }

    private func acceptLoop() {
        defer { Foundation.close(listenFD) }
        while !isClosed {
            var p = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            let client = accept(listenFD, nil, nil)
            guard client >= 0 else { continue }
            lock.withLock { accepted += 1 }
            switch fault {
            case .drop:
                Foundation.close(client)
                continue
            case .reset:
                FaultProxy.closeWithReset(client)
                continue
            default:
                break
            }
            guard let upstream = connectUpstream() else {
                // The upstream refuses: so does the proxy, with a reset as the kernel would.
                FaultProxy.closeWithReset(client)
                continue
            }
            lock.withLock { open += 1 }
            let t = Thread { [self] in
                Pump(proxy: self, client: client, upstream: upstream).run()
                lock.withLock { open -= 1 }
            }
            t.name = "fault-proxy-conn"
            t.start()
        }
    }

    private func connectUpstream() -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr(upstreamHost)
        addr.sin_port = in_port_t(UInt16(upstreamPort).bigEndian)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            Foundation.close(fd)
            return nil
        }
        return fd
    }

    static func closeWithReset(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        Foundation.close(fd)
    }

    fileprivate func delivered(_ n: Int) { lock.withLock { forwarded += n } }

    /// Whether a `flipByte` or `flipSentByte` fault may flip its byte now (true once).
    fileprivate func takeFlip() -> Bool {
        lock.withLock {
            defer { flipped = true }
            return !flipped
        }
    }

    /// Whether the `flipByte` or `flipSentByte` fault has flipped its byte.
    public var hasFlipped: Bool { lock.withLock { flipped } }

    /// One connection: both directions, on one thread.
    private struct Pump {
        let proxy: FaultProxy
        let client: Int32
        let upstream: Int32

        /// Bytes read from one side, waiting to be written to the other.
        struct Direction {
            let from: Int32
            let to: Int32
            var queue: [(due: ContinuousClock.Instant, bytes: [UInt8])] = []
            var ended = false      // `from` sent its end
            var endSent = false    // and it was passed on
            var lastDue = ContinuousClock.now
            var nextSend = ContinuousClock.now
            var read = 0           // bytes read from `from` so far
            var queued: Int { queue.reduce(0) { $0 + $1.bytes.count } }
        }

        func run() {
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
            _ = fcntl(upstream, F_SETFL, fcntl(upstream, F_GETFL) | O_NONBLOCK)
            var up = Direction(from: client, to: upstream), down = Direction(from: upstream, to: client)
            var (_, seen) = proxy.state()
            var orphaned = false  // half-open: the upstream is gone, the client does not know
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let (fault, generation) = proxy.state()
                if proxy.isClosed {
                    if orphaned { Foundation.close(client) } else { finish(reset: false) }
                    return
                }
                if generation != seen {
                    seen = generation
                    switch fault {
                    case .drop where orphaned:
                        Foundation.close(client)
                        return
                    case .reset where orphaned:
                        FaultProxy.closeWithReset(client)
                        return
                    case .drop: return finish(reset: false)
                    case .reset: return finish(reset: true)
                    case .halfOpen where !orphaned:
                        orphaned = true
                        // The upstream sees its peer vanish; the client sees nothing.
                        FaultProxy.closeWithReset(upstream)
                    default: break
                    }
                }
                if orphaned {
                    // Read and discard what the client sends; never answer, never end.
                    var p = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
                    if poll(&p, 1, 50) > 0 {
                        let n = recv(client, &buffer, buffer.count, 0)
                        if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                            Foundation.close(client)
                            return
                        }
                    }
                    continue
                }
                if fault == .blackhole {
                    // Neither read nor write: the kernel's buffers hold what is sent.
                    usleep(20_000)
                    continue
                }
                let holding = fault == .holdReplies
                let delay: Duration = if case let .delay(d) = fault { d } else { .zero }
                let rate: Int? = if case let .bandwidth(r) = fault { max(1, r) } else { nil }
                let now = ContinuousClock.now
                var fds = [pollfd(fd: client, events: 0, revents: 0), pollfd(fd: upstream, events: 0, revents: 0)]
                var timeout = Duration.milliseconds(50)
                for (i, d) in [up, down].enumerated() {
                    if !d.ended && d.queued < 1 << 20 { fds[i].events |= Int16(POLLIN) }
                    if let head = d.queue.first, !(holding && i == 1) {
                        let at = max(head.due, d.nextSend)
                        if at <= now { fds[1 - i].events |= Int16(POLLOUT) } else { timeout = min(timeout, at - now) }
                    }
                }
                let ms = Int32(max(1, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
                guard poll(&fds, 2, ms) >= 0 else { continue }
                // Reads.
                for (i, pfd) in fds.enumerated() where pfd.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    let n = recv(pfd.fd, &buffer, buffer.count, 0)
                    if n > 0 {
                        let at = ContinuousClock.now
                        if i == 0 {
                            if case let .flipSentByte(offset) = fault, (up.read..<up.read + n).contains(offset), proxy.takeFlip() {
                                buffer[offset - up.read] ^= 0xFF
                            }
                            up.read += n
                            up.lastDue = max(up.lastDue, at + delay)
                            up.queue.append((up.lastDue, Array(buffer[0..<n])))
                        } else {
                            if case let .flipByte(offset) = fault, (down.read..<down.read + n).contains(offset), proxy.takeFlip() {
                                buffer[offset - down.read] ^= 0xFF
                            }
                            down.read += n
                            down.lastDue = max(down.lastDue, at + delay)
                            down.queue.append((down.lastDue, Array(buffer[0..<n])))
                        }
                    } else if n == 0 {
                        if i == 0 { up.ended = true } else { down.ended = true }
                    } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                        // The peer reset: pass the reset on.
                        return finish(reset: true)
                    }
                }
                // Writes. Held as the fault stands now, not as it stood before the poll: what
                // the upstream sent after `holdReplies` was set waits, whenever it came.
                let holdNow = holding || proxy.state().0 == .holdReplies
                for i in 0..<2 where !(holdNow && i == 1) {
                    var d = i == 0 ? up : down
                    if !send(&d, rate: rate) { return finish(reset: true) }
                    if d.ended && d.queue.isEmpty && !d.endSent {
                        shutdown(d.to, Int32(SHUT_WR))
                        d.endSent = true
                    }
                    if i == 0 { up = d } else { down = d }
                }
                if up.endSent && down.endSent { return finish(reset: false) }
            }
        }

        /// Writes what is due of `d`'s queue; false when the receiving side is broken.
        private func send(_ d: inout Direction, rate: Int?) -> Bool {
            while let head = d.queue.first {
                let now = ContinuousClock.now
                guard head.due <= now, d.nextSend <= now else { return true }
                var chunk = head.bytes
                if let rate { chunk = Array(chunk.prefix(max(1, rate / 20))) }
                let n = chunk.withUnsafeBytes { Foundation.send(d.to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
                }
                proxy.delivered(n)
                if n == head.bytes.count {
                    d.queue.removeFirst()
                } else {
                    d.queue[0].bytes.removeFirst(n)
                }
                if let rate { d.nextSend = now + .nanoseconds(Int64(n) * 1_000_000_000 / Int64(rate)) }
            }
            return true
        }

        private func finish(reset: Bool) {
            if reset {
                FaultProxy.closeWithReset(client)
                FaultProxy.closeWithReset(upstream)
            } else {
                Foundation.close(client)
                Foundation.close(upstream)
            }
        }
    }
}

extension FaultProxy.Fault {
    /// Every fault once, as the wire-fault tests run them: slow ones first, then those
    /// that stop every byte.
    public static let wireFaults: [FaultProxy.Fault] = [
        .delay(.milliseconds(200)), .bandwidth(bytesPerSecond: 2048), .halfOpen, .drop, .reset, .blackhole,
    ]
}
