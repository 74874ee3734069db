import Foundation
import QSWire
#if canImport(Glibc)
import Glibc
#endif

/// A broken or hostile upstream made from a real one: a proxy on a loopback port the kernel
/// picks that passes what a client sends to a QS node at 127.0.0.1:`upstreamPort` as it
/// comes, and hands each frame the node sends back to `rewrite`, which returns the frames
/// the client gets instead (the same frame: passed; none: dropped; others: a lie, or frames
/// injected). `rewrite` is called on one connection's thread at a time per connection, with
/// the connection's number (0 for the first accepted); it keeps its own state.
public final class FrameRewriteProxy: @unchecked Sendable {
    public typealias Rewrite = @Sendable (_ connection: Int, _ frame: Frame) -> [Frame]

    private let peer: LoopbackPeer
    private let lock = NSLock()
    private var accepted = 0
    private var upstreamSockets: [Int32] = []

    public var port: Int { peer.port }
    /// `127.0.0.1:PORT`, the address to give the client instead of the upstream's.
    public var address: String { "127.0.0.1:\(peer.port)" }
    /// Connections accepted since the start.
    public var connectionsAccepted: Int { lock.withLock { accepted } }

    public init(upstreamPort: Int, rewrite: @escaping Rewrite) throws {
        let box = Box()
        peer = try LoopbackPeer { client in
            guard let proxy = box.proxy else { close(client); return }
            proxy.serve(client, upstreamPort: upstreamPort, rewrite: rewrite)
        }
        box.proxy = self
    }

    /// Stops accepting and closes every connection.
    public func stop() {
        peer.stop()
        for fd in lock.withLock({ upstreamSockets }) { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    deinit { stop() }

    /// The proxy, set once it is built (the listener's thread may accept before).
    private final class Box: @unchecked Sendable {
        private let lock = NSLock()
        private weak var value: FrameRewriteProxy?
        var proxy: FrameRewriteProxy? {
            get { lock.withLock { value } }
            set { lock.withLock { value = newValue } }
        }
    }

    private func serve(_ client: Int32, upstreamPort: Int, rewrite: Rewrite) {
        guard let upstream = Harness.connectLoopback(port: upstreamPort) else {
            close(client)
            return
        }
        let number = lock.withLock { () -> Int in
            upstreamSockets.append(upstream)
            defer { accepted += 1 }
            return accepted
        }
        // The client's bytes pass as they come, on a thread of their own.
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                guard n > 0, LoopbackPeer.send(upstream, Array(buffer[0..<n])) else { break }
            }
            shutdown(upstream, Int32(SHUT_RDWR))
        }
        // The node's frames, one by one, through `rewrite`.
        while let frame = LoopbackPeer.readFrame(upstream) {
            for out in rewrite(number, frame) {
                guard LoopbackPeer.send(client, frame: out) else { break }
            }
        }
        shutdown(client, Int32(SHUT_RDWR))
        shutdown(upstream, Int32(SHUT_RDWR))
        close(client)
        close(upstream)
        lock.withLock { upstreamSockets.removeAll { $0 == upstream } }
    }
}
