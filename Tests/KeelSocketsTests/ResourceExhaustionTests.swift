import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

/// Echoes, except on a connection whose first byte is `H`: that one hoards every buffer it receives
/// and is closed (letting them all go) half a second after its first read: a handler that holds memory.
struct HoardingOrEchoHandler: TCPConnectionHandler {
    let hoarded: Collector<Int>
    var hoarding: Bool?
    var held: [DetachedBufferBox] = []

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        if hoarding == nil {
            hoarding = buffer.readableBytes > 0 && buffer.readableByteArray[0] == UInt8(ascii: "H")
        }
        guard hoarding == true else { return connection.write(buffer) }
        hoarded.add(buffer.readableBytes)
        held.append(DetachedBufferBox(buffer))
        if held.count == 1 {
            // Let go of everything after half a second: reads that waited for buffers go on.
            let handle = connection.handle
            connection.thread.scheduleTimer(after: .milliseconds(500)) { handle.close(.abortive) }
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        for index in held.indices { _ = held[index].take() }
        held = []
    }
}

/// Echoes `count` messages of `size` bytes over `client`, `pause` microseconds apart, on a plain
/// thread. - Returns: how many came back intact before the first failure.
func echoRepeatedly(_ client: RawClient, count: Int, size: Int = 64, pause: UInt32 = 0) async -> Int {
    await onPlainThread { echoLoop(client, count: count, size: size, pause: pause) }
}

/// The blocking echo loop behind both forms.
func echoLoop(_ client: RawClient, count: Int, size: Int, pause: UInt32) -> Int {
    for i in 0..<count {
        let message = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: size)
        guard client.send(message) == size, client.receive(count: size) == message else { return i }
        if pause > 0 { usleep(pause) }
    }
    return count
}

/// Connects to `address` and echoes as ``echoRepeatedly(_:count:size:pause:)`` does, all on one plain
/// thread (no gap between connecting and the first message, which a read timeout would punish).
func echoRepeatedly(connectingTo address: SocketAddress, count: Int, size: Int = 64, pause: UInt32 = 0) async -> Int {
    await onPlainThread { () -> Int in
        guard let client = try? RawClient(connectingTo: address) else { return 0 }
        defer { client.close() }
        return echoLoop(client, count: count, size: size, pause: pause)
    }
}

/// A new client connects to `address` and gets one echo.
func aNewClientIsServed(at address: SocketAddress) async -> Bool {
    await echoRepeatedly(connectingTo: address, count: 1) == 1
}

