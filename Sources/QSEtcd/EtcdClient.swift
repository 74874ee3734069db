import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Why an etcd request failed.
public enum EtcdError: Error, Sendable, CustomStringConvertible {
    /// No URL accepted a connection: nothing was sent.
    case unreachable(String)
    /// The connection was lost or the answer did not come in time after the request was
    /// sent: etcd may or may not have committed it.
    case outcomeUnknown(String)
    case connectionLost(String)
    /// etcd answered with an error (no leader, request timed out, …).
    case server(status: Int, message: String)
    /// The answer is not what the gateway sends.
    case malformed(String)
    /// A watch was cancelled by etcd because its start revision was compacted away.
    case compacted(revision: Int64)
    /// etcd refused the request for its credentials (none presented while etcd has
    /// authentication on, a token etcd no longer knows, a wrong password, a user lacking
    /// permission): etcd did not execute it.
    case unauthenticated(String)

    public var description: String {
        switch self {
        case let .unreachable(m): return "etcd unreachable: \(m)"
        case let .outcomeUnknown(m): return "etcd did not answer (outcome unknown, resolve through the checkpoint): \(m)"
        case let .connectionLost(m): return "connection to etcd lost: \(m)"
        case let .server(status, m): return "etcd refused the request (HTTP \(status)): \(m)"
        case let .malformed(m): return "etcd's answer is not understood: \(m)"
        case let .compacted(r): return "etcd compacted its history up to revision \(r)"
        case let .unauthenticated(m): return "etcd refused this member's credentials: \(m)"
        }
    }
}

/// A key and its value as etcd holds them.
public struct EtcdKV: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    public var modRevision: Int64
    public var createRevision: Int64

    init(json: [String: Any]) throws {
        key = try EtcdJSON.bytes(json["key"], "key")
        value = try EtcdJSON.bytes(json["value"], "value", optional: true)
        modRevision = EtcdJSON.int(json["mod_revision"])
        createRevision = EtcdJSON.int(json["create_revision"])
    }
}

/// A condition of a transaction.
public enum EtcdCompare: Sendable {
    /// The key holds exactly these bytes.
    case value(key: [UInt8], equals: [UInt8])
    /// The key does not exist.
    case absent(key: [UInt8])
    /// The key was last written at revision `equals` (0: the key does not exist).
    case modRevision(key: [UInt8], equals: Int64)

    var json: [String: Any] {
        switch self {
        case let .value(key, v):
            return ["key": EtcdJSON.b64(key), "target": "VALUE", "result": "EQUAL", "value": EtcdJSON.b64(v)]
        case let .absent(key):
            return ["key": EtcdJSON.b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]
        case let .modRevision(key, revision):
            return ["key": EtcdJSON.b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": "\(revision)"]
        }
    }
}

/// An operation of a transaction.
public enum EtcdOp: Sendable {
    case put(key: [UInt8], value: [UInt8])
    /// A put whose key lives only as long as lease `lease` (`EtcdClient.grantLease`).
    case putLeased(key: [UInt8], value: [UInt8], lease: Int64)
    /// Keys from `key` up to `end` excluded (nil: `key` alone); at most `limit` (0: all).
    case range(key: [UInt8], end: [UInt8]?, limit: Int)
    case deleteRange(key: [UInt8], end: [UInt8])

    var json: [String: Any] {
        switch self {
        case let .put(key, value):
            return ["request_put": ["key": EtcdJSON.b64(key), "value": EtcdJSON.b64(value)]]
        case let .putLeased(key, value, lease):
            return ["request_put": ["key": EtcdJSON.b64(key), "value": EtcdJSON.b64(value), "lease": "\(lease)"]]
        case let .range(key, end, limit):
            return ["request_range": Self.rangeBody(key: key, end: end, limit: limit)]
        case let .deleteRange(key, end):
            return ["request_delete_range": ["key": EtcdJSON.b64(key), "range_end": EtcdJSON.b64(end)]]
        }
    }

