// keel-echo: a TCP echo server on Keel's callback API.
//
//   keel-echo [--host 127.0.0.1] [--port 7007] [--backend io_uring|epoll] [--threads N]
//             [--proxy-protocol | --trusted-proxy CIDR ...] [--zero-copy-threshold BYTES [--zero-copy-always]]
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly.
import ArgumentParser
import KeelBuffers
import KeelCommandLine
import KeelEngine
import KeelSockets

@main
struct KeelEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-echo", abstract: "A TCP echo server on Keel (callback API).")

    @OptionGroup var options: ServerOptions
    @OptionGroup var proxy: ProxyProtocolOptions

    @Flag(help: "Send each write at once instead of coalescing a loop iteration's writes.")
    var noCoalescing = false

    @Option(help: "Probe a connection idle this many seconds (TCP keepalive): one whose peer vanished without a reset is closed.")
    var keepAlive: Int32?

    func run() throws {
        try options.runUntilSignalled("keel-echo") { pool in
            var configuration = TCPServerConfiguration(host: options.host, port: options.port)
            // A client that sends without reading is pushed back by TCP: the server stops reading from it
            // while its echo queue is over the high watermark, instead of queuing without bound.
            configuration.connection.flowControl = TCPFlowControl(pausesReadingWhileNotWritable: true)
            configuration.connection.coalescesWrites = !noCoalescing
            configuration.connection.keepAliveIdleSeconds = keepAlive
            try proxy.apply(to: &configuration.connection)
            options.listener.apply(to: &configuration.connection)
            let server = try TCPServer(pool: pool, configuration: configuration) { EchoHandler() }
            return RunningService(
                address: server.localAddress, summary: { "\(server.statistics.accepted) connections served" },
                counters: { server.statistics.counters })
        }
    }
}
