import ArgumentParser
import KeelProxyProtocol
import KeelSockets

/// The PROXY protocol flags of the example servers: `--proxy-protocol` (every connection must start
/// with a header) and `--trusted-proxy CIDR` (repeatable: headers from those sources only).
public struct ProxyProtocolOptions: ParsableArguments {
    @Flag(help: "Require a PROXY protocol header (v1 or v2) on every connection, as behind HAProxy's send-proxy or nginx's proxy_protocol.")
    public var proxyProtocol = false

    @Option(name: .customLong("trusted-proxy"),
            help: "Read PROXY headers only from this source (CIDR, e.g. 10.0.0.0/8; repeatable); other clients connect directly.")
    public var trustedProxies: [String] = []

    @Option(help: "Seconds a connection may take to send its PROXY header.")
    public var proxyHeaderTimeout: Double = 5

    public init() {}

    /// The configuration these flags ask for; nil when the PROXY protocol is off.
    /// - Throws: a validation error naming a range that does not parse.
    public func configuration() throws -> ProxyProtocolConfiguration? {
        let timeout = Duration.milliseconds(Int64(max(0.1, proxyHeaderTimeout) * 1000))
        if !trustedProxies.isEmpty {
            let ranges = try trustedProxies.map { cidr in
                do { return try ProxyAddressRange(cidr) } catch { throw ValidationError("--trusted-proxy \(error)") }
            }
            return ProxyProtocolConfiguration(mode: .trusted(ranges), headerTimeout: timeout)
        }
        return proxyProtocol ? ProxyProtocolConfiguration(mode: .required, headerTimeout: timeout) : nil
    }

    /// Puts the PROXY filter at the bottom of `options`' filters when the flags ask for it.
    public func apply(to options: inout TCPConnectionOptions) throws {
        if let configuration = try configuration() { options.acceptProxyProtocol(configuration) }
    }
}
