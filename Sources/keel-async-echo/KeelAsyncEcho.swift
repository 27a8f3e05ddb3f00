// keel-async-echo: the TCP echo server written with Keel's async/await API.
//
//   keel-async-echo [--host 127.0.0.1] [--port 7007] [--backend io_uring|epoll] [--threads N]
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly.
import ArgumentParser
import KeelCommandLine
import KeelEngine
import KeelSockets

@main
struct KeelAsyncEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-async-echo", abstract: "A TCP echo server on Keel (async/await API).")

    @OptionGroup var options: ServerOptions

    func run() throws {
        try options.runUntilSignalled("keel-async-echo") { pool in
            var configuration = TCPServerConfiguration(host: options.host, port: options.port)
            configuration.connection.flowControl = TCPFlowControl(pausesReadingWhileNotWritable: true)
            let server = try AsyncTCPServer(pool: pool, configuration: configuration) { connection in
                for try await payload in connection.inbound {
                    try await connection.write(payload)  // zero-copy, suspends under backpressure
                }
            }
            return RunningService(
                address: server.localAddress, summary: { "\(server.statistics.accepted) connections served" },
                counters: { server.statistics.counters })
        }
    }
}
