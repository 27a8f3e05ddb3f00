import KeelSockets

/// What keel-server runs: its endpoints, the admin listener and the shutdown deadline, as read from a
/// configuration file (see ``ConfigurationLoader``) or the embedded default.
public struct ServerConfiguration: Sendable, Hashable {
    /// The endpoints, in the file's order (their listeners are announced in this order).
    public var endpoints: [EndpointConfiguration]
    /// The admin listener (status, metrics), if any.
    public var admin: AdminConfiguration?
    /// How long a shutdown lets connections finish before closing them abortively.
    public var shutdownDeadline: Duration
    /// Where the configuration came from (a path, or `<default>`), for messages.
    public var source: String
    /// Shared libraries of plugins to load at start (see ``ExternalPlugins``).
    public var pluginLibraries: [String] = []

    /// Creates a configuration.
    public init(endpoints: [EndpointConfiguration], admin: AdminConfiguration? = nil,
                shutdownDeadline: Duration = .seconds(10), source: String = "<code>") {
        self.endpoints = endpoints
        self.admin = admin
        self.shutdownDeadline = shutdownDeadline
        self.source = source
    }
}

/// A host and port to listen on (`127.0.0.1:7007`, `[::1]:7007`, `*:7007` for every IPv4 address).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    /// The numeric host.
    public var host: String
    /// The port (0: any free port).
    public var port: UInt16

    /// Creates a listen address.
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (IPv6 in brackets); nil when it does not parse.
    public init?(parsing text: String) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = UInt16(portText) else { return nil }
        self.host = host == "*" ? "0.0.0.0" : String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One endpoint: listeners, a transport, a framing and the plugin with its settings.
public struct EndpointConfiguration: Sendable, Hashable {
    /// How bytes reach the plugin.
    public enum Transport: String, Sendable, Hashable, CaseIterable {
        /// TCP, framed by ``EndpointConfiguration/framing``.
        case tcp
        /// TLS over TCP, framed by ``EndpointConfiguration/framing``.
        case tls
        /// UDP: each datagram is one message.
        case udp
        /// WebSockets over TCP: each message is one message.
        case ws
        /// WebSockets over TLS.
        case wss

        /// True for the transports that need certificates.
        public var usesTLS: Bool { self == .tls || self == .wss }
        /// True for the byte-stream transports the framing applies to.
        public var isFramedStream: Bool { self == .tcp || self == .tls }
    }

    /// How a byte stream splits into messages (TCP and TLS endpoints).
    public enum Framing: Sendable, Hashable {
        /// No framing: each received chunk is a message, each sent message goes out as it is.
        case raw
        /// Lines ending in `\n` (a `\r` before it is dropped); sent messages get a `\n`.
        case line
        /// A big-endian length of `prefixBytes` (1, 2, 4 or 8) before each payload.
        case lengthPrefixed(prefixBytes: Int)
        /// Messages of exactly `size` bytes.
        case fixed(size: Int)

        /// The name used in configuration files.
        public var name: String {
            switch self {
            case .raw: "raw"
            case .line: "line"
            case .lengthPrefixed: "length-prefixed"
            case .fixed: "fixed"
            }
        }
    }

    /// The endpoint's name (unique; shown in the `listening on` lines, logs, metrics and the status page).
    public var name: String
    /// Where it listens.
    public var listen: [ListenAddress]
    /// The transport.
    public var transport: Transport
    /// The framing (TCP and TLS only).
    public var framing: Framing
    /// The plugin's name (a built-in, or one loaded from a library).
    public var plugin: String
    /// The plugin's settings, as the file gave them.
    public var settings: PluginSettings
    /// Connection limits.
    public var limits: EndpointLimits
    /// What happens when a peer reads slower than the plugin sends.
    public var flowControl: FlowControlPolicy
    /// The PROXY protocol on this endpoint's connections (TCP, TLS, WebSockets).
    public var proxyProtocol: ProxyProtocolSetting
    /// Certificates for `tls` and `wss`.
    public var tls: TLSSettings?
    /// WebSocket options for `ws` and `wss`.
    public var webSocket: WebSocketSettings

    /// Creates an endpoint with defaults for everything but its name, address, transport and plugin.
    public init(name: String, listen: [ListenAddress], transport: Transport = .tcp, framing: Framing = .raw,
                plugin: String, settings: PluginSettings = PluginSettings(), limits: EndpointLimits = EndpointLimits(),
                flowControl: FlowControlPolicy = FlowControlPolicy(), proxyProtocol: ProxyProtocolSetting = .off,
                tls: TLSSettings? = nil, webSocket: WebSocketSettings = WebSocketSettings()) {
        self.name = name
        self.listen = listen
        self.transport = transport
        self.framing = framing
        self.plugin = plugin
        self.settings = settings
        self.limits = limits
        self.flowControl = flowControl
        self.proxyProtocol = proxyProtocol
        self.tls = tls
        self.webSocket = webSocket
    }
}

