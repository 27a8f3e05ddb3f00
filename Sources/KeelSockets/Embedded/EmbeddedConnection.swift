import KeelBuffers
import KeelEngine
import KeelSystem
import SystemPackage

/// Runs one real connection (the same ``TCPConnection`` code, its filter stack and its handler value)
/// in memory: no sockets, no threads, no sleeps. The way protocol layers and handlers are tested.
///
/// The connection lives on an embedded I/O thread whose backend plays the kernel: the test feeds
/// the peer's bytes in chunks of its choosing, reads what the connection sent, narrows the send window
/// to fill the write queue, makes the peer half-close or reset, and moves a manual clock to fire
/// timeouts. Every call runs the thread's loop until nothing is left to do, so when a call returns,
/// every event it caused has been delivered.
///
/// ```swift
/// let test = EmbeddedConnection(handler: Echo(), options: .init(idleTimeout: .seconds(30),
///                               makeFilters: { _ in [MyFilter()] }))
/// test.receive("hello")                       // as one segment; `receive(chunks:)` splits it
/// #expect(test.takeWrittenString() == "hello")
/// test.advanceTime(by: .seconds(30))
/// #expect(test.closeReason == .idleTimeout)
/// #expect(test.finish().isClean)
/// ```
///
/// **Threading:** use it from one thread (a synchronous test function runs on one). Inside
/// ``withConnection(_:)`` the connection's thread is current, so its thread-only API may be called.
public final class EmbeddedConnection<Handler: TCPConnectionHandler> {
    /// The embedded I/O thread the connection lives on.
    public let thread: IOThread
    /// The connection under test.
    public var connection: TCPConnection { handled }

    private let handled: HandledConnection<Handler>
    private let registry: ConnectionRegistry<Handler>
    private let backend: EmbeddedBackend
    private let stream: EmbeddedStream
    private var finished = false

    /// Opens a connection with `handler` and `options` (its filters are made as a server would make
    /// them, with endpoint ``TCPFilterSetup/Endpoint/embedded``). Events the opening causes
    /// (``TCPConnectionHandler/connectionEstablished(_:)``, filters' handshakes) have run on return.
    /// With `simulatesZeroCopySend`, the in-memory kernel has ``KernelFeatures/zeroCopySend`` and
    /// holds each zero-copy notification until ``releaseZeroCopyNotifications(copied:)``.
    /// `backendKind` is the backend the connection believes it runs on: with ``BackendKind/ioUring``
    /// its coalesced sends are operations completed by the loop, as on a ring; with
    /// ``BackendKind/epoll`` (the default) they are calls made at once.
    public init(
        handler: Handler, options: TCPConnectionOptions = .init(),
        localAddress: SocketAddress = try! SocketAddress(host: "127.0.0.1", port: 7007),
        remoteAddress: SocketAddress = try! SocketAddress(host: "127.0.0.1", port: 50_000),
        bufferPool: BufferPoolConfiguration = BufferPoolConfiguration(buffersPerSlab: 16),
        simulatesZeroCopySend: Bool = false, backendKind: BackendKind = .epoll
    ) {
        let thread = IOThread.makeEmbedded(bufferPool: bufferPool, reportedBackend: backendKind)
        self.thread = thread
        backend = thread.embeddedBackend!
        backend.simulatesZeroCopySend = simulatesZeroCopySend
        let descriptor = backend.makeStream(local: localAddress, remote: remoteAddress)
        stream = backend.stream(descriptor)!
        let (registry, handled) = thread.withEmbeddedCurrent {
            let registry = ConnectionRegistry<Handler>(thread: thread, coalescesWrites: options.coalescesWrites, coalescingDelay: options.writeCoalescingDelay) { _ in }
            let handled = registry.take()
            handled.install(handler)
            handled.open(descriptor: descriptor, settings: ConnectionSettings(options: options, kernelFeatures: thread.kernelFeatures),
                         endpoint: .embedded)
            thread.runEmbeddedUntilQuiet()
            return (registry, handled)
        }
        self.registry = registry
        self.handled = handled
    }

    deinit {
        if !finished { _ = finish() }
    }

    // MARK: Driving

    /// Runs `body` with the connection on its (embedded) thread, then delivers what it caused.
    @discardableResult
    public func withConnection<Result>(_ body: (TCPConnection) throws -> Result) rethrows -> Result {
        try thread.withEmbeddedCurrent {
            let result = try body(handled)
            thread.runEmbeddedUntilQuiet()
            return result
        }
    }

    /// Runs the loop until quiet (tasks from other threads, due timers, completions).
    public func run() {
        thread.withEmbeddedCurrent { _ = thread.runEmbeddedUntilQuiet() }
    }

    /// The peer sends `bytes` as one segment (one receive, split only where it exceeds a pool buffer).
    public func receive(_ bytes: some Sequence<UInt8>) {
        stream.appendInbound(Array(bytes))
        run()
    }

    /// The peer sends `text`'s UTF-8 bytes as one segment.
    public func receive(_ text: String) {
        receive(Array(text.utf8))
    }

