import KeelBuffers
import KeelEngine

/// A connection that stores its handler value inline and forwards events to it. Generic over the
/// handler so calls specialise (no existential dispatch).
final class HandledConnection<Handler: TCPConnectionHandler>: TCPConnection, @unchecked Sendable {
    // @unchecked Sendable: as TCPConnection, confined to its I/O thread.

    // The handler value. Events caused by a callback are deferred until it returns, so two handler
    // calls never overlap; debug builds keep the dynamic exclusivity check as a safety net for that
    // rule (the tests run them), release builds drop it: it cost ~230 instructions per echoed
    // message, a tenth of the connection's user-space work (callgrind).
    #if DEBUG
    var handler: Handler?
    #else
    @exclusivity(unchecked) var handler: Handler?
    #endif
    /// The registry that recycles this object when the connection has closed. Unowned: the registry
    /// owns its connection objects (no cycle, and no closure context per connection).
    unowned let registry: ConnectionRegistry<Handler>
    /// Position in its registry's live list (for O(1) removal).
    var liveIndex = -1

    init(thread: IOThread, registry: ConnectionRegistry<Handler>) {
        self.registry = registry
        super.init(thread: thread)
    }

    override func deliverEstablished() { handler!.connectionEstablished(self) }
    override func deliverReceived(_ buffer: consuming IOBuffer) { handler!.connectionReceived(buffer, on: self) }
    override func deliverPeerHalfClosed() { handler!.connectionPeerHalfClosed(self) }
    override func deliverWriteCompleted(_ bytes: Int) { handler!.connectionWriteCompleted(self, bytes: bytes) }
    override func deliverClosed(_ reason: TCPCloseReason) { handler?.connectionClosed(self, reason: reason) }
    override func deliverWritabilityChanged(_ isWritable: Bool) {
        handler!.connectionWritabilityChanged(self, isWritable: isWritable)
    }
    override func deliverUrgent(_ byte: UInt8) {
        handler!.connectionReceivedUrgent(self, byte: byte)
    }
    override func deliverWriteLimitExceeded(_ queuedBytes: Int) {
        handler!.connectionWriteLimitExceeded(self, queuedBytes: queuedBytes)
    }

    override func didFinish() {
        handler = nil
        registry.connectionFinished(self)
    }
}

/// The live and recycled connections of one server on one I/O thread.
///
/// **Threading:** confined to `thread`.
final class ConnectionRegistry<Handler: TCPConnectionHandler>: @unchecked Sendable {
    // @unchecked Sendable: touched only on `thread` (the server reaches it through thread.execute).
    let thread: IOThread
    private var live: [HandledConnection<Handler>] = []
    private var free: [HandledConnection<Handler>] = []
    private let finished: @Sendable () -> Void

    /// Coalesced writes of this registry's connections, flushed before the thread waits (nil: writes
    /// are tried at once).
    let flushList: FlushList?

    /// `finished` runs on `thread` each time a connection has closed and gone back to the free list.
    init(thread: IOThread, coalescesWrites: Bool = true, finished: @escaping @Sendable () -> Void) {
        self.thread = thread
        self.finished = finished
        let flushList = coalescesWrites ? FlushList() : nil
        self.flushList = flushList
        if let flushList { thread.execute { thread.beforeEachWait { flushList.flush() } } }
    }

    /// A connection object ready to open: recycled when one is free, new otherwise.
    func take() -> HandledConnection<Handler> {
        let connection: HandledConnection<Handler>
        if let recycled = free.popLast() {
            connection = recycled
        } else {
            connection = HandledConnection<Handler>(thread: thread, registry: self)
            connection.flushList = flushList.map { Unmanaged.passUnretained($0) }
            flushList?.adopt(connection)
        }
        connection.liveIndex = live.count
        live.append(connection)
        return connection
    }

    /// `connection` has closed: back to the free list, and tell the owner.
    func connectionFinished(_ connection: HandledConnection<Handler>) {
        recycle(connection)
        finished()
    }

    private func recycle(_ connection: HandledConnection<Handler>) {
        let index = connection.liveIndex
        let last = live.removeLast()
        if index < live.count {
            live[index] = last
            last.liveIndex = index
        }
        connection.liveIndex = -1
        free.append(connection)
    }

    /// Closes every live connection with `mode`.
    func closeAll(_ mode: TCPCloseMode) {
        for connection in live { connection.close(mode) }
    }

    /// Connections open on this thread.
    var liveCount: Int { live.count }
}

/// Connections with writes waiting to be flushed, on one I/O thread.
///
/// Scheduling is the hottest bookkeeping of a coalesced write, so the pending list holds unretained
/// references: the list keeps every connection that can be scheduled alive itself (``adopt(_:)``, once
/// per connection object; registries recycle those objects, so this costs nothing per connection
/// opened), which makes each pending entry valid for as long as the list exists.
final class FlushList: @unchecked Sendable {
    // @unchecked Sendable: touched only on its I/O thread (the registry's); for the same reason its
    // storage needs no dynamic exclusivity check (it is touched for every coalesced write).
    @exclusivity(unchecked) private var members: [TCPConnection] = []
    @exclusivity(unchecked) private var pending: [Unmanaged<TCPConnection>] = []

    /// Keeps `connection` alive as long as this list: it may be scheduled from now on.
    func adopt(_ connection: TCPConnection) {
        members.append(connection)
    }

    /// Flushes `connection` before the thread next waits. It must have been adopted.
    func schedule(_ connection: TCPConnection) {
        pending.append(Unmanaged.passUnretained(connection))
    }

    /// Flushes every scheduled connection, including any scheduled while flushing.
    func flush() {
        var index = 0
        while index < pending.count {
            pending[index]._withUnsafeGuaranteedRef { $0.flushCoalescedWrites() }
            index += 1
        }
        if index > 0 { pending.removeAll(keepingCapacity: true) }
    }
}
