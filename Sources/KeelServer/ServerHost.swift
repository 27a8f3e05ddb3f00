import KeelBuffers
import KeelEngine
import KeelHTTP
import KeelProxyProtocol
import KeelSockets
import KeelSystem
import KeelTLS
import KeelWebSocket
import Logging
import Synchronization

/// One listener of a running server, as announced at start (`listening on ADDRESS (ENDPOINT)`).
public struct ServerListener: Sendable, Hashable {
    /// The endpoint's name (`admin` for the admin listener).
    public var endpoint: String
    /// The bound address.
    public var address: SocketAddress
    /// The transport (`tcp` for the admin listener).
    public var transport: EndpointConfiguration.Transport
}

/// A failure to start an endpoint (a port in use, a certificate OpenSSL refuses, a plugin that threw).
public struct EndpointStartError: Error, Sendable, CustomStringConvertible {
    /// The endpoint.
    public var endpoint: String
    /// What went wrong.
    public var detail: String

    public var description: String { "endpoint \"\(endpoint)\": \(detail)" }
}

/// Runs a ``ServerConfiguration`` on an I/O pool: its endpoints with their plugins, and the admin
/// listener; drains them on shutdown.
public final class ServerHost: AdminStatusSource, Sendable {
    private let pool: IOPool
    fileprivate let state: Locked<State>
    fileprivate let logger = Logger(label: "keel.server")
    private let startTime = ContinuousClock.now
    private let exporter = PrometheusExporter()
    private let lag: LoopLagProbe

    fileprivate struct State: Sendable {
        var configuration: ServerConfiguration
        var endpoints: [RunningEndpoint]
        var admin: AdminListener?
        /// Endpoints a reload removed or replaced: no longer accepting, serving their connections until
        /// those close, then stopped.
        var retiring: [RunningEndpoint] = []
        /// Set by a shutdown: a reload then does nothing.
        var shuttingDown = false
    }

    /// Starts every endpoint of `configuration` and its admin listener, in the file's order.
    /// - Throws: ``EndpointStartError`` (after stopping what had started).
    public init(configuration: ServerConfiguration, pool: IOPool, plugins: PluginRegistry = .builtIn) async throws {
        self.pool = pool
        lag = LoopLagProbe(pool: pool)
        state = Locked(State(configuration: configuration, endpoints: [], admin: nil))
        var started: [RunningEndpoint] = []
        let plugins = try plugins.adding(libraries: configuration.pluginLibraries)
        do {
            for endpoint in configuration.endpoints {
                started.append(try RunningEndpoint(configuration: endpoint, pool: pool, plugins: plugins))
            }
            let admin = try configuration.admin.map { try AdminListener(configuration: $0, pool: pool) }
            state.withLock {
                $0.endpoints = started
                $0.admin = admin
            }
            admin?.attach(self)
        } catch {
            for endpoint in started { await endpoint.stop(deadline: .zero) }
            throw error
        }
        watchLimits()
    }

    /// Once a second, logs the endpoints that refused connections (their connection limit or the
    /// kernel's backlog was reached): an operator should raise the limit or add workers.
    private func watchLimits() {
        let events = EventLog(label: "keel.server")
        Task { [weak self] in
            var last: [String: Int] = [:]
            while true {
                try? await Task.sleep(for: .seconds(1))
                guard let self, !self.state.withLock({ $0.shuttingDown }) else { return }
                for endpoint in self.status.endpoints {
                    let refused = endpoint.refused - (last[endpoint.name] ?? 0)
                    last[endpoint.name] = endpoint.refused
                    if refused > 0 {
                        events.log(.warning, kind: endpoint.name, "connections refused at the limit", metadata: [
                            "endpoint": "\(endpoint.name)", "refused": "\(refused)", "open": "\(endpoint.open)",
                            "max-connections": "\(endpoint.maximumConnections)",
                        ])
                    }
                }
            }
        }
    }

    /// Every listener, endpoints in the configuration's order, then the admin listener.
    public var listeners: [ServerListener] {
        state.withLock { state in
            var all = state.endpoints.flatMap(\.listeners)
            if let admin = state.admin { all.append(ServerListener(endpoint: "admin", address: admin.address, transport: .tcp)) }
            return all
        }
    }

    /// The configuration running now.
    public var configuration: ServerConfiguration { state.withLock { $0.configuration } }

    /// A snapshot of every endpoint's counters.
    public var status: ServerStatus {
        let (endpoints, configuration) = state.withLock { ($0.endpoints, $0.configuration) }
        let pools = pool.threads.map { $0.bufferPool.statistics }
        return ServerStatus(
            uptimeSeconds: Self.seconds(ContinuousClock.now - startTime),
            backend: "\(pool.backend)", threads: pool.threads.count, source: configuration.source,
            endpoints: endpoints.map(\.status),
            bufferPool: BufferPoolStatus(
                inUse: pools.reduce(0) { $0 + $1.inUse }, heldByKernel: pools.reduce(0) { $0 + $1.heldByKernel },
                slabBytes: pools.reduce(0) { $0 + $1.slabBytes }, failedAcquisitions: pools.reduce(0) { $0 + $1.failedAcquisitions }),
            loopLag: lag.read())
    }

