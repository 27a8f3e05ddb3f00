import Synchronization

/// Work handed to an I/O thread by other threads: a lock-free multi-producer, single-consumer queue.
///
/// An intrusive linked queue (Vyukov's design): a producer swaps itself in as the new head with one
/// atomic exchange and then links its predecessor to it; the consumer walks from its private tail.
/// No locks, so producers never park on a futex and the consumer never waits for them. Order per
/// producer is kept.
///
/// Wake-ups are coalesced: the consumer clears `wakeupRequested` (when set) before each drain, and
/// only the producer that flips it back to true signals the backend, so a burst costs one eventfd
/// write.
///
/// Closing (when the thread stops) refuses further tasks without losing accepted ones: producers
/// announce themselves in `activeProducers` before checking `closed`, and ``close()`` waits for the
/// announced ones to finish pushing before the final drain.
final class Inbox: @unchecked Sendable {
    // @unchecked Sendable: `tail` is touched only by the consumer (the I/O thread); everything shared
    // is atomic.
    typealias Task = @Sendable () -> Void

    private final class Node {
        var task: Task?
        let next = Atomic<Unmanaged<Node>?>(nil)
        init(_ task: Task?) { self.task = task }
    }

    enum AppendResult {
        /// Queued, and the caller must wake the consumer.
        case queuedWake
        /// Queued; a wake-up is already on its way.
        case queued
        /// The inbox is closed; the task was not queued.
        case closed
    }

    private let head: Atomic<Unmanaged<Node>>
    private let tail: UnsafeMutablePointer<Unmanaged<Node>>
    private let wakeupRequested = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)
    private let activeProducers = Atomic<Int>(0)

    init() {
        let stub = Unmanaged.passRetained(Node(nil))
        head = Atomic(stub)
        tail = .allocate(capacity: 1)
        tail.initialize(to: stub)
    }

    deinit {
        while pop() != nil {}
        tail.pointee.release()
        tail.deallocate()
    }

    /// Queues `task` (any thread).
    func append(_ task: @escaping Task) -> AppendResult {
        activeProducers.wrappingAdd(1, ordering: .sequentiallyConsistent)
        defer { activeProducers.wrappingSubtract(1, ordering: .sequentiallyConsistent) }
        if closed.load(ordering: .sequentiallyConsistent) { return .closed }
        let node = Unmanaged.passRetained(Node(task))
        let previous = head.exchange(node, ordering: .acquiringAndReleasing)
        previous.takeUnretainedValue().next.store(node, ordering: .releasing)
        return wakeupRequested.exchange(true, ordering: .acquiringAndReleasing) ? .queued : .queuedWake
    }

    /// Runs queued tasks, at most `limit` of them, so a flood of tasks cannot starve I/O (consumer only).
    /// - Returns: how many ran; at `limit`, tasks may remain and the caller must not sleep.
    @discardableResult
    func drain(limit: Int = .max) -> Int {
        // Clearing the flag is a full fence (a locked instruction on x86), paid only when a producer
        // set it: while it is clear, the next producer finds it clear and wakes the thread itself.
        if wakeupRequested.load(ordering: .relaxed) {
            wakeupRequested.store(false, ordering: .sequentiallyConsistent)
        }
        var count = 0
        while count < limit, let task = pop() {
            task()
            count += 1
        }
        return count
    }

    private func pop() -> Task? {
        let current = tail.pointee
        guard let next = current.takeUnretainedValue().next.load(ordering: .acquiring) else { return nil }
        let nextNode = next.takeUnretainedValue()
        let task = nextNode.task
        nextNode.task = nil  // `next` becomes the new stub
        tail.pointee = next
        current.release()
        return task
    }

    /// Refuses further tasks, waits for producers already pushing, and returns after running the
    /// tasks accepted before the close (consumer only).
    func closeAndDrain() {
        closed.store(true, ordering: .sequentiallyConsistent)
        while activeProducers.load(ordering: .sequentiallyConsistent) != 0 {}
        // A producer that announced itself before the close has finished its exchange and link.
        drain()
    }
}
