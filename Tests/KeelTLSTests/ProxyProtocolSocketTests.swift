import KeelBuffers
import KeelEngine
import KeelProxyProtocol
import KeelSockets
import KeelSystem
import KeelTLS
import KeelTestSupport
import Testing

// The PROXY protocol over real sockets on 127.0.0.1, both backends: Keel's connector sends a header,
// Keel's listener reads it (under TLS too: the header first, then the handshake), and a connection
// without one is refused and counted.

/// Greets each connection with the address it sees (`you are HOST:PORT\n`), then echoes.
struct AddressGreeter: TCPConnectionHandler {
    mutating func connectionEstablished(_ connection: TCPConnection) {
        guard var buffer = try? connection.thread.bufferPool.acquire() else { return }
        buffer.append(contentsOf: Array("you are \(connection.remoteAddress.map { "\($0)" } ?? "-")\n".utf8))
        connection.write(buffer)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}

/// Reads until a newline (or the end).
func readLine(_ connection: AsyncTCPConnection) async throws -> String {
    var bytes: [UInt8] = []
    while !bytes.contains(0x0A), let payload = try await connection.receive() { bytes += payload.readableByteArray }
    return String(decoding: bytes, as: UTF8.self)
}

@Suite("PROXY protocol over sockets")
struct ProxyProtocolSocketTests {
    let pki = TestPKI.shared
    let header = ProxyHeader(addresses: .inet(source: try! SocketAddress(host: "203.0.113.9", port: 4242),
                                               destination: try! SocketAddress(host: "192.0.2.1", port: 443)))

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func theServerSeesTheSendersClientAndRefusesAndCountsAConnectionWithoutAHeader(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.acceptProxyProtocol()
            let server = try TCPServer(pool: pool, configuration: configuration) { AddressGreeter() }
            var sending = TCPConnectorConfiguration()
            sending.connection.sendProxyHeader(header, checksum: true)
            let proxied = try await AsyncTCPConnector(pool: pool, configuration: sending).connect(to: server.localAddress)
            #expect(try await readLine(proxied) == "you are 203.0.113.9:4242\n")
            try await proxied.write(Array("echo".utf8))
            #expect(try await proxied.receive()?.readableByteArray == Array("echo".utf8))
            proxied.close()

            let bare = try await AsyncTCPConnector(pool: pool).connect(to: server.localAddress)
            try await bare.write(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            let answer = try? await bare.receive()
            #expect(answer == nil, "closed without a byte")
            #expect(await eventually { server.statistics.refusedByFilters == 1 }, "\(server.statistics)")

            // One I/O thread: the next connections reuse the recycled connection object and its PROXY
            // filter, which must keep nothing of the peers before.
            for port: UInt16 in [5001, 5002] {
                var next = TCPConnectorConfiguration()
                next.connection.sendProxyHeader(ProxyHeader(addresses: .inet(source: try SocketAddress(host: "198.51.100.7", port: port),
                                                                           destination: try SocketAddress(host: "192.0.2.1", port: 443))))
                let connection = try await AsyncTCPConnector(pool: pool, configuration: next).connect(to: server.localAddress)
                #expect(try await readLine(connection) == "you are 198.51.100.7:\(port)\n")
                connection.close()
            }
            #expect(server.statistics.refusedByFilters == 1)
            await server.stop()
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func asyncCodeSeesTheClientAndTheTLVs(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.acceptProxyProtocol()
            let server = try AsyncTCPServer(pool: pool, configuration: configuration) { connection in
                let header = await connection.proxyHeader
                let line = "remote \(connection.remoteAddress.map { "\($0)" } ?? "-") authority \(header?.authority ?? "-")\n"
                try await connection.write(Array(line.utf8))
            }
            var sending = TCPConnectorConfiguration()
            var withTLVs = header
            withTLVs.tlvs = [ProxyTLV(.authority, Array("api.example.com".utf8)), ProxyTLV(.uniqueID, [1, 2, 3])]
            sending.connection.sendProxyHeader(withTLVs)
            let connection = try await AsyncTCPConnector(pool: pool, configuration: sending).connect(to: server.localAddress)
            #expect(try await readLine(connection) == "remote 203.0.113.9:4242 authority api.example.com\n")
            connection.close()
            await server.stop()
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func theHeaderComesFirstThenTheTLSHandshake(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.useTLS(try pki.serverContext())
            configuration.connection.acceptProxyProtocol()
            let server = try TCPServer(pool: pool, configuration: configuration) { AddressGreeter() }
            var client = TCPConnectorConfiguration()
            client.connection.useTLS(try pki.clientContext())
            client.connection.sendProxyHeader(header)
            let connection = try await AsyncTCPConnector(pool: pool, configuration: client).connect(to: server.localAddress)
            #expect(try await readLine(connection) == "you are 203.0.113.9:4242\n", "over TLS, after the header")
            connection.close()
            await server.stop()
        }
    }
}
