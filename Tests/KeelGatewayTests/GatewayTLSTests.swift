import Glibc
import KeelEngine
import KeelGateway
import KeelSockets
import KeelSystem
import KeelTLS
import KeelTestSupport
import Testing

// The openssl command makes the certificate; Python's ssl module is the client (both are in the README's requirements).
@Suite("keel-gateway TLS termination", .enabled(if: access("/usr/bin/openssl", X_OK) == 0, "the openssl command is not installed"))
struct GatewayTLSTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func clientsSpeakTLSAndTheBackendGetsPlainBytes(backend: BackendKind) async throws {
        let certificate = try await TestCertificate(name: "gateway-tls")
        defer { certificate.remove() }
        let directory = certificate.directory
        let context = try TLSContext(configuration: .server(certificateChain: "\(directory)/cert.pem", privateKey: "\(directory)/key.pem"))
        let echo = try TestBackend(backend, .echo)
        let gateway = try TestGateway(backend, to: [echo.address]) { $0.listener.connection.useTLS(context) }
        let script = """
        import socket, ssl
        c = ssl.create_default_context(cafile="\(directory)/cert.pem")
        s = c.wrap_socket(socket.create_connection(("127.0.0.1", \(gateway.address.port)), timeout=10), server_hostname="localhost")
        payload = bytes(range(256)) * 4096
        s.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        print("intact" if data == payload else "damaged: %d bytes" % len(data))
        """
        let file = try #require(fopen("\(directory)/client.py", "w"))
        fputs(script, file)
        fclose(file)
        let answer = try await blocking { shellOutput("python3 \(directory)/client.py") }
        #expect(answer == "intact\n", "1 MiB over TLS through the gateway came back intact")
        let plain = echo.record.received.snapshot.flatMap { $0 }
        #expect(plain.count == 1 << 20 && Array(plain.prefix(256)) == (0...255).map { UInt8($0) }, "the back-end read the plain bytes")
        #expect(await gateway.finish())
        await echo.finish()
    }
}