    static func rangeBody(key: [UInt8], end: [UInt8]?, limit: Int) -> [String: Any] {
        var r: [String: Any] = ["key": EtcdJSON.b64(key)]
        if let end { r["range_end"] = EtcdJSON.b64(end) }
        if limit > 0 { r["limit"] = "\(limit)" }
        return r
    }
}

/// What a transaction did.
public struct EtcdTxnResult: Sendable {
    public var succeeded: Bool
    /// The store's revision after the transaction (its own, when it wrote).
    public var revision: Int64
    /// The keys each range operation of the branch taken found, in order (empty for puts
    /// and deletes).
    public var ranges: [[EtcdKV]]
}

/// One revision's changes seen by a watch: every event of one etcd transaction.
public struct EtcdWatchEvent: Sendable {
    public enum Kind: Sendable { case put, delete }
    public var kind: Kind
    public var kv: EtcdKV
}

/// A user of etcd's authentication (`etcdctl user add`, `role grant-permission`,
/// `auth enable`) and its password.
public struct EtcdCredentials: Sendable {
    public var user: String
    public var password: String
    /// The file the password came from: read again at each authentication, so a password
    /// rotated in etcd and in the file is taken without a restart.
    public var passwordFile: String?

    public init(user: String, password: String, passwordFile: String? = nil) {
        self.user = user
        self.password = password
        self.passwordFile = passwordFile
    }

    /// The password as the file holds it now (trailing newlines and spaces dropped), or the
    /// one given when there is no file or it cannot be read.
    var currentPassword: String {
        guard let passwordFile, let data = FileManager.default.contents(atPath: passwordFile) else { return password }
        var bytes = [UInt8](data)
        while let last = bytes.last, last == 10 || last == 13 || last == 32 { bytes.removeLast() }
        guard !bytes.isEmpty, let text = String(validating: bytes, as: UTF8.self) else { return password }
        return text
    }
}

/// A client of etcd's v3 API through its JSON gateway (`/v3/kv/txn`, `/v3/kv/range`,
/// `/v3/watch`; keys and values base64). Each request opens a connection to the URL that
/// answered last, or the next that accepts one; a URL whose answer did not come in time is
/// left for the next one (a stopped etcd process still accepts connections). A request
/// that was sent is never sent again by this client (its outcome may be unknown: the caller
/// resolves it through what it compared), with one exception: a request etcd refused for
/// its token (expired, or issued before a permission changed) was not executed, and is
/// sent once more with a new token.
///
/// With `credentials`, the client authenticates (`/v3/auth/authenticate`) before its first
/// request and whenever etcd refuses its token, and presents the token in `Authorization`.
/// An etcd whose authentication is off answers that it is: the client then sends no token
/// (and says so once), until etcd asks for one.
public final class EtcdClient: Sendable {
    public struct Endpoint: Sendable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public var description: String { "http://\(host):\(port)" }
    }

    public let endpoints: [Endpoint]
    /// How long a request may take before its outcome is taken as unknown.
    public let timeout: Duration
    /// The endpoint that answered last: tried first next time.
    private let preferred = NIOLockedValueBox(0)

    /// The user this client authenticates as (nil: it presents no credentials).
    public let credentials: EtcdCredentials?
    let logger: Logger

    /// What the client knows of etcd's authentication.
    enum Authentication: Sendable, Equatable {
        /// Not asked yet (or the token was refused): authenticate before the next request.
        case unknown
        case token(String)
        /// etcd answered that its authentication is off: requests go without a token.
        case off
    }
    /// The authentication in use, the one under way (every request refused for the same
    /// token waits for the one renewal), and etcd's last refusal of the user or password
    /// (said again without asking etcd until `retryAt`: each authentication costs etcd a
    /// bcrypt, and a member with a stale password would otherwise cost it one a request).
    private struct AuthenticationState {
        var current = Authentication.unknown
        var renewal: Task<Authentication, any Error>?
        var refusal: (message: String, retryAt: ContinuousClock.Instant, delay: Duration)?
    }
    private let authentication = NIOLockedValueBox(AuthenticationState())
    /// How long a refused user or password is said again before etcd is asked again: it
    /// doubles from the first to the last.
    static let refusalRetry: (first: Duration, last: Duration) = (.seconds(1), .seconds(30))
    /// Tokens etcd gave this client, and authentications etcd refused (user or password).
    private let tokensIssued = NIOLockedValueBox(0)
    private let refusedAuthentications = NIOLockedValueBox(0)
    /// Whether etcd executed the last request answered without a token (nil: none
    /// answered yet): then whoever reaches etcd's client port can write the cluster's keys.
    private let openAnswer = NIOLockedValueBox<Bool?>(nil)