    /// The peer sends `chunks`, each its own segment, all before the connection runs (a burst). With
    /// `thenHalfCloses`, the peer's end of stream follows in the same burst, as a busy kernel reports
    /// the last bytes and the end together.
    public func receive(chunks: [[UInt8]], thenHalfCloses: Bool = false) {
        for chunk in chunks { stream.appendInbound(chunk) }
        if thenHalfCloses { stream.peerShutDownWrite = true }
        run()
    }

    /// The peer sends one urgent (out-of-band) byte.
    public func receiveUrgent(_ byte: UInt8) {
        stream.appendUrgentInbound(byte)
        run()
    }

    /// The peer shuts down its sending side: the connection reads end of stream after what was sent.
    public func peerHalfCloses() {
        stream.peerShutDownWrite = true
        run()
    }

    /// The next queued (asynchronous) sends complete with these errors, one each, without sending: as
    /// io_uring can hand a non-blocking socket's `EAGAIN` back. Sends made at once are not affected.
    public func failQueuedSends(with errors: [Errno]) {
        stream.queuedSendFailures += errors.map(\.rawValue)
    }

    /// The peer resets the connection: reads and sends fail.
    public func peerResets() {
        stream.isReset = true
        run()
    }

    /// Bytes the "kernel" still accepts before sends would block (the peer's unread window); `Int.max`
    /// (the default) never blocks. Setting it runs the loop, so queued sends move on at once.
    public var sendWindow: Int {
        get { stream.sendWindow }
        set {
            stream.sendWindow = newValue
            run()
        }
    }

    /// Moves the manual clock forward by `duration` and fires what came due (timeouts, timers).
    public func advanceTime(by duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let nanoseconds = UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
        thread.withEmbeddedCurrent { thread.advanceEmbeddedTime(byNanoseconds: nanoseconds) }
    }

    /// Delivers the held zero-copy notifications (`copied`: the kernel reports that it copied anyway,
    /// as on loopback) and what they cause.
    public func releaseZeroCopyNotifications(copied: Bool) {
        backend.releaseZeroCopyNotifications(copied: copied)
        run()
    }

    // MARK: Observing

    /// Zero-copy sends whose kernel notification is held back (with `simulatesZeroCopySend`): until
    /// it is released, the kernel may still read their buffers.
    public var heldZeroCopyNotifications: Int { backend.heldZeroCopyNotificationCount }

    /// What the connection sent since the last call, in order; taking it does not open the window.
    public func takeWritten() -> [UInt8] {
        defer { stream.outbound.removeAll() }
        return stream.outbound
    }

    /// ``takeWritten()`` as UTF-8 text.
    public func takeWrittenString() -> String {
        String(decoding: takeWritten(), as: UTF8.self)
    }

    /// How many sends (`send` or `sendmsg`, made at once or completed by the loop) carried the
    /// connection's stream bytes so far, refused ones included: how writes were batched.
    public var sendCalls: Int { stream.sendCalls }

    /// Urgent bytes the connection sent.
    public var urgentWritten: [UInt8] { stream.urgentOutbound }

    /// Peer bytes the connection has not read yet (reading paused, or waiting for a buffer).
    public var unreadBytes: Int { stream.unreadInboundBytes }

    /// True once the connection shut down its sending side or closed without an abort: either way the
    /// peer reads end of stream (a connection whose peer closed first closes without a shutdown).
    public var peerSawEndOfStream: Bool { stream.shutDownWrite || (stream.isClosed && !stream.abortiveClose) }

    /// True when the connection closed abortively (the peer would see a reset).
    public var closedAbortively: Bool { stream.abortiveClose }

    /// True once the connection has closed and released its descriptor.
    public var isClosed: Bool { stream.isClosed }

    /// Why the connection closed (nil while open).
    public var closeReason: TCPCloseReason? { isClosed ? handled.closeReason : nil }

    /// The handler value while the connection is open (nil after it closed).
    public var handler: Handler? { handled.handler }

    /// The connection's filters, bottom first, as they stand now.
    public var filters: [any TCPConnectionFilter] { handled.filterStack?.filters ?? [] }

    /// The embedded thread's buffer pool counters.
    public var bufferStatistics: BufferPoolStatistics { thread.bufferPool.statistics }

    /// What ``finish()`` found.
    public struct Leftovers: Sendable, Hashable {
        /// Pool buffers still out after everything closed (0: no leak).
        public var buffersInUse: Int
        /// Embedded descriptors still open (0: the connection closed its socket).
        public var openDescriptors: Int
        /// True when nothing leaked.
        public var isClean: Bool { buffersInUse == 0 && openDescriptors == 0 }
    }

    /// Ends the test: closes the connection abortively if it is still open, stops the embedded thread
    /// (as a pool shutdown would) and reports what was left behind.
    @discardableResult
    public func finish() -> Leftovers {
        guard !finished else { return Leftovers(buffersInUse: 0, openDescriptors: 0) }
        finished = true
        return thread.withEmbeddedCurrent {
            if !stream.isClosed { handled.close(.abortive) }
            thread.runEmbeddedUntilQuiet()
            let descriptors = backend.openDescriptors
            thread.shutdownEmbedded()
            return Leftovers(buffersInUse: thread.bufferPool.statistics.inUse, openDescriptors: descriptors)
        }
    }
}
