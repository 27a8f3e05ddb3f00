import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import Testing

import KeelTestSupport

/// The options a connection's socket has, as its handler sees them when it opens.
struct SocketOptions: Sendable, Equatable {
    var noDelay: Int32
    var keepAlive: Int32
    var keepAliveIdle: Int32
}

/// Records each opening connection's socket options.
struct SocketOptionsRecorder: TCPConnectionHandler {
    let seen: Collector<SocketOptions>

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let fd = connection.systemDescriptor ?? -1  // an accepted direct descriptor gets an ordinary one
        func option(_ level: Int32, _ name: Int32) -> Int32 {
            var value: Int32 = -1
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, level, name, &value, &length) == 0 ? value : -1
        }
        seen.add(SocketOptions(noDelay: option(Int32(IPPROTO_TCP), TCP_NODELAY), keepAlive: option(SOL_SOCKET, SO_KEEPALIVE),
                               keepAliveIdle: option(Int32(IPPROTO_TCP), TCP_KEEPIDLE)))
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

/// A server sets the connection options on its listeners, and accepted sockets inherit them (no
/// `setsockopt` per connection): each accepted socket must still have exactly what was configured.
@Suite("TCP socket options")
struct TCPSocketOptionsTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func acceptedSocketsHaveTheConfiguredNoDelayAndKeepAlive(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let configured = Collector<SocketOptions>()
        let withOptions = try TCPServer(
            pool: pool, configuration: .init(connection: .init(noDelay: true, keepAliveIdleSeconds: 17))
        ) { SocketOptionsRecorder(seen: configured) }
        let plain = Collector<SocketOptions>()
        let withoutOptions = try TCPServer(pool: pool, configuration: .init(connection: .init(noDelay: false))) {
            SocketOptionsRecorder(seen: plain)
        }
        let clients = try [
            RawClient(connectingTo: withOptions.localAddress), RawClient(connectingTo: withOptions.localAddress),
            RawClient(connectingTo: withoutOptions.localAddress),
        ]
        defer { for client in clients { client.close() } }

        let seen = await configured.wait(for: 2)
        #expect(seen.count == 2)
        for options in seen {
            #expect(options.noDelay != 0)
            #expect(options.keepAlive != 0)
            #expect(options.keepAliveIdle == 17)
        }
        let seenPlain = await plain.wait(for: 1)
        #expect(seenPlain.count == 1)
        #expect(seenPlain.first?.noDelay == 0)
        #expect(seenPlain.first?.keepAlive == 0)
        await withOptions.stop()
        await withoutOptions.stop()
    }
}
