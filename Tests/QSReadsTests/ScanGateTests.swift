@testable import QSReads
import XCTest

/// Scan requests take at most the gate's number of reader threads at once, whatever the
/// number of clients scanning; the others wait their turn and all are answered.
final class ScanGateTests: XCTestCase {
    func testNoMoreThanTheLimitRunAtOnceAndEveryOneRuns() async throws {
        let gate = ScanGate(limit: 2)
        actor Tally {
            var running = 0, most = 0, done = 0
            func start() { running += 1; most = max(most, running) }
            func end() { running -= 1; done += 1 }
        }
        let tally = Tally()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    try await gate.run {
                        await tally.start()
                        try await Task.sleep(for: .milliseconds(5))
                        await tally.end()
                    }
                }
            }
            try await group.waitForAll()
        }
        let (done, most) = (await tally.done, await tally.most)
        XCTAssertEqual(done, 16)
        XCTAssertLessThanOrEqual(most, 2, "at most the limit at once")
    }
}
