import CKeelLinux
import Glibc
import KeelBuffers
import KeelEngine
import KeelSystem
import SystemPackage

/// One TCP connection, owned by exactly one I/O thread.
///
/// Reads are a multishot pooled receive (io_uring provided buffers; emulated on epoll), so an idle
/// connection holds no buffer. Writes are always sent in order: when nothing is queued the send is
/// tried at once (the inline fast path) and only what did not go out is queued and sent with one
/// vectored `sendmsg` per batch.
///
/// **Threading:** use it on its ``thread`` only (inside handler callbacks, or in ``IOThread/execute(_:)``);
/// calls from other threads trap. To reach a connection from elsewhere (another thread, a task, a
/// timer that may outlive it), keep its ``handle``: a handle names this connection *and this peer*,
/// marshals writes and closes to the owning thread, and is ignored once that peer's connection closed.
///
/// **Lifetime:** connection objects are recycled after ``TCPConnectionHandler/connectionClosed(_:reason:)``;
/// do not keep using one after that callback (a ``handle`` is safe to keep).
public class TCPConnection: IOCompletionHandler, @unchecked Sendable {
    // @unchecked Sendable: every mutable property is touched only on `thread` (checked by
    // `thread.isCurrent` at the public entry points); cross-thread calls are marshalled with a
    // generation check so a recycled object is never written to by a stale caller.
    // Stored properties are `@exclusivity(unchecked)`: they are only ever touched on the connection's
    // I/O thread (so no two accesses can overlap across threads), re-entrancy is ruled out by design
    // (events caused by a callback are deferred), and a dynamic check per access cost about a third of
    // the connection's user-space time per message (measured with callgrind).

    // Declaration order is memory layout: references and words first, then each 9-byte optional
    // (operation IDs, timer handles) followed by the flags and 32-bit fields that fit in its padding.
    // Idle connections are the bulk of a big server's memory; this order saves ~50 bytes each.

    /// The I/O thread that owns this connection.
    public let thread: IOThread
    /// The per-thread list that flushes coalesced writes before the thread waits (nil: send at once).
    /// Unretained: the list keeps this object alive (``FlushList/adopt(_:)``), so a strong reference
    /// back would be a cycle, and scheduling costs no reference counting; the list lives as long as
    /// the thread runs (the thread's flush hook holds its registry), which outlives every use of this
    /// property (all on that thread).
    @exclusivity(unchecked) var flushList: Unmanaged<FlushList>?
    /// The filter stack (nil for most connections: they pay one nil check per event).
    @exclusivity(unchecked) var filterStack: TCPFilterStack?
    /// The last peer's stack, kept when all its filters are reusable (``TCPReusableFilter``) to serve
    /// the next peer without making filters again. Its registry lets go of it when it retires. Kept in
    /// the side object: most connections have no filters.
    var recycledFilterStack: TCPFilterStack? {
        get { rareClosures?.recycledFilterStack }
        set { if newValue != nil || rareClosures != nil { closures.recycledFilterStack = newValue } }
    }
    /// Timeouts, flow control and socket options, shared by every connection of one server or
    /// connector (one reference instead of ~100 bytes per connection).
    @exclusivity(unchecked) private var settings = ConnectionSettings.default
    /// Buffers that arrived after reading was paused (already read from the socket): delivered, in
    /// order, when reading resumes, so pausing never loses data nor lets the handler run ahead.
    @exclusivity(unchecked) private var stash: [DetachedBuffer] = []
    @exclusivity(unchecked) private var stashHead = 0

    /// The message header of the send in flight, followed in the same allocation by its iovec array:
    /// made on the first queued send (an idle or inline-only connection never needs it), then kept for
    /// the object's lifetime.
    @exclusivity(unchecked) private var message: UnsafeMutablePointer<msghdr>?
    private static let maximumVectors = 64

    // Completion handlers and timer callbacks, each made once per object and reused, so the steady
    // state allocates nothing. The connection itself handles its pooled receives' completions (every
    // connection has one in flight: a handler object of its own cost 48 bytes per connection); the
    // rest live in a side object made on first use: an idle connection that never queues a send or
    // times out does not pay for them (about 100 bytes per connection).
    @exclusivity(unchecked) private var rareClosures: RareClosures?
    @exclusivity(unchecked) private var sendCompletions: Completions?

    @exclusivity(unchecked) private var writeQueue = WriteQueue()
    /// Writes dropped by the ``SendQueuePolicy/dropNewest`` or ``SendQueuePolicy/dropOldest`` policies.
    public var droppedWrites: Int { rareClosures?.droppedWrites ?? 0 }
    /// Bytes of those dropped writes.
    public var droppedWriteBytes: Int { rareClosures?.droppedWriteBytes ?? 0 }
    /// Items of the write queue included in the send in flight (they cannot be dropped).
    @exclusivity(unchecked) private var itemsInFlight = 0
    @exclusivity(unchecked) private var deferredWriteCompleted = 0

    /// A handler's buffer that the next read continues into (``continueReading(into:)``).
    @exclusivity(unchecked) private var accumulator: DetachedBuffer?
    /// Open, closing, closed; the close asked for; which sides have shut down (decided as a value).
    @exclusivity(unchecked) private var lifecycle = TCPConnectionLifecycle()
    @exclusivity(unchecked) private var deferredWritability: Bool?

    @exclusivity(unchecked) private var receiveOperation: OperationID?
    /// Whether a receive is in flight, paused, or cancelled by this connection (decided as a value).
    @exclusivity(unchecked) private var readState = TCPReadState()
    /// Read by readiness (poll, then recv) so urgent bytes are taken before the stream passes them.
    @exclusivity(unchecked) private var receivesUrgentData = false
    /// The socket as the thread's operations name it (-1 once closed): an ordinary descriptor, or, for a
    /// connection accepted into the ring's file table (``KernelFeatures/directDescriptors``), the slot
    /// marked with ``IOThread/directDescriptorFlag``. For system calls of your own use
    /// ``systemDescriptor``.
    @exclusivity(unchecked) public private(set) var descriptor: Int32 = -1
    /// An ordinary descriptor of the socket for system calls of your own (a socket option, say), nil once
    /// closed: ``descriptor`` itself, or for a direct descriptor one the kernel installs on first use.
    /// The connection closes it; do not. I/O thread only.
    public var systemDescriptor: Int32? {
        guard descriptor >= 0 else { return nil }
        let fd = thread.systemDescriptor(descriptor)
        return fd >= 0 ? fd : nil
    }

    @exclusivity(unchecked) private var sendOperation: OperationID?
    @exclusivity(unchecked) private var sendInFlight = false
    @exclusivity(unchecked) private var flushScheduled = false
    /// A filter asked for a flush (``TCPFilterContext/requestFlush()``) with the next coalesced send.
    @exclusivity(unchecked) private var filterFlushRequested = false
    /// False while the write queue is above the high watermark (until it drains to the low one).
    @exclusivity(unchecked) public private(set) var isWritable = true
    /// The last peer's connection closed before its filters let it open (a refused PROXY header, a
    /// failed TLS handshake): its handler never saw it. Set as it finishes; counted by servers.
    var closedBeforeOpening = false
    /// Writes made in this connection's own receive callback are held and leave at its end in one
    /// `send`, skipping the write queue and the flush list (see ``LoneWrite``). Set as the connection
    /// opens: with writes coalesced without a delay, on a backend whose flush is a system call per
    /// connection anyway (epoll, the in-memory one); io_uring batches its sends into one submission.
    @exclusivity(unchecked) private var sendsAtCallbackEnd = false
    @exclusivity(unchecked) private var loneWrite = LoneWrite.none
    /// Incremented each time the object is reused, so stale handles are ignored.
    @exclusivity(unchecked) private(set) var generation: UInt32 = 0

