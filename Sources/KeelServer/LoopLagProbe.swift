import KeelEngine
import Synchronization

/// Measures how late each I/O thread's timers fire: a repeating timer every `interval` notes how far
/// past its due time it ran. A busy or blocked loop (a plugin doing blocking work on an I/O thread,
/// a flood) shows up as lag. The cost is one timer per thread, nothing per message.
final class LoopLagProbe: Sendable {
    /// One thread's lag since the last read.
    final class ThreadLag: Sendable {
        let maximumMicroseconds = Atomic<Int>(0)
        let totalMicroseconds = Atomic<Int>(0)
        let samples = Atomic<Int>(0)
    }

    let interval: Duration
    let threads: [ThreadLag]

    init(pool: IOPool, interval: Duration = .milliseconds(100)) {
        self.interval = interval
        threads = pool.threads.map { _ in ThreadLag() }
        for thread in pool.threads {
            let lag = threads[thread.index]
            thread.execute {
                var due = ContinuousClock.now + interval
                thread.scheduleTimer(after: interval, repeating: interval) {
                    let now = ContinuousClock.now
                    let late = max(.zero, now - due)
                    let (seconds, attoseconds) = late.components
                    let microseconds = Int(seconds) * 1_000_000 + Int(attoseconds / 1_000_000_000_000)
                    // Only this thread writes its counters: plain loads and stores.
                    if microseconds > lag.maximumMicroseconds.load(ordering: .relaxed) {
                        lag.maximumMicroseconds.store(microseconds, ordering: .relaxed)
                    }
                    lag.totalMicroseconds.store(lag.totalMicroseconds.load(ordering: .relaxed) &+ microseconds, ordering: .relaxed)
                    lag.samples.store(lag.samples.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
                    // The next one is due an interval after this one was due (or after now, if it ran a whole interval late).
                    due = max(due + interval, now)
                }
            }
        }
    }

    /// Each thread's worst lag since the previous call, and its mean over the probe's life, in ms.
    func read() -> [ThreadLoopLag] {
        threads.enumerated().map { index, lag in
            let samples = lag.samples.load(ordering: .relaxed)
            let mean = samples > 0 ? Double(lag.totalMicroseconds.load(ordering: .relaxed)) / Double(samples) / 1000 : 0
            let worst = Double(lag.maximumMicroseconds.exchange(0, ordering: .relaxed)) / 1000
            return ThreadLoopLag(thread: index, worstMilliseconds: worst, meanMilliseconds: mean)
        }
    }
}
