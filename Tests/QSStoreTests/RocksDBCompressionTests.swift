import Foundation
import QSModel
import QSStore
import XCTest

/// `--rocksdb-compression lz4|zstd|none` reaches RocksDB through its C API: each SST file
/// names the compression its blocks were written with (its `rocksdb.compression` table
/// property), the compressed stores are smaller, and every record reads back.
final class RocksDBCompressionTests: XCTestCase {
    func testEachCompressionIsWrittenAsNamedAndReadsBack() async throws {
        var sstBytes = [RocksDBCompression: Int]()
        for compression in RocksDBCompression.allCases {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rocks-\(compression)-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var store: Store? = try await Store.open(directory: dir, noSync: true, engine: .rocksdb, rocksDB: .init(compression: compression))
            func value(_ i: Int) -> [UInt8] {
                Array(String(repeating: "{\"action\":\"block\",\"expr\":\"ip.src in 10.\(i % 256).0.0/16\"}", count: 8).utf8)
            }
            let ops: [Mutation] = (0..<2_000).map { .set(key: Array("zone:\($0 / 50)/rule:\($0)".utf8), value: value($0), expiry: nil) }
            _ = try await store?.applyBatch(sourceID: "t", expected: 0, new: 1, operations: ops)
            try await store?.settle()
            store = nil // closed: RocksDB's lock on the directory is released

            var names = Set<String>(), bytes = 0
            for file in try FileManager.default.contentsOfDirectory(atPath: dir) where file.hasSuffix(".sst") {
                let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + file))
                bytes += data.count
                for name in ["ZSTD", "LZ4", "NoCompression"] where data.range(of: Data(name.utf8)) != nil { names.insert(name) }
            }
            let expected = ["lz4": "LZ4", "zstd": "ZSTD", "none": "NoCompression"][compression.rawValue]!
            XCTAssertTrue(names.contains(expected), "\(compression): SST files name \(names.sorted()), not \(expected)")
            sstBytes[compression] = bytes

            // Opened again with the default (LZ4) options: the blocks say how they were written.
            let reopened = try await Store.open(directory: dir, readOnly: true, engine: .rocksdb)
            let record = try await reopened.get(Array("zone:39/rule:1999".utf8))
            XCTAssertEqual(record?.value, value(1_999), "\(compression): a record did not read back")
        }
        let none = try XCTUnwrap(sstBytes[.none]), lz4 = try XCTUnwrap(sstBytes[.lz4]), zstd = try XCTUnwrap(sstBytes[.zstd])
        XCTAssertLessThan(lz4, none / 2, "LZ4 did not compress: \(sstBytes)")
        XCTAssertLessThan(zstd, none / 2, "zstd did not compress: \(sstBytes)")
    }
}
