import Logging
import QSClient
import QSModel
import QSNet
import QSWire

/// Source descriptors (docs/protocol.md, "Source descriptors"): a writer of its own source
/// (a KT bridge) records how it maps what it reads into keys at its root, and is stopped
/// at a root that holds another one for its source id, before it writes anything: a
/// bridge started again with another `--db-map` (a typo) would otherwise write the same KT
/// database under another prefix, silently.
extension RootWriter {
    /// What a writer records, and what it says when the root holds another.
    public struct Descriptor: Sendable {
        /// The descriptor (`SourceDescriptor`), compared byte for byte.
        public var text: String
        /// Record it over another one the root holds: the mapping changes on purpose.
        public var replace: Bool
        /// The stop's words (the cause and the remedy, in the writer's flags) given the
        /// descriptor the root holds.
        public var refusal: @Sendable (_ held: String) -> String
        /// Whether this descriptor only adds to the one the root holds (a KT database
        /// mapped that was not, every mapped one as it was): recorded over it without being
        /// told to, since no key already written changes place.
        public var extends: @Sendable (_ held: String) -> Bool

        public init(text: String, replace: Bool, refusal: @escaping @Sendable (_ held: String) -> String,
                    extends: @escaping @Sendable (_ held: String) -> Bool = { _ in false }) {
            self.text = text
            self.replace = replace
            self.refusal = refusal
            self.extends = extends
        }
    }

    /// What a root says of this writer's descriptor.
    enum DescriptorAtRoot: Sendable, Equatable {
        /// It holds this one.
        case matches
        /// It holds none (`previous` nil), or another this writer replaces or extends:
        /// recorded before the connection's first write.
        case due(previous: String?)
        /// A root cluster's member: its status lists what it has applied, which may lag the
        /// cluster, so it is asked (`ask`), and the answer, the cluster's at its head, is
        /// judged instead.
        case ask
    }

    /// Makes this writer record `descriptor` at every root it connects to and stop at one
    /// that holds another for its source id (unless `descriptor.replace`). Before the first
    /// call: the first connection checks it.
    public func record(_ descriptor: Descriptor) {
        precondition(sourceID != nil, "a source descriptor belongs to a writer of its own source id")
        if let why = SourceDescriptor.problem(descriptor.text) { preconditionFailure("a source descriptor that is \(why)") }
        self.descriptor = descriptor
    }

    /// Judges the descriptor a root's status lists for `sourceID`. nil: the root records
    /// none (a node older than descriptors, or a root cluster member older than their
    /// commit through etcd). Throws `FeedError.stop` when it holds another one and the
    /// writer does not replace or extend it.
    static func check(descriptor: Descriptor, sourceID: String, status: [String: Any]?, endpoint: Endpoint) throws -> DescriptorAtRoot? {
        guard let listed = status?["source_descriptors"] as? [String: Any] else { return nil }
        if status?["cluster"] is String { return .ask }
        return try judge(descriptor: descriptor, held: listed[sourceID] as? String, sourceID: sourceID, endpoint: endpoint)
    }

    /// Judges `held`, the descriptor a root holds for `sourceID` (nil: none).
    static func judge(descriptor: Descriptor, held: String?, sourceID: String, endpoint: Endpoint) throws -> DescriptorAtRoot {
        guard let held else { return .due(previous: nil) }
        if held == descriptor.text { return .matches }
        if descriptor.replace || descriptor.extends(held) { return .due(previous: held) }
        throw FeedError.stop(refusal(descriptor, held: held, endpoint: endpoint, sourceID: sourceID))
    }

    /// Asks the root on `c` which descriptor it holds for `sourceID` (SetDescriptor with an
    /// empty descriptor, which records nothing; a cluster member answers at the cluster's
    /// head) and judges it.
    func ask(descriptor: Descriptor, sourceID: String, on c: any RootConnection, endpoint: Endpoint) async throws -> DescriptorAtRoot {
        let held = try await offer("", sourceID: sourceID, replace: false, on: c)
        return try Self.judge(descriptor: descriptor, held: held, sourceID: sourceID, endpoint: endpoint)
    }

