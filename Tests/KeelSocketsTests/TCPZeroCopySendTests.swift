import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

/// Writes `count` patterned 16 KiB buffers at once (so the queue holds many above the threshold),
/// then closes gracefully.
struct PatternWriter: TCPConnectionHandler {
    static let bufferBytes = 16 * 1024
    let count: Int
    let closed: Collector<TCPCloseReason>

    /// Buffer `k` holds `k` in its first 8 bytes, then this pattern. Filled and checked in bulk: byte
    /// loops are slow in debug builds under ASan, and starved the rest of the parallel suite.
    static let pattern: [UInt8] = (0..<bufferBytes).map { UInt8(truncatingIfNeeded: $0 &* 31) }

    /// The first 16 KiB block of `bytes` that is not buffer `k` at position `k`, or nil.
    static func firstWrongBlock(_ bytes: [UInt8]) -> Int? {
        bytes.withUnsafeBytes { all in
            pattern.withUnsafeBytes { expected in
                for k in 0..<(all.count / bufferBytes) {
                    let block = all.baseAddress! + k * bufferBytes
                    if block.loadUnaligned(as: UInt64.self) != UInt64(k)
                        || memcmp(block + 8, expected.baseAddress! + 8, bufferBytes - 8) != 0 { return k }
                }
                return nil
            }
        }
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        for buffer in 0..<count {
            guard var out = try? connection.thread.bufferPool.acquire() else { return connection.close(.abortive) }
            out.withUnsafeMutableWritableBytes { region in
                Self.pattern.withUnsafeBytes { region.copyMemory(from: $0) }
                region.storeBytes(of: UInt64(buffer), as: UInt64.self)
            }
            out.moveWriterIndex(forwardBy: Self.bufferBytes)
            connection.write(out)
        }
        connection.close()
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) { closed.add(reason) }
}

@Suite("TCP zero-copy send")
struct TCPZeroCopySendTests {
    /// Waits until the thread has `inUse` buffers out of its pool (10 s at most).
    func buffersReturn(to inUse: Int, _ pool: IOPool) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if await threadState(pool).1 == inUse { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    /// The thread's zero-copy counters and buffers in use, read on the thread.
    func threadState(_ pool: IOPool) async -> (IOThread.ZeroCopySendStatistics, Int) {
        await onThread(pool.threads[0]) { finish in
            finish((pool.threads[0].zeroCopySendStatistics, pool.threads[0].bufferPool.statistics.inUse))
        }
    }

    /// How the server is set up: the feature off, on (each connection stops once the kernel reports
    /// that it copied), or on even when the kernel copies (from registered pool slabs, or without them).
    enum Mode: String, CaseIterable, Sendable {
        case off, testsTheRoute, always, alwaysUnregistered
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest, Mode.allCases)
    func largeWritesArriveIntactAndTheirBuffersComeBackAfterTheNotification(backend: BackendKind, mode: Mode) async throws {
        let features = switch mode {
        case .off: KernelFeatures.all.subtracting(.zeroCopySend)
        case .alwaysUnregistered: KernelFeatures.all.subtracting(.registeredBuffers)
        case .testsTheRoute, .always: KernelFeatures.all
        }
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1, kernelFeatures: features))
        defer { pool.shutdown() }
        let closed = Collector<TCPCloseReason>()
        let count = 96  // 1.5 MiB: more than one sendmsg (64 buffers at most), light beside the parallel suite under ASan
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.zeroCopySendThreshold = 32 * 1024
        configuration.connection.zeroCopyEvenWhenCopied = mode == .always || mode == .alwaysUnregistered
        configuration.connection.flowControl = TCPFlowControl(highWatermark: 8 << 20, lowWatermark: 1 << 20)
        let server = try TCPServer(pool: pool, configuration: configuration) { PatternWriter(count: count, closed: closed) }
        let (_, inUseBefore) = await threadState(pool)
        let received = try await blocking { () -> [UInt8] in
            let client = try TestClient(server.localAddress)
            defer { client.close() }
            return client.read(count * PatternWriter.bufferBytes + 1)
        }
        #expect(received.count == count * PatternWriter.bufferBytes)
        let firstWrong = PatternWriter.firstWrongBlock(received)
        #expect(firstWrong == nil, "first wrong 16 KiB block: \(firstWrong ?? -1)")
        #expect(await closed.wait(for: 1) == [.local])
        let usesZeroCopy = mode != .off && backend == .ioUring && pool.kernelFeatures.contains(.zeroCopySend)
        #expect(await buffersReturn(to: inUseBefore, pool), "every buffer back in the pool")
        let (statistics, _) = await threadState(pool)
        if usesZeroCopy {
            // Loopback never sends from user pages: the kernel reports each one copied, so a connection
            // that tests its route stops after the first.
            #expect(mode == .testsTheRoute ? statistics.notified == 1 : statistics.notified > 1, "\(statistics)")
            #expect(statistics.copied == statistics.notified)
            // The writer's 96 buffers are consecutive chunks: most sends lie in one slab and name it.
            if pool.kernelFeatures.contains(.registeredBuffers) {
                #expect(statistics.fromRegisteredBuffers > 0, "\(statistics)")
            } else {
                #expect(statistics.fromRegisteredBuffers == 0, "\(statistics)")
            }
        } else {
            #expect(statistics.notified == 0)
            #expect(statistics.fromRegisteredBuffers == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aResetWhileZeroCopySendsAreInFlightLosesNoBufferAndClosesOnce(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let closed = Collector<TCPCloseReason>()
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.zeroCopySendThreshold = 16 * 1024
        configuration.connection.zeroCopyEvenWhenCopied = true
        configuration.connection.flowControl = TCPFlowControl(highWatermark: 16 << 20, lowWatermark: 1 << 20)
        let server = try TCPServer(pool: pool, configuration: configuration) { PatternWriter(count: 96, closed: closed) }
        let (_, inUseBefore) = await threadState(pool)
        try await blocking {
            // A small window that reads a little and then resets: sends are queued and in flight.
            let client = try TestClient(server.localAddress, receiveBuffer: 4096)
            _ = client.read(64 * 1024)
            var linger = linger(l_onoff: 1, l_linger: 0)
            setsockopt(client.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<linger>.size))
            client.close()
        }
        let reasons = await closed.wait(for: 1)
        #expect(reasons == [.reset] || reasons == [.local], "\(reasons)")
        #expect(await buffersReturn(to: inUseBefore, pool), "every buffer back in the pool")
    }
}

