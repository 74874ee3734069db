/// Evidence that a cluster member's applier does not follow etcd although etcd answers it
/// (docs/ha.md, "A member's etcd stops"): revisions etcd committed for this member's own
/// writes — its batches and appends, its `applied/` write every 2 s — that its watch has
/// not delivered. A watch stuck on an etcd member that stopped answering (a SIGSTOPped or
/// hung process keeps its connections) is left only after three `applied/` intervals plus
/// `--etcd-timeout`; this tells `/readyz` sooner, from answers the member gets anyway.
struct ApplyLag: Sendable {
    /// Revisions known committed and not yet applied, oldest first, each with when it was
    /// known. One known within `fold` of the last is folded into it, so the list stays
    /// short while the watch is stuck.
    private(set) var pending: [(revision: Int64, knownAt: ContinuousClock.Instant)] = []
    /// When the applied revision last moved.
    private(set) var lastAdvance: ContinuousClock.Instant
    /// When this member's `applied/` write failed, until one is committed again.
    private var writeFailedAt: ContinuousClock.Instant?

    static let fold: Duration = .milliseconds(100)

    init(now: ContinuousClock.Instant = .now) {
        lastAdvance = now
    }

    /// etcd committed one of this member's writes at `revision`; `applied` is the revision
    /// the store stands at (read under the caller's lock on this value, so an apply in
    /// between cannot leave the revision pending).
    mutating func committed(_ revision: Int64, applied: Int64, now: ContinuousClock.Instant = .now) {
        note(revision, applied: applied, knownAt: now)
    }

    /// This member's `applied/` write was committed at `revision` after one had failed: the
    /// member has had no word from etcd since the failure, so the revision counts from it
    /// (`/readyz` stays 503 until the watch delivers it, with no moment of 200 between).
    mutating func appliedWriteCommitted(_ revision: Int64, applied: Int64, now: ContinuousClock.Instant = .now) {
        note(revision, applied: applied, knownAt: writeFailedAt ?? now)
        writeFailedAt = nil
    }

    mutating func appliedWriteFailed(now: ContinuousClock.Instant = .now) {
        if writeFailedAt == nil { writeFailedAt = now }
    }

    private mutating func note(_ revision: Int64, applied: Int64, knownAt: ContinuousClock.Instant) {
        guard revision > applied else { return }
        if let last = pending.last, knownAt - last.knownAt < Self.fold || pending.count >= 1000 {
            pending[pending.count - 1].revision = max(last.revision, revision)
        } else {
            pending.append((revision, knownAt))
        }
    }

    /// The store now stands at `revision` (`advanced`: it moved).
    mutating func applied(_ revision: Int64, advanced: Bool, now: ContinuousClock.Instant = .now) {
        if advanced { lastAdvance = now }
        pending.removeAll { $0.revision <= revision }
    }

    /// Why the member does not follow, nil when nothing says so:
    /// - a revision known committed for `grace` and the watch quiet for `quietLimit`: the
    ///   watch is stuck (it is left after `leftAfter`);
    /// - a revision known committed for `behindLimit`, the watch moving or not: the member
    ///   applies too slowly to answer its own writes.
    func problem(applied: Int64, grace: Duration, quietLimit: Duration, behindLimit: Duration, leftAfter: Duration,
                 now: ContinuousClock.Instant = .now) -> String? {
        guard let oldest = pending.first, let newest = pending.last else { return nil }
        let age = now - oldest.knownAt, quiet = now - lastAdvance
        if age >= grace && quiet >= quietLimit {
            return "not following etcd: its watch has delivered nothing for \(Self.seconds(quiet)) (this member stands at etcd revision \(applied)) "
                + "while etcd committed this member's own write at revision \(newest.revision); a watch quiet for \(Self.seconds(leftAfter)) is left for another etcd URL"
        }
        if age >= behindLimit {
            return "behind etcd: its write committed at revision \(oldest.revision) \(Self.seconds(age)) ago is not applied yet "
                + "(this member stands at etcd revision \(applied), its watch last delivered \(Self.seconds(quiet)) ago)"
        }
        return nil
    }

    static func seconds(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return "\(ms / 1000).\(ms % 1000 / 100) s"
    }
}
