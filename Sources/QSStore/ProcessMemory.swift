import Foundation

/// A process's memory as the kernel counts it, so a node can report its own memory apart
/// from what its engine holds (`EngineMemory`), and benchmarks can report a peak.
public enum ProcessMemory {
    /// A field of /proc/PID/status given in kB (`RssAnon`: the heap and stacks, RocksDB's
    /// cache included, LMDB's file-backed map not; `VmHWM`: the peak resident set) in
    /// bytes, of this process when `pid` is nil; nil when it cannot be read.
    public static func statusBytes(_ field: String, pid: Int32? = nil) -> Int? {
        let path = pid.map { "/proc/\($0)/status" } ?? "/proc/self/status"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
        }
        return nil
    }
}
