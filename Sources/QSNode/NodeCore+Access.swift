import NIOConcurrencyHelpers
import QSNet
import QSWire

/// Who may do what on the write port: the write, replication, admin and read gates.
extension NodeCore {
    /// Whether a connection from a peer may read before it has presented a token: a peer
    /// on this machine, or any peer of a node without tokens (it listens on loopback only).
    public func readsOpen(local: Bool) -> Bool { local || !readGate.isClosed }

    /// Whether `request`, once authorized, proved that the peer holds one of the node's
    /// tokens (its connection may then read, and is trusted with the reply budget). A
    /// local peer's `auth` is let through unjudged (`authorize`): its token is judged here,
    /// silently.
    public func provesToken(_ request: Request) -> Bool {
        switch request {
        case .auth: return readGate.admits?(request.token) ?? false
        case .changeRole: return adminGate.isClosed || writeGate.isClosed
        default: return request.isWrite ? writeGate.isClosed : request.isReplication && replicationGate.isClosed
        }
    }

    /// Checks a write's, a replication stream's, a role change's or an `auth`'s token in
    /// constant time, and that a read comes from a connection that may read (`readsAllowed`:
    /// `readsOpen`, or a token presented before); refusals are counted and logged by the
    /// gate. nil when the request may run. `local`: the peer is on this machine (loopback
    /// or a Unix socket).
    /// `address`: the node's own address as the peer reached it, named in a read's refusal
    /// (a client reading two nodes, as `qsctl verify`, is told which one refused).
    public func authorize(_ request: Request, peer: String, local: Bool, readsAllowed: Bool, address: String = "") -> Response? {
        if case .auth = request {
            // A peer on this machine reads without a token: its auth is not judged (a
            // client presents the token it has whatever it dialled, e.g. a forwarder).
            if local { return nil }
            guard let refusal = readGate.check(request.token, peer: peer) else { return nil }
            return .error(.unauthorized, refusal)
        }
        if !readsAllowed && !request.isWrite && !request.isReplication {
            readGate.refuse(peer: peer, why: "\(request.name) from another machine on a connection without a token")
            return .error(.unauthorized, "this node\(address.isEmpty ? "" : " (\(address))") answers reads from another machine only on a connection that presented one of its tokens (its \(readGate.flag.replacingOccurrences(of: " to read from another machine", with: ""))): qsctl presents --read-token-file (QS_CTL_READ_TOKEN_FILE), a bridge or recorder its --source-token-file, a replica its --upstream-token-file, qsrest its --usage-node-token-file; or read on the node's own machine (its loopback or --unix socket; a forwarder or tunnel from another machine counts as that machine)")
        }
        if request.isWrite && !writable {
            if case .changeRole = request {
                return .error(.notWritable, "this node is a replica (qsnode --role replica): only a root can be promoted or demoted; a new root is a qsnode --role root fed by qsqsbridge --mode compatible")
            }
            badInput.warning(logger, "write refused", peer: peer, metadata: ["request": "\(request.name)", "reason": "not writable"])
            return .error(.notWritable, "this node is a replica and takes no writes: write to the root")
        }
        if case .changeRole = request {
            if adminGate.isClosed {
                guard let refusal = adminGate.check(request.token, peer: peer) else { return nil }
                return .error(.unauthorized, refusal)
            }
            guard local else {
                adminGate.refuse(peer: peer, why: "role change from a remote peer")
                return .error(.unauthorized, "this node has no --admin-token-file: it takes promote and demote from this machine only (loopback or its --unix socket). Run qsctl on the node, or give the node --admin-token-file and qsctl the same file")
            }
        }
        let gate = request.isWrite ? writeGate : request.isReplication ? replicationGate : nil
        guard let gate, let refusal = gate.check(request.token, peer: peer) else { return nil }
        return .error(.unauthorized, refusal)
    }
}

/// The reply budget's bytes one read on the write port took while its answer was built
/// (`NodeCore.handle`), handed on to the write that sends it (`NodeCore.answerFrame`).
/// Taken before the answer is copied out of the store (a `Get`) or as soon as it is read
/// (a log or a page of records): the write port runs its reads on the store's threads, any
/// number at once, so an answer checked only once built let a crowd of connections each
/// build a large one (100 `Get`s of a 20 MB value: 2.6 GB of the node).
/// A connection that presented one of the node's tokens (a replica, a bridge, qsctl with
/// its token) is counted, never refused: it is trusted not to flood, and a large read it
/// needs (a bridge resuming at a large log entry) must not wait for a moment when nothing
/// else is held.
public final class AnswerReservation: Sendable {
    let memory: ReplyMemory
    let refuses: Bool
    private let bytes = NIOLockedValueBox(0)

    /// `refuses`: false for a connection that presented a token.
    public init(memory: ReplyMemory, refuses: Bool = true) {
        self.memory = memory
        self.refuses = refuses
    }

    /// Takes `n` bytes for the answer if it is large and the budget has room (or the
    /// connection is trusted); false: the answer is refused `busy`.
    func take(_ n: Int) -> Bool {
        guard n >= ReplyMemory.largeReply else { return true }
        if !refuses { memory.hold(n) } else if !memory.tryHold(n) { return false }
        bytes.withLockedValue { $0 += n }
        return true
    }

    /// The bytes taken so far.
    public var taken: Int { bytes.withLockedValue { $0 } }
}

/// The write port's answers under the reply budget the read ports share.
extension NodeCore {
    /// `response` as the frame to write, and the bytes to hold against `replyMemory` until
    /// the socket has taken it (0: not counted). `reserved`: what the read took while it was
    /// built (`AnswerReservation`, where a read is refused), now the frame's size. Any other
    /// large answer (a status, a copy cursor) is counted, never refused.
    public func answerFrame(_ response: Response, reserved: Int = 0) -> (frame: Frame, held: Int) {
        let frame = response.frame()
        let bytes = frame.payload.count + 5
        if reserved > 0 {
            if bytes > reserved { replyMemory.hold(bytes - reserved) } else { replyMemory.release(reserved - bytes) }
            return (frame, bytes)
        }
        guard bytes >= ReplyMemory.largeReply else { return (frame, 0) }
        replyMemory.hold(bytes)
        return (frame, bytes)
    }

    /// A read whose answer of `bytes` does not fit in the reply budget now: counted, logged
    /// at most every 10 s, answered `busy`.
    func busy(bytes: Int, peer: String) -> Response {
        metrics.replyMemoryRefusals.increment()
        replyMemoryLog.log(logger, .warning, "write port: a large read answer refused busy: replies not yet read by their clients hold the whole --read-reply-memory",
                           budget: "reply memory", metadata: ["peer": "\(peer)", "reply-bytes": "\(bytes)",
                                                              "held-bytes": "\(replyMemory.inUse)", "limit-bytes": "\(replyMemory.limit)"])
        return .error(.busy, "busy: the answer's \(bytes) bytes do not fit in this node's --read-reply-memory (\(replyMemory.inUse) of \(replyMemory.limit) bytes held by replies its clients have not read yet); nothing changed: ask again shortly")
    }
}
