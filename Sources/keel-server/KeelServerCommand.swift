// keel-server: Keel's application server. Endpoints come from a YAML file (or the embedded default:
// echo over TCP, UDP and WebSockets, chat, a key-value store, the status page), each with a
// transport, a framing and a plugin holding the business logic.
//
//   keel-server [--config FILE] [--backend io_uring|epoll] [--threads N] [--log-level LEVEL]
//   keel-server --check FILE              validate and print the resolved configuration
//   keel-server --print-default-config    the embedded configuration, commented
//   keel-server --list-plugins
//
// Prints `listening on HOST:PORT (ENDPOINT)` per listener, in the configuration's order, then the
// admin listener's. SIGINT or SIGTERM: stop accepting, let connections finish the message in progress,
// close what is left at the shutdown deadline, exit 0. SIGHUP: reload --config without dropping a
// connection (a refused file leaves the running configuration).
import ArgumentParser
import Dispatch
import Glibc
import KeelBuffers
import KeelCommandLine
import KeelEngine
import KeelServer
import KeelSystem
import Logging
import ServiceLifecycle
import UnixSignals
import Synchronization

@main
struct KeelServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-server",
        abstract: "Keel's application server: endpoints from a configuration file, business logic in plugins.")

    @Option(help: "The configuration file (YAML). Without it, the embedded default runs (see --print-default-config).")
    var config: String?

    @Option(help: "Validate this configuration file, print it with every default filled in, and exit (nonzero when refused).")
    var check: String?

    @Flag(help: "Print the embedded default configuration (a commented starting point) and exit.")
    var printDefaultConfig = false

    @Flag(help: "List the plugins endpoints may name, and exit.")
    var listPlugins = false

    @Option(help: "I/O backend: io_uring or epoll (default: automatic, or KEEL_BACKEND).")
    var backend: BackendKind?

    @Option(help: "I/O threads (default: one per core).")
    var threads: Int = IOPoolConfiguration.coreCount

    @Option(help: "Size of each pooled I/O buffer in KiB (default 16).")
    var bufferKib: Int?

    @Option(help: "Cap each I/O thread's buffer pool at this many MiB.")
    var bufferPoolMib: Int?

    @Option(help: "Log at this level and above, to standard error (trace, debug, info, notice, warning, error, critical).")
    var logLevel: Logger.Level = .info

    @Option(help: "Log lines as text or json (one JSON object per line).")
    var logFormat: LogFormat = .text

    @Option(help: "Run N worker processes on the same listeners (SO_REUSEPORT) under a supervisor that restarts any that die; SIGUSR2 replaces them one at a time.")
    var workers: Int?

    @Option(help: .hidden)
    var workerIndex: Int?

    func validate() throws {
        if let workers, workers < 1 || workers > 256 { throw ValidationError("--workers takes 1 to 256") }
    }

    /// The options a worker process gets (all but the configuration file, which the supervisor picks).
    private var workerArguments: [String] {
        var arguments = ["--threads", "\(threads)", "--log-level", "\(logLevel)", "--log-format", logFormat.rawValue]
        if let backend { arguments += ["--backend", "\(backend)"] }
        if let bufferKib { arguments += ["--buffer-kib", "\(bufferKib)"] }
        if let bufferPoolMib { arguments += ["--buffer-pool-mib", "\(bufferPoolMib)"] }
        return arguments
    }

    private func runSupervisor(workers: Int, configuration: ServerConfiguration, signals: ShutdownSignals) throws {
        let supervisor = Supervisor(workers: workers, userConfig: config, configuration: configuration, workerArguments: workerArguments)
        let status = supervisor.run(signals: signals)
        if status != 0 { throw ExitCode(status) }
    }

    func run() throws {
        let loader = ConfigurationLoader()
        if printDefaultConfig {
            print(DefaultConfiguration.yaml, terminator: "")
            return
        }
        if listPlugins {
            for plugin in loader.plugins.all { print("\(plugin.name): \(plugin.summary)") }
            return
        }
        if let check {
            let configuration = try load(check, with: loader)
            print(configuration.resolvedYAML, terminator: "")
            announce("keel-server: \(check) is valid (\(configuration.endpoints.count) endpoints)")
            return
        }
        var configuration = try config.map { try load($0, with: loader) } ?? defaultConfiguration(loader)
        bootstrapLogging(level: logLevel, format: logFormat)
        let logger = Logger(label: "keel.server")
        if let workers {
            // The supervisor waits for its signals with sigwait: blocked on the main thread before any
            // other thread starts, so every thread inherits the mask.
            let signals = ShutdownSignals(including: [SIGHUP, SIGUSR2])
            return try runSupervisor(workers: workers, configuration: configuration, signals: signals)
        }
        if workerIndex != nil {
            // A worker: its own admin listener on loopback (the supervisor's serves the configured
            // address), and it goes when the supervisor goes.
            configuration.admin = AdminConfiguration(listen: ListenAddress(host: "127.0.0.1", port: 0))
            try? Processes.setParentDeathSignal(SIGTERM)
        }
        var poolConfiguration = IOPoolConfiguration(threadCount: threads, backend: backend)
        if let bufferPoolMib { poolConfiguration.bufferPool.maximumBytes = bufferPoolMib << 20 }
        if let bufferKib { poolConfiguration.bufferPool.bufferSize = bufferKib << 10 }
        let pool = try IOPool(configuration: poolConfiguration)
        let host: ServerHost
        do {
            let (plugins, starting) = (loader.plugins, configuration)
            host = try waitFor { try await ServerHost(configuration: starting, pool: pool, plugins: plugins) }
        } catch {
            announceError("keel-server: \(error)")
            pool.shutdown()
            throw ExitCode.failure
        }

        // swift-service-lifecycle runs the server: SIGTERM and SIGINT shut it down gracefully (a drain),
        // SIGHUP reloads the configuration file.
        let (deadline, plugins, configPath) = (configuration.shutdownDeadline, loader.plugins, config)
        let (endpointCount, backendName, threadCount, source) = (configuration.endpoints.count, "\(pool.backend)", pool.threads.count,
                                                                 configuration.source)
        let service = ServerHostService(
            host: host,
            started: {
                // Announced once the signals are handled: a script that waits for these lines may signal at once.
                for listener in host.listeners { announce("listening on \(listener.address) (\(listener.endpoint))") }
                logger.info("started", metadata: ["endpoints": "\(endpointCount)", "backend": "\(backendName)",
                                                  "threads": "\(threadCount)", "config": "\(source)"])
            },
            reload: { await Self.reload(host, from: configPath, plugins: plugins, logger: logger) },
            draining: { announce("keel-server: draining (deadline \(deadline))") },
            drained: { abandoned in
                announce("keel-server: stopped" + (abandoned > 0 ? " (\(abandoned) connections closed at the deadline)" : ""))
            })
        let group = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [],
                                 logger: logger)
        try waitFor { try await group.run() }
        pool.shutdown()
    }

    /// SIGHUP: reads the configuration file again and switches to it; a file that is refused (or an
    /// endpoint that cannot start) leaves the running configuration as it is.
    private static func reload(_ host: ServerHost, from config: String?, plugins: PluginRegistry, logger: Logger) async {
        guard let config else {
            logger.warning("SIGHUP: no --config file to reload; the embedded configuration keeps running")
            return
        }
        do {
            let configuration = try ConfigurationLoader(plugins: plugins).load(path: config)
            let summary = try await host.reload(configuration, plugins: plugins)
            announce("keel-server: reloaded \(config): \(summary)")
            for listener in host.listeners where summary.added.contains(listener.endpoint) || summary.replaced.contains(listener.endpoint) {
                announce("listening on \(listener.address) (\(listener.endpoint))")
            }
        } catch {
            logger.error("reload refused, the running configuration stays: \(error)")
        }
    }

    private func load(_ path: String, with loader: ConfigurationLoader) throws -> ServerConfiguration {
        do {
            return try loader.load(path: path)
        } catch {
            announceError("keel-server: \(error)")
            throw ExitCode(78)  // EX_CONFIG
        }
    }

    private func defaultConfiguration(_ loader: ConfigurationLoader) throws -> ServerConfiguration {
        do {
            return try loader.parse(DefaultConfiguration.yaml, file: "<default>")
        } catch {
            announceError("keel-server: the embedded configuration is refused: \(error)")
            throw ExitCode.failure
        }
    }
}

/// Runs `body` on the concurrency runtime and blocks the calling (main) thread until it finishes.
func waitFor<Value: Sendable>(_ body: @escaping @Sendable () async throws -> Value) throws -> Value {
    let outcome = Mutex<Result<Value, any Error>?>(nil)
    let finished = DispatchSemaphore(value: 0)
    Task {
        do {
            let value = try await body()
            outcome.withLock { $0 = .success(value) }
        } catch {
            outcome.withLock { $0 = .failure(error) }
        }
        finished.signal()
    }
    finished.wait()
    return try outcome.withLock { $0! }.get()
}

/// Writes a line to standard error.
func announceError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

extension LogFormat: ExpressibleByArgument {}
