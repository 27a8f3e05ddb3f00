import CKeelLinux
import KeelBuffers
import KeelSystem
import Logging
import Synchronization

/// One I/O thread: an OS thread running a loop over its own backend (an io_uring ring or an epoll
/// instance), its timer wheel, its buffer pool and its inbox of work from other threads.
///
/// The loop, one screen long:
/// ```
/// run inbox tasks → fire due timers → submit + wait (until a completion, a wake-up or the next timer)
///   → dispatch completions by token → take back buffers released on other threads
/// ```
///
/// **Threading:** methods marked *I/O thread only* must run on this thread (inside a completion, a
/// timer, or a task given to ``execute(_:)``); they check it with a precondition. ``execute(_:)``,
/// ``schedule(_:)`` and ``isCurrent`` may be called from anywhere.
public final class IOThread: @unchecked Sendable {
    // @unchecked Sendable: all mutable state (`loop`, the backend, the buffer pool's owner side) is
    // confined to the OS thread running `run()`, enforced by `preconditionCurrent()`. Other threads
    // reach it only through `inbox` (a lock-free queue) and the backend's eventfd wake-up.

    /// Position of this thread in its pool.
    public let index: Int
    /// The backend this thread runs.
    public let backendKind: BackendKind
    /// This thread's buffer pool (created on this thread, which owns it).
    public let bufferPool: BufferPool
    /// The pool's work pool, for blocking work whose results come back to this thread.
    public let workPool: WorkPool
    /// The optional kernel features this thread uses: its ring's (none on epoll) and the socket ones.
    public var kernelFeatures: KernelFeatures { backend.kernelFeatures.union(socketFeatures) }
    /// The socket features the pool asked for that this kernel has.
    private let socketFeatures: KernelFeatures

    let backend: Backend
    /// The in-memory backend of an embedded thread (``makeEmbedded(bufferPool:)``), nil on real threads.
    @usableFromInline package let embeddedBackend: EmbeddedBackend?
    let loop: UnsafeMutablePointer<LoopState>
    let inbox = Inbox()
    private let stopRequested = Atomic<Bool>(false)

    struct LoopState {
        var operations = OperationTable()
        /// Run once when the thread begins stopping, before in-flight operations are cancelled.
        var shutdownHooks: [(id: UInt64, hook: (() -> Void)?)] = []
        /// Run every loop iteration just before the thread submits and waits (write coalescing), with
        /// their registration ids beside them. Each hook is retained once, here, and called borrowed
        /// (calling a closure loaded from this array retained and released its context every turn). A
        /// removed hook gets id 0 and is skipped; it is released when the array is compacted after the
        /// hooks ran, so one that removes itself while running stays alive until it returns.
        var beforeWaitHooks: [Unmanaged<IOThreadWaitHook>] = []
        var beforeWaitHookIDs: [UInt64] = []
        var removedBeforeWaitHooks = 0
        var nextHookID: UInt64 = 0
        /// The receive completion being dispatched while it still carries pooled buffers its handler has
        /// not taken, and which of them comes next (a bundle carries several).
        var receivedBuffer: IOCompletion?
        var receivedBufferIndex = 0
        /// How many buffers that completion carries (counted once, when it is dispatched).
        var receivedBufferCount = 0
        var timers: TimerWheel
        var stopping = false
        var zeroCopy = ZeroCopySendStatistics()
        var receiveBundles = ReceiveBundleStatistics()
        var ignoredCompletions = 0
    }

    /// Receive completions that carried several pool buffers (``KernelFeatures/receiveBundles``).
    public struct ReceiveBundleStatistics: Sendable, Hashable {
        /// Completions that carried more than one buffer.
        public var bundles = 0
        /// The buffers those completions carried.
        public var buffers = 0
    }

    /// Zero-copy sends this thread's connections made (``KernelFeatures/zeroCopySend``).
    public struct ZeroCopySendStatistics: Sendable, Hashable {
        /// Zero-copy sends whose notification arrived.
        public var notified = 0
        /// Of those, sends the kernel copied after all (every one on loopback).
        public var copied = 0
        /// Zero-copy sends submitted that named a registered pool slab (``KernelFeatures/registeredBuffers``).
        public var fromRegisteredBuffers = 0
    }

