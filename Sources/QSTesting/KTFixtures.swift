import Foundation
import QSClient
import QSModel

/// The recorded KT feeds under `Fixtures/kt/NAME/` and what they should produce.
public struct KTFixture: Sendable {
    public let directory: URL
    public let recordedAt: UInt64

    public init(_ name: String) throws {
        directory = Harness.packageRoot.appendingPathComponent("Fixtures/kt/\(name)")
        let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("meta.json"))) as? [String: Any]
        guard let at = meta?["recorded_at"] as? Int else { throw HarnessError("meta.json of \(name) has no recorded_at") }
        recordedAt = UInt64(at)
    }

    public var stream: URL { directory.appendingPathComponent("stream.bin") }
    public var ulog: URL { directory.appendingPathComponent("ulog") }

    /// `final.jsonl` as QS records under `prefixes` (KT db → key prefix), expiry judged at
    /// `recorded_at`: key → (value, xt).
    public func expectedState(prefixes: [Int: String]) throws -> [[UInt8]: Record] {
        var out = [[UInt8]: Record]()
        let text = try String(contentsOf: directory.appendingPathComponent("final.jsonl"), encoding: .utf8)
        for line in text.split(separator: "\n") {
            guard let r = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let db = r["db"] as? Int, let prefix = prefixes[db],
                  let k = (r["key"] as? String).flatMap({ Data(base64Encoded: $0) }),
                  let v = (r["value"] as? String).flatMap({ Data(base64Encoded: $0) }) else { continue }
            var xt = (r["xt"] as? Int).map { UInt64($0) }
            if let x = xt, x >= (1 << 40) - 1 { xt = nil }
            if let x = xt, x <= recordedAt { continue }
            out[Array(prefix.utf8) + [UInt8](k)] = Record(value: [UInt8](v), expiry: xt)
        }
        return out
    }
}

/// Every live record of a node, expiry judged at `at` (0: the node's clock).
public func dumpState(_ client: QSClient, at: UInt64 = 0) async throws -> [[UInt8]: Record] {
    var out = [[UInt8]: Record]()
    var cursor = [UInt8]()
    while true {
        let page = try await client.scan(cursor: cursor, limit: 1000, asOf: at)
        for r in page.records { out[r.key] = r.record }
        guard let next = page.next else { return out }
        cursor = next
    }
}

/// Reads a node's whole log and checks it: consecutive indexes, an unbroken hash chain
/// that ends at the head. `visit` sees each entry, decoded, in order.
public func walkLog(_ client: QSClient, _ visit: (_ index: UInt64, _ entry: LogEntry) throws -> Void) async throws {
    let head = try await client.head()
    var previous = Head.empty.hash
    var index: UInt64 = 1
    while index <= head.index {
        let list = try await client.entries(from: index, count: 1000)
        guard !list.isEmpty else { throw HarnessError("log ends at \(index - 1), head says \(head.index)") }
        for e in list {
            guard e.index == index else { throw HarnessError("log index \(e.index) where \(index) was expected") }
            let h = ChainHash.next(previous: previous, entry: e.bytes)
            guard h == e.hash else { throw HarnessError("hash chain broken at \(index)") }
            try visit(index, try LogEntry.decode(e.bytes))
            previous = h
            index += 1
        }
    }
    guard previous == head.hash else { throw HarnessError("head hash does not match the chain") }
}

/// Reads a node's whole log and checks it (`walkLog`), and for `sourceID` strictly
/// increasing positions (each applied at most once). Returns the positions of
/// `sourceID`'s entries.
public func verifyLog(_ client: QSClient, sourceID: String) async throws -> [UInt64] {
    var positions = [UInt64]()
    try await walkLog(client) { index, entry in
        guard entry.origin.sourceID == sourceID, entry.movesCheckpoint else { return }
        if let last = positions.last, entry.origin.position <= last {
            throw HarnessError("position \(entry.origin.position) of \(sourceID) applied after \(last) (index \(index))")
        }
        positions.append(entry.origin.position)
    }
    return positions
}