    @exclusivity(unchecked) private var idleTimer: TimerHandle?
    @exclusivity(unchecked) private var finishDeferred = false
    /// The handler wants ``TCPConnectionHandler/connectionWriteCompleted(_:bytes:)``
    /// (``TCPConnectionHandler/observesWriteCompletion``); filters always get their event.
    @exclusivity(unchecked) var reportsWriteCompletion = true
    @exclusivity(unchecked) private var pendingOperations: Int32 = 0
    @exclusivity(unchecked) private var readTimer: TimerHandle?
    @exclusivity(unchecked) private var deferredLimitExceeded = false
    @exclusivity(unchecked) private var callbackDepth: Int32 = 0
    @exclusivity(unchecked) private var retryTimer: TimerHandle?
    /// Why the connection closed, once it has. Inline: kept in the side object, it made every closing
    /// connection allocate that object.
    @exclusivity(unchecked) public private(set) var closeReason: TCPCloseReason?

    /// The peer's address: as a filter set it (``TCPFilterContext/setRemoteAddress(_:)``, e.g. from a
    /// PROXY header), else as the kernel reports it (asked on each use: not stored, so idle connections
    /// stay small).
    public var remoteAddress: SocketAddress? {
        if let override = filterStack?.remoteAddressOverride { return override }
        return descriptor >= 0 ? thread.peerAddress(descriptor) : nil
    }
    /// This side's address: as a filter set it, else as the kernel reports it.
    public var localAddress: SocketAddress? {
        if let override = filterStack?.localAddressOverride { return override }
        return descriptor >= 0 ? thread.localAddress(descriptor) : nil
    }
    /// Where the connection is in its life (open, closing, closed).
    var state: TCPConnectionLifecycle.Phase { lifecycle.phase }
    private var peerHalfClosed: Bool { lifecycle.peerHalfClosed }
    private var idleTimeout: Duration? { settings.options.idleTimeout }
    private var readTimeout: Duration? { settings.options.readTimeout }
    /// The connection's write bounds (set when it opens).
    public var flowControl: TCPFlowControl { settings.options.flowControl }

    /// Where a receive callback's lone write is: the one write a request-response handler makes per
    /// message leaves at the callback's end with one `send` (no queue, flush list or flush hook: ~150
    /// instructions per echoed message, callgrind). A second write, any other write, a close or a
    /// question about the queue first moves the held one into the write queue, which then flushes as
    /// usual, so every path past the first write sees the ordinary queue.
    private enum LoneWrite: UInt8 {
        /// Writes queue as usual.
        case none
        /// In a receive callback that may hold its first write: nothing queued, no send in flight, no
        /// flush scheduled.
        case mayHold
        /// The thread's ``FlushList/heldWrite`` is this connection's first write of the callback.
        case holding
    }

    /// Routes one kind of operation's completions to the connection.
    private final class Completions: IOCompletionHandler {
        enum Kind { case receiveInto, readable, send }
        /// Unretained: the connection outlives its operations (connection objects are recycled, and
        /// their registry's ``FlushList`` keeps them for as long as the thread runs), and a counted
        /// reference would cost an atomic retain and release on every completion.
        let connection: Unmanaged<TCPConnection>
        let kind: Kind

        init(_ connection: TCPConnection, _ kind: Kind) {
            self.connection = .passUnretained(connection)
            self.kind = kind
        }

        override func complete(_ completion: IOCompletion) {
            connection._withUnsafeGuaranteedRef { connection in
                switch kind {
                case .receiveInto: connection.receiveIntoCompleted(completion)
                case .readable: connection.readableSignalled(completion)
                case .send: connection.sendCompleted(completion)
                }
            }
        }
    }

    private final class RareClosures {
        unowned let connection: TCPConnection
        // Each made on first use: made together, they cost seven allocations per connection that
        // needed any one of them.
        lazy var onReceiveInto = Completions(connection, .receiveInto)
        lazy var onReadable = Completions(connection, .readable)
        lazy var onIdle: () -> Void = { [unowned connection] in connection.timedOut(.idleTimeout) }
        lazy var onReadTimeout: () -> Void = { [unowned connection] in connection.timedOut(.readTimeout) }
        lazy var onRetryReceive: () -> Void = { [unowned connection] in
            connection.retryTimer = nil
            connection.startReceiving()
        }
        /// Zero-copy sends that completed but whose notification has not arrived: the kernel may
        /// still read what they sent.
        var zeroCopyNotificationsPending = 0
        /// What left the write queue while a notification was pending (made on the first zero-copy
        /// send, kept for the object's life).
        var retiredWrites: UnsafeMutablePointer<WriteQueue>?
        /// What this peer's first zero-copy send showed.
        var zeroCopyRoute = ZeroCopyRoute.untested
        /// Writes (and their bytes) dropped by a drop policy: kept here, as most connections have none.
        var droppedWrites = 0
        var droppedWriteBytes = 0
        /// See ``TCPConnection/recycledFilterStack``.
        var recycledFilterStack: TCPFilterStack?

        /// Whether zero-copy pays on a connection's route: the first large send goes zero-copy and
        /// its notification says whether the kernel copied anyway (loopback, a device without
        /// scatter-gather); until it arrives, sends copy.
        enum ZeroCopyRoute {
            case untested, testing, sendsFromPages, copies
        }

        /// True when the next large send may go zero-copy (starting the test on an untested route;
        /// `always`: the option that skips the test).
        func mayStartZeroCopy(always: Bool) -> Bool {
            if always { return true }
            switch zeroCopyRoute {
            case .untested:
                zeroCopyRoute = .testing
                return true
            case .sendsFromPages: return true
            case .testing, .copies: return false
            }
        }

        /// Records what a notification showed (`keepsUsingWhenCopied`: the option that disables the test).
        func noteZeroCopyOutcome(copied: Bool, keepsUsingWhenCopied: Bool) {
            guard zeroCopyRoute == .testing else { return }
            zeroCopyRoute = copied && !keepsUsingWhenCopied ? .copies : .sendsFromPages
        }

        deinit {
            retiredWrites?.pointee.deallocate()
            retiredWrites?.deallocate()
        }

        init(_ connection: TCPConnection) {
            self.connection = connection
        }
    }

    private var closures: RareClosures {
        if let rareClosures { return rareClosures }
        let made = RareClosures(self)
        rareClosures = made
        return made
    }

    private var onReceiveInto: Completions { closures.onReceiveInto }
    private var onReadable: Completions { closures.onReadable }
    /// The send completion handler, made on the first send (every send on io_uring goes through it).
    private var onSend: Completions {
        if let sendCompletions { return sendCompletions }
        let made = Completions(self, .send)
        sendCompletions = made
        return made
    }
    private var onIdle: () -> Void { closures.onIdle }
    private var onReadTimeout: () -> Void { closures.onReadTimeout }
    private var onRetryReceive: () -> Void { closures.onRetryReceive }

