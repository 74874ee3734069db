/// How values stored by KT's memcached plug-in map to memcached replies.
///
/// With `opts=f` the plug-in appends the client's 32-bit flags to every value it stores
/// (big-endian, last 4 bytes) and strips them again on `get`; values of fewer than 4 bytes
/// (written through another interface) are returned whole with flags 0. QS holds KT's
/// values byte for byte, so a node does the same when `flagsInValue` is set.
public struct MemcachedValueFormat: Sendable, Equatable {
    public var flagsInValue: Bool

    public init(flagsInValue: Bool = false) {
        self.flagsInValue = flagsInValue
    }

    /// The flags and the data a client sees for a stored value.
    public func split<Bytes: RandomAccessCollection<UInt8>>(_ value: Bytes) -> (flags: UInt32, data: Bytes.SubSequence) {
        guard flagsInValue, value.count >= 4 else { return (0, value[...]) }
        let cut = value.index(value.endIndex, offsetBy: -4)
        var flags: UInt32 = 0
        for b in value[cut...] { flags = flags << 8 | UInt32(b) }
        return (flags, value[..<cut])
    }

    /// The cas unique `gets` reports: FNV-1a (64 bits) of the stored value, flags included,
    /// and its expiry. It depends only on the record, so every node of a tree reports the
    /// same number for the same record, across restarts, and it changes when the record
    /// does. (QS accepts no `cas` writes; the number lets clients that require one work.)
    public static func casUnique<Bytes: Sequence<UInt8>>(value: Bytes, expiry: UInt64?) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in value {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01B3
        }
        var x = expiry ?? UInt64.max
        for _ in 0..<8 {
            h ^= x & 0xFF
            h &*= 0x0000_0100_0000_01B3
            x >>= 8
        }
        return h
    }
}
