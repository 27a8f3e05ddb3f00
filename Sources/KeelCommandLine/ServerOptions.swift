import ArgumentParser
import Glibc
import KeelEngine
import KeelSystem

/// The command-line options every Keel example server shares: `--host`, `--port`, `--backend`,
/// `--threads`.
public struct ServerOptions: ParsableArguments {
    @Option(help: "Address to listen on (numeric IPv4 or IPv6).")
    public var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port).")
    public var port: UInt16 = 7007

    @Option(help: "I/O backend: io_uring or epoll (default: automatic, or KEEL_BACKEND).")
    public var backend: BackendKind?

    @Option(help: "I/O threads (default: one per core).")
    public var threads: Int = IOPoolConfiguration.coreCount

    public init() {}

    /// The pool configuration these options ask for.
    public var poolConfiguration: IOPoolConfiguration {
        IOPoolConfiguration(threadCount: threads, backend: backend)
    }

    /// The life of an example server: blocks SIGINT and SIGTERM (before any thread starts, so every
    /// thread inherits the mask), starts the pool, lets `start` bring the service up, prints
    /// `listening on HOST:PORT`, waits for a signal, prints `NAME: signal N, shutting down (SUMMARY)`
    /// and shuts the pool down.
    /// - Parameter start: starts the service on the pool; returns the address it listens on and a
    ///   closure that summarises what it did (read at shutdown; empty for none).
    public func runUntilSignalled(
        _ name: String, start: (IOPool) throws -> (address: SocketAddress, summary: () -> String)
    ) throws {
        let signals = ShutdownSignals()
        let pool = try IOPool(configuration: poolConfiguration)
        let service = try start(pool)
        announce("listening on \(service.address)")
        let signal = signals.wait()
        let summary = service.summary()
        announce("\(name): signal \(signal), shutting down" + (summary.isEmpty ? "" : " (\(summary))"))
        pool.shutdown()
    }
}

extension BackendKind: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread started after it) and
/// waits for them synchronously with `sigwait`: no handler runs at an arbitrary point. Create it
/// before starting any thread.
public struct ShutdownSignals: Sendable {
    public init() {
        var set = ShutdownSignals.set
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    private static var set: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        return set
    }

    /// Blocks until SIGINT or SIGTERM arrives. - Returns: the signal number.
    public func wait() -> Int32 {
        var set = ShutdownSignals.set
        var received: Int32 = 0
        sigwait(&set, &received)
        return received
    }
}

/// Prints a line and flushes stdout at once (scripts wait for lines such as `listening on HOST:PORT`).
public func announce(_ line: String) {
    print(line)
    fflush(nil)
}
