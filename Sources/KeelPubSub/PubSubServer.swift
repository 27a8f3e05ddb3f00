import KeelBuffers
import KeelEngine
import KeelFraming
import KeelHTTP
import KeelSockets
import KeelSystem
import KeelWebSocket

/// A publish/subscribe server: clients subscribe to topics (or prefix patterns) and publish to
/// topics, over the line protocol (``PubSubLineProtocol``), the length-prefixed binary protocol
/// (``PubSubBinaryProtocol``) and WebSockets, all sharing one topic space.
///
/// ```swift
/// let server = try PubSubServer(pool: pool, configuration: PubSubServerConfiguration(
///     line: TCPServerConfiguration(port: 7400),
///     topicPolicies: [PubSubTopicPolicy(TopicFilter(parsing: "ticker.*"), .dropOldest)]))
/// ```
///
/// A published message is framed once per protocol in use and shared (``SharedBuffer``) by every
/// subscriber on every I/O thread. Each subscriber has a bounded queue
/// (``PubSubServerConfiguration/subscriberQueueBytes``) behind its connection; when it is full, the
/// message's topic policy drops old or new messages of lossy topics, or disconnects a subscriber that
/// cannot keep up with a must-not-lose topic. What was dropped, and for whom, is counted
/// (``statistics``, ``subscriberReport()``) and logged when the subscriber leaves.
public final class PubSubServer: Sendable {
    private let hub: PubSubHub
    private let lineServer: TCPServer<PubSubStreamConnection<LineDecoder>>
    private let binaryServer: TCPServer<PubSubStreamConnection<LengthPrefixedDecoder>>?
    private let webSocketServer: TCPServer<HTTPOnlyConnection>?

    /// Starts listening on the configured endpoints.
    public init(pool: IOPool, configuration: PubSubServerConfiguration) throws(SystemError) {
        let hub = try PubSubHub(pool: pool, configuration: configuration)
        self.hub = hub
        let bufferSize = pool.threads[0].bufferPool.bufferSize
        var started: [any StoppableServer] = []
        do throws(SystemError) {
            var line = configuration.line
            line.connection.flowControl = PubSubServerConfiguration.subscriberFlowControl
            let maximumLine = bufferSize - 1  // its delivery adds a newline and must fit one buffer
            let lineServer = try TCPServer(pool: pool, configuration: line) {
                PubSubStreamConnection(hub: hub, wire: .line, decoder: LineDecoder(maximumLineBytes: maximumLine), maximumBytes: maximumLine)
            }
            started.append(lineServer)
            self.lineServer = lineServer
            if var binary = configuration.binary {
                binary.connection.flowControl = PubSubServerConfiguration.subscriberFlowControl
                // Its delivery to line subscribers is 3 bytes longer and must fit one buffer.
                let maximumPayload = bufferSize - 4 - 3
                let server = try TCPServer(pool: pool, configuration: binary) {
                    PubSubStreamConnection(hub: hub, wire: .binary, decoder: LengthPrefixedDecoder(prefixBytes: 4, maximumPayloadBytes: maximumPayload),
                                           maximumBytes: maximumPayload)
                }
                started.append(server)
                binaryServer = server
            } else {
                binaryServer = nil
            }
            if var webSocket = configuration.webSocket {
                webSocket.connection.flowControl = PubSubServerConfiguration.subscriberFlowControl
                let maximumMessage = bufferSize - 1
                webSocket.connection.serveWebSockets(configuration: WebSocketConfiguration(
                    maximumFrameSize: maximumMessage, maximumMessageSize: maximumMessage, pingInterval: .seconds(30))) {
                    PubSubWebSocketConnection(hub: hub)
                }
                webSocketServer = try TCPServer(pool: pool, configuration: webSocket) { HTTPOnlyConnection() }
            } else {
                webSocketServer = nil
            }
        } catch {
            hub.stop()
            Task { [started] in for server in started { await server.stopServing() } }
            throw error
        }
    }

    /// The line protocol's bound address.
    public var localAddress: SocketAddress { lineServer.localAddress }
    /// The binary protocol's bound address, when it listens.
    public var binaryAddress: SocketAddress? { binaryServer?.localAddress }
    /// The WebSocket endpoint's bound address, when it listens.
    public var webSocketAddress: SocketAddress? { webSocketServer?.localAddress }

    /// The server's counters.
    public var statistics: PubSubStatistics { hub.statistics }

