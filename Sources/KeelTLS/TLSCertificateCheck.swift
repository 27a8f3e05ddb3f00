import CKeelOpenSSL
import Glibc

/// What a certificate check found: each finding in plain words, with the fix.
///
/// ``TLSContext`` runs it when it is made: errors (a configuration that cannot work) refuse the
/// context, warnings (a risky one) are logged. `keel-tls-echo --check` prints it.
public struct TLSCertificateReport: Sendable, CustomStringConvertible {
    /// How bad a finding is.
    public enum Severity: String, Sendable, Hashable {
        /// Cannot work: the context is refused.
        case error
        /// Works, but is risky or will stop working: logged.
        case warning
    }

    /// One thing the check found.
    public struct Finding: Sendable, Hashable, CustomStringConvertible {
        public var severity: Severity
        /// The file concerned.
        public var path: String
        /// What is wrong.
        public var message: String
        /// How to fix it.
        public var fix: String

        public var description: String { "\(severity): \(path): \(message). Fix: \(fix)" }
    }

    /// The certificates checked, leaf first: subject, issuer, valid until (seconds since the epoch).
    public var certificates: [(subject: String, issuer: String, notAfter: Int64)] = []
    /// Everything found, errors first.
    public var findings: [Finding] = []

    /// The findings that refuse a context.
    public var errors: [Finding] { findings.filter { $0.severity == .error } }
    /// The findings that are logged.
    public var warnings: [Finding] { findings.filter { $0.severity == .warning } }

    public var description: String {
        var lines = certificates.enumerated().map { index, certificate in
            "certificate \(index): \(certificate.subject) (issued by \(certificate.issuer)), valid until \(formatDate(certificate.notAfter))"
        }
        lines += findings.isEmpty ? ["no problems found"] : findings.map(\.description)
        return lines.joined(separator: "\n")
    }

