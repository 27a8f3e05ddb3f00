import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

/// Sends `total` bytes of its stream's pattern with up to `window` bytes in flight, validates every
/// echoed byte, and reports (stream, bytes validated, first mismatch offset or -1, close reason).
struct PatternClient: TCPConnectionHandler {
    struct Report: Sendable {
        var stream: Int
        var validated: Int
        var mismatch: Int
        var reason: TCPCloseReason?
    }

    let stream: Int
    let total: Int
    let chunk: Int
    let window: Int
    let reports: Collector<Report>
    var sent = 0
    var validated = 0
    var mismatch = -1
    var reported = false

    mutating func connectionEstablished(_ connection: TCPConnection) { fill(connection) }

    mutating func fill(_ connection: TCPConnection) {
        while sent < total && sent - validated < window {
            guard var buffer = try? connection.thread.bufferPool.acquire() else { return }
            let count = min(chunk, total - sent, buffer.writableBytes)
            let base = sent
            let stream = self.stream
            buffer.withUnsafeMutableWritableBytes { region in
                for i in 0..<count { region[i] = patternByte(stream: stream, offset: base + i) }
            }
            buffer.moveWriterIndex(forwardBy: count)
            sent += count
            connection.write(buffer)
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let start = validated
        let stream = self.stream
        let bad = buffer.withUnsafeReadableBytes { bytes -> Int in
            for i in 0..<bytes.count where bytes[i] != patternByte(stream: stream, offset: start + i) { return start + i }
            return -1
        }
        validated += buffer.readableBytes
        if bad >= 0 && mismatch < 0 { mismatch = bad }
        if validated >= total {
            connection.close()
        } else {
            fill(connection)
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        reports.add(Report(stream: stream, validated: validated, mismatch: mismatch, reason: reason))
    }
}

/// Connects `connections` pattern clients from `pool` to `address` (each sends `perConnection` bytes
/// in 4 KiB chunks, 16 KiB in flight) and waits for their reports: true when every stream came back
/// whole and unchanged.
func echoPatternStreams(from pool: IOPool, to address: SocketAddress, connections: Int, perConnection: Int) async -> Bool {
    let reports = Collector<PatternClient.Report>()
    let connector = TCPConnector<PatternClient>(pool: pool)
    for stream in 0..<connections {
        connector.connect(to: address, makeHandler: {
            PatternClient(stream: stream, total: perConnection, chunk: 4096, window: 16 * 1024, reports: reports)
        })
    }
    let results = await reports.wait(for: connections, timeout: .seconds(30))
    return results.count == connections && results.allSatisfy { $0.validated == perConnection && $0.mismatch < 0 }
}

@Suite("TCP echo", .serialized)
struct TCPEchoTests {
    @Test(.timeLimit(.minutes(2)), arguments: backendsUnderTest)
    func thousandConcurrentPipelinedConnectionsEchoEveryByte(backend: BackendKind) async throws {
        let serverPool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        let clientPool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        let server = try TCPServer(pool: serverPool, configuration: .init(host: "127.0.0.1", port: 0, backlog: 4096)) {
            EchoHandler()
        }
        let connections = 1_000
        let perConnection = 32 * 1024
        let reports = Collector<PatternClient.Report>()
        let connector = TCPConnector<PatternClient>(pool: clientPool)
        let failures = Collector<TCPConnectError>()
        for stream in 0..<connections {
            connector.connect(to: server.localAddress, makeHandler: {
                PatternClient(stream: stream, total: perConnection, chunk: 1024, window: 8 * 1024, reports: reports)
            }, failed: { failures.add($0) })
        }
        let results = await reports.wait(for: connections, timeout: .seconds(60))
        #expect(failures.snapshot.isEmpty, "\(failures.snapshot.prefix(3))")
        #expect(results.count == connections)
        #expect(results.allSatisfy { $0.validated == perConnection }, "some streams came back short")
        #expect(results.allSatisfy { $0.mismatch < 0 }, "some echoed bytes differ from what was sent")
        #expect(results.allSatisfy { $0.reason == .local })
        #expect(await eventually { server.statistics.active == 0 })
        #expect(server.statistics.accepted == connections)
        await server.stop()
        #expect(await eventually { buffersInUse(serverPool) == 0 && buffersInUse(clientPool) == 0 })
        #expect(connector.activeConnections == 0)
        clientPool.shutdown()
        serverPool.shutdown()
        #expect(openSockets(ports: [server.localAddress.port]).isEmpty, "every socket of this test is closed")
    }

    /// A server that holds its writes for a coalescing window still echoes every byte, in order, to
    /// many connections (the window's timer, not the loop's end, sends them).
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aServerWithACoalescingDelayEchoesEveryByte(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.writeCoalescingDelay = .milliseconds(2)
        let server = try TCPServer(pool: pool, configuration: configuration) { EchoHandler() }
        #expect(await echoPatternStreams(from: pool, to: server.localAddress, connections: 20, perConnection: 256 * 1024))
        await server.stop()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func ipv6ListenerEchoes(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let server: TCPServer<EchoHandler>
        do {
            server = try TCPServer(pool: pool, configuration: .init(host: "::1", port: 0)) { EchoHandler() }
        } catch {
            // A host without IPv6 loopback cannot run this case.
            withKnownIssue("IPv6 loopback unavailable: \(error)") { throw error }
            return
        }
        #expect(server.localAddress.family == .ipv6)
        #expect(server.localAddress.description == "[::1]:\(server.localAddress.port)")
        let address = server.localAddress
        let reply = await onPlainThread { () -> [UInt8] in
            guard let client = try? RawClient(connectingTo: address) else { return [] }
            defer { client.close() }
            _ = client.send(Array("over ipv6".utf8))
            return client.receive(count: 9)
        }
        #expect(reply == Array("over ipv6".utf8))
        await server.stop()
    }
}
