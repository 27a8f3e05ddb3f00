import FoundationEssentials
import Glibc
import KeelCommandLine
import KeelEngine
import KeelServer
import KeelSystem
import Logging
import Synchronization

/// `keel-server --workers N`: this process supervises N worker processes, each a whole keel-server
/// on the same listeners (SO_REUSEPORT: the kernel spreads connections across them), so a process's
/// descriptor limit and a crashing plugin only ever concern one worker.
///
/// - Worker 0 starts first; listeners on port 0 are then pinned to the ports it bound, and the others
///   start on the same configuration.
/// - A worker that dies is restarted with back-off (100 ms doubling to 5 s; reset once it has run
///   10 s) while the others keep serving.
/// - SIGUSR2: a rolling restart. Each worker in turn gets a replacement, which starts and binds the
///   listeners before the old one is told to drain, so no listener is ever closed.
/// - SIGHUP: the configuration file is checked here, then every worker reloads it.
/// - SIGTERM, SIGINT: every worker drains; the supervisor exits 0 once they all have.
/// - The admin listener runs here and reports every worker's counters summed (`/metrics`,
///   `/status.json`, the status page), read from each worker's own admin listener on loopback.
final class Supervisor {
    private let workerCount: Int
    private let userConfig: String?
    private let workerArguments: [String]
    private let configuration: ServerConfiguration
    private let logger = Logger(label: "keel.supervisor")
    private let executable: String
    private var workers: [WorkerProcess?]
    private var restartAt: [ContinuousClock.Instant?]
    private var backoff: [Duration]
    /// Workers told to stop (by a shutdown or a rolling restart): their exit is expected.
    private var retiring: [pid_t: WorkerProcess] = [:]
    private var resolvedPath: String?
    private var pinned: ServerConfiguration?
    private let aggregator = WorkerStatusAggregator()

    init(workers: Int, userConfig: String?, configuration: ServerConfiguration, workerArguments: [String]) {
        workerCount = workers
        self.userConfig = userConfig
        self.configuration = configuration
        self.workerArguments = workerArguments
        executable = Self.ownExecutable()
        self.workers = Array(repeating: nil, count: workers)
        restartAt = Array(repeating: nil, count: workers)
        backoff = Array(repeating: .milliseconds(100), count: workers)
    }

    /// Runs until SIGTERM or SIGINT. - Returns: the exit status.
    func run(signals: ShutdownSignals) -> Int32 {
        defer { if let resolvedPath { unlink(resolvedPath) } }
        guard let first = spawn(index: 0, config: userConfig), first.waitUntilReady(timeout: .seconds(30)) else {
            announceError("keel-server: worker 0 did not start")
            stopAll()
            return 1
        }
        workers[0] = first
        do {
            let pinned = try pinPorts(from: first)
            self.pinned = pinned
            resolvedPath = try writeResolved(pinned)
        } catch {
            announceError("keel-server: \(error)")
            stopAll()
            return 1
        }
        for index in 1..<workerCount {
            guard let worker = spawn(index: index, config: resolvedPath), worker.waitUntilReady(timeout: .seconds(30)) else {
                announceError("keel-server: worker \(index) did not start")
                stopAll()
                return 1
            }
            workers[index] = worker
        }
        for listener in first.listeners where listener.endpoint != "admin" {
            announce("listening on \(listener.address) (\(listener.endpoint))")
        }
        aggregator.setWorkers(workers.compactMap { $0 })
        var admin: (pool: IOPool, listener: AdminListener)?
        if let adminConfiguration = configuration.admin {
            do {
                let pool = try IOPool(configuration: IOPoolConfiguration(threadCount: 1, workPoolThreadCount: 1))
                let listener = try AdminListener(configuration: adminConfiguration, pool: pool)
                listener.attach(aggregator)
                admin = (pool, listener)
                announce("listening on \(listener.address) (admin)")
            } catch {
                announceError("keel-server: admin listener: \(error)")
                stopAll()
                return 1
            }
        }
        logger.info("supervising", metadata: ["workers": "\(workerCount)"])
        while true {
            let signal = signals.wait(timeout: .milliseconds(100))
            reap()
            restartDue()
            switch signal {
            case SIGTERM?, SIGINT?:
                announce("keel-server: signal \(signal ?? 0), draining \(workerCount) workers")
                stopAll()
                if let admin {
                    Self.wait { await admin.listener.stop() }
                    admin.pool.shutdown()
                }
                announce("keel-server: stopped")
                return 0
            case SIGHUP?:
                reload()
            case SIGUSR2?:
                rollingRestart()
            default:
                break
            }
        }
    }

