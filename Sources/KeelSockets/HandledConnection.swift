import KeelBuffers
import KeelEngine

/// A connection that stores its handler value inline and forwards events to it. Generic over the
/// handler so calls specialise (no existential dispatch).
final class HandledConnection<Handler: TCPConnectionHandler>: TCPConnection, @unchecked Sendable {
    // @unchecked Sendable: as TCPConnection, confined to its I/O thread.

    // The handler value, in memory of its own allocated with the object (recycled with it) and
    // initialized while a connection runs. Not an optional stored property: in this generic class's
    // unspecialised code, every access to a `Handler?` went through the runtime (the optional's
    // metadata looked up, its value witnesses called), hundreds of instructions per event. Events
    // caused by a callback are deferred until it returns, so two handler calls never overlap; debug
    // builds check that rule (`handlerCallDepth`).
    private let handlerStorage: UnsafeMutablePointer<Handler>
    /// True while `handlerStorage` holds a handler.
    private(set) var hasHandler = false
    #if DEBUG
    private var handlerCallDepth = 0
    #endif
    /// The registry that recycles this object when the connection has closed. Unretained, and
    /// borrowed when used: the registry owns its connection objects (through its flush list) and
    /// outlives every use of them; a checked `unowned` load, and even an `unowned(unsafe)` one, costs
    /// a retain and release per connection finished.
    let registry: Unmanaged<ConnectionRegistry<Handler>>
    /// Position in its registry's live list (for O(1) removal).
    var liveIndex = -1

    init(thread: IOThread, registry: ConnectionRegistry<Handler>) {
        self.registry = .passUnretained(registry)
        // An address of its own even for a handler without stored state (one shared address made
        // ThreadSanitizer see every connection's in-place handler calls as one variable raced on), but
        // not an allocation of its own: malloc's smallest chunk is 32 bytes per connection.
        handlerStorage = MemoryLayout<Handler>.size == 0
            ? registry.addressForStatelessHandler().bindMemory(to: Handler.self, capacity: 1)
            : .allocate(capacity: 1)
        super.init(thread: thread)
        reportsWriteCompletion = Handler.observesWriteCompletion
    }

    deinit {
        if hasHandler { handlerStorage.deinitialize(count: 1) }
        if MemoryLayout<Handler>.size > 0 { handlerStorage.deallocate() }
    }

    /// Gives the connection about to open its handler.
    func install(_ handler: consuming Handler) {
        if hasHandler { handlerStorage.deinitialize(count: 1) }
        handlerStorage.initialize(to: handler)
        hasHandler = true
    }

    /// The handler (a copy), nil once the connection has finished. For tests and inspection.
    var handler: Handler? { hasHandler ? handlerStorage.pointee : nil }

    /// Brackets every handler call: the handler must be there, and (debug builds) no call may start
    /// inside another.
    @inline(__always)
    private func enterHandler() {
        precondition(hasHandler, "a connection event arrived with no handler installed")
        #if DEBUG
        precondition(handlerCallDepth == 0, "a handler callback was re-entered")
        handlerCallDepth += 1
        #endif
    }

    @inline(__always)
    private func leaveHandler() {
        #if DEBUG
        handlerCallDepth -= 1
        #endif
    }

    /// Runs `body` on the handler in place.
    @inline(__always)
    private func withHandler(_ body: (inout Handler) -> Void) {
        enterHandler()
        body(&handlerStorage.pointee)
        leaveHandler()
    }

    override func deliverEstablished() { withHandler { $0.connectionEstablished(self) } }
    override func deliverReceived(_ buffer: consuming IOBuffer) {
        enterHandler()
        handlerStorage.pointee.connectionReceived(buffer, on: self)  // not in a closure: the buffer is consumed
        leaveHandler()
    }
    override func deliverPeerHalfClosed() { withHandler { $0.connectionPeerHalfClosed(self) } }
    override func deliverWriteCompleted(_ bytes: Int) { withHandler { $0.connectionWriteCompleted(self, bytes: bytes) } }
    override func deliverClosed(_ reason: TCPCloseReason) {
        guard hasHandler else { return }
        withHandler { $0.connectionClosed(self, reason: reason) }
    }
    override func deliverWritabilityChanged(_ isWritable: Bool) {
        withHandler { $0.connectionWritabilityChanged(self, isWritable: isWritable) }
    }
    override func deliverUrgent(_ byte: UInt8) {
        withHandler { $0.connectionReceivedUrgent(self, byte: byte) }
    }
    override func deliverErrorCaught(_ error: any Error) {
        withHandler { $0.connectionErrorCaught(error, on: self) }
    }
    override func deliverWriteLimitExceeded(_ queuedBytes: Int) {
        withHandler { $0.connectionWriteLimitExceeded(self, queuedBytes: queuedBytes) }
    }

