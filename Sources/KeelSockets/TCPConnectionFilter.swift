import KeelBuffers
import KeelEngine
import KeelSystem

/// A layer between the socket and the handler, like the C++ framework's stackable connection filters
/// or a channel pipeline's handlers: TLS, a PROXY header reader, an HTTP or WebSocket codec.
///
/// A connection carries an ordered stack of filters. Events travel **up** from the socket to the
/// handler (filter 0 first) and **down** from the handler to the socket (the top filter first):
///
/// ```
///   handler    connectionEstablished  connectionReceived  …PeerHalfClosed  …WritabilityChanged  …WriteCompleted  …ErrorCaught  │ write  close(mode)
///      ▲                                                                                                                     │
///   filter N   connectionEstablished  filterInbound       peerHalfClosed   writabilityChanged   writeCompleted   errorCaught   ▼ filterOutbound  closeRequested
///      ▲        …                                                                                                             │
///   filter 0   connectionEstablished  filterInbound       peerHalfClosed   writabilityChanged   writeCompleted   errorCaught   ▼ filterOutbound  closeRequested
///      ▲                                                                                                                      │
///   socket     open                   bytes received      end of stream    queue watermarks     bytes sent                     ▼ send           shutdown/close
///
///   every filter, bottom first, then the handler: connectionClosed(reason)   (always, exactly once)
/// ```
///
/// Each method's default passes the event on unchanged, so a filter implements only what it changes.
/// A filter may transform, split, hold back or drop what passes through it, originate events of its
/// own in either direction (a TLS handshake, a close_notify before the close continues), hold the
/// handler's ``connectionEstablished(context:)`` back until it is ready (a PROXY header), replace the
/// addresses the handler sees, remove itself, or put other filters above it (an HTTP → WebSocket
/// upgrade). The context (``TCPFilterContext``) is how it does each of these.
///
/// Events a filter causes are delivered in order and never re-entrantly into a callback that is still
/// running below the handler (the connection defers them, as it does for handlers). A connection
/// without filters pays nothing for the mechanism.
///
/// **Threading:** every method runs on the connection's I/O thread. **Lifetime:** a stack is made per
/// connection (``TCPConnectionOptions/makeFilters``) and dropped after ``connectionClosed(_:context:)``.
public protocol TCPConnectionFilter: AnyObject {
    /// The connection opened (its addresses are on the context). Pass it up with
    /// ``TCPFilterContext/passEstablished()``, now or once the filter is ready; reading has started.
    func connectionEstablished(context: TCPFilterContext)
    /// Bytes received from below. Pass them, or what they become, up with ``TCPFilterContext/passInbound(_:)``.
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext)
    /// The peer shut down its sending side (end of stream).
    func peerHalfClosed(context: TCPFilterContext)
    /// The socket's write queue crossed a watermark (see ``TCPFlowControl``).
    func writabilityChanged(_ isWritable: Bool, context: TCPFilterContext)
    /// `bytes` more bytes that this layer passed down have reached the kernel. A filter that changes the
    /// size of what it sends translates the count into the bytes the layer above wrote.
    func writeCompleted(_ bytes: Int, context: TCPFilterContext)
    /// A layer below reported an error that did not close the connection.
    func errorCaught(_ error: any Error, context: TCPFilterContext)
    /// Bytes written from above. Pass them, or what they become, down with ``TCPFilterContext/passOutbound(_:)``.
    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext)
    /// The layer above asked to close (an abortive close does not wait for filters). Finish this layer's
    /// protocol first if it has one (send a close_notify), then continue the close with
    /// ``TCPFilterContext/passClose(_:)``.
    func closeRequested(_ mode: TCPCloseMode, context: TCPFilterContext)
    /// The connection closed: release what the filter holds. Every filter gets it, bottom first.
    func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext)
    /// The filter was put into a stack that is already open (``TCPFilterContext/insertAbove(_:)``):
    /// ``connectionEstablished(context:)`` will not come.
    func filterAdded(context: TCPFilterContext)
    /// The filter was taken out of the stack (``TCPFilterContext/removeFilter()``); no more events come.
    func filterRemoved(context: TCPFilterContext)
    /// The connection is about to send what was written in this loop iteration, and the filter asked
    /// for this call (``TCPFilterContext/requestFlush()``): pass down what it held back to batch it
    /// (TLS turns a burst of small writes into one record).
    func flush(context: TCPFilterContext)
}

