import KeelBuffers
import KeelEngine
import KeelSystem

/// A TCP connection for async/await code: an `AsyncSequence` of received payloads and writes that
/// suspend under backpressure.
///
/// The async code of an ``AsyncTCPServer`` runs on the connection's own I/O thread (the thread is the
/// task's executor), so receiving and writing need no thread hop per message. The price against the
/// callback API: each received payload is handed out as a ``SharedBuffer`` (one small object per
/// message) and each resumption of the task is one job on the thread's inbox.
public final class AsyncTCPConnection: @unchecked Sendable {
    // @unchecked Sendable: mutable state is touched only on `thread`; public methods called from
    // elsewhere hop there first.

    /// The connection's I/O thread.
    public let thread: IOThread
    /// The peer's address, as it was when the connection opened (after any filter replaced it).
    public let remoteAddress: SocketAddress?
    /// The connection with this peer: a handle, so nothing done here after the close can reach the
    /// next peer of the recycled connection object.
    private let handle: TCPConnectionHandle
    private let inboundLimit: Int
    private var inboundQueue: [SharedBuffer] = []
    private var inboundHead = 0
    private var inboundBytes = 0
    private var pausedForConsumer = false
    private var inboundFinished = false
    private var receiver: CheckedContinuation<SharedBuffer?, any Error>?
    private var writers: [CheckedContinuation<Void, any Error>] = []
    private var isWritable = true
    /// Why the connection closed, once it has.
    public private(set) var closeReason: TCPCloseReason?

    init(_ connection: TCPConnection, inboundLimit: Int) {
        handle = connection.handle
        thread = connection.thread
        remoteAddress = connection.remoteAddress
        self.inboundLimit = inboundLimit
    }

    /// Bytes queued for sending and not yet accepted by the kernel (0 once closed).
    public var queuedWriteBytes: Int {
        get async {
            if !thread.isCurrent { return await withTaskExecutorPreference(thread) { await self.queuedWriteBytes } }
            return closeReason == nil ? handle.connection.queuedWriteBytes : 0
        }
    }

    /// Received bytes waiting for the consumer (bounded by the inbound limit, plus one read).
    public var bufferedInboundBytes: Int {
        get async {
            if !thread.isCurrent { return await withTaskExecutorPreference(thread) { await self.bufferedInboundBytes } }
            return inboundBytes
        }
    }

    // MARK: Inbound

    /// The received payloads, in order. Ends when the peer closes its side; throws
    /// ``AsyncTCPConnectionError`` if the connection fails first.
    ///
    /// Bounded: when more than the inbound limit (``AsyncTCPServer``'s `inboundBufferLimit`) waits for a
    /// consumer that lags, the connection stops reading, and TCP pushes back on the peer; it reads
    /// again once the consumer has taken the queue down to half the limit.
    public var inbound: Inbound { Inbound(connection: self) }

    /// The `AsyncSequence` of received payloads.
    public struct Inbound: AsyncSequence, Sendable {
        public typealias Element = SharedBuffer
        let connection: AsyncTCPConnection

        public func makeAsyncIterator() -> Iterator { Iterator(connection: connection) }

        /// Iterates the received payloads.
        public struct Iterator: AsyncIteratorProtocol {
            let connection: AsyncTCPConnection
            public mutating func next() async throws -> SharedBuffer? { try await connection.receive() }
        }
    }

    /// The next received payload, or nil at end of stream.
    public func receive() async throws -> SharedBuffer? {
        if !thread.isCurrent {
            return try await withTaskExecutorPreference(thread) { try await self.receive() }
        }
        if inboundHead < inboundQueue.count { return takeInbound() }
        if inboundFinished {
            if let closeReason, closeReason != .peerClosed, closeReason != .local {
                throw AsyncTCPConnectionError(reason: closeReason)
            }
            return nil
        }
        return try await withCheckedThrowingContinuation { receiver = $0 }
    }

    private func takeInbound() -> SharedBuffer {
        let buffer = inboundQueue[inboundHead]
        inboundHead += 1
        inboundBytes -= buffer.readableBytes
        if inboundHead == inboundQueue.count {
            inboundQueue.removeAll(keepingCapacity: true)
            inboundHead = 0
        }
        if pausedForConsumer && inboundBytes <= inboundLimit / 2 {
            pausedForConsumer = false
            handle.execute { $0.resumeReading() }
        }
        return buffer
    }

    // MARK: Outbound

