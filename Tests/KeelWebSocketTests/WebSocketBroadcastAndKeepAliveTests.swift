import HTTPTypes
import KeelBuffers
import KeelHTTP
import KeelSockets
import KeelTestSupport
@testable import KeelWebSocket
import Testing

// Broadcast (one frame for many connections), keep-alive pings, the origin check and client-side
// compression, in memory: real connections on embedded threads, no sockets, no sleeps.

/// The sockets opened on embedded connections. @unchecked Sendable: an in-memory test runs every
/// connection on the test's own thread.
final class OpenedSockets: @unchecked Sendable {
    var snapshot: [WebSocket] = []
    func add(_ socket: WebSocket) { snapshot.append(socket) }
}

/// Keeps each opened socket so the test can send on it.
struct SocketKeeper: WebSocketHandler {
    let sockets: OpenedSockets
    mutating func webSocketOpened(_ socket: WebSocket) { sockets.add(socket) }
    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {}
}

/// A frame as a client reads it: header bits and the payload.
struct ReadFrame: Equatable {
    var reserved: UInt8
    var opcode: WebSocketOpcode
    var payload: [UInt8]
}

func readServerFrames(_ bytes: [UInt8]) -> [ReadFrame] {
    var bytes = bytes
    var parser = WebSocketFrameParser(role: .client, maximumFrameSize: 1 << 22, allowedReservedBits: 0b100)
    var frames: [ReadFrame] = []
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while let part = try? parser.next(raw, consumed: &offset) {
            switch part {
            case .header(let header): frames.append(ReadFrame(reserved: header.reserved, opcode: header.opcode, payload: []))
            case .payload(let range): frames[frames.count - 1].payload += raw[range]
            case .end: break
            }
        }
    }
    return frames
}

/// Inflates one compressed message (RFC 7692: the trailer 00 00 FF FF goes back on first).
func inflateMessage(_ compressed: [UInt8]) throws -> [UInt8] {
    let inflater = try #require(WebSocketInflater(resetsAfterEachMessage: true))
    var output = [UInt8](repeating: 0, count: 1 << 20)
    var produced = 0
    let input = compressed + WebSocketInflater.trailer
    try input.withUnsafeBytes { raw in
        try output.withUnsafeMutableBytes { out in
            try inflater.inflate(raw, region: { UnsafeMutableRawBufferPointer(rebasing: out[produced...]) }, produced: { produced += $0 })
        }
    }
    return Array(output[..<produced])
}

func upgrade(offering extensions: String?, origin: String? = nil) -> [UInt8] {
    var request = "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    if let extensions { request += "Sec-WebSocket-Extensions: \(extensions)\r\n" }
    if let origin { request += "Origin: \(origin)\r\n" }
    return Array((request + "\r\n").utf8)
}

/// Logs each fragment it is given.
struct FragmentLogger: WebSocketHandler {
    let log: Collector<String>
    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) { log.add("whole message") }
    mutating func fragmentReceived(_ fragment: consuming WebSocketFragment, on socket: WebSocket) {
        log.add("\(fragment.kind) \(String(decoding: fragment.payload.readableByteArray, as: UTF8.self)) final=\(fragment.isFinal)")
    }
}

@Suite("WebSocket broadcast, keep-alive, origin check and client compression")
struct WebSocketBroadcastAndKeepAliveTests {
    @Test func fragmentsAreDeliveredAsTheyCompleteWhenAskedFor() {
        var options = TCPConnectionOptions()
        let log = Collector<String>()
        options.serveWebSockets(configuration: WebSocketConfiguration(maximumMessageSize: 64, deliversFragments: true)) {
            FragmentLogger(log: log)
        }
        let connection = EmbeddedConnection(handler: HTTPOnlyConnection(), options: options)
        connection.receive(upgrade(offering: nil))
        _ = connection.takeWritten()
        // κ is two bytes (CE BA): the first fragment ends inside it, the next completes it.
        let kappa = Array("κ".utf8)
        connection.receive(clientFrame(.text, Array("Hel".utf8) + [kappa[0]], fin: false) + clientFrame(.ping, "p")
            + clientFrame(.continuation, [kappa[1]] + Array("lo".utf8)) + clientFrame(.binary, "one"))
        #expect(log.snapshot == ["text Hel\u{FFFD} final=false", "text \u{FFFD}lo final=true", "binary one final=true"])
        #expect(readServerFrames(connection.takeWritten()).map(\.opcode) == [.pong])
        // The limits still apply to the message as a whole.
        connection.receive(clientFrame(.binary, [UInt8](repeating: 1, count: 40), fin: false)
            + clientFrame(.continuation, [UInt8](repeating: 2, count: 40)))
        #expect(connection.isClosed, "over the 64-byte message limit across fragments")
        #expect(connection.finish().isClean)
    }

