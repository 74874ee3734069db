import Foundation
import QSTesting
import XCTest

/// Helpers for recording tests: run `qsctl` with deadlines, read sidecars and `feed show`.
extension DaemonProcess {
    /// Waits for the process to exit by itself; kills it and fails after `timeout`.
    func exitStatus(within timeout: Duration = .seconds(60), file: StaticString = #filePath, line: UInt = #line) -> Int32? {
        guard Harness.waitUntil(timeout: timeout, { !isRunning }) else {
            kill(pid, SIGKILL)
            XCTFail("\(name) did not exit within \(timeout); log:\n\(log)", file: file, line: line)
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

func readMeta(_ recording: URL) throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: recording.path + ".meta.json"))
    return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
}

func fileSize(_ url: URL) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? NSNumber)?.intValue ?? 0
}

/// `qsctl feed show FILE args…`: exit status, the JSON lines, stderr.
func feedShow(_ file: URL, _ args: [String] = []) throws -> (status: Int32, lines: [[String: Any]], stderr: String) {
    let r = try Harness.run("qsctl", ["feed", "show", file.path] + args)
    let lines = try String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
    }
    return (r.status, lines, String(decoding: r.stderr, as: UTF8.self))
}

func b64decode(_ any: Any?) -> [UInt8]? {
    (any as? String).flatMap { Data(base64Encoded: $0) }.map { [UInt8]($0) }
}

/// The QS keyspace that applying `feed show` lines gives, KT database `db`'s keys under
/// `prefixes[db]`.
func applied(_ lines: [[String: Any]], prefixes: [Int: String]) -> [[UInt8]: [UInt8]] {
    var out = [[UInt8]: [UInt8]]()
    for l in lines {
        guard let db = l["db"] as? Int, let prefix = prefixes[db], let key = b64decode(l["key"]) else { continue }
        let k = Array(prefix.utf8) + key
        if l["op"] as? String == "set" { out[k] = b64decode(l["value"]) } else { out[k] = nil }
    }
    return out
}