    /// Where items leaving the write queue go while a zero-copy notification is pending; nil (release
    /// them at once) otherwise.
    @inline(__always)
    private var retiring: UnsafeMutablePointer<WriteQueue>? {
        guard let rareClosures, rareClosures.zeroCopyNotificationsPending > 0 else { return nil }
        return rareClosures.retiredWrites
    }

    init(thread: IOThread) {
        self.thread = thread
        super.init()
    }

    /// The completions of this connection's pooled receives: the connection is their handler, which
    /// saves an object per connection. Called by its I/O thread; not for application code.
    public override func complete(_ completion: IOCompletion) {
        receiveCompleted(completion)
    }

    /// A pooled receive's buffer handed over at readiness (the epoll backend): the same as
    /// ``complete(_:)`` without taking the buffer from the thread. Not for application code.
    public override func received(_ buffer: consuming IOBuffer, _ completion: IOCompletion) {
        if !completion.hasMore { receiveEnded() }
        deliverInbound(buffer)
        afterReceive(completion)
    }

    deinit {
        writeQueue.deallocate()
        message?.deallocate()
    }

    // MARK: Handler hooks (overridden by the generic subclass that stores the handler)

    func deliverEstablished() {}
    func deliverReceived(_ buffer: consuming IOBuffer) {}
    func deliverPeerHalfClosed() { close() }
    func deliverWriteCompleted(_ bytes: Int) {}
    func deliverClosed(_ reason: TCPCloseReason) {}
    func deliverWritabilityChanged(_ isWritable: Bool) {}
    func deliverWriteLimitExceeded(_ queuedBytes: Int) {}
    func deliverUrgent(_ byte: UInt8) {}
    func deliverErrorCaught(_ error: any Error) { closeForError(error) }

    /// Closes abortively with ``TCPCloseReason/Code/protocolError`` naming `error` (what an unhandled
    /// error from a filter does).
    public func closeForError(_ error: any Error) {
        close(.abortive, reason: TCPCloseReason(.protocolError, detail: "\(error)"))
    }

    /// Closes the connection for the handler's own reason (a subscriber too slow for a must-not-lose
    /// feed: ``TCPCloseReason/slowConsumer``); the closed callbacks see `reason` rather than
    /// ``TCPCloseReason/local``. Otherwise as ``close(_:)``.
    public func close(_ mode: TCPCloseMode, reason: TCPCloseReason) {
        precondition(thread.isCurrent, "TCPConnection.close called off its I/O thread: use connection.handle")
        noteCloseReason(reason)
        close(mode)
    }
    /// Called after `deliverClosed`: the owner may reuse the object.
    func didFinish() {}

    // MARK: Lifecycle

    /// Takes over `fd` (connected, non-blocking) and starts the connection. `endpoint` (the listener or
    /// target) is evaluated only when the options make filters. `inheritedSocketOptions`: the socket
    /// already has the options' no-delay, keep-alive and buffer sizes (an accepted socket inherits its
    /// listener's on Linux), which saves a `setsockopt` per connection.
    func open(descriptor fd: Int32, settings: ConnectionSettings, inheritedSocketOptions: Bool = false,
              endpoint: @autoclosure () -> TCPFilterSetup.Endpoint) {
        if self.settings !== settings { self.settings = settings }  // recycled objects: usually the same
        isWritable = true
        if let rareClosures {
            rareClosures.droppedWrites = 0
            rareClosures.droppedWriteBytes = 0
        }
        itemsInFlight = 0
        readState.reset()
        deferredWritability = nil
        deferredLimitExceeded = false
        generation &+= 1
        finishDeferred = false
        flushScheduled = false
        filterFlushRequested = false
        loneWrite = .none
        sendsAtCallbackEnd = thread.backendKind != .ioUring
            && flushList.map { !$0._withUnsafeGuaranteedRef { $0.delaysFlushes } } ?? false
        descriptor = fd
        lifecycle.opened()
        closeReason = nil
        rareClosures?.zeroCopyRoute = .untested
        deferredWriteCompleted = 0
        thread.registerDescriptor(fd)
        if !inheritedSocketOptions {
            thread.configureStream(fd, noDelay: settings.options.noDelay, keepAliveIdleSeconds: settings.options.keepAliveIdleSeconds,
                                   receiveBufferSize: settings.options.receiveBufferSize)
        }
        if let idleTimeout { idleTimer = thread.scheduleTimer(after: idleTimeout, onIdle) }
        if let readTimeout { readTimer = thread.scheduleTimer(after: readTimeout, onReadTimeout) }
        receivesUrgentData = settings.options.receivesUrgentData
        if let makeFilters = settings.options.makeFilters {
            let setup = TCPFilterSetup(endpoint: endpoint(), localAddress: thread.localAddress(fd),
                                       remoteAddress: thread.peerAddress(fd))
            if let recycled = recycledFilterStack.take(), recycled.prepareForReuse(setup) {
                filterStack = recycled
            } else {
                let filters = makeFilters(setup)
                if !filters.isEmpty { filterStack = TCPFilterStack(connection: self, filters: filters, endpoint: setup.endpoint) }
            }
        }
        withCallback {
            if let bottom = filterStack?.bottom {
                bottom.filter?.connectionEstablished(context: bottom)
            } else {
                deliverEstablished()
            }
        }
        if state == .open { startReceiving() }
    }

    /// Runs a handler callback, then delivers events it caused (never re-entrantly).
    @inline(__always)
    private func withCallback(_ body: () -> Void) {
        callbackDepth += 1
        body()
        endCallback()
    }

    /// Ends a handler callback and delivers the events it caused.
    @inline(__always)
    private func endCallback() {
        callbackDepth -= 1
        if callbackDepth == 0 && (deferredWriteCompleted > 0 || finishDeferred || deferredWritability != nil || deferredLimitExceeded) {
            deliverDeferredEvents()
        }
    }

    private func deliverDeferredEvents() {
        // A handler's writes inside these callbacks can raise the same events again (a relay resumed by
        // "writable" refills the queue past the watermark at once): loop until none is left, or the
        // second "not writable" would wait for an event that a stalled peer never causes.
        while state == .open && (deferredLimitExceeded || deferredWritability != nil) {
            if deferredLimitExceeded {
                deferredLimitExceeded = false
                callbackDepth += 1
                deliverWriteLimitExceeded(writeQueue.bytes)
                callbackDepth -= 1
            }
            if let writable = deferredWritability, state == .open {
                deferredWritability = nil
                callbackDepth += 1
                emitWritabilityChanged(writable)
                callbackDepth -= 1
            }
        }
        while deferredWriteCompleted > 0 && state != .closed {
            let bytes = deferredWriteCompleted
            deferredWriteCompleted = 0
            callbackDepth += 1
            emitWriteCompleted(bytes)
            callbackDepth -= 1
        }
        if finishDeferred {
            finishDeferred = false
            finishIfQuiet()
        }
    }

    // MARK: Reading

