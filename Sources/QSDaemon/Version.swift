import Logging
import Metrics

/// The toolkit's version: one string for every binary (`--version`, the start-up log,
/// `qs_build_info{version}`). Raised with each release.
public enum QSVersion {
    public static let string = "0.13.0"

    /// Logs the start-up line with the version and sets `qs_build_info{version="…"} 1`.
    public static func announce(_ binary: String, logger: Logger) {
        Gauge(label: "qs_build_info", dimensions: [("version", string)]).record(1)
        logger.notice("starting", metadata: ["binary": "\(binary)", "version": "\(string)"])
    }
}
