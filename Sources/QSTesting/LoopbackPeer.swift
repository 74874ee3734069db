import Foundation
import QSWire
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

    /// Sends a QS protocol frame with its length prefix; false when the connection broke.
    public static func send(_ fd: Int32, frame: Frame) -> Bool {
        let length = UInt32(1 + frame.payload.count)
        var bytes = [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), frame.type]
        bytes += frame.payload
        return send(fd, bytes)
    }

    /// One whole QS protocol frame from `fd`, nil at its end or an error.
    public static func readFrame(_ fd: Int32) -> Frame? {
        guard let header = readExactly(fd, 5) else { return nil }
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        guard length >= 1, let payload = readExactly(fd, length - 1) else { return nil }
        return Frame(type: header[4], payload: payload)
    }

    /// Exactly `count` bytes from `fd`, nil when it ends or fails first.
    public static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            guard n > 0 else { return nil }
            got += n
        }
        return bytes
    }
}
