import Glibc
import KeelBuffers
import KeelEngine
import KeelGateway
import KeelProxyProtocol
import KeelSockets
import KeelSystem
import KeelTestSupport
import Synchronization
import Testing

/// `count` pseudo-random bytes (a fixed seed: failures repeat).
func patternBytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

/// Sends `bytes` and reads as many back, both on plain threads (a large echo would fill both sides'
/// buffers if one thread did both in turn).
func echoThrough(_ client: TestClient, _ bytes: [UInt8]) async -> [UInt8] {
    async let sent: Void = onPlainThread { client.send(bytes) }
    let back = await onPlainThread { client.read(bytes.count) }
    await sent
    return back
}

@Suite("keel-gateway relaying")
struct GatewayRelayTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func bytesTravelBothWaysIntactOverManyConnections(backend: BackendKind) async throws {
        let echo = try TestBackend(backend, .echo)
        let gateway = try TestGateway(backend, to: [echo.address])
        let address = gateway.address
        let payload = patternBytes(1 << 20)
        // Reads wait up to 20 s: in the full suite, running beside the descriptor-exhaustion tests, a
        // relayed mebibyte has taken ~5 s (the default timeout) on io_uring, before this test's changes too.
        let clients = try await blocking { try (0..<4).map { _ in try TestClient(address, receiveTimeout: 20) } }
        for client in clients {
            let back = await echoThrough(client, payload)
            // A Bool, not `back == payload`: on a mismatch the testing library diffs the two 1 MiB arrays
            // (quadratic), which spun a runtime thread for minutes and stalled the rest of the suite.
            let intact = back == payload
            #expect(intact, "1 MiB came back byte for byte: \(back.count) bytes, first difference at \((0..<min(back.count, payload.count)).first { back[$0] != payload[$0] } ?? -1)")
        }
        for client in clients { client.close() }
        #expect(await eventually { gateway.gateway.statistics.active == 0 })
        let statistics = gateway.gateway.statistics
        #expect(statistics.accepted == 4)
        #expect(statistics.bytesToBackends == 4 << 20 && statistics.bytesToClients == 4 << 20, "\(statistics)")
        #expect(gateway.gateway.backends.first?.connections == 4)
        #expect(await gateway.finish(), "nothing left open or in use")
        await echo.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func halfClosePassesThroughBothWays(backend: BackendKind) async throws {
        let counter = try TestBackend(backend, .countThenAnswer)
        let gateway = try TestGateway(backend, to: [counter.address])
        let address = gateway.address
        let (answer, closed) = try await blocking { () -> ([String], Bool) in
            let client = try TestClient(address)
            defer { client.close() }
            client.send(patternBytes(100_000))
            shutdown(client.fd, Int32(SHUT_WR))  // the back-end reads end of stream, then answers
            return (client.lines(1), client.closedByPeer())
        }
        #expect(answer == ["got 100000"], "the back-end saw every byte, then end of stream, and its answer came back")
        #expect(closed, "the back-end's close reached the client after its answer")
        #expect(await counter.record.closeReasons.wait(for: 1).first?.code == .peerClosed)
        #expect(await gateway.finish())
        await counter.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aProxyHeaderNamesTheClientToTheBackend(backend: BackendKind) async throws {
        let echo = try TestBackend(backend, .echo)
        let gateway = try TestGateway(backend, to: [echo.address]) { $0.sendsProxyHeader = true }
        let address = gateway.address
        let (echoed, clientPort) = try await blocking { () -> ([UInt8], UInt16) in
            let client = try TestClient(address)
            defer { client.close() }
            var local = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(client.fd, $0, &length) } }
            client.send("hello")
            return (client.read(5 + 28), UInt16(bigEndian: local.sin_port))
        }
        // The echo back-end sends the header back too: it arrived first, then the client's bytes.
        let outcome = try echoed.withUnsafeBytes { try ProxyHeaderParser.parse($0) }
        guard case .complete(let header, let length) = outcome else {
            Issue.record("no whole PROXY header came first: \(outcome)")
            return
        }
        #expect(header.version == .v2)
        #expect(header.sourceAddress?.port == clientPort, "the header names the client's own address")
        #expect(header.destinationAddress?.port == address.port)
        #expect(Array(echoed[length...]) == Array("hello".utf8))
        #expect(await gateway.finish())
        await echo.finish()
    }
}

