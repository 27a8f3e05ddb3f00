import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import KeelWebSocket

/// A WebSocket connection as a plugin peer: each message is one plugin message; sends go out as text
/// when they are UTF-8, binary otherwise.
final class WebSocketPeer: PluginPeer, @unchecked Sendable {
    // @unchecked Sendable (inherited): confined to the connection's thread.
    let socket: WebSocket
    let runtime: EndpointRuntime
    var session: (any PluginSession)?
    private var held: BufferChain?
    private var heldKind = WebSocketMessageAssembler.Kind.binary

    init(socket: WebSocket, thread: IOThread, runtime: EndpointRuntime) {
        self.socket = socket
        self.runtime = runtime
        super.init(thread: thread, id: runtime.nextPeerID(on: thread), endpoint: runtime.name,
                   counters: runtime.counters.threads[thread.index])
    }

    override var remoteAddress: SocketAddress? { socket.connection?.remoteAddress }
    override var broadcastKind: BroadcastKind { .webSocket }

    func start() {
        session = runtime.opened(self)
        session?.opened(self)
    }

    func receive(_ message: consuming WebSocketMessage) {
        let kind = message.kind
        let isText = kind == .text
        let payload = message.takePayload()
        counters.received(payload.readableBytes)
        if payload.count <= 1 {
            // One buffer: hand it out in place and keep it for a reply without a copy.
            var region = UnsafeRawBufferPointer(start: nil, count: 0)
            payload.forEachReadableRegion { region = $0 }
            held = consume payload
            heldKind = kind
            heldToken &+= 1
            holdsReceived = true
            session?.received(PluginMessage(bytes: region, isText: isText, token: heldToken), from: self)
            holdsReceived = false
            held = nil
        } else {
            let bytes = payload.readableByteArray
            bytes.withUnsafeBytes { session?.received(PluginMessage(bytes: $0, isText: isText, token: 0), from: self) }
        }
    }

    override func transmit(_ bytes: UnsafeRawBufferPointer) -> SendOutcome {
        var chain = BufferChain()
        guard chain.append(copying: bytes, from: thread.bufferPool) else { return .dropped }
        var validator = UTF8Validator()
        let isText = validator.validate(bytes) && validator.isAtCharacterBoundary
        socket.send(isText ? .text : .binary, payload: chain)
        return .sent
    }

    override func transmitHeld() -> SendOutcome {
        guard let chain = held.take() else { return .dropped }
        socket.send(heldKind, payload: chain)
        return .sent
    }

    override func transmit(_ broadcast: PluginBroadcast) -> SendOutcome {
        guard let frame = broadcast.webSocket else { return .dropped }
        socket.send(frame)
        return .sent
    }

    override func close() {
        guard !isClosed else { return }
        socket.close(.normalClosure)
    }

    override func drain() {
        guard !isClosed else { return }
        socket.close(.goingAway, reason: "server shutting down")
    }

    func transportClosed() {
        markClosed()
        runtime.closed(self)
        session?.closed(self)
        session = nil
    }
}

/// The WebSocket handler of a `ws` or `wss` endpoint.
struct PluginWebSocketHandler: WebSocketHandler {
    let runtime: EndpointRuntime
    var peer: WebSocketPeer?

    init(runtime: EndpointRuntime) {
        self.runtime = runtime
    }

    mutating func webSocketOpened(_ socket: WebSocket) {
        guard let thread = socket.connection?.thread else { return }
        let peer = WebSocketPeer(socket: socket, thread: thread, runtime: runtime)
        self.peer = peer
        peer.start()
    }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        peer?.receive(message)
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        if let peer { runtime.noteClose(reason, of: peer) }
        peer?.transportClosed()
        peer = nil
    }
}

/// A UDP peer (one remote address, while it keeps sending within the idle timeout) as a plugin peer:
/// each datagram is one message, each send one datagram.
final class DatagramPeer: PluginPeer, @unchecked Sendable {
    // @unchecked Sendable (inherited): confined to the socket's thread.
    let session: UDPSession
    let runtime: EndpointRuntime
    var pluginSession: (any PluginSession)?
    private var held: IOBuffer?

    init(session: UDPSession, runtime: EndpointRuntime) {
        self.session = session
        self.runtime = runtime
        super.init(thread: session.socket.thread, id: runtime.nextPeerID(on: session.socket.thread), endpoint: runtime.name,
                   counters: runtime.counters.threads[session.socket.thread.index])
    }

    override var remoteAddress: SocketAddress? { session.peer }

    func start() {
        pluginSession = runtime.opened(self)
        pluginSession?.opened(self)
    }

    func receive(_ datagram: consuming IOBuffer) {
        let bytes = UnsafeRawBufferPointer(start: datagram.unsafeReadableAddress, count: datagram.readableBytes)
        counters.received(bytes.count)
        held = consume datagram
        heldToken &+= 1
        holdsReceived = true
        pluginSession?.received(PluginMessage(bytes: bytes, isText: false, token: heldToken), from: self)
        holdsReceived = false
        held = nil
    }

    private static func accepted(_ result: UDPSendResult) -> SendOutcome { result == .sent || result == .queued ? .sent : .dropped }

    override func transmit(_ bytes: UnsafeRawBufferPointer) -> SendOutcome {
        guard var buffer = try? thread.bufferPool.acquire() else { return .dropped }
        guard buffer.writableBytes >= bytes.count else { return .invalid }  // longer than one datagram buffer
        _ = buffer.append(bytes)
        return Self.accepted(session.send(buffer))
    }

    override func transmitHeld() -> SendOutcome {
        guard let buffer = held.take() else { return .dropped }
        return Self.accepted(session.send(buffer))
    }

    override func transmit(_ broadcast: PluginBroadcast) -> SendOutcome {
        guard let buffers = broadcast.buffers(for: .unframed) else { return .dropped }
        guard buffers.count == 1 else { return .invalid }
        return Self.accepted(session.socket.send(buffers[0], to: session.peer))
    }

    override func close() {
        guard !isClosed else { return }
        session.close()
    }

    // A UDP peer has nothing in progress: draining leaves it to the socket's close.
    override func drain() {}

    func transportClosed() {
        markClosed()
        runtime.closed(self)
        pluginSession?.closed(self)
        pluginSession = nil
    }
}

/// The session handler of a UDP endpoint.
struct PluginDatagramHandler: UDPSessionHandler {
    let runtime: EndpointRuntime
    var peer: DatagramPeer?

    init(runtime: EndpointRuntime) {
        self.runtime = runtime
    }

    mutating func sessionStarted(_ session: UDPSession) {
        let peer = DatagramPeer(session: session, runtime: runtime)
        self.peer = peer
        peer.start()
    }

    mutating func datagramReceived(_ datagram: consuming IOBuffer, truncated: Bool, in session: UDPSession) {
        guard !truncated else {
            runtime.counters.threads[session.socket.thread.index].badMessage()
            return
        }
        peer?.receive(datagram)
    }

    mutating func sessionEnded(_ session: UDPSession, reason: UDPSessionEndReason) {
        peer?.transportClosed()
        peer = nil
    }
}
