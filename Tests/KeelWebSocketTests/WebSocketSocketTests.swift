import Glibc
import KeelEngine
import KeelHTTP
import KeelSockets
import KeelSystem
import KeelTestSupport
import KeelWebSocket
import Testing

// WebSockets over real sockets on 127.0.0.1, both backends: the async API on both ends, and Keel's
// client against an independent server (Python's `websockets`, from scripts/python-venv.sh).

/// A pattern that compresses but is not trivial.
func patternBytes(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) } }

/// Sends a text and a 200 KB binary message, checks their echoes, then closes; the inbound sequence
/// ends cleanly after the closing handshake.
func exchangeEchoes(_ socket: AsyncWebSocket) async throws {
    try await socket.send(text: "hello, κόσμε")
    let text = try await socket.receive()
    #expect(text?.kind == .text && text?.text == "hello, κόσμε")
    let payload = patternBytes(200_000)
    try await socket.send(binary: payload)
    let binary = try await socket.receive()
    #expect(binary?.kind == .binary && binary?.bytes == payload)
    await socket.close(.normalClosure, reason: "done")
    #expect(try await socket.receive() == nil, "the sequence ends after the closing handshake")
}

@Suite("WebSocket over sockets")
struct WebSocketSocketTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func anAsyncServerEchoesToAnAsyncClient(backend: BackendKind) async throws {
        try await withPool(backend, threads: 2) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            let served = Collector<String>()
            configuration.connection.serveAsyncWebSockets(configuration: WebSocketConfiguration(compression: WebSocketCompression())) { socket in
                for try await message in socket.inbound {
                    try await socket.send(message)
                }
                served.add("ended")
            }
            let server = try TCPServer(pool: pool, configuration: configuration) { HTTPOnlyConnection() }
            for compressed in [false, true] {
                let connector = AsyncWebSocketConnector(
                    pool: pool, host: "localhost", path: "/echo",
                    configuration: WebSocketConfiguration(compression: compressed ? WebSocketCompression() : nil))
                let socket = try await connector.connect(to: server.localAddress)
                #expect((socket.compression != nil) == compressed)
                try await exchangeEchoes(socket)
            }
            #expect(await served.wait(for: 2) == ["ended", "ended"])
            await server.stop()
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aRefusedUpgradeThrowsATypedError(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.serveAsyncWebSockets(checkOrigin: { _ in false }) { _ in }
            let server = try TCPServer(pool: pool, configuration: configuration) { HTTPOnlyConnection() }
            // Keel's client sends no Origin; this server refuses even that.
            let connector = AsyncWebSocketConnector(pool: pool, host: "localhost")
            await #expect(throws: AsyncWebSocketError.self) { _ = try await connector.connect(to: server.localAddress) }
            await server.stop()
        }
    }

    static let pythonPath: String = {
        let repository = "\(#filePath)".split(separator: "/").dropLast(3).joined(separator: "/")
        return "/\(repository)/.build/python-venv/bin/python"
    }()

    static var pythonWebSocketsInstalled: Bool { access(pythonPath, X_OK) == 0 }

    /// Python `websockets` echo server on a free port: prints the port, serves `count` connections, exits.
    static let pythonServer = #"""
    import asyncio, sys
    from websockets.asyncio.server import serve

    async def main():
        expected = int(sys.argv[1])
        done = asyncio.get_running_loop().create_future()
        finished = 0

        async def echo(ws):
            nonlocal finished
            try:
                async for message in ws:
                    await ws.send(message)
            finally:
                finished += 1
                if finished == expected and not done.done():
                    done.set_result(None)

        async with serve(echo, "127.0.0.1", 0, max_size=1 << 22) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.wait_for(done, 30)

    asyncio.run(main())
    """#

    @Test(.timeLimit(.minutes(1)), .enabled(if: pythonWebSocketsInstalled, "scripts/python-venv.sh installs Python's websockets"),
          arguments: backendsUnderTest)
    func keelsClientTalksToPythonsWebSocketsServer(backend: BackendKind) async throws {
        let script = "/tmp/keel-ws-server-\(getpid())-\(backend).py"
        let file = fopen(script, "w")!
        fputs(Self.pythonServer, file)
        fclose(file)
        defer { unlink(script) }
        let server = try #require(popen("\(Self.pythonPath) \(script) 2", "r"))
        var line = [CChar](repeating: 0, count: 64)
        let port = fgets(&line, 64, server).flatMap { _ in
            UInt16(String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).filter(\.isNumber))
        }
        #expect(port != nil, "the Python server printed its port")
        try await withPool(backend) { pool in
            guard let port else { return }
            let address = try SocketAddress(host: "127.0.0.1", port: port)
            // Without compression, then offering permessage-deflate (which websockets accepts).
            for compressed in [false, true] {
                let connector = AsyncWebSocketConnector(
                    pool: pool, host: "127.0.0.1:\(port)",
                    configuration: WebSocketConfiguration(compression: compressed ? WebSocketCompression() : nil))
                let socket = try await connector.connect(to: address)
                #expect((socket.compression != nil) == compressed, "websockets agrees to permessage-deflate when offered")
                try await exchangeEchoes(socket)
            }
        }
        // pclose waits for the server to exit: on a thread of its own. (The FILE pointer moves there once.)
        nonisolated(unsafe) let child = server
        let status = await withCheckedContinuation { continuation in
            SystemThread.spawn(name: "python-ws") { continuation.resume(returning: pclose(child)) }.detach()
        }
        #expect(status == 0, "the Python server served both connections and exited cleanly")
    }
}
