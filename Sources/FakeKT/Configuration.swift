/// How a fake server runs; mirrors ktserver's options.
public struct FakeKTConfiguration: Sendable {
    /// Address to listen on (`-host`); empty means every address.
    public var host: String = "127.0.0.1"
    /// Port (`-port`); 0 picks a free one.
    public var port: Int = 1978
    /// Database arguments (`-`, `+`, `:`, `*`, `%`, paths such as `main.kch` with optional
    /// `#options`); none means one stash database `:`, as in ktserver.
    public var databases: [String] = []
    /// Server id written into every update message (`-sid`).
    public var sid: UInt16 = 0
    /// Update-log directory (`-ulog`); without it there is no replication, like KT.
    public var ulogDirectory: String? = nil
    /// Update-log file size limit (`-ulim`).
    public var ulogLimit: UInt64? = nil
    /// Idle timeout of connections in seconds (`-tout`).
    public var timeout: Double = 30
    /// Event-loop threads (`-th`).
    public var threads: Int = 2
    /// Most bytes of one binary-protocol request held while it arrives; a request that is
    /// not whole by then gets KT's error reply (0xBF) and the connection closes. KT reads
    /// requests item by item and has no such total; the fake bounds its memory.
    public var maxBinaryRequestBytes: Int = 32 << 20
    /// The script file (`-scr`). ktserver built without Lua still takes one: `play_script`
    /// then answers the procedure `echo` (its arguments back) and `not implemented` for
    /// every other name; without a script file scripting is disabled.
    public var scriptFile: String? = nil
    /// Faults to start with.
    public var faults = FaultPlan()
    /// The clock, in seconds since the epoch; the system clock when `nil`. Tests pin it to
    /// replay recorded sessions whose replies carry expiration times.
    public var timeSource: (@Sendable () -> Double)? = nil

    public init() {}
}

/// Faults the server injects, set by flags or by the admin call `/_fakekt/faults`.
public struct FaultPlan: Sendable, Equatable {
    /// Close each replication connection after this many frames (the acceptance byte
    /// not counted).
    public var closeAfterFrames: Int? = nil
    /// Send no heartbeats while idle.
    public var stopHeartbeats = false
    /// Delay every replication frame by this many milliseconds.
    public var frameDelayMillis: Int = 0
    /// Corrupt the magic byte of this frame (1-based) of each replication connection.
    public var corruptFrame: Int? = nil
    /// Send only the first half of this frame (1-based) and then close the connection.
    public var cutFrame: Int? = nil
    /// Refuse (reset) new connections until this time, milliseconds since the epoch.
    public var refuseUntilMillis: UInt64 = 0
    /// Refuse (reset) this many new connections, then accept again.
    public var refuseConnections: Int = 0

    public init() {}

    /// Applies `key=value` settings; unknown keys are returned as errors.
    public mutating func apply(_ settings: [(String, String)], nowMillis: UInt64) -> [String] {
        var errors: [String] = []
        for (key, value) in settings {
            let number = Int(value)
            switch key {
            case "reset": self = FaultPlan()
            case "close_after": closeAfterFrames = number.flatMap { $0 > 0 ? $0 : nil }
            case "stop_heartbeats": stopHeartbeats = value == "1" || value == "true"
            case "delay_ms": frameDelayMillis = max(0, number ?? 0)
            case "corrupt_frame": corruptFrame = number.flatMap { $0 > 0 ? $0 : nil }
            case "cut_frame": cutFrame = number.flatMap { $0 > 0 ? $0 : nil }
            case "refuse_ms": refuseUntilMillis = number.map { nowMillis + UInt64(max(0, $0)) } ?? 0
            case "refuse_count": refuseConnections = max(0, number ?? 0)
            default: errors.append("unknown fault: \(key)")
            }
        }
        return errors
    }

    /// The plan as `key=value` lines.
    public func describe(nowMillis: UInt64) -> String {
        """
        close_after=\(closeAfterFrames.map(String.init) ?? "")
        stop_heartbeats=\(stopHeartbeats ? 1 : 0)
        delay_ms=\(frameDelayMillis)
        corrupt_frame=\(corruptFrame.map(String.init) ?? "")
        cut_frame=\(cutFrame.map(String.init) ?? "")
        refuse_ms=\(refuseUntilMillis > nowMillis ? refuseUntilMillis - nowMillis : 0)
        refuse_count=\(refuseConnections)

        """
    }
}
