import KeelBuffers
import KeelEngine
import KeelHTTP
import KeelSockets
import KeelSystem

/// A WebSocket connection for async/await code: an `AsyncSequence` of whole messages and sends that
/// suspend under backpressure.
///
/// Servers get one per connection from
/// ``KeelSockets/TCPConnectionOptions/serveAsyncWebSockets(configuration:limits:checkOrigin:inboundBufferLimit:handler:)``;
/// clients from ``AsyncWebSocketConnector``. Like ``KeelSockets/AsyncTCPConnection`` the server's task
/// runs on the connection's I/O thread; calls from elsewhere hop there.
///
/// ```swift
/// options.serveAsyncWebSockets { socket in
///     for try await message in socket.inbound {
///         try await socket.send(message)          // echo, suspending under backpressure
///     }
/// }
/// ```
public final class AsyncWebSocket: @unchecked Sendable {
    // @unchecked Sendable: mutable state is touched only on `thread`; public methods called from
    // elsewhere hop there first.

    /// A received message: its kind and its payload in pooled buffers (released with the message).
    public struct Message: Sendable {
        /// Text (UTF-8, already checked) or binary.
        public let kind: WebSocketMessageAssembler.Kind
        /// The payload, in order.
        public let buffers: [SharedBuffer]
        /// The payload's size in bytes.
        public var count: Int { buffers.reduce(0) { $0 + $1.readableBytes } }
        /// The payload copied into one array.
        public var bytes: [UInt8] { buffers.flatMap { $0.unsafeReadableBytes } }
        /// The payload as a string (binary bytes are decoded leniently).
        public var text: String { String(decoding: bytes, as: UTF8.self) }
    }

    /// The connection's I/O thread.
    public let thread: IOThread
    /// The subprotocol agreed on in the handshake, if any.
    public let subprotocol: String?
    /// permessage-deflate as agreed in the handshake, if it was.
    public let compression: WebSocketDeflateParameters?
    private var socket: WebSocket?
    private let inboundLimit: Int
    private var inboundQueue: [Message] = []
    private var inboundHead = 0
    private var inboundBytes = 0
    private var pausedForConsumer = false
    private var receiver: CheckedContinuation<Message?, any Error>?
    private var writers: [CheckedContinuation<Void, any Error>] = []
    private var isWritable = true
    /// How the connection ended, once it has: the closing handshake's code and the TCP reason.
    public private(set) var closed: (close: WebSocketClose, reason: TCPCloseReason)?

    init(_ socket: WebSocket, thread: IOThread, inboundLimit: Int) {
        self.socket = socket
        self.thread = thread
        subprotocol = socket.subprotocol
        compression = socket.compression
        self.inboundLimit = inboundLimit
    }

    // MARK: Inbound

    /// The received messages, in order. Ends after a closing handshake; throws ``AsyncWebSocketError``
    /// when the connection failed (a protocol error, a reset, a timeout).
    ///
    /// Bounded: when more than the inbound limit waits for a consumer that lags, the connection stops
    /// reading and TCP pushes back on the peer; it reads again once half the queue is taken.
    public var inbound: Inbound { Inbound(socket: self) }

    /// The `AsyncSequence` of received messages.
    public struct Inbound: AsyncSequence, Sendable {
        public typealias Element = Message
        let socket: AsyncWebSocket

        public func makeAsyncIterator() -> Iterator { Iterator(socket: socket) }

        /// Iterates the received messages.
        public struct Iterator: AsyncIteratorProtocol {
            let socket: AsyncWebSocket
            public mutating func next() async throws -> Message? { try await socket.receive() }
        }
    }

    /// The next message, or nil once the connection closed cleanly.
    public func receive() async throws -> Message? {
        if !thread.isCurrent { return try await withTaskExecutorPreference(thread) { try await self.receive() } }
        if inboundHead < inboundQueue.count { return takeInbound() }
        if let closed {
            if Self.endedCleanly(closed.reason) { return nil }
            throw AsyncWebSocketError(close: closed.close, reason: closed.reason)
        }
        return try await withCheckedThrowingContinuation { receiver = $0 }
    }

    private static func endedCleanly(_ reason: TCPCloseReason) -> Bool { reason.code == .peerClosed || reason.code == .local }