extension TCPConnectionFilter {
    public func connectionEstablished(context: TCPFilterContext) { context.passEstablished() }
    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) { context.passInbound(buffer) }
    public func peerHalfClosed(context: TCPFilterContext) { context.passPeerHalfClosed() }
    public func writabilityChanged(_ isWritable: Bool, context: TCPFilterContext) {
        context.passWritabilityChanged(isWritable)
    }
    public func writeCompleted(_ bytes: Int, context: TCPFilterContext) { context.passWriteCompleted(bytes) }
    public func errorCaught(_ error: any Error, context: TCPFilterContext) { context.passError(error) }
    public func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) { context.passOutbound(buffer) }
    public func closeRequested(_ mode: TCPCloseMode, context: TCPFilterContext) { context.passClose(mode) }
    public func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {}
    public func filterAdded(context: TCPFilterContext) {}
    public func filterRemoved(context: TCPFilterContext) {}
    public func flush(context: TCPFilterContext) {}
}

/// A filter that can serve the next peer of its connection object: when every filter a connection's
/// `makeFilters` made is reusable, the stack (filters, contexts and all) is kept with the recycled
/// connection object and put back together for the next peer of the same listener or target, instead of
/// being made again: a connection then opens its filters without allocating.
///
/// The contract: after ``TCPConnectionFilter/connectionClosed(_:context:)`` nothing the filter started
/// may touch its old context (cancel timers there), and no one outside may keep the filter past the
/// close (it will serve another peer).
public protocol TCPReusableFilter: TCPConnectionFilter {
    /// Gets ready for a new connection, as `makeFilters` would have made it for `setup`; false to have a
    /// fresh stack made instead.
    func prepareForNextConnection(_ setup: TCPFilterSetup) -> Bool
}

/// One filter's place in its connection's stack: how it passes events to its neighbours and changes
/// the stack.
///
/// A context stays valid while its connection is open, also after its filter was removed (what the
/// filter passes then still reaches the right neighbours). After the connection closed, every call
/// is ignored, so a filter that kept its context can never touch the next peer of a recycled connection.
///
/// **Threading:** the connection's I/O thread only.
public final class TCPFilterContext {
    /// The connection the filter belongs to.
    public let connection: TCPConnection
    /// The filter this context belongs to; dropped when the connection closes, so a filter that keeps
    /// its context makes no reference cycle.
    private(set) var filter: (any TCPConnectionFilter)?
    /// The next layer up (nil: the handler) and down (nil: the socket).
    var above: TCPFilterContext?
    var below: TCPFilterContext?
    /// True once the filter was removed from the stack.
    public internal(set) var isRemoved = false
    /// True once the connection closed: every call is ignored.
    public internal(set) var isDetached = false
    /// The filter asked for ``TCPConnectionFilter/flush(context:)`` before the thread next waits.
    var wantsFlush = false
    /// The next context removed from the stack before this one (the stack's list of removed contexts,
    /// linked through the contexts themselves so removing a filter allocates nothing).
    var nextRemoved: TCPFilterContext?
    /// The next context up in the stack as it was made (fixed: how a recycled stack is put back together).
    var nextOriginal: TCPFilterContext?

    init(connection: TCPConnection, filter: any TCPConnectionFilter) {
        self.connection = connection
        self.filter = filter
    }

    /// A recycled stack serves a new peer: this context is live again, for `filter`.
    func reattach(filter: any TCPConnectionFilter) {
        self.filter = filter
        isDetached = false
        isRemoved = false
        wantsFlush = false
        nextRemoved = nil
        above = nil
        below = nil
    }

    /// The connection closed: every later call is ignored, and the references to the filter and the
    /// neighbours go.
    func detach() {
        isDetached = true
        filter = nil
        above = nil
        below = nil
        nextRemoved = nil
    }

