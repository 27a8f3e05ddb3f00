import Glibc
import KeelTLS

/// A throwaway PKI made by `scripts/make-test-pki.sh` for this test run (nothing of value is committed):
/// a CA, a server certificate for localhost and 127.0.0.1, a client certificate, and an unrelated
/// self-signed certificate, in a fresh temporary directory.
struct TestPKI: Sendable {
    let directory: String

    static let shared: TestPKI = {
        var template = Array("/tmp/keel-tls-pki-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let pki = TestPKI(directory: directory)
        pki.generate()
        return pki
    }()

    var caCertificate: String { "\(directory)/ca.pem" }
    var serverCertificate: String { "\(directory)/server.pem" }
    var serverKey: String { "\(directory)/server.key" }
    var clientCertificate: String { "\(directory)/client.pem" }
    var clientKey: String { "\(directory)/client.key" }
    var otherCertificate: String { "\(directory)/other.pem" }
    var otherKey: String { "\(directory)/other.key" }

    private func generate() {
        // scripts/make-test-pki.sh, found from this file's place in the repository.
        let repository = "\(#filePath)".split(separator: "/").dropLast(3).joined(separator: "/")
        let status = system("/\(repository)/scripts/make-test-pki.sh \(directory)")
        precondition(status == 0, "test PKI: scripts/make-test-pki.sh failed (is the openssl command installed?)")
    }

    /// A server context on the test PKI's server certificate.
    func serverContext(_ edit: (inout TLSConfiguration) -> Void = { _ in }) throws(TLSConfigurationError) -> TLSContext {
        var configuration = TLSConfiguration.server(certificateChain: serverCertificate, privateKey: serverKey)
        edit(&configuration)
        return try TLSContext(configuration: configuration)
    }

    /// A client context that trusts the test CA and expects `localhost`.
    func clientContext(_ edit: (inout TLSConfiguration) -> Void = { _ in }) throws(TLSConfigurationError) -> TLSContext {
        var configuration = TLSConfiguration.client(serverName: "localhost", trustRoots: .file(caCertificate))
        edit(&configuration)
        return try TLSContext(configuration: configuration)
    }
}

extension TestPKI {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
}
