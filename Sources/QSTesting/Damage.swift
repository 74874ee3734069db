import Foundation

/// Damages a stopped node's data file as a failing disk would: flips one bit of every
/// copy of `marker` in `file` (a value written for the purpose; LMDB keeps short values
/// inline in their page). Returns how many copies were flipped.
@discardableResult
public func flipByte(in file: URL, of marker: [UInt8]) throws -> Int {
    var bytes = [UInt8](try Data(contentsOf: file))
    var flipped = 0
    var i = 0
    while i + marker.count <= bytes.count {
        if bytes[i] == marker[0], Array(bytes[i..<(i + marker.count)]) == marker {
            bytes[i + marker.count / 2] ^= 0x01
            flipped += 1
            i += marker.count
        } else {
            i += 1
        }
    }
    try Data(bytes).write(to: file)
    return flipped
}

/// Cuts `file` to `length` bytes, as a full disk or an interrupted copy leaves it.
public func truncate(_ file: URL, to length: Int) throws {
    let handle = try FileHandle(forWritingTo: file)
    try handle.truncate(atOffset: UInt64(length))
    try handle.close()
}