    /// Every connected client's subscriptions and delivered, dropped and waiting messages.
    public func subscriberReport() async -> [PubSubSubscriberReport] { await hub.subscriberReport() }

    /// Stops accepting and closes every connection.
    public func stop() async {
        await lineServer.stop()
        await binaryServer?.stop()
        await webSocketServer?.stop()
        hub.stop()
    }
}

/// A server of any handler type, for stopping the ones already started when a later one fails.
private protocol StoppableServer: Sendable {
    func stopServing() async
}

extension TCPServer: StoppableServer {
    fileprivate func stopServing() async { await stop() }
}

/// Holds a connection's partial frame between reads (a class: the accumulator is noncopyable).
final class CommandFramer<Decoder: FrameDecoder> {
    var accumulator: FrameAccumulator<Decoder>
    var subscriber: Subscriber?

    init(_ decoder: Decoder) { accumulator = FrameAccumulator(decoder: decoder) }
}

/// The two stream protocols: how commands are framed and parsed, and how the subscriber is written to.
enum PubSubWire {
    case line
    case binary

    func parse(_ bytes: UnsafeRawBufferPointer) throws(PubSubProtocolError) -> PubSubCommand {
        switch self {
        case .line: try PubSubLineProtocol.parse(bytes)
        case .binary: try PubSubBinaryProtocol.parse(bytes)
        }
    }

    func sink(_ connection: TCPConnection) -> Subscriber.Sink {
        switch self {
        case .line: .line(connection)
        case .binary: .binary(connection)
        }
    }

    /// A line's payload cannot hold a newline; a binary frame's can.
    var payloadMayHoldNewlines: Bool { self == .binary }
    var unitName: String { self == .line ? "line" : "frame" }
}

/// A line- or binary-protocol connection.
struct PubSubStreamConnection<Decoder: FrameDecoder>: TCPConnectionHandler {
    let hub: PubSubHub
    let wire: PubSubWire
    let framer: CommandFramer<Decoder>
    let maximumBytes: Int

    init(hub: PubSubHub, wire: PubSubWire, decoder: Decoder, maximumBytes: Int) {
        self.hub = hub
        self.wire = wire
        self.maximumBytes = maximumBytes
        framer = CommandFramer(decoder)
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        framer.subscriber = hub.attach(wire.sink(connection))
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        guard let subscriber = framer.subscriber else { return }
        let hub = self.hub, wire = self.wire
        do {
            try framer.accumulator.feed(buffer) { command in
                hub.handle(Result { () throws(PubSubProtocolError) in try wire.parse(command) }, in: command,
                           from: subscriber, payloadMayHoldNewlines: wire.payloadMayHoldNewlines)
            }
        } catch {
            // The rest of it cannot be told from the next command: say why, then close.
            let refusal = PubSubProtocolError("\(wire.unitName) longer than \(maximumBytes) bytes; closing")
            hub.handle(.failure(refusal), in: UnsafeRawBufferPointer(start: nil, count: 0), from: subscriber, payloadMayHoldNewlines: false)
            connection.close()
        }
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        if isWritable, let subscriber = framer.subscriber { hub.writable(subscriber) }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if let subscriber = framer.subscriber { hub.detach(subscriber, reason: reason) }
        framer.subscriber = nil
        framer.accumulator.discard()
    }
}

/// A WebSocket connection: each text or binary message is one line-protocol command (without the
/// newline; a binary message's payload may hold any byte); deliveries are `MESSAGE <topic> <payload>`
/// messages, text when UTF-8.
struct PubSubWebSocketConnection: WebSocketHandler {
    let hub: PubSubHub
    var subscriber: Subscriber?

    mutating func webSocketOpened(_ socket: WebSocket) {
        guard let connection = socket.connection else { return }
        subscriber = hub.attach(.webSocket(socket, connection))
    }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        guard let subscriber else { return }
        let bytes = message.payload.readableByteArray  // at most one pool buffer (the message limit)
        bytes.withUnsafeBytes { command in
            hub.handle(Result { () throws(PubSubProtocolError) in try PubSubLineProtocol.parse(command) }, in: command,
                       from: subscriber, payloadMayHoldNewlines: true)
        }
    }

    mutating func webSocketWritabilityChanged(_ isWritable: Bool, on socket: WebSocket) {
        if isWritable, let subscriber { hub.writable(subscriber) }
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        if let subscriber { hub.detach(subscriber, reason: reason) }
        subscriber = nil
    }
}
