import KeelBuffers
import KeelEngine
import KeelFraming
import KeelHTTP
import KeelSockets
import KeelSystem
import KeelWebSocket
import Synchronization

/// A line-based chat room, over TCP and (optionally) WebSockets: every line a member sends is
/// broadcast to every member, including the sender, as `name: line\n` to TCP members and as the text
/// message `name: line` to WebSocket members. A WebSocket member's every text message is a line.
///
/// Each line becomes one ``SharedBuffer`` for the TCP members and one ``WebSocketBroadcast`` (framed
/// once, and compressed once for the members that agreed on permessage-deflate) for the WebSocket
/// members, never one copy per member. Members live on their own I/O threads; a broadcast visits each
/// thread once. Write flow control bounds what the server keeps for a stalled member: past the hard
/// limit that member is disconnected (``TCPCloseReason/slowConsumer``) instead of growing the
/// server's memory.
public final class ChatServer: Sendable {
    private let server: TCPServer<ChatMember>
    private let webSocketServer: TCPServer<HTTPOnlyConnection>?
    private let room: ChatRoom

    /// Starts a chat server: TCP on `port`, and WebSockets on `webSocketPort` when given.
    /// - Parameter perMemberLimit: the most bytes queued for one member before it is disconnected.
    public init(pool: IOPool, host: String = "127.0.0.1", port: UInt16 = 7008, webSocketPort: UInt16? = nil,
                perMemberLimit: Int = 1024 * 1024) throws(SystemError) {
        let room = ChatRoom(threads: pool.threads)
        self.room = room
        let flowControl = TCPFlowControl(
            highWatermark: perMemberLimit / 4, lowWatermark: perMemberLimit / 16, hardLimit: perMemberLimit, policy: .refuse)
        var configuration = TCPServerConfiguration(host: host, port: port)
        configuration.connection.flowControl = flowControl
        server = try TCPServer(pool: pool, configuration: configuration) { ChatMember(room: room) }
        if let webSocketPort {
            var webConfiguration = TCPServerConfiguration(host: host, port: webSocketPort)
            webConfiguration.connection.flowControl = flowControl
            // No server context takeover: one compressed frame suits every member that agreed on deflate.
            webConfiguration.connection.serveWebSockets(configuration: WebSocketConfiguration(
                maximumFrameSize: ChatRoom.maximumLine, maximumMessageSize: ChatRoom.maximumLine,
                compression: WebSocketCompression(serverNoContextTakeover: true), pingInterval: .seconds(30))) {
                ChatWebSocketMember(room: room)
            }
            do {
                webSocketServer = try TCPServer(pool: pool, configuration: webConfiguration) { HTTPOnlyConnection() }
            } catch {
                Task { [server] in await server.stop() }
                throw error
            }
        } else {
            webSocketServer = nil
        }
    }

    /// The bound address.
    public var localAddress: SocketAddress { server.localAddress }
    /// The WebSocket endpoint's bound address, when it has one.
    public var webSocketAddress: SocketAddress? { webSocketServer?.localAddress }
    /// Connection counters.
    public var statistics: TCPServerStatistics { server.statistics }
    /// Members disconnected for reading too slowly.
    public var slowConsumersDisconnected: Int { room.slowConsumers.load(ordering: .relaxed) }
    /// Lines broadcast so far.
    public var linesBroadcast: Int { room.lines.load(ordering: .relaxed) }

    /// Stops accepting and closes every member.
    public func stop() async {
        await server.stop()
        await webSocketServer?.stop()
    }
}

/// The members of the room, one list per I/O thread (each touched only on its thread).
final class ChatRoom: @unchecked Sendable {
    // @unchecked Sendable: `members[i].connections` is touched only on I/O thread i (the outer array is
    // immutable, so threads never write shared storage); counters are atomics.
    final class Members: @unchecked Sendable {
        // @unchecked Sendable: touched only on the I/O thread it belongs to.
        var connections: [TCPConnection] = []
        var sockets: [WebSocket] = []
        /// Made on this thread's first WebSocket broadcast.
        var compressor: WebSocketBroadcastCompressor?
    }

    /// The longest line a member may send.
    static let maximumLine = 4096

    private let members: [Members]
    private let threads: [IOThread]
    let slowConsumers = Atomic<Int>(0)
    let lines = Atomic<Int>(0)
    private let next = Atomic<Int>(0)
    /// Members of each kind in the whole room: a line is prepared only for the kinds present.
    private let tcpMembers = Atomic<Int>(0)
    private let webSocketMembers = Atomic<Int>(0)

    init(threads: [IOThread]) {
        self.threads = threads
        members = threads.map { _ in Members() }
    }

    func join(_ connection: TCPConnection) {
        members[connection.thread.index].connections.append(connection)
        tcpMembers.wrappingAdd(1, ordering: .relaxed)
    }

