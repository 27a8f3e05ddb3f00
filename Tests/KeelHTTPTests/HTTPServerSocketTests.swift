import Glibc
import HTTPTypes
import KeelEngine
import KeelHTTP
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

// The HTTP server over real sockets on 127.0.0.1, both backends, against Python's http.client and a
// raw socket that pipelines.

/// Python's http.client: keep-alive GETs and a POST echoed back chunked, on one connection; then a raw
/// socket sends three pipelined requests in one write and reads the answers until the server closes.
let pythonHTTPClient = #"""
import http.client, socket, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for _ in range(3):
    c.request("GET", "/hello")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"hello", r.status
body = bytes(range(256)) * 200
c.request("POST", "/echo", body=body)
r = c.getresponse()
assert r.getheader("Transfer-Encoding") == "chunked"
assert r.read() == body, "the echo differs"
assert c.sock is not None, "the connection was not kept alive"
c.close()

s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 2 + b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
assert got == one * 2 + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", got
print("ok")
"""#

@Suite("HTTP server over sockets")
struct HTTPServerSocketTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func pythonClientsAreServedKeptAliveAndPipelined(backend: BackendKind) async throws {
        let script = "/tmp/keel-http-client-\(getpid())-\(backend).py"
        let file = fopen(script, "w")!
        fputs(pythonHTTPClient, file)
        fclose(file)
        defer { unlink(script) }
        try await withPool(backend) { pool in
            var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
            let log = Collector<String>()
            let later = LaterResponses()
            configuration.connection.serveHTTP { TestRoutes(log: log, later: later) }
            let server = try TCPServer(pool: pool, configuration: configuration) { HTTPOnlyConnection() }
            let port = server.localAddress.port
            let status = await withCheckedContinuation { continuation in
                SystemThread.spawn(name: "http-client") {
                    continuation.resume(returning: system("python3 \(script) \(port)"))
                }.detach()
            }
            #expect(status == 0)
            #expect(log.snapshot.filter { $0.hasPrefix("GET") || $0.hasPrefix("POST") }.count == 7)
            await server.stop()
        }
    }
}
