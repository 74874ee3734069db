import FakeKT
import Foundation
import KTFormats
import Logging
import QSNet
import QSTesting
import XCTest

/// Starts a fake KT in-process on a loopback port the kernel picks (port 0), with a fresh ulog directory.
struct ServerHarness: Sendable {
    let server: FakeKTServer
    let running: InProcessServices
    let port: Int
    let ulogDirectory: String

    static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kt")

    static func start(databases: [String] = ["main.kch", "aux.kct"], ulim: UInt64? = nil, seedULog: String? = nil, faults: FaultPlan = FaultPlan(), timeSource: (@Sendable () -> Double)? = nil, timeout: Double = 30) async throws -> ServerHarness {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fakekt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if let seedULog {
            for name in try FileManager.default.contentsOfDirectory(atPath: seedULog) {
                try FileManager.default.copyItem(atPath: "\(seedULog)/\(name)", toPath: "\(dir)/\(name)")
                try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: "\(dir)/\(name)")
            }
        }
        var config = FakeKTConfiguration()
        config.host = "127.0.0.1"
        config.port = 0
        config.databases = databases
        config.sid = 7
        config.ulogDirectory = dir
        config.ulogLimit = ulim
        config.threads = 1
        config.faults = faults
        config.timeSource = timeSource
        config.timeout = timeout
        var logger = Logger(label: "fakekt-test")
        logger.logLevel = .error
        let server = try FakeKTServer(configuration: config, logger: logger)
        let running = try await InProcessServices([server], logger: logger)
        return ServerHarness(server: server, running: running, port: try await server.listener.port(), ulogDirectory: dir)
    }

    func stop() async throws {
        try await running.stop()
        try? FileManager.default.removeItem(atPath: ulogDirectory)
    }

    /// Sends one raw HTTP request on a new connection and reads the response.
    func http(_ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = []) throws -> (status: Int, headers: [String: String], body: [UInt8]) {
        let socket = try TestSocket(port: port)
        var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost:\(port)\r\n"
        for (k, v) in headers.sorted(by: { $0.key < $1.key }) { text += "\(k): \(v)\r\n" }
        text += "Content-Length: \(body.count)\r\n\r\n"
        try socket.send(Array(text.utf8) + body)
        return try socket.readHTTPResponse(head: method == "HEAD")
    }

    /// Calls an RPC procedure with a base64-encoded TSV body.
    func rpc(_ name: String, _ params: [(String, [UInt8])], db: Int? = nil) throws -> (status: Int, headers: [String: String], body: [UInt8]) {
        try rpc(name, raw: params.map { (Array($0.0.utf8), $0.1) }, db: db)
    }

    /// Calls an RPC procedure whose parameter names may be binary.
    func rpc(_ name: String, raw params: [([UInt8], [UInt8])], db: Int? = nil) throws -> (status: Int, headers: [String: String], body: [UInt8]) {
        var all = params
        if let db { all.append((Array("DB".utf8), Array(String(db).utf8))) }
        var body: [UInt8] = []
        for (k, v) in all { body += Base64.encode(k) + [9] + Base64.encode(v) + [10] }
        return try http("POST", "/rpc/\(name)", headers: ["Content-Type": "text/tab-separated-values; colenc=B"], body: body)
    }
}

/// Polls `condition` until it holds or the deadline passes.
func waitUntil(_ seconds: Double = 5, _ what: String, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.01)
    }
    XCTFail("timed out waiting for \(what)")
}
