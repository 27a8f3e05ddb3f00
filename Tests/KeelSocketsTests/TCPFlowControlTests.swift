import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

/// Echoes and records the largest write queue it ever saw.
struct QueueWatchingEcho: TCPConnectionHandler {
    let peak: PeakCounter
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
        peak.observe(connection.queuedWriteBytes)
    }
}

final class PeakCounter: Sendable {
    private let value = Atomic<Int>(0)
    func observe(_ n: Int) { if n > value.load(ordering: .relaxed) { value.store(n, ordering: .relaxed) } }
    var peak: Int { value.load(ordering: .relaxed) }
}

/// Writes `count` numbered 16 KiB messages at once to a peer that is not reading yet, then closes
/// gracefully, and reports what flow control did.
struct BurstWriter: TCPConnectionHandler {
    struct Report: Sendable, Equatable {
        var droppedWrites: Int
        var droppedBytes: Int
        var reason: TCPCloseReason
        var limitCallbacks: Int
        var writabilityChanges: [Bool]
    }

    static let messageBytes = 16 * 1024
    let count: Int
    let reports: Collector<Report>
    var limitCallbacks = 0
    var writabilityChanges: [Bool] = []

    mutating func connectionEstablished(_ connection: TCPConnection) {
        for index in 0..<count {
            guard var buffer = try? connection.thread.bufferPool.acquire() else { break }
            buffer.withUnsafeMutableWritableBytes { region in
                for i in 0..<Self.messageBytes { region[i] = UInt8(truncatingIfNeeded: index) }
            }
            buffer.moveWriterIndex(forwardBy: Self.messageBytes)
            connection.write(buffer)
        }
        connection.close()
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionWriteLimitExceeded(_ connection: TCPConnection, queuedBytes: Int) { limitCallbacks += 1 }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        writabilityChanges.append(isWritable)
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        reports.add(Report(droppedWrites: connection.droppedWrites, droppedBytes: connection.droppedWriteBytes,
                           reason: reason, limitCallbacks: limitCallbacks, writabilityChanges: writabilityChanges))
    }
}

@Suite("TCP flow control", .serialized)
struct TCPFlowControlTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func echoStopsReadingFromAClientThatDoesNotReadSoTCPPushesBack(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let peak = PeakCounter()
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.flowControl = TCPFlowControl(highWatermark: 256 * 1024, lowWatermark: 64 * 1024,
                                                   pausesReadingWhileNotWritable: true)
        let server = try TCPServer(pool: pool, configuration: configuration) { QueueWatchingEcho(peak: peak) }
        let address = server.localAddress
        let offered = 64 * 1024 * 1024
        let (accepted, echoedCorrectly) = await onPlainThread { () -> (Int, Bool) in
            guard let client = try? RawClient(connectingTo: address) else { return (0, false) }
            defer { client.close() }
            // Send without reading until the kernel pushes back for a while.
            let flags = fcntl(client.fd, F_GETFL)
            _ = fcntl(client.fd, F_SETFL, flags | O_NONBLOCK)
            let chunk = [UInt8](repeating: 0x42, count: 64 * 1024)
            var sent = 0
            var idleSince = ContinuousClock.now
            while sent < offered && ContinuousClock.now - idleSince < .milliseconds(300) {
                let n = chunk.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    sent += n
                    idleSince = ContinuousClock.now
                } else {
                    usleep(1_000)
                }
            }
            // Now read back everything that was accepted: nothing may be lost.
            _ = fcntl(client.fd, F_SETFL, flags)
            let back = client.receive(count: sent)
            if back.count != sent { print("PUSHBACK sent \(sent) got back \(back.count)") }
            return (sent, back.count == sent && back.allSatisfy { $0 == 0x42 })
        }
        #expect(accepted < offered, "the client was pushed back (sent \(accepted) of \(offered) bytes)")
        #expect(echoedCorrectly, "every accepted byte came back")
        // Past the high watermark the server stops reading; what had already been received is held
        // until the queue drains, so the queue never exceeds the watermark by more than one buffer.
        #expect(peak.peak <= 256 * 1024 + 16 * 1024, "the server queued \(peak.peak) bytes")
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }

    /// Runs a BurstWriter server under `flowControl` against a client that reads only after a pause.
    func burst(
        _ backend: BackendKind, count: Int, _ flowControl: TCPFlowControl
    ) async throws -> (report: BurstWriter.Report?, received: [UInt8]) {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let reports = Collector<BurstWriter.Report>()
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.flowControl = flowControl
        let server = try TCPServer(pool: pool, configuration: configuration) { BurstWriter(count: count, reports: reports) }
        let address = server.localAddress
        let received = await onPlainThread { () -> [UInt8] in
            guard let client = try? RawClient(connectingTo: address) else { return [] }
            defer { client.close() }
            var size: Int32 = 64 * 1024  // a small receive window, so the server's queue fills
            setsockopt(client.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            usleep(200_000)  // the server writes everything while nobody reads
            // Each message is 16 KiB of its index: record the index of each message received.
            let (bytes, _) = client.receiveUntilClosed()
            return stride(from: 0, to: bytes.count, by: BurstWriter.messageBytes).map { bytes[$0] }
        }
        let report = await reports.wait(for: 1).first
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
        return (report, received)
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func hardLimitClosesASlowConsumer(backend: BackendKind) async throws {
        let (report, received) = try await burst(backend, count: 512, .init(hardLimit: 1024 * 1024, policy: .refuse))
        #expect(report?.reason == .slowConsumer)
        #expect(received.count < 512)
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func dropNewestKeepsThePrefixAndCountsEveryDroppedByte(backend: BackendKind) async throws {
        let count = 512
        let (report, received) = try await burst(backend, count: count, .init(hardLimit: 1024 * 1024, policy: .dropNewest))
        let report_ = try #require(report)
        #expect(report_.reason == .local)
        #expect(report_.droppedWrites > 0)
        #expect(report_.droppedBytes == report_.droppedWrites * BurstWriter.messageBytes)
        #expect(received.count + report_.droppedWrites == count, "every message was either delivered or counted as dropped")
        #expect(received == (0..<received.count).map { UInt8(truncatingIfNeeded: $0) }, "the oldest were kept, in order")
        #expect(report_.writabilityChanges.first == false)
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func dropOldestKeepsTheNewestAndCountsEveryDroppedByte(backend: BackendKind) async throws {
        let count = 512
        let (report, received) = try await burst(backend, count: count, .init(hardLimit: 1024 * 1024, policy: .dropOldest))
        let report_ = try #require(report)
        #expect(report_.droppedWrites > 0)
        #expect(received.count + report_.droppedWrites == count)
        #expect(received.last == UInt8(truncatingIfNeeded: count - 1), "the newest message was kept")
        #expect(zip(received, received.dropFirst()).allSatisfy { $0 != $1 }, "no message arrived twice")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func notifyPolicyCallsTheHandlerAndKeepsEverything(backend: BackendKind) async throws {
        let count = 512  // 8 MiB: more than the kernel's socket buffers absorb, so the queue passes 1 MiB
        let (report, received) = try await burst(backend, count: count, .init(hardLimit: 1024 * 1024, policy: .notify))
        let report_ = try #require(report)
        #expect(report_.limitCallbacks > 0)
        #expect(report_.droppedWrites == 0)
        #expect(received.count == count)
    }
}
