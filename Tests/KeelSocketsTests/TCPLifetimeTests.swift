import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

/// Lifetimes across threads and reuse: handles kept past close, servers stopped while the pool runs.
@Suite("TCP lifetimes", .serialized)
struct TCPLifetimeTests {
    /// Keeps a handle to each connection and says which object served it.
    struct HandleKeeper: TCPConnectionHandler {
        let handles: Collector<(TCPConnectionHandle, ObjectIdentifier)>
        let received: Collector<String>
        mutating func connectionEstablished(_ connection: TCPConnection) {
            handles.add((connection.handle, ObjectIdentifier(connection)))
        }
        mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
            received.add(String(decoding: buffer.readableByteArray, as: UTF8.self))
            connection.write(buffer)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aStaleHandleNeverReachesTheNextPeerOfARecycledConnection(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let handles = Collector<(TCPConnectionHandle, ObjectIdentifier)>()
        let received = Collector<String>()
        let server = try TCPServer(pool: pool, configuration: .init()) {
            HandleKeeper(handles: handles, received: received)
        }
        let address = server.localAddress
        // The first peer comes and goes.
        let first = try RawClient(connectingTo: address)
        #expect(await handles.wait(for: 1).count == 1)
        first.close()
        #expect(await eventually { server.statistics.active == 0 })
        // The second peer gets the recycled object.
        let second = try RawClient(connectingTo: address)
        defer { second.close() }
        let both = await handles.wait(for: 2)
        try #require(both.count == 2)
        #expect(both[0].1 == both[1].1, "the connection object was reused")
        #expect(both[0].0 != both[1].0, "but the handles differ")
        // The first peer's handle writes and closes: ignored.
        var stale = try await pool.threads[0].submit { () -> DetachedBufferBox in
            var buffer = try pool.threads[0].bufferPool.acquire()
            buffer.append(contentsOf: Array("stale".utf8))
            return DetachedBufferBox(buffer)
        }
        both[0].0.write(stale.take())
        both[0].0.close(.abortive)
        // The second peer is still served, and never saw the stale bytes.
        let reply = await onPlainThread { () -> [UInt8] in
            _ = second.send(Array("fresh".utf8))
            return second.receive(count: 5)
        }
        #expect(String(decoding: reply, as: UTF8.self) == "fresh")
        #expect(server.statistics.active == 1)
        // The current handle works.
        let live = both[1].0
        live.close()
        #expect(await eventually { server.statistics.active == 0 })
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }

    @Test(.timeLimit(.minutes(3)), arguments: backendsUnderTest)
    func aThousandServersStartedAndStoppedLeaveNothingBehind(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        func hookCounts() async throws -> [Int] {
            var counts: [Int] = []
            for thread in pool.threads {
                let (beforeWait, shutdown) = try await thread.submit { thread.registeredHookCounts }
                counts += [beforeWait, shutdown]
            }
            return counts
        }
        let baseline = try await hookCounts()
        final class WeakServer {
            weak var server: TCPServer<EchoHandler>?
            init(_ server: TCPServer<EchoHandler>) { self.server = server }
        }
        var stopped: [WeakServer] = []
        for round in 0..<1000 {
            let server = try TCPServer(pool: pool, configuration: .init()) { EchoHandler() }
            if round % 100 == 0 {
                // Now and then with a live connection, closed by the stop.
                let client = try RawClient(connectingTo: server.localAddress)
                #expect(await eventually { server.statistics.active == 1 })
                await server.stop(closing: .abortive)
                client.close()
            } else {
                await server.stop()
            }
            stopped.append(WeakServer(server))
        }
        // Retirement happens a loop turn after a thread's last connection of the server finished.
        #expect(await eventually { stopped.allSatisfy { $0.server == nil } }, "every stopped, dropped server is freed")
        var counts = try await hookCounts()
        for _ in 0..<200 where counts != baseline {
            try await Task.sleep(for: .milliseconds(10))
            counts = try await hookCounts()
        }
        #expect(counts == baseline, "every hook was removed")
        #expect(buffersInUse(pool) == 0)
        pool.shutdown()
    }
}

extension TCPLifetimeTests {
    @Test(.timeLimit(.minutes(2)), arguments: backendsUnderTest)
    func stoppedUDPSessionServersAreReleasedByTheirThreads(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let thread = pool.threads[0]
        let baseline = try await thread.submit { thread.registeredHookCounts.shutdown }
        final class WeakSocket {
            weak var socket: UDPSocket?
            init(_ socket: UDPSocket) { self.socket = socket }
        }
        var stopped: [WeakSocket] = []
        let events = Collector<String>()
        for round in 0..<200 {
            let server = try UDPSessionServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                              idleTimeout: .seconds(30)) { _ in CountingSession(events: events) }
            if round == 0 {
                // One session, ended by the stop.
                let client = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                                handler: UDPRecorder(received: Collector()))
                let address = server.localAddress
                try await thread.submit {
                    var datagram = try thread.bufferPool.acquire()
                    datagram.append(contentsOf: Array("hi".utf8))
                    _ = client.send(datagram, to: address)
                }
                #expect(await eventually { server.sessionCount == 1 })
                client.close()
            }
            await server.stop()
            stopped.append(WeakSocket(server.socket))
        }
        #expect(await events.wait(for: 2).last == "end 1 serverStopped")
        #expect(await eventually { stopped.allSatisfy { $0.socket == nil } }, "every stopped socket is freed")
        var hooks = try await thread.submit { thread.registeredHookCounts.shutdown }
        for _ in 0..<200 where hooks != baseline {
            try await Task.sleep(for: .milliseconds(10))
            hooks = try await thread.submit { thread.registeredHookCounts.shutdown }
        }
        #expect(hooks == baseline, "every shutdown hook was removed")
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }
}

/// Carries a pooled buffer out of an I/O thread's task (a test convenience).
struct DetachedBufferBox: Sendable {
    private var detached: DetachedBuffer?
    init(_ buffer: consuming IOBuffer) { detached = buffer.detach() }
    mutating func take() -> IOBuffer { detached.take()!.reattach() }
}