    private func takeInbound() -> Message {
        let message = inboundQueue[inboundHead]
        inboundHead += 1
        inboundBytes -= message.count
        if inboundHead == inboundQueue.count {
            inboundQueue.removeAll(keepingCapacity: true)
            inboundHead = 0
        }
        if pausedForConsumer && inboundBytes <= inboundLimit / 2 {
            pausedForConsumer = false
            socket?.connection?.resumeReading()
        }
        return message
    }

    // MARK: Outbound

    /// Sends a text message, suspending while the connection is not writable.
    /// - Throws: ``AsyncWebSocketError`` once the connection closed.
    public func send(text: String) async throws {
        try await whenWritable { $0.send(text: text) }
    }

    /// Sends a binary message, suspending while the connection is not writable.
    public func send(binary bytes: some Collection<UInt8> & Sendable) async throws {
        try await whenWritable { $0.send(binary: bytes) }
    }

    /// Sends `message` back as it came: a server without compression sends its buffers as they are,
    /// behind a new frame header, without copying the payload.
    public func send(_ message: Message) async throws {
        try await whenWritable { $0.send(message.kind, shared: message.buffers) }
    }

    /// Sends a message prepared once for many connections (see ``WebSocketBroadcast``).
    public func send(_ broadcast: WebSocketBroadcast) async throws {
        try await whenWritable { $0.send(broadcast) }
    }

    /// Sends a ping.
    public func ping(_ payload: [UInt8] = []) async throws {
        try await whenWritable { $0.ping(payload) }
    }

    /// Starts the closing handshake; ``inbound`` ends once the peer answers.
    public func close(_ code: WebSocketCloseCode = .normalClosure, reason: String = "") async {
        if !thread.isCurrent { return await withTaskExecutorPreference(thread) { await self.close(code, reason: reason) } }
        socket?.close(code, reason: reason)
    }

    private func whenWritable(_ body: (WebSocket) -> Void) async throws {
        if !thread.isCurrent { return try await withTaskExecutorPreference(thread) { try await self.whenWritable(body) } }
        if let closed { throw AsyncWebSocketError(close: closed.close, reason: closed.reason) }
        if !isWritable { try await withCheckedThrowingContinuation { writers.append($0) } }
        guard let socket else { throw AsyncWebSocketError(close: WebSocketClose(code: .abnormalClosure), reason: .local) }
        body(socket)
    }

    // MARK: Events from the callback side (on `thread`)

    fileprivate func received(_ message: consuming WebSocketMessage) {
        var message = message
        var buffers: [SharedBuffer] = []
        buffers.reserveCapacity(message.payload.count)
        while let buffer = message.payload.popFirst() { buffers.append(buffer.share()) }
        let whole = Message(kind: message.kind, buffers: buffers)
        if let receiver {
            self.receiver = nil
            return receiver.resume(returning: whole)
        }
        inboundQueue.append(whole)
        inboundBytes += whole.count
        if inboundBytes > inboundLimit && !pausedForConsumer {
            pausedForConsumer = true
            socket?.connection?.pauseReading()
        }
    }

    fileprivate func writabilityChanged(_ writable: Bool) {
        isWritable = writable
        guard writable, !writers.isEmpty else { return }
        let waiting = writers
        writers = []
        for writer in waiting { writer.resume() }
    }

    fileprivate func closed(_ close: WebSocketClose, reason: TCPCloseReason) {
        closed = (close, reason)
        socket = nil
        let error = AsyncWebSocketError(close: close, reason: reason)
        if let receiver {
            self.receiver = nil
            if Self.endedCleanly(reason) { receiver.resume(returning: nil) } else { receiver.resume(throwing: error) }
        }
        let waiting = writers
        writers = []
        for writer in waiting { writer.resume(throwing: error) }
    }
}

/// A WebSocket used through ``AsyncWebSocket`` closed or failed.
public struct AsyncWebSocketError: Error, Sendable, Hashable {
    /// The closing handshake's code and reason (1006 when there was none).
    public var close: WebSocketClose
    /// Why the TCP connection closed.
    public var reason: TCPCloseReason
}

/// Bridges a ``WebSocketFilter``'s callbacks to an ``AsyncWebSocket``: runs the server's per-connection
/// body, or leaves the socket for the client's dialer to pick up.
struct AsyncWebSocketBridge: WebSocketHandler {
    let body: (@Sendable (AsyncWebSocket) async throws -> Void)?
    let inboundLimit: Int
    var socket: AsyncWebSocket?

