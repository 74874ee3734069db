import Foundation
import QSClient
import QSModel
import QSTesting

/// The `fill` suite (scripts/container-memory.sh): a root that is already running (a
/// qsnode in a container with a memory limit) is filled with `bytes` of configuration-shaped
/// records (the engines suite's, `EnginesBench.record`) through the write protocol, in
/// batches of 5,000, and every key is then read back through its memcached port (gets of
/// 100 keys, the reads suite's client) and compared with what was written. What the node
/// holds in memory meanwhile is the script's to read (cgroup, /proc, /metrics).
struct FillBench {
    let bytes: Int
    let writeHost: String
    let writePort: Int
    let memcachedPort: Int

    struct Result: Codable {
        var records: Int
        var payloadBytes: Int
        var writeSeconds: Double
        var readSeconds: Double
        var recordsRead: Int
        var mismatches: Int
    }

    func run() async throws -> Result {
        let client = try await QSClient.connect(host: writeHost, port: writePort)
        var payload = 0, n = 0, batch: UInt64 = 0
        var start = ContinuousClock.now
        while payload < bytes {
            var ops = [Mutation]()
            ops.reserveCapacity(5_000)
            for _ in 0..<5_000 {
                let m = EnginesBench.record(n)
                if case let .set(k, v, _) = m { payload += k.count + v.count }
                ops.append(m)
                n += 1
            }
            let r = try await client.batch(sourceID: "fill", expected: batch, new: batch + 1, operations: ops)
            guard case .applied = r else { throw BenchError("fill: the root answered \(r) to batch \(batch + 1) (fill an empty root)") }
            batch += 1
            if n % 100_000 == 0 {
                FileHandle.standardError.write(Data("fill: \(n) records, \(payload >> 20) MiB\n".utf8))
            }
        }
        await client.close()
        let writeSeconds = (ContinuousClock.now - start).seconds

        start = ContinuousClock.now
        guard let fd = Harness.connectLoopback(port: memcachedPort) else { throw BenchError("fill: memcached port \(memcachedPort) not reachable") }
        defer { close(fd) }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var read = 0, mismatches = 0
        for from in stride(from: 0, to: n, by: 100) {
            let keys = (from..<min(n, from + 100)).map(EnginesBench.key)
            var answer = [UInt8]()
            let line = Array(("get " + keys.joined(separator: " ") + "\r\n").utf8)
            guard line.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == line.count else { throw BenchError("fill: send failed") }
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while !isMemcachedDone(answer) {
                let got = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard got > 0 else { throw BenchError("fill: memcached closed or timed out after \(read) records") }
                answer.append(contentsOf: buf[0..<got])
            }
            // VALUE <key> <flags> <bytes>\r\n<data>\r\n … END\r\n
            var i = 0, values = [String: ArraySlice<UInt8>]()
            while i < answer.count, answer[i...].starts(with: "VALUE ".utf8) {
                guard let eol = answer[i...].firstIndex(of: 10) else { break }
                let head = String(decoding: answer[i..<(eol - 1)], as: UTF8.self).split(separator: " ")
                guard head.count >= 4, let size = Int(head[3]) else { break }
                values[String(head[1])] = answer[(eol + 1)..<(eol + 1 + size)]
                i = eol + 1 + size + 2
            }
            for (j, key) in keys.enumerated() {
                guard case let .set(_, v, _) = EnginesBench.record(from + j) else { continue }
                if let got = values[key], got.elementsEqual(v) { read += 1 } else { mismatches += 1 }
            }
        }
        return Result(records: n, payloadBytes: payload, writeSeconds: writeSeconds, readSeconds: (ContinuousClock.now - start).seconds,
                      recordsRead: read, mismatches: mismatches)
    }
}