/// Writes what the test hands it: `pending` 16 KiB buffers per call of ``EmbeddedConnection/withConnection(_:)``.
struct SilentHandler: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

/// Zero-copy's buffer lifetimes, in memory: the kernel's notification is released by the test.
@Suite("TCP zero-copy send, in memory")
struct TCPZeroCopyInMemoryTests {
    static let options = TCPConnectionOptions(zeroCopySendThreshold: 32 * 1024)

    /// Writes `count` 16 KiB buffers of `byte` at once.
    func write(_ count: Int, of byte: UInt8, on test: EmbeddedConnection<SilentHandler>) {
        test.withConnection { connection in
            for _ in 0..<count {
                var buffer = try! connection.thread.bufferPool.acquire()
                buffer.withUnsafeMutableWritableBytes { region in
                    _ = memset(region.baseAddress!, Int32(byte), PatternWriter.bufferBytes)
                }
                buffer.moveWriterIndex(forwardBy: PatternWriter.bufferBytes)
                connection.write(buffer)
            }
        }
    }

    @Test func buffersAZeroCopySendReadStayOutOfThePoolUntilTheNotification() {
        let test = EmbeddedConnection(handler: SilentHandler(), options: Self.options, simulatesZeroCopySend: true)
        write(4, of: 1, on: test)
        #expect(test.takeWritten() == [UInt8](repeating: 1, count: 4 * PatternWriter.bufferBytes))
        #expect(test.heldZeroCopyNotifications == 1)
        #expect(test.bufferStatistics.inUse == 4, "the kernel may still read them")
        #expect(test.connection.queuedWriteBytes == 0)
        test.releaseZeroCopyNotifications(copied: false)
        #expect(test.bufferStatistics.inUse == 0)

        // The route sends from pages: the next large write goes zero-copy too; a small one copies.
        write(3, of: 2, on: test)
        #expect(test.heldZeroCopyNotifications == 1)
        test.releaseZeroCopyNotifications(copied: false)
        write(1, of: 3, on: test)
        #expect(test.heldZeroCopyNotifications == 0)
        #expect(test.takeWritten().count == 4 * PatternWriter.bufferBytes)
        #expect(test.finish().isClean)
    }

    @Test func aRouteWhereTheKernelCopiesAnywayGoesBackToPlainSends() {
        let test = EmbeddedConnection(handler: SilentHandler(), options: Self.options, simulatesZeroCopySend: true)
        write(4, of: 1, on: test)
        // While the first notification is out, the route is untested: the next send copies.
        write(4, of: 2, on: test)
        #expect(test.heldZeroCopyNotifications == 1)
        // While a notification is out, whatever leaves the queue waits with it (the plain send's too).
        #expect(test.bufferStatistics.inUse == 8)
        test.releaseZeroCopyNotifications(copied: true)
        write(4, of: 3, on: test)
        #expect(test.heldZeroCopyNotifications == 0, "the kernel copied: no more zero-copy on this connection")
        #expect(test.bufferStatistics.inUse == 0)
        let written = test.takeWritten()
        #expect(written == [UInt8](repeating: 1, count: 4 * 16384) + [UInt8](repeating: 2, count: 4 * 16384) + [UInt8](repeating: 3, count: 4 * 16384))
        #expect(test.finish().isClean)
    }

    @Test func aPartialZeroCopySendKeepsItsHeadBufferUntilTheNotificationEvenWhenALaterSendFinishesIt() {
        let test = EmbeddedConnection(handler: SilentHandler(), options: Self.options, simulatesZeroCopySend: true)
        test.sendWindow = 40 * 1024  // the first send takes 2.5 buffers
        write(4, of: 7, on: test)
        #expect(test.heldZeroCopyNotifications == 1)
        #expect(test.takeWritten().count == 40 * 1024)
        test.sendWindow = 1 << 20  // the rest goes out in a later send (a plain one: the route is untested)
        test.run()
        #expect(test.takeWritten().count == 24 * 1024)
        #expect(test.connection.queuedWriteBytes == 0)
        #expect(test.bufferStatistics.inUse == 4, "the half-sent buffer too: the first send may still read it")
        test.releaseZeroCopyNotifications(copied: false)
        #expect(test.bufferStatistics.inUse == 0)
        #expect(test.finish().isClean)
    }

    @Test func aCloseWaitsForTheNotificationBeforeTheConnectionFinishes() {
        let test = EmbeddedConnection(handler: SilentHandler(), options: Self.options, simulatesZeroCopySend: true)
        write(4, of: 1, on: test)
        test.withConnection { $0.close(.abortive) }
        #expect(test.isClosed == false, "the kernel may still read the buffers: the connection has not finished")
        #expect(test.bufferStatistics.inUse == 4)
        test.releaseZeroCopyNotifications(copied: true)
        #expect(test.isClosed)
        #expect(test.finish().isClean)
    }
}
