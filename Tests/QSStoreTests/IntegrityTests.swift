import Foundation
import QSModel
import QSStore
import QSTesting
import XCTest

/// Damage is detected and never served: record checksums, the log chain, a truncated file,
/// old formats, snapshots of another history.
final class IntegrityTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("qs-integrity-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    static let marker = Array("MARKER-VALUE-0123456789-abcdef".utf8)

    /// A store holding `k0…k9`, `k5`'s value being the marker, its log trimmed away (so
    /// the marker is in the record only).
    func storeWithMarker(trim: Bool = true) async throws -> Head {
        let store = try Store(directory: dir.path)
        let ops: [Mutation] = (0..<10).map { i in
            .set(key: Array("k\(i)".utf8), value: i == 5 ? Self.marker : Array("v\(i)".utf8), expiry: nil)
        }
        _ = try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        _ = try await store.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [.set(key: Array("x".utf8), value: Array("y".utf8), expiry: nil)])
        if trim { try await store.trimLog(retain: 1) }
        return try await store.head()
    }

    func testAFlippedValueByteIsDetectedOnEveryReadPathAndNeverServed() async throws {
        try onlyOnLMDB("damage is made by flipping bytes of data.mdb")
        _ = try await storeWithMarker()
        XCTAssertGreaterThan(try flipByte(in: dir.appendingPathComponent("data.mdb"), of: Self.marker), 0)
        let store = try Store(directory: dir.path)
        XCTAssertNil(store.integrity.problem, "the log's tail is sound: nothing found at open")
        let told = Told()
        store.integrity.onProblem { told.add($0) }
        await throwsError(try await store.get(Array("k5".utf8))) { error in
            XCTAssertTrue("\(error)".contains("damaged record for key 'k5'"), "\(error)")
            XCTAssertTrue("\(error)".contains("checksum mismatch"), "\(error)")
        }
        XCTAssertThrowsError(try store.readInline { txn in try txn.withRecord(Array("k5".utf8)) { _ in () } })
        await throwsError(try await store.scan(limit: 100, now: nil))
        await equal(try await store.get(Array("k4".utf8))?.value, Array("v4".utf8), "sound records are still served")
        XCTAssertNotNil(store.integrity.problem)
        XCTAssertEqual(store.integrity.found, 3)
        XCTAssertEqual(told.lines.count, 1, "told once per damaged record, counted every time: \(told.lines)")
        let report = try await store.check()
        XCTAssertFalse(report.sound)
        XCTAssertEqual(report.recordsChecked, 11)
        XCTAssertEqual(report.problems.count, 1, "\(report.problems)")
        XCTAssertTrue(report.problems[0].contains("'k5'"), report.problems[0])
        // A write of the key replaces the damaged record.
        _ = try await store.applyBatch(sourceID: "s", expected: 2, new: 3, operations: [.set(key: Array("k5".utf8), value: Array("new".utf8), expiry: nil)])
        await equal(try await store.get(Array("k5".utf8))?.value, Array("new".utf8))
        await equal(try await store.check().sound, true)
    }

    func testADamagedLogEntryIsFoundAtOpenAndNeverStreamed() async throws {
        try onlyOnLMDB("damage is made by flipping bytes of data.mdb")
        let head = try await storeWithMarker(trim: false)
        try flipByte(in: dir.appendingPathComponent("data.mdb"), of: Self.marker)
        let store = try Store(directory: dir.path)
        let problem = try XCTUnwrap(store.integrity.problem, "the newest entries' chain is checked at open")
        XCTAssertTrue(problem.contains("hash chain broken at log index 1"), problem)
        await throwsError(try await store.entries(from: 1, count: 10))
        let report = try await store.check()
        XCTAssertTrue(report.problems.contains { $0.contains("log entry 1 does not match its chained hash") }, "\(report.problems)")
        XCTAssertTrue(report.problems.contains { $0.contains("'k5'") }, "\(report.problems)")
        XCTAssertEqual(head.index, 2)
    }

    /// An open whose caller checks the whole chain itself (`chainCheckedAt`, a bootstrap
    /// just received) skips its own check of the newest entries at that very head only:
    /// at any other head a damaged entry is found at open as always, and the caller's
    /// whole check finds it at the head it named.
    func testAnOpenSkipsItsTailCheckOnlyAtTheHeadItsCallerChecks() async throws {
        try onlyOnLMDB("damage is made by flipping bytes of data.mdb")
        let head = try await storeWithMarker(trim: false)
        try flipByte(in: dir.appendingPathComponent("data.mdb"), of: Self.marker)
        do {
            let another = Head(index: head.index, hash: [UInt8](repeating: 7, count: 32), commitTimeNs: 0)
            let store = try Store(directory: dir.path, chainCheckedAt: another)
            let problem = try XCTUnwrap(store.integrity.problem, "another head: the tail is checked at open")
            XCTAssertTrue(problem.contains("hash chain broken at log index 1"), problem)
        }
        let store = try Store(directory: dir.path, chainCheckedAt: head)
        XCTAssertNil(store.integrity.problem, "at the head named, the caller checks")
        await throwsError(try await store.verifyChain())
    }

    /// The whole chain checked in two halves at once (a snapshot received) passes a sound
    /// log and finds a damaged entry in either half, naming it.
    func testTheChainCheckedInHalvesFindsADamagedEntryInEitherHalf() async throws {
        try onlyOnLMDB("damage is made by flipping bytes of data.mdb")
        for damaged in [2, 5] {
            let path = dir.appendingPathComponent("\(damaged)")
            do {
                let store = try Store(directory: path.path)
                for i in 1...6 {
                    let value = i == damaged ? Self.marker : Array("v\(i)".utf8)
                    _ = try await store.applyBatch(sourceID: "s", expected: UInt64(i - 1), new: UInt64(i),
                                                   operations: [.set(key: Array("k\(i)".utf8), value: value, expiry: nil)])
                }
            }
            do { try Store(directory: path.path, readOnly: true).verifyChainInHalves() }
            try flipByte(in: path.appendingPathComponent("data.mdb"), of: Self.marker)
            let copy = try Store(directory: path.path, readOnly: true)
            XCTAssertThrowsError(try copy.verifyChainInHalves(), "entry \(damaged) of 6") { error in
                XCTAssertTrue("\(error)".contains("hash chain broken at log index \(damaged)"), "\(error)")
            }
        }
    }

    func testATruncatedDataFileIsRefusedAtOpenInWordsNotWithSIGBUS() async throws {
        try onlyOnLMDB("the data file is data.mdb")
        let store = try Store(directory: dir.path)
        let big = [UInt8](repeating: 7, count: 3000)
        for i in 0..<40 {
            _ = try await store.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1),
                                           operations: [.set(key: Array("k\(i)".utf8), value: big, expiry: nil)])
        }
        let file = dir.appendingPathComponent("data.mdb")
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: file.path)[.size] as? Int)
        try truncate(file, to: size / 2)
        for readOnly in [false, true] {
            XCTAssertThrowsError(try Store(directory: dir.path, readOnly: readOnly)) { error in
                XCTAssertTrue("\(error)".contains("was truncated"), "\(error)")
                XCTAssertTrue("\(error)".contains("bytes but its environment uses"), "\(error)")
            }
        }
    }

    func testAFormat1StoreIsUpgradedAndANewerFormatIsRefused() async throws {
        // A format 1 store, as earlier builds wrote it: `flags value`, no checksum.
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        do {
            let env = try LMDBEnvironment(path: dir.path)
            let kv = try env.openDatabase("kv")
            _ = try env.openDatabase("log")
            let meta = try env.openDatabase("meta")
            try env.write { txn in
                try txn.put(meta, Array("format".utf8), [1])
                for i in 0..<25_000 { try txn.put(kv, [0x01] + Array("key\(i)".utf8), [0] + Array("value\(i)".utf8)) }
                try txn.put(kv, [0x01] + Array("xt".utf8), [1, 0, 0, 0, 0, 0x7F, 0, 0, 0] + Array("expiring".utf8))
            }
        }
        let store = try Store(directory: dir.path)
        XCTAssertEqual(store.format, 2)
        await equal(try await store.get(Array("key24999".utf8))?.value, Array("value24999".utf8))
        await equal(try await store.get(Array("xt".utf8)), Record(value: Array("expiring".utf8), expiry: 0x7F00_0000))
        let report = try await store.check()
        XCTAssertTrue(report.sound, "\(report.problems)")
        XCTAssertEqual(report.recordsChecked, 25_001)
        // A store from a newer build is refused, in words.
        let other = dir.appendingPathComponent("newer")
        do {
            let env = try LMDBEnvironment(path: { try? FileManager.default.createDirectory(at: other, withIntermediateDirectories: true); return other.path }())
            let meta = try env.openDatabase("meta")
            try env.write { txn in try txn.put(meta, Array("format".utf8), [9]) }
        }
        XCTAssertThrowsError(try Store(directory: other.path)) { error in
            XCTAssertTrue("\(error)".contains("format 9"), "\(error)")
            XCTAssertTrue("\(error)".contains("written by a newer qsnode"), "\(error)")
        }
    }

    func testASnapshotOfAnotherHistoryIsRefusedAndOneContinuingTheHeadIsInstalled() async throws {
        let mine = try Store(directory: dir.appendingPathComponent("mine").path)
        let same = try Store(directory: dir.appendingPathComponent("same").path)
        let foreign = try Store(directory: dir.appendingPathComponent("foreign").path)
        for i in 0..<3 {
            let op: [Mutation] = [.set(key: Array("k\(i)".utf8), value: Array("v\(i)".utf8), expiry: nil)]
            _ = try await mine.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: op)
        }
        // `same` continues mine's history (it replicated it), then goes on.
        try await same.appendEntries(try await mine.entries(from: 1, count: 10))
        for i in 0..<20 {
            _ = try await foreign.applyBatch(sourceID: "f", expected: UInt64(i), new: UInt64(i + 1),
                                             operations: [.set(key: Array("f\(i)".utf8), value: [1], expiry: nil)])
            _ = try await same.applyBatch(sourceID: "s", expected: UInt64(i + 3), new: UInt64(i + 4),
                                          operations: [.set(key: Array("more\(i)".utf8), value: [1], expiry: nil)])
        }
        // Both trimmed well past mine's head (3): only the trail proves what index 3 was.
        try await foreign.trimLog(retain: 2)
        try await same.trimLog(retain: 2)
        await equal(try await same.hash(at: 3), nil, "entry 3 is trimmed away")
        let myHead = try await mine.head()
        await equal(try await same.read { try $0.provableHash(at: 3) }, Optional(myHead.hash))

        func install(_ from: Store) async throws -> Head {
            try await from.withSnapshot { file in
                try await mine.installSnapshot(continuing: myHead) { writer in
                    try await writer.write(try await file.read(at: 0, upTo: Int(file.size)))
                    return file.head
                }
            }
        }
        await throwsError(try await install(foreign)) { error in
            guard case StoreError.snapshotDiverged = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("index 3"), "\(error)")
        }
        await equal(try await mine.head(), myHead, "nothing changed")
        await equal(try await mine.get(Array("f0".utf8)), nil)
        let installed = try await install(same)
        await equal(try await same.head(), installed)
        await equal(try await mine.get(Array("more19".utf8))?.value, [1])
        await equal(try await mine.read { try $0.provableHash(at: 3) }, Optional(myHead.hash), "the trail travels with the snapshot")
    }
}

final class Told: @unchecked Sendable {
    private let lock = NSLock()
    private var list = [String]()
    func add(_ s: String) { lock.withLock { list.append(s) } }
    var lines: [String] { lock.withLock { list } }
}
