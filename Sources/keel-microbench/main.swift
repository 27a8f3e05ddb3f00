// keel-microbench: release-mode micro-benchmarks of the engine and buffer primitives.
//
//   swift run -c release keel-microbench [--repeat N]
//
// Each figure is the median over N runs (default 7) of wall-clock ns per operation, measured on the
// thread doing the work. Run on both backends side by side; on a shared machine compare medians.
import KeelBuffers
import KeelEngine
import KeelSystem
import Synchronization

let repeats: Int = {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: "--repeat"), i + 1 < args.count, let n = Int(args[i + 1]) { return max(1, n) }
    return 7
}()

func nanoseconds(_ duration: Duration) -> Double {
    let (s, atto) = duration.components
    return Double(s) * 1e9 + Double(atto) / 1e9
}

/// One decimal place, without Foundation.
func formatted(_ value: Double) -> String {
    let tenths = (value * 10).rounded()
    return "\(Int(tenths) / 10).\(Int(tenths) % 10)"
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

/// Runs `body` on `thread` and waits (blocking this plain thread) for the value it reports.
func onThread<Value: Sendable>(_ thread: IOThread, _ body: @escaping @Sendable (_ done: @escaping @Sendable (Value) -> Void) -> Void) -> Value {
    let result = Mutex<Value?>(nil)
    let ready = Semaphore()
    thread.execute {
        body { value in
            result.withLock { $0 = value }
            ready.signal()
        }
    }
    ready.wait()
    return result.withLock { $0! }
}

/// Completes `count` nops and reports the mean time per nop. With `resubmits`, each nop is submitted
/// from the previous one's completion (a round trip through the loop); otherwise all are submitted at
/// once (a batch). One handler object serves every nop: nothing is allocated per operation.
final class NopChain: IOCompletionHandler, @unchecked Sendable {
    // @unchecked Sendable: used only on the I/O thread running the chain.
    let thread: IOThread
    let count: Int
    let resubmits: Bool
    var remaining: Int
    var start = ContinuousClock.now
    var done: ((Double) -> Void)?

    init(thread: IOThread, count: Int, resubmits: Bool, done: @escaping (Double) -> Void) {
        self.thread = thread
        self.count = count
        self.resubmits = resubmits
        self.remaining = count
        self.done = done
    }

    func begin() {
        start = .now
        for _ in 0..<(resubmits ? 1 : count) { thread.submit(.nop, handler: self) }
    }

    override func complete(_ completion: IOCompletion) {
        remaining -= 1
        if remaining == 0 {
            done?(nanoseconds(ContinuousClock.now - start) / Double(count))
            done = nil
        } else if resubmits {
            thread.submit(.nop, handler: self)
        }
    }
}

func nopRoundTrip(_ thread: IOThread, count: Int) -> Double {
    onThread(thread) { done in NopChain(thread: thread, count: count, resubmits: true, done: done).begin() }
}

func nopBatch(_ thread: IOThread, count: Int) -> Double {
    onThread(thread) { done in NopChain(thread: thread, count: count, resubmits: false, done: done).begin() }
}

func crossThreadTasks(_ thread: IOThread, count: Int) -> Double {
    let remaining = Atomic<Int>(count)
    let finished = Semaphore()
    let start = ContinuousClock.now
    for _ in 0..<count {
        thread.execute {
            if remaining.wrappingSubtract(1, ordering: .relaxed).newValue == 0 { finished.signal() }
        }
    }
    finished.wait()
    return nanoseconds(ContinuousClock.now - start) / Double(count)
}

func timerSetCancel(_ thread: IOThread, count: Int) -> Double {
    onThread(thread) { done in
        let callback: () -> Void = {}
        let start = ContinuousClock.now
        for i in 0..<count {
            let handle = thread.scheduleTimer(after: .milliseconds(Int64(10 + i % 5_000)), callback)
            thread.cancelTimer(handle)
        }
        done(nanoseconds(ContinuousClock.now - start) / Double(count))
    }
}

func timerReset(_ thread: IOThread, count: Int) -> Double {
    onThread(thread) { done in
        let handle = thread.scheduleTimer(after: .seconds(60)) {}
        let start = ContinuousClock.now
        for i in 0..<count { thread.resetTimer(handle, after: .milliseconds(Int64(10 + i % 5_000))) }
        let elapsed = ContinuousClock.now - start
        thread.cancelTimer(handle)
        done(nanoseconds(elapsed) / Double(count))
    }
}

func bufferAcquireRelease(count: Int) -> Double {
    let pool = BufferPool()
    for _ in 0..<64 { _ = try! pool.acquire() }
    let start = ContinuousClock.now
    for _ in 0..<count {
        var buffer = try! pool.acquire()
        buffer.moveWriterIndex(forwardBy: 1)
    }
    return nanoseconds(ContinuousClock.now - start) / Double(count)
}

/// Holds buffers handed to a foreign thread to release.
final class Handoff: @unchecked Sendable {
    // @unchecked Sendable: filled before the thread starts, emptied only by that thread.
    var buffers: [SharedBuffer] = []
}

func crossThreadReturn(count: Int) -> Double {
    let pool = BufferPool(configuration: .init(bufferSize: 2048, buffersPerSlab: 256, maximumBytes: 2048 * 65536))
    let handoff = Handoff()
    handoff.buffers.reserveCapacity(count)
    for _ in 0..<count { handoff.buffers.append(try! pool.acquire().share()) }
    let start = ContinuousClock.now
    let releaser = SystemThread.spawn(name: "releaser") { handoff.buffers.removeAll() }
    releaser.join()
    let drained = pool.drainReturns()
    precondition(drained == count)
    return nanoseconds(ContinuousClock.now - start) / Double(count)
}

var rows: [(String, String, Double)] = []
for backend in BackendKind.allCases {
    guard let pool = try? IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1)) else {
        print("skipping \(backend): unavailable")
        continue
    }
    let thread = pool.threads[0]
    _ = nopRoundTrip(thread, count: 10_000)  // warm-up
    rows.append((backend.rawValue, "nop round trip (submit → completion → next)", median((0..<repeats).map { _ in nopRoundTrip(thread, count: 200_000) })))
    rows.append((backend.rawValue, "nop in a batch of 1,000 (per op)", median((0..<repeats).map { _ in nopBatch(thread, count: 1_000) })))
    rows.append((backend.rawValue, "cross-thread task (1 producer)", median((0..<repeats).map { _ in crossThreadTasks(thread, count: 200_000) })))
    rows.append((backend.rawValue, "timer set + cancel", median((0..<repeats).map { _ in timerSetCancel(thread, count: 200_000) })))
    rows.append((backend.rawValue, "timer reset", median((0..<repeats).map { _ in timerReset(thread, count: 200_000) })))
    pool.shutdown()
}
rows.append(("-", "buffer acquire + release", median((0..<repeats).map { _ in bufferAcquireRelease(count: 1_000_000) })))
rows.append(("-", "buffer cross-thread return (release + drain)", median((0..<repeats).map { _ in crossThreadReturn(count: 50_000) })))

print("keel-microbench: median of \(repeats) runs, ns per operation")
print("| backend | operation | ns/op |")
print("|---|---|---:|")
for (backend, name, value) in rows {
    print("| \(backend) | \(name) | \(formatted(value)) |")
}