    /// The connection's thread's buffer pool, for filters that make bytes of their own.
    public var bufferPool: BufferPool { connection.thread.bufferPool }

    /// Asks for one ``TCPConnectionFilter/flush(context:)`` call once the loop iteration's events are
    /// handled, right before the connection sends its coalesced writes, so the filter may hold writes
    /// back until then and pass them down together.
    /// - Returns: false when the connection does not coalesce writes
    ///   (``TCPConnectionOptions/coalescesWrites``) or is closing: then pass writes down at once.
    public func requestFlush() -> Bool {
        guard !isDetached, connection.isOpenForEvents else { return false }
        if wantsFlush { return true }
        guard connection.scheduleFilterFlush() else { return false }
        wantsFlush = true
        return true
    }

    // MARK: Up (toward the handler)

    /// Passes the opening of the connection up (the handler's ``TCPConnectionHandler/connectionEstablished(_:)``
    /// runs once the top filter passes it).
    public func passEstablished() {
        guard !isDetached else { return }
        if let above { above.filter?.connectionEstablished(context: above) } else { connection.stackReachedHandlerEstablished() }
    }

    /// Hands `buffer` to the layer above (the next filter, or the handler).
    public func passInbound(_ buffer: consuming IOBuffer) {
        guard !isDetached, connection.isOpenForEvents else { return }
        if let above { above.filter?.filterInbound(buffer, context: above) } else { connection.stackReachedHandler(buffer) }
    }

    /// Passes the peer's half-close up.
    public func passPeerHalfClosed() {
        guard !isDetached, connection.isOpenForEvents else { return }
        if let above { above.filter?.peerHalfClosed(context: above) } else { connection.stackReachedHandlerPeerHalfClosed() }
    }

    /// Passes a writability change up.
    public func passWritabilityChanged(_ isWritable: Bool) {
        guard !isDetached, connection.isOpenForEvents else { return }
        if let above {
            above.filter?.writabilityChanged(isWritable, context: above)
        } else {
            connection.stackReachedHandlerWritability(isWritable)
        }
    }

    /// Passes write-completion accounting up: `bytes` of what the layer above wrote have been sent.
    public func passWriteCompleted(_ bytes: Int) {
        guard !isDetached, connection.isOpenForEvents, bytes > 0 else { return }
        if let above { above.filter?.writeCompleted(bytes, context: above) } else { connection.stackReachedHandlerWriteCompleted(bytes) }
    }

    /// Reports `error` to the layers above; the handler's ``TCPConnectionHandler/connectionErrorCaught(_:on:)``
    /// decides (by default it closes the connection with ``TCPCloseReason/Code/protocolError``).
    public func passError(_ error: any Error) {
        guard !isDetached, connection.isOpenForEvents else { return }
        if let above { above.filter?.errorCaught(error, context: above) } else { connection.stackReachedHandlerError(error) }
    }

    // MARK: Down (toward the socket)

    /// Hands `buffer` to the layer below (the previous filter, or the socket). Ignored (the buffer
    /// released) once the connection is closing at the socket.
    public func passOutbound(_ buffer: consuming IOBuffer) {
        guard !isDetached else { return }
        if let below { below.filter?.filterOutbound(buffer, context: below) } else { connection.writeToSocket(buffer) }
    }

    /// Hands a shared payload (one prepared for many connections, such as a broadcast frame) to the
    /// layer below. At the bottom of the stack it goes to the socket without a copy; a filter below
    /// (TLS) gets it copied into pooled buffers, since it must transform the bytes anyway.
    public func passOutbound(_ buffer: SharedBuffer) {
        guard !isDetached else { return }
        if let below {
            connection.copySharedWrite(buffer) { copy in below.filter?.filterOutbound(copy, context: below) }
        } else {
            connection.writeSharedToSocket(buffer)
        }
    }

    /// Continues a close toward the socket: the layer below sees ``TCPConnectionFilter/closeRequested(_:context:)``,
    /// or, at the bottom, the connection closes with `mode`.
    public func passClose(_ mode: TCPCloseMode) {
        guard !isDetached else { return }
        if let below { below.filter?.closeRequested(mode, context: below) } else { connection.closeAtSocket(mode, reason: nil) }
    }