    override func didFinish() {
        if hasHandler {
            hasHandler = false
            handlerStorage.deinitialize(count: 1)
        }
        let refused = closedBeforeOpening
        closedBeforeOpening = false
        registry._withUnsafeGuaranteedRef { $0.connectionFinished(self, closedBeforeOpening: refused) }
    }
}

/// The live and recycled connections of one server on one I/O thread.
///
/// **Threading:** confined to `thread`.
final class ConnectionRegistry<Handler: TCPConnectionHandler>: @unchecked Sendable {
    // @unchecked Sendable: touched only on `thread` (the server reaches it through thread.execute).
    let thread: IOThread
    // Base-class lists: an array of `HandledConnection<Handler>` in this unspecialised generic code
    // made the runtime look up its metadata on every take and recycle (thousands of instructions per
    // connection). Every element is a `HandledConnection<Handler>` of this registry. Unretained: the
    // flush list keeps every connection object of the registry alive (``FlushList/adopt(_:)``), and
    // moving counted references between the lists cost four retain/release pairs per connection.
    // No dynamic exclusivity checks: confined to the thread, never accessed reentrantly (callgrind: the
    // checks cost ~550 instructions per connection opened and closed).
    @exclusivity(unchecked) private var live: [Unmanaged<TCPConnection>] = []
    @exclusivity(unchecked) private var free: [Unmanaged<TCPConnection>] = []
    private let finished: @Sendable (_ closedBeforeOpening: Bool) -> Void

    /// Coalesced writes of this registry's connections, flushed before the thread waits (or on a timer,
    /// with a coalescing delay). It also keeps every connection object alive for as long as the thread
    /// runs (see ``FlushList``), whether or not writes are coalesced.
    let flushList: FlushList
    /// False: connections send at once instead of scheduling a flush.
    let coalescesWrites: Bool
    /// This registry's flush hook on its thread (removed when the registry retires).
    private var flushHook: IOThreadHook?
    /// The owner's shutdown hook on this thread, removed with the flush hook when the registry retires.
    var ownerShutdownHook: IOThreadHook?
    /// The owner stopped: once no connection is open, the hooks go and the thread lets go of the registry.
    private var retiring = false
    /// Distinct one-byte addresses for handlers without stored state, carved from blocks (one per 256
    /// connection objects), and how many the newest block has left.
    private var statelessHandlerBlocks: [UnsafeMutableRawPointer] = []
    private var statelessHandlerAddressesLeft = 0

    deinit {
        // A recycled filter stack refers back to its connection object: let go of it so both can go.
        for connection in free { connection.takeUnretainedValue().recycledFilterStack = nil }
        for connection in live { connection.takeUnretainedValue().recycledFilterStack = nil }
        // A handler without stored state has no bytes to read or write there, so connection objects
        // that outlive the registry (held by an operation in flight) never touch these blocks again.
        for block in statelessHandlerBlocks { block.deallocate() }
    }

    /// A new connection object's own address for a handler without stored state (see
    /// ``HandledConnection``): no byte of it is ever read or written.
    func addressForStatelessHandler() -> UnsafeMutableRawPointer {
        if statelessHandlerAddressesLeft == 0 {
            statelessHandlerBlocks.append(.allocate(byteCount: 256, alignment: 16))
            statelessHandlerAddressesLeft = 256
        }
        statelessHandlerAddressesLeft -= 1
        return statelessHandlerBlocks[statelessHandlerBlocks.count - 1] + statelessHandlerAddressesLeft
    }