/// An endpoint's limits.
public struct EndpointLimits: Sendable, Hashable {
    /// Most connections open at once (further ones wait in the backlog).
    public var maximumConnections: Int
    /// Most connections accepted per second (nil: no limit).
    public var acceptRate: Int?
    /// Close a connection with no traffic in either direction for this long (nil: never).
    public var idleTimeout: Duration?
    /// Close a connection that sends nothing for this long (nil: never).
    public var readTimeout: Duration?
    /// The largest message accepted; a larger one closes the connection.
    public var maximumMessageBytes: Int

    /// Creates limits.
    public init(maximumConnections: Int = 100_000, acceptRate: Int? = nil, idleTimeout: Duration? = nil,
                readTimeout: Duration? = nil, maximumMessageBytes: Int = 1 << 20) {
        self.maximumConnections = maximumConnections
        self.acceptRate = acceptRate
        self.idleTimeout = idleTimeout
        self.readTimeout = readTimeout
        self.maximumMessageBytes = maximumMessageBytes
    }
}

/// Flow control for one endpoint's connections: when a peer reads slower than the plugin sends.
public struct FlowControlPolicy: Sendable, Hashable {
    /// What to do when a connection's send queue reaches its limit.
    public enum Policy: String, Sendable, Hashable, CaseIterable {
        /// Close the slow consumer (a stream with a gap is worse than none).
        case disconnect
        /// Drop the newest message for that peer.
        case dropNewest = "drop-newest"
        /// Drop the oldest messages not yet sent until the new one fits.
        case dropOldest = "drop-oldest"
    }

    /// Bytes queued for one peer before it counts as slow (and, with `pauseReading`, before the
    /// server stops reading from it).
    public var highWatermark: Int
    /// The most bytes queued for one peer.
    public var limit: Int
    /// What happens at the limit.
    public var policy: Policy
    /// Stop reading from a peer while its own send queue is over the high watermark (request and
    /// response protocols: a client that sends without reading is pushed back by TCP).
    public var pausesReading: Bool

    /// Creates a policy.
    public init(highWatermark: Int = 256 * 1024, limit: Int = 4 << 20, policy: Policy = .disconnect, pausesReading: Bool = true) {
        self.highWatermark = highWatermark
        self.limit = limit
        self.policy = policy
        self.pausesReading = pausesReading
    }

    /// The connection-level flow control this policy means.
    var tcpFlowControl: TCPFlowControl {
        let queuePolicy: SendQueuePolicy = switch policy {
        case .disconnect: .refuse
        case .dropNewest: .dropNewest
        case .dropOldest: .dropOldest
        }
        return TCPFlowControl(highWatermark: highWatermark, lowWatermark: highWatermark / 4, hardLimit: limit,
                              policy: queuePolicy, pausesReadingWhileNotWritable: pausesReading)
    }
}

/// The PROXY protocol on an endpoint.
public enum ProxyProtocolSetting: Sendable, Hashable {
    /// Connections are direct.
    case off
    /// Every connection starts with a PROXY header (v1 or v2).
    case required
    /// Connections from these ranges (CIDR) start with a header; others are direct.
    case trusted([String])
}

/// Certificates of a `tls` or `wss` endpoint.
public struct TLSSettings: Sendable, Hashable {
    /// PEM file with the certificate chain, leaf first.
    public var certificate: String
    /// PEM file with its private key.
    public var key: String
    /// PEM file of the certificate authorities that client certificates must chain to (mutual TLS).
    public var clientCA: String?
    /// ALPN protocols offered, in order of preference.
    public var alpn: [String]

    /// Creates TLS settings.
    public init(certificate: String, key: String, clientCA: String? = nil, alpn: [String] = []) {
        self.certificate = certificate
        self.key = key
        self.clientCA = clientCA
        self.alpn = alpn
    }
}

/// WebSocket options of a `ws` or `wss` endpoint.
public struct WebSocketSettings: Sendable, Hashable {
    /// Accept permessage-deflate when a client offers it.
    public var compression: Bool
    /// Seconds between pings to an idle client (nil: none).
    public var pingInterval: Duration?
    /// Origins allowed to open sockets (empty: every origin).
    public var allowedOrigins: [String]

    /// Creates WebSocket options.
    public init(compression: Bool = true, pingInterval: Duration? = .seconds(30), allowedOrigins: [String] = []) {
        self.compression = compression
        self.pingInterval = pingInterval
        self.allowedOrigins = allowedOrigins
    }
}

/// The admin listener: the status page, `/status.json` and `/metrics`.
public struct AdminConfiguration: Sendable, Hashable {
    /// Where it listens (keep it on loopback or a private network: it has no authentication).
    public var listen: ListenAddress

    /// Creates an admin configuration.
    public init(listen: ListenAddress) {
        self.listen = listen
    }
}
