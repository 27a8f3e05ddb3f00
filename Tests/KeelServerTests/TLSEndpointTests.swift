import Glibc
import KeelEngine
import KeelServer
import KeelSystem
import KeelTestSupport
import Testing


// The openssl command makes the certificate; Python's ssl module is the client (both are in the README's requirements).
@Suite("keel-server TLS endpoints", .enabled(if: access("/usr/bin/openssl", X_OK) == 0, "the openssl command is not installed"))
struct TLSEndpointTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aTLSEndpointServesItsPluginAndCountsFailedHandshakes(backend: BackendKind) async throws {
        let certificate = try await TestCertificate(name: "server-tls")
        defer { certificate.remove() }
        let directory = certificate.directory
        let yaml = """
        endpoints:
          - name: secure
            listen: 127.0.0.1:0
            transport: tls
            framing: line
            plugin: echo
            tls: { certificate: \(directory)/cert.pem, key: \(directory)/key.pem }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let address = try #require(addresses["secure"])
            let script = """
            import socket, ssl
            c = ssl.create_default_context(cafile="\(directory)/cert.pem")
            s = c.wrap_socket(socket.create_connection(("127.0.0.1", \(address.port)), timeout=10), server_hostname="localhost")
            s.sendall(b"over tls\\n")
            data = b""
            while not data.endswith(b"\\n"):
                data += s.recv(100)
            print(data.decode().strip())
            """
            let file = try #require(fopen("\(directory)/client.py", "w"))
            fputs(script, file)
            fclose(file)
            let answer = try await blocking { shellOutput("python3 \(directory)/client.py") }
            #expect(answer == "over tls\n")
            // Plain text on a TLS port: the handshake fails and the connection never opens.
            let refused = try await blocking { () -> Bool in
                let client = try TestClient(address)
                defer { client.close() }
                client.send("GET / HTTP/1.1\r\n\r\n")
                return client.closedByPeer()
            }
            #expect(refused)
            #expect(await eventually { host.status.endpoints[0].failedBeforeOpening == 1 })
            #expect(host.status.endpoints[0].traffic.messagesIn == 1)
            #expect(host.status.endpoints[0].handshakesInProgress == 0)
        }
    }
}
