import Synchronization

/// Work handed to an I/O thread by other threads: a multi-producer, single-consumer queue.
///
/// Producers append under a `Mutex` held only for the append; the consumer swaps the whole queue out
/// in one short critical section and runs the tasks outside it. Only the producer that finds the queue
/// empty wakes the consumer, so a burst of tasks costs one wake-up. Order per producer is kept.
/// Once closed (the thread stopped), appends are refused so no task is silently lost.
final class Inbox: Sendable {
    typealias Task = @Sendable () -> Void

    enum AppendResult {
        /// Queued; the queue was empty, so the consumer must be woken.
        case queuedFirst
        /// Queued behind other tasks; the consumer has already been woken.
        case queued
        /// The inbox is closed; the task was not queued.
        case closed
    }

    private struct State {
        var tasks: [Task] = []
        var closed = false
    }

    private let state = Mutex(State())

    init() {
        state.withLock { $0.tasks.reserveCapacity(1024) }
    }

    func append(_ task: @escaping Task) -> AppendResult {
        state.withLock { state in
            if state.closed { return .closed }
            state.tasks.append(task)
            return state.tasks.count == 1 ? .queuedFirst : .queued
        }
    }

    /// Takes every queued task, leaving `spare` (emptied, capacity kept) in its place.
    /// - Returns: false when there was nothing to take.
    func takeAll(replacingWith spare: inout [Task]) -> Bool {
        state.withLock { state in
            if state.tasks.isEmpty { return false }
            swap(&state.tasks, &spare)
            return true
        }
    }

    /// Refuses further tasks and returns those still queued.
    func close() -> [Task] {
        state.withLock { state in
            state.closed = true
            defer { state.tasks = [] }
            return state.tasks
        }
    }
}