    /// Sends `buffer` (without copying), suspending while the connection is not writable (its queue
    /// went over the flow-control high watermark and has not yet drained to the low one).
    /// - Throws: ``AsyncTCPConnectionError`` when the connection has closed (nothing was sent).
    public func write(_ buffer: SharedBuffer) async throws {
        if !thread.isCurrent {
            return try await withTaskExecutorPreference(thread) { try await self.write(buffer) }
        }
        try await waitForRoom()
        handle.write(buffer)
    }

    /// Copies `bytes` into pooled buffers and sends them, suspending under backpressure. All or
    /// nothing: every buffer is taken before any byte is queued.
    /// - Throws: ``AsyncTCPConnectionError`` when the connection has closed, or ``BufferPoolError`` when
    ///   the pool cannot hold the copy; in both cases none of `bytes` was sent.
    public func write(_ bytes: some Collection<UInt8> & Sendable) async throws {
        if !thread.isCurrent {
            return try await withTaskExecutorPreference(thread) { try await self.write(bytes) }
        }
        try await waitForRoom()
        var chain = BufferChain()
        var remaining = bytes[...]
        while !remaining.isEmpty {
            var buffer = try thread.bufferPool.acquire()  // throws before anything was queued
            let count = buffer.append(contentsOf: remaining.prefix(buffer.writableBytes))
            remaining = remaining.dropFirst(count)
            chain.append(buffer)
        }
        // Still this peer's open connection: the bridge learns of the close on this thread, before
        // the connection object can serve anyone else.
        if let closeReason { throw AsyncTCPConnectionError(reason: closeReason) }
        handle.connection.write(chain)
    }

    private func waitForRoom() async throws {
        if let closeReason { throw AsyncTCPConnectionError(reason: closeReason) }
        if !isWritable {
            try await withCheckedThrowingContinuation { writers.append($0) }
        }
    }

    /// Runs `body` with the underlying connection on its I/O thread: how async code reaches a filter's
    /// state (the TLS filter's peer certificate, the PROXY protocol header). Nil once the connection closed.
    public func withConnection<Result: Sendable>(_ body: (TCPConnection) -> Result) async -> Result? {
        if !thread.isCurrent {
            return await withTaskExecutorPreference(thread) { await self.withConnection(body) }
        }
        guard closeReason == nil else { return nil }
        return body(handle.connection)
    }

    /// Closes the connection (see ``TCPCloseMode``); nothing happens if it already closed.
    public func close(_ mode: TCPCloseMode = .graceful) {
        handle.close(mode)
    }

    // MARK: Events from the callback side (on `thread`)

    func received(_ buffer: SharedBuffer, on connection: TCPConnection) {
        if let receiver {
            self.receiver = nil
            receiver.resume(returning: buffer)
            return
        }
        inboundQueue.append(buffer)
        inboundBytes += buffer.readableBytes
        if inboundBytes > inboundLimit && !pausedForConsumer {
            pausedForConsumer = true
            connection.pauseReading()
        }
    }

    func peerHalfClosed() {
        inboundFinished = true
        if let receiver {
            self.receiver = nil
            receiver.resume(returning: nil)
        }
    }

    func writabilityChanged(_ isWritable: Bool) {
        self.isWritable = isWritable
        guard isWritable, !writers.isEmpty else { return }
        let waiting = writers
        writers = []
        for writer in waiting { writer.resume() }
    }

    func closed(_ reason: TCPCloseReason) {
        closeReason = reason
        inboundFinished = true
        if let receiver {
            self.receiver = nil
            if reason == .peerClosed || reason == .local {
                receiver.resume(returning: nil)
            } else {
                receiver.resume(throwing: AsyncTCPConnectionError(reason: reason))
            }
        }
        let waiting = writers
        writers = []
        for writer in waiting { writer.resume(throwing: AsyncTCPConnectionError(reason: reason)) }
    }
}

/// A connection used through ``AsyncTCPConnection`` closed or failed.
public struct AsyncTCPConnectionError: Error, Sendable, Hashable {
    /// Why the connection closed.
    public var reason: TCPCloseReason
}

/// Bridges callback events to an ``AsyncTCPConnection``: either runs the per-connection async body
/// (servers) or hands the connection to the task that asked for it (connectors).
struct AsyncBridgeHandler: TCPConnectionHandler {
    enum Purpose: Sendable {
        case serve(@Sendable (AsyncTCPConnection) async throws -> Void)
        case deliver(CheckedContinuation<AsyncTCPConnection, any Error>)
    }
    let purpose: Purpose
    let inboundLimit: Int
    var bridge: AsyncTCPConnection?