    mutating func webSocketOpened(_ socket: WebSocket) {
        guard let thread = socket.connection?.thread else { return }
        let bridge = AsyncWebSocket(socket, thread: thread, inboundLimit: inboundLimit)
        self.socket = bridge
        socket.filter.asyncSocket = bridge
        guard let body else { return }
        Task(executorPreference: thread) {
            do {
                try await body(bridge)
            } catch {}
            await bridge.close(.normalClosure)
        }
    }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        self.socket?.received(message)
    }

    mutating func webSocketWritabilityChanged(_ isWritable: Bool, on socket: WebSocket) {
        self.socket?.writabilityChanged(isWritable)
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        socket?.closed(close, reason: reason)
        socket = nil
    }
}

extension TCPConnectionOptions {
    /// Serves WebSockets to async code: after the HTTP upgrade (over TLS when configured below), each
    /// connection runs `handler` as a task on its I/O thread; the connection closes (1000) when it returns.
    /// - Parameters:
    ///   - checkOrigin: see ``serveWebSockets(configuration:limits:checkOrigin:makeHandler:)``.
    ///   - inboundBufferLimit: received bytes that may wait for a lagging task before the connection
    ///     stops reading.
    public mutating func serveAsyncWebSockets(configuration: WebSocketConfiguration = WebSocketConfiguration(),
                                              limits: HTTPParserLimits = HTTPParserLimits(),
                                              checkOrigin: (@Sendable (_ origin: String?) -> Bool)? = nil,
                                              inboundBufferLimit: Int = defaultAsyncInboundBufferLimit,
                                              handler: @escaping @Sendable (AsyncWebSocket) async throws -> Void) {
        serveWebSockets(configuration: configuration, limits: limits, checkOrigin: checkOrigin) {
            AsyncWebSocketBridge(body: handler, inboundLimit: inboundBufferLimit)
        }
    }
}

/// Opens WebSocket client connections for async code: `let socket = try await connector.connect(to: address)`.
///
/// Every connection asks for the same `host` and `path`; wss comes from a TLS filter in the connector
/// options (``KeelSockets/TCPConnectorConfiguration/connection``), below the upgrade.
public final class AsyncWebSocketConnector: Sendable {
    private let connector: TCPConnector<AsyncWebSocketDialer>

    /// A connector over `pool` whose connections upgrade with a request for `path` at `host`.
    public init(pool: IOPool, host: String, path: String = "/", subprotocols: [String] = [],
                configuration: WebSocketConfiguration = WebSocketConfiguration(),
                connector: TCPConnectorConfiguration = TCPConnectorConfiguration(),
                inboundBufferLimit: Int = defaultAsyncInboundBufferLimit) {
        var settings = connector
        settings.connection.connectWebSocket(host: host, path: path, subprotocols: subprotocols, configuration: configuration) {
            AsyncWebSocketBridge(body: nil, inboundLimit: inboundBufferLimit)
        }
        self.connector = TCPConnector(pool: pool, configuration: settings)
    }

    /// Connects to `address` and completes the opening handshake.
    /// - Throws: ``KeelSockets/TCPConnectError`` when the TCP connection cannot be made, or
    ///   ``AsyncWebSocketError`` when the handshake failed (the reason names the server's answer).
    public func connect(to address: SocketAddress) async throws -> AsyncWebSocket {
        let socket = try await withCheckedThrowingContinuation { continuation in
            connector.connect(to: address, makeHandler: { AsyncWebSocketDialer(continuation: continuation) },
                              failed: { error in continuation.resume(throwing: error) })
        }
        TaskHandoff.afterResuming()
        return socket
    }
}

/// The TCP side of a client connection made by ``AsyncWebSocketConnector``: hands the socket to the
/// waiting task once the WebSocket opened, or the reason it never did.
struct AsyncWebSocketDialer: TCPConnectionHandler {
    var continuation: CheckedContinuation<AsyncWebSocket, any Error>?

    mutating func connectionEstablished(_ connection: TCPConnection) {
        guard let continuation = continuation.take() else { return }
        if let socket = connection.filter(ofType: WebSocketFilter.self)?.asyncSocket {
            TaskHandoff.beforeResuming()
            continuation.resume(returning: socket)
        } else {
            continuation.resume(throwing: AsyncWebSocketError(
                close: WebSocketClose(code: .abnormalClosure), reason: TCPCloseReason(.webSocketHandshakeFailed, detail: "no WebSocket opened")))
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        continuation.take()?.resume(throwing: AsyncWebSocketError(close: WebSocketClose(code: .abnormalClosure), reason: reason))
    }
}
