import KeelSockets

/// Why a ``TLSContext`` could not be made: the configuration cannot work. It names the file and says
/// how to fix it.
public struct TLSConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong. New codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's name, stable across releases.
        public let name: String
        /// Creates a code (define each once, as a static constant).
        public init(_ name: String) { self.name = name }

        /// A server has no certificate or no private key configured.
        public static let missingCertificate = Code("missingCertificate")
        /// The certificate chain file is missing or not PEM certificates.
        public static let unreadableCertificate = Code("unreadableCertificate")
        /// The private key file is missing, encrypted or not a PEM key.
        public static let unreadableKey = Code("unreadableKey")
        /// The private key is not the key of the leaf certificate.
        public static let keyMismatch = Code("keyMismatch")
        /// The trust roots (CA file or directory) cannot be loaded.
        public static let unreadableTrustRoots = Code("unreadableTrustRoots")
        /// The profile names suites, groups or versions OpenSSL does not accept.
        public static let invalidProfile = Code("invalidProfile")
        /// The certificate cannot work (expired, a broken chain, a weak signature OpenSSL refuses).
        public static let unusableCertificate = Code("unusableCertificate")
        /// OpenSSL failed for another reason (see ``TLSConfigurationError/detail``).
        public static let openSSL = Code("openSSL")

        public var description: String { name }
    }

    /// The kind of problem.
    public var code: Code
    /// The file concerned, if any.
    public var path: String?
    /// What is wrong, in plain words, with OpenSSL's own message where it helps.
    public var detail: String
    /// How to fix it.
    public var fix: String

    /// Creates an error.
    public init(_ code: Code, path: String? = nil, detail: String, fix: String) {
        self.code = code
        self.path = path
        self.detail = detail
        self.fix = fix
    }

    public var description: String {
        "TLS configuration: \(path.map { "\($0): " } ?? "")\(detail). Fix: \(fix)"
    }
}

extension TCPCloseReason.Code {
    /// The TLS handshake failed (see the reason's detail: the alert, OpenSSL's message, the
    /// certificate check that failed).
    public static let tlsHandshakeFailed = Self("tls.handshakeFailed")
    /// The TLS handshake did not finish within ``TLSConfiguration/handshakeTimeout``.
    public static let tlsHandshakeTimeout = Self("tls.handshakeTimeout")
    /// The peer ended the TCP stream without a TLS close_notify: what arrived may have been cut short
    /// by an attacker (a truncation attack), so it is not a clean end.
    public static let tlsTruncated = Self("tls.truncated")
    /// The connection came while ``TLSConfiguration/maximumConcurrentHandshakes`` handshakes were in
    /// progress: it was closed before its own began.
    public static let tlsHandshakeLimit = Self("tls.handshakeLimit")
    /// The peer sent bytes that are not valid TLS records, or an alert after the handshake.
    public static let tlsProtocolError = Self("tls.protocolError")
}
