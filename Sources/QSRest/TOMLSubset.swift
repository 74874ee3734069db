/// The part of TOML an ACL file uses, read strictly: `[table.sub]` headers, `key = value`
/// lines, `#` comments; values are basic strings (`"…"` with `\\`, `\"`, `\n`, `\t`
/// escapes), integers (`_` separators allowed), booleans and one-line arrays of those.
/// Anything else (multi-line values, inline tables, dates, floats, literal strings) is an
/// error naming its line, never a guess. No TOML package exists in the project's
/// dependency set, hence this reader; it is not a general TOML parser.
enum TOMLSubset {
    enum Value: Equatable, CustomStringConvertible {
        case string(String)
        case integer(Int64)
        case bool(Bool)
        case array([Value])

        var description: String {
            switch self {
            case let .string(s): return "\"\(s)\""
            case let .integer(n): return "\(n)"
            case let .bool(b): return "\(b)"
            case let .array(a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
            }
        }
    }

    /// One key's value and where it was written.
    struct Entry: Equatable {
        var value: Value
        var line: Int
    }

    /// A table: its dotted name, the line of its header, its keys.
    struct Table: Equatable {
        var name: [String]
        var line: Int
        var entries: [String: Entry]
        var order: [String]
    }

    struct ParseError: Error, CustomStringConvertible, Equatable {
        let line: Int
        let message: String
        var description: String { "line \(line): \(message)" }
    }

    /// The tables in file order; keys before the first header go to a table named `[]`.
    static func parse(_ text: String) throws -> [Table] {
        var tables = [Table(name: [], line: 0, entries: [:], order: [])]
        var seen = Set<[String]>()
        // "\r\n" is one Character in Swift: split on it too, or a line saved with CRLF ran
        // into the next one (a CRLF comment line swallowed the key after it, silently).
        for (i, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let line = i + 1
            var s = Substring(raw)
            if s.last == "\r" { s = s.dropLast() }
            s = trimmed(s)
            if s.isEmpty || s.first == "#" { continue }
            if s.first == "[" {
                guard !s.hasPrefix("[[") else { throw ParseError(line: line, message: "arrays of tables ([[…]]) are not used in this file") }
                let body = stripComment(s, line: line)
                guard body.last == "]" else { throw ParseError(line: line, message: "a table header must end with ]") }
                let name = try body.dropFirst().dropLast().split(separator: ".", omittingEmptySubsequences: false).map { part in
                    let p = trimmed(part)
                    guard isBareKey(p) else {
                        throw ParseError(line: line, message: "'\(p)' is not a bare key (letters, digits, _ and -)")
                    }
                    return String(p)
                }
                guard seen.insert(name).inserted else {
                    throw ParseError(line: line, message: "table [\(name.joined(separator: "."))] is defined twice")
                }
                tables.append(Table(name: name, line: line, entries: [:], order: []))
                continue
            }
            guard let eq = s.firstIndex(of: "=") else {
                throw ParseError(line: line, message: "expected key = value or a [table] header")
            }
            let key = trimmed(s[..<eq])
            guard isBareKey(key) else {
                throw ParseError(line: line, message: "'\(key)' is not a bare key (letters, digits, _ and -)")
            }
            var rest = trimmed(s[s.index(after: eq)...])
            let value = try parseValue(&rest, line: line)
            rest = trimmed(rest)
            guard rest.isEmpty || rest.first == "#" else {
                throw ParseError(line: line, message: "unexpected '\(rest.prefix(20))' after the value")
            }
            let k = String(key)
            guard tables[tables.count - 1].entries[k] == nil else {
                throw ParseError(line: line, message: "key '\(k)' is given twice in this table")
            }
            tables[tables.count - 1].entries[k] = Entry(value: value, line: line)
            tables[tables.count - 1].order.append(k)
        }
        return tables
    }

    private static func trimmed(_ s: Substring) -> Substring {
        var s = s
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }

    private static func stripComment(_ s: Substring, line: Int) -> Substring {
        guard let hash = s.firstIndex(of: "#") else { return s }
        return trimmed(s[..<hash])
    }

    private static func isBareKey(_ s: Substring) -> Bool {
        !s.isEmpty && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
    }

    private static func parseValue(_ s: inout Substring, line: Int) throws -> Value {
        guard let first = s.first else { throw ParseError(line: line, message: "a value is missing after =") }
        switch first {
        case "\"":
            if s.hasPrefix("\"\"\"") { throw ParseError(line: line, message: "multi-line strings are not used in this file") }
            s = s.dropFirst()
            var out = ""
            while let c = s.first {
                s = s.dropFirst()
                switch c {
                case "\"": return .string(out)
                case "\\":
                    guard let e = s.first else { break }
                    s = s.dropFirst()
                    switch e {
                    case "\\": out.append("\\")
                    case "\"": out.append("\"")
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    default: throw ParseError(line: line, message: "unsupported escape \\\(e) in a string")
                    }
                default: out.append(c)
                }
            }
            throw ParseError(line: line, message: "unterminated string (a string ends with \" on the same line)")
        case "'":
            throw ParseError(line: line, message: "use \"double-quoted\" strings")
        case "[":
            s = s.dropFirst()
            var items = [Value]()
            while true {
                s = trimmed(s)
                if s.first == "]" {
                    s = s.dropFirst()
                    return .array(items)
                }
                guard !s.isEmpty, s.first != "#" else {
                    throw ParseError(line: line, message: "unterminated array (write the whole array on one line)")
                }
                items.append(try parseValue(&s, line: line))
                s = trimmed(s)
                if s.isEmpty || s.first == "#" {
                    throw ParseError(line: line, message: "unterminated array (write the whole array on one line)")
                }
                if s.first == "," { s = s.dropFirst() } else if s.first != "]" {
                    throw ParseError(line: line, message: "expected , or ] in the array")
                }
            }
        case "t" where s.hasPrefix("true"):
            s = s.dropFirst(4)
            return .bool(true)
        case "f" where s.hasPrefix("false"):
            s = s.dropFirst(5)
            return .bool(false)
        case "{":
            throw ParseError(line: line, message: "inline tables are not used in this file")
        default:
            var text = ""
            while let c = s.first, c.isNumber || c == "_" || c == "+" || c == "-" {
                text.append(c)
                s = s.dropFirst()
            }
            if let c = s.first, c == "." || c == "e" || c == "E" || c == ":" {
                throw ParseError(line: line, message: "only whole numbers are used in this file")
            }
            let digits = text.filter { $0 != "_" }
            guard !text.isEmpty, !text.hasPrefix("_"), !text.hasSuffix("_"), !text.contains("__"),
                  let n = Int64(digits) else {
                throw ParseError(line: line, message: "'\(s.prefix(20))' is not a value (a \"string\", a number, true/false or [array])")
            }
            return .integer(n)
        }
    }
}