    // MARK: Workers

    private func spawn(index: Int, config: String?) -> WorkerProcess? {
        var arguments = [executable, "--worker-index", "\(index)"] + workerArguments
        if let config { arguments += ["--config", config] }
        do {
            let worker = try WorkerProcess(index: index, arguments: arguments)
            logger.info("worker started", metadata: ["worker": "\(index)", "pid": "\(worker.pid)"])
            return worker
        } catch {
            logger.error("cannot start worker \(index): \(error)")
            return nil
        }
    }

    /// Collects exited workers; an unexpected exit schedules a restart.
    private func reap() {
        var status: Int32 = 0
        while true {
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { return }
            if retiring.removeValue(forKey: pid) != nil { continue }
            guard let index = workers.firstIndex(where: { $0?.pid == pid }), let worker = workers[index] else { continue }
            workers[index] = nil
            aggregator.setWorkers(workers.compactMap { $0 })
            let ranLong = ContinuousClock.now - worker.started > .seconds(10)
            if ranLong { backoff[index] = .milliseconds(100) }
            let reason = (status & 0x7f) == 0 ? "exit status \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
            logger.warning("worker exited, restarting", metadata: [
                "worker": "\(index)", "pid": "\(pid)", "reason": "\(reason)", "restart-in": "\(backoff[index])",
            ])
            announce("keel-server: worker \(index) (pid \(pid)) exited (\(reason)); restarting in \(backoff[index])")
            restartAt[index] = ContinuousClock.now + backoff[index]
            backoff[index] = min(backoff[index] * 2, .seconds(5))
        }
    }

    private func restartDue() {
        let now = ContinuousClock.now
        for index in workers.indices {
            guard let due = restartAt[index], due <= now else { continue }
            restartAt[index] = nil
            guard let worker = spawn(index: index, config: resolvedPath) else {
                restartAt[index] = now + backoff[index]
                continue
            }
            workers[index] = worker
            aggregator.setWorkers(workers.compactMap { $0 })
        }
    }

    /// Replaces every worker, one at a time: the new one is serving before the old one drains.
    private func rollingRestart() {
        announce("keel-server: rolling restart of \(workerCount) workers")
        for index in workers.indices {
            guard let old = workers[index] else { continue }
            guard let fresh = spawn(index: index, config: resolvedPath), fresh.waitUntilReady(timeout: .seconds(30)) else {
                logger.error("rolling restart: the replacement of worker \(index) did not start; keeping the old one")
                continue
            }
            workers[index] = fresh
            retiring[old.pid] = old
            aggregator.setWorkers(workers.compactMap { $0 })
            kill(old.pid, SIGTERM)
            announce("keel-server: worker \(index) replaced (pid \(old.pid) → \(fresh.pid))")
        }
    }

    /// Checks the configuration file, pins its new port-0 listeners, and has every worker reload it.
    private func reload() {
        guard let userConfig, let resolvedPath, let pinned else {
            logger.warning("SIGHUP: no --config file to reload")
            return
        }
        do {
            var next = try ConfigurationLoader().load(path: userConfig)
            var added: [(endpoint: String, address: ListenAddress)] = []
            for (index, endpoint) in next.endpoints.enumerated() {
                if let known = pinned.endpoints.first(where: { $0.name == endpoint.name }), known.listen.count == endpoint.listen.count {
                    next.endpoints[index].listen = zip(endpoint.listen, known.listen).map { $0.port == 0 ? $1 : $0 }
                    continue
                }
                // A new endpoint: every worker must bind the same port, so the supervisor picks port 0's.
                next.endpoints[index].listen = try endpoint.listen.map { address in
                    address.port == 0 ? ListenAddress(host: address.host, port: try Self.freePort(host: address.host, udp: endpoint.transport == .udp))
                                      : address
                }
                added += next.endpoints[index].listen.map { (endpoint.name, $0) }
            }
            next.admin = AdminConfiguration(listen: ListenAddress(host: "127.0.0.1", port: 0))
            _ = try writeResolved(next, to: resolvedPath)
            self.pinned = next
            // A worker still starting reads the new file itself (and would not survive a SIGHUP before
            // it handles one).
            for worker in workers.compactMap({ $0 }) where worker.isReady { kill(worker.pid, SIGHUP) }
            announce("keel-server: reloading \(userConfig) in \(workerCount) workers")
            for (endpoint, address) in added { announce("listening on \(address) (\(endpoint))") }
        } catch {
            logger.error("reload refused, the running configuration stays: \(error)")
        }
    }

