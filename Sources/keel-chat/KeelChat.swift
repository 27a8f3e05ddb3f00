// keel-chat: a line-based chat server over TCP and, with --ws-port, WebSockets (the same room). Every
// line a client sends goes to every client, from one shared buffer (or one prepared WebSocket frame)
// per line; a client that stops reading is disconnected before it costs the server more than 1 MiB.
//
//   keel-chat [--host 127.0.0.1] [--port 7007] [--ws-port 7080] [--backend io_uring|epoll] [--threads N]
import ArgumentParser
import KeelChat
import KeelCommandLine
import KeelEngine
import KeelSockets

@main
struct KeelChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-chat", abstract: "A line-based TCP chat server on Keel (shared-buffer broadcast).")

    @OptionGroup var options: ServerOptions

    @Option(help: "Also serve the room over WebSockets on this port (0: any free port); prints `websockets on HOST:PORT`.")
    var wsPort: UInt16?

    func run() throws {
        try options.runUntilSignalled("keel-chat") { pool in
            let server = try ChatServer(pool: pool, host: options.host, port: options.port, webSocketPort: wsPort)
            if let address = server.webSocketAddress { announce("websockets on \(address)") }
            return RunningService(address: server.localAddress, summary: { "\(server.linesBroadcast) lines broadcast" })
        }
    }
}