    private func startReceiving() {
        guard readState.shouldReceive(isOpen: lifecycle.isOpen, peerHalfClosed: peerHalfClosed) else { return }
        readState.receiveStarted()
        pendingOperations += 1
        // Handlers unretained by the thread: this object and its completion handlers live as long as
        // their registry (its flush list holds them), and a connection finishes, letting the registry
        // retire, only when no operation of it is pending.
        if let accumulator {
            receiveOperation = thread.submit(.receive(descriptor, into: accumulator.writableRegion), unretainedHandler: onReceiveInto)
        } else if receivesUrgentData {
            receiveOperation = thread.submit(.pollReadable(descriptor), unretainedHandler: onReadable)
        } else {
            receiveOperation = thread.submit(.receivePooled(descriptor, multishot: true), unretainedHandler: self)
        }
    }

    /// Makes the next read continue into the free space of `buffer`, after its unread bytes, and hands
    /// the grown buffer back through ``TCPConnectionHandler/connectionReceived(_:on:)``: a message that
    /// arrives in pieces is gathered in one buffer without copying. Reads go back to pooled buffers
    /// after that one (call again to keep accumulating). A full buffer is handed back at once.
    ///
    /// Call it on the connection's thread (typically from `connectionReceived`).
    public func continueReading(into buffer: consuming IOBuffer) {
        precondition(thread.isCurrent, "continueReading(into:) must be called on the connection's I/O thread")
        if let stack = filterStack {
            // Above filters the next bytes are decoded ones: they are appended to the handler's buffer
            // where they reach the handler (one copy), never fed back into the filters.
            guard state == .open, !peerHalfClosed, stack.handlerAccumulator == nil else { return }
            if buffer.writableBytes == 0 { buffer.compact() }
            if buffer.writableBytes == 0 { return deliverReceived(buffer) }
            stack.handlerAccumulator = buffer.detach()
            return
        }
        guard state == .open, !peerHalfClosed, accumulator == nil else { return }
        if buffer.writableBytes == 0 { buffer.compact() }
        if buffer.writableBytes == 0 {
            // Nothing more fits: give it straight back (through the same path as any received buffer).
            return deliverInbound(buffer)
        }
        accumulator = buffer.detach()
        if let receiveOperation, readState.stopRequested() {
            thread.cancel(receiveOperation)  // the multishot receive ends; its completion starts the next read
        } else {
            startReceiving()
        }
    }

    /// True while reading is paused (by ``pauseReading()`` or by flow control).
    public var isReadingPaused: Bool { readState.isPaused }

    /// Stops reading from this connection: no more ``TCPConnectionHandler/connectionReceived(_:on:)``
    /// until ``resumeReading()``, and TCP pushes back on the peer once its buffers fill. For proxies:
    /// pause the inbound side while the outbound side is not writable.
    public func pauseReading() {
        precondition(thread.isCurrent, "pauseReading() must be called on the connection's I/O thread")
        readState.pausedByUser = true
        stopReceiving()
    }

    /// Resumes reading after ``pauseReading()``.
    public func resumeReading() {
        precondition(thread.isCurrent, "resumeReading() must be called on the connection's I/O thread")
        readState.pausedByUser = false
        resumeDelivery()
    }

    /// Delivers stashed buffers while reading stays unpaused, then receives again.
    private func resumeDelivery() {
        if let stack = filterStack, !stack.handlerStash.isEmpty {
            callbackDepth += 1
            while !stack.handlerStash.isEmpty && !isReadingPaused && state == .open {
                deliverToHandler(stack.handlerStash.removeFirst().reattach(), stack: stack)
            }
            if stack.handlerStash.isEmpty && stack.handlerHalfClosePending && state == .open {
                stack.handlerHalfClosePending = false
                deliverPeerHalfClosed()
            }
            endCallback()
            if !stack.handlerStash.isEmpty { return }
        }
        while stashHead < stash.count && !isReadingPaused && state == .open {
            let next = stash[stashHead]
            stashHead += 1
            deliverNow(next.reattach())
        }
        if stashHead == stash.count {
            stash.removeAll(keepingCapacity: true)
            stashHead = 0
            if readState.endOfStreamPending {
                readState.endOfStreamPending = false
                endOfStreamReached()
                if state == .open && lifecycle.bothSidesShutDown { teardown(reason: .peerClosed) }
            } else {
                startReceiving()
            }
        }
    }

    private func releaseStash() {
        guard !stash.isEmpty else { return }  // the usual case: replacing an empty array still releases it
        for index in stashHead..<stash.count { stash[index].release() }
        stash.removeAll()
        stashHead = 0
    }

    private func stopReceiving() {
        if let receiveOperation, readState.stopRequested() {
            thread.cancel(receiveOperation)
        }
    }

    /// Hands a received buffer to the filters (if any), then the handler; while reading is paused, or
    /// earlier buffers wait, it is stashed instead.
    private func deliverInbound(_ buffer: consuming IOBuffer) {
        if let idleTimer, let idleTimeout { thread.resetTimer(idleTimer, after: idleTimeout) }
        if let readTimer, let readTimeout { thread.resetTimer(readTimer, after: readTimeout) }
        guard state == .open else { return }
        if isReadingPaused || stashHead < stash.count {
            stash.append(buffer.detach())
            return
        }
        deliverNow(buffer)
    }

    @inline(__always)
    private func deliverNow(_ buffer: consuming IOBuffer) {
        callbackDepth += 1
        // A full buffer says more is waiting: this turn's later callbacks may write too, and their
        // writes should leave together with the flush.
        let holdsWrite = sendsAtCallbackEnd && callbackDepth == 1 && buffer.writableBytes > 0
            && writeQueue.isEmpty && !sendInFlight && !flushScheduled
        if holdsWrite { loneWrite = .mayHold }
        if let bottom = filterStack?.bottom {
            bottom.filter?.filterInbound(buffer, context: bottom)
        } else {
            deliverReceived(buffer)
        }
        endCallback()
        if holdsWrite { sendLoneWrite() }  // after the callback: its write-completed event is not deferred
    }

    @inline(__always)
    private func receiveCompleted(_ completion: IOCompletion) {
        if !completion.hasMore { receiveEnded() }
        if let buffer = thread.takeReceivedBufferInCompletion(completion) {
            // More than one buffer only in a bundle, whose buffers are filled in turn: asking again
            // after every receive cost ~20 instructions per message.
            let bundle = Int(completion.result) > buffer.capacity
            deliverInbound(buffer)
            if bundle {
                while let more = thread.takeReceivedBufferInCompletion(completion) { deliverInbound(more) }
            }
        } else {
            handleReceiveEnd(completion)
        }
        afterReceive(completion)
    }

    /// The receive in flight gave its final completion.
    @inline(__always)
    private func receiveEnded() {
        readState.receiveEnded()
        receiveOperation = nil
        pendingOperations -= 1
    }

