import CRocksDB
import Foundation
import Glibc

/// A RocksDB checkpoint as one stream of bytes, so that a snapshot travels as LMDB's
/// copy does (one size, one byte stream): `QSROCKS1`, then per file its name's length
/// (u16 big endian), its name, its length (u64 big endian) and its bytes; a name length of
/// 0 ends it. The receiver tells the two formats apart by the magic.
enum RocksDBCheckpointPack {
    static let magic = Array("QSROCKS1".utf8)

    /// Packs every file of `directory` into a new file at `path`.
    static func pack(directory: String, into path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let out = FileHandle(forWritingAtPath: path) else {
            throw StoreError.io("cannot create the snapshot file \(path)")
        }
        defer { try? out.close() }
        try out.write(contentsOf: magic)
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
            let file = directory + "/" + name
            let size = try (FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.uint64Value ?? 0
            var header = [UInt8]()
            let n = UInt16(name.utf8.count)
            header += [UInt8(n >> 8), UInt8(n & 0xff)] + Array(name.utf8)
            for shift in stride(from: 56, through: 0, by: -8) { header.append(UInt8((size >> UInt64(shift)) & 0xff)) }
            try out.write(contentsOf: header)
            guard let input = FileHandle(forReadingAtPath: file) else { throw StoreError.io("cannot read \(file)") }
            defer { try? input.close() }
            var left = size
            while left > 0 {
                guard let chunk = try input.read(upToCount: Int(min(left, 1 << 20))), !chunk.isEmpty else {
                    throw StoreError.io("\(file) ended before its \(size) bytes")
                }
                try out.write(contentsOf: chunk)
                left -= UInt64(chunk.count)
            }
        }
        try out.write(contentsOf: [UInt8(0), 0])
        try out.synchronize()
    }

    /// Whether the file at `path` starts with the pack's magic.
    static func isPack(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: magic.count)).map { Array($0) == magic } ?? false
    }

    /// Unpacks the file at `path` into `directory` (created), refusing names that would
    /// leave it.
    static func unpack(_ path: String, into directory: String) throws {
        guard let input = FileHandle(forReadingAtPath: path) else { throw StoreError.io("cannot read the snapshot file \(path)") }
        defer { try? input.close() }
        func read(_ count: Int) throws -> [UInt8] {
            guard count > 0 else { return [] }
            guard let d = try input.read(upToCount: count), d.count == count else {
                throw StoreError.corrupt("the snapshot file \(path) ends in the middle of a RocksDB checkpoint")
            }
            return Array(d)
        }
        guard try read(magic.count) == magic else { throw StoreError.corrupt("\(path) is not a RocksDB checkpoint") }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        while true {
            let n = try read(2)
            let length = Int(n[0]) << 8 | Int(n[1])
            if length == 0 { return }
            let name = String(decoding: try read(length), as: UTF8.self)
            guard !name.contains("/"), name != ".", name != ".." else {
                throw StoreError.corrupt("the snapshot names a file '\(name)' outside its directory")
            }
            var size: UInt64 = 0
            for b in try read(8) { size = size << 8 | UInt64(b) }
            let file = directory + "/" + name
            guard FileManager.default.createFile(atPath: file, contents: nil), let out = FileHandle(forWritingAtPath: file) else {
                throw StoreError.io("cannot create \(file)")
            }
            defer { try? out.close() }
            var left = size
            while left > 0 {
                let chunk = try read(Int(min(left, 1 << 20)))
                try out.write(contentsOf: chunk)
                left -= UInt64(chunk.count)
            }
            try out.synchronize()
        }
    }
}
