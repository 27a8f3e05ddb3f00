// keel-ws-echo: a WebSocket echo server (RFC 6455) on Keel: every text and binary message comes back
// as it came. Over TLS (wss) with --cert and --key.
//
//   keel-ws-echo [--host 127.0.0.1] [--port 9001] [--cert cert.pem --key key.pem] [--no-deflate] [--max-message-mib 16]
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly.
import ArgumentParser
import KeelCommandLine
import KeelHTTP
import KeelSockets
import KeelTLS
import KeelWebSocket

/// Sends every message back.
struct WebSocketEcho: WebSocketHandler {
    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        socket.send(message)
    }
}

@main
struct KeelWSEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-ws-echo", abstract: "A WebSocket echo server on Keel (ws, or wss with --cert and --key).")

    @OptionGroup var options: ServerOptions

    @Option(help: "PEM file with the certificate chain, leaf first (serves wss).")
    var cert: String?

    @Option(help: "PEM file with the certificate's private key (with --cert).")
    var key: String?

    @Option(help: "The largest message (and frame) accepted, in MiB; larger ones close with 1009.")
    var maxMessageMib: Int = 16

    @Flag(inversion: .prefixedNo, help: "Accept permessage-deflate (compressed messages) when a client offers it.")
    var deflate = true

    func validate() throws {
        if (cert == nil) != (key == nil) { throw ValidationError("--cert and --key go together") }
    }

    func run() throws {
        let tls = try cert.map { cert in
            try TLSContext(configuration: .server(certificateChain: cert, privateKey: key ?? ""))
        }
        // Every message is compressed, short ones too: kosoku (the Autobahn runner CI uses) mishandles
        // an uncompressed message on a connection that agreed on compression, which RFC 7692 allows.
        let webSocket = WebSocketConfiguration(maximumFrameSize: maxMessageMib << 20, maximumMessageSize: maxMessageMib << 20,
                                               compression: deflate ? WebSocketCompression(minimumMessageSize: 0) : nil)
        try options.runUntilSignalled("keel-ws-echo") { pool in
            var configuration = TCPServerConfiguration(host: options.host, port: options.port)
            // An echo queues a whole message before the peer reads it: room for two of the largest.
            configuration.connection.flowControl = TCPFlowControl(
                hardLimit: 2 * (maxMessageMib << 20) + (1 << 20), pausesReadingWhileNotWritable: true)
            if let tls { configuration.connection.useTLS(tls) }
            configuration.connection.serveWebSockets(configuration: webSocket) { WebSocketEcho() }
            let server = try TCPServer(pool: pool, configuration: configuration) { HTTPOnlyConnection() }
            return RunningService(
                address: server.localAddress, summary: { "\(server.statistics.accepted) connections served" },
                counters: { server.statistics.counters })
        }
    }
}
