import ArgumentParser
import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Logging

/// The command-line options every Keel example server shares: `--host`, `--port`, `--backend`,
/// `--threads` and the rest of ``ListenerOptions``.
public struct ServerOptions: ParsableArguments {
    /// Everything but the I/O backend.
    @OptionGroup public var listener: ListenerOptions

    @Option(help: "I/O backend: io_uring or epoll (default: automatic, or KEEL_BACKEND).")
    public var backend: BackendKind?

    public init() {}

    /// The address to listen on.
    public var host: String { listener.host }
    /// The port to listen on.
    public var port: UInt16 { listener.port }

    /// The pool configuration these options ask for.
    public var poolConfiguration: IOPoolConfiguration { listener.poolConfiguration(backend: backend) }

    /// Runs the server as ``ListenerOptions/runUntilSignalled(_:backend:start:)`` does, on the backend asked for.
    public func runUntilSignalled(_ name: String, start: (IOPool) throws -> RunningService) throws {
        try listener.runUntilSignalled(name, backend: backend, start: start)
    }
}

/// The options of an example server other than its I/O backend: for a server whose `--backend` means
/// something else (keel-gateway's back-ends), which names the I/O backend `--io-backend` itself.
public struct ListenerOptions: ParsableArguments {
    @Option(help: "Address to listen on (numeric IPv4 or IPv6).")
    public var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port).")
    public var port: UInt16 = 7007

    @Option(help: "I/O threads (default: one per core).")
    public var threads: Int = IOPoolConfiguration.coreCount

    @Option(help: "Cap each I/O thread's buffer pool at this many MiB (reads wait for buffers at the cap).")
    public var bufferPoolMib: Int?

    @Option(help: "Size of each pooled I/O buffer in KiB (default 16).")
    public var bufferKib: Int?

    @Option(help: "Append a CSV line of process and buffer-pool statistics to this file every --stats-interval seconds.")
    public var statsFile: String?

    @Option(help: "Log at this level and above, to standard error (trace, debug, info, notice, warning, error, critical).")
    public var logLevel: Logger.Level?

    @Option(help: "Seconds between --stats-file samples.")
    public var statsInterval: Double = 1

    @Option(help: "Send TCP writes of at least this many queued bytes zero-copy where io_uring has it (default: never).")
    public var zeroCopyThreshold: Int?

    @Flag(help: "With --zero-copy-threshold: keep sending zero-copy where the kernel copies anyway (loopback), to measure its cost.")
    public var zeroCopyAlways = false

    @Option(help: "Hold each connection's writes up to this many milliseconds and send them together (default: at the end of each loop iteration).")
    public var coalescingDelayMs: Double?

    public init() {}

    /// Puts the connection options these flags ask for (zero-copy sends, a write coalescing delay) into
    /// `options`.
    public func apply(to options: inout TCPConnectionOptions) {
        options.zeroCopySendThreshold = zeroCopyThreshold
        options.zeroCopyEvenWhenCopied = zeroCopyAlways
        if let coalescingDelayMs, coalescingDelayMs > 0 {
            options.writeCoalescingDelay = .microseconds(Int64(coalescingDelayMs * 1000))
        }
    }

    /// The pool configuration these options ask for, on `backend` (nil: automatic, or KEEL_BACKEND).
    public func poolConfiguration(backend: BackendKind?) -> IOPoolConfiguration {
        var configuration = IOPoolConfiguration(threadCount: threads, backend: backend)
        if let bufferPoolMib { configuration.bufferPool.maximumBytes = bufferPoolMib << 20 }
        if let bufferKib { configuration.bufferPool.bufferSize = bufferKib << 10 }
        return configuration
    }

    /// The life of an example server: blocks SIGINT and SIGTERM (before any thread starts, so every
    /// thread inherits the mask), starts the pool, lets `start` bring the service up, prints
    /// `listening on HOST:PORT`, waits for a signal (sampling statistics into `--stats-file` meanwhile,
    /// when given), prints `NAME: signal N, shutting down (SUMMARY)` and shuts the pool down.
    /// - Parameter start: starts the service on the pool and describes it.
    public func runUntilSignalled(_ name: String, backend: BackendKind?, start: (IOPool) throws -> RunningService) throws {
        if let logLevel {
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = logLevel
                return handler
            }
        }
        let signals = ShutdownSignals()
        let pool = try IOPool(configuration: poolConfiguration(backend: backend))
        let service = try start(pool)
        let recorder = try statsFile.map { path throws(SystemError) in
            try StatisticsRecorder(path: path, pool: pool, counters: service.counters)
        }
        announce("listening on \(service.address)")
        let signal: Int32
        if let recorder {
            let interval = Duration.milliseconds(Int64(max(0.01, statsInterval) * 1000))
            var nextSample = ContinuousClock.now
            while true {
                if ContinuousClock.now >= nextSample {
                    recorder.sample()
                    nextSample += interval
                }
                if let received = signals.wait(timeout: nextSample - ContinuousClock.now) {
                    signal = received
                    break
                }
            }
            recorder.sample()
        } else {
            signal = signals.wait()
        }
        let summary = service.summary()
        announce("\(name): signal \(signal), shutting down" + (summary.isEmpty ? "" : " (\(summary))"))
        pool.shutdown()
    }
}

/// What an example server's `start` closure brought up (see ``ServerOptions/runUntilSignalled(_:start:)``).
public struct RunningService {
    /// The address it listens on.
    public var address: SocketAddress
    /// Summarises what it did, for the shutdown line (empty for none).
    public var summary: () -> String
    /// Its counters for `--stats-file` samples, always the same names in the same order.
    public var counters: () -> [(name: String, value: Int)]

    /// Describes a running service.
    public init(address: SocketAddress, summary: @escaping () -> String = { "" },
                counters: @escaping () -> [(name: String, value: Int)] = { [] }) {
        self.address = address
        self.summary = summary
        self.counters = counters
    }
}

extension BackendKind: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
}

/// Blocks SIGINT and SIGTERM (and any others a server handles, such as SIGHUP for a reload) in the
/// calling thread (and so in every thread started after it) and waits for them synchronously with
/// `sigwait`: no handler runs at an arbitrary point. Create it before starting any thread.
public struct ShutdownSignals: Sendable {
    private let additional: [Int32]

    /// Blocks SIGINT, SIGTERM and `additional`.
    public init(including additional: [Int32] = []) {
        self.additional = additional
        var set = self.set
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    private var set: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        for signal in additional { sigaddset(&set, signal) }
        return set
    }

    /// Blocks until one of the signals arrives. - Returns: the signal number.
    public func wait() -> Int32 {
        var set = self.set
        var received: Int32 = 0
        sigwait(&set, &received)
        return received
    }

    /// Blocks until one of the signals arrives or `timeout` passes. - Returns: the signal number, or
    /// nil when the time ran out.
    public func wait(timeout: Duration) -> Int32? {
        var set = self.set
        let (seconds, attoseconds) = max(timeout, .zero).components
        var limit = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        let received = sigtimedwait(&set, nil, &limit)
        return received > 0 ? received : nil
    }
}

/// Prints a line and flushes stdout at once (scripts wait for lines such as `listening on HOST:PORT`).
public func announce(_ line: String) {
    print(line)
    fflush(nil)
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
