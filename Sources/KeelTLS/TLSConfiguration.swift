/// Which TLS versions, cipher suites and key-exchange groups a ``TLSContext`` allows.
///
/// OpenSSL's own defaults are not safe enough for a server on the internet (they allow CBC suites and
/// the X448 and P-521 groups); Keel starts from a named profile instead.
public struct TLSProfile: Sendable, Hashable {
    /// The lowest protocol version allowed.
    public var minimumVersion: TLSVersion
    /// The highest protocol version allowed.
    public var maximumVersion: TLSVersion
    /// TLS 1.2 cipher suites, in OpenSSL's cipher-list syntax (ignored when 1.2 is not allowed).
    public var tls12Ciphers: String
    /// TLS 1.3 cipher suites, in OpenSSL's ciphersuites syntax.
    public var tls13CipherSuites: String
    /// Key-exchange groups, in order of preference (OpenSSL names).
    public var groups: [String]

    /// Creates an explicit profile.
    public init(minimumVersion: TLSVersion, maximumVersion: TLSVersion = .tls13, tls12Ciphers: String,
                tls13CipherSuites: String, groups: [String]) {
        self.minimumVersion = minimumVersion
        self.maximumVersion = maximumVersion
        self.tls12Ciphers = tls12Ciphers
        self.tls13CipherSuites = tls13CipherSuites
        self.groups = groups
    }

    /// Mozilla's "intermediate" recommendation (the default): TLS 1.2 and 1.3; for 1.2 only ECDHE key
    /// exchange with AEAD suites (AES-GCM, ChaCha20-Poly1305); groups X25519, P-256, P-384.
    public static let intermediate = TLSProfile(
        minimumVersion: .tls12,
        tls12Ciphers: "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
            + "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
        tls13CipherSuites: "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        groups: ["X25519", "P-256", "P-384"])

    /// Mozilla's "modern" recommendation: TLS 1.3 only.
    public static let modern = TLSProfile(
        minimumVersion: .tls13, tls12Ciphers: "",
        tls13CipherSuites: "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        groups: ["X25519", "P-256", "P-384"])
}

/// A TLS protocol version.
public enum TLSVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    case tls12, tls13

    public var description: String {
        switch self {
        case .tls12: "TLSv1.2"
        case .tls13: "TLSv1.3"
        }
    }
}

/// Which certificates a side trusts when it verifies its peer.
public enum TLSTrustRoots: Sendable, Hashable {
    /// The system's CA store.
    case system
    /// CA certificates in one PEM file.
    case file(String)
    /// A directory of CA certificates in OpenSSL's hashed layout (`openssl rehash`).
    case directory(String)
}

/// Whether and how a side checks its peer's certificate.
public enum TLSPeerVerification: Sendable, Hashable {
    /// No check (a server that does not ask for client certificates; a client in a test against a
    /// self-signed server: never in production).
    case none
    /// The peer must present a certificate that chains to `roots` (a client also checks the server's
    /// name against ``TLSConfiguration/serverName``).
    case required(TLSTrustRoots)
}

/// How a server or client speaks TLS: its profile, its certificate, what it trusts and offers.
///
/// ```swift
/// var tls = TLSConfiguration.server(certificateChain: "cert.pem", privateKey: "key.pem")
/// tls.applicationProtocols = ["h2", "http/1.1"]
/// let context = try TLSContext(configuration: tls)
/// configuration.connection.useTLS(context)
/// ```
public struct TLSConfiguration: Sendable {
    /// Server or client.
    public enum Role: Sendable, Hashable {
        case server, client
    }

    /// Which side this configuration is for.
    public var role: Role
    /// Versions, suites and groups (default: ``TLSProfile/intermediate``).
    public var profile = TLSProfile.intermediate
    /// PEM file with this side's certificate chain, leaf first (a server needs one; a client only for
    /// mutual TLS).
    public var certificateChain: String?
    /// PEM file with the private key of the leaf certificate.
    public var privateKey: String?
    /// More certificates a server presents to clients that ask for one of their names (SNI); any other
    /// name, or none, gets ``certificateChain``.
    public var additionalCertificates: [TLSServerCertificate] = []
    /// How the peer is checked. Servers default to ``TLSPeerVerification/none`` (set ``TLSPeerVerification/required(_:)``
    /// for mutual TLS); clients to the system's CA store.
    public var peerVerification: TLSPeerVerification
    /// ALPN protocols, in order of preference (a server picks the first it shares with the client and
    /// refuses a client that offers none of them; a client offers them).
    public var applicationProtocols: [String] = []
    /// A client's server name: sent as SNI and checked against the server's certificate.
    public var serverName: String?
    /// The names a server is reached by: checked against its certificate when the context is made (a
    /// warning for each name it does not cover).
    public var hostNames: [String] = []
    /// A handshake not finished within this time closes the connection (``TCPCloseReason/Code/tlsHandshakeTimeout``).
    public var handshakeTimeout: Duration = .seconds(10)
    /// A server's session tickets are sealed with a key that is replaced after this long; tickets sealed
    /// with the key before it are still accepted (and renewed), older ones get a full handshake.
    public var sessionTicketKeyLifetime: Duration = .seconds(12 * 3600)
    /// A client keeps the last session of each server name and offers it on the next connection
    /// (resumption: no certificate exchange, one round trip less with TLS 1.2).
    public var resumesSessions = true
    /// The most handshakes in progress at once on connections of this context (a server's, usually);
    /// a connection over the cap is closed at once (``TCPCloseReason/Code/tlsHandshakeLimit``), so a
    /// handshake storm cannot take the CPU from established connections. Nil: no cap.
    public var maximumConcurrentHandshakes: Int? = 1024

    /// A configuration for `role` with its defaults.
    public init(role: Role) {
        self.role = role
        peerVerification = role == .server ? .none : .required(.system)
    }

    /// A server presenting `certificateChain` (PEM, leaf first) with `privateKey` (PEM).
    public static func server(certificateChain: String, privateKey: String) -> TLSConfiguration {
        var configuration = TLSConfiguration(role: .server)
        configuration.certificateChain = certificateChain
        configuration.privateKey = privateKey
        return configuration
    }

    /// A client that verifies the server against `trustRoots` and checks it is `serverName`.
    public static func client(serverName: String?, trustRoots: TLSTrustRoots = .system) -> TLSConfiguration {
        var configuration = TLSConfiguration(role: .client)
        configuration.serverName = serverName
        configuration.peerVerification = .required(trustRoots)
        return configuration
    }
}

/// A certificate a server presents to clients that ask for one of `serverNames` (server name
/// indication).
public struct TLSServerCertificate: Sendable, Hashable {
    /// The names it serves: exact (`example.org`) or one wildcard label (`*.example.org`).
    public var serverNames: [String]
    /// PEM file with its chain, leaf first.
    public var certificateChain: String
    /// PEM file with its private key.
    public var privateKey: String

    /// A certificate for `serverNames`.
    public init(serverNames: [String], certificateChain: String, privateKey: String) {
        self.serverNames = serverNames
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }
}