    init(index: Int, backendKind: BackendKind, backend: Backend, bufferPool: BufferPool, workPool: WorkPool,
         socketFeatures: KernelFeatures = []) {
        self.index = index
        self.socketFeatures = socketFeatures
        self.backendKind = backendKind
        self.backend = backend
        self.bufferPool = bufferPool
        self.workPool = workPool
        if case .embedded(let embedded) = backend { embeddedBackend = embedded } else { embeddedBackend = nil }
        loop = .allocate(capacity: 1)
        loop.initialize(to: LoopState(timers: TimerWheel(nowNanoseconds: embeddedBackend?.nowNanoseconds ?? ckeel_monotonic_ns())))
        if case .epoll(let epoll) = backend { epoll.serve(self) }
    }

    /// The descriptors this thread's backend holds (for leak checks: closed once the thread stopped).
    package var backendDescriptors: [Int32] { backend.descriptors }

    /// Monotonic nanoseconds: the kernel's clock, or an embedded thread's manual one.
    @inline(__always)
    package var nowNanoseconds: UInt64 {
        if let embeddedBackend { return embeddedBackend.nowNanoseconds }
        return ckeel_monotonic_ns()
    }

    deinit {
        loop.deinitialize(count: 1)
        loop.deallocate()
    }

    // MARK: Where am I

    /// The I/O thread the caller runs on, or nil on any other thread.
    public static var current: IOThread? {
        guard let raw = ckeel_current_io_thread() else { return nil }
        return Unmanaged<IOThread>.fromOpaque(raw).takeUnretainedValue()
    }

    /// True when called on this I/O thread.
    @inline(__always)
    @inlinable
    public var isCurrent: Bool { ckeel_current_io_thread() == Unmanaged.passUnretained(self).toOpaque() }

    @inline(__always)
    func preconditionCurrent(_ function: StaticString = #function) {
        precondition(isCurrent, "IOThread.\(function) called off its I/O thread")
    }

    // MARK: Cross-thread work

