import Foundation
/// A configuration value (a flag, its variable, an upstream file) that does not parse:
/// the message names it and what is expected.
public struct ConfigError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Duration {
    /// Seconds as a Double.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// A file system error in the system's words ("No such file or directory"), not
/// Foundation's `Error Domain=NSCocoaErrorDomain Code=4 …` dump.
public func fileErrorText(_ error: any Error) -> String {
    let ns = error as NSError
    if let inner = ns.userInfo[NSUnderlyingErrorKey] as? any Error, (inner as NSError).domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32((inner as NSError).code)))
    }
    if ns.domain == NSCocoaErrorDomain, ns.code == CocoaError.fileNoSuchFile.rawValue || ns.code == CocoaError.fileWriteNoPermission.rawValue {
        return ns.code == CocoaError.fileNoSuchFile.rawValue ? "No such file or directory" : "Permission denied"
    }
    if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
    if ns.domain == NSCocoaErrorDomain, ns.code == CocoaError.fileWriteFileExists.rawValue { return "a file is in the way" }
    return "\(error)"
}