    private func receiveIntoCompleted(_ completion: IOCompletion) {
        receiveEnded()
        guard var filled = accumulator.take() else { return finishIfQuiet() }
        if completion.result > 0 {
            filled.moveWriterIndex(forwardBy: Int(completion.result))
            deliverInbound(filled.reattach())
        } else if completion.result == -EAGAIN || completion.result == -EINTR
            || (completion.isCancelled && readState.cancelRequested)
        {
            accumulator = filled  // still the handler's (paused, or retrying): the next read continues into it
            handleReceiveEnd(completion)
        } else if completion.result == 0 && filled.readableBytes > 0 {
            // What the handler gathered is its own: it comes back before the end of stream (as the peer
            // has shut down, the handler cannot gather into it again).
            lifecycle.peerShutDown()
            deliverInbound(filled.reattach())
            handleReceiveEnd(completion)
        } else {
            filled.release()
            handleReceiveEnd(completion)
        }
        afterReceive(completion)
    }

    /// A receive completed without data: end of stream, pool exhaustion, cancellation or an error.
    private func handleReceiveEnd(_ completion: IOCompletion) {
        if completion.result == 0 {
            lifecycle.peerShutDown()
            if stashHead < stash.count {
                readState.endOfStreamPending = true  // after the stashed bytes, when reading resumes
            } else {
                endOfStreamReached()
            }
        } else if completion.result == -ENOBUFS {
            // The buffer pool is exhausted: back off and receive again when buffers may be back.
            if state == .open, retryTimer == nil {
                retryTimer = thread.scheduleTimer(after: .milliseconds(1), onRetryReceive)
            }
        } else if completion.result == -EAGAIN || completion.result == -EINTR {
            // As for sends (see sendCompleted): nothing is wrong; the receive starts again below.
        } else if completion.isCancelled {
            // Cancelled by this connection (pause, continueReading), or from outside: the thread stops.
            if !readState.cancellationArrived() && state == .open {
                teardown(reason: .local)
            }
        } else if completion.result < 0 {
            fail(errno: completion.result)
        }
    }

    /// Hands the peer's half-close to the filters (if any), then the handler.
    private func endOfStreamReached() {
        guard state == .open else { return }
        withCallback {
            if let bottom = filterStack?.bottom {
                bottom.filter?.peerHalfClosed(context: bottom)
            } else {
                deliverPeerHalfClosed()
            }
        }
    }

    private func afterReceive(_ completion: IOCompletion) {
        if !readState.receiving {
            if state == .open && !peerHalfClosed && completion.result != -ENOBUFS {
                startReceiving()  // a multishot receive can end early (e.g. completion queue overflow)
            } else if lifecycle.bothSidesShutDown && !readState.endOfStreamPending {
                teardown(reason: .peerClosed)
            }
        }
        finishIfQuiet()
    }

    // MARK: Writing

    /// Sends `buffer` after everything queued before it. Tries the send at once when nothing is
    /// queued; queues only what did not go out. Ignored (the buffer released) once closing.
    /// With filters installed, the buffer goes down through them first.
    public func write(_ buffer: consuming IOBuffer) {
        // Both calls are tail calls: the common one costs no register saves (~20 instructions a write).
        if filterStack == nil && thread.isCurrent { return writeToSocket(buffer) }
        writeCheckingThreadAndFilters(buffer)
    }

    @inline(never)
    private func writeCheckingThreadAndFilters(_ buffer: consuming IOBuffer) {
        precondition(thread.isCurrent, "TCPConnection.write called off its I/O thread: use connection.handle")
        if let stack = filterStack {
            guard !stack.handlerClosed else { return }
            if let top = stack.top, let filter = top.filter { return filter.filterOutbound(buffer, context: top) }
        }
        writeToSocket(buffer)
    }

    // MARK: Filter stack ends (the handler above the top filter, the socket below the bottom one)

    /// True while events may still travel through the filters.
    var isOpenForEvents: Bool { state == .open }

    /// Records why the connection closes, unless a reason is already known.
    func noteCloseReason(_ reason: TCPCloseReason) {
        if closeReason == nil { closeReason = reason }
    }

    /// Schedules the filters' flushes (``TCPFilterContext/requestFlush()``) with the coalesced writes.
    /// - Returns: false when this connection does not coalesce writes or is not open.
    func scheduleFilterFlush() -> Bool {
        guard let flushList, state == .open else { return false }
        filterFlushRequested = true
        if !flushScheduled {
            flushScheduled = true
            flushList._withUnsafeGuaranteedRef { $0.schedule(self) }
        }
        return true
    }

    /// Queues `buffer` for the socket (the bottom of the filter stack). A receive callback's first
    /// write is held (see ``LoneWrite``); anything else goes on to ``writeToSocketNow(_:)``. Small and
    /// inlined, so holding needs no register saves.
    @inline(__always)
    func writeToSocket(_ buffer: consuming IOBuffer) {
        if loneWrite == .mayHold, lifecycle.acceptsWrites, buffer.readableBytes > 0,
           buffer.readableBytes < settings.zeroCopySendThreshold, let flushList,
           case let slot = flushList._withUnsafeGuaranteedRef({ $0.heldWrite }), slot.pointee == nil {
            slot.pointee = consume buffer
            loneWrite = .holding
            return
        }
        writeToSocketNow(buffer)
    }

    /// Sends or queues `buffer` after anything held or queued before it. Ignored once the close
    /// reached the socket.
    @inline(never)
    func writeToSocketNow(_ buffer: consuming IOBuffer) {
        guard lifecycle.acceptsWrites else { return }
        if buffer.readableBytes == 0 { return }
        if loneWrite != .none { queueLoneWrite() }
        if flushList == nil && writeQueue.isEmpty && !sendInFlight && buffer.readableBytes < settings.zeroCopySendThreshold {
            let readable = buffer.readableBytes
            if readable == 0 { return }
            let outcome = buffer.withUnsafeReadableBytes { bytes in
                Result { () throws(SystemError) in try thread.send(descriptor, bytes) }
            }
            switch outcome {
            case .success(.completed(let sent)):
                if sent == readable {
                    noteWriteCompleted(sent)
                    return
                }
                buffer.consume(sent)
                if sent > 0 { noteWriteCompleted(sent) }
            case .success(.wouldBlock):
                break
            case .failure(let error):
                return fail(errno: -error.errno.rawValue)
            }
        }
        let size = buffer.readableBytes
        enqueue(.owned(buffer.detach()), size: size)
    }

    /// Sends a shared payload after everything queued before it, without copying it; the payload is
    /// released when the send completes. One payload may be written to many connections. (With filters
    /// installed it is copied into pooled buffers so the filters see it like any other write; if the
    /// pool runs dry part-way, the connection closes with ``TCPCloseReason/Code/resourceExhausted``
    /// rather than send a stream with a gap.)
    public func write(_ buffer: SharedBuffer) {
        precondition(thread.isCurrent, "TCPConnection.write called off its I/O thread: use connection.handle")
        if let stack = filterStack, stack.top != nil {
            return copySharedWrite(buffer) { write($0) }
        }
        writeSharedToSocket(buffer)
    }

    /// Copies a shared payload into pooled buffers for `deliver` (a filter must see bytes it may change).
    /// If the pool runs dry part-way, the connection closes rather than send a stream with a gap.
    func copySharedWrite(_ buffer: SharedBuffer, to deliver: (consuming IOBuffer) -> Void) {
        var remaining = buffer.unsafeReadableBytes
        while !remaining.isEmpty && state == .open {
            guard var copy = try? thread.bufferPool.acquire() else {
                noteCloseReason(TCPCloseReason(.resourceExhausted, detail: "buffer pool exhausted while copying a shared write"))
                return close(.abortive)
            }
            let count = copy.append(remaining)
            remaining = UnsafeRawBufferPointer(rebasing: remaining[count...])
            deliver(copy)
        }
    }

