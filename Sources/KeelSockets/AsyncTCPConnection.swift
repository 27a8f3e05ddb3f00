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
    private let connection: TCPConnection
    private var inboundQueue: [SharedBuffer] = []
    private var inboundHead = 0
    private var inboundFinished = false
    private var receiver: CheckedContinuation<SharedBuffer?, any Error>?
    private var writers: [CheckedContinuation<Void, any Error>] = []
    /// Why the connection closed, once it has.
    public private(set) var closeReason: TCPCloseReason?

    init(_ connection: TCPConnection) {
        self.connection = connection
        self.thread = connection.thread
    }

    /// The peer's address.
    public var remoteAddress: SocketAddress? { connection.remoteAddress }

    /// Bytes queued for sending and not yet accepted by the kernel (read it on ``thread``).
    public var queuedWriteBytes: Int { connection.queuedWriteBytes }

    // MARK: Inbound

    /// The received payloads, in order. Ends when the peer closes its side; throws
    /// ``AsyncTCPConnectionError`` if the connection fails first.
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
        if inboundHead == inboundQueue.count {
            inboundQueue.removeAll(keepingCapacity: true)
            inboundHead = 0
        }
        return buffer
    }

    // MARK: Outbound

    /// Sends `buffer` (without copying), suspending while the connection is not writable (its queue
    /// went over the flow-control high watermark and has not yet drained to the low one).
    /// - Throws: ``AsyncTCPConnectionError`` when the connection has closed.
    public func write(_ buffer: SharedBuffer) async throws {
        if !thread.isCurrent {
            return try await withTaskExecutorPreference(thread) { try await self.write(buffer) }
        }
        try await waitForRoom()
        connection.write(buffer)
    }

    /// Copies `bytes` into pooled buffers and sends them, suspending under backpressure.
    public func write(_ bytes: some Collection<UInt8> & Sendable) async throws {
        if !thread.isCurrent {
            return try await withTaskExecutorPreference(thread) { try await self.write(bytes) }
        }
        try await waitForRoom()
        var remaining = bytes[...]
        while !remaining.isEmpty {
            var buffer = try thread.bufferPool.acquire()
            let count = buffer.append(contentsOf: remaining.prefix(buffer.writableBytes))
            remaining = remaining.dropFirst(count)
            connection.write(buffer)
        }
    }

    private func waitForRoom() async throws {
        if let closeReason { throw AsyncTCPConnectionError(reason: closeReason) }
        if !connection.isWritable {
            try await withCheckedThrowingContinuation { writers.append($0) }
        }
    }

    /// Closes the connection (see ``TCPCloseMode``).
    public func close(_ mode: TCPCloseMode = .graceful) {
        connection.close(mode)
    }

    // MARK: Events from the callback side (on `thread`)

    func received(_ buffer: SharedBuffer) {
        if let receiver {
            self.receiver = nil
            receiver.resume(returning: buffer)
        } else {
            inboundQueue.append(buffer)
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

/// Bridges callback events to an ``AsyncTCPConnection`` and runs the per-connection async body.
struct AsyncBridgeHandler: TCPConnectionHandler {
    let body: @Sendable (AsyncTCPConnection) async throws -> Void
    var bridge: AsyncTCPConnection?

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let bridge = AsyncTCPConnection(connection)
        self.bridge = bridge
        let body = self.body
        Task(executorPreference: connection.thread) {
            do {
                try await body(bridge)
            } catch {}
            bridge.close()
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        bridge?.received(buffer.share())
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        bridge?.peerHalfClosed()  // the async body decides when to close
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        bridge?.writabilityChanged(isWritable)
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        bridge?.closed(reason)
        bridge = nil
    }
}

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
    public init(
        pool: IOPool, configuration: TCPServerConfiguration,
        handler: @escaping @Sendable (AsyncTCPConnection) async throws -> Void
    ) throws(SystemError) {
        server = try TCPServer(pool: pool, configuration: configuration) {
            AsyncBridgeHandler(body: handler, bridge: nil)
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
