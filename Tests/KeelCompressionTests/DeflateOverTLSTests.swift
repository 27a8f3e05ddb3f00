import Glibc
import KeelBuffers
import KeelCompression
import KeelEngine
import KeelSockets
import KeelSystem
import KeelTLS
import KeelTestSupport
import Testing

/// Echoes what reaches it (above the filters: inflated, decrypted bytes), noting the deflate filter's
/// counts (compressed bytes received, what they inflated to) after each delivery.
struct PlainEcho: TCPConnectionHandler {
    let counts: Collector<[Int]>

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
        if let filter = connection.filter(ofType: DeflateFilter.self) {
            counts.add([filter.compressedBytesReceived, filter.bytesReceived])
        }
    }
}

/// Sends `payload` on opening and reports everything echoed once it has all come back.
struct PayloadClient: TCPConnectionHandler {
    let payload: [UInt8]
    let result: Collector<[UInt8]>
    var received: [UInt8] = []

    mutating func connectionEstablished(_ connection: TCPConnection) { write(payload, to: connection) }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        received += buffer.readableByteArray
        if received.count >= payload.count {
            result.add(received)
            connection.close()
        }
    }
}

// The openssl command makes the certificate.
@Suite("Deflate filter over TLS", .enabled(if: access("/usr/bin/openssl", X_OK) == 0, "the openssl command is not installed"))
struct DeflateOverTLSTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aDeflateFilterAboveTLSCarriesEveryByteBothWays(backend: BackendKind) async throws {
        let certificate = try await TestCertificate(name: "deflate-tls")
        defer { certificate.remove() }
        let directory = certificate.directory
        let serverTLS = try TLSContext(configuration: .server(certificateChain: "\(directory)/cert.pem", privateKey: "\(directory)/key.pem"))
        let clientTLS = try TLSContext(configuration: .client(serverName: "localhost", trustRoots: .file("\(directory)/cert.pem")))
        let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let counts = Collector<[Int]>()
        var serverConfiguration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        serverConfiguration.connection.makeFilters = { _ in [DeflateFilter()] }
        serverConfiguration.connection.useTLS(serverTLS)  // TLS at the socket, deflate above it
        let server = try TCPServer(pool: pool, configuration: serverConfiguration) { PlainEcho(counts: counts) }
        var clientOptions = TCPConnectionOptions(makeFilters: { _ in [DeflateFilter()] })
        clientOptions.useTLS(clientTLS)
        let connector = TCPConnector<PayloadClient>(pool: pool, configuration: .init(connection: clientOptions))
        // Text-like bytes, 2 MiB: log lines whose numbers change, compressible about as logs are (a run
        // of identical lines would inflate past the filter's expansion limit, rightly).
        var lines: [UInt8] = []
        var sequence = 0
        while lines.count < 2 * 1024 * 1024 {
            lines += Array("2026-12-02T08:\(10 + sequence % 50):\(10 + sequence % 49)Z gateway-\(sequence % 7) relay ok seq=\(sequence) bytes=\(sequence &* 7919 % 16384) latency_us=\(sequence &* 104729 % 997)\n".utf8)
            sequence += 1
        }
        let payload = Array(lines.prefix(2 * 1024 * 1024))
        let result = Collector<[UInt8]>()
        connector.connect(to: server.localAddress, makeHandler: { PayloadClient(payload: payload, result: result) })
        let echoed = await result.wait(for: 1, timeout: .seconds(30)).first
        let intact = echoed == payload
        #expect(intact, "2 MiB compressed, encrypted, decrypted, inflated, echoed and back, intact (\(echoed?.count ?? 0) bytes back)")
        let last = try #require(counts.snapshot.last)
        let (compressed, inflated) = (last[0], last[1])
        #expect(inflated == payload.count)
        #expect(compressed * 3 < inflated, "the server received \(compressed) compressed bytes for \(inflated)")
        await server.stop()
    }
}