    /// Queues a shared payload for the socket (the bottom of the filter stack), without copying it.
    func writeSharedToSocket(_ buffer: SharedBuffer) {
        guard lifecycle.acceptsWrites, buffer.readableBytes > 0 else { return }
        if loneWrite != .none { queueLoneWrite() }
        var offset = 0
        if flushList == nil && writeQueue.isEmpty && !sendInFlight && buffer.readableBytes < settings.zeroCopySendThreshold {
            switch Result(catching: { () throws(SystemError) in try thread.send(descriptor, buffer.unsafeReadableBytes) }) {
            case .success(.completed(let sent)):
                if sent > 0 { noteWriteCompleted(sent) }
                if sent == buffer.readableBytes { return }
                offset = sent
            case .success(.wouldBlock):
                break
            case .failure(let error):
                return fail(errno: -error.errno.rawValue)
            }
        }
        enqueue(.shared(buffer, offset: offset), size: buffer.readableBytes - offset)
    }

    /// Ends this callback's holding: the held write, if there is one, taken from the thread's slot.
    @inline(__always)
    private func takeLoneWrite() -> IOBuffer? {
        let wasHolding = loneWrite == .holding
        loneWrite = .none
        guard wasHolding else { return nil }
        return flushList?._withUnsafeGuaranteedRef({ $0.heldWrite }).pointee.take()
    }

    /// Moves a held lone write into the write queue (which then flushes it as usual), and holds no more
    /// writes in this callback.
    private func queueLoneWrite() {
        guard let held = takeLoneWrite() else { return }
        let size = held.readableBytes
        enqueue(.owned(held.detach()), size: size)
    }

    /// The receive callback that may have held a lone write has ended: send it. What the kernel does
    /// not take is queued.
    private func sendLoneWrite() {
        guard var held = takeLoneWrite() else { return }
        guard state == .open else { return }  // (released with `held`)
        let size = held.readableBytes
        let sent = thread.sendBytes(descriptor, UnsafeRawBufferPointer(start: held.unsafeReadableAddress, count: size))
        if sent == size { return noteWriteCompleted(sent) }
        if sent < 0 && sent != -Int(EAGAIN) { return fail(errno: Int32(sent)) }
        if sent > 0 {
            held.consume(sent)
            noteWriteCompleted(sent)
        }
        enqueue(.owned(held.detach()), size: size - max(sent, 0))
    }

    /// Queues what the inline send did not take (`size` readable bytes), applying the hard limit and
    /// the watermarks. Inlined into the write path; what a write past the hard limit does is not.
    @inline(__always)
    private func enqueue(_ item: consuming WriteQueue.Item, size: Int) {
        if let limit = flowControl.hardLimit, writeQueue.bytes + size > limit {
            return enqueuePastHardLimit(item, size: size, limit: limit)
        }
        queueAdmitted(item, size: size)
    }

    /// A write that takes the queue past its hard limit: the policy decides.
    private func enqueuePastHardLimit(_ item: consuming WriteQueue.Item, size: Int, limit: Int) {
        let bound = SendQueueBound(maximumCount: .max, maximumBytes: limit, policy: flowControl.policy)
        let (verdict, droppedItems, droppedBytes) = bound.admit(size: size, count: writeQueue.count, bytes: writeQueue.bytes) {
            writeQueue.dropOldest(after: itemsInFlight, retiringInto: retiring)
        }
        noteDropped(droppedItems, bytes: droppedBytes)
        switch verdict {
        case .queue:
            break
        case .queueOverBound:
            deferredLimitExceeded = true
        case .drop:
            if case .owned(let buffer) = item { buffer.release() }
            noteDropped(1, bytes: size)
            return
        case .refuse:
            // A stream cannot skip a write: the slow consumer is closed.
            if case .owned(let buffer) = item { buffer.release() }
            discardQueuedWrites()
            thread.setAbortiveClose(descriptor)
            return teardown(reason: .slowConsumer)
        }
        queueAdmitted(item, size: size)
    }

    /// Queues an admitted write, then applies the high watermark and schedules the send.
    @inline(__always)
    private func queueAdmitted(_ item: consuming WriteQueue.Item, size: Int) {
        writeQueue.append(item, size: size)
        if isWritable && writeQueue.bytes > flowControl.highWatermark {
            isWritable = false
            noteWritability(false)
            if flowControl.pausesReadingWhileNotWritable {
                readState.pausedByFlowControl = true
                stopReceiving()
            }
        }
        if !sendInFlight {
            if let flushList {
                if !flushScheduled {
                    flushScheduled = true
                    flushList._withUnsafeGuaranteedRef { $0.schedule(self) }
                }
            } else {
                submitSend()
            }
        }
        if deferredLimitExceeded && callbackDepth == 0 { deliverDeferredEvents() }
    }

    private func noteWritability(_ writable: Bool) {
        deferredWritability = writable
        if callbackDepth == 0 { deliverDeferredEvents() }
    }

    /// Sends every buffer of `chain`, in order, after everything queued before it (one vectored send
    /// per batch of up to 64 buffers).
    public func write(_ chain: consuming BufferChain) {
        while let buffer = chain.popFirst() {
            write(buffer)
        }
    }

    /// Sends one urgent (out-of-band) byte at once, ahead of anything queued: the peer's
    /// ``TCPConnectionHandler/connectionReceivedUrgent(_:byte:)`` gets it apart from the normal stream.
    /// (TCP carries one urgent byte at a time; a newer one replaces an unread older one.)
    /// - Returns: false when the connection is closing or the kernel refused it.
    @discardableResult
    public func sendUrgent(_ byte: UInt8) -> Bool {
        precondition(thread.isCurrent, "sendUrgent must run on the connection's I/O thread")
        guard state == .open, !lifecycle.writeShutdown else { return false }
        var value = byte
        let outcome = withUnsafeBytes(of: &value) { bytes in
            Result { () throws(SystemError) in try thread.send(descriptor, bytes, urgent: true) }
        }
        if case .success(.completed(1)) = outcome { return true }
        return false
    }

