import CKeelLinux
import Testing

@testable import KeelEngine
import KeelTestSupport

/// A chain of nops, each submitted from the previous one's completion, with one handler object for
/// all of them; counts its thread's allocations after a warm-up.
final class NopChain: IOCompletionHandler, @unchecked Sendable {
    // @unchecked Sendable: used only on the I/O thread that runs the chain.
    let thread: IOThread
    var remaining: Int
    var warmup = 1_000
    var start: UInt64 = 0
    var finish: ((UInt64) -> Void)?

    init(thread: IOThread, rounds: Int, finish: @escaping (UInt64) -> Void) {
        self.thread = thread
        self.remaining = rounds
        self.finish = finish
    }

    override func complete(_ completion: IOCompletion) {
        if warmup > 0 {
            warmup -= 1
            if warmup == 0 { start = AllocationCounter.currentThread }
        } else {
            remaining -= 1
            if remaining == 0 {
                finish?(AllocationCounter.currentThread - start)
                finish = nil
                return
            }
        }
        thread.submit(.nop, handler: self)
    }
}

/// Steady-state engine paths allocate nothing: counted on the I/O thread itself.
@Suite("Engine allocations", .serialized, .enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
struct AllocationTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func chainedNopRoundTripsThroughTheLoopAllocateNothing(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let rounds = 20_000
            let allocations: UInt64 = await onThread(thread) { finish in
                // One handler object, reused for every operation: submitting retains it, nothing more.
                thread.submit(.nop, handler: NopChain(thread: thread, rounds: rounds, finish: finish))
            }
            #expect(allocations == 0, "\(allocations) allocations over \(rounds) loop round trips")
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func timerResetAllocatesNothing(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let allocations: UInt64 = await onThread(thread) { finish in
                let timer = thread.scheduleTimer(after: .seconds(30)) {}
                // The first run warms lazily created runtime state (type metadata in debug builds);
                // the minimum over the later runs is what steady state costs.
                let runs = (0..<4).map { _ in
                    AllocationCounter.count {
                        for i in 0..<10_000 { thread.resetTimer(timer, after: .milliseconds(1_000 + Int64(i % 5_000))) }
                    }
                }
                thread.cancelTimer(timer)
                finish(runs.dropFirst().min()!)
            }
            #expect(allocations == 0)
        }
    }
}