    /// Checks the certificate chain in `chainPath` (PEM, leaf first) for the problems that break TLS
    /// or put it at risk: a signature made with MD5 (error) or SHA-1 (warning); a certificate expired or
    /// not yet valid (error) or expiring within 30 days (warning); an RSA key under 2048 bits; a chain
    /// out of order or not reaching a trusted root (a missing intermediate); `hostNames` that the leaf
    /// does not cover (its subject alternative names).
    /// - Parameters:
    ///   - trustRoots: the roots to try the chain against (nil: skip that check).
    ///   - now: the time to judge validity at (seconds since the epoch; default: now).
    public static func check(chainPath: String, hostNames: [String] = [], trustRoots: TLSTrustRoots? = .system,
                             now: Int64 = Int64(time(nil))) -> TLSCertificateReport {
        _ = OpenSSLRuntime.prepared
        var report = TLSCertificateReport()
        let chain = readCertificates(chainPath)
        defer { chain.forEach { X509_free($0) } }
        guard let leaf = chain.first else {
            report.add(.error, chainPath, "no PEM certificate could be read",
                       "point to a PEM file with the leaf certificate first, then its intermediates")
            return report
        }
        for (index, certificate) in chain.enumerated() {
            let subject = nameLine(X509_get_subject_name(certificate))
            let notAfter = ckeel_x509_not_after(certificate)
            report.certificates.append((subject, nameLine(X509_get_issuer_name(certificate)), notAfter))
            let which = index == 0 ? "the certificate (\(subject))" : "intermediate \(index) (\(subject))"
            report.checkDates(of: which, path: chainPath, notBefore: ckeel_x509_not_before(certificate), notAfter: notAfter, now: now)
            let selfSigned = X509_NAME_cmp(X509_get_subject_name(certificate), X509_get_issuer_name(certificate)) == 0
            switch ckeel_x509_signature_digest_nid(certificate) {
            case NID_md5 where !(selfSigned && index > 0):
                report.add(.error, chainPath, "\(which) is signed with MD5, which TLS 1.2 and 1.3 peers refuse",
                           "have it reissued with a SHA-256 signature")
            case NID_sha1 where !(selfSigned && index > 0):
                report.add(.warning, chainPath, "\(which) is signed with SHA-1, which current clients refuse",
                           "have it reissued with a SHA-256 signature")
            default: break
            }
            if let key = X509_get0_pubkey(certificate), EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA, EVP_PKEY_get_bits(key) < 2048 {
                report.add(.warning, chainPath, "\(which) has a \(EVP_PKEY_get_bits(key))-bit RSA key, under the 2048 bits clients expect",
                           "use a 2048-bit (or larger) RSA key, or an EC P-256 key")
            }
        }
        report.checkOrder(chain, path: chainPath)
        if let trustRoots { report.checkTrust(chain, roots: trustRoots, path: chainPath) }
        for name in hostNames where !covers(leaf, name) {
            var names = [CChar](repeating: 0, count: 2048)
            ckeel_x509_dns_names(leaf, &names, names.count)
            let listed = String(decoding: names.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .split(separator: "\n").joined(separator: ", ")
            report.add(.warning, chainPath, "the certificate does not cover \(name) (its names: \(listed.isEmpty ? "none" : listed))",
                       "have it issued with \(name) in its subject alternative names")
        }
        report.findings.sort { $0.severity == .error && $1.severity != .error }
        return report
    }

    private mutating func add(_ severity: Severity, _ path: String, _ message: String, _ fix: String) {
        findings.append(Finding(severity: severity, path: path, message: message, fix: fix))
    }

    private mutating func checkDates(of which: String, path: String, notBefore: Int64, notAfter: Int64, now: Int64) {
        if notAfter <= now {
            add(.error, path, "\(which) expired on \(formatDate(notAfter))", "renew it")
        } else if notBefore > now {
            add(.error, path, "\(which) is not valid before \(formatDate(notBefore))",
                "check the system clock, or wait until then")
        } else if notAfter - now < 30 * 86_400 {
            add(.warning, path, "\(which) expires on \(formatDate(notAfter)), in \((notAfter - now) / 86_400) days",
                "renew it before then")
        }
    }

    /// Each certificate must be issued by the next one in the file.
    private mutating func checkOrder(_ chain: [OpaquePointer], path: String) {
        for index in chain.indices.dropLast() {
            let issuer = X509_get_issuer_name(chain[index])
            if X509_NAME_cmp(issuer, X509_get_subject_name(chain[index + 1])) == 0 { continue }
            if chain.indices.contains(where: { X509_NAME_cmp(issuer, X509_get_subject_name(chain[$0])) == 0 }) {
                add(.warning, path, "the chain is out of order: certificate \(index)'s issuer is not the next certificate",
                    "list the leaf first, then each certificate's issuer right after it")
            } else {
                add(.warning, path, "the chain misses an intermediate: nothing in the file issued certificate \(index) (\(Self.nameLine(issuer)))",
                    "append the intermediate certificate your CA provides")
            }
            return
        }
    }

    /// The chain must lead to a trusted root.
    private mutating func checkTrust(_ chain: [OpaquePointer], roots: TLSTrustRoots, path: String) {
        guard let store = X509_STORE_new() else { return }
        defer { X509_STORE_free(store) }
        switch roots {
        case .system: _ = X509_STORE_set_default_paths(store)
        case .file(let file): _ = X509_STORE_load_locations(store, file, nil)
        case .directory(let directory): _ = X509_STORE_load_locations(store, nil, directory)
        }
        guard let untrusted = OPENSSL_sk_new_null(), let context = X509_STORE_CTX_new() else { return }
        defer {
            OPENSSL_sk_free(untrusted)
            X509_STORE_CTX_free(context)
        }
        for certificate in chain.dropFirst() { _ = OPENSSL_sk_push(untrusted, UnsafeRawPointer(certificate)) }
        guard X509_STORE_CTX_init(context, store, chain[0], untrusted) == 1 else { return }
        if X509_verify_cert(context) == 1 { return }
        let code = X509_STORE_CTX_get_error(context)
        // Validity and signatures are reported above; here only whether a trusted root is reached.
        guard code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
            || code == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT || code == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        else { return }
        add(.warning, path, "the chain does not reach a trusted root (\(String(cString: X509_verify_cert_error_string(Int(code)))))",
            "append the missing intermediate certificates; a private CA's clients must trust its root")
    }

    private static func covers(_ certificate: OpaquePointer, _ name: String) -> Bool {
        if X509_check_ip_asc(certificate, name, 0) == 1 { return true }
        return X509_check_host(certificate, name, name.utf8.count, 0, nil) == 1
    }

    static func readCertificates(_ path: String) -> [OpaquePointer] {
        guard let file = BIO_new_file(path, "r") else { return [] }
        defer { BIO_free(file) }
        var certificates: [OpaquePointer] = []
        while let certificate = PEM_read_bio_X509(file, nil, nil, nil) { certificates.append(certificate) }
        ERR_clear_error()  // the read that ends the loop leaves "no start line"
        return certificates
    }

    static func nameLine(_ name: OpaquePointer?) -> String {
        guard let name else { return "" }
        var buffer = [CChar](repeating: 0, count: 512)
        _ = X509_NAME_oneline(name, &buffer, Int32(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// `YYYY-MM-DD` (UTC) of seconds since the epoch.
func formatDate(_ seconds: Int64) -> String {
    var time = time_t(seconds)
    var parts = tm()
    gmtime_r(&time, &parts)
    func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))"
}