    /// The readiness-driven read path of connections that receive urgent data: an in-band read that
    /// passes the urgent mark discards the urgent byte, so each read first takes any urgent byte
    /// (`recv(MSG_OOB)`), then reads the stream into pooled buffers until it would block.
    private func readableSignalled(_ completion: IOCompletion) {
        readState.receiveEnded()
        receiveOperation = nil
        pendingOperations -= 1
        var outcome = completion
        if completion.result > 0 && state == .open {
            outcome = IOCompletion(result: 0, flags: 0)
            var rounds = 0
            reading: while state == .open && !peerHalfClosed && !isReadingPaused && accumulator == nil && rounds < 16 {
                rounds += 1
                takeUrgentByte()
                guard var buffer = try? thread.bufferPool.acquire() else {
                    outcome = IOCompletion(result: -ENOBUFS)
                    handleReceiveEnd(outcome)
                    break
                }
                let target = UnsafeMutableRawBufferPointer(start: buffer.unsafeWritableAddress, count: buffer.writableBytes)
                switch Result(catching: { () throws(SystemError) in try thread.receive(descriptor, into: target) }) {
                case .success(.completed(let n)) where n > 0:
                    buffer.moveWriterIndex(forwardBy: n)
                    deliverInbound(buffer)
                    continue
                case .success(.wouldBlock):
                    break reading
                case .success:
                    outcome = IOCompletion(result: 0)
                    handleReceiveEnd(outcome)  // end of stream
                    break reading
                case .failure(let error):
                    outcome = IOCompletion(result: -error.errno.rawValue)
                    handleReceiveEnd(outcome)
                    break reading
                }
            }
            if state == .open { takeUrgentByte() }
            if outcome.result == 0 && !peerHalfClosed { outcome = IOCompletion(result: 1) }
        } else if completion.result <= 0 {
            handleReceiveEnd(completion)
        }
        afterReceive(outcome)
    }

    private func takeUrgentByte() {
        var byte: UInt8 = 0
        let outcome = withUnsafeMutableBytes(of: &byte) { target in
            Result { () throws(SystemError) in try thread.receive(descriptor, into: target, urgent: true) }
        }
        if case .success(.completed(1)) = outcome {
            withCallback { deliverUrgent(byte) }
        }
    }

    /// Bytes queued for sending and not yet accepted by the kernel.
    public var queuedWriteBytes: Int {
        guard loneWrite == .holding, let flushList else { return writeQueue.bytes }
        return writeQueue.bytes + (flushList._withUnsafeGuaranteedRef { $0.heldWrite }.pointee?.readableBytes ?? 0)
    }

    @inline(__always)
    private func noteWriteCompleted(_ bytes: Int) {
        if !reportsWriteCompletion && filterStack == nil { return }
        if callbackDepth > 0 {
            deferredWriteCompleted += bytes
        } else {
            withCallback { emitWriteCompleted(bytes) }
        }
    }

    /// Counts writes a drop policy dropped.
    private func noteDropped(_ count: Int, bytes: Int) {
        guard count > 0 else { return }
        closures.droppedWrites += count
        closures.droppedWriteBytes += bytes
    }

    /// The iovec array and message header (one allocation: the header, then the array), made on first
    /// use and kept.
    private func sendVectors() -> (UnsafeMutablePointer<iovec>, UnsafeMutablePointer<msghdr>) {
        if message == nil {
            // msghdr's size is a multiple of iovec's alignment, so the array starts aligned after it.
            let capacity = 1 + (Self.maximumVectors * MemoryLayout<iovec>.stride + MemoryLayout<msghdr>.stride - 1)
                / MemoryLayout<msghdr>.stride
            message = .allocate(capacity: capacity)
            message!.initialize(to: msghdr())
        }
        let vectors = UnsafeMutableRawPointer(message! + 1).bindMemory(to: iovec.self, capacity: Self.maximumVectors)
        return (vectors, message!)
    }

    /// A message header describing the head of the queue (up to ``maximumVectors`` items), and how
    /// many items it covers.
    private func queuedMessage() -> (UnsafeMutablePointer<msghdr>, Int) {
        let (vectors, message) = sendVectors()
        let count = writeQueue.fillIOVecs(vectors, maximum: Self.maximumVectors)
        message.pointee = msghdr()
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = count
        return (message, count)
    }

    private func submitSend() {
        guard !sendInFlight, !writeQueue.isEmpty else { return }  // one send at a time: its completion sends the rest
        let zeroCopy = writeQueue.bytes >= settings.zeroCopySendThreshold && closures.mayStartZeroCopy(always: settings.options.zeroCopyEvenWhenCopied)
        let operation: IOOperation
        if !zeroCopy, let only = writeQueue.onlyRegion {
            // One buffer (most sends of a request-response protocol): no message header or iovec
            // array for the kernel to copy in and check.
            operation = .send(descriptor, from: only)
            itemsInFlight = 1
        } else {
            let (message, count) = queuedMessage()
            itemsInFlight = count
            operation = zeroCopy
                ? .sendMessageZeroCopy(descriptor, UnsafePointer(message)) : .sendMessage(descriptor, UnsafePointer(message))
        }
        sendInFlight = true
        pendingOperations += 1
        sendOperation = thread.submit(operation, unretainedHandler: onSend)  // unretained: see startReceiving
    }

    private func sendCompleted(_ completion: IOCompletion) {
        if completion.isZeroCopyNotification {
            thread.noteZeroCopyNotification(completion)
            closures.noteZeroCopyOutcome(copied: completion.zeroCopyFellBackToCopy,
                                         keepsUsingWhenCopied: settings.options.zeroCopyEvenWhenCopied)
            return zeroCopyNotified()
        }
        sendInFlight = false
        sendOperation = nil
        let itemsSent = itemsInFlight
        itemsInFlight = 0
        if completion.hasMore {
            // A zero-copy send: the kernel may read its buffers until the notification, which stays
            // pending (and keeps the connection from finishing) until it arrives.
            let rare = closures
            if rare.retiredWrites == nil {
                rare.retiredWrites = .allocate(capacity: 1)
                rare.retiredWrites!.initialize(to: WriteQueue())
            }
            rare.zeroCopyNotificationsPending += 1
        } else {
            pendingOperations -= 1
        }
        if state != .open {
            writeQueue.removeAll(retiringInto: retiring)  // closing: what the send held can go now
        } else if completion.result >= 0 {
            afterSent(Int(completion.result), of: itemsSent)
        } else if completion.result == -EAGAIN || completion.result == -EINTR {
            // io_uring can hand a non-blocking socket's EAGAIN back instead of waiting (a retry after a
            // spurious wake-up, such as the peer's FIN arriving, goes to a worker that does not block).
            // The socket is fine: send again, which waits for room as usual.
            submitSend()
        } else if !completion.isCancelled {
            fail(errno: completion.result)
        }
        finishIfQuiet()
    }

    /// The kernel no longer reads what a zero-copy send sent: once no other notification is pending,
    /// what left the queue meanwhile is released.
    private func zeroCopyNotified() {
        pendingOperations -= 1
        let rare = closures
        rare.zeroCopyNotificationsPending -= 1
        if rare.zeroCopyNotificationsPending == 0 { rare.retiredWrites?.pointee.removeAll() }
        finishIfQuiet()
    }

