import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import KeelTLS
import KeelTestSupport
import Testing

// TLS over real sockets on 127.0.0.1, against independent peers: Python's ssl module and the openssl
// command. Both backends.

/// Echoes decrypted bytes back.
struct TLSEchoHandler: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}

/// Python's ssl module as the client: TLS 1.2 and 1.3, a 100 KB echo checked byte by byte, ALPN, SNI
/// with verification against the test CA, resumption, and a clean close_notify. Prints one line per
/// check; exits nonzero on the first failure.
let pythonClient = #"""
import socket, ssl, sys
port, pki, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def context(version):
    c = ssl.create_default_context(cafile=f"{pki}/ca.pem")
    c.minimum_version = c.maximum_version = version
    c.set_alpn_protocols(["http/1.1"])
    if mode == "mtls":
        c.load_cert_chain(f"{pki}/client.pem", f"{pki}/client.key")
    return c

def session(c, previous=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = c.wrap_socket(raw, server_hostname="localhost", session=previous)
    data = bytes(range(256)) * 400
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        assert chunk, "the server closed early"
        got += chunk
    assert got == data, "the echo differs"
    assert s.selected_alpn_protocol() == "http/1.1", s.selected_alpn_protocol()
    result = (s.version(), s.session, s.session_reused)
    s.unwrap()  # close_notify both ways
    raw.close()
    return result

for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
    c = context(version)
    name, first, _ = session(c)
    _, _, reused = session(c, first)
    assert reused, f"{name}: the session was not resumed"
    print(f"{name}: echo, ALPN, verification, resumption: ok")

if mode == "mtls-refused":
    pass
"""#

/// A client without a certificate against a server that requires one: the handshake must fail.
let pythonRefusedClient = #"""
import socket, ssl, sys
port, pki = int(sys.argv[1]), sys.argv[2]
c = ssl.create_default_context(cafile=f"{pki}/ca.pem")
try:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = c.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"hello")
    s.recv(10)  # TLS 1.3: the refusal arrives after the client's Finished
    sys.exit("a client without a certificate got through")
except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as error:
    print("refused:", type(error).__name__)
