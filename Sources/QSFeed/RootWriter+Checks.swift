import NIOCore
import QSClient
import QSModel
import QSNet
import QSWire

/// What a writer checks of an address before it writes there (`RootWriter.connection()`):
/// the hello's answer, a compatible mirror, the positions it must hold, the history it must
/// carry.
extension RootWriter {
    /// The root's answer to hello: its head when the token is accepted. A root that does
    /// not know hello (older than it) is taken as it is: its first write checks the token.
    /// A node that takes no writes stops the bridge when it is the only address, and is
    /// passed over (a `ClientError`) when there are others; one that cannot take writes
    /// now (a cluster member not following its log: `storage-error`) is passed over.
    static func check(hello answer: Response, endpoint: Endpoint, tokenOrigin: String, alternatives: Bool = false) throws {
        guard case let .error(code, message) = answer else { return }
        switch ErrorCode(rawValue: code) {
        case .unauthorized:
            throw FeedError.stop("the root at \(endpoint) refused \(tokenOrigin): \(message); put the root's token (its --write-token-file) in it")
        case .notWritable where alternatives:
            throw ClientError.server(code: code, message: "takes no writes: \(message)")
        case .notWritable:
            throw FeedError.stop("\(endpoint) takes no writes: \(message); point --root at the root")
        case .storageError, .shuttingDown, .damaged:
            // Damaged on the way: the node closed the connection; the next one says hello again.
            throw ClientError.server(code: code, message: message)
        default:
            return
        }
    }

    /// The node's status (`qsctl status`'s JSON), nil when it answers something else (a
    /// node that does not know the request). An error it answers a status with (its store
    /// failing to read, shutting down) is thrown: what the status would have said (a
    /// mirror, the source descriptors it records) is not known, so the address is not taken.
    static func status(of c: any RootConnection) async throws -> [String: Any]? {
        let r = try await c.send(.status, timeout: .seconds(10))
        switch r {
        case let .status(json): return NodeStatus.parse(json)
        case let .error(code, message) where ![.malformed, .invalidRequest, .unsupported].contains(ErrorCode(rawValue: code)):
            throw ClientError.server(code: code, message: "its status could not be read: \(message)")
        default: return nil
        }
    }

    /// A root whose write role is `mirror` (demoted, or fed by `qsqsbridge --mode
    /// compatible`) takes only its mirror bridge's appends: passed over (a `ClientError`,
    /// retried when it is the only address, as a batch refused by a root demoted in use is:
    /// a cut-over undone gives the writes back). When it is empty, the roots its live mirror
    /// bridges read are added to `following`: an empty history is carried by any of them.
    /// A mirror that holds entries is not taken at its word (a bridge's `--source` is
    /// resolved where the bridge runs, and a bridge stays listed while it only keeps the
    /// connection alive): its head is the anchor the next address must hold. Returns the
    /// Status read (nil: the node answers none).
    @discardableResult
    static func check(mirror c: any RootConnection, following: inout [Endpoint]) async throws -> [String: Any]? {
        guard let s = try await status(of: c) else { return nil }
        guard NodeStatus.isMirror(s) else { return s }
        if try await c.head().index == 0 { following += NodeStatus.mirroredSources(s) }
        throw ClientError.server(code: ErrorCode.notWritable.rawValue, message:
            "takes no writes: a compatible mirror (write_role mirror), it takes only its mirror bridge's appends; write to the root it mirrors, or cut over to it (qsctl cutover)")
    }

    /// A root this writer moves to must hold every source id at least where the root it
    /// leaves was known to: one behind (an empty root listed before it is a mirror, a root
    /// of another history) would take writes the fleet's root never sees, and acknowledged
    /// writes would live only there. Passed over (a `ClientError`) with the positions.
    ///
    /// Except where the only difference is what travels in no log entry: when the root left
    /// answered with its head and takes no writes (`anchor`: a root demoted by a cut-over,
    /// its head final) and this one holds that head (same index, same chained hash), every
    /// entry of the history is here, and a checkpoint behind was moved at the root left
    /// without an entry (a quiet source's heartbeats). The same move is made here, under
    /// compare-and-swap (and with the source's initial-copy cursor as this root holds it),
    /// and the writer goes on. Before, a bridge given `--root OLD,NEW` stopped writing for
    /// good after a clean cut-over whenever its source had been quiet for a second.
    static func check(continuity c: any RootConnection, endpoint: Endpoint, from previous: Endpoint,
                      confirmed: [String: UInt64], anchor: (endpoint: Endpoint, head: Head)? = nil, token: [UInt8] = []) async throws {
        for (sourceID, position) in confirmed.sorted(by: { $0.key < $1.key }) {
            let theirs = try await c.checkpoint(sourceID: sourceID)
            if let theirs, theirs >= position { continue }
            if let anchor, anchor.endpoint == previous, try await entryHash(on: c, at: anchor.head.index) == anchor.head.hash {
                let cursor = try await copyCursor(on: c, sourceID: sourceID)
                let r = try await c.send(.batch(.init(token: token, sourceID: sourceID, expected: theirs ?? 0, new: position,
                                                      operations: [], copyCursor: cursor)), timeout: callTimeout)
                switch r {
                case .applied:
                    continue
                case let .conflict(current) where current >= position:
                    continue
                default:
                    throw ClientError.server(code: ErrorCode.notWritable.rawValue, message:
                        "holds \(previous)'s head but source id \(sourceID) at \(theirs.map(String.init) ?? "no checkpoint"), behind the \(position) this writer saw there, and moving it there was answered \(r): not moved to")
                }
            }
            throw ClientError.server(code: ErrorCode.notWritable.rawValue, message:
                "holds source id \(sourceID) at \(theirs.map(String.init) ?? "no checkpoint"), behind the \(position) this writer saw at \(previous): not a copy of it, so not moved to (a root listed in --root must mirror the one before it, qsqsbridge --mode compatible, before it can take over)")
        }
    }

