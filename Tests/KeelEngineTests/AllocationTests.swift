import CKeelLinux
import Testing

@testable import KeelEngine
import KeelTestSupport

/// State of a chain of operations, each submitted from the previous one's completion. A concrete
/// (non-generic) class, so the stored closure needs no reabstraction thunk when read back.
final class NopChain: @unchecked Sendable {
    // @unchecked Sendable: used only on the I/O thread that runs the chain.
    var handler: ((IOCompletion) -> Void)?
    var remaining: Int
    var warmup = 1_000
    var start: UInt64 = 0
    init(rounds: Int) { remaining = rounds }
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
                // One completion closure, reused for every operation: submitting retains it, nothing more.
                let chain = NopChain(rounds: rounds)
                chain.handler = { _ in
                    if chain.warmup > 0 {
                        chain.warmup -= 1
                        if chain.warmup == 0 { chain.start = AllocationCounter.currentThread }
                    } else {
                        chain.remaining -= 1
                        if chain.remaining == 0 {
                            let used = AllocationCounter.currentThread - chain.start
                            chain.handler = nil
                            return finish(used)
                        }
                    }
                    thread.submit(.nop, chain.handler!)
                }
                thread.submit(.nop, chain.handler!)
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
