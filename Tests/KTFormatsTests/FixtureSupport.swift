import Foundation
import KTFormats
import XCTest

/// Locates and reads the recorded KT fixtures in `Fixtures/kt/`.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kt")

    static func bytes(_ path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: root.appendingPathComponent(path)))
    }

    static func jsonLines(_ path: String) throws -> [[String: Any]] {
        let text = String(decoding: try Data(contentsOf: root.appendingPathComponent(path)), as: UTF8.self)
        return try text.split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    static func recordedAt(_ set: String) throws -> Int64 {
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent("\(set)/meta.json"))) as? [String: Any])
        return try XCTUnwrap((meta["recorded_at"] as? NSNumber)?.int64Value)
    }

    /// The ulog files of a fixture set, in file-number order.
    static func ulogFiles(_ set: String) throws -> [(name: String, bytes: [UInt8])] {
        let dir = root.appendingPathComponent("\(set)/ulog")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            .filter { ULogFile.fileNumber(of: $0) != nil }.sorted()
        return try names.map { ($0, try bytes("\(set)/ulog/\($0)")) }
    }

    /// A database state: (db, key) → (value, xt).
    struct Entry: Hashable {
        var db: Int
        var key: [UInt8]
    }

    static func finalState(_ set: String) throws -> [Entry: KTRecordValue] {
        var out: [Entry: KTRecordValue] = [:]
        for line in try jsonLines("\(set)/final.jsonl") {
            let db = try XCTUnwrap((line["db"] as? NSNumber)?.intValue)
            let key = try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(line["key"] as? String)))
            let value = try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(line["value"] as? String)))
            let xt = (line["xt"] as? NSNumber)?.int64Value ?? KTExpiration.never
            out[Entry(db: db, key: [UInt8](key))] = KTRecordValue(value: [UInt8](value), xt: xt)
        }
        return out
    }

    /// Applies update messages in order and keeps what is live at `now`.
    static func replay(_ messages: [KTUpdateMessage], now: Int64) -> [Entry: KTRecordValue] {
        var state: [Entry: KTRecordValue] = [:]
        for m in messages {
            switch m.operation {
            case .set(let key, let value, let xt): state[Entry(db: Int(m.db), key: key)] = KTRecordValue(value: value, xt: xt)
            case .remove(let key): state[Entry(db: Int(m.db), key: key)] = nil
            case .clear: state = state.filter { $0.key.db != Int(m.db) }
            }
        }
        return state.filter { !KTExpiration.isExpired($0.value.xt, at: now) }
    }
}

struct KTRecordValue: Hashable {
    var value: [UInt8]
    var xt: Int64
}