    /// Closes the connection for this filter's own reason (a failed handshake, a protocol error): the
    /// close goes down from here (filters below may still finish their protocol unless `mode` is
    /// abortive), and the handler and every filter see `reason` in their closed callback.
    public func close(_ mode: TCPCloseMode = .graceful, reason: TCPCloseReason) {
        guard !isDetached else { return }
        connection.noteCloseReason(reason)
        if mode == .abortive || below == nil {
            connection.closeAtSocket(mode, reason: reason)
        } else if let below {
            below.filter?.closeRequested(mode, context: below)
        }
    }

    // MARK: Addresses

    /// Makes ``TCPConnection/remoteAddress`` report `address` from now on (a PROXY header names the
    /// real client).
    public func setRemoteAddress(_ address: SocketAddress) {
        guard !isDetached else { return }
        connection.filterStack?.remoteAddressOverride = address
    }

    /// Makes ``TCPConnection/localAddress`` report `address` from now on.
    public func setLocalAddress(_ address: SocketAddress) {
        guard !isDetached else { return }
        connection.filterStack?.localAddressOverride = address
    }

    // MARK: Changing the stack

    /// Takes this filter out of the stack: later events skip it. Pass on anything it still holds first.
    /// The filter gets ``TCPConnectionFilter/filterRemoved(context:)``.
    public func removeFilter() {
        guard !isDetached, !isRemoved, let stack = connection.filterStack else { return }
        stack.unlink(self)
        filter?.filterRemoved(context: self)
    }

    /// Puts `newFilter` directly above this filter; it gets ``TCPConnectionFilter/filterAdded(context:)``
    /// and sees every later event. - Returns: its context.
    @discardableResult
    public func insertAbove(_ newFilter: any TCPConnectionFilter) -> TCPFilterContext {
        let context = TCPFilterContext(connection: connection, filter: newFilter)
        guard !isDetached, let stack = connection.filterStack else {
            context.isDetached = true
            return context
        }
        stack.link(context, above: self)
        newFilter.filterAdded(context: context)
        return context
    }

    /// Replaces this filter with `filters` (bottom first), in place: the protocol hand-over of an
    /// upgrade. The new filters get ``TCPConnectionFilter/filterAdded(context:)``, this one
    /// ``TCPConnectionFilter/filterRemoved(context:)``.
    public func replaceFilter(with filters: [any TCPConnectionFilter]) {
        var anchor = self
        for filter in filters { anchor = anchor.insertAbove(filter) }
        removeFilter()
    }
}

/// A connection's filters as a doubly linked list of contexts, plus what the stack adds to the
/// connection: address overrides, and the handler-side stash and accumulator that keep pause,
/// resume and ``TCPConnection/continueReading(into:)`` correct above filters.
///
/// **Threading:** its connection's I/O thread only.
final class TCPFilterStack {
    /// The lowest filter (nil: none left) and the highest.
    private(set) var bottom: TCPFilterContext?
    private(set) var top: TCPFilterContext?
    /// Contexts removed while the connection was open: detached when it closes (their filters may
    /// still hold them).
    private var lastRemoved: TCPFilterContext?
    var remoteAddressOverride: SocketAddress?
    var localAddressOverride: SocketAddress?
    /// The handler's ``TCPConnectionHandler/connectionEstablished(_:)`` ran.
    var handlerEstablished = false
    /// The handler asked to close: its later writes are dropped while filters finish the close.
    var handlerClosed = false
    /// Buffers that reached the handler's side while reading was paused, in order.
    var handlerStash: [DetachedBuffer] = []
    /// The peer's half-close reached the handler's side behind stashed buffers: delivered after them.
    var handlerHalfClosePending = false
    /// The handler's buffer that the next bytes reaching it are appended to (``TCPConnection/continueReading(into:)``).
    var handlerAccumulator: DetachedBuffer?

    /// Runs the flushes the filters asked for, top filter first, so what one passes down reaches the
    /// next in time for its own flush.
    func runRequestedFlushes() {
        var context = top
        while let current = context {
            context = current.below
            if current.wantsFlush && !current.isDetached {
                current.wantsFlush = false
                current.filter?.flush(context: current)
            }
        }
    }