    /// `duration` in seconds, to the millisecond.
    private static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds / 1_000_000_000_000_000) / 1000
    }

    /// Every metric in Prometheus's text format, as `/metrics` serves it (published from the
    /// counters just before).
    public func prometheusMetrics() -> [UInt8] { prometheusMetrics(for: status) }

    public func collectStatus(on thread: IOThread, _ completion: @escaping (ServerStatus?) -> Void) { completion(status) }

    public func prometheusMetrics(for status: ServerStatus) -> [UInt8] { exporter.render(status) }

    /// Shuts down gracefully: stops accepting everywhere, lets every peer finish the message it is in
    /// the middle of (its answer is sent, then it closes), and closes abortively whatever is still open
    /// after `deadline` (the configuration's `shutdown-deadline` when nil).
    /// - Returns: the connections still open at the deadline (closed abortively).
    @discardableResult
    public func shutdown(deadline: Duration? = nil) async -> Int {
        let (endpoints, admin, configured) = state.withLock { state in
            let taken = (state.endpoints + state.retiring, state.admin, state.configuration.shutdownDeadline)
            state.endpoints = []
            state.retiring = []
            state.admin = nil
            state.shuttingDown = true
            return taken
        }
        let limit = deadline ?? configured
        await admin?.stop()
        for endpoint in endpoints { await endpoint.stopAccepting() }
        for endpoint in endpoints { await endpoint.runtime.startDraining() }
        let end = ContinuousClock.now + limit
        while ContinuousClock.now < end && endpoints.contains(where: { $0.runtime.openPeers > 0 }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        var abandoned = 0
        for endpoint in endpoints {
            abandoned += endpoint.runtime.openPeers
            await endpoint.stop(deadline: .zero)
        }
        if abandoned > 0 { logger.warning("shutdown deadline reached: \(abandoned) connections closed abortively") }
        return abandoned
    }
}

extension ServerHost {
    /// What a reload changed.
    public struct ReloadSummary: Sendable, Hashable, CustomStringConvertible {
        /// Endpoints started that did not exist.
        public var added: [String] = []
        /// Endpoints whose configuration changed: a new one took over the listeners; the old one
        /// serves its connections until they close.
        public var replaced: [String] = []
        /// Endpoints no longer in the configuration: they stopped accepting and serve their
        /// connections until they close.
        public var removed: [String] = []
        /// Endpoints left as they were (their connections untouched).
        public var unchanged: [String] = []
        /// True when the admin listener was restarted.
        public var adminRestarted = false

        public var description: String {
            "added [\(added.joined(separator: ", "))], replaced [\(replaced.joined(separator: ", "))], "
                + "removed [\(removed.joined(separator: ", "))], unchanged [\(unchanged.joined(separator: ", "))]"
                + (adminRestarted ? ", admin restarted" : "")
        }
    }

    /// Switches to `configuration` without dropping a connection: unchanged endpoints keep running as
    /// they are; new ones start; a changed endpoint's replacement starts on the same addresses (the
    /// listeners share the ports, SO_REUSEPORT) before the old one stops accepting; removed and
    /// replaced endpoints keep serving the connections they have with their old plugin and are stopped
    /// and freed once those have closed. If any new endpoint cannot start, nothing changes.
    /// - Throws: ``EndpointStartError`` (the running configuration stays).
    @discardableResult
    public func reload(_ configuration: ServerConfiguration, plugins: PluginRegistry = .builtIn) async throws -> ReloadSummary {
        let (current, currentAdmin, running) = state.withLock { ($0.endpoints, $0.admin, $0.configuration) }
        var summary = ReloadSummary()
        var next: [RunningEndpoint] = []
        var started: [RunningEndpoint] = []
        var admin = currentAdmin
        let plugins = try plugins.adding(libraries: configuration.pluginLibraries)
        do {
            for endpoint in configuration.endpoints {
                if let old = current.first(where: { $0.runtime.name == endpoint.name }), old.runtime.configuration == endpoint {
                    next.append(old)
                    summary.unchanged.append(endpoint.name)
                    continue
                }
                let fresh = try RunningEndpoint(configuration: endpoint, pool: pool, plugins: plugins)
                started.append(fresh)
                next.append(fresh)
                if current.contains(where: { $0.runtime.name == endpoint.name }) {
                    summary.replaced.append(endpoint.name)
                } else {
                    summary.added.append(endpoint.name)
                }
            }
            if configuration.admin != running.admin {
                admin = try configuration.admin.map { try AdminListener(configuration: $0, pool: pool) }
                summary.adminRestarted = true
            }
        } catch {
            for endpoint in started { await endpoint.stop(deadline: .zero) }
            throw error
        }
        let kept = Set(next.map { ObjectIdentifier($0) })
        let leaving = current.filter { !kept.contains(ObjectIdentifier($0)) }
        summary.removed = leaving.map(\.runtime.name).filter { name in !configuration.endpoints.contains { $0.name == name } }
        let shuttingDown = state.withLock { state in
            guard !state.shuttingDown else { return true }
            state.configuration = configuration
            state.endpoints = next
            state.admin = admin
            state.retiring += leaving
            return false
        }
        if shuttingDown {
            for endpoint in started { await endpoint.stop(deadline: .zero) }
            return ReloadSummary()
        }
        if summary.adminRestarted {
            await currentAdmin?.stop()
            admin?.attach(self)
        }
        for endpoint in leaving {
            await endpoint.stopAccepting()
            retireWhenIdle(endpoint)
        }
        logger.info("configuration reloaded", metadata: ["source": "\(configuration.source)", "changes": "\(summary)"])
        return summary
    }

