/// A Kyoto Cabinet database error as KT reports it: `DB: <code>: <name>: <message>`.
public struct KTDBError: Error, Sendable, Equatable {
    public var code: Int
    public var name: String
    public var message: String

    public var text: String { "DB: \(code): \(name): \(message)" }

    public static let notImplemented = KTDBError(code: 1, name: "not implemented", message: "not implemented")
    public static let duplicateRecord = KTDBError(code: 6, name: "record duplication", message: "record duplication")
    public static let noRecord = KTDBError(code: 7, name: "no record", message: "no record")
    public static let logic = KTDBError(code: 8, name: "logical inconsistency", message: "logical inconsistency")
    public static let statusConflict = KTDBError(code: 8, name: "logical inconsistency", message: "status conflict")
    public static func invalid(_ message: String) -> KTDBError {
        KTDBError(code: 2, name: "invalid operation", message: message)
    }
}
