import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

/// Records how each server connection ended; optionally streams a payload or answers half-closes.
struct RecordingHandler: TCPConnectionHandler {
    enum Behaviour: Sendable {
        case echo
        case hold
        case stream(bytes: Int)
        case replyOnPeerHalfClose([UInt8])
        case greetThenHalfClose([UInt8])
        case chainThenForeignThreadWrite
    }

    let behaviour: Behaviour
    let reasons: Collector<TCPCloseReason>
    let received: Collector<[UInt8]>
    var streamed = 0

    init(_ behaviour: Behaviour, reasons: Collector<TCPCloseReason>, received: Collector<[UInt8]> = .init()) {
        self.behaviour = behaviour
        self.reasons = reasons
        self.received = received
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        switch behaviour {
        case .stream:
            produce(connection)
        case .greetThenHalfClose(let greeting):
            connection.write(Self.buffer(greeting, connection))
            connection.close(.halfClose)
        case .chainThenForeignThreadWrite:
            var chain = BufferChain()
            for part in ["a", "b", "c"] { chain.append(Self.buffer(Array(part.utf8), connection)) }
            connection.write(chain)
            connection.write(Self.buffer(Array("d".utf8), connection).share())
            let shared = Self.buffer(Array("e".utf8), connection).share()
            let target = connection.handle
            // Another thread writes and closes through a handle: both are marshalled to the connection's I/O thread.
            SystemThread.spawn(name: "foreign-writer") {
                target.write(shared)
                target.close()
            }.detach()
        default:
            break
        }
    }

    /// Streams the pattern while the connection is writable; flow control calls back to continue.
    mutating func produce(_ connection: TCPConnection) {
        guard case .stream(let total) = behaviour else { return }
        while streamed < total && connection.isWritable {
            guard var buffer = try? connection.thread.bufferPool.acquire() else { break }
            let count = min(buffer.writableBytes, total - streamed)
            let start = streamed
            buffer.withUnsafeMutableWritableBytes { region in
                for i in 0..<count { region[i] = patternByte(stream: 7, offset: start + i) }
            }
            buffer.moveWriterIndex(forwardBy: count)
            streamed += count
            connection.write(buffer)
        }
        if streamed == total { connection.close() }
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        if isWritable { produce(connection) }
    }

    static func buffer(_ bytes: [UInt8], _ connection: TCPConnection) -> IOBuffer {
        var buffer = try! connection.thread.bufferPool.acquire()
        buffer.append(contentsOf: bytes)
        return buffer
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        received.add(buffer.readableByteArray)
        if case .echo = behaviour { connection.write(buffer) }
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        if case .replyOnPeerHalfClose(let reply) = behaviour {
            connection.write(Self.buffer(reply, connection))
        }
        connection.close()
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        reasons.add(reason)
    }
}

/// A pool and server for one test, checked for leaks afterwards.
struct ServerFixture {
    let pool: IOPool
    let server: TCPServer<RecordingHandler>
    let reasons = Collector<TCPCloseReason>()
    let received = Collector<[UInt8]>()

    init(_ backend: BackendKind, _ behaviour: RecordingHandler.Behaviour, configure: (inout TCPServerConfiguration) -> Void = { _ in })
        throws
    {
        pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let reasons = self.reasons
        let received = self.received
        server = try TCPServer(pool: pool, configuration: configuration) {
            RecordingHandler(behaviour, reasons: reasons, received: received)
        }
    }

    /// Stops everything and checks that no buffer is left in use.
    func finish() async {
        await server.stop(closing: .abortive)
        #expect(await eventually { server.statistics.active == 0 }, "connections left open")
        #expect(await eventually { buffersInUse(pool) == 0 }, "buffers left in use: \(buffersInUse(pool))")
        pool.shutdown()
    }
}