    init(purpose: Purpose, inboundLimit: Int) {
        self.purpose = purpose
        self.inboundLimit = inboundLimit
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let bridge = AsyncTCPConnection(connection, inboundLimit: inboundLimit)
        self.bridge = bridge
        switch purpose {
        case .serve(let body):
            Task(executorPreference: connection.thread) {
                do {
                    try await body(bridge)
                } catch {}
                bridge.close()
            }
        case .deliver(let continuation):
            TaskHandoff.beforeResuming()
            continuation.resume(returning: bridge)
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        bridge?.received(buffer.share(), on: connection)
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        bridge?.peerHalfClosed()  // the async code decides when to close
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        bridge?.writabilityChanged(isWritable)
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if let bridge {
            bridge.closed(reason)
        } else if case .deliver(let continuation) = purpose {
            // Closed before it opened (a filter held the opening back: a failed TLS handshake, a refused
            // PROXY header): the task that asked for it learns why.
            continuation.resume(throwing: AsyncTCPConnectionError(reason: reason))
        }
        bridge = nil
    }
}

/// The default bound on received bytes waiting for an async consumer.
public let defaultAsyncInboundBufferLimit = 256 * 1024

/// A TCP server whose connections are served by an async closure, one task per connection, running
/// on the connection's I/O thread.
///
/// ```swift
/// let server = try AsyncTCPServer(pool: pool, configuration: .init(port: 7007)) { connection in
///     for try await payload in connection.inbound {
///         try await connection.write(payload)      // echo, suspending under backpressure
///     }
/// }
/// ```
public final class AsyncTCPServer: Sendable {
    private let server: TCPServer<AsyncBridgeHandler>

    /// Binds, listens and starts accepting. The closure's connection is closed when it returns.
    /// - Parameter inboundBufferLimit: received bytes that may wait for a lagging consumer before the
    ///   connection stops reading (see ``AsyncTCPConnection/inbound``).
    public init(
        pool: IOPool, configuration: TCPServerConfiguration, inboundBufferLimit: Int = defaultAsyncInboundBufferLimit,
        handler: @escaping @Sendable (AsyncTCPConnection) async throws -> Void
    ) throws(SystemError) {
        server = try TCPServer(pool: pool, configuration: configuration) {
            AsyncBridgeHandler(purpose: .serve(handler), inboundLimit: inboundBufferLimit)
        }
    }

    /// The bound address.
    public var localAddress: SocketAddress { server.localAddress }
    /// The server's counters.
    public var statistics: TCPServerStatistics { server.statistics }

    /// Stops accepting and closes every connection with `mode`.
    public func stop(closing mode: TCPCloseMode = .graceful) async {
        await server.stop(closing: mode)
    }
}

/// Makes outbound connections for async code: `let connection = try await connector.connect(to: address)`.
///
/// The connection's events run on its I/O thread; the calling task's reads and writes hop there (use
/// `withTaskExecutorPreference(connection.thread)` around a loop to run it there and avoid the hops).
public final class AsyncTCPConnector: Sendable {
    private let connector: TCPConnector<AsyncBridgeHandler>
    private let inboundBufferLimit: Int

    /// Creates a connector over `pool`.
    public init(pool: IOPool, configuration: TCPConnectorConfiguration = .init(),
                inboundBufferLimit: Int = defaultAsyncInboundBufferLimit) {
        connector = TCPConnector(pool: pool, configuration: configuration)
        self.inboundBufferLimit = inboundBufferLimit
    }

    /// Connects to `address`. - Throws: ``TCPConnectError`` when the connection cannot be made.
    public func connect(to address: SocketAddress, from source: SocketAddress? = nil) async throws -> AsyncTCPConnection {
        let limit = inboundBufferLimit
        let connection = try await withCheckedThrowingContinuation { continuation in
            connector.connect(to: address, from: source, makeHandler: {
                AsyncBridgeHandler(purpose: .deliver(continuation), inboundLimit: limit)
            }, failed: { error in continuation.resume(throwing: error) })
        }
        TaskHandoff.afterResuming()
        return connection
    }

    /// Resolves `host` (off the I/O threads), then connects to its first address.
    /// - Throws: ``TCPConnectError`` when the name does not resolve or the connection cannot be made.
    public func connect(host: String, port: UInt16) async throws -> AsyncTCPConnection {
        let limit = inboundBufferLimit
        let connection = try await withCheckedThrowingContinuation { continuation in
            connector.connect(host: host, port: port, makeHandler: {
                AsyncBridgeHandler(purpose: .deliver(continuation), inboundLimit: limit)
            }, failed: { error in continuation.resume(throwing: error) })
        }
        TaskHandoff.afterResuming()
        return connection
    }
}
