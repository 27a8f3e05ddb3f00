import CKeelOpenSSL
import KeelSockets
import KeelSystem
import Logging
import Synchronization

/// An OpenSSL context made from a ``TLSConfiguration``: certificates and keys loaded and checked once,
/// shared by every connection of a server or connector, on every I/O thread.
///
/// Making one refuses a configuration that cannot work with a ``TLSConfigurationError`` naming the
/// file and the fix.
public final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable: the SSL_CTX is configured completely in init and only read afterwards
    // (SSL_new from any I/O thread), which OpenSSL documents as thread-safe; the ALPN list it points to
    // is immutable and lives as long as the context.
    /// The configuration it was made from.
    public let configuration: TLSConfiguration
    /// What the check of this side's certificate found (nil without a certificate). Its warnings were
    /// logged when the context was made.
    public private(set) var certificateReport: TLSCertificateReport?
    let context: OpaquePointer
    private let alpnWire: UnsafeMutableBufferPointer<UInt8>?
    /// The contexts of ``TLSConfiguration/additionalCertificates``, with the names each serves
    /// (lowercased), chosen by the server name callback.
    private var namedContexts: [(names: [String], context: TLSContext)] = []
    /// A server's rotating session ticket keys.
    private var ticketKeys: OpaquePointer?
    /// A client's last session per server name (each holds a reference), for resumption.
    private let sessions = Locked<[String: OpaquePointer]>([:])
    /// Handshakes in progress on this context's connections (any thread), for the cap.
    private let handshakesInProgress = Atomic<Int>(0)
    /// The server's ALPN selection callback's argument (points into ``alpnWire``).
    private let alpnList: UnsafeMutablePointer<ckeel_alpn_list>

    /// Makes the OpenSSL context for `configuration`.
    public init(configuration: TLSConfiguration) throws(TLSConfigurationError) {
        _ = OpenSSLRuntime.prepared
        self.configuration = configuration
        let method = configuration.role == .server ? TLS_server_method() : TLS_client_method()
        guard let context = SSL_CTX_new(method) else {
            throw TLSConfigurationError(.openSSL, detail: "SSL_CTX_new failed: \(openSSLError())", fix: "check the OpenSSL installation")
        }
        self.context = context
        alpnWire = TLSContext.wireFormat(configuration.applicationProtocols)
        alpnList = .allocate(capacity: 1)
        alpnList.initialize(to: ckeel_alpn_list(protocols: alpnWire?.baseAddress, length: UInt32(alpnWire?.count ?? 0)))
        // A throw from here on still runs deinit (every property is set), which frees both.
        // Resumption needs a session id context whenever client certificates may be checked.
        _ = SSL_CTX_set_session_id_context(context, "keel", 4)
        try applyProfile(configuration.profile)
        try loadIdentity()
        try applyVerification()
        applyApplicationProtocols()
        try applyServerNames()
        try applySessionResumption()
    }

    deinit {
        SSL_CTX_free(context)
        ckeel_ticket_keys_free(ticketKeys)
        sessions.withLock { for session in $0.values { SSL_SESSION_free(session) } }
        alpnWire?.deallocate()
        alpnList.deallocate()
    }

    /// Takes a handshake slot. - Returns: false when the cap is reached (nothing taken).
    func beginHandshake() -> Bool {
        let count = handshakesInProgress.wrappingAdd(1, ordering: .relaxed).newValue
        guard let cap = configuration.maximumConcurrentHandshakes, count > cap else { return true }
        handshakesInProgress.wrappingSubtract(1, ordering: .relaxed)
        return false
    }

    /// Gives a slot taken by ``beginHandshake()`` back.
    func endHandshake() {
        handshakesInProgress.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Handshakes in progress now on connections of this context.
    public var handshakesNow: Int { handshakesInProgress.load(ordering: .relaxed) }

    // MARK: Setting up

    private func applyProfile(_ profile: TLSProfile) throws(TLSConfigurationError) {
        _ = ckeel_ssl_ctx_set_options(context, ckeel_ssl_safe_options())
        let invalid = { (what: String) in
            TLSConfigurationError(.invalidProfile, detail: "OpenSSL refused the profile's \(what): \(openSSLError())",
                                  fix: "use TLSProfile.intermediate or .modern, or names OpenSSL 3 knows")
        }
        guard ckeel_ssl_ctx_set_min_proto_version(context, profile.minimumVersion.openSSLValue) == 1,
            ckeel_ssl_ctx_set_max_proto_version(context, profile.maximumVersion.openSSLValue) == 1
        else { throw invalid("versions") }
        if profile.minimumVersion <= .tls12 && !profile.tls12Ciphers.isEmpty {
            guard SSL_CTX_set_cipher_list(context, profile.tls12Ciphers) == 1 else { throw invalid("TLS 1.2 ciphers") }
        }
        guard SSL_CTX_set_ciphersuites(context, profile.tls13CipherSuites) == 1 else { throw invalid("TLS 1.3 cipher suites") }
        guard ckeel_ssl_ctx_set_groups_list(context, profile.groups.joined(separator: ":")) == 1 else { throw invalid("groups") }
    }

    private func loadIdentity() throws(TLSConfigurationError) {
        guard let chain = configuration.certificateChain, let key = configuration.privateKey else {
            if configuration.role == .server {
                throw TLSConfigurationError(.missingCertificate, detail: "a TLS server needs a certificate chain and a private key",
                                            fix: "set certificateChain and privateKey (PEM files)")
            }
            return
        }
        guard SSL_CTX_use_certificate_chain_file(context, chain) == 1 else {
            throw TLSConfigurationError(.unreadableCertificate, path: chain,
                                        detail: "cannot read a PEM certificate chain (\(openSSLError()))",
                                        fix: "point to a PEM file with the leaf certificate first, then its intermediates")
        }
        let report = TLSCertificateReport.check(chainPath: chain, hostNames: configuration.hostNames)
        certificateReport = report
        if let error = report.errors.first {
            throw TLSConfigurationError(.unusableCertificate, path: chain, detail: error.message, fix: error.fix)
        }
        let logger = Logger(label: "keel.tls")
        for warning in report.warnings { logger.warning("\(warning)") }
        guard let privateKey = TLSContext.readPrivateKey(key) else {
            throw TLSConfigurationError(.unreadableKey, path: key,
                                        detail: "cannot read an unencrypted PEM private key (\(openSSLError()))",
                                        fix: "point to the leaf certificate's private key in PEM, without a passphrase")
        }
        defer { EVP_PKEY_free(privateKey) }
        guard SSL_CTX_use_PrivateKey(context, privateKey) == 1, SSL_CTX_check_private_key(context) == 1 else {
            throw TLSConfigurationError(.keyMismatch, path: key,
                                        detail: "the private key does not belong to the certificate in \(chain)",
                                        fix: "use the key the certificate was issued for")
        }
    }

    /// Reads a PEM private key; an encrypted one fails instead of prompting for a passphrase.
    private static func readPrivateKey(_ path: String) -> OpaquePointer? {
        guard let file = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(file) }
        return PEM_read_bio_PrivateKey(file, nil, { _, _, _, _ in 0 }, nil)
    }

    private func applyVerification() throws(TLSConfigurationError) {
        guard case .required(let roots) = configuration.peerVerification else {
            SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
            return
        }
        let loaded: Int32
        switch roots {
        case .system: loaded = SSL_CTX_set_default_verify_paths(context)
        case .file(let path): loaded = SSL_CTX_load_verify_locations(context, path, nil)
        case .directory(let path): loaded = SSL_CTX_load_verify_locations(context, nil, path)
        }
        guard loaded == 1 else {
            let path: String? = switch roots {
            case .system: nil
            case .file(let path), .directory(let path): path
            }
            throw TLSConfigurationError(.unreadableTrustRoots, path: path, detail: "cannot load the CA certificates (\(openSSLError()))",
                                        fix: "point to a PEM file of CA certificates, or a directory prepared with `openssl rehash`")
        }
        if configuration.role == .server {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            if case .file(let path) = roots, let names = SSL_load_client_CA_file(path) {
                SSL_CTX_set_client_CA_list(context, names)  // tells clients which CAs are accepted
            }
        } else {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        }
    }

    private func applyServerNames() throws(TLSConfigurationError) {
        guard configuration.role == .server, !configuration.additionalCertificates.isEmpty else { return }
        for certificate in configuration.additionalCertificates {
            var child = configuration
            child.certificateChain = certificate.certificateChain
            child.privateKey = certificate.privateKey
            child.hostNames = certificate.serverNames.filter { !$0.hasPrefix("*.") }
            child.additionalCertificates = []
            namedContexts.append((certificate.serverNames.map { $0.lowercased() }, try TLSContext(configuration: child)))
        }
        // Unretained: connections (and so the callback) never outlive the context that made them.
        ckeel_ssl_ctx_set_servername_callback(context, { ssl, _, argument in
            guard let ssl, let argument, let name = ckeel_ssl_get_servername(ssl) else { return SSL_TLSEXT_ERR_OK }
            let context = Unmanaged<TLSContext>.fromOpaque(argument).takeUnretainedValue()
            if let chosen = context.context(forServerName: String(cString: name).lowercased()) {
                _ = SSL_set_SSL_CTX(ssl, chosen.context)
            }
            return SSL_TLSEXT_ERR_OK
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    private func applySessionResumption() throws(TLSConfigurationError) {
        ckeel_ssl_ctx_set_owner(context, Unmanaged.passUnretained(self).toOpaque())  // unretained: see applyServerNames
        if configuration.role == .server {
            let (seconds, _) = configuration.sessionTicketKeyLifetime.components
            guard let keys = ckeel_ticket_keys_new(max(1, seconds)), ckeel_ssl_ctx_set_ticket_keys(context, keys) == 1 else {
                throw TLSConfigurationError(.openSSL, detail: "cannot set up session ticket keys: \(openSSLError())",
                                            fix: "check the OpenSSL installation (its random number generator)")
            }
            ticketKeys = keys
        } else if configuration.resumesSessions {
            ckeel_ssl_ctx_set_client_session_callback(context) { ssl, session in
                guard let ssl, let session, let owner = ckeel_ssl_get_ctx_owner(ssl), let name = ckeel_ssl_get_servername(ssl)
                else { return 0 }
                Unmanaged<TLSContext>.fromOpaque(owner).takeUnretainedValue().keep(session, for: String(cString: name))
                return 1  // the reference is kept
            }
        }
    }

    /// Keeps `session` (taking its reference) as the one to offer to `serverName` next.
    private func keep(_ session: OpaquePointer, for serverName: String) {
        let replaced = sessions.withLock { $0.updateValue(session, forKey: serverName) }
        if let replaced { SSL_SESSION_free(replaced) }
    }

    /// Offers the kept session for `serverName`, if any, to a client connection about to handshake.
    func offerSession(to ssl: OpaquePointer, serverName: String) {
        sessions.withLock { sessions in
            if let session = sessions[serverName] { _ = SSL_set_session(ssl, session) }  // takes its own reference
        }
    }

    /// Replaces a server's session ticket key now: tickets sealed with the key before the current one
    /// are no longer accepted.
    public func rotateSessionTicketKeys() {
        if let ticketKeys { ckeel_ticket_keys_rotate(ticketKeys) }
    }

    /// The context whose certificate serves `name` (exactly, or by a `*.` wildcard for one label).
    func context(forServerName name: String) -> TLSContext? {
        if let exact = namedContexts.first(where: { $0.names.contains(name) }) { return exact.context }
        guard let dot = name.firstIndex(of: ".") else { return nil }
        let wildcard = "*" + name[dot...]
        return namedContexts.first(where: { $0.names.contains(wildcard) })?.context
    }

    private func applyApplicationProtocols() {
        guard let alpnWire, let base = alpnWire.baseAddress else { return }
        if configuration.role == .server {
            ckeel_ssl_ctx_set_alpn_select(context, alpnList)
        } else {
            _ = SSL_CTX_set_alpn_protos(context, base, UInt32(alpnWire.count))
        }
    }

    /// ALPN's wire format: each protocol name prefixed by its length.
    private static func wireFormat(_ protocols: [String]) -> UnsafeMutableBufferPointer<UInt8>? {
        let names = protocols.map { Array($0.utf8) }.filter { !$0.isEmpty && $0.count < 256 }
        guard !names.isEmpty else { return nil }
        let bytes = names.flatMap { [UInt8($0.count)] + $0 }
        let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: bytes.count)
        _ = buffer.initialize(from: bytes)
        return buffer
    }
}

extension TLSVersion {
    var openSSLValue: Int32 {
        switch self {
        case .tls12: TLS1_2_VERSION
        case .tls13: TLS1_3_VERSION
        }
    }
}

/// The last error in OpenSSL's queue, as text (and the queue cleared).
func openSSLError() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    ckeel_ssl_error_string(&buffer, buffer.count)
    let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.isEmpty ? "no detail from OpenSSL" : text
}

/// OpenSSL readied for Keel once per process (``ckeel_openssl_prepare``): every KeelTLS entry point
/// touches ``prepared`` before its first OpenSSL call, so Keel's small-block cache is in place before
/// OpenSSL allocates anything (unless another part of the process used OpenSSL first).
enum OpenSSLRuntime {
    /// True when OpenSSL's allocations go through the per-thread small-block cache.
    static let prepared: Bool = ckeel_openssl_prepare() != 0
}