    /// Endpoints a reload took out of service whose connections are still open.
    public var retiringEndpoints: [String] { state.withLock { $0.retiring.map(\.runtime.name) } }

    /// Stops and forgets `endpoint` once its last connection has closed.
    private func retireWhenIdle(_ endpoint: RunningEndpoint) {
        Task { [weak self] in
            while endpoint.runtime.openPeers > 0 {
                try? await Task.sleep(for: .milliseconds(100))
                guard let self, self.state.withLock({ state in state.retiring.contains { $0 === endpoint } }) else { return }
            }
            guard let self else { return }
            let stillOurs = self.state.withLock { state in
                let before = state.retiring.count
                state.retiring.removeAll { $0 === endpoint }
                return state.retiring.count < before
            }
            if stillOurs { await endpoint.stop(deadline: .zero) }
        }
    }
}

/// One endpoint's listeners (a TCP server or UDP session server per listen address) and runtime.
final class RunningEndpoint: Sendable {
    let runtime: EndpointRuntime
    let listeners: [ServerListener]
    private let tcpServers: [any DrainableServer]
    private let udpServers: [UDPSessionServer<PluginDatagramHandler>]
    /// The endpoint's TLS context (tls, wss), for its handshake counts.
    private let tlsContext: TLSContext?

    init(configuration: EndpointConfiguration, pool: IOPool, plugins: PluginRegistry) throws {
        guard let definition = plugins[configuration.plugin] else {
            throw EndpointStartError(endpoint: configuration.name, detail: "no plugin named \(configuration.plugin)")
        }
        let diagnostics = ConfigurationDiagnostics(file: "<start>")
        let settings = PluginSettingsReader(configuration.settings, endpoint: configuration.name, diagnostics: diagnostics)
        let make = definition.prepare(settings, configuration.transport)
        let context = PluginContext(threads: pool.threads, endpoint: configuration.name,
                                    logger: Logger(label: "keel.plugin.\(configuration.name)"))
        let plugin: any ServerPlugin
        do { plugin = try make(context) } catch {
            throw EndpointStartError(endpoint: configuration.name, detail: "plugin \(configuration.plugin) failed to start: \(error)")
        }
        let runtime = EndpointRuntime(configuration: configuration, plugin: plugin, threads: pool.threads)
        self.runtime = runtime
        var tcpServers: [any DrainableServer] = []
        var udpServers: [UDPSessionServer<PluginDatagramHandler>] = []
        var listeners: [ServerListener] = []
        var tlsContext: TLSContext?
        do {
            if configuration.transport == .udp {
                for address in configuration.listen {
                    let server = try UDPSessionServer(
                        pool: pool, configuration: UDPSocketConfiguration(host: address.host, port: address.port, reusePort: true),
                        idleTimeout: configuration.limits.idleTimeout ?? .seconds(60),
                        maximumSessions: configuration.limits.maximumConnections) { _ in PluginDatagramHandler(runtime: runtime) }
                    udpServers.append(server)
                    listeners.append(ServerListener(endpoint: configuration.name, address: server.localAddress, transport: .udp))
                }
            } else {
                let (options, context) = try Self.connectionOptions(for: configuration, runtime: runtime)
                tlsContext = context
                for address in configuration.listen {
                    var server = TCPServerConfiguration(host: address.host, port: address.port)
                    server.maximumConnections = configuration.limits.maximumConnections
                    server.maximumAcceptRate = configuration.limits.acceptRate
                    server.connection = options
                    let started: any DrainableServer
                    if configuration.transport == .ws || configuration.transport == .wss {
                        started = try TCPServer(pool: pool, configuration: server) { HTTPOnlyConnection() }
                    } else {
                        started = try TCPServer(pool: pool, configuration: server) { PluginStreamHandler(runtime: runtime) }
                    }
                    tcpServers.append(started)
                    listeners.append(ServerListener(endpoint: configuration.name, address: started.localAddress,
                                                    transport: configuration.transport))
                }
            }
        } catch {
            let (tcp, udp) = (tcpServers, udpServers)
            Task {
                for server in tcp { await server.stop(closing: .abortive) }
                for server in udp { await server.stop() }
            }
            throw EndpointStartError(endpoint: configuration.name, detail: "\(error)")
        }
        self.tcpServers = tcpServers
        self.udpServers = udpServers
        self.listeners = listeners
        self.tlsContext = tlsContext
    }