    /// Runs `task` on this I/O thread: at once when called on it, otherwise queued and run by the loop
    /// soon. Tasks from one producer run in the order they were given. Tasks given after shutdown are
    /// dropped.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        if isCurrent {
            task()
        } else {
            schedule(task)
        }
    }

    /// Queues `task` to run on this I/O thread on a later loop iteration, even when called on it.
    /// - Returns: false when the thread has stopped and the task was dropped.
    @discardableResult
    public func schedule(_ task: @escaping @Sendable () -> Void) -> Bool {
        switch inbox.append(task) {
        case .queuedWake:
            backend.wakeup()
            return true
        case .queued:
            return true
        case .closed:
            return false
        }
    }

    /// Runs `body` on this I/O thread and returns its result to the awaiting task.
    /// - Throws: ``KeelError/Code-swift.struct/shutDown`` when the thread stops before running it, or what `body` throws.
    public func submit<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws -> Result {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Result, any Error>) in
            let accepted = schedule {
                continuation.resume(with: Swift.Result { try body() })
            }
            if !accepted {
                continuation.resume(throwing: KeelError(.shutDown, context: "IOThread \(index) has stopped"))
            }
        }
    }

    // MARK: Operations (I/O thread only)

    /// Submits `operation`; `handler` gets its completions on this thread. Submissions are batched:
    /// the kernel sees them at the next loop iteration. The thread keeps `handler` alive until the
    /// operation's final completion; reusing one handler object for many operations allocates nothing.
    ///
    /// I/O thread only.
    @discardableResult
    public func submit(_ operation: IOOperation, handler: IOCompletionHandler) -> OperationID {
        preconditionCurrent()
        let token = loop.pointee.operations.insert(handler)
        backend.push(operation, token: token)
        return OperationID(token: token)
    }

    /// ``submit(_:handler:)`` without retaining `handler`, for a handler its owner keeps alive until
    /// the operation's final completion (Keel's connection objects and their completion handlers, which
    /// their thread keeps for its life): a retain and a release less per operation.
    ///
    /// I/O thread only.
    @discardableResult
    package func submit(_ operation: IOOperation, unretainedHandler handler: IOCompletionHandler) -> OperationID {
        preconditionCurrent()
        let token = loop.pointee.operations.insert(handler, retains: false)
        backend.push(operation, token: token)
        return OperationID(token: token)
    }

    /// Submits `operation`; `completion` runs on this thread with the result. Convenient, but wraps the
    /// closure in a new handler object per call: hot paths use ``submit(_:handler:)`` with a handler
    /// made once.
    ///
    /// I/O thread only.
    @discardableResult
    public func submit(_ operation: IOOperation, _ completion: @escaping (IOCompletion) -> Void) -> OperationID {
        submit(operation, handler: ClosureCompletionHandler(completion))
    }

    /// Requests cancellation of an in-flight operation. Its completion still runs, with
    /// ``IOCompletion/isCancelled`` (or with its real result, if it finished first). Unknown or finished
    /// operations are ignored.
    ///
    /// I/O thread only.
    public func cancel(_ operation: OperationID) {
        preconditionCurrent()
        guard loop.pointee.operations.contains(operation.token) else { return }
        backend.cancel(operation.token)
    }

    /// Takes the next pooled buffer a ``IOOperation/receivePooled(_:multishot:)`` completion carries:
    /// usually one, several in order when the ring received a bundle (``KernelFeatures/receiveBundles``),
    /// so call it until it returns nil. Call it inside that completion's handler; later, or for another
    /// completion, it returns nil (buffers not taken have gone back to the pool).
    ///
    /// I/O thread only.
    public func takeReceivedBuffer(_ completion: IOCompletion) -> IOBuffer? {
        preconditionCurrent()
        return takeReceivedBufferInCompletion(completion)
    }

    /// ``takeReceivedBuffer(_:)`` for completion handlers of Keel's own, which the loop runs on this
    /// thread: without the check of the calling thread (a thread-local look-up per receive).
    @inline(__always)
    package func takeReceivedBufferInCompletion(_ completion: IOCompletion) -> IOBuffer? {
        guard let pending = loop.pointee.receivedBuffer, pending == completion else { return nil }
        return takeNextReceivedBuffer(pending)
    }

    @inline(__always)
    private func takeNextReceivedBuffer(_ pending: IOCompletion) -> IOBuffer? {
        let index = loop.pointee.receivedBufferIndex
        let buffer = backend.takeBuffer(pending, index: index)
        if buffer == nil || index + 1 >= loop.pointee.receivedBufferCount {
            loop.pointee.receivedBuffer = nil
        } else {
            loop.pointee.receivedBufferIndex = index + 1
        }
        return buffer
    }

    /// Zero-copy sends so far. I/O thread only.
    public var zeroCopySendStatistics: ZeroCopySendStatistics {
        preconditionCurrent()
        var statistics = loop.pointee.zeroCopy
        if case .ring(let ring) = backend { statistics.fromRegisteredBuffers = ring.registeredBufferSends }
        return statistics
    }

    /// Sockets entered in this thread's registered file table now (``KernelFeatures/registeredFiles``;
    /// always 0 without it). I/O thread only.
    public var registeredDescriptorCount: Int {
        preconditionCurrent()
        if case .ring(let ring) = backend { return ring.registeredDescriptorCount }
        return 0
    }

    /// Completions reaped so far of operations nobody waits for (closes, registered-table updates and
    /// cancels through the ring): with ``KernelFeatures/completionSkipping``, only failed ones. I/O
    /// thread only.
    public var ignoredCompletionCount: Int {
        preconditionCurrent()
        return loop.pointee.ignoredCompletions
    }

    /// Receive bundles so far. I/O thread only.
    public var receiveBundleStatistics: ReceiveBundleStatistics {
        preconditionCurrent()
        return loop.pointee.receiveBundles
    }

    /// Counts a zero-copy notification (`completion` is one). I/O thread only.
    public func noteZeroCopyNotification(_ completion: IOCompletion) {
        loop.pointee.zeroCopy.notified += 1
        if completion.zeroCopyFellBackToCopy { loop.pointee.zeroCopy.copied += 1 }
    }

    /// Operations submitted and not yet completed.
    ///
    /// I/O thread only.
    public var inFlightOperations: Int {
        preconditionCurrent()
        return loop.pointee.operations.inFlight
    }

    // MARK: Timers (I/O thread only)

    /// Arms a callback timer on the monotonic clock: it runs on this thread `delay` from now (never
    /// earlier; within about 1 ms later when the loop is not busy), then every `interval` if given.
    ///
    /// I/O thread only.
    @discardableResult
    public func scheduleTimer(
        after delay: Duration, repeating interval: Duration? = nil, _ callback: @escaping () -> Void
    ) -> TimerHandle {
        preconditionCurrent()
        return loop.pointee.timers.schedule(
            nowNanoseconds: nowNanoseconds, delay: delay.nanoseconds, interval: interval?.nanoseconds, callback)
    }

    /// Moves a pending timer's deadline to `delay` from now, keeping its callback (and interval).
    /// O(1) and allocation-free: idle timeouts reset this way on every read.
    /// - Returns: false when the timer already fired (one-shot) or was cancelled.
    ///
    /// I/O thread only.
    @discardableResult
    public func resetTimer(_ timer: TimerHandle, after delay: Duration) -> Bool {
        preconditionCurrent()
        return loop.pointee.timers.reset(timer, nowNanoseconds: nowNanoseconds, delay: delay.nanoseconds)
    }

    /// Disarms a timer. - Returns: false when it already fired (one-shot) or was cancelled.
    ///
    /// I/O thread only.
    @discardableResult
    public func cancelTimer(_ timer: TimerHandle) -> Bool {
        preconditionCurrent()
        return loop.pointee.timers.cancel(timer)
    }

    /// True while `timer` is armed.
    ///
    /// I/O thread only.
    public func isTimerPending(_ timer: TimerHandle) -> Bool {
        preconditionCurrent()
        return loop.pointee.timers.isPending(timer)
    }

    /// Timers armed on this thread.
    ///
    /// I/O thread only.
    public var pendingTimerCount: Int {
        preconditionCurrent()
        return loop.pointee.timers.count
    }

    // MARK: Blocking work

    /// Runs `work` on the work pool (never on an I/O thread) and delivers its result to `completion`
    /// on this I/O thread.
    public func runBlocking<Value: Sendable>(
        _ work: @escaping @Sendable () throws -> Value,
        then completion: @escaping @Sendable (Result<Value, any Error>) -> Void
    ) {
        workPool.run(work, deliverOn: self, completion)
    }

    // MARK: The loop

    /// Runs the loop until a stop is requested and in-flight work has drained. Called once, on the
    /// thread that created the backend.
    func run() {
        ckeel_set_current_io_thread(Unmanaged.passUnretained(self).toOpaque())
        defer { ckeel_set_current_io_thread(nil) }
        var shutdownDeadline: UInt64 = 0
        while true {
            let moreTasks = runInbox()
            // The clock is read only with timers armed or while stopping: a vDSO clock read every loop
            // turn cost ~130 ns per connection of a connect storm (perf, io_uring, no timers armed).
            var now: UInt64 = 0
            if loop.pointee.timers.count > 0 || loop.pointee.stopping {
                now = ckeel_monotonic_ns()
                loop.pointee.timers.fireExpired(nowNanoseconds: now)
            }

            if stopRequested.load(ordering: .relaxed) && !loop.pointee.stopping {
                beginStopping()
                now = ckeel_monotonic_ns()
                shutdownDeadline = now + 5_000_000_000
            }
            if loop.pointee.stopping && (loop.pointee.operations.inFlight == 0 || now >= shutdownDeadline) {
                break
            }

            runBeforeWaitHooks()
            bufferPool.publishStatistics()
            // Hooks and timer callbacks may have armed the first timer since the clock was read.
            if now == 0 && loop.pointee.timers.count > 0 { now = ckeel_monotonic_ns() }
            var wait = moreTasks ? 0 : loop.pointee.timers.nanosecondsUntilNextTimer(nowNanoseconds: now)
            if loop.pointee.stopping { wait = min(wait ?? 10_000_000, 10_000_000) }
            do {
                try backend.submitAndWait(waitNanoseconds: wait)
            } catch {
                BackendKind.logger.error("I/O thread \(index): \(error)")
            }
            backend.drain { token, completion in dispatch(token, completion) }  // not `drain(dispatch)`: a method reference retains self per turn
            bufferPool.drainReturns()
        }
        finishLoop()
    }

    /// The loop has ended: runs the tasks accepted before the stop (later ones are refused: schedule
    /// returns false), releases timers and the operation table, and closes the backend.
    func finishLoop() {
        inbox.closeAndDrain()
        // Hooks hold their owners (registries, servers); dropping them breaks the cycles through this thread.
        for hook in loop.pointee.beforeWaitHooks { hook.release() }
        loop.pointee.beforeWaitHooks = []
        loop.pointee.beforeWaitHookIDs = []
        loop.pointee.shutdownHooks = []
        loop.pointee.timers.deallocate()
        loop.pointee.operations.deallocate()
        backend.close()
    }

    @inline(__always)
    func runBeforeWaitHooks() {
        // Index loop: a hook may register or remove hooks while they run.
        var index = 0
        while index < loop.pointee.beforeWaitHooks.count {
            if loop.pointee.beforeWaitHookIDs[index] != 0 {
                loop.pointee.beforeWaitHooks[index]._withUnsafeGuaranteedRef { $0.beforeWait() }
            }
            index += 1
        }
        if loop.pointee.removedBeforeWaitHooks > 0 {
            var kept = 0
            for i in loop.pointee.beforeWaitHookIDs.indices {
                guard loop.pointee.beforeWaitHookIDs[i] != 0 else {
                    loop.pointee.beforeWaitHooks[i].release()
                    continue
                }
                loop.pointee.beforeWaitHooks[kept] = loop.pointee.beforeWaitHooks[i]
                loop.pointee.beforeWaitHookIDs[kept] = loop.pointee.beforeWaitHookIDs[i]
                kept += 1
            }
            loop.pointee.beforeWaitHooks.removeLast(loop.pointee.beforeWaitHooks.count - kept)
            loop.pointee.beforeWaitHookIDs.removeLast(loop.pointee.beforeWaitHookIDs.count - kept)
            loop.pointee.removedBeforeWaitHooks = 0
        }
    }

    @inline(__always)
    func dispatch(_ token: Token, _ completion: IOCompletion) {
        switch token.kind {
        case .callback?:
            // The handler is borrowed, not retained: for a multishot operation the table keeps it
            // alive; a final completion's handler, removed from the table, is released after the call.
            if completion.hasMore {
                deliver(completion, to: loop.pointee.operations.lookup(token))
            } else {
                let removed = loop.pointee.operations.remove(token)
                deliver(completion, to: removed?.handler)
                if let removed, removed.retained { removed.handler.release() }
            }
        case .wakeup?:
            if case .ring(let ring) = backend { ring.armWakeup() }
        case .ignored?:
            loop.pointee.ignoredCompletions += 1
        case nil:
            break
        }
    }

    /// A pooled stream receive's buffer, filled by the backend at readiness (epoll): straight to the
    /// handler's ``IOCompletionHandler/received(_:_:)``, with no queued completion or buffer hand-off.
    @inline(__always)
    func dispatchReceived(_ token: Token, _ buffer: consuming IOBuffer, _ completion: IOCompletion) {
        // An optional to move the buffer through the borrowing closure (a capture cannot be consumed).
        var handedOver: IOBuffer? = buffer
        if completion.hasMore {
            guard let handler = loop.pointee.operations.lookup(token) else { return }
            handler._withUnsafeGuaranteedRef { $0.received(handedOver.take()!, completion) }
        } else {
            guard let removed = loop.pointee.operations.remove(token) else { return }
            removed.handler._withUnsafeGuaranteedRef { $0.received(handedOver.take()!, completion) }
            if removed.retained { removed.handler.release() }
        }
    }

    /// What ``IOCompletionHandler/received(_:_:)`` does unless overridden: `buffer` goes back to the
    /// form a queued completion carries (lent, named by chunk in the flags), and the handler's
    /// ``IOCompletionHandler/complete(_:)`` takes it with ``takeReceivedBuffer(_:)``.
    func completeHandingOver(_ buffer: consuming IOBuffer, _ completion: IOCompletion, to handler: IOCompletionHandler) {
        let chunk = bufferPool.lendBack(buffer)
        precondition(chunk == completion.bufferChunk, "a received buffer handed over with another's completion")
        deliver(completion, to: .passUnretained(handler))
    }

    /// Calls `handler` (nil: a stale token) with `completion`; a pooled buffer it did not take goes
    /// back to the pool.
    @inline(__always)
    private func deliver(_ completion: IOCompletion, to handler: Unmanaged<IOCompletionHandler>?) {
        if completion.hasBuffer {
            loop.pointee.receivedBuffer = completion
            loop.pointee.receivedBufferIndex = 0
            let count = backend.bufferCount(completion)
            loop.pointee.receivedBufferCount = count
            if count > 1 {
                loop.pointee.receiveBundles.bundles += 1
                loop.pointee.receiveBundles.buffers += count
            }
        }
        handler?._withUnsafeGuaranteedRef { $0.complete(completion) }
        while completion.hasBuffer, let untaken = loop.pointee.receivedBuffer {
            _ = takeNextReceivedBuffer(untaken)
        }
    }

    /// Tasks run per loop iteration at most, so I/O completions keep flowing under a flood of tasks.
    static let inboxBatch = 4096

    /// Runs queued tasks. - Returns: true when more may be waiting (the loop must not sleep).
    @inline(__always)
    @discardableResult
    private func runInbox() -> Bool {
        inbox.drain(limit: IOThread.inboxBatch) == IOThread.inboxBatch
    }

    /// Registers `hook` to run on this thread every loop iteration, after completions, tasks and timers
    /// and just before the thread submits its operations and waits. Socket layers flush coalesced
    /// writes here: every write made during one iteration leaves in one system call per connection.
    ///
    /// I/O thread only. - Returns: the registration, for ``removeHook(_:)``.
    @discardableResult
    public func beforeEachWait(_ hook: @escaping () -> Void) -> IOThreadHook {
        beforeEachWait(running: ClosureWaitHook(hook))
    }

    /// ``beforeEachWait(_:)`` for a hook object: the thread retains it until the hook is removed or
    /// the thread ends, and calls it without reference counting (per-turn hooks on the message path).
    @discardableResult
    public func beforeEachWait(running hook: IOThreadWaitHook) -> IOThreadHook {
        preconditionCurrent()
        loop.pointee.nextHookID += 1
        loop.pointee.beforeWaitHooks.append(.passRetained(hook))
        loop.pointee.beforeWaitHookIDs.append(loop.pointee.nextHookID)
        return IOThreadHook(id: loop.pointee.nextHookID, kind: .beforeEachWait)
    }

    /// Registers `hook` to run on this thread when it begins stopping (``IOPool/shutdown()``), before
    /// in-flight operations are cancelled: servers close their listeners and connections there.
    ///
    /// I/O thread only. - Returns: the registration, for ``removeHook(_:)``.
    @discardableResult
    public func onShutdown(_ hook: @escaping () -> Void) -> IOThreadHook {
        preconditionCurrent()
        loop.pointee.nextHookID += 1
        loop.pointee.shutdownHooks.append((loop.pointee.nextHookID, hook))
        return IOThreadHook(id: loop.pointee.nextHookID, kind: .shutdown)
    }

    /// Removes a hook registered with ``beforeEachWait(_:)`` or ``onShutdown(_:)`` and releases it (and
    /// what it captured): a shutdown hook at once, a before-wait hook when the hooks next run (it may
    /// be running now). Removing one twice, or one already run (a shutdown hook), does nothing.
    ///
    /// I/O thread only.
    public func removeHook(_ registration: IOThreadHook) {
        preconditionCurrent()
        switch registration.kind {
        case .beforeEachWait:
            guard let index = loop.pointee.beforeWaitHookIDs.firstIndex(of: registration.id) else { return }
            loop.pointee.beforeWaitHookIDs[index] = 0  // released when the hooks are next compacted
            loop.pointee.removedBeforeWaitHooks += 1
        case .shutdown:
            loop.pointee.shutdownHooks.removeAll { $0.id == registration.id }
        }
    }

    /// Hooks registered and not removed: (before each wait, at shutdown). For leak checks.
    ///
    /// I/O thread only.
    public var registeredHookCounts: (beforeEachWait: Int, shutdown: Int) {
        preconditionCurrent()
        return (loop.pointee.beforeWaitHooks.count - loop.pointee.removedBeforeWaitHooks, loop.pointee.shutdownHooks.count)
    }

    func beginStopping() {
        let hooks = loop.pointee.shutdownHooks
        loop.pointee.shutdownHooks = []
        for entry in hooks { entry.hook?() }
        loop.pointee.stopping = true
        for token in loop.pointee.operations.inFlightTokens() {
            backend.cancel(token)
        }
    }

    /// Asks the loop to stop: in-flight operations are cancelled (their completions run with
    /// ``IOCompletion/isCancelled``), pending timers are dropped, and the thread exits.
    func requestStop() {
        stopRequested.store(true, ordering: .relaxed)
        backend.wakeup()
    }
}

/// A hook's registration on an ``IOThread``, for ``IOThread/removeHook(_:)``.
public struct IOThreadHook: Sendable, Hashable {
    enum Kind: Sendable, Hashable { case beforeEachWait, shutdown }
    let id: UInt64
    let kind: Kind
}
