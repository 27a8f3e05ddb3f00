// keel-udp-echo: a UDP echo server on Keel. Every datagram goes back to its sender, from the same
// pooled buffer it arrived in.
//
//   keel-udp-echo [--host 127.0.0.1] [--port 7007] [--backend io_uring|epoll] [--threads N]
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly. With several
// threads, each binds its own SO_REUSEPORT socket to the same port.
import ArgumentParser
import KeelBuffers
import KeelCommandLine
import KeelEngine
import KeelSockets
import KeelSystem

/// Sends every datagram back to its sender without copying it.
struct UDPEcho: UDPHandler {
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        socket.send(datagram, to: sender)
    }
}

@main
struct KeelUDPEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-udp-echo", abstract: "A UDP echo server on Keel.")

    @OptionGroup var options: ServerOptions

    func run() throws {
        try options.runUntilSignalled("keel-udp-echo") { pool in
            let first = try UDPSocket.bind(pool: pool, on: pool.threads[0],
                                           configuration: .init(host: options.host, port: options.port, reusePort: true),
                                           handler: UDPEcho())
            for thread in pool.threads.dropFirst() {
                _ = try UDPSocket.bind(pool: pool, on: thread,
                                       configuration: .init(host: options.host, port: first.localAddress.port, reusePort: true),
                                       handler: UDPEcho())
            }
            return RunningService(address: first.localAddress)
        }
    }
}