    static func refusal(_ descriptor: Descriptor, held: String, endpoint: Endpoint, sourceID: String) -> String {
        "the root at \(endpoint) recorded source id \(sourceID) as '\(held)', and this writer's is '\(descriptor.text)': " + descriptor.refusal(held)
    }

    /// Notes what the connection just made found (`connection()`).
    func noteDescriptor(_ held: DescriptorAtRoot?, at endpoint: Endpoint) {
        guard let descriptor else { return }
        switch held {
        case nil:
            descriptorDue = nil
            if descriptorUnrecordedWarned.insert(endpoint.description).inserted {
                logger.warning("the root does not record source descriptors (a node older than this writer): this writer's mapping is not checked against the one its source was written with",
                               metadata: ["root": "\(endpoint)", "descriptor": "\(descriptor.text)"])
            }
        case .matches:
            descriptorDue = nil
            warnIfToldToReplace(descriptor, at: endpoint)
        case let .due(previous):
            descriptorDue = (generation, previous)
        case .ask:
            preconditionFailure("a cluster member's descriptor is asked for before the connection is noted")
        }
    }

    /// Told to replace a descriptor the root already holds: the flag is to be dropped. Not
    /// when this process recorded it (a reconnection after its own replacement).
    private func warnIfToldToReplace(_ descriptor: Descriptor, at endpoint: Endpoint) {
        if descriptor.replace, !descriptorRecordedHere, descriptorUnrecordedWarned.insert("matches " + endpoint.description).inserted {
            logger.warning("this writer was told to replace its source descriptor, and the root already holds it: drop the flag, or a later start with a mistaken mapping will replace it too",
                           metadata: ["root": "\(endpoint)", "descriptor": "\(descriptor.text)"])
        }
    }

    /// Records the descriptor on `c` when the connection is due to (before its first
    /// write). Throws `FeedError.stop` when the root answers that it holds another one (a
    /// writer with another mapping recorded its own first).
    func recordDescriptorIfDue(on c: any RootConnection) async throws {
        guard let descriptor, let sourceID, let due = descriptorDue, due.generation == generation else { return }
        let at = endpoint
        // Over another one only when told to, or when this one only adds to it (`due.previous`).
        let held = try await offer(descriptor.text, sourceID: sourceID, replace: due.previous != nil, on: c)
        guard held == descriptor.text else {
            throw FeedError.stop(Self.refusal(descriptor, held: held ?? "", endpoint: at, sourceID: sourceID))
        }
        if descriptorDue?.generation == due.generation { descriptorDue = nil }
        descriptorRecordedHere = true
        let metadata: Logger.Metadata = ["root": "\(at)", "source-id": "\(sourceID)", "descriptor": "\(descriptor.text)"]
        if let previous = due.previous, !descriptor.replace {
            logger.notice("source descriptor extended at the root: what it maps was mapped as it was, and more is mapped now",
                          metadata: metadata.merging(["previous": "\(previous)"]) { $1 })
        } else if let previous = due.previous {
            logger.notice("source descriptor replaced at the root: the keys written under the old mapping stay as they are",
                          metadata: metadata.merging(["previous": "\(previous)"]) { $1 })
        } else {
            logger.info("source descriptor recorded at the root", metadata: metadata)
        }
    }

    /// Sends SetDescriptor; returns the descriptor the root holds afterwards (nil: none,
    /// only when asked with an empty one).
    private func offer(_ text: String, sourceID: String, replace: Bool, on c: any RootConnection) async throws -> String? {
        let r = try await c.send(.setDescriptor(token: token, sourceID: sourceID, descriptor: text, replace: replace),
                                 timeout: Self.callTimeout)
        switch r {
        case let .value(record):
            return record.map { String(decoding: $0.value, as: UTF8.self) }
        case let .error(code, message):
            throw ClientError.server(code: code, message: "\(text.isEmpty ? "asking" : "recording") source id \(sourceID)'s descriptor: \(message)")
        default:
            throw ClientError.unexpected("\(r)")
        }
    }
}
