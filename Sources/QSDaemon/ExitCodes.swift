/// The daemons' exit codes, printed at the end of each one's `--help` and listed in
/// docs/operations.md ("Exit codes").
public enum DaemonExitCodes {
    /// A node or fakekt.
    public static let help = """
        Exit codes: 0 stopped cleanly (SIGTERM or SIGINT); 1 failed at start or while \
        running (the error line says why: an address it cannot bind, a data directory it \
        cannot open, a token file it cannot read); 64 usage error (a bad flag or QS_* \
        variable, named in the message).
        """
    /// A bridge: the same, and 75.
    public static let bridgeHelp = help + """
         75 stopped (--shutdown-timeout) before its last batch reached the root: the \
        changes after the checkpoint it names are read again at the next start.
        """
    /// qsrest: the same, and 75.
    public static let restHelp = help + """
         75 stopped (--shutdown-timeout) before the root answered some writes: they were \
        answered 503, not acknowledged, and their producers send them again.
        """
}
