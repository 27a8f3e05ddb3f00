import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelTLS
import KeelSystem
import KeelTestSupport
import Testing

/// Python's ssl module as the client: COUNT round trips of one 64-byte message each.
let pythonPingPong = #"""
import socket, ssl, sys
port, pki, count, version = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = ssl.create_default_context(cafile=f"{pki}/ca.pem")
c.minimum_version = c.maximum_version = getattr(ssl.TLSVersion, version)
s = c.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
message = bytes(range(64))
for _ in range(count):
    s.sendall(message)
    got = b""
    while len(got) < 64:
        got += s.recv(64 - len(got))
    assert got == message
s.unwrap()
"""#

@Suite("TLS allocations", .serialized, .enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
struct TLSAllocationTests {
    let pki = TestPKI.shared

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest, ["TLSv1_3", "TLSv1_2"])
    func echoAfterTheHandshakeAllocatesNothingPerMessage(backend: BackendKind, version: String) async throws {
        let warmup = 1_000
        let measured = 5_000
        let results = Collector<UInt64>()
        let script = "\(pki.directory)/pingpong.py"
        let file = fopen(script, "w")!
        fputs(pythonPingPong, file)
        fclose(file)
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.connection.useTLS(try pki.serverContext())
            let server = try TCPServer(pool: pool, configuration: configuration) {
                MeasuringEchoHandler(warmup: warmup, measured: measured, results: results)
            }
            let port = server.localAddress.port
            let status = await withCheckedContinuation { continuation in
                SystemThread.spawn(name: "tls-pingpong") {
                    continuation.resume(returning: system("python3 \(script) \(port) \(pki.directory) \(warmup + measured) \(version)"))
                }.detach()
            }
            #expect(status == 0)
            let allocations = await results.wait(for: 1).first ?? .max
            // OpenSSL 3.0 allocates a few small packet-writer blocks per record (2 per echoed message
            // with TLS 1.2, 4 with TLS 1.3); KeelTLS routes them through its per-thread block cache,
            // so none of them reaches malloc once the cache is warm.
            #expect(allocations == 0, "\(allocations) allocations over \(measured) messages echoed over TLS")
            await server.stop()
        }
    }
}