    /// Writes made during one loop iteration leave together: one send of everything queued (up to 64
    /// buffers). On io_uring it is an SQE in the thread's next submission; elsewhere a `sendmsg` tried
    /// at once, what the kernel does not take going on asynchronously.
    func flushCoalescedWrites() {
        while filterFlushRequested, let filterStack {
            // flushScheduled stays set meanwhile: what the filters pass down joins this send. A filter
            // whose flush asked for another (it passed bytes to one below that holds them) gets it.
            filterFlushRequested = false
            filterStack.runRequestedFlushes()
        }
        flushScheduled = false
        guard state == .open, !sendInFlight, !writeQueue.isEmpty else { return }
        if writeQueue.bytes >= settings.zeroCopySendThreshold { return submitSend() }  // zero-copy is asynchronous
        // On io_uring the send joins the thread's next submission, one io_uring_enter for every
        // connection that flushes this turn; a sendmsg here would be a system call each (measured:
        // 5-13 % less server CPU per 64-byte and 4 KiB echo at depth 1, PERFORMANCE.md).
        if thread.backendKind == .ioUring { return submitSend() }
        if let only = writeQueue.onlyRegion {
            let sent = thread.sendBytes(descriptor, only)
            if sent >= 0 {
                afterSent(sent, of: 1)
            } else if sent == -Int(EAGAIN) {
                submitSend()
            } else {
                fail(errno: Int32(sent))
            }
            return finishIfQuiet()
        }
        let (message, items) = queuedMessage()
        switch Result(catching: { () throws(SystemError) in try thread.sendMessage(descriptor, UnsafePointer(message)) }) {
        case .success(.completed(let sent)):
            afterSent(sent, of: items)
        case .success(.wouldBlock):
            submitSend()
        case .failure(let error):
            fail(errno: -error.errno.rawValue)
        }
        finishIfQuiet()
    }

    /// The kernel took `sent` bytes from the front of the queue, of a send of its first `items` items:
    /// move on, and tell whoever cares.
    private func afterSent(_ sent: Int, of items: Int) {
        let countBefore = writeQueue.count
        writeQueue.consume(sent, retiringInto: retiring)
        if sent > 0, let idleTimer, let idleTimeout { thread.resetTimer(idleTimer, after: idleTimeout) }
        // Keep the queue moving first: the callbacks below may write, and must find the next send
        // already in flight or scheduled (one send at a time keeps the bytes in order).
        if !writeQueue.isEmpty {
            // With a coalescing window, writes made while the send was in flight leave with the next
            // window, like any other write (sending them now would make a send per completion, not
            // per window). Only when the send took the whole queue of its time, though: a send that
            // covered part of it (the iovec limit) or that the kernel took part of goes on at once.
            let tookWholeQueue = items < Self.maximumVectors && countBefore - writeQueue.count == items
            if tookWholeQueue, let flushList, flushList._withUnsafeGuaranteedRef({ $0.delaysFlushes }) {
                if !flushScheduled {
                    flushScheduled = true
                    flushList._withUnsafeGuaranteedRef { $0.schedule(self) }
                }
            } else {
                submitSend()
            }
        } else if lifecycle.closeMode != nil {
            // Only when a close waits: building and switching over an action per message cost ~35
            // instructions on the echo path (callgrind).
            perform(lifecycle.queueDrained())
        }
        if sent > 0 && state == .open { noteWriteCompleted(sent) }
        if !isWritable && writeQueue.bytes <= flowControl.lowWatermark && state == .open {
            isWritable = true
            if readState.pausedByFlowControl {
                readState.pausedByFlowControl = false
                resumeDelivery()
            }
            noteWritability(true)
        }
    }

    // MARK: Closing

    /// Closes the connection (see ``TCPCloseMode``). Safe to call more than once; the first call's
    /// mode wins, except that an abortive close overrides a pending graceful one. With filters, a
    /// graceful or half close goes down through them first (each may finish its protocol: a TLS
    /// close_notify) and the handler's later writes are dropped; an abortive close is immediate.
    public func close(_ mode: TCPCloseMode = .graceful) {
        precondition(thread.isCurrent, "TCPConnection.close called off its I/O thread: use connection.handle")
        if let stack = filterStack, mode != .abortive, state == .open {
            guard !stack.handlerClosed else { return }
            stack.handlerClosed = true
            if let top = stack.top {
                callbackDepth += 1
                top.filter?.closeRequested(mode, context: top)
                endCallback()
                return
            }
        }
        closeAtSocket(mode, reason: nil)
    }

    /// Closes at the socket (the bottom of the filter stack, or the whole close without filters).
    func closeAtSocket(_ mode: TCPCloseMode, reason: TCPCloseReason?) {
        if let reason { noteCloseReason(reason) }
        if loneWrite != .none { queueLoneWrite() }  // a graceful close sends it first
        perform(lifecycle.closeRequested(mode, queueIsEmpty: writeQueue.isEmpty && !sendInFlight))
    }

    /// Carries out what the lifecycle decided.
    private func perform(_ action: TCPConnectionLifecycle.Action) {
        switch action {
        case .none:
            break
        case .shutdownWrite:
            thread.shutdownWrite(descriptor)
        case .shutdownWriteThenTearDown(let reason):
            thread.shutdownWrite(descriptor)
            teardown(reason: reason)
        case .tearDown(let reason):
            teardown(reason: reason)
        case .abort:
            thread.setAbortiveClose(descriptor)
            discardQueuedWrites()
            teardown(reason: closeReason ?? .local)
        }
    }

    /// Drops queued writes on the way to closing. Buffers that a send in flight still reads are kept
    /// until it completes: releasing them early could let the kernel send another connection's bytes.
    private func discardQueuedWrites() {
        writeQueue.truncate(keeping: sendInFlight ? itemsInFlight : 0, retiringInto: retiring)
    }

    private func fail(errno code: Int32) {
        let errno = Errno(rawValue: -code)
        let reason: TCPCloseReason = (errno == .connectionReset || errno == .brokenPipe) ? .reset : .error(errno)
        discardQueuedWrites()
        teardown(reason: reason)
    }

    private func timedOut(_ reason: TCPCloseReason) {
        if reason == .idleTimeout { idleTimer = nil } else { readTimer = nil }
        guard state == .open || state == .closing else { return }
        discardQueuedWrites()
        thread.setAbortiveClose(descriptor)
        teardown(reason: reason)
    }

    /// Stops all I/O: cancels the receive and (unless flushing) the send; finishes when they are done.
    private func teardown(reason: TCPCloseReason) {
        if closeReason == nil { closeReason = reason }
        guard lifecycle.beginTearDown() else { return }
        if let idleTimer {
            thread.cancelTimer(idleTimer)
            self.idleTimer = nil
        }
        if let readTimer {
            thread.cancelTimer(readTimer)
            self.readTimer = nil
        }
        if let retryTimer {
            thread.cancelTimer(retryTimer)
            self.retryTimer = nil
        }
        if let receiveOperation { thread.cancel(receiveOperation) }
        if let sendOperation { thread.cancel(sendOperation) }
        finishIfQuiet()
    }

    /// Finishes a closing connection once no operation is pending. Inlined test (it runs several
    /// times per message), outlined work.
    @inline(__always)
    private func finishIfQuiet() {
        if state == .closing && pendingOperations == 0 { finishQuietConnection() }
    }

    private func finishQuietConnection() {
        accumulator.take()?.release()
        releaseStash()
        if callbackDepth > 0 {
            finishDeferred = true  // the closed callback must not run inside another callback
            return
        }
        lifecycle.finished()
        writeQueue.removeAll()
        thread.closeDescriptor(descriptor)
        descriptor = -1
        let reason = closeReason ?? .local
        callbackDepth += 1
        if let stack = filterStack {
            filterStack = nil
            closedBeforeOpening = !stack.handlerEstablished
            stack.connectionClosed(reason)
            if stack.isReusable { recycledFilterStack = stack }
        }
        deliverClosed(reason)
        callbackDepth -= 1
        didFinish()
    }
}
