import ArgumentParser
import KeelSockets
import KeelTLS

/// The TLS options of Keel's clients and load tools: `--tls`, `--ca`, `--insecure`, `--server-name`,
/// `--alpn`.
public struct ClientTLSOptions: ParsableArguments {
    @Flag(help: "Speak TLS to the server.")
    public var tls = false

    @Option(help: "PEM file of CA certificates to verify the server with (default: the system's store).")
    public var ca: String?

    @Flag(help: "Do not verify the server's certificate (test certificates only).")
    public var insecure = false

    @Option(help: "The server's name, sent as SNI and checked against its certificate (default: --host).")
    public var serverName: String?

    @Option(help: "ALPN protocols to offer, comma-separated.")
    public var alpn: String?

    public init() {}

    /// Connection options that speak TLS when `--tls` was given (plain TCP otherwise).
    /// - Parameter host: the host connected to, the default server name.
    public func connectionOptions(host: String) throws(TLSConfigurationError) -> TCPConnectionOptions {
        var options = TCPConnectionOptions()
        guard tls else { return options }
        var configuration = TLSConfiguration.client(serverName: serverName ?? host, trustRoots: ca.map { .file($0) } ?? .system)
        if insecure { configuration.peerVerification = .none }
        if let alpn { configuration.applicationProtocols = alpn.split(separator: ",").map(String.init) }
        options.useTLS(try TLSContext(configuration: configuration))
        return options
    }
}
