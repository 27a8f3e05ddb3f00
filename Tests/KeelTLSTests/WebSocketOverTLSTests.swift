import KeelEngine
import KeelHTTP
import KeelSockets
import KeelTLS
import KeelTestSupport
import KeelWebSocket
import Testing

// wss end to end over real sockets: the TLS filter at the bottom of both stacks, the HTTP upgrade and
// the WebSocket filter above it, the async API on both ends; with and without permessage-deflate.

@Suite("WebSocket over TLS (wss)")
struct WebSocketOverTLSTests {
    let pki = TestPKI.shared

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func wssEchoesTextAndLargeBinaryMessagesAndClosesCleanly(backend: BackendKind) async throws {
        try await withPool(backend, threads: 2) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.useTLS(try pki.serverContext())
            let ended = Collector<String>()
            configuration.connection.serveAsyncWebSockets(configuration: WebSocketConfiguration(compression: WebSocketCompression())) { socket in
                #expect(socket.thread.isCurrent, "the task runs on the connection's I/O thread")
                for try await message in socket.inbound { try await socket.send(message) }
                ended.add("ended")
            }
            let server = try TCPServer(pool: pool, configuration: configuration) { HTTPOnlyConnection() }
            var tls = TCPConnectorConfiguration()
            tls.connection.useTLS(try pki.clientContext())
            let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 11) }
            for compressed in [false, true] {
                let connector = AsyncWebSocketConnector(
                    pool: pool, host: "localhost", path: "/secure",
                    configuration: WebSocketConfiguration(compression: compressed ? WebSocketCompression() : nil), connector: tls)
                let socket = try await connector.connect(to: server.localAddress)
                #expect((socket.compression != nil) == compressed)
                for round in 0..<3 {
                    try await socket.send(text: "round \(round)")
                    try await socket.send(binary: payload)
                    #expect(try await socket.receive()?.text == "round \(round)")
                    #expect(try await socket.receive()?.bytes == payload, "round \(round)")
                }
                await socket.close()
                #expect(try await socket.receive() == nil)
            }
            #expect(await ended.wait(for: 2).count == 2)
            await server.stop()
        }
    }
}
