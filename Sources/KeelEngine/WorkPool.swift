import KeelSystem
import Synchronization

/// A pool of plain threads for blocking work (file I/O, DNS, database calls), so I/O threads never block.
///
/// Results come back to the I/O thread that asked, through its inbox: a connection's state is only
/// ever touched on its own thread.
///
/// **Threading:** every method may be called from any thread.
public final class WorkPool: Sendable {
    private struct State {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var stopped = false
    }

    private let state = Locked(State())
    private let available = Semaphore()
    private let threads: Locked<[SystemThread]>
    /// Number of worker threads.
    public let threadCount: Int

    /// Starts `threadCount` worker threads (at least one).
    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
        threads = Locked([])
        var started: [SystemThread] = []
        for i in 0..<self.threadCount {
            started.append(SystemThread.spawn(name: "keel-work-\(i)") { [self] in self.workerLoop() })
        }
        threads.withLock { $0 = started }
    }

    /// Queues `job` to run on a worker thread. Jobs given after ``shutdown()`` are dropped.
    /// - Returns: false when the pool has shut down.
    @discardableResult
    public func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        let accepted = state.withLock { state in
            if state.stopped { return false }
            state.jobs.append(job)
            return true
        }
        if accepted { available.signal() }
        return accepted
    }

    /// Runs `work` on a worker thread and delivers its result to `completion` on `thread`.
    /// If the pool has shut down, `completion` receives ``KeelError/Code-swift.struct/shutDown``.
    public func run<Value: Sendable>(
        _ work: @escaping @Sendable () throws -> Value,
        deliverOn thread: IOThread,
        _ completion: @escaping @Sendable (Result<Value, any Error>) -> Void
    ) {
        let accepted = submit {
            let result = Result { try work() }
            thread.execute { completion(result) }
        }
        if !accepted {
            let error = KeelError(.shutDown, context: "work pool has shut down")
            thread.execute { completion(.failure(error)) }
        }
    }

    /// Runs `work` on a worker thread and returns its result to the awaiting task.
    public func run<Value: Sendable>(_ work: @escaping @Sendable () throws -> Value) async throws -> Value {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
            let accepted = submit { continuation.resume(with: Result { try work() }) }
            if !accepted { continuation.resume(throwing: KeelError(.shutDown, context: "work pool has shut down")) }
        }
    }

    /// Stops accepting jobs, lets queued jobs finish, and joins the workers. Idempotent.
    public func shutdown() {
        let first = state.withLock { state in
            defer { state.stopped = true }
            return !state.stopped
        }
        guard first else { return }
        for _ in 0..<threadCount { available.signal() }
        let workers = threads.withLock { threads in
            defer { threads = [] }
            return threads
        }
        for worker in workers { worker.join() }
    }

    private func workerLoop() {
        while true {
            available.wait()
            let job: (@Sendable () -> Void)? = state.withLock { state in
                if state.head < state.jobs.count {
                    let job = state.jobs[state.head]
                    state.head += 1
                    if state.head == state.jobs.count {
                        state.jobs.removeAll(keepingCapacity: true)
                        state.head = 0
                    }
                    return job
                }
                return nil
            }
            if let job {
                job()
            } else if state.withLock({ $0.stopped }) {
                return
            }
        }
    }
}
