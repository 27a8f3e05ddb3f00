// keel-chat: a line-based TCP chat server. Every line a client sends goes to every client, from one
// shared buffer per line; a client that stops reading is disconnected before it costs the server
// more than 1 MiB.
//
//   keel-chat [--host 127.0.0.1] [--port 7007] [--backend io_uring|epoll] [--threads N]
import ArgumentParser
import KeelChat
import KeelCommandLine
import KeelEngine

@main
struct KeelChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-chat", abstract: "A line-based TCP chat server on Keel (shared-buffer broadcast).")

    @OptionGroup var options: ServerOptions

    func run() throws {
        try options.runUntilSignalled("keel-chat") { pool in
            let server = try ChatServer(pool: pool, host: options.host, port: options.port)
            return RunningService(address: server.localAddress, summary: { "\(server.linesBroadcast) lines broadcast" })
        }
    }
}
