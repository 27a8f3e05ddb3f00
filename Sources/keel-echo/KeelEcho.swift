// keel-echo: a TCP echo server on Keel's callback API.
//
//   keel-echo [--host 127.0.0.1] [--port 7007] [--backend io_uring|epoll] [--threads N]
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly.
import ArgumentParser
import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem

/// Echoes every received buffer back on the same connection, without copying it.
struct EchoHandler: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}

extension BackendKind: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
}

@main
struct KeelEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-echo", abstract: "A TCP echo server on Keel (callback API).")

    @Option(help: "Address to listen on (numeric IPv4 or IPv6).")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port).")
    var port: UInt16 = 7007

    @Option(help: "I/O backend: io_uring or epoll (default: automatic, or KEEL_BACKEND).")
    var backend: BackendKind?

    @Option(help: "I/O threads (default: one per core).")
    var threads: Int = IOPoolConfiguration.coreCount

    func run() throws {
        let signals = ShutdownSignals()  // before any thread starts, so every thread inherits the mask
        let pool = try IOPool(configuration: .init(threadCount: threads, backend: backend))
        let server = try TCPServer(pool: pool, configuration: .init(host: host, port: port)) { EchoHandler() }
        print("listening on \(server.localAddress)")
        fflush(nil)
        let signal = signals.wait()
        print("keel-echo: signal \(signal), shutting down (\(server.statistics.accepted) connections served)")
        pool.shutdown()
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after it) and waits for
/// them synchronously with `sigwait`, so no handler runs at an arbitrary point.
struct ShutdownSignals {
    private var set = sigset_t()

    init() {
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    func wait() -> Int32 {
        var set = self.set
        var received: Int32 = 0
        sigwait(&set, &received)
        return received
    }
}
