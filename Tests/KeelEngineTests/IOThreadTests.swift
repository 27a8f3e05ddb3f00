import CKeelLinux
import KeelSystem
import Synchronization
import Testing

@testable import KeelEngine
import KeelTestSupport

@Suite("I/O threads: cross-thread work, timers, work pool", .serialized)
struct IOThreadTests {
    @Test(.timeLimit(.minutes(2)), arguments: backendsUnderTest)
    func eightProducersHundredThousandTasksEachNoneLostNoneDoubledOrderKept(backend: BackendKind) async throws {
        let producers = 8
        let perProducer = 100_000
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            // Touched only on the I/O thread.
            let next = ThreadConfined([Int](repeating: 0, count: producers))
            let violations = ThreadConfined(0)
            let done = Semaphore()
            let remaining = ThreadConfined(producers * perProducer)
            var workers: [SystemThread] = []
            for p in 0..<producers {
                workers.append(SystemThread.spawn(name: "producer-\(p)") {
                    for sequence in 0..<perProducer {
                        thread.execute {
                            if next.value[p] != sequence { violations.value += 1 }
                            next.value[p] = sequence + 1
                            remaining.value -= 1
                            if remaining.value == 0 { done.signal() }
                        }
                    }
                })
            }
            for worker in workers { worker.join() }
            done.wait()
            let (counts, badOrder): ([Int], Int) = await onThread(thread) { finish in
                finish((next.value, violations.value))
            }
            #expect(counts == [Int](repeating: perProducer, count: producers))
            #expect(badOrder == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func executeOnTheThreadItselfRunsInline(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let order: [Int] = await onThread(thread) { finish in
                let order = ThreadConfined([1])
                thread.execute { order.value.append(2) }
                order.value.append(3)
                thread.schedule { finish(order.value + [4]) }
            }
            #expect(order == [1, 2, 3, 4])
            #expect(!thread.isCurrent)
            #expect(IOThread.current == nil)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func timersOnTheLoopFireInOrderAndHonourCancelResetAndRepeat(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let events: [String] = await onThread(thread) { finish in
                var events: [String] = []
                let start = ckeel_monotonic_ns()
                func at() -> UInt64 { (ckeel_monotonic_ns() - start) / 1_000_000 }
                thread.scheduleTimer(after: .milliseconds(30)) { events.append("30ms@\(at() >= 30)") }
                thread.scheduleTimer(after: .milliseconds(10)) { events.append("10ms@\(at() >= 10)") }
                let cancelled = thread.scheduleTimer(after: .milliseconds(20)) { events.append("cancelled") }
                let reset = thread.scheduleTimer(after: .milliseconds(5)) { events.append("reset@\(at() >= 40)") }
                thread.cancelTimer(cancelled)
                thread.resetTimer(reset, after: .milliseconds(40))
                var ticks = 0
                var repeating: TimerHandle?
                repeating = thread.scheduleTimer(after: .milliseconds(12), repeating: .milliseconds(12)) {
                    ticks += 1
                    events.append("tick\(ticks)")
                    if ticks == 4 { thread.cancelTimer(repeating!) }
                }
                thread.scheduleTimer(after: .milliseconds(80)) {
                    events.append("pending=\(thread.pendingTimerCount)")
                    finish(events)
                }
            }
            #expect(events.first == "10ms@true")
            #expect(!events.contains("cancelled"))
            #expect(events.filter { $0.hasPrefix("tick") } == ["tick1", "tick2", "tick3", "tick4"])
            #expect(events.firstIndex(of: "30ms@true")! < events.firstIndex(of: "reset@true")!)
            #expect(events.last == "pending=0")
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func hundredThousandPendingTimersDoNotSlowTheLoop(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let count = 100_000
            let fired = ThreadConfined(0)
            let early = ThreadConfined(0)
            let armedAt: UInt64 = await onThread(thread) { finish in
                let now = ckeel_monotonic_ns()
                for i in 0..<count {
                    let delay = UInt64(200 + i % 1_300)  // 0.2 to 1.5 s
                    let deadline = now + delay * 1_000_000
                    thread.scheduleTimer(after: .milliseconds(Int64(delay))) {
                        if ckeel_monotonic_ns() < deadline { early.value += 1 }
                        fired.value += 1
                    }
                }
                finish(ckeel_monotonic_ns() - now)
            }
            // While they are pending, the loop still answers cross-thread work promptly.
            var worstRoundTrip: UInt64 = 0
            for _ in 0..<20 {
                let sent = ckeel_monotonic_ns()
                let _: Bool = await onThread(thread) { finish in finish(true) }
                worstRoundTrip = max(worstRoundTrip, ckeel_monotonic_ns() - sent)
            }
            try await Task.sleep(for: .milliseconds(1_700))
            let (firedCount, earlyCount): (Int, Int) = await onThread(thread) { finish in
                finish((fired.value, early.value))
            }
            #expect(firedCount == count)
            #expect(earlyCount == 0)
            // Generous bounds, against scanning, not for speed (the figures belong to benchmarks): the
            // suite runs in parallel on two cores, under AddressSanitizer too, where arming took 2.2 s;
            // arming or firing that scanned the pending timers would take minutes here.
            #expect(armedAt < 10_000_000_000, "arming 100k timers took \(armedAt) ns")
            #expect(worstRoundTrip < 10_000_000_000, "a task waited \(worstRoundTrip) ns behind the timers")
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func workPoolRunsOffTheIOThreadAndHandsBackToTheOriginatingThread(backend: BackendKind) async throws {
        try await withPool(backend, threads: 2) { pool in
            for thread in pool.threads {
                let (ranOnIOThread, deliveredOnOrigin, value): (Bool, Bool, Int) = await onThread(thread) { finish in
                    thread.runBlocking({ () -> (Bool, Int) in
                        usleep(2_000)  // blocking is fine here
                        return (IOThread.current != nil, 42)
                    }) { result in
                        let (onIO, value) = (try? result.get()) ?? (true, -1)
                        finish((onIO, IOThread.current === thread, value))
                    }
                }
                #expect(!ranOnIOThread)
                #expect(deliveredOnOrigin)
                #expect(value == 42)
            }
            // Errors come back too, and the async form works from any task.
            struct Failure: Error {}
            let failed: Bool = await onThread(pool.threads[1]) { finish in
                pool.threads[1].runBlocking({ () throws -> Int in throw Failure() }) { result in
                    finish((try? result.get()) == nil)
                }
            }
            #expect(failed)
            let sum = try await pool.workPool.run { (1...100).reduce(0, +) }
            #expect(sum == 5050)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func tasksAfterShutdownAreRefusedNotLost() async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .epoll, workPoolThreadCount: 1))
        let thread = pool.threads[0]
        pool.shutdown()
        #expect(!thread.schedule {})
        await #expect(throws: KeelError.self) { try await thread.submit { 1 } }
        await #expect(throws: KeelError.self) { try await pool.workPool.run { 1 } }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func hooksCanBeRemovedEvenWhileTheyRun(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let thread = pool.threads[0]
        let runs = Collector<String>()
        let counts = try await thread.submit { () -> [Int] in
            let baseline = thread.registeredHookCounts
            // A hook that removes itself on its first run, and one that stays (registered second, so
            // the removal shifts nothing it needs).
            nonisolated(unsafe) var own: IOThreadHook?
            own = thread.beforeEachWait {
                runs.add("once")
                thread.removeHook(own!)
            }
            thread.beforeEachWait { runs.add("stays") }
            let shutdown = thread.onShutdown { runs.add("shutdown") }
            let registered = thread.registeredHookCounts
            thread.removeHook(shutdown)
            thread.removeHook(shutdown)  // twice: nothing
            return [baseline.beforeEachWait, baseline.shutdown, registered.beforeEachWait, registered.shutdown]
        }
        #expect(counts[2] == counts[0] + 2 && counts[3] == counts[1] + 1)
        // Wake the loop until it has turned a few times (tasks given close together may share a
        // turn): "once" ran once, "stays" every turn.
        for _ in 0..<500 where runs.snapshot.filter({ $0 == "stays" }).count < 5 {
            _ = try await thread.submit { 0 }
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(runs.snapshot.filter { $0 == "once" }.count == 1)
        #expect(runs.snapshot.filter { $0 == "stays" }.count >= 5)
        let after = try await thread.submit { thread.registeredHookCounts }
        #expect(after.beforeEachWait == counts[0] + 1 && after.shutdown == counts[1])
        pool.shutdown()
        #expect(!runs.snapshot.contains("shutdown"), "a removed shutdown hook does not run")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aTimerArmedByAHookWhenNoneWasArmedBoundsTheWait(backend: BackendKind) async throws {
        // The loop reads the clock only while timers are armed: a first timer armed after that point
        // of the turn (by a before-wait hook) must still bound the wait, with nothing else to wake it.
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let fired = Collector<Int>()
            try await thread.submit {
                nonisolated(unsafe) var hook: IOThreadHook?
                hook = thread.beforeEachWait {
                    thread.removeHook(hook!)
                    _ = thread.scheduleTimer(after: .milliseconds(5)) { fired.add(1) }
                }
            }
            #expect(await fired.wait(for: 1, timeout: .seconds(20)).count == 1)
        }
    }

    /// A hook object: counts its runs and says when it is freed.
    final class CountingWaitHook: IOThreadWaitHook, @unchecked Sendable {
        // @unchecked Sendable: no stored state of its own besides the (Sendable) collectors.
        let runs: Collector<Int>
        let freed: Collector<String>
        init(runs: Collector<Int>, freed: Collector<String>) {
            self.runs = runs
            self.freed = freed
        }
        override func beforeWait() { runs.add(1) }
        deinit { freed.add("hook") }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func hookObjectsRunEveryTurnAndAreReleasedOnceRemoved(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let freed = Collector<String>()
            let runs = Collector<Int>()
            let registration = try await thread.submit { () -> IOThreadHook in
                thread.beforeEachWait(running: CountingWaitHook(runs: runs, freed: freed))
            }
            // Tasks given close together may share a turn: wake the loop until it has turned a few times.
            for _ in 0..<500 where runs.snapshot.count < 3 {
                _ = try await thread.submit { 0 }
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(runs.snapshot.count >= 3, "it runs every turn")
            #expect(freed.snapshot.isEmpty, "the thread holds a registered hook")
            try await thread.submit { thread.removeHook(registration) }
            // Released when the hooks next run: by the end of the turn that ran the removal.
            for _ in 0..<200 where freed.snapshot.isEmpty {
                _ = try await thread.submit { 0 }
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(freed.snapshot == ["hook"])
            let runsWhenFreed = runs.snapshot.count
            for _ in 0..<3 {
                _ = try await thread.submit { 0 }
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(runs.snapshot.count == runsWhenFreed, "a removed hook no longer runs")
        }
    }

    @Test func backendNamesParse() {
        #expect(BackendKind(name: "io_uring") == .ioUring)
        #expect(BackendKind(name: "EPOLL") == .epoll)
        #expect(BackendKind(name: "kqueue") == nil)
        #expect((try? BackendKind.resolve(.epoll)) == .epoll)
        if IOUringSupport.isAvailable {
            #expect((try? BackendKind.resolve(.ioUring)) == .ioUring)
        } else {
            #expect(throws: KeelError.self) { try BackendKind.resolve(.ioUring) }
        }
    }
}
