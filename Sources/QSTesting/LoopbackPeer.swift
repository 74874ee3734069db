import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A test's own peer on a loopback port the kernel picks (a fake upstream, a fake node):
/// each accepted connection is served by `serve` on a thread of its own, until it returns
/// or `stop` shuts the connections down.
public final class LoopbackPeer: @unchecked Sendable {
    public let port: Int
    private let listener: Int32
    private let lock = NSLock()
    private var clients: [Int32] = []
    private var stopped = false

    public init(serve: @escaping @Sendable (Int32) -> Void) throws {
        let (fd, port) = try Harness.listenLoopback()
        listener = fd
        self.port = port
        Thread.detachNewThread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                guard c >= 0 else { return }
                lock.withLock { clients.append(c) }
                Thread.detachNewThread { serve(c) }
            }
        }
    }

    /// Whether `stop` was called: a serving loop ends when it is.
    public var isStopped: Bool { lock.withLock { stopped } }

    /// Shuts the connections down and closes the listening socket; once only.
    public func stop() {
        let first = lock.withLock { () -> Bool in
            guard !stopped else { return false }
            stopped = true
            for c in clients { shutdown(c, Int32(SHUT_RDWR)) }
            return true
        }
        guard first else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Sends all of `bytes`; false when the connection broke.
    public static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
    }
}
