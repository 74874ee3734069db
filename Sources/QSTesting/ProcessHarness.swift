import Foundation
import QSNet

/// Test helpers shared by every suite: start the project's real executables on loopback
/// port 0 (the real ports come from their ready files), wait for them with deadlines, stop
/// them with a signal.
public enum Harness {
    /// The names of this process's threads now (`/proc/self/task/*/comm`), as `ps -L` shows them.
    public static func threadNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
            .compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// Waits (10 s) until no thread of this process bears `name`. A listener's threads end
    /// just after its `stop` returns (each leaves its loop, then the system takes a moment to
    /// end it), so a test that counts a listener's threads by name waits for those of the
    /// test before it first.
    public static func waitUntilNoThread(named name: String) async throws {
        try await waitFor("the threads named \(name) of an earlier listener to end") { try !threadNames().contains(name) }
    }

    /// Directory holding the built executables: `QS_BIN_DIR`, else the directory of the
    /// running test bundle (SwiftPM puts both in the same build folder).
    public static var binDir: URL {
        if let d = ProcessInfo.processInfo.environment["QS_BIN_DIR"], !d.isEmpty {
            return URL(fileURLWithPath: d)
        }
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("qsnode").path) { return url }
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug")
    }

    /// The package root (for Fixtures/).
    public static var packageRoot: URL {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }

    /// The sanitizer the suites and the daemons they start were built with:
    /// `QS_TEST_SANITIZER` (`thread` under scripts/tsan.sh), nil in ordinary runs. A bound on
    /// CPU or time that instrumented code cannot meet is widened under it, and its failure
    /// message says so; every other assertion stays as it is.
    public static var sanitizer: String? {
        ProcessInfo.processInfo.environment["QS_TEST_SANITIZER"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A fresh temporary directory.
    public static func tempDir(_ name: String = "qs") throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A test's temporary directory at its end: removed after a test that passed; after one
    /// that failed kept, and the last `lines` lines of each log in it (the daemons' and
    /// etcd's, `*.log`) printed, so a failure seen only in CI's output (a rare hang cut at
    /// its deadline) carries what the processes said.
    public static func cleanUp(_ dir: URL, failed: Bool, lines: Int = 60) {
        guard failed else {
            try? FileManager.default.removeItem(at: dir)
            return
        }
        let logs = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
        print("the failed test's directory is kept: \(dir.path) (\(logs.count) logs; the last \(lines) lines of each follow)")
        for name in logs {
            guard let data = FileManager.default.contents(atPath: dir.appendingPathComponent(name).path) else { continue }
            let tail = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
            print("--- \(name)\n" + tail.joined(separator: "\n"))
        }
    }

    /// A socket connected to 127.0.0.1:`port`, nil when nothing accepts there. The caller
    /// closes it.
    /// A connected Unix stream socket to `path`, nil when nothing listens there.
    public static func connectUnix(path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            return nil
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            close(fd)
            return nil
        }
        return fd
    }

    public static func connectLoopback(port: Int) -> Int32? {
        connectTCP(host: "127.0.0.1", port: port)
    }

    /// A client that writes its whole request before it reads a byte (Python's
    /// `http.client`, most blocking clients): `head`, then `filler` bytes of `0x6B`, sent in
    /// blocking writes; then it reads until the server's end (at most 20 s). `sendError`:
    /// the errno a write failed with (a reset or a broken pipe: the server closed with bytes
    /// unread), nil when every byte went.
    public static func sendWholeThenRead(port: Int, head: [UInt8], filler: Int) -> (sendError: Int32?, reply: [UInt8]) {
        guard let fd = connectLoopback(port: port) else { return (ECONNREFUSED, []) }
        defer { close(fd) }
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sendError: Int32?
        func sendAll(_ bytes: [UInt8]) -> Bool {
            var at = 0
            while at < bytes.count {
                let n = bytes[at...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    sendError = errno
                    return false
                }
                at += n
            }
            return true
        }
        if sendAll(head) {
            let chunk = [UInt8](repeating: 0x6B, count: 64 << 10)
            var left = filler
            while left > 0, sendAll(Array(chunk.prefix(left))) { left -= min(left, chunk.count) }
        }
        return (sendError, readToEnd(fd))
    }

    /// What `fd` gives until its end (or an error, or its receive timeout).
    public static func readToEnd(_ fd: Int32) -> [UInt8] {
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    /// A socket connected to `host` (an IPv4 address):`port`, nil when nothing accepts there.
    /// The caller closes it.
    public static func connectTCP(host: String, port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr(host)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            close(fd)
            return nil
        }
        return fd
    }

    /// A TCP socket listening on 127.0.0.1 at a port the kernel picks, for a test's own
    /// peer (a fake upstream, a fake node): the socket and the port. The caller closes it.
    public static func listenLoopback(backlog: Int32 = 8) throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = fd >= 0 && withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        } && listen(fd, backlog) == 0
        guard ok else {
            let error = errno
            if fd >= 0 { close(fd) }
            throw HarnessError("cannot listen on a loopback port: errno \(error)")
        }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// Whether the server closed `fd` (a read would return end of stream or an error),
    /// without waiting or taking a byte.
    public static func isClosedByServer(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    /// True when something accepts TCP connections on 127.0.0.1:`port`.
    public static func isListening(port: Int) -> Bool {
        guard let fd = connectLoopback(port: port) else { return false }
        close(fd)
        return true
    }

    /// Polls `condition` until it holds or `timeout` passes; returns whether it held.
    @discardableResult
    public static func waitUntil(timeout: Duration = .seconds(10), pollEvery: Duration = .milliseconds(20),
                                 _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return true }
            Thread.sleep(forTimeInterval: pollEvery.seconds)
        }
        return try condition()
    }

    /// The async form of `waitUntil`, for conditions that ask a node.
    @discardableResult
    public static func eventually(timeout: Duration = .seconds(10), pollEvery: Duration = .milliseconds(20),
                                  _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: pollEvery)
        }
        return try await condition()
    }

    /// The environment of a child process: this process's without its `QS_` variables (a
    /// test says what it means), plus `env`. A suite run with `QS_STORE_ENGINE=rocksdb`
    /// (scripts/swift-test.sh) gives the nodes it starts `QS_ENGINE=rocksdb` (only the
    /// nodes: another executable would name it as a variable it does not read).
    static func childEnvironment(_ env: [String: String], for name: String) -> [String: String] {
        let mine = ProcessInfo.processInfo.environment
        var environment = mine.filter { !$0.key.hasPrefix("QS_") }
        if let engine = mine["QS_STORE_ENGINE"], !engine.isEmpty, (name as NSString).lastPathComponent == "qsnode" {
            environment["QS_ENGINE"] = engine
        }
        // A crash's backtrace names every thread's frames (a crash at shutdown is about the
        // others), without the registers and image list that would push them out of the
        // log's end a failing test prints.
        if environment["SWIFT_BACKTRACE"] == nil {
            environment["SWIFT_BACKTRACE"] = "enable=yes,interactive=no,threads=all,registers=none,images=none"
        }
        environment.merge(env) { _, new in new }
        return environment
    }

    /// Runs an executable to completion; returns exit status, stdout and stderr. With
    /// `killAfter`, a child still running then is SIGKILLed (its status is then 9 and
    /// stderr says so): a test of something that must not hang fails instead of hanging.
    public static func run(_ name: String, _ args: [String], env: [String: String] = [:],
                           stdin: Data? = nil, killAfter: Duration? = nil) throws -> (status: Int32, stdout: Data, stderr: Data) {
        let p = Process()
        p.executableURL = name.hasPrefix("/") ? URL(fileURLWithPath: name) : binDir.appendingPathComponent(name)
        p.arguments = args
        p.environment = Harness.childEnvironment(env, for: name)
        let out = Pipe(), err = Pipe(), input = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input
        try p.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try? input.fileHandleForWriting.close()
        let killed = DataBox()
        if let killAfter {
            let pid = p.processIdentifier
            DispatchQueue.global().asyncAfter(deadline: .now() + killAfter.seconds) {
                guard p.isRunning else { return }
                killed.data = Data("\n[killed by the test harness: still running after \(killAfter)]\n".utf8)
                kill(pid, SIGKILL)
            }
        }
        // Read stderr on another thread: a child that fills one pipe while we wait on the
        // other would otherwise block forever.
        let errBox = DataBox()
        let reader = Thread { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); errBox.done.signal() }
        reader.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        errBox.done.wait()
        p.waitUntilExit()
        return (p.terminationStatus, o, errBox.data + killed.data)
    }
}