    /// The connection options an endpoint's configuration asks for (filters bottom up: PROXY, TLS,
    /// then HTTP and WebSockets).
    static func connectionOptions(for configuration: EndpointConfiguration,
                                  runtime: EndpointRuntime) throws -> (options: TCPConnectionOptions, tls: TLSContext?) {
        var options = TCPConnectionOptions()
        var context: TLSContext?
        options.idleTimeout = configuration.limits.idleTimeout
        options.readTimeout = configuration.limits.readTimeout
        options.flowControl = configuration.flowControl.tcpFlowControl
        if configuration.transport.usesTLS, let settings = configuration.tls {
            var tls = TLSConfiguration.server(certificateChain: settings.certificate, privateKey: settings.key)
            if let ca = settings.clientCA { tls.peerVerification = .required(.file(ca)) }
            tls.applicationProtocols = settings.alpn
            let made = try TLSContext(configuration: tls)
            options.useTLS(made)
            context = made
        }
        switch configuration.proxyProtocol {
        case .off: break
        case .required: options.acceptProxyProtocol(ProxyProtocolConfiguration(mode: .required))
        case .trusted(let ranges):
            options.acceptProxyProtocol(ProxyProtocolConfiguration(mode: .trusted(try ranges.map { try ProxyAddressRange($0) })))
        }
        if configuration.transport == .ws || configuration.transport == .wss {
            let limit = configuration.limits.maximumMessageBytes
            let settings = configuration.webSocket
            let webSocket = WebSocketConfiguration(
                maximumFrameSize: limit, maximumMessageSize: limit,
                compression: settings.compression ? WebSocketCompression() : nil, pingInterval: settings.pingInterval)
            let origins = Set(settings.allowedOrigins)
            // Browsers send Origin; a client without one is not a browser page and is let in.
            var checkOrigin: (@Sendable (String?) -> Bool)?
            if !origins.isEmpty {
                checkOrigin = { origin in
                    guard let origin else { return true }
                    return origins.contains(origin)
                }
            }
            options.serveWebSockets(configuration: webSocket, checkOrigin: checkOrigin) { PluginWebSocketHandler(runtime: runtime) }
        }
        return (options, context)
    }

    var status: EndpointStatus {
        let traffic = runtime.counters.traffic
        let statistics = tcpServers.map(\.statistics)
        return EndpointStatus(
            name: runtime.name, transport: runtime.configuration.transport.rawValue, plugin: runtime.configuration.plugin,
            listen: listeners.map { "\($0.address)" }, open: runtime.openPeers,
            maximumConnections: runtime.configuration.limits.maximumConnections,
            accepted: statistics.reduce(0) { $0 + $1.accepted } + (runtime.configuration.transport == .udp ? traffic.peersOpened : 0),
            refused: statistics.reduce(0) { $0 + $1.refused } + udpServers.reduce(0) { $0 + $1.refusedDatagrams },
            traffic: traffic, flowPolicy: runtime.configuration.flowControl.policy.rawValue,
            failedBeforeOpening: statistics.reduce(0) { $0 + $1.refusedByFilters }, handshakesInProgress: tlsContext?.handshakesNow ?? 0)
    }

    func stopAccepting() async {
        for server in tcpServers { await server.stopAccepting() }
        for server in udpServers { await server.stop() }
    }

    /// Stops accepting and closes every connection abortively after `deadline` (zero: at once).
    func stop(deadline: Duration) async {
        if deadline > .zero { try? await Task.sleep(for: deadline) }
        for server in tcpServers { await server.stop(closing: .abortive) }
        for server in udpServers { await server.stop() }
        runtime.plugin.stop()
    }
}

/// A TCP server of any handler type, as an endpoint uses it.
protocol DrainableServer: Sendable {
    var localAddress: SocketAddress { get }
    var statistics: TCPServerStatistics { get }
    func stopAccepting() async
    func stop(closing mode: TCPCloseMode) async
}

extension TCPServer: DrainableServer {}
