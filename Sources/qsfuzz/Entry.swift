import Foundation

#if QS_FUZZ
// Built with `-sanitize=fuzzer,address -DQS_FUZZ` (`make fuzz`): libFuzzer owns `main` and
// calls these; QS_FUZZ_TARGET names the decoder (`qsfuzz list` in a normal build lists them).

nonisolated(unsafe) private var selected: FuzzTarget?

@_silgen_name("LLVMFuzzerRunDriver")
private func runDriver(_ argc: UnsafeMutablePointer<CInt>,
                       _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                       _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM links a debug executable with `main` standing for `qsfuzz_main` (so tests can
/// import executables); here that entry hands the process to libFuzzer's driver.
@_cdecl("qsfuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv, fuzzOneInput)
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> CInt {
    let name = ProcessInfo.processInfo.environment["QS_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
        FileHandle.standardError.write(Data("set QS_FUZZ_TARGET to one of: \(names)\n".utf8))
        exit(64)
    }
    selected = target
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let target = selected else { return 0 }
    target.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

#else

/// Without the fuzzer: `qsfuzz list`, `qsfuzz run TARGET FILE…` (replays inputs, e.g. a
/// crash the fuzzer saved, through a target), `qsfuzz seeds FIXTURES OUT` (writes the
/// seed corpus of every target from the recorded fixtures) and `qsfuzz mutate SEEDS RUNS`
/// (every target, RUNS inputs mutated from its seeds with a fixed random sequence: the
/// ordinary build's short, repeatable fuzz run that `make test` does).
@main
enum QSFuzz {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        switch args.first {
        case "list":
            for t in FuzzTarget.allCases { print(t.rawValue) }
        case "run" where args.count >= 2:
            guard let target = FuzzTarget(rawValue: args[1]) else { usage("unknown target \(args[1])") }
            for path in args.dropFirst(2) {
                guard let data = FileManager.default.contents(atPath: path) else { usage("cannot read \(path)") }
                target.run([UInt8](data))
            }
            print("\(target.rawValue): \(args.count - 2) inputs, no failure")
        case "mutate" where args.count == 3:
            guard let runs = Int(args[2]), runs > 0 else { usage("mutate: RUNS must be a positive number, not '\(args[2])'") }
            for t in FuzzTarget.allCases {
                let n = Mutator.run(t, seedDirectory: args[1] + "/" + t.rawValue, runs: runs)
                print("\(t.rawValue): \(n) mutated inputs, no failure")
            }
        case "seeds" where args.count == 3:
            do {
                let counts = try Seeds(fixtures: args[1]).write(to: args[2])
                for (t, n) in counts { print("\(t.rawValue): \(n) seeds") }
            } catch {
                usage("\(error)")
            }
        default:
            usage(nil)
        }
    }

    static func usage(_ problem: String?) -> Never {
        if let problem { FileHandle.standardError.write(Data("qsfuzz: \(problem)\n".utf8)) }
        FileHandle.standardError.write(Data("""
            usage: qsfuzz list | run TARGET FILE... | seeds FIXTURES_DIR OUT_DIR | mutate SEEDS_DIR RUNS
            The fuzzing build (make fuzz) runs a target with QS_FUZZ_TARGET=TARGET; see docs/reliability.md.

            """.utf8))
        exit(64)
    }
}

#endif
