import Logging
import Metrics
import NIOConcurrencyHelpers
import QSNet
import XCTest

/// The budget of rate-limited log lines: one line per peer (host) and kind per window.
final class RateLimitedLogTests: XCTestCase {
    final class Lines: Sendable {
        let lines = NIOLockedValueBox([(message: String, metadata: Logger.Metadata)]())
        var logger: Logger {
            Logger(label: "rate-limited-test") { _ in Capture(into: self) }
        }
    }

    struct Capture: LogHandler {
        let into: Lines
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            into.lines.withLockedValue { $0.append(("\(event.message)", event.metadata ?? [:])) }
        }
    }

    /// A writer that retries its hello (each from a new port) costs one line a window; a
    /// second client on the same host has its own budget; the next line after the window
    /// says how many were left out.
    func testOneLinePerHostAndKindPerWindow() async throws {
        let lines = Lines(), logger = lines.logger
        let log = RateLimitedLog(window: .milliseconds(300))
        for port in 50000..<50005 { log.log(logger, .info, "writer connected", peer: "10.0.0.1:\(port)", kind: "qsrest") }
        log.log(logger, .info, "writer connected", peer: "10.0.0.1:50010", kind: "bridge")
        log.log(logger, .info, "writer connected", peer: "10.0.0.2:50011", kind: "qsrest")
        XCTAssertEqual(lines.lines.withLockedValue { $0.map { "\($0.metadata["peer"]!)" } },
                       ["10.0.0.1:50000", "10.0.0.1:50010", "10.0.0.2:50011"])
        try await Task.sleep(for: .milliseconds(350))  // the window passing is what is tested
        log.log(logger, .info, "writer connected", peer: "10.0.0.1:50020", kind: "qsrest")
        let last = try XCTUnwrap(lines.lines.withLockedValue { $0.last })
        XCTAssertEqual("\(last.metadata["peer"]!)", "10.0.0.1:50020")
        XCTAssertEqual("\(last.metadata["suppressed"]!)", "4")
    }

    /// A token gate's refusals: every one counted, one line per peer host a window, so a
    /// peer hammering with a wrong token does not hide another peer's refusal.
    func testATokenGateLogsEachPeerHostsRefusals() {
        let lines = Lines()
        let gate = TokenGate(guarding: "read", token: Array("secret".utf8), flag: "--write-token-file", logger: lines.logger,
                             factory: NOOPMetricsHandler.instance, logEvery: .seconds(60))
        for port in 40000..<40100 { XCTAssertNotNil(gate.check(Array("guess".utf8), peer: "10.0.0.9:\(port)")) }
        XCTAssertNotNil(gate.check([], peer: "10.0.0.7:41000"))
        XCTAssertNil(gate.check(Array("secret".utf8), peer: "10.0.0.8:41001"))
        let logged = lines.lines.withLockedValue { $0.map { ("\($0.metadata["peer"]!)", "\($0.metadata["reason"]!)") } }
        XCTAssertEqual(logged.map(\.0), ["10.0.0.9:40000", "10.0.0.7:41000"])
        XCTAssertEqual(logged.map(\.1), ["wrong read token", "missing read token"])
    }
}
