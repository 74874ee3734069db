import Logging
import ServiceLifecycle
import UnixSignals

/// SIGHUP, for every daemon: runs the daemon's reload (a replica re-reads its
/// `--upstream-file`), or logs that there is nothing to reload; it never stops the process
/// (SIGHUP's default action would). The signal is trapped before the group starts, so a
/// SIGHUP sent as soon as the ready file exists is not lost.
public struct HangupService: Service {
    let signals: UnixSignalsSequence
    let reload: (@Sendable () -> Void)?
    let logger: Logger

    /// Traps SIGHUP now; `reload` nil means the daemon has nothing to re-read.
    public init(reload: (@Sendable () -> Void)?, logger: Logger) async {
        signals = await UnixSignalsSequence(trapping: .sighup)
        self.reload = reload
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                if let reload {
                    reload()
                } else {
                    logger.notice("SIGHUP: nothing to reload")
                }
            }
        }
    }
}
