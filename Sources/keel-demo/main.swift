// keel-demo: a short tour of the engine until the TCP layer lands. Starts an I/O pool on the chosen
// backend (KEEL_BACKEND=io_uring|epoll, or automatic), runs an operation through the backend, timers,
// cross-thread tasks and blocking work, then shuts down cleanly.
import KeelEngine
import Synchronization

let pool = try IOPool()
print("keel-demo: \(pool.threads.count) I/O threads on \(pool.backend)")
let thread = pool.next()

// One operation through the backend, and a repeating timer, driven on the I/O thread.
let tour: String = await withCheckedContinuation { continuation in
    thread.execute {
        let started = ContinuousClock.now
        thread.submit(.nop) { nop in
            var ticks = 0
            var handle: TimerHandle?
            handle = thread.scheduleTimer(after: .milliseconds(5), repeating: .milliseconds(5)) {
                ticks += 1
                guard ticks == 3, let repeating = handle else { return }
                thread.cancelTimer(repeating)
                continuation.resume(returning: "nop completed (result \(nop.result)); repeating 5 ms timer fired "
                    + "3 times in \(ContinuousClock.now - started)")
            }
        }
    }
}
print(tour)

// Blocking work on the work pool, handed back to the I/O thread that asked.
let handedBack: String = await withCheckedContinuation { continuation in
    thread.runBlocking({ (1...1_000).reduce(0, +) }) { result in
        continuation.resume(returning: "work pool computed \((try? result.get()) ?? -1); result delivered on "
            + "I/O thread \(thread.index): \(thread.isCurrent)")
    }
}
print(handedBack)

// Cross-thread tasks from every I/O thread to every other.
let expected = pool.threads.count * pool.threads.count
let counter = Mutex(0)
await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
    for source in pool.threads {
        source.execute {
            for target in pool.threads {
                target.execute {
                    let total = counter.withLock { value -> Int in
                        value += 1
                        return value
                    }
                    if total == expected { continuation.resume() }
                }
            }
        }
    }
}
print("cross-thread tasks delivered: \(counter.withLock { $0 }) of \(expected)")

pool.shutdown()
print("keel-demo: shut down cleanly")
