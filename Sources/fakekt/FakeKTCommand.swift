import ArgumentParser
import FakeKT
import Foundation
import Logging
import QSDaemon
import QSNet
import ServiceLifecycle

/// `fakekt`: takes ktserver's command line (single-dash options) and serves a fake KT.
/// Every option falls back to an environment variable `QS_FAKEKT_<NAME>`.
@main
struct FakeKTCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fakekt",
        abstract: "A fake Kyoto Tycoon server (HTTP RPC, REST, binary protocol, replication, update log).",
        discussion: """
        Options mirror ktserver's. Each has an environment fallback QS_FAKEKT_<NAME>, e.g. QS_FAKEKT_PORT.
        Faults can also be set at run time: POST /_fakekt/faults with close_after=N, stop_heartbeats=1,
        delay_ms=N, corrupt_frame=N, cut_frame=N, refuse_ms=N, refuse_count=N, reset=1.
        """ + "\n\n" + DaemonExitCodes.help,
        version: QSVersion.string
    )

    @Option(name: .customLong("host", withSingleDash: true), help: "Address to bind (QS_FAKEKT_HOST; default 127.0.0.1 here, all addresses for an empty value).")
    var host: String?
    @Option(name: .customLong("port", withSingleDash: true), help: "Port (QS_FAKEKT_PORT; default 1978; 0 picks one).")
    var port: Int?
    @Option(name: .customLong("tout", withSingleDash: true), help: "Connection timeout in seconds (QS_FAKEKT_TOUT).")
    var tout: Double?
    @Option(name: .customLong("th", withSingleDash: true), help: "Worker threads (QS_FAKEKT_TH).")
    var th: Int?
    @Option(name: .customLong("log", withSingleDash: true), help: "Log file; stderr if absent (QS_FAKEKT_LOG).")
    var log: String?
    @Flag(name: .customLong("li", withSingleDash: true), help: "Log level info (QS_FAKEKT_LI=1).")
    var li = false
    @Flag(name: .customLong("ls", withSingleDash: true), help: "Log level system (QS_FAKEKT_LS=1).")
    var ls = false
    @Flag(name: .customLong("le", withSingleDash: true), help: "Log errors only (QS_FAKEKT_LE=1).")
    var le = false
    @Flag(name: .customLong("lz", withSingleDash: true), help: "Log nothing (QS_FAKEKT_LZ=1).")
    var lz = false
    @Option(name: .customLong("ulog", withSingleDash: true), help: "Update-log directory (QS_FAKEKT_ULOG).")
    var ulog: String?
    @Option(name: .customLong("ulim", withSingleDash: true), help: "Update-log file size limit in bytes (QS_FAKEKT_ULIM).")
    var ulim: String?
    @Option(name: .customLong("sid", withSingleDash: true), help: "Server id (QS_FAKEKT_SID).")
    var sid: UInt16?
    @Option(name: .customLong("pid", withSingleDash: true), help: "Write the process id to this file (QS_FAKEKT_PID).")
    var pid: String?
    @Option(name: .customLong("scr", withSingleDash: true), help: "Script file; it must exist. As a ktserver built without Lua, play_script then answers echo (its arguments back) and 501 for other names; without it scripting is disabled (QS_FAKEKT_SCR).")
    var scr: String?
    @Option(name: .customLong("cmd", withSingleDash: true), help: "ktserver's command directory; it must be a directory. fakekt runs no commands (QS_FAKEKT_CMD).")
    var cmd: String?
    @Option(name: .customLong("bgs", withSingleDash: true), help: "ktserver's snapshot directory; made if missing. fakekt writes no snapshots (QS_FAKEKT_BGS).")
    var bgs: String?
    @Option(name: .customLong("bgsi", withSingleDash: true), help: "Snapshot interval in seconds; taken and ignored, as -bgs (QS_FAKEKT_BGSI).")
    var bgsi: Double?
    @Option(name: .customLong("bgsc", withSingleDash: true), help: "Snapshot compression (zlib, lzo, lzma; other names mean none, as in ktserver); taken and ignored, as -bgs (QS_FAKEKT_BGSC).")
    var bgsc: String?
    @Option(name: .customLong("asi", withSingleDash: true), help: "Auto-synchronization interval in seconds; taken and ignored: the databases are in memory (QS_FAKEKT_ASI).")
    var asi: Double?
    @Flag(name: .customLong("ash", withSingleDash: true), help: "Hard auto-synchronization; taken and ignored (QS_FAKEKT_ASH=1).")
    var ash = false
    @Option(name: .customLong("uasi", withSingleDash: true), help: "Update-log synchronization interval in seconds; taken and ignored: fakekt writes the log as it goes (QS_FAKEKT_UASI).")
    var uasi: Double?
    @Flag(name: .customLong("oat", withSingleDash: true), help: "Open option auto-transaction; taken and ignored (QS_FAKEKT_OAT=1).")
    var oat = false
    @Flag(name: .customLong("oas", withSingleDash: true), help: "Open option auto-synchronization; taken and ignored (QS_FAKEKT_OAS=1).")
    var oas = false
    @Flag(name: .customLong("onl", withSingleDash: true), help: "Open option no locking; taken and ignored (QS_FAKEKT_ONL=1).")
    var onl = false
    @Flag(name: .customLong("otl", withSingleDash: true), help: "Open option try locking; taken and ignored (QS_FAKEKT_OTL=1).")
    var otl = false
    @Flag(name: .customLong("onr", withSingleDash: true), help: "Open option no repair; taken and ignored (QS_FAKEKT_ONR=1).")
    var onr = false
    @Option(name: [.customLong("ready-file", withSingleDash: true), .customLong("ready-file")],
            help: "Once listening, write {\"listeners\":[{\"name\":\"kt\",\"address\":HOST:PORT}]} to this file, atomically (QS_FAKEKT_READY_FILE); with -port 0 it tells the port picked.")
    var readyFile: String?
    @Option(name: .customLong("fault-close-after", withSingleDash: true), help: "Close replication connections after N frames (QS_FAKEKT_FAULT_CLOSE_AFTER).")
    var faultCloseAfter: Int?
    @Flag(name: .customLong("fault-no-heartbeat", withSingleDash: true), help: "Send no heartbeats (QS_FAKEKT_FAULT_NO_HEARTBEAT=1).")
    var faultNoHeartbeat = false
    @Option(name: .customLong("fault-delay-ms", withSingleDash: true), help: "Delay every replication frame (QS_FAKEKT_FAULT_DELAY_MS).")
    var faultDelayMs: Int?
    @Option(name: .customLong("fault-corrupt-frame", withSingleDash: true), help: "Corrupt the Nth replication frame (QS_FAKEKT_FAULT_CORRUPT_FRAME).")
    var faultCorruptFrame: Int?
    @Option(name: .customLong("fault-cut-frame", withSingleDash: true), help: "Cut the Nth replication frame in half and close (QS_FAKEKT_FAULT_CUT_FRAME).")
    var faultCutFrame: Int?
    @Option(name: .customLong("fault-refuse-ms", withSingleDash: true), help: "Refuse connections for this long after start (QS_FAKEKT_FAULT_REFUSE_MS).")
    var faultRefuseMs: Int?
    @Option(name: .customLong("fault-refuse-count", withSingleDash: true), help: "Refuse the first N connections, then accept (QS_FAKEKT_FAULT_REFUSE_COUNT).")
    var faultRefuseCount: Int?
    @Argument(help: "Databases as ktserver names them: -, +, :, *, %, or paths such as main.kch, aux.kct#bnum=1000 or data#type=kct; none means one stash database ':' (QS_FAKEKT_DBS, space separated).")
    var databases: [String] = []

    /// ktserver options that change what clients see in ways fakekt does not reproduce
    /// (a daemon, a read-only database, a replication slave, plug-ins).
    static let unsupported = ["-dmn", "-ord", "-mhost", "-mport", "-rts", "-riv", "-plsv", "-plex", "-pldb"]

    static func main() async {
        let args = Array(CommandLine.arguments.dropFirst())
        if let bad = args.first(where: { unsupported.contains($0) }) {
            FileHandle.standardError.write(Data("fakekt: the ktserver option \(bad) is not supported by fakekt\n".utf8))
            Foundation.exit(64)
        }
        // Why a number is refused, for ArgumentParser's "is invalid" (it says no why).
        for flag in ["-port", "-th", "-fault-close-after", "-fault-delay-ms", "-fault-corrupt-frame", "-fault-cut-frame",
                     "-fault-refuse-count", "-fault-refuse-ms"] { QSEnv.explain(flag, Int.self) }
        QSEnv.explain("-sid", UInt16.self)
        for flag in ["-tout", "-bgsi", "-asi", "-uasi"] { QSEnv.explain(flag, Double.self) }
        do {
            try await execute(parseAsRoot(args))
        } catch let error where !(error is CleanExit) {
            if let explained = QSEnv.explaining(fullMessage(for: error), arguments: CommandLine.arguments) {
                exitReporting(ValidationError(explained))
            }
            exitReporting(error)
        } catch {
            exitReporting(error)
        }
    }

    /// `QS_FAKEKT_<NAME>` as typed, nil when unset or empty; a value that does not parse is
    /// refused (`QSEnv.checkRefusals`) as the same value given as `-name` would be.
    static func env<T: ExpressibleByArgument>(_ name: String, _ type: T.Type = String.self) -> T? {
        QSEnv.optional("QS_FAKEKT_" + name, as: type, flag: "-" + name.lowercased().replacingOccurrences(of: "_", with: "-"))
    }

    static func envFlag(_ name: String) -> Bool {
        QSEnv.flag("QS_FAKEKT_" + name, flag: "-" + name.lowercased().replacingOccurrences(of: "_", with: "-"))
    }

    func validate() throws {
        _ = try makeConfiguration()
        _ = logLevel()
        try QSEnv.checkRefusals()
    }

    func makeConfiguration() throws -> FakeKTConfiguration {
        var c = FakeKTConfiguration()
        // An empty QS_FAKEKT_HOST means every address, as ktserver's empty -host.
        c.host = host ?? ProcessInfo.processInfo.environment["QS_FAKEKT_HOST"] ?? "127.0.0.1"
        c.port = port ?? Self.env("PORT", Int.self) ?? 1978
        guard (0...65535).contains(c.port) else {
            throw ValidationError("-port (or QS_FAKEKT_PORT) \(c.port) is not a port: give 0 to 65535 (0 picks a free one)")
        }
        if c.host.contains(":"), !c.host.contains("::"), c.host.split(separator: ":").count == 2, let p = c.host.split(separator: ":").last, Int(p) != nil {
            throw ValidationError("-host (or QS_FAKEKT_HOST) '\(c.host)' holds a port: give the host alone and the port with -port, as in -host \(c.host.split(separator: ":")[0]) -port \(p)")
        }
        c.timeout = tout ?? Self.env("TOUT", Double.self) ?? 30
        guard c.timeout >= 0 else { throw ValidationError("-tout (or QS_FAKEKT_TOUT) \(c.timeout) cannot be negative: give seconds, as in 30") }
        c.threads = max(1, min(16, th ?? Self.env("TH", Int.self) ?? 2))
        c.ulogDirectory = ulog ?? Self.env("ULOG")
        if let u = ulim ?? Self.env("ULIM") {
            guard let v = Self.parseSize(u) else { throw ValidationError("-ulim (or QS_FAKEKT_ULIM) '\(u)' is not a size such as 256m") }
            c.ulogLimit = v
        }
        let sid = sid ?? Self.env("SID", UInt16.self)
        if c.ulogDirectory != nil && sid == nil {
            throw ValidationError("update log requires the server ID: give -sid N (or QS_FAKEKT_SID) with -ulog, as ktserver requires")
        }
        c.sid = sid ?? 0
        c.scriptFile = scr ?? Self.env("SCR")
        c.databases = databases.isEmpty ? (Self.env("DBS")?.split(separator: " ").map(String.init) ?? []) : databases
        c.faults.closeAfterFrames = faultCloseAfter ?? Self.env("FAULT_CLOSE_AFTER", Int.self)
        c.faults.stopHeartbeats = faultNoHeartbeat || Self.envFlag("FAULT_NO_HEARTBEAT")
        c.faults.frameDelayMillis = faultDelayMs ?? Self.env("FAULT_DELAY_MS", Int.self) ?? 0
        c.faults.corruptFrame = faultCorruptFrame ?? Self.env("FAULT_CORRUPT_FRAME", Int.self)
        c.faults.cutFrame = faultCutFrame ?? Self.env("FAULT_CUT_FRAME", Int.self)
        c.faults.refuseConnections = max(0, faultRefuseCount ?? Self.env("FAULT_REFUSE_COUNT", Int.self) ?? 0)
        if let ms = faultRefuseMs ?? Self.env("FAULT_REFUSE_MS", Int.self) {
            c.faults.refuseUntilMillis = UInt64(Date().timeIntervalSince1970 * 1000) + UInt64(max(0, ms))
        }
        // ktserver's persistence tuning: nothing here to tune, but a variable is checked as
        // its flag would be, so a value ktserver would take is taken and a malformed one refused.
        _ = (bgsi ?? Self.env("BGSI", Double.self), bgsc ?? Self.env("BGSC"), asi ?? Self.env("ASI", Double.self),
             uasi ?? Self.env("UASI", Double.self))
        _ = ["ASH", "OAT", "OAS", "ONL", "OTL", "ONR"].map { Self.envFlag($0) }
        return c
    }

    /// The files and directories ktserver checks before it starts, with its messages.
    static func checkFiles(script: String?, commands: String?, snapshots: String?) throws {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if let snapshots, !fm.fileExists(atPath: snapshots),
           (try? fm.createDirectory(atPath: snapshots, withIntermediateDirectories: false)) == nil {
            throw StartError("\(snapshots): could not open the directory (-bgs needs a directory fakekt can make)")
        }
        if let commands, !(fm.fileExists(atPath: commands, isDirectory: &isDirectory) && isDirectory.boolValue) {
            throw StartError("\(commands): no such directory (-cmd needs an existing directory)")
        }
        if let script, !fm.fileExists(atPath: script) {
            throw StartError("\(script): no such file (-scr needs an existing script file)")
        }
    }

    /// Sizes as ktserver takes them: a number with an optional k/m/g suffix.
    static func parseSize(_ s: String) -> UInt64? {
        let lower = s.lowercased()
        let units: [Character: UInt64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30]
        if let last = lower.last, let unit = units[last], let n = UInt64(lower.dropLast()) { return n * unit }
        return UInt64(lower)
    }

    func logLevel() -> Logger.Level {
        if lz || Self.envFlag("LZ") { return .critical }
        if le || Self.envFlag("LE") { return .error }
        if ls || Self.envFlag("LS") { return .notice }
        if li || Self.envFlag("LI") { return .info }
        return .notice
    }

    mutating func run() async throws {
        let level = logLevel()
        let logPath = log ?? Self.env("LOG")
        LoggingSystem.bootstrap { label in
            var handler: StreamLogHandler = .standardError(label: label)
            if let logPath, let stream = FileLogStream(path: logPath) {
                handler = StreamLogHandler(label: label, stream: stream)
            }
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "fakekt")
        QSVersion.announce("fakekt", logger: logger)
        let config = try makeConfiguration()
        try Self.checkFiles(script: config.scriptFile, commands: cmd ?? Self.env("CMD"), snapshots: bgs ?? Self.env("BGS"))
        let server = try FakeKTServer(configuration: config, logger: logger)
        let pidPath = pid ?? Self.env("PID")
        // The pid file is written once the port is open, as ktserver does.
        let ready = ReadyFile(path: readyFile ?? Self.env("READY_FILE") ?? "", listeners: [server.listener], logger: logger) { _ in
            if let pidPath {
                try Data("\(ProcessInfo.processInfo.processIdentifier)\n".utf8).write(to: URL(fileURLWithPath: pidPath))
            }
        }
        let hangup = await HangupService(reload: nil, logger: logger)
        var group = ServiceGroupConfiguration(services: [.init(service: server), .init(service: ready), .init(service: hangup)],
                                              gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        group.maximumGracefulShutdownDuration = .seconds(10)
        try await ServiceGroup(configuration: group).run()
        if let pidPath { try? FileManager.default.removeItem(atPath: pidPath) }
    }
}
