import KeelTLS
import Testing

// The certificate diagnostics, on certificates the test PKI makes (and on a moved clock for dates).
@Suite("TLS certificate diagnostics")
struct TLSCertificateCheckTests {
    let pki = TestPKI.shared

    func messages(_ report: TLSCertificateReport, _ severity: TLSCertificateReport.Severity) -> [String] {
        report.findings.filter { $0.severity == severity }.map(\.message)
    }

    @Test func aGoodChainHasNoFindings() {
        let report = TLSCertificateReport.check(chainPath: pki.path("chain.pem"), hostNames: ["localhost", "127.0.0.1"],
                                                trustRoots: .file(pki.caCertificate))
        #expect(report.findings.isEmpty, "\(report)")
        #expect(report.certificates.map(\.subject) == ["/CN=localhost", "/CN=Keel-Test-Intermediate"])
    }

    @Test func datesAreJudged() {
        guard let notAfter = TLSCertificateReport.check(chainPath: pki.serverCertificate).certificates.first?.notAfter else {
            Issue.record("no certificate read")
            return
        }
        let expired = TLSCertificateReport.check(chainPath: pki.serverCertificate, trustRoots: nil, now: notAfter + 1)
        #expect(messages(expired, .error).contains { $0.contains("expired on") })
        let soon = TLSCertificateReport.check(chainPath: pki.serverCertificate, trustRoots: nil, now: notAfter - 10 * 86_400)
        #expect(messages(soon, .warning).contains { $0.contains("expires on") && $0.contains("in 10 days") })
        let early = TLSCertificateReport.check(chainPath: pki.serverCertificate, trustRoots: nil, now: notAfter - 400 * 86_400)
        #expect(messages(early, .error).contains { $0.contains("is not valid before") })
    }

    @Test func weakSignaturesAndKeysAreReported() {
        let md5 = TLSCertificateReport.check(chainPath: pki.path("md5.pem"), trustRoots: nil)
        #expect(messages(md5, .error).contains { $0.contains("signed with MD5") })
        let sha1 = TLSCertificateReport.check(chainPath: pki.path("sha1.pem"), trustRoots: nil)
        #expect(messages(sha1, .warning).contains { $0.contains("signed with SHA-1") })
        let rsa = TLSCertificateReport.check(chainPath: pki.path("rsa1024.pem"), trustRoots: nil)
        #expect(messages(rsa, .warning).contains { $0.contains("1024-bit RSA key") })
    }

    @Test func chainProblemsAreReported() {
        let unordered = TLSCertificateReport.check(chainPath: pki.path("unordered.pem"), trustRoots: nil)
        #expect(messages(unordered, .warning).contains { $0.contains("out of order") })
        let leafOnly = TLSCertificateReport.check(chainPath: pki.path("leaf.pem"), trustRoots: .file(pki.caCertificate))
        #expect(messages(leafOnly, .warning).contains { $0.contains("does not reach a trusted root") }, "\(leafOnly)")
        let wrongIntermediate = TLSCertificateReport.check(chainPath: pki.path("leaf.pem") , trustRoots: nil)
        #expect(wrongIntermediate.findings.isEmpty, "one certificate: nothing to order")
    }

    @Test func aNameTheCertificateDoesNotCoverIsReported() {
        let report = TLSCertificateReport.check(chainPath: pki.serverCertificate, hostNames: ["example.org", "localhost"],
                                                trustRoots: nil)
        #expect(messages(report, .warning) == ["the certificate does not cover example.org (its names: localhost)"])
    }

    @Test func aContextRefusesACertificateThatCannotWorkAndKeepsTheWarnings() throws {
        do throws(TLSConfigurationError) {
            _ = try TLSContext(configuration: .server(certificateChain: pki.path("md5.pem"), privateKey: pki.path("md5.key")))
            Issue.record("an MD5-signed certificate was accepted")
        } catch {
            #expect(error.code == .unusableCertificate && error.path == pki.path("md5.pem"))
            #expect(error.description.contains("MD5") && error.description.contains("SHA-256"))
        }
        var configuration = TLSConfiguration.server(certificateChain: pki.serverCertificate, privateKey: pki.serverKey)
        configuration.hostNames = ["example.org"]
        let context = try TLSContext(configuration: configuration)
        #expect(context.certificateReport?.warnings.contains { $0.message.contains("example.org") } == true)
    }
}
