import QSNet
import QSWire

/// Who may do what on the write port: the write, replication, admin and read gates.
extension NodeCore {
    /// Whether a connection from a peer may read before it has presented a token: a peer
    /// on this machine, or any peer of a node without tokens (it listens on loopback only).
    public func readsOpen(local: Bool) -> Bool { local || !readGate.isClosed }

    /// Whether `request`, once authorized, proved that the peer holds one of the node's
    /// tokens (its connection may then read).
    public func provesToken(_ request: Request) -> Bool {
        switch request {
        case .auth: return readGate.isClosed
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