@Suite("TCP bad paths and close modes", .serialized)
struct TCPBadPathTests {
    @Test(.timeLimit(.minutes(2)), arguments: backendsUnderTest)
    func sixtyFourMebibytesReachASlowReaderIntactAndInOrder(backend: BackendKind) async throws {
        let total = 64 * 1024 * 1024
        let fixture = try ServerFixture(backend, .stream(bytes: total))
        let address = fixture.server.localAddress
        let (count, firstBad, end) = await onPlainThread { () -> (Int, Int, Int) in
            guard let client = try? RawClient(connectingTo: address) else { return (0, -2, 0) }
            defer { client.close() }
            var count = 0
            var firstBad = -1
            var scratch = [UInt8](repeating: 0, count: 256 * 1024)
            var sinceNap = 0
            while true {
                let n = recv(client.fd, &scratch, scratch.count, 0)
                if n <= 0 { return (count, firstBad, n) }
                if firstBad < 0 {
                    for i in 0..<n where scratch[i] != patternByte(stream: 7, offset: count + i) {
                        firstBad = count + i
                        break
                    }
                }
                count += n
                sinceNap += n
                if sinceNap >= 4 * 1024 * 1024 {  // a slow reader: pause every 4 MiB
                    sinceNap = 0
                    usleep(20_000)
                }
            }
        }
        #expect(count == total)
        #expect(firstBad == -1)
        #expect(end == 0, "the stream ends with an orderly close")
        #expect(await fixture.reasons.wait(for: 1) == [.local])
        await fixture.finish()
        #expect(openSockets(ports: [address.port]).isEmpty, "every socket of this test is closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func peerResetMidWriteClosesWithResetAndReturnsEveryBuffer(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .stream(bytes: 32 * 1024 * 1024))
        let address = fixture.server.localAddress
        let got = await onPlainThread { () -> Int in
            guard let client = try? RawClient(connectingTo: address) else { return -1 }
            let some = client.receive(count: 256 * 1024).count
            client.resetAndClose()
            return some
        }
        #expect(got == 256 * 1024)
        let reasons = await fixture.reasons.wait(for: 1)
        #expect(reasons == [.reset])
        await fixture.finish()
        #expect(openSockets(ports: [address.port]).isEmpty, "every socket of this test is closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func peerHalfCloseStillGetsTheReply(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .replyOnPeerHalfClose(Array("bye".utf8)))
        let address = fixture.server.localAddress
        let (reply, end) = await onPlainThread { () -> ([UInt8], Int) in
            guard let client = try? RawClient(connectingTo: address) else { return ([], -1) }
            defer { client.close() }
            _ = client.send(Array("abc".utf8))
            client.shutdownWrite()
            return client.receiveUntilClosed()
        }
        #expect(reply == Array("bye".utf8))
        #expect(end == 0)
        #expect(await fixture.reasons.wait(for: 1) == [.peerClosed])
        #expect(fixture.received.snapshot.flatMap { $0 } == Array("abc".utf8))
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func serverHalfCloseKeepsReceivingUntilThePeerCloses(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .greetThenHalfClose(Array("hello".utf8)))
        let address = fixture.server.localAddress
        let (greeting, end) = await onPlainThread { () -> ([UInt8], Int) in
            guard let client = try? RawClient(connectingTo: address) else { return ([], -1) }
            defer { client.close() }
            let result = client.receiveUntilClosed()  // "hello", then end of stream from the half close
            _ = client.send(Array("still here".utf8))  // the server still reads
            usleep(50_000)
            return result
        }
        #expect(greeting == Array("hello".utf8))
        #expect(end == 0)
        #expect(await eventually { fixture.received.snapshot.flatMap { $0 } == Array("still here".utf8) })
        #expect(await fixture.reasons.wait(for: 1) == [.peerClosed])
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func idleConnectionsAreClosedAfterTheTimeout(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .echo) { $0.connection.idleTimeout = .milliseconds(150) }
        let address = fixture.server.localAddress
        let (echo, end, elapsed) = await onPlainThread { () -> ([UInt8], Int, Duration) in
            guard let client = try? RawClient(connectingTo: address) else { return ([], 1, .zero) }
            defer { client.close() }
            _ = client.send(Array("x".utf8))
            let echo = client.receive(count: 1)
            let start = ContinuousClock.now
            let (_, end) = client.receiveUntilClosed()  // then stay silent
            return (echo, end, ContinuousClock.now - start)
        }
        #expect(echo == Array("x".utf8), "activity before the timeout is served")
        #expect(end <= 0)
        #expect(elapsed >= .milliseconds(100) && elapsed < .seconds(5))
        #expect(await fixture.reasons.wait(for: 1) == [.idleTimeout])
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func readTimeoutClosesASilentPeer(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .echo) { $0.connection.readTimeout = .milliseconds(150) }
        let address = fixture.server.localAddress
        let end = await onPlainThread { () -> Int in
            guard let client = try? RawClient(connectingTo: address) else { return 1 }
            defer { client.close() }
            return client.receiveUntilClosed().end
        }
        #expect(end <= 0)
        #expect(await fixture.reasons.wait(for: 1) == [.readTimeout])
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func chainsSharedBuffersAndForeignThreadWritesArriveInOrder(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .chainThenForeignThreadWrite)
        let address = fixture.server.localAddress
        let (bytes, end) = await onPlainThread { () -> ([UInt8], Int) in
            guard let client = try? RawClient(connectingTo: address) else { return ([], 1) }
            defer { client.close() }
            return client.receiveUntilClosed()
        }
        #expect(String(decoding: bytes, as: UTF8.self) == "abcde")
        #expect(end == 0)
        #expect(await fixture.reasons.wait(for: 1) == [.local])
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func connectionLimitPausesAcceptingAndResumesBelowIt(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .hold) {
            $0.maximumConnections = 3
            $0.reusePort = false
        }
        let address = fixture.server.localAddress
        var clients: [RawClient] = []
        for _ in 0..<6 { clients.append(try RawClient(connectingTo: address)) }  // the backlog takes them all
        #expect(await eventually { fixture.server.statistics.active == 3 })
        try await Task.sleep(for: .milliseconds(100))
        #expect(fixture.server.statistics.active == 3, "never above the limit")
        for client in clients.prefix(2) { client.close() }
        #expect(await eventually { fixture.server.statistics.accepted == 5 }, "accepting resumed below the limit")
        #expect(fixture.server.statistics.active == 3)
        for client in clients.dropFirst(2) { client.close() }
        #expect(await eventually { fixture.server.statistics.accepted == 6 && fixture.server.statistics.active == 0 })
        await fixture.finish()
        #expect(openSockets(ports: [address.port]).isEmpty, "every socket of this test is closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func acceptRateLimitSpreadsAdmissionsOverSeconds(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .hold) {
            $0.maximumAcceptRate = 4
            $0.reusePort = false
        }
        let address = fixture.server.localAddress
        let start = ContinuousClock.now
        var clients: [RawClient] = []
        for _ in 0..<10 { clients.append(try RawClient(connectingTo: address)) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(fixture.server.statistics.accepted == 4, "at most 4 admitted in the first second")
        #expect(await eventually(timeout: .seconds(10)) { fixture.server.statistics.accepted == 10 })
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .milliseconds(1_900), "10 connections at 4 per second take at least two windows")
        #expect(fixture.server.statistics.refused == 0)
        clients.forEach { $0.close() }
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func connectorResolvesHostNamesOffTheIOThreads(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .echo)
        let clientPool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let connector = TCPConnector<PatternClient>(pool: clientPool)
        let reports = Collector<PatternClient.Report>()
        let failures = Collector<TCPConnectError>()
        connector.connect(host: "localhost", port: fixture.server.localAddress.port, makeHandler: {
            PatternClient(stream: 1, total: 4096, chunk: 512, window: 1024, reports: reports)
        }, failed: { failures.add($0) })
        connector.connect(host: "no-such-host.invalid", port: 1, makeHandler: {
            PatternClient(stream: 2, total: 1, chunk: 1, window: 1, reports: reports)
        }, failed: { failures.add($0) })
        let done = await reports.wait(for: 1)
        let failed = await failures.wait(for: 1)
        // "localhost" may resolve to ::1 first on some hosts, where the IPv4-only server is not listening.
        if let report = done.first {
            #expect(report.validated == 4096 && report.mismatch < 0)
        }
        #expect(failed.contains { $0.code == .resolution })
        clientPool.shutdown()
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func abruptClosesDuringAcceptDoNotDisturbTheServer(backend: BackendKind) async throws {
        let fixture = try ServerFixture(backend, .echo)
        let address = fixture.server.localAddress
        let ok = await onPlainThread { () -> Bool in
            for i in 0..<50 {
                guard let client = try? RawClient(connectingTo: address) else { return false }
                if i % 2 == 0 { _ = client.send([0xFF, 0x00, 0x13, 0x37]) }  // garbage, then gone
                client.resetAndClose()
            }
            guard let client = try? RawClient(connectingTo: address) else { return false }
            defer { client.close() }
            _ = client.send(Array("still serving".utf8))
            return client.receive(count: 13) == Array("still serving".utf8)
        }
        #expect(ok)
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func connectFailuresAreTypedRefusedAndTimedOut(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let connector = TCPConnector<EchoHandler>(pool: pool, configuration: .init(connectTimeout: .milliseconds(300)))
        let failures = Collector<TCPConnectError>()

        // Nobody listens: refused at once.
        let probe = try Sockets.makeStreamSocket(family: AF_INET)
        try Sockets.bind(probe, to: SocketAddress(host: "127.0.0.1", port: 0))
        let closedPort = try Sockets.localAddress(probe)
        // Kept bound, not listening (connects are refused), so nothing running in parallel takes the port.
        connector.connect(to: closedPort, makeHandler: { EchoHandler() }, failed: { failures.add($0) })
        #expect(await failures.wait(for: 1).first?.code == .refused)
        close(probe)

        // A listener that never accepts, with its queue full: the kernel drops the SYN, nobody answers.
        let silent = try Sockets.makeStreamSocket(family: AF_INET)
        try Sockets.bind(silent, to: SocketAddress(host: "127.0.0.1", port: 0))
        try Sockets.listen(silent, backlog: 0)
        let silentAddress = try Sockets.localAddress(silent)
        var fillers: [Int32] = []
        for _ in 0..<4 {
            let fd = try Sockets.makeStreamSocket(family: AF_INET)
            _ = silentAddress.withSockAddr { Glibc.connect(fd, $0, $1) }
            fillers.append(fd)
        }
        try await Task.sleep(for: .milliseconds(50))
        let start = ContinuousClock.now
        connector.connect(to: silentAddress, makeHandler: { EchoHandler() }, failed: { failures.add($0) })
        let results = await failures.wait(for: 2)
        #expect(results.count == 2)
        #expect(results.last?.code == .timedOut)
        #expect(ContinuousClock.now - start >= .milliseconds(250))
        for fd in fillers { close(fd) }
        close(silent)
        pool.shutdown()
        #expect(openSockets(ports: [closedPort.port, silentAddress.port]).isEmpty, "every socket of this test is closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aServerDroppedWithOpenConnectionsShutsDownCleanly(backend: BackendKind) async throws {
        // The application lets go of the server (no stop) while connections are open and echoing,
        // then shuts the pool down: the connections must still close, with every completion reaching
        // a live object, every buffer back and every descriptor closed. With and without coalescing.
        var ports: [UInt16] = []
        for coalesces in [true, false] {
            let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
            var clients: [RawClient] = []
            do {
                var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
                configuration.connection.coalescesWrites = coalesces
                let server = try TCPServer(pool: pool, configuration: configuration) { EchoHandler() }
                ports.append(server.localAddress.port)
                for _ in 0..<5 { clients.append(try RawClient(connectingTo: server.localAddress)) }
                for client in clients {
                    #expect(client.send(Array("ping".utf8)) == 4)
                    #expect(client.receive(count: 4) == Array("ping".utf8))
                }
                #expect(server.statistics.active == 5)
            }
            pool.shutdown()
            #expect(buffersInUse(pool) == 0)
            for client in clients {
                #expect(client.receiveUntilClosed().bytes.isEmpty, "the server side closed")
                client.close()
            }
        }
        #expect(openSockets(ports: ports).isEmpty, "every socket of this test is closed")
    }
}
