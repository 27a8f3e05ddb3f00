// keel-gateway: a TCP relay from a listener to one or more back-ends, on Keel.
//
//   keel-gateway --backend HOST:PORT [--backend HOST:PORT ...] [--host 127.0.0.1] [--port 7007]
//                [--io-backend io_uring|epoll] [--threads N] [--connect-timeout S] [--idle-timeout S]
//                [--max-connections N] [--cert PEM --key PEM] [--send-proxy-v2]
//                [--proxy-protocol | --trusted-proxy CIDR ...]
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly.
import ArgumentParser
import KeelCommandLine
import KeelEngine
import KeelGateway
import KeelSockets
import KeelSystem
import KeelTLS

@main
struct KeelGatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-gateway", abstract: "A TCP relay from a listener to back-ends, on Keel.")

    @OptionGroup var options: ListenerOptions

    @Option(help: "I/O backend: io_uring or epoll (default: automatic, or KEEL_BACKEND). (--backend names back-ends here.)")
    var ioBackend: BackendKind?
    @OptionGroup var proxy: ProxyProtocolOptions

    @Option(name: .customLong("backend"), help: "A back-end as HOST:PORT ([IPv6]:PORT); repeat for several, used round robin.")
    var backends: [String] = []

    @Option(help: "Seconds to wait for a back-end's connect before trying the next one.")
    var connectTimeout: Double = 5

    @Option(help: "Close a relayed connection after this many seconds with no traffic either way.")
    var idleTimeout: Double?

    @Option(help: "Most client connections open at once; more wait in the kernel's backlog.")
    var maxConnections: Int?

    @Option(help: "Consecutive connect failures after which a back-end is marked down (then retried with back-off).")
    var backendFailures: Int = 1

    @Option(help: "PEM certificate chain: terminate TLS from clients (with --key); back-ends get plain TCP.")
    var cert: String?

    @Option(help: "PEM private key of --cert.")
    var key: String?

    @Flag(help: "Send a PROXY protocol v2 header naming the client first on each back-end connection.")
    var sendProxyV2 = false

    func validate() throws {
        if backends.isEmpty { throw ValidationError("give at least one --backend HOST:PORT") }
        if (cert == nil) != (key == nil) { throw ValidationError("--cert and --key go together") }
        _ = try backendAddresses()
    }

    /// The back-ends as addresses (host names are resolved once, at start).
    func backendAddresses() throws -> [SocketAddress] {
        try backends.map { try parseHostPort($0, option: "--backend") }
    }

    func run() throws {
        let tls = try cert.map { cert in try TLSContext(configuration: .server(certificateChain: cert, privateKey: key ?? "")) }
        let addresses = try backendAddresses()
        try options.runUntilSignalled("keel-gateway", backend: ioBackend) { pool in
            var listener = TCPServerConfiguration(host: options.host, port: options.port)
            if let maxConnections { listener.maximumConnections = maxConnections }
            if let tls { listener.connection.useTLS(tls) }
            try proxy.apply(to: &listener.connection)  // below TLS: the header comes first
            var configuration = TCPGatewayConfiguration(
                listener: listener, backends: addresses, connectTimeout: .milliseconds(Int64(connectTimeout * 1000)),
                sendsProxyHeader: sendProxyV2, failuresBeforeDown: backendFailures)
            if let idleTimeout {
                let timeout = Duration.milliseconds(Int64(idleTimeout * 1000))
                configuration.listener.connection.idleTimeout = timeout
                configuration.backendConnection.idleTimeout = timeout
            }
            let gateway = try TCPGateway(pool: pool, configuration: configuration)
            return RunningService(
                address: gateway.localAddress,
                summary: {
                    let statistics = gateway.statistics
                    return "\(statistics.accepted) connections relayed, \(statistics.unrouted) unrouted"
                },
                counters: { gateway.statistics.counters })
        }
    }
}