    /// Tells every worker to drain and waits for them (killing any still alive long after the deadline).
    private func stopAll() {
        let all = workers.compactMap { $0 } + Array(retiring.values)
        for worker in all { kill(worker.pid, SIGTERM) }
        let limit = ContinuousClock.now + configuration.shutdownDeadline + .seconds(5)
        for worker in all {
            var status: Int32 = 0
            while waitpid(worker.pid, &status, WNOHANG) == 0 {
                if ContinuousClock.now > limit { kill(worker.pid, SIGKILL) }
                usleep(20_000)
            }
        }
        workers = workers.map { _ in nil }
        retiring.removeAll()
    }

    // MARK: Configuration

    /// The configuration with every port-0 listener pinned to the port worker 0 bound, and the
    /// workers' admin listeners on loopback port 0 (the supervisor's serves the configured address).
    private func pinPorts(from first: WorkerProcess) throws -> ServerConfiguration {
        var pinned = configuration
        for (index, endpoint) in pinned.endpoints.enumerated() {
            let bound = first.listeners.filter { $0.endpoint == endpoint.name }
            guard bound.count == endpoint.listen.count else {
                throw SupervisorError("worker 0 reported \(bound.count) listeners for endpoint \(endpoint.name)")
            }
            pinned.endpoints[index].listen = zip(endpoint.listen, bound).map { address, listener in
                address.port == 0 ? ListenAddress(host: address.host, port: listener.port) : address
            }
        }
        pinned.admin = AdminConfiguration(listen: ListenAddress(host: "127.0.0.1", port: 0))
        return pinned
    }