    /// Passes `endpoint` over (a `ClientError`) when another of `endpoints` holds a
    /// checkpoint of `sourceID`: that one carries the source's history, this one not.
    static func check(noneElsewhere sourceID: String, at endpoint: Endpoint, among endpoints: [Endpoint],
                      connect: @Sendable (Endpoint) async throws -> any RootConnection) async throws {
        for other in endpoints where other != endpoint {
            guard let c = try? await connect(other) else { continue }
            let answer = try? await c.send(.getCheckpoint(sourceID: sourceID), timeout: callTimeout)
            await c.close()
            // One that refuses this writer's token (a replica, a root of another token) is
            // not a root it writes to, as one that does not answer: skipped.
            if case let .checkpoint(position) = answer, let position {
                throw ClientError.server(code: ErrorCode.notWritable.rawValue, message:
                    "holds no checkpoint of source id \(sourceID) while \(other), also listed in --root, holds it at \(position): not the root this source writes to, so not written to (list in --root only the root and the roots that mirror it)")
            }
        }
    }

    /// The cursor of `sourceID`'s unfinished initial copy at the root behind `c`, nil when none.
    static func copyCursor(on c: any RootConnection, sourceID: String) async throws -> [UInt8]? {
        let r = try await c.send(.getCopyCursor(sourceID: sourceID), timeout: callTimeout)
        switch r {
        case let .value(record): return record?.value
        case let .error(code, message): throw ClientError.server(code: code, message: message)
        default: throw ClientError.unexpected("\(r)")
        }
    }

    /// An address a writer moves to without having seen a position of `sourceID` at the
    /// one it leaves is taken only if it carries that history: it holds a checkpoint of
    /// `sourceID` (a copy of a root this source wrote to, or a cluster member), it was
    /// promoted (a cut-over gave it the writes), or it is a member of a root cluster (one
    /// log through etcd). An empty root, or one of another history, is passed over (a
    /// `ClientError`): it would take writes the fleet's root never sees.
    /// `anchor`: an address passed over that answered but takes no writes, with its head:
    /// a root whose log holds that head (a mirror's source, a cut-over's new root) carries
    /// the history too.
    /// `mirrored`: the roots that empty compatible mirrors passed over follow (their
    /// bridges' `--source`): nothing to hold, so such a root carries their history.
    /// `status`: the address's Status, as `check(mirror:)` read it.
    /// `fromEmpty`: `previous` answered with an empty log (nothing to compare with).
    static func check(carries c: any RootConnection, status: [String: Any]?, endpoint: Endpoint, from previous: Endpoint,
                      sourceID: String, anchor: (endpoint: Endpoint, head: Head)? = nil, mirrored: [Endpoint] = [],
                      fromEmpty: Bool = false) async throws {
        if try await c.checkpoint(sourceID: sourceID) != nil { return }
        if let s = status, s["write_role"] as? String == "promoted" || s["cluster"] != nil {
            return
        }
        if mirrored.contains(endpoint) { return }
        if let anchor {
            if try await entryHash(on: c, at: anchor.head.index) == anchor.head.hash { return }
            throw ClientError.server(code: ErrorCode.notWritable.rawValue, message:
                "holds no checkpoint of source id \(sourceID), is neither a promoted root nor a root cluster member, and does not hold the head of \(anchor.endpoint) (index \(anchor.head.index)), which takes no writes: not known to be a copy of it, so not moved to (list in --root only roots that mirror one another)")
        }
        throw ClientError.server(code: ErrorCode.notWritable.rawValue, message:
            "holds no checkpoint of source id \(sourceID) and is neither a promoted root nor a root cluster member, while this writer has seen no position at \(previous) (\(fromEmpty ? "its log is empty: nothing to compare with" : "it did not answer")): not known to be a copy of it, so not moved to (list in --root only roots that mirror the one before it; the writer goes on at \(previous) once it answers)")
    }

    /// The chained hash of the entry at `index` in the log of the root behind `c`, nil when
    /// it does not hold that entry (not yet, or trimmed).
    static func entryHash(on c: any RootConnection, at index: UInt64) async throws -> [UInt8]? {
        let r = try await c.send(.readLog(from: index, count: 1), timeout: callTimeout)
        switch r {
        case let .entries(list): return list.first { $0.index == index }?.hash
        case let .error(code, message): throw ClientError.server(code: code, message: message)
        default: throw ClientError.unexpected("\(r)")
        }
    }
}
