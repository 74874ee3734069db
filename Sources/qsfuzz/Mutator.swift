import Foundation
import QSBytes

/// The ordinary build's fuzzing: inputs mutated from a target's seeds with a fixed random
/// sequence (the same inputs on every run), through the same checks as libFuzzer's run.
/// No coverage guidance and no sanitizer — that is `make fuzz` — but every decoder meets
/// thousands of damaged inputs (bits flipped, bytes inserted, removed, repeated, lengths
/// made huge, seeds spliced, truncated) in every `make test`.
enum Mutator {
    /// The seeded generator: the sequence is the same on every run.
    typealias Random = SplitMix64

    /// Runs `runs` mutated inputs through `target`; returns how many ran.
    static func run(_ target: FuzzTarget, seedDirectory: String, runs: Int) -> Int {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: seedDirectory)) ?? []).sorted()
        var seeds = names.compactMap { FileManager.default.contents(atPath: seedDirectory + "/" + $0).map { [UInt8]($0) } }
        if seeds.isEmpty { seeds = [[]] }
        var random = Random(seed: target.rawValue.utf8.reduce(UInt64(0x5153_4655_5A5A)) { $0 &* 31 &+ UInt64($1) })
        for seed in seeds { target.run(seed) }
        for _ in 0..<runs {
            var input = seeds[random.below(seeds.count)]
            for _ in 0...random.below(8) { mutate(&input, &random, seeds) }
            if input.count > FuzzTarget.maxInputBytes { input.removeLast(input.count - FuzzTarget.maxInputBytes) }
            target.run(input)
        }
        return seeds.count + runs
    }

    static func mutate(_ b: inout [UInt8], _ r: inout Random, _ seeds: [[UInt8]]) {
        switch r.below(9) {
        case 0 where !b.isEmpty: // flip a bit
            b[r.below(b.count)] ^= UInt8(1 << r.below(8))
        case 1 where !b.isEmpty: // a random byte, or an edge value
            let edges: [UInt8] = [0, 1, 0x7F, 0x80, 0xFF, 0x09, 0x0A, 0x0D, 0x20, 0x25, 0x3D, 0x26]
            b[r.below(b.count)] = r.below(2) == 0 ? UInt8(truncatingIfNeeded: r.next()) : edges[r.below(edges.count)]
        case 2: // insert random bytes
            let at = r.below(b.count + 1)
            b.insert(contentsOf: (0..<(1 + r.below(16))).map { _ in UInt8(truncatingIfNeeded: r.next()) }, at: at)
        case 3 where !b.isEmpty: // remove a range
            let at = r.below(b.count)
            b.removeSubrange(at..<min(b.count, at + 1 + r.below(32)))
        case 4 where !b.isEmpty: // repeat a range
            let at = r.below(b.count)
            let piece = b[at..<min(b.count, at + 1 + r.below(64))]
            b.insert(contentsOf: piece, at: r.below(b.count + 1))
        case 5 where b.count >= 4: // a length-looking field made huge or zero
            let at = r.below(b.count - 3)
            let values: [UInt32] = [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x0100_0000, UInt32(b.count)]
            let v = values[r.below(values.count)]
            for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * i)) }
        case 6: // splice with another seed
            let other = seeds[r.below(seeds.count)]
            b = Array(b.prefix(r.below(b.count + 1))) + Array(other.suffix(r.below(other.count + 1)))
        case 7 where !b.isEmpty: // truncate
            b.removeLast(1 + r.below(b.count))
        default: // append a random byte
            b.append(UInt8(truncatingIfNeeded: r.next()))
        }
    }
}

extension SplitMix64 {
    /// A number in 0..<n (0 when n <= 1).
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
}
