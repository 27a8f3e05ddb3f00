import CKeelLinux
import KeelBuffers

/// Embedded threads: an ``IOThread`` over an ``EmbeddedBackend``, driven by a test instead of an OS
/// thread. The same loop steps run (inbox, timers, before-wait hooks, completions), one turn at a
/// time, on the manual clock.
extension IOThread {
    /// Shared by every embedded thread: blocking work still runs off the test's thread, and its result
    /// comes back through the embedded thread's inbox at the next turn.
    private static let embeddedWorkPool = WorkPool(threadCount: 1)

    /// Makes an embedded thread with its own buffer pool, owned by the calling thread. It reports its
    /// backend as `reportedBackend`: ``BackendKind/epoll`` (the default: completions made in user
    /// space, as there) or ``BackendKind/ioUring``, for code that sends through operations where a
    /// ring is, rather than with a call made at once.
    package static func makeEmbedded(bufferPool configuration: BufferPoolConfiguration,
                                     reportedBackend: BackendKind = .epoll) -> IOThread {
        let pool = BufferPool(configuration: configuration)
        return IOThread(
            index: 0, backendKind: reportedBackend, backend: .embedded(EmbeddedBackend(pool: pool)), bufferPool: pool,
            workPool: embeddedWorkPool)
    }

    /// Runs `body` as if on this thread (``isCurrent`` is true inside), restoring the caller's identity
    /// after. Embedded threads only.
    package func withEmbeddedCurrent<Result>(_ body: () throws -> Result) rethrows -> Result {
        precondition(embeddedBackend != nil, "withEmbeddedCurrent is for embedded threads")
        let previous = ckeel_current_io_thread()
        ckeel_set_current_io_thread(Unmanaged.passUnretained(self).toOpaque())
        defer { ckeel_set_current_io_thread(previous) }
        return try body()
    }

    /// Runs loop turns until one does nothing: no task, no due timer, no completion.
    /// - Returns: the turns that did something. Embedded threads only; call inside ``withEmbeddedCurrent(_:)``.
    @discardableResult
    package func runEmbeddedUntilQuiet(maximumTurns: Int = 100_000) -> Int {
        guard let embedded = embeddedBackend else { preconditionFailure("not an embedded thread") }
        for turn in 0..<maximumTurns {
            let tasks = inbox.drain(limit: IOThread.inboxBatch)
            let fired = loop.pointee.timers.fireExpired(nowNanoseconds: embedded.nowNanoseconds)
            runBeforeWaitHooks()
            embedded.submitAndWait(waitNanoseconds: 0)
            let completions = embedded.hasCompletions
            embedded.drain { token, completion in dispatch(token, completion) }
            bufferPool.drainReturns()
            if tasks == 0 && fired == 0 && !completions { return turn }
        }
        preconditionFailure("the embedded thread did not settle in \(maximumTurns) turns (a loop of events?)")
    }

    /// Moves the manual clock forward, then runs until quiet (due timers fire).
    package func advanceEmbeddedTime(byNanoseconds nanoseconds: UInt64) {
        guard let embedded = embeddedBackend else { preconditionFailure("not an embedded thread") }
        embedded.nowNanoseconds &+= nanoseconds
        runEmbeddedUntilQuiet()
    }

    /// Stops the embedded thread as a pool shutdown stops a real one: shutdown hooks, cancellation of
    /// in-flight operations, then the loop's storage is released. Call inside ``withEmbeddedCurrent(_:)``.
    package func shutdownEmbedded() {
        precondition(embeddedBackend != nil, "not an embedded thread")
        beginStopping()
        runEmbeddedUntilQuiet()
        finishLoop()
    }
}