"""#

@Suite("TLS over sockets")
struct TLSSocketTests {
    let pki = TestPKI.shared

    /// Runs a shell command off the cooperative pool's hot path; returns its exit status.
    func run(_ command: String) async -> Int32 {
        await withCheckedContinuation { continuation in
            SystemThread.spawn(name: "tls-peer") {
                let status = system(command)
                continuation.resume(returning: status == -1 ? -1 : (status >> 8) & 0xFF)
            }.detach()
        }
    }

    func script(_ name: String, _ text: String) -> String {
        let path = "\(pki.directory)/\(name).py"
        let file = fopen(path, "w")!
        fputs(text, file)
        fclose(file)
        return path
    }

    func withTLSServer(_ backend: BackendKind, _ edit: (inout TLSConfiguration) -> Void,
                       _ body: (UInt16) async throws -> Void) async throws {
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.useTLS(try pki.serverContext(edit))
            let server = try TCPServer(pool: pool, configuration: configuration) { TLSEchoHandler() }
            try await body(server.localAddress.port)
            await server.stop()
        }
    }

    @Test(arguments: backendsUnderTest)
    func pythonClientsEchoResumeAndNegotiate(backend: BackendKind) async throws {
        let client = script("client", pythonClient)
        try await withTLSServer(backend, { $0.applicationProtocols = ["h2", "http/1.1"] }) { port in
            #expect(await run("python3 \(client) \(port) \(pki.directory) plain") == 0)
        }
    }

    @Test(arguments: backendsUnderTest)
    func mutualTLSAcceptsACertifiedClientAndRefusesOthers(backend: BackendKind) async throws {
        let client = script("client", pythonClient)
        let refused = script("refused", pythonRefusedClient)
        try await withTLSServer(backend, {
            $0.applicationProtocols = ["http/1.1"]
            $0.peerVerification = .required(.file(pki.caCertificate))
        }) { port in
            #expect(await run("python3 \(client) \(port) \(pki.directory) mtls") == 0)
            #expect(await run("python3 \(refused) \(port) \(pki.directory)") == 0)
        }
    }

    @Test(arguments: backendsUnderTest)
    func renegotiationIsRefusedAndKeyUpdatesAreAnswered(backend: BackendKind) async throws {
        try await withTLSServer(backend, { _ in }) { port in
            let client = "timeout 10 openssl s_client -connect 127.0.0.1:\(port) -servername localhost -CAfile \(pki.caCertificate)"
            // TLS 1.2: the client asks to renegotiate ("R"); the server refuses with a no_renegotiation alert.
            let renegotiation = "\(pki.directory)/renegotiation-\(backend).txt"
            _ = await run("(sleep 0.5; printf 'R\\n'; sleep 1) | \(client) -tls1_2 >\(renegotiation) 2>&1")
            #expect(await run("grep -q 'no renegotiation' \(renegotiation)") == 0, "the renegotiation was not refused")
            // TLS 1.3: the client updates its keys and asks the server to update its own ("K"); the echo
            // after it must come back under the new keys.
            let keyUpdate = "\(pki.directory)/key-update-\(backend).txt"
            _ = await run("(sleep 0.5; printf 'K\\n'; sleep 0.5; printf 'after the key update\\n'; sleep 1) | \(client) -tls1_3 >\(keyUpdate) 2>&1")
            #expect(await run("grep -q 'KEYUPDATE' \(keyUpdate) && grep -q '^after the key update' \(keyUpdate)") == 0,
                    "no echo after the key update")
            // The server still serves others.
            #expect(await run("(printf 'still here\\n'; sleep 1) | \(client) -tls1_3 2>/dev/null | grep -q '^still here'") == 0)
        }
    }

    @Test(arguments: backendsUnderTest)
    func opensslClientEchoesOverTLS12And13(backend: BackendKind) async throws {
        try await withTLSServer(backend, { $0.applicationProtocols = ["http/1.1"] }) { port in
            for version in ["-tls1_2", "-tls1_3"] {
                let output = "\(pki.directory)/s_client\(version).txt"
                let status = await run(
                    "(printf 'hello over tls\\n'; sleep 1) | timeout 10 openssl s_client -connect 127.0.0.1:\(port) \(version) "
                        + "-servername localhost -CAfile \(pki.caCertificate) -verify_return_error -alpn http/1.1 >\(output) 2>&1")
                #expect(status == 0, "openssl s_client \(version) failed")
                #expect(await run("grep -q '^hello over tls' \(output) && grep -q 'ALPN protocol: http/1.1' \(output)") == 0)
            }
        }
    }
}

/// A Keel TLS client for one exchange: on open it sends a line, logs what comes back and what the
/// handshake agreed, and closes (with close_notify) once the answer arrived.
struct OneLineTLSClient: TCPConnectionHandler {
    let log: Collector<String>
    let line: String

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let tls = connection.filter(ofType: TLSFilter.self)
        log.add("established \(tls?.version.map { "\($0)" } ?? "-") alpn=\(tls?.applicationProtocol ?? "-")"
                + (tls?.isResumed == true ? " resumed" : ""))
        var buffer = try! connection.thread.bufferPool.acquire()
        buffer.append(contentsOf: Array(line.utf8))
        connection.write(buffer)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        log.add("in \(String(decoding: buffer.readableByteArray, as: UTF8.self))")
        connection.close()
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        log.add("closed \(reason.code)")
    }
}

@Suite("TLS clients over sockets")
struct TLSClientSocketTests {
    let pki = TestPKI.shared

    /// Starts `openssl s_server` on a free port of 127.0.0.1 (it prints the port it bound), reversing
    /// each line it receives; it ends by itself after `connections` connections or 30 seconds.
    func startOpenSSLServer(_ options: String, connections: Int, name: String) async throws -> UInt16 {
        let output = "\(pki.directory)/s_server-\(name).txt"
        unlink(output)
        let command = "timeout 30 openssl s_server -accept 127.0.0.1:0 -naccept \(connections) -rev "
            + "-cert \(pki.serverCertificate) -key \(pki.serverKey) \(options) >\(output) 2>&1"
        SystemThread.spawn(name: "s_server") { _ = system(command) }.detach()
        var port: UInt16?
        _ = await eventually {
            guard let file = fopen(output, "r") else { return false }
            defer { fclose(file) }
            var line = [CChar](repeating: 0, count: 256)
            while fgets(&line, Int32(line.count), file) != nil {
                let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if text.hasPrefix("ACCEPT "), let colon = text.lastIndex(of: ":") {
                    port = UInt16(text[text.index(after: colon)...].prefix { $0.isNumber })
                }
            }
            return port != nil
        }
        return try #require(port, "openssl s_server did not start")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest, ["-tls1_2", "-tls1_3"])
    func aKeelClientTalksToOpenSSLServerAndResumes(backend: BackendKind, version: String) async throws {
        let port = try await startOpenSSLServer("\(version) -alpn http/1.1", connections: 2, name: "\(backend)\(version)")
        try await withPool(backend) { pool in
            var configuration = TCPConnectorConfiguration()
            configuration.connection.useTLS(try pki.clientContext { $0.applicationProtocols = ["h2", "http/1.1"] })
            let connector = TCPConnector<OneLineTLSClient>(pool: pool, configuration: configuration)
            let address = try SocketAddress(host: "127.0.0.1", port: port)
            let expected = version == "-tls1_2" ? "TLSv1.2" : "TLSv1.3"
            for round in 0..<2 {
                let log = Collector<String>()
                connector.connect(to: address) { OneLineTLSClient(log: log, line: "hello keel\n") }
                let events = await log.wait(for: 3)
                let resumed = round == 1 ? " resumed" : ""
                #expect(events.first == "established \(expected) alpn=http/1.1\(resumed)", "round \(round): \(events)")
                #expect(events.dropFirst().first == "in leek olleh\n", "round \(round): \(events)")
                #expect(events.last == "closed local", "round \(round): \(events)")
            }
        }
    }
}

/// A plain TCP client that starts a ClientHello record and stalls: it holds one of the server's
/// handshake slots until the server gives up on it.
struct StallingHandshakeClient: TCPConnectionHandler {
    let closed: Collector<String>

    mutating func connectionEstablished(_ connection: TCPConnection) {
        var buffer = try! connection.thread.bufferPool.acquire()
        buffer.append(contentsOf: [0x16, 0x03, 0x01, 0x00, 0x40])
        connection.write(buffer)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        closed.add("\(reason.code)")
    }
}

@Suite("TLS handshake storms")
struct TLSHandshakeStormTests {
    let pki = TestPKI.shared

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aStormOfStalledHandshakesDoesNotStarveAnEstablishedConnection(backend: BackendKind) async throws {
        let stormSize = 120
        let cap = 8
        try await withPool(backend, threads: 2) { pool in
            var serverConfiguration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            // The stalled handshakes would time out only after the test: they hold their slots throughout.
            let serverContext = try pki.serverContext {
                $0.maximumConcurrentHandshakes = cap
                $0.handshakeTimeout = .seconds(60)
            }
            serverConfiguration.connection.useTLS(serverContext)
            let server = try TCPServer(pool: pool, configuration: serverConfiguration) { TLSEchoHandler() }
            var clientConfiguration = TCPConnectorConfiguration()
            clientConfiguration.connection.useTLS(try pki.clientContext())
            let tlsConnector = AsyncTCPConnector(pool: pool, configuration: clientConfiguration)
            let established = try await tlsConnector.connect(to: server.localAddress)
            // The client's handshake ends before the server's (TLS 1.3: the server's ends when the
            // client's Finished arrives): until then the server side still holds a slot, and the storm
            // would find one fewer (ThreadSanitizer's slowness made that a flake).
            #expect(await eventually(timeout: .seconds(20)) { serverContext.handshakesNow == 0 })

            // The storm: every connection holds a handshake slot or is refused for want of one.
            let closed = Collector<String>()
            let storm = TCPConnector<StallingHandshakeClient>(pool: pool)
            for _ in 0..<stormSize {
                // A refusal can overtake the connect's own completion: then the connect reports it.
                storm.connect(to: server.localAddress, makeHandler: { StallingHandshakeClient(closed: closed) },
                              failed: { closed.add("connect \($0.code)") })
            }
            // Meanwhile the established connection keeps its round trips.
            let message = Array("still served\n".utf8)
            for round in 0..<50 {
                try await established.write(message)
                var echoed: [UInt8] = []
                while echoed.count < message.count, let payload = try await established.receive() {
                    echoed += payload.readableByteArray
                }
                #expect(echoed == message, "round \(round)")
            }
            // The connections over the cap were refused; the others hold the slots.
            #expect(await eventually(timeout: .seconds(20)) { closed.snapshot.count >= stormSize - cap })
            #expect(closed.snapshot.count == stormSize - cap, "only the connections over the cap were refused")
            #expect(closed.snapshot.allSatisfy { ["peerClosed", "reset", "connect system"].contains($0) }, "\(Set(closed.snapshot))")
            #expect(serverContext.handshakesNow == cap)
            #expect(server.statistics.accepted >= stormSize + 1)
            // The established connection is still served, and closing the stalled ones gives the slots back.
            try await established.write(message)
            #expect(try await established.receive()?.readableByteArray == message)
            established.close()
            await server.stop(closing: .abortive)
            #expect(await closed.wait(for: stormSize, timeout: .seconds(20)).count == stormSize)
            #expect(await eventually(timeout: .seconds(20)) { serverContext.handshakesNow == 0 })
        }
    }
}

@Suite("TLS with the async API")
struct TLSAsyncTests {
    let pki = TestPKI.shared

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func asyncServerAndClientEchoOverTLS(backend: BackendKind) async throws {
        try await withPool(backend, threads: 2) { pool in
            var serverConfiguration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            serverConfiguration.connection.useTLS(try pki.serverContext())
            let server = try AsyncTCPServer(pool: pool, configuration: serverConfiguration) { connection in
                for try await payload in connection.inbound { try await connection.write(payload) }
            }
            var clientConfiguration = TCPConnectorConfiguration()
            clientConfiguration.connection.useTLS(try pki.clientContext())
            let connector = AsyncTCPConnector(pool: pool, configuration: clientConfiguration)
            let connection = try await connector.connect(to: server.localAddress)
            let message = Array((0..<50_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
            try await connection.write(message)
            var echoed: [UInt8] = []
            while echoed.count < message.count, let payload = try await connection.receive() {
                echoed += payload.readableByteArray
            }
            #expect(echoed == message)
            connection.close()

            // A server the client does not trust: connect throws with the handshake's reason.
            var untrusting = TCPConnectorConfiguration()
            untrusting.connection.useTLS(try pki.clientContext { $0.peerVerification = .required(.file(pki.otherCertificate)) })
            do {
                _ = try await AsyncTCPConnector(pool: pool, configuration: untrusting).connect(to: server.localAddress)
                Issue.record("an untrusted server was accepted")
            } catch let error as AsyncTCPConnectionError {
                #expect(error.reason.code == .tlsHandshakeFailed)
            }
            await server.stop()
        }
    }
}
