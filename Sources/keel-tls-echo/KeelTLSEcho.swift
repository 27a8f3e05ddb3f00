// keel-tls-echo: the TCP echo server over TLS (OpenSSL 3), on Keel's callback API.
//
//   keel-tls-echo --cert cert.pem --key key.pem [--ca ca.pem] [--alpn h2,http/1.1] [--host 127.0.0.1] [--port 7007]
//                 [--sni api.example.org,*.api.example.org:api.pem:api.key ...]
//   keel-tls-echo --cert cert.pem --key key.pem [--server-name example.org] --check
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly.
import ArgumentParser
import KeelBuffers
import KeelCommandLine
import KeelEngine
import KeelSockets
import KeelTLS

@main
struct KeelTLSEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-tls-echo", abstract: "A TLS echo server on Keel (OpenSSL 3).")

    @OptionGroup var options: ServerOptions
    @OptionGroup var proxy: ProxyProtocolOptions

    @Option(help: "PEM file with the certificate chain, leaf first.")
    var cert: String

    @Option(help: "PEM file with the leaf certificate's private key.")
    var key: String

    @Option(help: "PEM file of CA certificates: clients must present a certificate they issued (mutual TLS).")
    var ca: String?

    @Option(help: "ALPN protocols the server accepts, in order of preference, comma-separated.")
    var alpn: String?

    @Option(help: "A name clients reach the server by, checked against the certificate (repeatable).")
    var serverName: [String] = []

    @Option(help: "Another certificate for clients asking for some names (SNI), as NAMES:CERT:KEY with NAMES comma-separated (repeatable).")
    var sni: [String] = []

    @Flag(help: "Check the certificate and key, print a report and exit (nonzero when the server could not start).")
    var check = false

    func run() throws {
        var tls = TLSConfiguration.server(certificateChain: cert, privateKey: key)
        if let ca { tls.peerVerification = .required(.file(ca)) }
        if let alpn { tls.applicationProtocols = alpn.split(separator: ",").map(String.init) }
        tls.hostNames = serverName
        for entry in sni {
            let parts = entry.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3 else { throw ValidationError("--sni takes NAMES:CERT:KEY, got \(entry)") }
            tls.additionalCertificates.append(TLSServerCertificate(
                serverNames: parts[0].split(separator: ",").map(String.init), certificateChain: parts[1], privateKey: parts[2]))
        }
        if check {
            announce(TLSCertificateReport.check(chainPath: cert, hostNames: serverName).description)
            do {
                _ = try TLSContext(configuration: tls)
                announce("keel-tls-echo: the configuration works")
                return
            } catch {
                announce("keel-tls-echo: \(error)")
                throw ExitCode.failure
            }
        }
        let context = try TLSContext(configuration: tls)
        try options.runUntilSignalled("keel-tls-echo") { pool in
            var configuration = TCPServerConfiguration(host: options.host, port: options.port)
            configuration.connection.flowControl = TCPFlowControl(pausesReadingWhileNotWritable: true)
            configuration.connection.useTLS(context)
            try proxy.apply(to: &configuration.connection)  // below TLS: the header comes first
            let server = try TCPServer(pool: pool, configuration: configuration) { EchoHandler() }
            return RunningService(
                address: server.localAddress, summary: { "\(server.statistics.accepted) connections served" },
                counters: { server.statistics.counters })
        }
    }
}
