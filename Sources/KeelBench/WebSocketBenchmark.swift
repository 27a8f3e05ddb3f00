import Histogram
import KeelBuffers
import KeelEngine
import KeelHTTP
import KeelSockets
import KeelSystem
import KeelWebSocket
import Synchronization

/// Settings of the `ws` mode.
public struct WebSocketBenchmarkOptions: Sendable {
    public var target: SocketAddress
    /// The `Host` the upgrade request names, and its path.
    public var host: String
    public var path: String
    public var connections: Int
    public var messageSize: Int
    public var depth: Int
    public var warmup: Duration
    public var duration: Duration
    /// Messages per connection instead of a duration (nil: run for `duration`).
    public var messagesPerConnection: Int?
    /// Offer permessage-deflate.
    public var deflate: Bool
    /// The load connections' options below the upgrade (their filters: TLS for wss).
    public var connection: TCPConnectionOptions

    public init(target: SocketAddress, host: String, path: String = "/", connections: Int, messageSize: Int, depth: Int,
                warmup: Duration, duration: Duration, messagesPerConnection: Int?, deflate: Bool = false,
                connection: TCPConnectionOptions = .init()) {
        self.target = target
        self.host = host
        self.path = path
        self.connections = connections
        self.messageSize = messageSize
        self.depth = depth
        self.warmup = warmup
        self.duration = duration
        self.messagesPerConnection = messagesPerConnection
        self.deflate = deflate
        self.connection = connection
    }
}

typealias WebSocketRun = LoadRun<WebSocketBenchmarkOptions>

/// One load WebSocket: keeps `depth` binary messages in flight, checks every byte of every echoed
/// message (its size and its place in the stream's pattern), and records each round trip while measuring.
struct WebSocketLoadClient: WebSocketHandler {
    let run: WebSocketRun
    let stream: Int
    var stats: ThreadStats?
    var sent = 0
    var received = 0
    var sendTimes: [UInt64]
    var closing = false

    init(run: WebSocketRun) {
        self.run = run
        stream = run.nextStream.wrappingAdd(1, ordering: .relaxed).oldValue
        sendTimes = [UInt64](repeating: 0, count: run.options.depth)
    }

    var size: Int { run.options.messageSize }

    mutating func webSocketOpened(_ socket: WebSocket) {
        guard let thread = socket.connection?.thread else { return }
        stats = run.stats[thread.index]
        stats!.connections += 1
        fill(socket, pool: thread.bufferPool)
    }

    mutating func fill(_ socket: WebSocket, pool: BufferPool) {
        let limit = run.options.messagesPerConnection ?? Int.max
        while sent - received < run.options.depth && sent < limit && run.phase.current != Phase.stopping {
            var payload = BufferChain()
            var offset = 0
            while offset < size {
                guard let buffer = patternBuffer(stream: stream, from: sent * size + offset, upTo: size - offset, pool: pool) else { return }
                offset += buffer.readableBytes
                payload.append(buffer)
            }
            sendTimes[sent % run.options.depth] = now()
            socket.send(.binary, payload: payload)
            sent += 1
        }
    }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        let arrived = now()
        var intact = message.kind == .binary && message.payload.readableBytes == size
        if intact {
            var offset = received * size
            let stream = self.stream
            message.payload.forEachReadableRegion { region in
                for i in 0..<region.count where region[i] != patternByte(stream: stream, offset: offset + i) {
                    intact = false
                    break
                }
                offset += region.count
            }
        }
        guard intact else {
            stats?.validationFailures += 1
            closing = true
            return socket.close(.policyViolation, reason: "echo differs")
        }
        if run.phase.current == Phase.measuring {
            _ = stats!.latency.record(arrived &- sendTimes[received % run.options.depth])
            stats!.messages += 1
            stats!.bytes += size
            stats!.progress.wrappingAdd(1, ordering: .relaxed)
        }
        received += 1
        if let pool = socket.connection?.thread.bufferPool { fill(socket, pool: pool) }
        if !closing && received == sent && (run.phase.current == Phase.stopping || sent == run.options.messagesPerConnection) {
            closing = true
            socket.close()
        }
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        // A clean end is the closing handshake this client started.
        if !closing || (reason.code != .peerClosed && reason.code != .local) { stats?.errors += 1 }
        run.finished.wrappingAdd(1, ordering: .relaxed)
    }
}

/// The TCP side of a load WebSocket: counts a connection that closed before its WebSocket opened (a
/// refused upgrade) as an error; the WebSocket filter passes `established` up once it opens.
struct WebSocketLoadConnection: TCPConnectionHandler {
    let run: WebSocketRun
    var opened = false

    mutating func connectionEstablished(_ connection: TCPConnection) { opened = true }
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        guard !opened else { return }
        run.stats[connection.thread.index].errors += 1
        run.finished.wrappingAdd(1, ordering: .relaxed)
    }
}

/// The `ws` mode: C WebSocket connections, S-byte binary messages, P in flight each, every byte validated.
public func runWebSocketBenchmark(_ options: WebSocketBenchmarkOptions, pool: IOPool) async -> BenchResult {
    let run = WebSocketRun(options: options, threads: pool.threads.count)
    var connection = options.connection
    connection.connectWebSocket(host: options.host, path: options.path,
                                configuration: WebSocketConfiguration(
                                    maximumFrameSize: max(options.messageSize, 1 << 20), maximumMessageSize: max(options.messageSize, 1 << 20),
                                    compression: options.deflate ? WebSocketCompression() : nil)) {
        WebSocketLoadClient(run: run)
    }
    let connector = TCPConnector<WebSocketLoadConnection>(pool: pool, configuration: .init(connectTimeout: .seconds(10), connection: connection))
    let failures = Atomic<Int>(0)
    for stream in 0..<options.connections {
        let source = try? SocketAddress(host: "127.0.0.\(2 + stream % 200)", port: 0)
        connector.connect(to: options.target, from: options.target.host.hasPrefix("127.") ? source : nil,
                          makeHandler: { WebSocketLoadConnection(run: run) },
                          failed: { _ in failures.wrappingAdd(1, ordering: .relaxed); run.finished.wrappingAdd(1, ordering: .relaxed) })
    }
    return await measureEchoRun(mode: "ws", stats: run.stats, phase: run.phase, finished: { run.finished.load(ordering: .relaxed) },
                                connections: options.connections, messagesPerConnection: options.messagesPerConnection,
                                warmup: options.warmup, duration: options.duration,
                                connectFailures: { failures.load(ordering: .relaxed) }, pool: pool)
}
