/// A wait that took longer than its deadline.
public struct TimedOut: Error, CustomStringConvertible {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}

/// Runs `operation`, throwing `TimedOut` when it has not finished within `timeout` (the
/// operation is then cancelled, and awaited: it must honour cancellation).
public func within<T: Sendable>(_ timeout: Duration, _ what: String,
                                _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw TimedOut("\(what): not done within \(timeout)")
        }
        return value
    }
}

/// Waits until `condition` holds, throwing `TimedOut` (naming `what`) after `timeout`.
public func waitFor(_ what: String, timeout: Duration = .seconds(10), pollEvery: Duration = .milliseconds(2),
                    _ condition: () async throws -> Bool) async throws {
    guard try await Harness.eventually(timeout: timeout, pollEvery: pollEvery, condition) else {
        throw TimedOut("waited \(timeout) for \(what)")
    }
}
