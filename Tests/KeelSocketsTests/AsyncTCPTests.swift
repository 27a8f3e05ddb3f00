import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

@Suite("Async TCP API", .serialized)
struct AsyncTCPTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func asyncEchoReturnsEveryByteOnTheConnectionsThread(backend: BackendKind) async throws {
        let serverPool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        let clientPool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let offThread = Atomic<Int>(0)
        let server = try AsyncTCPServer(pool: serverPool, configuration: .init(host: "127.0.0.1", port: 0)) { connection in
            for try await payload in connection.inbound {
                if !connection.thread.isCurrent { offThread.wrappingAdd(1, ordering: .relaxed) }
                try await connection.write(payload)
            }
        }
        #expect(await echoPatternStreams(from: clientPool, to: server.localAddress, connections: 100, perConnection: 64 * 1024))
        #expect(offThread.load(ordering: .relaxed) == 0, "the async body ran off its I/O thread")
        #expect(await eventually { server.statistics.active == 0 })
        await server.stop()
        #expect(await eventually { buffersInUse(serverPool) == 0 && buffersInUse(clientPool) == 0 })
        clientPool.shutdown()
        serverPool.shutdown()
        #expect(openSockets(ports: [server.localAddress.port]).isEmpty, "every socket of this test is closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func asyncWritesSuspendUnderBackpressureSoQueuesStayBounded(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let total = 8 * 1024 * 1024
        let chunk = 64 * 1024
        let maximumQueued = Atomic<Int>(0)
        let server = try AsyncTCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) { connection in
            var offset = 0
            while offset < total {
                let bytes = (0..<chunk).map { patternByte(stream: 3, offset: offset + $0) }
                try await connection.write(bytes)
                offset += chunk
                let queued = await connection.queuedWriteBytes
                if queued > maximumQueued.load(ordering: .relaxed) { maximumQueued.store(queued, ordering: .relaxed) }
            }
        }
        let address = server.localAddress
        let (count, firstBad) = await onPlainThread { () -> (Int, Int) in
            guard let client = try? RawClient(connectingTo: address) else { return (0, -2) }
            defer { client.close() }
            usleep(300_000)  // a reader that stalls first
            var count = 0
            var firstBad = -1
            var scratch = [UInt8](repeating: 0, count: 256 * 1024)
            while count < total {
                let n = recv(client.fd, &scratch, scratch.count, 0)
                if n <= 0 { break }
                if firstBad < 0 {
                    for i in 0..<n where scratch[i] != patternByte(stream: 3, offset: count + i) {
                        firstBad = count + i
                        break
                    }
                }
                count += n
            }
            return (count, firstBad)
        }
        #expect(count == total)
        #expect(firstBad == -1)
        let peak = maximumQueued.load(ordering: .relaxed)
        #expect(peak <= 256 * 1024 + chunk, "queued \(peak) bytes: writes did not wait for the reader")
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aLaggingAsyncConsumerPausesReadingInsteadOfBufferingWithoutBound(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let limit = 64 * 1024
        let total = 4 * 1024 * 1024
        let buffered = Collector<Int>()
        let counted = Collector<Int>()
        let server = try AsyncTCPServer(pool: pool, configuration: .init(), inboundBufferLimit: limit) { connection in
            try await Task.sleep(for: .milliseconds(300))  // the consumer lags while the peer sends
            buffered.add(await connection.bufferedInboundBytes)
            var count = 0
            for try await payload in connection.inbound { count += payload.readableBytes }
            counted.add(count)
        }
        let address = server.localAddress
        let sent = await onPlainThread { () -> Int in
            guard let client = try? RawClient(connectingTo: address) else { return -1 }
            defer { client.close() }
            let chunk = [UInt8](repeating: 1, count: 64 * 1024)
            var sent = 0
            while sent < total {
                let n = client.send(chunk)
                if n <= 0 { break }
                sent += n
            }
            client.shutdownWrite()
            return sent
        }
        #expect(sent == total)
        let waiting = try #require(await buffered.wait(for: 1).first)
        // Reading paused past the limit: at most one more pooled read arrived behind it.
        #expect(waiting > 0 && waiting <= limit + 16 * 1024, "\(waiting) bytes waited for the consumer")
        #expect(await counted.wait(for: 1) == [total], "every byte reached the consumer once it caught up")
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func theAsyncConnectorConnectsOrThrowsATypedError(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let server = try TCPServer(pool: pool, configuration: .init()) { EchoHandler() }
        let connector = AsyncTCPConnector(pool: pool)
        let connection = try await connector.connect(to: server.localAddress)
        try await connection.write(Array("ping".utf8))
        var reply: [UInt8] = []
        for try await payload in connection.inbound {
            reply += payload.readableByteArray
            if reply.count >= 4 { break }
        }
        #expect(String(decoding: reply, as: UTF8.self) == "ping")
        connection.close()
        await server.stop()
        // Nobody listens on a port just freed by a stopped server.
        do {
            _ = try await connector.connect(to: server.localAddress)
            Issue.record("connected to a closed port")
        } catch let error as TCPConnectError {
            #expect(error.code == .refused)
        }
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }
}