    @Test func aBroadcastIsFramedAndCompressedOnceForEveryConnection() throws {
        let sockets = OpenedSockets()
        var options = TCPConnectionOptions()
        options.serveWebSockets(configuration: WebSocketConfiguration(compression: WebSocketCompression(serverNoContextTakeover: true))) {
            SocketKeeper(sockets: sockets)
        }
        // Six connections: four agreed on deflate (so server_no_context_takeover is in force), two did not.
        let connections = (0..<6).map { _ in EmbeddedConnection(handler: HTTPOnlyConnection(), options: options) }
        for (index, connection) in connections.enumerated() {
            connection.receive(upgrade(offering: index < 4 ? "permessage-deflate; client_max_window_bits" : nil))
            let head = connection.takeWrittenString()
            #expect(head.hasPrefix("HTTP/1.1 101 "))
            #expect(head.contains("server_no_context_takeover") == (index < 4))
        }
        let opened = sockets.snapshot
        try #require(opened.count == 6)

        let source = BufferPool(configuration: BufferPoolConfiguration(bufferSize: 16_384, buffersPerSlab: 8))
        let compressor = try #require(WebSocketBroadcastCompressor())
        let text = String(repeating: "the same news for everyone; ", count: 100)
        var broadcast: WebSocketBroadcast? = try WebSocketBroadcast(.text, bytes: Array(text.utf8), pool: source, compressor: compressor)
        // Framed once (one buffer) and compressed once (another): two buffers however many receive it.
        let framedOnce = source.statistics
        #expect(framedOnce.inUse == 2, "\(framedOnce)")
        let before = connections.map { $0.bufferStatistics.acquisitions }
        for (connection, socket) in zip(connections, opened) {
            connection.withConnection { _ in socket.send(broadcast!) }
        }
        #expect(source.statistics.acquisitions == framedOnce.acquisitions, "no buffer was taken per connection from the source")
        #expect(connections.map { $0.bufferStatistics.acquisitions } == before, "no connection copied or framed it again")

        var wire: [[UInt8]] = []
        for (index, connection) in connections.enumerated() {
            let bytes = connection.takeWritten()
            wire.append(bytes)
            let frames = readServerFrames(bytes)
            try #require(frames.count == 1)
            #expect(frames[0].opcode == .text)
            if index < 4 {
                #expect(frames[0].reserved == 0b100, "compressed for a deflate connection")
                #expect(frames[0].payload.count < text.utf8.count / 10)
                #expect(try inflateMessage(frames[0].payload) == Array(text.utf8))
            } else {
                #expect(frames[0].reserved == 0, "plain for a connection without deflate")
                #expect(frames[0].payload == Array(text.utf8))
            }
        }
        #expect(Set(wire[..<4]).count == 1 && Set(wire[4...]).count == 1, "every connection got the same bytes as its kind")
        broadcast = nil
        _ = source.drainReturns()
        #expect(source.statistics.inUse == 0, "the frames went back to their pool once sent")
        for connection in connections { #expect(connection.finish().isClean) }
    }

    @Test func aConnectionWithContextTakeoverGetsThePlainFrame() throws {
        let sockets = OpenedSockets()
        var options = TCPConnectionOptions()
        options.serveWebSockets(configuration: WebSocketConfiguration(compression: WebSocketCompression())) { SocketKeeper(sockets: sockets) }
        let connection = EmbeddedConnection(handler: HTTPOnlyConnection(), options: options)
        connection.receive(upgrade(offering: "permessage-deflate"))
        _ = connection.takeWritten()
        let socket = try #require(sockets.snapshot.first)
        let pool = BufferPool(configuration: BufferPoolConfiguration(bufferSize: 4096, buffersPerSlab: 8))
        let compressor = try #require(WebSocketBroadcastCompressor())
        let broadcast = try WebSocketBroadcast(.binary, bytes: [UInt8](repeating: 9, count: 10_000), pool: pool, compressor: compressor)
        connection.withConnection { _ in socket.send(broadcast) }
        let frames = readServerFrames(connection.takeWritten())
        // Its own compressor keeps history the shared frame knows nothing of: it gets the plain form.
        #expect(frames == [ReadFrame(reserved: 0, opcode: .binary, payload: [UInt8](repeating: 9, count: 10_000))])
        #expect(connection.finish().isClean)
    }

    @Test func aClientConnectionMasksItsOwnCopyOfABroadcastLongerThanABuffer() throws {
        let sockets = OpenedSockets()
        var clientOptions = TCPConnectionOptions()
        clientOptions.connectWebSocket(host: "example.com") { SocketKeeper(sockets: sockets) }
        let log = Collector<String>()
        var serverOptions = TCPConnectionOptions()
        serverOptions.serveWebSockets(configuration: WebSocketConfiguration(maximumMessageSize: 1 << 20)) { EchoSocket(log: log) }
        // The client's pool has 4 KiB buffers; the broadcast's frame sits in 16 KiB ones.
        let client = EmbeddedConnection(handler: HTTPOnlyConnection(), options: clientOptions,
                                        bufferPool: BufferPoolConfiguration(bufferSize: 4096, buffersPerSlab: 16))
        let server = EmbeddedConnection(handler: HTTPOnlyConnection(), options: serverOptions)
        server.receive(client.takeWritten())
        client.receive(server.takeWritten())
        let socket = try #require(sockets.snapshot.first)
        let source = BufferPool(configuration: BufferPoolConfiguration(bufferSize: 16_384, buffersPerSlab: 4))
        let payload = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let broadcast = try WebSocketBroadcast(.binary, bytes: payload, pool: source)
        client.withConnection { _ in socket.send(broadcast) }
        server.receive(client.takeWritten())  // masked frames the server must accept, then echo
        let frames = readServerFrames(server.takeWritten())
        #expect(frames == [ReadFrame(reserved: 0, opcode: .binary, payload: payload)], "the whole payload, masked and unmasked again")
        #expect(client.finish().isClean)
        #expect(server.finish().isClean)
    }

    @Test func keepAlivePingsGoOutWhenQuietAndASilentPeerIsClosed() {
        let harness = WebSocketHarness(configuration: WebSocketConfiguration(pingInterval: .seconds(10), pongTimeout: .seconds(5)))
        harness.connection.receive(upgradeRequest)
        #expect(harness.takeFrames() == [])
        harness.connection.advanceTime(by: .seconds(6))
        harness.connection.receive(clientFrame(.text, "busy"))  // traffic postpones the ping
        #expect(harness.takeFrames() == ["text busy"])
        harness.connection.advanceTime(by: .seconds(6))
        #expect(harness.takeFrames() == [], "10 s have not passed since the last message")
        harness.connection.advanceTime(by: .seconds(5))
        #expect(harness.takeFrames() == ["ping "], "quiet for 10 s: a ping")
        harness.connection.receive(clientFrame(.pong, ""))
        harness.connection.advanceTime(by: .seconds(5))
        #expect(!harness.connection.isClosed, "the pong kept it open")
        harness.connection.advanceTime(by: .seconds(6))
        #expect(harness.takeFrames() == ["ping "])
        harness.connection.advanceTime(by: .seconds(6))
        #expect(harness.connection.closeReason?.code == .webSocketPingTimeout, "no answer within 5 s")
        #expect(harness.connection.finish().isClean)
    }

    @Test func theOriginCheckRefusesOtherSitesWith403() {
        var options = TCPConnectionOptions()
        let log = Collector<String>()
        options.serveWebSockets(checkOrigin: { $0 == nil || $0 == "https://good.example" }) { EchoSocket(log: log) }
        for (origin, status) in [("https://evil.example", "403 Forbidden"), ("https://good.example", "101 Switching Protocols")] {
            let connection = EmbeddedConnection(handler: HTTPOnlyConnection(), options: options)
            connection.receive(upgrade(offering: nil, origin: origin))
            #expect(connection.takeWrittenString().hasPrefix("HTTP/1.1 \(status)\r\n"), "\(origin)")
            #expect(connection.isClosed == (status.hasPrefix("403")), "\(origin)")
            #expect(connection.finish().isClean)
        }
        let noOrigin = EmbeddedConnection(handler: HTTPOnlyConnection(), options: options)
        noOrigin.receive(upgrade(offering: nil))
        #expect(noOrigin.takeWrittenString().hasPrefix("HTTP/1.1 101 "), "a client that is not a browser sends no origin")
        #expect(noOrigin.finish().isClean)
    }

    @Test func aClientOffersDeflateAndBothSidesCompress() throws {
        let log = Collector<String>()
        var serverOptions = TCPConnectionOptions()
        serverOptions.serveWebSockets(configuration: WebSocketConfiguration(compression: WebSocketCompression())) { EchoSocket(log: log) }
        var clientOptions = TCPConnectionOptions()
        let clientLog = Collector<String>()
        clientOptions.connectWebSocket(host: "example.com", configuration: WebSocketConfiguration(compression: WebSocketCompression())) {
            ClientRecorder(log: clientLog)
        }
        let server = EmbeddedConnection(handler: HTTPOnlyConnection(), options: serverOptions)
        let client = EmbeddedConnection(handler: HTTPOnlyConnection(), options: clientOptions)
        let request = client.takeWrittenString()
        #expect(request.contains("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
        server.receive(Array(request.utf8))
        let response = server.takeWritten()
        #expect(String(decoding: response, as: UTF8.self).contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        client.receive(response)
        // The client's messages (a text and 70,000 bytes of a repeating pattern) go compressed.
        let fromClient = client.takeWritten()
        #expect(fromClient.count < 5_000, "70 KB of pattern compressed (\(fromClient.count) bytes on the wire)")
        server.receive(fromClient)
        let fromServer = server.takeWritten()
        #expect(fromServer.count < 5_000, "the echo compressed too (\(fromServer.count) bytes)")
        client.receive(fromServer)
        #expect(clientLog.snapshot == ["opened", "text hello", "binary 70000 intact=true"])
        server.receive(client.takeWritten())  // the client's close
        client.receive(server.takeWritten())
        client.peerHalfCloses()
        #expect(clientLog.snapshot.last == "closed 1000 peerClosed")
        #expect(client.finish().isClean)
        #expect(server.finish().isClean)
    }
}
