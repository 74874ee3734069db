import Foundation

/// A continuous write workload on a fake KT, on a thread of its own: `write(i)` for
/// i = 0, 1, 2, … every `every` until `stop()`, which returns once the last write is done.
public final class KTWorkload: @unchecked Sendable {
    let stopFlag = StopFlag(), stopped = StopFlag()
    let thread: Thread

    public init(every: TimeInterval = 0.01, _ write: @escaping @Sendable (Int) -> Void) {
        let stopFlag = self.stopFlag, stopped = self.stopped
        thread = Thread {
            defer { stopped.set() }
            var i = 0
            while !stopFlag.isSet {
                write(i)
                i += 1
                Thread.sleep(forTimeInterval: every)
            }
        }
        thread.start()
    }

    /// Stops the workload; true once its last write is done (within `timeout`).
    @discardableResult
    public func stop(timeout: Duration = .seconds(30)) -> Bool {
        stopFlag.set()
        return Harness.waitUntil(timeout: timeout) { stopped.isSet }
    }
}
