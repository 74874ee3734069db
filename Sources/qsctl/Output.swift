import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `--output`: every subcommand that prints results takes it (`QS_CTL_<SUBCOMMAND>_OUTPUT`).
/// `table` is for people (keys and values escaped to printable text), `json` one JSON
/// document (a listing is one array), `jsonl` one JSON object per line.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case table, json, jsonl
}

/// The subcommand's `--output` option with its default and variable.
func outputHelp(_ variable: String, _ what: String) -> ArgumentHelp {
    ArgumentHelp("table, json or jsonl: \(what) (env: \(variable))", valueName: "format")
}

/// Writes a subcommand's results in the chosen format, buffered, to standard output.
/// A listing in `json` is streamed as one array; `jsonl` writes an object a line.
struct Output {
    let format: OutputFormat
    private let listing: Bool
    private var buffer = [UInt8]()
    private var items = 0

    init(_ format: OutputFormat, listing: Bool) {
        self.format = format
        self.listing = listing
    }

    /// One result: its JSON object, and its table line(s) (built only when needed).
    mutating func item(json: @autoclosure () -> String, table: @autoclosure () -> String) {
        switch format {
        case .table:
            buffer += Array(table().utf8)
            buffer.append(10)
        case .jsonl:
            buffer += Array(json().utf8)
            buffer.append(10)
        case .json:
            if listing { buffer += Array((items == 0 ? "[\n" : ",\n").utf8) }
            buffer += Array(json().utf8)
            if !listing { buffer.append(10) }
        }
        items += 1
        if buffer.count >= 1 << 16 { flush() }
    }

    /// A line only the table shows (a heading, a blank line).
    mutating func tableLine(_ line: String) {
        guard format == .table else { return }
        buffer += Array(line.utf8)
        buffer.append(10)
    }

    mutating func flush() {
        Stdout.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Ends the output: closes a JSON listing (an empty one is `[]`) and flushes.
    mutating func finish() {
        if format == .json && listing { buffer += Array((items == 0 ? "[]\n" : "\n]\n").utf8) }
        flush()
    }
}

/// Standard output through write(2). A reader that went away (`qsctl dump | head -1`)
/// ends qsctl as it ends every Unix filter: quietly, by SIGPIPE (status 141), no message.
/// (NIO ignores SIGPIPE for its sockets, so without this a closed pipe would be EPIPE
/// and Foundation's FileHandle would trap.)
enum Stdout {
    static func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.write(1, base + offset, raw.count - offset)
            }
            if n > 0 {
                offset += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                if n < 0 && errno == EPIPE {
                    signal(SIGPIPE, SIG_DFL)
                    raise(SIGPIPE)
                }
                Foundation.exit(Exit.serverError.rawValue)
            }
        }
    }
}

/// A key or value as printable text: printable ASCII as is, `\\`, `\t`, `\n`, `\r`, and
/// `\xNN` for every other byte, so binary keys stay on one line and can be told apart.
func printable(_ bytes: [UInt8]) -> String {
    var out = ""
    out.reserveCapacity(bytes.count)
    let hex = Array("0123456789abcdef".utf8)
    for b in bytes {
        switch b {
        case UInt8(ascii: "\\"): out += "\\\\"
        case 9: out += "\\t"
        case 10: out += "\\n"
        case 13: out += "\\r"
        case 0x20...0x7e: out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            out += "\\x"
            out.unicodeScalars.append(Unicode.Scalar(hex[Int(b >> 4)]))
            out.unicodeScalars.append(Unicode.Scalar(hex[Int(b & 15)]))
        }
    }
    return out
}