    /// `finished` runs on `thread` each time a connection has closed and gone back to the free list.
    /// `coalescingDelay`: ``TCPConnectionOptions/writeCoalescingDelay``.
    init(thread: IOThread, coalescesWrites: Bool = true, coalescingDelay: Duration? = nil,
         finished: @escaping @Sendable (_ closedBeforeOpening: Bool) -> Void) {
        self.thread = thread
        self.finished = finished
        self.coalescesWrites = coalescesWrites
        flushList = FlushList(thread: thread, delay: coalescingDelay)
        // The thread's hook holds the registry (and through it the flush list and every connection
        // object) for as long as the thread runs: a server or connector dropped while connections are
        // open leaves them able to finish, and their completions never reach a freed object.
        thread.execute { [self] in flushHook = thread.beforeEachWait(running: FlushHook(registry: self, flushList: flushList)) }
    }

    /// A connection object ready to open: recycled when one is free, new otherwise.
    func take() -> HandledConnection<Handler> {
        takeUnretained().takeUnretainedValue()
    }

    /// ``take()``, unretained: the registry owns its connection objects (through its flush list), and
    /// a returned counted reference cost a retain and two releases per connection accepted.
    func takeUnretained() -> Unmanaged<HandledConnection<Handler>> {
        let connection: Unmanaged<HandledConnection<Handler>>
        if !free.isEmpty {
            connection = .fromOpaque(free.removeLast().toOpaque())
        } else {
            let made = HandledConnection<Handler>(thread: thread, registry: self)
            if coalescesWrites { made.flushList = Unmanaged.passUnretained(flushList) }
            flushList.adopt(made)
            connection = .passUnretained(made)
        }
        let index = live.count
        connection._withUnsafeGuaranteedRef { $0.liveIndex = index }
        live.append(.fromOpaque(connection.toOpaque()))
        return connection
    }

    /// `connection` has closed: back to the free list, and tell the owner.
    func connectionFinished(_ connection: HandledConnection<Handler>, closedBeforeOpening: Bool) {
        recycle(connection)
        finished(closedBeforeOpening)
        if retiring && live.isEmpty { scheduleRetirement() }
    }

    /// The owner (a server that stopped) needs this registry no more: once its last connection has
    /// finished, its hooks are removed, so the thread stops holding it, its connection objects and the
    /// owner. On this registry's thread.
    func retire() {
        retiring = true
        if live.isEmpty { scheduleRetirement() }
    }

    /// Removes the hooks on a later loop turn: never while a connection of this registry is inside a
    /// callback (removing the last reference would free the object under it).
    private func scheduleRetirement() {
        thread.schedule { [self] in
            guard retiring, live.isEmpty else { return }
            if let flushHook { thread.removeHook(flushHook) }
            if let ownerShutdownHook { thread.removeHook(ownerShutdownHook) }
            flushHook = nil
            ownerShutdownHook = nil
        }
    }

    private func recycle(_ connection: HandledConnection<Handler>) {
        let index = connection.liveIndex
        let last = live.removeLast()
        if index < live.count {
            live[index] = last
            unsafeDowncast(last.takeUnretainedValue(), to: HandledConnection<Handler>.self).liveIndex = index
        }
        connection.liveIndex = -1
        free.append(.passUnretained(connection))
    }

    /// Closes every live connection with `mode`.
    func closeAll(_ mode: TCPCloseMode) {
        // A copy: closing may finish a connection at once, which changes `live`.
        for connection in live { connection.takeUnretainedValue().close(mode) }
    }

    /// Connections open on this thread.
    var liveCount: Int { live.count }
}

/// Connections with writes waiting to be flushed, on one I/O thread.
///
/// Scheduling is the hottest bookkeeping of a coalesced write, so the pending list holds unretained
/// references: the list keeps every connection object of its registry alive itself (``adopt(_:)``,
/// once per object; registries recycle those objects, so this costs nothing per connection opened),
/// which makes each pending entry valid for as long as the list exists. The thread's flush hook holds
/// the registry and so the list: connection objects live as long as the thread runs, even if their
/// server is dropped first, and the completion handlers that refer to them unretained stay valid
/// until every operation has completed.
/// A registry's before-wait hook: flushes its coalesced writes every loop turn, and holds the registry
/// (see ``ConnectionRegistry/init(thread:coalescesWrites:coalescingDelay:finished:)``).
private final class FlushHook: IOThreadWaitHook {
    let registry: AnyObject
    /// The registry's own (it lives as long as the registry this hook holds). Unmanaged and borrowed:
    /// an `unowned(unsafe)` reference is still retained for the call.
    let flushList: Unmanaged<FlushList>

