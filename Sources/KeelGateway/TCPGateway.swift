import KeelBuffers
import KeelEngine
import KeelProxyProtocol
import KeelSockets
import KeelSystem
import Logging
import Synchronization

/// What a gateway has relayed so far.
public struct TCPGatewayStatistics: Sendable, Hashable {
    /// Client connections accepted.
    public var accepted: Int
    /// Client connections open now (relayed, or waiting for their back-end).
    public var active: Int
    /// Back-end connections open now.
    public var backendConnections: Int
    /// Clients closed because no back-end could be reached.
    public var unrouted: Int
    /// Bytes relayed from clients to back-ends, counted when their connection ends.
    public var bytesToBackends: Int
    /// Bytes relayed from back-ends to clients, counted when their connection ends.
    public var bytesToClients: Int

    /// The counters as named values, for statistics files and metrics.
    public var counters: [(name: String, value: Int)] {
        [("connections_active", active), ("accepted", accepted), ("backend_connections", backendConnections),
         ("unrouted", unrouted), ("bytes_to_backends", bytesToBackends), ("bytes_to_clients", bytesToClients)]
    }
}

/// A TCP relay: each client that connects to the listener is connected to one of the back-ends
/// (round robin, skipping those marked down), and bytes flow both ways as pooled buffers, without
/// copies, until either side ends.
///
/// Each direction has flow control: when one side's write queue passes its high watermark the other
/// side stops reading, so TCP pushes back on the faster peer and a relayed connection's memory stays
/// bounded whatever the speeds. A half-close passes through: the client's end of stream reaches the
/// back-end after everything it sent, and the back-end's answer still comes back (and the other way).
/// A reset or failure on one side resets the other.
///
/// ```swift
/// let gateway = try TCPGateway(pool: pool, configuration: .init(
///     listener: .init(host: "0.0.0.0", port: 8000),
///     backends: [try SocketAddress(host: "10.0.0.5", port: 9000)]))
/// ```
public final class TCPGateway: Sendable {
    /// The configuration it runs with.
    public var configuration: TCPGatewayConfiguration { core.configuration }
    /// The address the listener is bound to.
    public var localAddress: SocketAddress { server.localAddress }

    private let core: GatewayCore
    private let server: TCPServer<GatewayClientSide>

    /// Starts listening and relaying on `pool`.
    /// - Throws: ``TCPGatewayError`` without back-ends; a `SystemError` when the listener cannot bind.
    public init(pool: IOPool, configuration: TCPGatewayConfiguration) throws {
        guard !configuration.backends.isEmpty else { throw TCPGatewayError("a gateway needs at least one back-end") }
        let core = GatewayCore(pool: pool, configuration: configuration)
        self.core = core
        server = try TCPServer(pool: pool, configuration: configuration.listener) { GatewayClientSide(gateway: core) }
    }

    /// The counters so far.
    public var statistics: TCPGatewayStatistics {
        let listener = server.statistics
        return TCPGatewayStatistics(
            accepted: listener.accepted, active: listener.active, backendConnections: core.connector.activeConnections,
            unrouted: core.unrouted.load(ordering: .relaxed), bytesToBackends: core.bytesToBackends.load(ordering: .relaxed),
            bytesToClients: core.bytesToClients.load(ordering: .relaxed))
    }

    /// Each back-end's state: up or down, failures, connections.
    public var backends: [GatewayBackendStatus] { core.backends.status }

    /// Stops accepting and closes every relayed connection with `mode`. Gracefully, each side still
    /// sends what is queued for it (a back-end that never reads keeps its connection until its idle
    /// timeout, if any); abortively, both sides are reset at once.
    public func stop(closing mode: TCPCloseMode = .graceful) async {
        await server.stop(closing: mode)
        if mode == .abortive { await core.connector.closeAll(.abortive) }
    }
}

/// What every relayed connection of one gateway shares: the back-ends, the connector, the counters.
final class GatewayCore: Sendable {
    let configuration: TCPGatewayConfiguration
    let backends: BackendSet
    let connector: TCPConnector<GatewayBackendSide>
    let unrouted = Atomic<Int>(0)
    let bytesToBackends = Atomic<Int>(0)
    let bytesToClients = Atomic<Int>(0)
    private static let logger = Logger(label: "keel.gateway")

    init(pool: IOPool, configuration: TCPGatewayConfiguration) {
        self.configuration = configuration
        backends = BackendSet(configuration)
        connector = TCPConnector(pool: pool, configuration: .init(
            connectTimeout: configuration.connectTimeout, connection: configuration.backendConnection))
    }

    /// Connects `link`'s client to the next back-end that may be tried, on `thread` (the client's);
    /// when none is left to try, closes the client.
    func connectBackend(for link: RelayLink, on thread: IOThread) {
        guard !link.clientGone, let client = link.client else { return }
        guard let index = backends.pick(excluding: link.tried) else {
            unrouted.wrappingAdd(1, ordering: .relaxed)
            return client.close(.abortive)
        }
        link.backendIndex = index
        link.tried.insert(index)
        let address = backends.addresses[index]
        connector.connect(to: address, on: thread, makeHandler: { [self] in GatewayBackendSide(gateway: self, link: link) },
                          failed: { [self] error in
            if self.backends.failed(index) {
                Self.logger.warning("back-end \(address) marked down: \(error)")
            }
            self.connectBackend(for: link, on: thread)
        })
    }

    /// Writes a PROXY protocol v2 header naming `client`'s addresses as the first bytes to `backend`.
    func sendProxyHeader(from client: TCPConnection, to backend: TCPConnection) {
        let addresses: ProxyHeader.Addresses
        if let source = client.remoteAddress, let destination = client.localAddress {
            addresses = .inet(source: source, destination: destination)
        } else {
            addresses = .unspecified
        }
        let bytes = ProxyHeader(addresses: addresses).encoded()
        guard var buffer = try? backend.thread.bufferPool.acquire() else { return backend.close(.abortive) }
        buffer.append(contentsOf: bytes)
        backend.write(buffer)
    }

    /// A relayed connection ended: its byte counts join the gateway's.
    func linkEnded(_ link: RelayLink) {
        if link.bytesToBackend > 0 { bytesToBackends.wrappingAdd(link.bytesToBackend, ordering: .relaxed) }
        if link.bytesToClient > 0 { bytesToClients.wrappingAdd(link.bytesToClient, ordering: .relaxed) }
    }
}
