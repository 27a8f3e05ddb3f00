import KeelBuffers
import KeelEngine

/// A connection that stores its handler value inline and forwards events to it. Generic over the
/// handler so calls specialise (no existential dispatch).
final class HandledConnection<Handler: TCPConnectionHandler>: TCPConnection, @unchecked Sendable {
    // @unchecked Sendable: as TCPConnection, confined to its I/O thread.
    var handler: Handler?
    /// Called when the connection has closed, to recycle the object.
    var onFinish: ((HandledConnection<Handler>) -> Void)?
    /// Position in its registry's live list (for O(1) removal).
    var liveIndex = -1

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
        onFinish?(self)
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
            connection = HandledConnection<Handler>(thread: thread)
            connection.flushList = flushList
            connection.onFinish = { [unowned self] done in
                self.recycle(done)
                self.finished()
            }
        }
        connection.liveIndex = live.count
        live.append(connection)
        return connection
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
final class FlushList: @unchecked Sendable {
    // @unchecked Sendable: touched only on its I/O thread (the registry's); for the same reason its
    // storage needs no dynamic exclusivity check (it is touched for every coalesced write).
    @exclusivity(unchecked) private var pending: [TCPConnection] = []

    func schedule(_ connection: TCPConnection) {
        pending.append(connection)
    }

    /// Flushes every scheduled connection, including any scheduled while flushing.
    func flush() {
        var index = 0
        while index < pending.count {
            pending[index].flushCoalescedWrites()
            index += 1
        }
        if index > 0 { pending.removeAll(keepingCapacity: true) }
    }
}