    private func writeResolved(_ configuration: ServerConfiguration, to path: String? = nil) throws -> String {
        let target: String
        if let path {
            target = path
        } else {
            var template = Array("/tmp/keel-server-\(getpid())-XXXXXX.yaml".utf8CString)
            let fd = mkstemps(&template, 5)
            guard fd >= 0 else { throw SupervisorError("cannot create the workers' configuration file") }
            close(fd)
            target = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let temporary = target + ".tmp"
        guard let file = fopen(temporary, "w") else { throw SupervisorError("cannot write \(temporary)") }
        let text = configuration.resolvedYAML
        let written = fputs(text, file) >= 0
        guard fclose(file) == 0, written, rename(temporary, target) == 0 else { throw SupervisorError("cannot write \(target)") }
        return target
    }

    /// A port free now on `host` (bound and released at once), for a new endpoint every worker binds.
    private static func freePort(host: String, udp: Bool) throws -> UInt16 {
        let address = try SocketAddress(host: host, port: 0)
        let family = address.family == .ipv4 ? AF_INET : AF_INET6
        let fd = udp ? try Sockets.makeDatagramSocket(family: family) : try Sockets.makeStreamSocket(family: family)
        defer { Descriptors.close(fd) }
        try Sockets.bind(fd, to: address)
        return try Sockets.localAddress(fd).port
    }

    private static func ownExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return count > 0 ? String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    /// Runs `body` on the concurrency runtime and waits for it.
    private static func wait(_ body: @escaping @Sendable () async -> Void) {
        _ = try? waitFor { await body() }
    }
}

/// A supervisor failure, with its reason.
struct SupervisorError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One worker process: its pid, and what it announced on its standard output (read by a thread of its
/// own; other lines are passed on with a `worker N:` prefix).
final class WorkerProcess: Sendable {
    struct Listener: Sendable {
        var endpoint: String
        var address: String
        var port: UInt16 { UInt16(address.split(separator: ":").last ?? "") ?? 0 }
    }

    let index: Int
    let pid: pid_t
    let started = ContinuousClock.now
    struct WorkerState: Sendable {
        var listeners: [Listener] = []
        var ready = false
        var ended = false
    }

    /// What the output thread learns, shared with it.
    final class StateBox: Sendable {
        let lock = Mutex(WorkerState())
        func withLock<Result>(_ body: (inout WorkerState) -> Result) -> Result { lock.withLock { body(&$0) } }
    }

    private let state = StateBox()

    init(index: Int, arguments: [String]) throws {
        self.index = index
        let state = self.state
        pid = try ChildProcess.spawn(arguments, onLine: { line in Self.handle(line, worker: index, state: state) },
                                     onEnd: { state.withLock { $0.ended = true } }).pid
    }

    var listeners: [Listener] { state.withLock { $0.listeners } }

    /// True once the worker announced its admin listener (it handles its signals by then).
    var isReady: Bool { state.withLock { $0.ready } }

    /// Waits until the worker announced its admin listener (its last), or exited, or `timeout` passed.
    func waitUntilReady(timeout: Duration) -> Bool {
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end {
            let (ready, ended) = state.withLock { ($0.ready, $0.ended) }
            if ready { return true }
            if ended { return false }
            usleep(10_000)
        }
        return false
    }

    /// The worker's own admin listener (loopback), once ready.
    var adminAddress: String? { state.withLock { $0.listeners.first { $0.endpoint == "admin" }?.address } }

    private static func handle(_ line: String, worker index: Int, state: StateBox) {
        // `listening on ADDRESS (ENDPOINT)`: recorded, not repeated (the supervisor announces once).
        if line.hasPrefix("listening on "), line.hasSuffix(")"), let open = line.lastIndex(of: "(") {
            let address = line.dropFirst("listening on ".count).prefix { $0 != " " }
            let endpoint = line[line.index(after: open)..<line.index(before: line.endIndex)]
            state.withLock {
                $0.listeners.append(Listener(endpoint: String(endpoint), address: String(address)))
                if endpoint == "admin" { $0.ready = true }
            }
            return
        }
        announce("worker \(index): \(line)")
    }
}

/// The supervisor's admin source: every worker's `/status.json`, fetched on the work pool and summed.
final class WorkerStatusAggregator: AdminStatusSource, @unchecked Sendable {
    // @unchecked Sendable: `workers` is behind a mutex; the exporter is Sendable.
    private let workers = Mutex<[WorkerProcess]>([])
    private let exporter = PrometheusExporter()

    func setWorkers(_ processes: [WorkerProcess]) {
        workers.withLock { $0 = processes }
    }

    func collectStatus(on thread: IOThread, _ completion: @escaping (ServerStatus?) -> Void) {
        // A worker that is still starting has no admin address yet: it is left out of this sum.
        let addresses = workers.withLock { $0 }.compactMap(\.adminAddress)
        // The completion runs on `thread`, where it was made (runBlocking delivers there).
        let deliver = UncheckedCompletion(completion)
        thread.runBlocking({ () -> ServerStatus? in
            let statuses = addresses.compactMap { Self.fetchStatus(from: $0) }
            return ServerStatus.summing(statuses)
        }, then: { result in deliver.call((try? result.get()) ?? nil) })
    }

    func prometheusMetrics(for status: ServerStatus) -> [UInt8] { exporter.render(status) }

    /// One worker's status over a blocking loopback HTTP request (2 s timeout).
    private static func fetchStatus(from address: String) -> ServerStatus? {
        guard let listen = ListenAddress(parsing: address), let target = try? SocketAddress(host: listen.host, port: listen.port) else { return nil }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard target.withSockAddr({ connect(fd, $0, $1) }) == 0 else { return nil }
        let request = Array("GET /status.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return nil }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count <= 0 { break }
            response += chunk[..<count]
        }
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = response.indices.dropLast(3).first(where: { Array(response[$0..<($0 + 4)]) == separator }) else { return nil }
        return try? JSONDecoder().decode(ServerStatus.self, from: Data(response[(end + 4)...]))
    }
}

/// A completion closure carried through the work pool and called back on the I/O thread it came from.
struct UncheckedCompletion: @unchecked Sendable {
    // @unchecked Sendable: made on an I/O thread and called only on that same thread (runBlocking's
    // completion runs there); it never runs concurrently with anything else touching its captures.
    let call: (ServerStatus?) -> Void
    init(_ call: @escaping (ServerStatus?) -> Void) { self.call = call }
}
