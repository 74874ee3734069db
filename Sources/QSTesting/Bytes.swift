/// `count` bytes that do not compress (a fixed pseudo-random sequence from `seed`): for
/// tests whose values must take their full size on disk and on the wire whichever engine
/// stores them (RocksDB compresses its blocks; a run of one byte shrinks to nothing).
public func incompressibleBytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}