    /// `urls`: `http://host:port` (or `host:port`) of the etcd members' client ports.
    public init(urls: [String], timeout: Duration = .seconds(5), credentials: EtcdCredentials? = nil,
                logger: Logger = Logger(label: "qs.etcd")) throws {
        endpoints = try urls.map(Self.parse)
        guard !endpoints.isEmpty else { throw EtcdError.unreachable("no etcd URL given") }
        self.timeout = timeout
        self.credentials = credentials
        self.logger = logger
    }

    /// The tokens etcd has given this client so far.
    public var tokens: Int { tokensIssued.withLockedValue { $0 } }
    /// The authentications etcd refused so far (a wrong user or password).
    public var authenticationsRefused: Int { refusedAuthentications.withLockedValue { $0 } }

    /// True when etcd's last answer executed a request that carried no token (no
    /// credentials given, or etcd's authentication off): anyone who reaches its client port
    /// could have sent it. False when the last answer was to a token; nil before any answer.
    public var answersWithoutCredentials: Bool? { openAnswer.withLockedValue { $0 } }

    /// Parses `http://host:port` or `host:port`.
    public static func parse(_ url: String) throws -> Endpoint {
        var s = Substring(url.trimmingCharacters(in: .whitespaces))
        if s.hasPrefix("http://") { s = s.dropFirst(7) }
        if s.hasPrefix("https://") { throw EtcdError.unreachable("\(url): TLS to etcd is not supported; give its plain http:// client URL on a trusted network") }
        while s.hasSuffix("/") { s = s.dropLast() }
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (1...65535).contains(port),
              colon > s.startIndex else {
            throw EtcdError.unreachable("'\(url)' is not an etcd client URL: give http://HOST:PORT, e.g. http://127.0.0.1:2379")
        }
        return Endpoint(host: String(s[..<colon]), port: port)
    }

    // MARK: requests

    /// One transaction: if every compare holds, `success` runs, otherwise `failure`.
    public func txn(compare: [EtcdCompare], success: [EtcdOp], failure: [EtcdOp]) async throws -> EtcdTxnResult {
        let body: [String: Any] = ["compare": compare.map(\.json), "success": success.map(\.json), "failure": failure.map(\.json)]
        let json = try await call("/v3/kv/txn", body)
        let responses = json["responses"] as? [[String: Any]] ?? []
        var ranges = [[EtcdKV]]()
        for r in responses {
            if let range = r["response_range"] as? [String: Any] {
                ranges.append(try (range["kvs"] as? [[String: Any]] ?? []).map(EtcdKV.init(json:)))
            } else {
                ranges.append([])
            }
        }
        return EtcdTxnResult(succeeded: json["succeeded"] as? Bool ?? false, revision: try Self.revision(json), ranges: ranges)
    }

    /// A new lease of `ttl` (whole seconds, at least 1): keys put with it are deleted by
    /// etcd once it expires. Returns its id.
    public func grantLease(ttl: Duration) async throws -> Int64 {
        let json = try await call("/v3/lease/grant", ["TTL": "\(max(1, ttl.components.seconds))"])
        let id = EtcdJSON.int(json["ID"])
        guard id != 0 else { throw EtcdError.malformed("lease grant answered without an ID: \(json)") }
        return id
    }

    /// Keys from `key` up to `end` excluded (nil: `key` alone), at most `limit` (0: all),
    /// and the store's revision they were read at.
    public func range(_ key: [UInt8], end: [UInt8]? = nil, limit: Int = 0) async throws -> (kvs: [EtcdKV], revision: Int64) {
        let body = EtcdOp.rangeBody(key: key, end: end, limit: limit)
        let json: [String: Any]
        do {
            json = try await call("/v3/kv/range", body)
        } catch EtcdError.outcomeUnknown {
            // A read changes nothing: one that met a member dying (its connection closed
            // under it, or no answer) is asked once more, of the next member.
            json = try await call("/v3/kv/range", body)
        }
        return (try (json["kvs"] as? [[String: Any]] ?? []).map(EtcdKV.init(json:)), try Self.revision(json))
    }