    func leave(_ connection: TCPConnection) {
        members[connection.thread.index].connections.removeAll { $0 === connection }
        tcpMembers.wrappingSubtract(1, ordering: .relaxed)
    }

    func join(_ socket: WebSocket, on thread: IOThread) {
        members[thread.index].sockets.append(socket)
        webSocketMembers.wrappingAdd(1, ordering: .relaxed)
    }

    func leave(_ socket: WebSocket, on thread: IOThread) {
        members[thread.index].sockets.removeAll { $0 == socket }
        webSocketMembers.wrappingSubtract(1, ordering: .relaxed)
    }

    func nextGuestNumber() -> Int { next.wrappingAdd(1, ordering: .relaxed).newValue }

    /// Sends `name: line` to every member: one shared payload for the TCP members and one prepared
    /// frame for the WebSocket members, one hop per other I/O thread.
    func broadcast(name prefix: [UInt8], line: UnsafeRawBufferPointer, from thread: IOThread) {
        lines.wrappingAdd(1, ordering: .relaxed)
        var forTCP: SharedBuffer?
        if tcpMembers.load(ordering: .relaxed) > 0, var out = try? thread.bufferPool.acquire() {
            out.append(contentsOf: prefix)
            out.append(line)
            out.append(contentsOf: CollectionOfOne(UInt8(ascii: "\n")))
            forTCP = out.share()
        }
        var forWebSockets: WebSocketBroadcast?
        if webSocketMembers.load(ordering: .relaxed) > 0, var out = try? thread.bufferPool.acquire() {
            out.append(contentsOf: prefix)
            out.append(line)
            let local = members[thread.index]
            if local.compressor == nil { local.compressor = WebSocketBroadcastCompressor() }
            // A TCP member's line that is not UTF-8 goes to WebSocket members as a binary message.
            var validator = UTF8Validator()
            let isText = out.withUnsafeReadableBytes { validator.validate($0) } && validator.isAtCharacterBoundary
            var payload = BufferChain()
            payload.append(out)
            forWebSockets = try? WebSocketBroadcast(isText ? .text : .binary, payload: payload, pool: thread.bufferPool,
                                                     compressor: local.compressor)
        }
        let (line, frame) = (forTCP, forWebSockets)
        Self.deliver(line, frame, to: members[thread.index])
        // Other threads' lists are read only on their own threads.
        for index in members.indices where index != thread.index {
            let list = members[index]
            threads[index].execute { Self.deliver(line, frame, to: list) }
        }
    }

    /// Sends to the members of one thread (on that thread).
    private static func deliver(_ line: SharedBuffer?, _ frame: WebSocketBroadcast?, to list: Members) {
        if let line { for member in list.connections { member.write(line) } }
        if let frame { for socket in list.sockets { socket.send(frame) } }
    }
}

/// One member: frames its input into lines and broadcasts each as `name: line`.
struct ChatMember: TCPConnectionHandler {
    /// The member's partial line between reads (a class: the accumulator is noncopyable).
    final class LineBuffer {
        var accumulator = FrameAccumulator(decoder: LineDecoder(maximumLineBytes: 4096))
    }

    let room: ChatRoom
    var name = ""
    var lines = LineBuffer()

    mutating func connectionEstablished(_ connection: TCPConnection) {
        name = "guest\(room.nextGuestNumber())"
        room.join(connection)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let thread = connection.thread
        let prefix = Array("\(name): ".utf8)
        let room = self.room
        do {
            try lines.accumulator.feed(buffer) { line in
                room.broadcast(name: prefix, line: line, from: thread)
            }
        } catch {
            connection.close(.abortive)  // a line longer than 4 KiB: not a chat client
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if reason == .slowConsumer { room.slowConsumers.wrappingAdd(1, ordering: .relaxed) }
        room.leave(connection)
        lines.accumulator.discard()
    }
}

/// One WebSocket member: each text message is a line, broadcast as `name: line`.
struct ChatWebSocketMember: WebSocketHandler {
    let room: ChatRoom
    var name = ""
    var thread: IOThread?
    var socket: WebSocket?

    mutating func webSocketOpened(_ socket: WebSocket) {
        guard let thread = socket.connection?.thread else { return }
        name = "guest\(room.nextGuestNumber())"
        self.thread = thread
        self.socket = socket
        room.join(socket, on: thread)
    }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        guard let thread, message.kind == .text else { return socket.close(.unsupportedData, reason: "text lines only") }
        let prefix = Array("\(name): ".utf8)
        let line = message.payload.readableByteArray  // at most 4 KiB (the message limit)
        line.withUnsafeBytes { room.broadcast(name: prefix, line: $0, from: thread) }
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        if reason == .slowConsumer { room.slowConsumers.wrappingAdd(1, ordering: .relaxed) }
        if let socket, let thread { room.leave(socket, on: thread) }
        socket = nil
    }
}