    init(registry: AnyObject, flushList: FlushList) {
        self.registry = registry
        self.flushList = .passUnretained(flushList)
    }

    override func beforeWait() {
        flushList._withUnsafeGuaranteedRef { $0.flushBeforeWait() }
    }
}

final class FlushList: @unchecked Sendable {
    // @unchecked Sendable: touched only on its I/O thread (the registry's); for the same reason its
    // storage needs no dynamic exclusivity check (it is touched for every coalesced write).
    @exclusivity(unchecked) private var members: [TCPConnection] = []
    /// The scheduled connections, `pendingCount` of them in `pendingCapacity` slots. Plain memory, not
    /// an array: the array's append and `removeAll(keepingCapacity:)` (a generic `replaceSubrange`)
    /// cost ~20 instructions per echoed message at depth 1 (callgrind).
    @exclusivity(unchecked) private var pending: UnsafeMutablePointer<Unmanaged<TCPConnection>>
    @exclusivity(unchecked) private var pendingCount = 0
    @exclusivity(unchecked) private var pendingCapacity = 16
    /// A write held until the end of the receive callback that made it, to leave in one `send` without
    /// the write queue or this list (``TCPConnection`` on epoll). One slot per thread is enough: one
    /// connection's receive callback runs at a time, and a nested one finds the slot taken and queues.
    /// In memory of its own, allocated once: a connection reaches it through its unretained reference
    /// to this list, which can only borrow copyable values.
    let heldWrite: UnsafeMutablePointer<IOBuffer?>
    private let thread: IOThread
    /// ``TCPConnectionOptions/writeCoalescingDelay``: nil flushes before each wait; otherwise a timer
    /// armed by the first connection scheduled flushes them all.
    private let delay: Duration?
    private var timerArmed = false
    /// The timer's callback, made once. Weak: the thread's timer wheel holds it while armed.
    private lazy var onTimer: () -> Void = { [weak self] in self?.timerFired() }

    init(thread: IOThread, delay: Duration?) {
        self.thread = thread
        self.delay = delay.flatMap { $0 > .zero ? $0 : nil }
        pending = .allocate(capacity: pendingCapacity)
        heldWrite = .allocate(capacity: 1)
        heldWrite.initialize(to: nil)
    }

    deinit {
        pending.deallocate()
        heldWrite.deinitialize(count: 1)  // (empty: a held write leaves before its callback ends)
        heldWrite.deallocate()
    }

    /// True when flushes wait for a window's timer (``TCPConnectionOptions/writeCoalescingDelay``):
    /// writes that arrive while a send is in flight then wait for the next window too, rather than
    /// leave when that send completes.
    var delaysFlushes: Bool { delay != nil }

    /// Keeps `connection` alive as long as this list: it may be scheduled from now on.
    func adopt(_ connection: TCPConnection) {
        members.append(connection)
    }

    /// Flushes `connection` before the thread next waits (with a delay: when the window that its
    /// write opened or joined ends). It must have been adopted.
    func schedule(_ connection: TCPConnection) {
        if pendingCount == pendingCapacity { growPending() }
        (pending + pendingCount).initialize(to: Unmanaged.passUnretained(connection))
        pendingCount += 1
        if let delay, !timerArmed {
            timerArmed = true
            thread.scheduleTimer(after: delay, onTimer)
        }
    }

    /// The thread is about to wait: flush, unless a delay's timer does.
    func flushBeforeWait() {
        if delay == nil { flush() }
    }

    private func timerFired() {
        timerArmed = false
        flush()
    }

    /// Doubles the pending list's room (grown, never shrunk: after warm-up scheduling allocates nothing).
    @inline(never)
    private func growPending() {
        let larger = UnsafeMutablePointer<Unmanaged<TCPConnection>>.allocate(capacity: pendingCapacity * 2)
        larger.moveInitialize(from: pending, count: pendingCount)
        pending.deallocate()
        pending = larger
        pendingCapacity *= 2
    }

    /// Flushes every scheduled connection, including any scheduled while flushing (which may move the
    /// list: each entry is read afresh).
    func flush() {
        var index = 0
        while index < pendingCount {
            pending[index]._withUnsafeGuaranteedRef { $0.flushCoalescedWrites() }
            index += 1
        }
        pendingCount = 0
    }
}