    /// Watches keys from `key` up to `end` excluded from `revision` on, calling `onEvents`
    /// with the events of each revision in order, until `onEvents` returns false or the
    /// watch breaks (throws: `.compacted` when `revision` is no longer in etcd's history).
    /// `quietLimit`: a watch that delivers nothing for this long is taken as stuck on an
    /// etcd member that stopped answering (a stopped process still accepts connections):
    /// it throws `connectionLost` and the next request goes to another member. Only for
    /// keys something writes more often than that.
    public func watch(_ key: [UInt8], end: [UInt8], fromRevision revision: Int64, quietLimit: Duration? = nil,
                      onEvents: @escaping @Sendable (_ revision: Int64, _ events: [EtcdWatchEvent]) async throws -> Bool) async throws {
        let body: [String: Any] = ["create_request": ["key": EtcdJSON.b64(key), "range_end": EtcdJSON.b64(end),
                                                      "start_revision": "\(revision)"]]
        let bytes = try EtcdJSON.encode(body)
        let used = try await authentication(renewing: nil)
        do {
            try await watch(body: bytes, token: used.token, quietLimit: quietLimit, onEvents: onEvents)
        } catch let EtcdError.unauthenticated(why) where Self.isTokenRefusal(why) {
            // The next request (the caller's catch-up) authenticates again.
            authentication.withLockedValue { if $0.current == used { $0.current = .unknown } }
            throw EtcdError.unauthenticated(why)
        }
    }

