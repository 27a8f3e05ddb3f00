import ArgumentParser
import KeelSockets
import KeelTLS

/// The TLS options of Keel's clients and load tools: `--tls`, `--ca`, `--insecure`, `--server-name`,
/// `--alpn`, `--tls-version`, `--no-resume`.
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

    @Option(help: "The highest TLS version to offer: 1.2 or 1.3 (default: 1.3).")
    public var tlsVersion: String?

    @Flag(help: "Do not resume sessions: every connection makes a full handshake.")
    public var noResume = false

    public init() {}

    public func validate() throws {
        if let tlsVersion, tlsVersion != "1.2", tlsVersion != "1.3" {
            throw ValidationError("--tls-version takes 1.2 or 1.3, not \(tlsVersion)")
        }
    }

    /// Connection options that speak TLS when `--tls` was given (plain TCP otherwise).
    /// - Parameter host: the host connected to, the default server name.
    public func connectionOptions(host: String) throws(TLSConfigurationError) -> TCPConnectionOptions {
        var options = TCPConnectionOptions()
        guard tls else { return options }
        var configuration = TLSConfiguration.client(serverName: serverName ?? host, trustRoots: ca.map { .file($0) } ?? .system)
        if insecure { configuration.peerVerification = .none }
        if let alpn { configuration.applicationProtocols = alpn.split(separator: ",").map(String.init) }
        if tlsVersion == "1.2" { configuration.profile.maximumVersion = .tls12 }
        configuration.resumesSessions = !noResume
        options.useTLS(try TLSContext(configuration: configuration))
        return options
    }
}