final class DataBox: @unchecked Sendable {
    var data = Data()
    let done = DispatchSemaphore(value: 0)
}

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// A daemon of the project running as a real process, its stderr captured to a file.
public final class DaemonProcess: @unchecked Sendable {
    public let process: Process
    public let logURL: URL
    public let name: String

    /// The `--ready-file` the daemon writes once every listener is up, when asked for.
    public let readyFile: URL?

    /// Starts `name` with `args`. With `ready: true` the daemon is given a `--ready-file`
    /// (fakekt: `-ready-file`) and `init` waits until it lists every listener, so daemons
    /// can listen on port 0 and `port(_:)` tells the real ports; otherwise `init` does
    /// not wait (a process without listeners: a bridge, a qsctl command).
    /// `binDir` is where the executable is (default `Harness.binDir`). `launcher` runs it
    /// (`["/usr/sbin/ip", "netns", "exec", NS]`: `NetworkNamespace.launcher`); the launcher
    /// must exec it, so `pid` and signals are the daemon's.
    public init(_ name: String, _ args: [String], env: [String: String] = [:], logDir: URL, ready: Bool = false,
                timeout: Duration = .seconds(15), binDir: URL = Harness.binDir, launcher: [String] = []) throws {
        self.name = name
        readyFile = ready ? logDir.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(6)).ready.json") : nil
        var args = args
        if let readyFile { args += [name == "fakekt" ? "-ready-file" : "--ready-file", readyFile.path] }
        process = Process()
        if let first = launcher.first {
            process.executableURL = URL(fileURLWithPath: first)
            process.arguments = launcher.dropFirst() + [binDir.appendingPathComponent(name).path] + args
        } else {
            process.executableURL = binDir.appendingPathComponent(name)
            process.arguments = args
        }
        process.environment = Harness.childEnvironment(env, for: name)
        logURL = logDir.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(6)).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let handle = try FileHandle(forWritingTo: logURL)
        process.standardError = handle
        process.standardOutput = handle
        try process.run()
        if let readyFile {
            let path = readyFile.path, process = self.process
            let up = Harness.waitUntil(timeout: timeout) { !process.isRunning || FileManager.default.fileExists(atPath: path) }
            guard up, process.isRunning, let entries = try? ReadyFile.read(path) else {
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
                throw HarnessError("\(name) did not write its ready file within \(timeout); log:\n\(log)")
            }
            listeners = entries
        }
    }

    /// What the ready file listed: each listener's name and bound address.
    public private(set) var listeners: [ReadyFile.Entry] = []

    /// The first TCP port of listener `name` (`write`, `memcached`, `kt-http`, `admin`,
    /// `kt`) as the ready file gave it.
    public func port(_ name: String) throws -> Int {
        for entry in listeners where entry.name == name {
            if let port = (try? Endpoint(parsing: entry.address))?.port { return port }
        }
        throw HarnessError("\(self.name) reported no TCP listener '\(name)' (it reported \(listeners.map(\.name))); log:\n\(log)")
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// The captured log so far.
    public var log: String {
        // Decoded leniently: read while the process writes, the file can end inside a
        // multi-byte character, and a strict decode would fail whole (an empty log, so a
        // check for a line already written would fail once in a while).
        (try? Data(contentsOf: logURL)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Sends `signal` and waits for the exit; returns the exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(15)) throws -> Int32 {
        if isRunning { kill(pid, signal) }
        guard Harness.waitUntil(timeout: timeout, { !isRunning }) else {
            kill(pid, SIGKILL)
            throw HarnessError("\(name) did not exit within \(timeout) after signal \(signal); log:\n\(log)")
        }
        process.waitUntilExit()
        if process.terminationReason == .uncaughtSignal && process.terminationStatus != signal {
            // A crash (not the signal sent): whatever the test asserts, its log is kept here.
            // From the backtrace's start when there is one.
            let text = log, crashed = text.range(of: "Program crashed")?.lowerBound
            let shown = crashed.map { at -> String in
                let from = text.index(at, offsetBy: -2000, limitedBy: text.startIndex) ?? text.startIndex
                return String(text[from...].prefix(40_000))
            } ?? String(text.suffix(8000))
            FileHandle.standardError.write(Data("\(name) (pid \(pid)) died of signal \(process.terminationStatus), not the \(signal) sent; its log:\n\(shown)\n".utf8))
        }
        return process.terminationStatus
    }

    /// A daemon a test did not stop is killed, and its exit awaited: nothing of it
    /// outlives the test (its files, its ports).
    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A loopback TCP port where every connection is refused for as long as this value is
/// open: a socket bound to it that never listens. The port stays taken (no other process
/// can bind it meanwhile) yet nothing accepts, so a test of an unreachable address cannot
/// race with another listener. Close it when the test is done (`defer { port.close() }`,
/// which also keeps it open until then).
public final class RefusingPort {
    public let port: Int
    private var fd: Int32

    /// `port` 0: one the kernel picks (from its ephemeral range); another: that one, or
    /// nil if it is taken.
    public init?(port wanted: Int) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket() failed: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(wanted).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else {
            let error = errno
            Foundation.close(fd)
            if wanted != 0 && error == EADDRINUSE { return nil }
            throw HarnessError("binding a loopback socket to port \(wanted) failed: errno \(error)")
        }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    public convenience init() throws {
        guard let taken = try Self(port: 0) else { throw HarnessError("binding a loopback socket to port 0 failed") }
        self.init(holding: taken)
    }

    private init(holding other: RefusingPort) {
        fd = other.fd
        port = other.port
        other.fd = -1
    }

    /// `count` distinct free ports in `range`, each held until the values are closed:
    /// for daemons whose ports must be named before they start and kept across their
    /// restarts (etcd's). A range below the kernel's ephemeral range (`ephemeralLow`) is
    /// one no listener on port 0 and no outgoing connection takes meanwhile.
    public static func held(_ count: Int, in range: Range<Int>) throws -> [RefusingPort] {
        var out = [RefusingPort]()
        for port in range.shuffled() {
            if let p = try RefusingPort(port: port) { out.append(p) }
            if out.count == count { return out }
        }
        throw HarnessError("fewer than \(count) free loopback ports in \(range.lowerBound)..<\(range.upperBound)")
    }

    /// The lowest port of the kernel's ephemeral range (`ip_local_port_range`), 32768 if unreadable.
    public static var ephemeralLow: Int {
        (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
            .flatMap { $0.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } } ?? 32768
    }

    /// `127.0.0.1:PORT`.
    public var address: String { "127.0.0.1:\(port)" }

    /// Releases the port.
    public func close() {
        if fd >= 0 { Foundation.close(fd) }
        fd = -1
    }

    deinit { close() }
}

public struct HarnessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A root node on ports the kernel picks (port 0, learned from its ready file), for tests.
public final class RootNode: @unchecked Sendable {
    public let daemon: DaemonProcess
    public let port: Int
    public let adminPort: Int
    public let data: URL
    public let extraArgs: [String]
    /// The address it listens on (`namespace`'s when it runs in one).
    public let host: String
    /// The write token its writers present: empty on loopback, where it takes writes
    /// without one; in a network namespace, the one token of its writes, replication and
    /// admin actions.
    public let token: [UInt8]

    /// Starts on port 0. A test that restarts a node behind an address a client must keep
    /// gives it a Unix socket too (`extraArgs: ["--unix", path]`), never a TCP port to reuse.
    /// In `namespace` it runs there and listens on the namespace's address.
    public init(data: URL, logDir: URL, extraArgs: [String] = [], env: [String: String] = [:], namespace: NetworkNamespace? = nil) throws {
        self.data = data
        self.extraArgs = extraArgs
        host = namespace?.address ?? "127.0.0.1"
        var tokens = [String]()
        var token = [UInt8]()
        if namespace != nil {
            // Listening on another address than loopback, qsnode wants tokens on its admin
            // actions, its replication streams and its writes: one for all, `token`.
            let file = logDir.appendingPathComponent("token-\(UUID().uuidString.prefix(8))")
            token = Array(UUID().uuidString.utf8)
            try Data(token).write(to: file)
            tokens = ["--admin-token-file", file.path, "--replication-token-file", file.path, "--write-token-file", file.path]
        }
        self.token = token
        daemon = try DaemonProcess("qsnode", ["--role", "root", "--data", data.path, "--listen", "\(host):0",
                                              "--admin", "\(host):0"] + tokens + extraArgs, env: env, logDir: logDir, ready: true,
                                   launcher: namespace?.launcher ?? [])
        self.port = try daemon.port("write")
        adminPort = try daemon.port("admin")
    }

    public var address: String { "\(host):\(port)" }

    /// Fetches `/metrics` and returns the value of `name` (first sample), nil if absent.
    public func metric(_ name: String) -> Double? {
        httpGet(host: host, port: adminPort, path: "/metrics").flatMap { metricValue(in: $0.body, name) }
    }

    /// `GET /readyz` on its admin port: the status and the detail; nil when it does not answer.
    public func readyz() -> (status: Int, body: String)? {
        httpGet(host: host, port: adminPort, path: "/readyz")
    }
}

/// A replica node on ports the kernel picks, following `upstreams` (addresses HOST:PORT).
public final class ReplicaNode: @unchecked Sendable {
    public let daemon: DaemonProcess
    public let port: Int
    public let adminPort: Int
    public let data: URL

    public init(data: URL, upstreams: [String], logDir: URL, extraArgs: [String] = []) throws {
        self.data = data
        daemon = try DaemonProcess("qsnode", ["--role", "replica", "--data", data.path, "--listen", "127.0.0.1:0",
                                              "--upstream", upstreams.joined(separator: ","), "--admin", "127.0.0.1:0",
                                              "--log-format", "text"] + extraArgs, logDir: logDir, ready: true)
        self.port = try daemon.port("write")
        adminPort = try daemon.port("admin")
    }

    public var address: String { "127.0.0.1:\(port)" }

    public func metric(_ name: String) -> Double? {
        metricValue(port: adminPort, name)
    }
}

/// The first sample of metric `name` on an admin port, nil if absent.
public func metricValue(port: Int, _ name: String) -> Double? {
    httpGet(port: port, path: "/metrics").flatMap { metricValue(in: $0.body, name) }
}

/// The first sample of metric `name` in a `/metrics` text, nil if absent.
public func metricValue(in text: String, _ name: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") || line.hasPrefix(name + "{") {
        if let v = line.split(separator: " ").last.flatMap({ Double($0) }) { return v }
    }
    return nil
}

/// A minimal HTTP/1.0 GET over a socket, for admin endpoints in tests.
public func httpGet(port: Int, path: String) -> (status: Int, body: String)? {
    httpGet(host: "127.0.0.1", port: port, path: path)
}

/// The same GET to `host` (an IPv4 address).
public func httpGet(host: String, port: Int, path: String) -> (status: Int, body: String)? {
    guard let fd = Harness.connectTCP(host: host, port: port) else { return nil }
    defer { close(fd) }
    let req = Array("GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
    _ = req.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    return readHTTPResponse(fd)
}

/// A flag one thread sets (and clears) and others read (to stop a workload thread, to
/// switch a proxy's fault).
public final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    public init() {}
    public var isSet: Bool { lock.withLock { value } }
    public func set() { lock.withLock { value = true } }
    public func clear() { lock.withLock { value = false } }
}