@Suite("keel-gateway back-ends")
struct GatewayBackendTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aRefusingBackendIsMarkedDownAndTheOthersServe(backend: BackendKind) async throws {
        let echo = try TestBackend(backend, .echo)
        let dead = try closedPort()
        let gateway = try TestGateway(backend, to: [dead, echo.address]) { $0.retryBackoff = .seconds(30) }
        let address = gateway.address
        let answers = try await blocking { () -> [[UInt8]] in
            try (0..<6).map { i in
                let client = try TestClient(address)
                defer { client.close() }
                client.send("client \(i)")
                return client.read(8)
            }
        }
        #expect(answers == (0..<6).map { Array("client \($0)".utf8) }, "every client was served, by the live back-end")
        let status = gateway.gateway.backends
        #expect(status[0].isUp == false && status[0].failures == 1, "tried once, then left alone while down: \(status[0])")
        #expect(status[1].isUp && status[1].connections == 6)
        #expect(gateway.gateway.statistics.unrouted == 0)
        #expect(await gateway.finish())
        await echo.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aDownBackendIsTriedAgainAfterItsBackOff(backend: BackendKind) async throws {
        let dead = try closedPort()
        let backoff = Duration.seconds(1)
        let gateway = try TestGateway(backend, to: [dead]) { $0.retryBackoff = backoff }
        let address = gateway.address
        let clientIsClosed = { @Sendable () throws -> Bool in
            let client = try TestClient(address)
            defer { client.close() }
            return client.closedByPeer()
        }
        let beforeFirstFailure = ContinuousClock.now  // the back-end is down until at least a back-off after this
        #expect(try await blocking(clientIsClosed), "with no back-end reachable the client is closed")
        #expect(gateway.gateway.backends[0].failures == 1)
        // Within the back-off, nothing is tried: the client is closed at once and counted. (On a machine
        // so loaded that the back-off passed meanwhile, the attempt is a retry instead.)
        #expect(try await blocking(clientIsClosed))
        if ContinuousClock.now - beforeFirstFailure < backoff {
            #expect(gateway.gateway.backends[0].failures == 1, "no attempt while down")
            #expect(gateway.gateway.statistics.unrouted == 2)
        }
        // After it, the back-end is tried again (and fails again: down for twice as long).
        let failuresBefore = gateway.gateway.backends[0].failures
        try await Task.sleep(for: backoff * 2 + .milliseconds(200))  // past the back-off, even if it doubled
        #expect(try await blocking(clientIsClosed))
        #expect(gateway.gateway.backends[0].failures == failuresBefore + 1, "tried again after the back-off")
        #expect(await gateway.finish())
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aBackendThatNeverAnswersTimesOutAndTheNextServes(backend: BackendKind) async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        let echo = try TestBackend(backend, .echo)
        let gateway = try TestGateway(backend, to: [silent.address, echo.address]) {
            $0.connectTimeout = .milliseconds(300)
            $0.retryBackoff = .seconds(60)
        }
        let address = gateway.address
        let start = ContinuousClock.now
        let answers = try await blocking { () -> [[UInt8]] in
            try (0..<2).map { _ in
                let client = try TestClient(address)
                defer { client.close() }
                client.send("ping")
                return client.read(4)
            }
        }
        #expect(answers == [Array("ping".utf8), Array("ping".utf8)])
        let silentStatus = gateway.gateway.backends[0]
        #expect(silentStatus.failures == 1 && !silentStatus.isUp, "timed out once, then marked down: \(silentStatus)")
        #expect(ContinuousClock.now - start >= .milliseconds(250), "the first client waited for the timeout")
        #expect(await gateway.finish())
        await echo.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aBackendResetMidStreamResetsTheClient(backend: BackendKind) async throws {
        let resetting = try TestBackend(backend, .resetAfterFirstBytes)
        let gateway = try TestGateway(backend, to: [resetting.address])
        let address = gateway.address
        let (ended, resetSeen) = try await blocking { () -> (Bool, Bool) in
            let client = try TestClient(address)
            defer { client.close() }
            client.send("some request")
            var byte: UInt8 = 0
            var total = 0
            while true {
                let n = recv(client.fd, &byte, 1, 0)
                if n <= 0 { return (true, n < 0 && errno == ECONNRESET) }
                total += n
            }
        }
        #expect(ended)
        #expect(resetSeen, "the back-end's reset was passed on as a reset, not an orderly end")
        #expect(await gateway.finish())
        await resetting.finish()
    }
}

@Suite("keel-gateway flow control")
struct GatewayFlowControlTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aStalledClientPushesBackOnTheBackendAndMemoryStaysBounded(backend: BackendKind) async throws {
        let flooder = try TestBackend(backend, .flood(total: 64 << 20))
        let gateway = try TestGateway(backend, to: [flooder.address])
        let address = gateway.address
        let client = try await blocking { try TestClient(address, receiveBuffer: 4096) }
        defer { client.close() }
        // The client reads nothing: the gateway's queue towards it fills, it stops reading the
        // back-end, and TCP pushes back on the back-end, whose own queue then passes its watermark.
        #expect(await eventually { flooder.record.pushedBack.load(ordering: .relaxed) })
        try await Task.sleep(for: .milliseconds(300))
        let inUse = gateway.buffersInUse
        let bufferSize = gateway.pool.threads[0].bufferPool.configuration.bufferSize
        // Bounded by the relay's watermark and receive buffers, whatever the back-end sends: a few hundred
        // KiB of bytes, in buffers that short reads leave partly filled (up to about 1.5 MiB measured).
        #expect(inUse * bufferSize <= 2 << 20, "the relay holds \(inUse) buffers for a stalled client")
        #expect(flooder.record.floodedBytes.load(ordering: .relaxed) < 64 << 20, "the back-end was stopped, not drained")
        // The client goes away while the back-end still sends: the back-end connection is closed too.
        client.close()
        #expect(await flooder.record.closeReasons.wait(for: 1).count == 1)
        #expect(await gateway.finish(), "nothing left open or in use")
        await flooder.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aStalledBackendPushesBackOnTheClientAndMemoryStaysBounded(backend: BackendKind) async throws {
        let stalled = try TestBackend(backend, .stall)
        let gateway = try TestGateway(backend, to: [stalled.address])
        let address = gateway.address
        let client = try await blocking { try TestClient(address) }
        defer { client.close() }
        // The client sends until its sends block (its send buffer full): the gateway stopped reading it.
        let sent = await onPlainThread { () -> Int in
            var timeout = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(client.fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let chunk = [UInt8](repeating: 7, count: 65536)
            var total = 0
            while total < 256 << 20 {
                let n = chunk.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                total += n
            }
            return total
        }
        #expect(sent < 256 << 20, "the client was pushed back after \(sent) bytes")
        let inUse = gateway.buffersInUse
        let bufferSize = gateway.pool.threads[0].bufferPool.configuration.bufferSize
        #expect(inUse * bufferSize <= 2 << 20, "the relay holds \(inUse) buffers for a stalled back-end")
        #expect(await gateway.finish())
        await stalled.finish()
    }
}
