import CLinux
import Foundation

/// Threads owned by the store that run its blocking jobs (LMDB transactions, file I/O) in
/// submission order, so that no caller's thread — a NIO event loop, Swift's cooperative
/// pool — ever waits on LMDB or the disk. The threads start with the first job and end
/// once `stop()` was called and the queue is empty.
final class StoreThreads: @unchecked Sendable {
    private let name: String
    private let count: Int
    private let condition = NSCondition()
    // Guarded by `condition`. A job runs its body and returns what resumes its caller: the
    // body (and what it captured, the store itself) is released before the caller resumes,
    // so a caller that drops its last reference to a store right after an `await` closes
    // it there and then (RocksDB's lock on its directory is released with it).
    private var jobs: [(() -> () -> Void)?] = []
    private var head = 0
    private var started = false
    private var stopping = false
    private var running = 0
    /// Threads started and not yet ended.
    private var alive = 0

    init(name: String, count: Int) {
        precondition(count > 0, "a store needs at least one thread per role")
        self.name = name
        self.count = count
    }

    /// Jobs waiting for a thread (running ones excluded).
    var queued: Int {
        condition.lock()
        defer { condition.unlock() }
        return jobs.count - head
    }

    /// Jobs running right now.
    var busy: Int {
        condition.lock()
        defer { condition.unlock() }
        return running
    }

    /// Runs `body` on one of these threads and returns what it returned (or throws what
    /// it threw). Jobs start in the order they were submitted.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let accepted = enqueue {
                let result = Result { try body() }
                return { continuation.resume(with: result) }
            }
            if !accepted { continuation.resume(throwing: StoreError.closed) }
        }
    }

    /// Queues `body` to run on one of these threads without waiting for it: work whose
    /// outcome nobody waits for (a later `run` on a one-thread instance runs after it).
    func submit(_ body: @escaping @Sendable () -> Void) {
        submit(orElse: {}, body)
    }

    /// `submit`, with `refused` called instead when the threads are stopping.
    func submit(orElse refused: () -> Void, _ body: @escaping @Sendable () -> Void) {
        let accepted = enqueue {
            body()
            return {}
        }
        if !accepted { refused() }
    }

    /// Lets the threads end once the jobs already queued are done.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    /// `stop()`, then waits until every thread has ended (the jobs already queued done) or
    /// `deadline` passed. Whether they all ended. Never called on one of these threads.
    func stopAndWait(until deadline: Date) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        stopping = true
        condition.broadcast()
        while alive > 0 {
            if !condition.wait(until: deadline) { return alive == 0 }
        }
        return true
    }

    private func enqueue(_ job: @escaping () -> () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        jobs.append(job)
        if !started {
            started = true
            alive = count
            for i in 0..<count {
                let threadName = count == 1 ? name : "\(name)-\(i)"
                let thread = Thread { [self] in
                    // Named where `ps -L`, top and /proc show it, in the kernel's 15 bytes:
                    // qs-writer, qs-reader-N, qs-background.
                    let short = threadName.replacingOccurrences(of: "qs-store-", with: "qs-")
                    _ = pthread_setname_np(pthread_self(), String(decoding: Array(short.utf8.prefix(15)), as: UTF8.self))
                    work()
                }
                thread.name = threadName
                thread.start()
            }
        }
        condition.signal()
        return true
    }

    private func work() {
        while true {
            condition.lock()
            while head == jobs.count && !stopping { condition.wait() }
            if head == jobs.count {
                alive -= 1
                condition.broadcast()
                condition.unlock()
                return
            }
            var job = jobs[head]
            jobs[head] = nil
            head += 1
            if head == jobs.count || head >= 1024 {
                jobs.removeFirst(head)
                head = 0
            }
            running += 1
            condition.unlock()
            let resume = job?() ?? {}
            job = nil
            resume()
            condition.lock()
            running -= 1
            condition.unlock()
        }
    }
}

extension StoreThreads {
    /// Runs `body` on a thread of its own that ends with it: for opening a store from an
    /// async context without blocking the caller's thread.
    static func once<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        let thread = StoreThreads(name: name, count: 1)
        defer { thread.stop() }
        return try await thread.run(body)
    }
}
