/// Evidence that a cluster member's applier does not follow etcd although etcd answers it
/// (docs/ha.md, "A member's etcd stops"): revisions etcd committed for this member's own
/// writes — its batches and appends, its `applied/` write every 2 s — that its watch has
/// not delivered. A watch stuck on an etcd member that stopped answering (a SIGSTOPped or
/// hung process keeps its connections) is left only after three `applied/` intervals plus
/// `--etcd-timeout`; this tells `/readyz` sooner, from answers the member gets anyway.
struct ApplyLag: Sendable {
    /// What `problem` judges by.
    struct Limits: Sendable {
        /// How long a known revision may wait before a quiet watch counts as stuck.
        var grace: Duration
        /// How long the watch must have delivered nothing to count as stuck.
        var quietLimit: Duration
        /// How long a known revision may wait, the watch moving or not.
        var behindLimit: Duration
        /// When the stuck watch is left for another etcd URL (said, not judged).
        var leftAfter: Duration
    }

    let limits: Limits
    /// Revisions known committed and not yet applied, oldest first, each with when it was
    /// known. One known within `fold` of the last is folded into it, so the list stays
    /// short while the watch is stuck.
    private(set) var pending: [(revision: Int64, knownAt: ContinuousClock.Instant)] = []
    /// When the applied revision last moved.
    private(set) var lastAdvance: ContinuousClock.Instant
    /// When this member's `applied/` write failed, until one is committed again.
    private var writeFailedAt: ContinuousClock.Instant?
    /// The newest revision known when the watch delivered again after not following (stuck
    /// or behind): the member does not follow until it has applied that one too. A watch
    /// that moves again says nothing of what it has yet to deliver, and what other members
    /// committed while this one did not follow lies below it.
    private(set) var catchingUpTo: Int64?

    static let fold: Duration = .milliseconds(100)

    init(limits: Limits, now: ContinuousClock.Instant = .now) {
        self.limits = limits
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
        // Judged before this delivery counts: did the member follow until now?
        if let newest = pending.last?.revision, newest > revision, lapse(now: now) != nil {
            catchingUpTo = max(catchingUpTo ?? 0, newest)
        }
        if advanced { lastAdvance = now }
        pending.removeAll { $0.revision <= revision }
        if let target = catchingUpTo, revision >= target { catchingUpTo = nil }
    }

    private enum Lapse { case stuck, behind }

    /// - a revision known committed for `grace` and the watch quiet for `quietLimit`: the
    ///   watch is stuck (it is left after `leftAfter`);
    /// - a revision known committed for `behindLimit`, the watch moving or not: the member
    ///   applies too slowly to answer its own writes.
    private func lapse(now: ContinuousClock.Instant) -> Lapse? {
        guard let oldest = pending.first else { return nil }
        let age = now - oldest.knownAt
        if age >= limits.grace && now - lastAdvance >= limits.quietLimit { return .stuck }
        if age >= limits.behindLimit { return .behind }
        return nil
    }

    /// Why the member does not follow, nil when nothing says so: its watch is stuck or too
    /// slow (`lapse`), or it delivers again and has yet to deliver the newest revision known
    /// when it did not follow (`catchingUpTo`).
    func problem(applied: Int64, now: ContinuousClock.Instant = .now) -> String? {
        if let lapse = lapse(now: now), let oldest = pending.first, let newest = pending.last {
            let quiet = now - lastAdvance
            switch lapse {
            case .stuck:
                return "not following etcd: its watch has delivered nothing for \(Self.seconds(quiet)) (this member stands at etcd revision \(applied)) "
                    + "while etcd committed this member's own write at revision \(newest.revision); a watch quiet for \(Self.seconds(limits.leftAfter)) is left for another etcd URL"
            case .behind:
                return "behind etcd: its write committed at revision \(oldest.revision) \(Self.seconds(now - oldest.knownAt)) ago is not applied yet "
                    + "(this member stands at etcd revision \(applied), its watch last delivered \(Self.seconds(quiet)) ago)"
            }
        }
        if let target = catchingUpTo {
            return "catching up with etcd: its watch delivers again and has yet to reach revision \(target), this member's own write known "
                + "while it did not follow (this member stands at etcd revision \(applied))"
        }
        return nil
    }

    static func seconds(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return "\(ms / 1000).\(ms % 1000 / 100) s"
    }
}