    private func watch(body bytes: [UInt8], token: String?, quietLimit: Duration?,
                       onEvents: @escaping @Sendable (_ revision: Int64, _ events: [EtcdWatchEvent]) async throws -> Bool) async throws {
        let (channel, endpoint, index) = try await connect()
        let refusal = { @Sendable (why: String) in self.refusal(why) }
        guard let quietLimit else {
            return try await Self.watch(channel, endpoint: endpoint, body: bytes, token: token, lastMessage: nil, refusal: refusal, onEvents: onEvents)
        }
        let lastMessage = LastMessage()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.watch(channel, endpoint: endpoint, body: bytes, token: token, lastMessage: lastMessage, refusal: refusal, onEvents: onEvents) }
            group.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(250))
                    let quiet = lastMessage.quiet
                    if quiet >= quietLimit {
                        self.avoid(index)
                        throw EtcdError.connectionLost("\(endpoint)/v3/watch: nothing for \(quiet) (the member stopped answering?)")
                    }
                }
            }
            defer { group.cancelAll() }
            _ = try await group.next()
        }
    }

    private static func watch(_ channel: EtcdHTTP.Channel, endpoint: Endpoint, body: [UInt8], token: String?, lastMessage: LastMessage?,
                              refusal: @Sendable (String) -> String?,
                              onEvents: @Sendable (_ revision: Int64, _ events: [EtcdWatchEvent]) async throws -> Bool) async throws {
        var buffer = [UInt8]()
        let status = try await EtcdHTTP.post(channel, host: endpoint.host, path: "/v3/watch", body: body, authorization: token,
                                             notSent: { EtcdError.connectionLost("\(endpoint)/v3/watch: \($0)") }) { piece in
            lastMessage?.touch()
            buffer += piece.readableBytesView
            while let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw EtcdError.malformed("watch message: \(String(decoding: line.prefix(200), as: UTF8.self))")
                }
                if let error = object["error"] as? [String: Any] {
                    let message = error["message"] as? String ?? "\(error)"
                    if let refused = refusal(message) { throw EtcdError.unauthenticated("\(endpoint)/v3/watch: \(refused)") }
                    throw EtcdError.server(status: 200, message: message)
                }
                guard let result = object["result"] as? [String: Any] else { continue }
                if result["canceled"] as? Bool == true {
                    let compacted = EtcdJSON.int(result["compact_revision"])
                    if compacted > 0 { throw EtcdError.compacted(revision: compacted) }
                    let reason = result["cancel_reason"] as? String ?? "no reason given"
                    if let refused = refusal(reason) { throw EtcdError.unauthenticated("\(endpoint)/v3/watch: \(refused)") }
                    throw EtcdError.connectionLost("etcd cancelled the watch: \(reason)")
                }
                let events = result["events"] as? [[String: Any]] ?? []
                guard !events.isEmpty else { continue }
                // One message may carry several revisions: hand them over one revision at a time.
                var group = [EtcdWatchEvent]()
                var groupRevision: Int64 = 0
                for e in events {
                    guard let kvJSON = e["kv"] as? [String: Any] else { throw EtcdError.malformed("watch event without kv") }
                    let kv = try EtcdKV(json: kvJSON)
                    if kv.modRevision != groupRevision, !group.isEmpty {
                        if try await !onEvents(groupRevision, group) { return false }
                        group = []
                    }
                    groupRevision = kv.modRevision
                    group.append(EtcdWatchEvent(kind: e["type"] as? String == "DELETE" ? .delete : .put, kv: kv))
                }
                if try await !onEvents(groupRevision, group) { return false }
            }
            return true
        }
        guard status == .ok else { throw EtcdError.server(status: Int(status.code), message: "watch refused") }
    }

    // MARK: plumbing

    /// The endpoint `index` did not answer in time: the next request starts at the one
    /// after it (unless another request already moved on).
    private func avoid(_ index: Int) {
        preferred.withLockedValue { if $0 == index { $0 = (index + 1) % endpoints.count } }
    }

    /// Connects to the preferred endpoint, then the others in order.
    private func connect() async throws -> (EtcdHTTP.Channel, Endpoint, Int) {
        let first = preferred.withLockedValue { $0 }
        var reasons = [String]()
        for i in 0..<endpoints.count {
            let n = (first + i) % endpoints.count
            let e = endpoints[n]
            do {
                let c = try await EtcdHTTP.connect(host: e.host, port: e.port, timeout: .seconds(1))
                preferred.withLockedValue { $0 = n }
                return (c, e, n)
            } catch {
                reasons.append("\(e): \(error)")
            }
        }
        throw EtcdError.unreachable(reasons.joined(separator: "; "))
    }

    /// POSTs `body` to `path` on the first endpoint that accepts a connection, within the
    /// client's timeout, and returns the answer's JSON object. A request refused for its
    /// token (not executed) goes once more with a new one.
    private func call(_ path: String, _ body: [String: Any]) async throws -> [String: Any] {
        let bytes = try EtcdJSON.encode(body)
        let used = try await authentication(renewing: nil)
        do {
            return try await exchangeSent(path, bytes, token: used.token)
        } catch let EtcdError.unauthenticated(why) where credentials != nil && Self.isTokenRefusal(why) {
            return try await exchangeSent(path, bytes, token: try await authentication(renewing: used).token)
        }
    }

    /// `exchange`, sent once more (to the next member) when its connection closed before
    /// the request left: etcd did not get it. A second such failure is `unreachable`.
    private func exchangeSent(_ path: String, _ bytes: [UInt8], token: String?) async throws -> [String: Any] {
        do {
            return try await exchange(path, bytes, token: token)
        } catch is NotSent {
            do {
                return try await exchange(path, bytes, token: token)
            } catch let again as NotSent {
                throw EtcdError.unreachable("\(path): \(again)")
            }
        }
    }

    // MARK: authentication

    /// Authenticates now (with credentials): throws `unauthenticated` when etcd refuses the
    /// user or its password, `unreachable` when no etcd answers.
    public func authenticateNow() async throws {
        _ = try await authentication(renewing: authentication.withLockedValue { $0.current })
    }

    /// What to present: the token known (or none), or — before the first request, or when
    /// `renewing` is what etcd just refused — what authenticating says now (one renewal at
    /// a time; a refused user or password is said again without asking etcd for a while).
    private func authentication(renewing refused: Authentication?) async throws -> Authentication {
        guard let credentials else { return .unknown }
        enum Step { case use(Authentication), wait(Task<Authentication, any Error>), refuse(String) }
        let step = authentication.withLockedValue { s -> Step in
            if s.current != .unknown && s.current != refused { return .use(s.current) }
            if let renewal = s.renewal { return .wait(renewal) }
            if let r = s.refusal, ContinuousClock.now < r.retryAt { return .refuse(r.message) }
            let before = s.current
            let renewal = Task { try await self.renew(credentials, before: before) }
            s.renewal = renewal
            return .wait(renewal)
        }
        switch step {
        case let .use(known): return known
        case let .refuse(message): throw EtcdError.unauthenticated(message)
        case let .wait(renewal): return try await renewal.value
        }
    }

    /// One authentication, its outcome kept for every request.
    private func renew(_ credentials: EtcdCredentials, before: Authentication) async throws -> Authentication {
        let now: Authentication
        do {
            now = try await authenticate(credentials)
        } catch let EtcdError.unauthenticated(message) {
            refusedAuthentications.withLockedValue { $0 += 1 }
            // The token held is dead too (etcd refused it, or it belongs to a password
            // since changed): none is presented until etcd takes the credentials again.
            authentication.withLockedValue { s in
                let delay = s.refusal.map { min($0.delay * 2, Self.refusalRetry.last) } ?? Self.refusalRetry.first
                s = AuthenticationState(current: .unknown, renewal: nil, refusal: (message, .now + delay, delay))
            }
            throw EtcdError.unauthenticated(message)
        } catch {
            authentication.withLockedValue { $0.renewal = nil }
            throw error
        }
        let wasRefused = authentication.withLockedValue { s -> Bool in
            defer { s = AuthenticationState(current: now, renewal: nil, refusal: nil) }
            return s.refusal != nil
        }
        switch now {
        case .token:
            let n = tokensIssued.withLockedValue { $0 += 1; return $0 }
            if n == 1 || before == .off || wasRefused {
                logger.info("authenticated to etcd", metadata: ["etcd-user": "\(credentials.user)"])
            } else {
                logger.debug("etcd token renewed", metadata: ["etcd-user": "\(credentials.user)", "tokens": "\(n)"])
            }
        case .off where before != .off:
            logger.warning("etcd's authentication is off: this member's etcd credentials are not used, and whoever reaches etcd's client port can change the cluster (etcdctl auth enable turns it on; docs/ha.md)",
                           metadata: ["etcd-user": "\(credentials.user)"])
        default: break
        }
        return now
    }

    private func authenticate(_ credentials: EtcdCredentials) async throws -> Authentication {
        if let file = credentials.passwordFile, !FileManager.default.isReadableFile(atPath: file) {
            logger.warning("the etcd password file cannot be read: authenticating with the password read at start",
                           metadata: ["etcd-password-file": "\(file)"])
        }
        let body = try EtcdJSON.encode(["name": credentials.user, "password": credentials.currentPassword])
        let json: [String: Any]
        do {
            json = try await exchangeSent("/v3/auth/authenticate", body, token: nil)
        } catch let EtcdError.server(_, message) where message.contains("authentication is not enabled") {
            return .off
        } catch let EtcdError.outcomeUnknown(why) {
            // Nothing of the request it was for was sent.
            throw EtcdError.unreachable("authenticating as '\(credentials.user)': \(why)")
        }
        guard let token = json["token"] as? String, !token.isEmpty else {
            throw EtcdError.malformed("/v3/auth/authenticate answered without a token")
        }
        return .token(token)
    }

    /// Why etcd refused a request for its credentials, in the operator's terms; nil when
    /// `message` (etcd's error) is not such a refusal.
    func refusal(_ message: String) -> String? {
        let user = credentials.map { "'\($0.user)'" } ?? "(none)"
        if message.contains("user name is empty") {
            return credentials == nil
                ? "\(message): etcd's authentication is on and this member presents no credentials; give --etcd-user and --etcd-password-file (QS_ETCD_USER, QS_ETCD_PASSWORD_FILE), a user whose role may read and write the cluster's prefix /qs/NAME/ (docs/ha.md)"
                : "\(message): etcd asks for a token (its authentication was turned on)"
        }
        if message.contains("invalid auth token") { return "\(message): etcd no longer knows the token (expired, or etcd restarted)" }
        if message.contains("revision of auth store is old") { return "\(message): etcd's users or roles changed since the token was issued" }
        if message.contains("authentication failed") {
            return "\(message): etcd refused user \(user) and its password; check --etcd-user and --etcd-password-file (QS_ETCD_USER, QS_ETCD_PASSWORD_FILE)"
        }
        if message.contains("permission denied") {
            return "\(message): etcd user \(user) may not do this; grant its role read and write on the cluster's prefix: etcdctl role grant-permission ROLE --prefix=true readwrite /qs/NAME/ (docs/ha.md)"
        }
        return nil
    }

    /// A refusal of the token itself (not of the user or its permissions): etcd did not
    /// execute the request, and a new token may pass.
    static func isTokenRefusal(_ why: String) -> Bool {
        why.contains("user name is empty") || why.contains("invalid auth token") || why.contains("revision of auth store is old")
    }

    /// One request and its answer, presenting `token`.
    private func exchange(_ path: String, _ bytes: [UInt8], token: String?) async throws -> [String: Any] {
        let (channel, endpoint, index) = try await connect()
        let timeout = self.timeout
        let (status, answer) = try await withThrowingTaskGroup(of: (HTTPStatusCode, [UInt8])?.self) { group in
            group.addTask {
                var answer = [UInt8]()
                do {
                    let status = try await EtcdHTTP.post(channel, host: endpoint.host, path: path, body: bytes, authorization: token) { piece in
                        answer += piece.readableBytesView
                        return true
                    }
                    return (HTTPStatusCode(status.code), answer)
                } catch let error as NotSent {
                    self.avoid(index)
                    throw error
                } catch {
                    self.avoid(index)
                    throw EtcdError.outcomeUnknown("\(endpoint)\(path): \(error)")
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            guard let first = try await group.next(), let done = first else {
                group.cancelAll()
                // A member that stopped answering (a stopped process still accepts
                // connections): the next request tries another.
                avoid(index)
                throw EtcdError.outcomeUnknown("\(endpoint)\(path): no answer within \(timeout) (no quorum, or the member is stuck)")
            }
            group.cancelAll()
            return done
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any] else {
            throw EtcdError.malformed("\(endpoint)\(path) answered HTTP \(status) with \(String(decoding: answer.prefix(200), as: UTF8.self))")
        }
        guard status == 200 else {
            let message = object["error"] as? String ?? object["message"] as? String ?? "\(object)"
            if let refused = refusal(message) {
                // etcd executes nothing without a token now.
                if token == nil, path != "/v3/auth/authenticate" { openAnswer.withLockedValue { $0 = false } }
                throw EtcdError.unauthenticated("\(endpoint)\(path): \(refused)")
            }
            throw EtcdError.server(status: Int(status), message: "\(endpoint)\(path): \(message)")
        }
        if path != "/v3/auth/authenticate" { openAnswer.withLockedValue { $0 = token == nil } }
        return object
    }

    static func revision(_ json: [String: Any]) throws -> Int64 {
        guard let header = json["header"] as? [String: Any] else { throw EtcdError.malformed("an answer without header") }
        return EtcdJSON.int(header["revision"])
    }
}

typealias HTTPStatusCode = UInt

extension EtcdClient.Authentication {
    /// The token to present (none before authenticating, or with etcd's authentication off).
    var token: String? {
        if case let .token(t) = self { return t }
        return nil
    }
}

/// When a watch last received anything.
final class LastMessage: Sendable {
    private let time = NIOLockedValueBox(ContinuousClock.now)
    func touch() { time.withLockedValue { $0 = .now } }
    var quiet: Duration { ContinuousClock.now - time.withLockedValue { $0 } }
}

/// The gateway's JSON: bytes are base64, 64-bit integers are strings, zero values are left out.
enum EtcdJSON {
    static func b64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func bytes(_ any: Any?, _ what: String, optional: Bool = false) throws -> [UInt8] {
        guard let s = any as? String else {
            if any == nil && optional { return [] }
            throw EtcdError.malformed("\(what) missing")
        }
        guard let d = Data(base64Encoded: s) else { throw EtcdError.malformed("\(what) is not base64") }
        return Array(d)
    }

    static func int(_ any: Any?) -> Int64 {
        if let s = any as? String { return Int64(s) ?? 0 }
        if let n = any as? NSNumber { return n.int64Value }
        return 0
    }

    static func encode(_ object: [String: Any]) throws -> [UInt8] {
        Array(try JSONSerialization.data(withJSONObject: object))
    }
}

/// The key just after every key starting with `prefix` (etcd's range end for a prefix).
public func etcdPrefixEnd(_ prefix: [UInt8]) -> [UInt8] {
    var end = prefix
    while let last = end.last {
        if last < 0xFF {
            end[end.count - 1] = last + 1
            return end
        }
        end.removeLast()
    }
    return [0]
}
