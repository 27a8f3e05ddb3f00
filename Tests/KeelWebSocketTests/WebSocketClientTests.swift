import HTTPTypes
import KeelBuffers
import KeelHTTP
import KeelSockets
import KeelTestSupport
import KeelWebSocket
import Testing

// Keel's WebSocket client against Keel's server, joined in memory: the upgrade, masked frames one way
// and unmasked the other, and the closing handshake. No sockets.

/// On open sends a text, a 70,000-byte binary message and a ping; closes once both echoes are back.
struct ClientRecorder: WebSocketHandler {
    let log: Collector<String>
    var received = 0

    mutating func webSocketOpened(_ socket: WebSocket) {
        log.add("opened")
        socket.send(text: "hello")
        socket.send(binary: (0..<70_000).map { UInt8(truncatingIfNeeded: $0) })
        socket.ping(Array("ping".utf8))
    }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        let bytes = message.payload.readableByteArray
        log.add(message.kind == .text ? "text \(String(decoding: bytes, as: UTF8.self))"
                : "binary \(bytes.count) intact=\(bytes == (0..<70_000).map { UInt8(truncatingIfNeeded: $0) })")
        received += 1
        if received == 2 { socket.close(.normalClosure, reason: "done") }
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        log.add("closed \(close.code.map { "\($0)" } ?? "-") \(reason.code)")
    }
}

/// A client and a server connection joined in memory.
final class WebSocketPair {
    let clientLog = Collector<String>()
    let serverLog = Collector<String>()
    let client: EmbeddedConnection<HTTPOnlyConnection>
    let server: EmbeddedConnection<HTTPOnlyConnection>

    init(serverOptions: TCPConnectionOptions? = nil) {
        var clientOptions = TCPConnectionOptions()
        let clientLog = clientLog
        clientOptions.connectWebSocket(host: "example.com", path: "/chat") { ClientRecorder(log: clientLog) }
        var options = TCPConnectionOptions()
        let serverLog = serverLog
        options.serveWebSockets { EchoSocket(log: serverLog) }
        server = EmbeddedConnection(handler: HTTPOnlyConnection(), options: serverOptions ?? options)
        client = EmbeddedConnection(handler: HTTPOnlyConnection(), options: clientOptions)
    }

    /// Moves bytes and ends of stream both ways until nothing moves.
    func pump() {
        var clientEnded = false, serverEnded = false
        for _ in 0..<10_000 {
            let toServer = client.takeWritten()
            if !toServer.isEmpty && !server.isClosed { server.receive(toServer) }
            let toClient = server.takeWritten()
            if !toClient.isEmpty && !client.isClosed { client.receive(toClient) }
            var moved = !toServer.isEmpty || !toClient.isEmpty
            if client.peerSawEndOfStream && !clientEnded && !server.isClosed {
                clientEnded = true
                server.peerHalfCloses()
                moved = true
            }
            if server.peerSawEndOfStream && !serverEnded && !client.isClosed {
                serverEnded = true
                client.peerHalfCloses()
                moved = true
            }
            if !moved { return }
        }
        Issue.record("the pair never went quiet")
    }
}

@Suite("WebSocket client in memory")
struct WebSocketClientTests {
    @Test func theClientUpgradesExchangesMaskedFramesAndClosesCleanly() {
        let pair = WebSocketPair()
        pair.pump()
        #expect(pair.clientLog.snapshot == ["opened", "text hello", "binary 70000 intact=true", "closed 1000 peerClosed"])
        #expect(pair.serverLog.snapshot == ["opened", "closed 1000 peerClosed"])
        #expect(pair.client.finish().isClean)
        #expect(pair.server.finish().isClean)
    }

    @Test func aServerThatDoesNotSwitchProtocolsFailsTheHandshake() {
        struct NotFound: HTTPRequestHandler {
            mutating func requestReceived(_ head: HTTPRequestHead, responder: HTTPResponder) {}
            mutating func requestEnded(trailers: HTTPFields?, responder: HTTPResponder) { responder.respond(.notFound) }
        }
        var options = TCPConnectionOptions()
        options.serveHTTP { NotFound() }
        let pair = WebSocketPair(serverOptions: options)
        pair.pump()
        #expect(pair.client.closeReason?.code == .webSocketHandshakeFailed)
        #expect(pair.client.closeReason?.detail?.contains("404") == true)
        #expect(pair.clientLog.snapshot.isEmpty, "the handler never saw an open socket")
        #expect(pair.client.finish().isClean)
        #expect(pair.server.finish().isClean)
    }
}
