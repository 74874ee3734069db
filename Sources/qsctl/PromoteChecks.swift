import ArgumentParser
import Foundation
import NIOCore
import QSBytes
import QSClient
import QSDaemon
import QSModel
import QSNet
import QSWire

/// What `qsctl promote` asks before it turns a compatible mirror into a root: each source
/// and what it is fed from in turn (`Promote.checkTheSources`).
extension Promote {
    enum Finding: Sendable {
        /// Takes writes: promoting the mirror would make two roots.
        case writable
        /// Holds entries past the mirror's head on its history (or any, on another).
        case longer(Head)
        /// Another history than the mirror's, not longer.
        case other(Head)
        /// Could not be asked.
        case silent(String)
        /// Answers but refuses qsctl's token.
        case refused(String)
        /// Holds no more than the mirror (a demoted source at its head, a replica behind it).
        case holdsNoMore
    }

    struct Answer: Sendable {
        /// The node's address, and with the chain it was reached through.
        var address: String
        var name: String
        var finding: Finding
    }

    /// Asks every node in `sources`, and what each is fed from in turn — a mirror's own
    /// sources (live, silent or seen), a replica's upstream — up to `maxHops` hops, each node
    /// once, the nodes of one hop at once. A mirror fed from another mirror or from a
    /// replica is as much a copy of the root at the chain's end as of its first hop: that
    /// root taking writes, or holding more, is what promoting would fork from.
    /// How far `ask` follows a chain of copies: each node is asked once, so a cycle ends.
    static let maxHops = 16

    static func ask(_ sources: [Address], options: NodeOptions, mine: Head) async -> [Answer] {
        var answers = [Answer]()
        var seen = Set(sources.map { "\($0)" } + ["\(options.node)"])
        var hop = sources.map { (address: $0, via: [String]()) }
        for _ in 0..<Self.maxHops where !hop.isEmpty {
            let results = await withTaskGroup(of: (Answer, [Address], [String]).self) { group in
                for (address, via) in hop {
                    group.addTask {
                        let name = via.isEmpty ? "\(address)" : "\(address) (through \(via.joined(separator: ", then ")))"
                        let (finding, next) = await askOne(address, options: options, mine: mine)
                        return (Answer(address: "\(address)", name: name, finding: finding), next, via + ["\(address)"])
                    }
                }
                var out = [(Answer, [Address], [String])]()
                for await r in group { out.append(r) }
                return out
            }
            hop = []
            for (answer, next, via) in results {
                answers.append(answer)
                for address in next where seen.insert("\(address)").inserted { hop.append((address, via)) }
            }
        }
        // Fed through more than `maxHops` copies: the nodes beyond are not asked, and count
        // as sources that do not answer (--force passes them, as the operator decides).
        for (address, via) in hop {
            answers.append(Answer(address: "\(address)", name: "\(address) (through \(via.joined(separator: ", then ")))",
                                  finding: .silent("not asked: more than \(Self.maxHops) copies away")))
        }
        return answers
    }

    /// What `address` says and what it is fed from.
    static func askOne(_ address: Address, options: NodeOptions, mine: Head) async -> (Finding, [Address]) {
        var o = options
        o.node = address
        do {
            let (token, read) = try options.tokens()
            let client = try await QSClient.connect(to: address.endpoint, token: token, readToken: read, requestTimeout: options.requestTimeAmount)
            defer { Task { await client.close() } }
            let status = NodeStatus.parse(try await client.status()) ?? [:]
            let role = status["write_role"] as? String
            if (status["mirror"] as? [String: Any])?["sources_seen_unknown"] as? Bool == true {
                return (.refused("it cannot say yet which roots it reads: a cluster member catching up with etcd"), [])
            }
            let theirs = try await client.head()
            // A node whose entry at the mirror's head differs, or that is behind the mirror
            // and takes writes, is on another history: not this mirror's source (an address
            // reused by another fleet's root, a bridge pointed at the wrong root). Asked like
            // one (--force passes it), not as a second root of this history or as one
            // holding writes the mirror lacks. One whose entry is not retained counts as the
            // same history.
            var otherHistory = false
            if mine.index > 0, theirs.index > mine.index,
               let at = try? await client.entries(from: mine.index, count: 1).first, at.index == mine.index, at.hash != mine.hash {
                otherHistory = true
            }
            if role == "open" || role == "promoted" {
                if otherHistory || theirs.index < mine.index || (theirs.index == mine.index && theirs.hash != mine.hash) {
                    return (.other(theirs), [])
                }
                return (.writable, [])
            }
            let next: [Address]
            if role == "replica" {
                next = ((status["upstream"] as? [String: Any])?["address"] as? String).flatMap { Address(argument: $0) }.map { [$0] } ?? []
            } else {
                next = NodeStatus.knownSources(status).map(Address.init)
            }
            // Demoted, or a copy on the way: the mirror takes its place only holding all it holds.
            if theirs.index > mine.index { return (otherHistory ? .other(theirs) : .longer(theirs), next) }
            if theirs.index == mine.index && theirs.hash == mine.hash { return (.holdsNoMore, next) }
            if role == "replica" && theirs.index < mine.index {
                // A replica on the way, behind: the same history if its head is in the
                // mirror's log.
                if let at = try? await options.withClient({ try await $0.entries(from: theirs.index, count: 1).first }), at.hash == theirs.hash {
                    return (.holdsNoMore, next)
                }
            }
            return (.other(theirs), next)
        } catch let ClientError.server(code, message) where ErrorCode(rawValue: code) == .unauthorized {
            return (.refused(message), [])
        } catch {
            return (.silent(o.describe(error)), [])
        }
    }
}