@Suite("Resource exhaustion", .serialized)
struct ResourceExhaustionTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aSlowlorisPeerIsClosedByTheReadTimeoutWhileOthersAreServed(backend: BackendKind) async throws {
        // The read timeout is 20 times the well-behaved client's pause between messages, so a client
        // thread stalled by a loaded machine (the suite runs in parallel) is not taken for a slow peer.
        let fixture = try ServerFixture(backend, .echo) { $0.connection.readTimeout = .seconds(1) }
        let address = fixture.server.localAddress
        // One byte every 1.6 s: each gap is longer than the read timeout.
        async let slowPeerClosed = onPlainThread { () -> Bool in
            guard let client = try? RawClient(connectingTo: address) else { return false }
            defer { client.close() }
            var scratch = [UInt8](repeating: 0, count: 64)
            for _ in 0..<4 {
                _ = client.send([UInt8(ascii: "x")])
                usleep(1_600_000)
                while true {
                    let n = recv(client.fd, &scratch, scratch.count, Int32(MSG_DONTWAIT))
                    if n == 0 { return true }  // closed by the server
                    if n < 0 { if errno == EAGAIN || errno == EWOULDBLOCK { break } else { return true } }
                }
            }
            return false
        }
        // A well-behaved client echoes during the slow peer's life and after it.
        async let goodEchoes = echoRepeatedly(connectingTo: address, count: 60, pause: 50_000)
        #expect(await slowPeerClosed, "the slow peer was closed")
        #expect(await goodEchoes == 60, "the well-behaved client was served throughout")
        #expect(await fixture.reasons.wait(for: 1).contains(.readTimeout))
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func reachingTheBufferPoolsCapMakesReadsWaitNotFail(backend: BackendKind) async throws {
        // 32 buffers of 16 KiB in all; the kernel is lent 8 of them for pooled receives (io_uring).
        let poolConfiguration = BufferPoolConfiguration(bufferSize: 16 * 1024, buffersPerSlab: 8, maximumBytes: 32 * 16 * 1024)
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, bufferPool: poolConfiguration,
                                                   workPoolThreadCount: 1, providedBuffersPerThread: 8))
        let hoarded = Collector<Int>()
        let server = try TCPServer(pool: pool, configuration: .init()) { HoardingOrEchoHandler(hoarded: hoarded) }
        let address = server.localAddress
        // The hoarder sends 1 MiB and never reads: the server's pool runs dry.
        let hoarder = try RawClient(connectingTo: address)
        defer { hoarder.close() }
        _ = await onPlainThread { () -> Int in
            var payload = [UInt8](repeating: 0x41, count: 64 * 1024)
            payload[0] = UInt8(ascii: "H")
            var sent = 0
            for _ in 0..<16 {
                // Once the server's pool is at its cap and the socket buffers are full, sends stall:
                // stop at the first one that times out (how much the kernel buffers varies).
                let count = hoarder.send(payload)
                sent += max(0, count)
                if count < payload.count { break }
            }
            return sent
        }
        #expect(await eventually { pool.threads[0].bufferPool.statistics.failedAcquisitions > 0 || hoarded.snapshot.reduce(0, +) >= 16 * 16 * 1024 },
                "the hoarder took the pool to its cap")
        // A well-behaved client meanwhile: its read waits for buffers instead of failing, and its echo
        // arrives once the hoarder's buffers are back (the hoarder is closed after half a second).
        let client = try RawClient(connectingTo: address)
        defer { client.close() }
        let echoed = await echoRepeatedly(client, count: 20, size: 512) == 20
        #expect(echoed, "the well-behaved client was served, after waiting for buffers")
        await server.stop(closing: .abortive)
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aConnectStormOfTenTimesTheLimitNeverTakesTheServerPastIt(backend: BackendKind) async throws {
        let limit = 20
        let fixture = try ServerFixture(backend, .echo) {
            $0.maximumConnections = limit
            $0.reusePort = false
        }
        let address = fixture.server.localAddress
        let good = try RawClient(connectingTo: address)
        defer { good.close() }
        #expect(await eventually { fixture.server.statistics.active == 1 })
        // The storm: 10× the limit connect at once and hold on for a moment; meanwhile the well-behaved
        // client keeps echoing, and the server's connection count is sampled.
        async let stormed = onPlainThread { () -> Int in
            var storm: [RawClient] = []
            for _ in 0..<(10 * limit) {
                if let client = try? RawClient(connectingTo: address) { storm.append(client) }
            }
            usleep(500_000)
            storm.forEach { $0.close() }
            return storm.count
        }
        async let goodEchoes = echoRepeatedly(good, count: 40, pause: 20_000)
        var peak = 0
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline {
            peak = max(peak, fixture.server.statistics.active)
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(await stormed == 10 * limit, "the kernel's backlog took every connect")
        #expect(await goodEchoes == 40, "the well-behaved client was served during the storm")
        #expect(peak <= limit, "never more than \(limit) connections open (peak \(peak))")
        #expect(fixture.server.statistics.accepted + fixture.server.statistics.refused >= limit)
        // After the storm: the server admits and serves again.
        #expect(await eventually { fixture.server.statistics.active == 1 })
        let after = await aNewClientIsServed(at: address)
        #expect(after, "a new client is served after the storm (statistics: \(fixture.server.statistics))")
        await fixture.finish()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aConnectStormOfTenTimesTheAcceptRateIsAdmittedAtThatRate(backend: BackendKind) async throws {
        let rate = 40
        let fixture = try ServerFixture(backend, .echo) {
            $0.maximumAcceptRate = rate
            $0.reusePort = false
        }
        let address = fixture.server.localAddress
        let good = try RawClient(connectingTo: address)
        defer { good.close() }
        #expect(await eventually { fixture.server.statistics.active == 1 })
        try await Task.sleep(for: .milliseconds(1_100))  // a fresh one-second window for the storm
        let start = ContinuousClock.now
        async let storm = onPlainThread { () -> [RawClient] in
            (0..<(10 * rate)).compactMap { _ in try? RawClient(connectingTo: address) }
        }
        async let goodEchoes = echoRepeatedly(good, count: 40, pause: 25_000)
        // Within the storm's first window, at most `rate` are admitted. Windows open at the first admission
        // after the last one expired, so by `elapsed` after the storm began at most floor(elapsed) + 1 windows
        // have opened (a sleep that overshoots under load widens the bound instead of failing the test).
        try await Task.sleep(for: .milliseconds(700))
        let admittedEarly = fixture.server.statistics.accepted - 1
        let elapsed = ContinuousClock.now - start
        let windowsOpened = Int(elapsed.components.seconds) + 1
        let clients = await storm
        #expect(clients.count == 10 * rate, "the kernel's backlog took every connect")
        #expect(
            admittedEarly <= rate * windowsOpened,
            "\(admittedEarly) admitted within \(elapsed), at most \(rate) per window (\(windowsOpened) windows)")
        #expect(await goodEchoes == 40, "the well-behaved client was served during the storm")
        // Every storm connection is admitted over the following windows, or refused when the parked
        // queue overflowed; none is lost.
        #expect(await eventually(timeout: .seconds(20)) {
            let statistics = fixture.server.statistics
            return statistics.accepted + statistics.refused == 10 * rate + 1
        })
        #expect(ContinuousClock.now - start >= .seconds(2), "admissions were spread over several windows")
        clients.forEach { $0.close() }
        // 400 peers closing: a liveness check, with room for a machine busy with other test processes.
        #expect(await eventually(timeout: .seconds(30)) { fixture.server.statistics.active == 1 },
                "statistics: \(fixture.server.statistics), close reasons seen: \(fixture.reasons.snapshot.count)")
        let after = await aNewClientIsServed(at: address)
        #expect(after, "a new client is served after the storm (statistics: \(fixture.server.statistics))")
        await fixture.finish()
    }
}