    /// The filters as `makeFilters` made them (bottom first), and whether all of them are reusable.
    private let originalFilters: [any TCPConnectionFilter]
    private let firstOriginal: TCPFilterContext?
    /// Where the connection came from: a recycled stack serves only the same listener or target.
    let endpoint: TCPFilterSetup.Endpoint
    let isReusable: Bool

    init(connection: TCPConnection, filters: [any TCPConnectionFilter], endpoint: TCPFilterSetup.Endpoint) {
        originalFilters = filters
        self.endpoint = endpoint
        isReusable = filters.allSatisfy { $0 is any TCPReusableFilter }
        var previous: TCPFilterContext?
        for filter in filters {
            let context = TCPFilterContext(connection: connection, filter: filter)
            context.below = previous
            previous?.above = context
            previous?.nextOriginal = context
            if bottom == nil { bottom = context }
            previous = context
        }
        top = previous
        firstOriginal = bottom
    }

    /// Puts a closed, reusable stack back together for a new peer from `setup`, its filters reset;
    /// false when one of them declines (the caller makes a fresh stack).
    func prepareForReuse(_ setup: TCPFilterSetup) -> Bool {
        guard isReusable, setup.endpoint == endpoint else { return false }
        for filter in originalFilters {
            guard let reusable = filter as? any TCPReusableFilter, reusable.prepareForNextConnection(setup) else { return false }
        }
        var index = 0
        var context = firstOriginal
        var previous: TCPFilterContext?
        while let current = context {
            current.reattach(filter: originalFilters[index])
            current.below = previous
            previous?.above = current
            previous = current
            context = current.nextOriginal
            index += 1
        }
        bottom = firstOriginal
        top = previous
        lastRemoved = nil
        remoteAddressOverride = nil
        localAddressOverride = nil
        handlerEstablished = false
        handlerClosed = false
        handlerHalfClosePending = false
        return true
    }

    /// Every filter of the stack, bottom first (for tests and diagnostics).
    var filters: [any TCPConnectionFilter] {
        var result: [any TCPConnectionFilter] = []
        var context = bottom
        while let current = context {
            if let filter = current.filter { result.append(filter) }
            context = current.above
        }
        return result
    }

    func link(_ context: TCPFilterContext, above anchor: TCPFilterContext) {
        context.below = anchor
        context.above = anchor.above
        if let above = anchor.above { above.below = context } else { top = context }
        anchor.above = context
    }

    /// The first filter of `type` removed from the stack while the connection is open.
    func removedFilter<Filter: TCPConnectionFilter>(ofType type: Filter.Type) -> Filter? {
        var context = lastRemoved
        while let current = context {
            if let filter = current.filter as? Filter { return filter }
            context = current.nextRemoved
        }
        return nil
    }

    /// Takes `context` out of the chain; it keeps its own links, so what it passes later still reaches
    /// its former neighbours.
    func unlink(_ context: TCPFilterContext) {
        if let below = context.below { below.above = context.above } else { bottom = context.above }
        if let above = context.above { above.below = context.below } else { top = context.below }
        context.isRemoved = true
        context.nextRemoved = lastRemoved
        lastRemoved = context
    }

    /// The connection closed: tells every filter (bottom first), then detaches every context and
    /// breaks the reference cycles (contexts → connection → stack).
    func connectionClosed(_ reason: TCPCloseReason) {
        var context = bottom
        while let current = context {
            context = current.above
            current.filter?.connectionClosed(reason, context: current)
        }
        detachAll()
    }

    /// Detaches every context and releases held buffers.
    func detachAll() {
        var context = bottom
        while let current = context {
            context = current.above
            current.detach()
        }
        var removed = lastRemoved
        lastRemoved = nil
        while let current = removed {
            removed = current.nextRemoved
            current.detach()
        }
        bottom = nil
        top = nil
        for buffer in handlerStash { buffer.release() }
        handlerStash = []
        handlerAccumulator.take()?.release()
    }
}
