import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// A loop iteration's datagrams leave together: runs to one destination segmented (UDP GSO), the rest
/// with sendmmsg.
@Suite("UDP coalesced sends", .serialized)
struct UDPCoalescingTests {
    /// Sends `sizes.count` datagrams in one callback, datagram `i` of `sizes[i]` bytes to
    /// `destinations[i % destinations.count]`, numbered in its first two bytes.
    func burst(_ socket: UDPSocket, sizes: [Int], to destinations: [SocketAddress]) async -> Int {
        await onThread(socket.thread) { finish in
            var queued = 0
            for (i, size) in sizes.enumerated() {
                var buffer = try! socket.thread.bufferPool.acquire()
                var bytes = [UInt8](repeating: 0xA5, count: size)
                bytes[0] = UInt8(truncatingIfNeeded: i)
                bytes[1] = UInt8(truncatingIfNeeded: i >> 8)
                buffer.append(contentsOf: bytes)
                if socket.send(buffer, to: destinations[i % destinations.count]) == .queued { queued += 1 }
            }
            finish(queued)
        }
    }

    func number(_ datagram: UDPRecorder.Datagram) -> Int { Int(datagram.bytes[0]) | Int(datagram.bytes[1]) << 8 }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest, [true, false])
    func aBurstToOnePeerLeavesInSegmentedSendsAndArrivesWholeAndInOrder(backend: BackendKind, segmentation: Bool) async throws {
        let features = segmentation ? KernelFeatures.all : KernelFeatures.all.subtracting(.udpSegmentation)
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1, kernelFeatures: features))
        defer { pool.shutdown() }
        let received = Collector<UDPRecorder.Datagram>()
        let sink = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, receiveBufferSize: 4 << 20),
                                      handler: UDPRecorder(received: received))
        let sender = try UDPSocket.bind(pool: pool, on: sink.thread, configuration: .init(host: "127.0.0.1", port: 0, sendBufferSize: 4 << 20),
                                        handler: UDPRecorder(received: Collector()))
        // 200 of 100 bytes, then one of 40 (a shorter one may end a run), then 20 of 100 again.
        let sizes = [Int](repeating: 100, count: 200) + [40] + [Int](repeating: 100, count: 20)
        #expect(await burst(sender, sizes: sizes, to: [sink.localAddress]) == sizes.count, "queued until the flush")
        let arrived = await received.wait(for: sizes.count)
        #expect(arrived.map(number) == Array(0..<sizes.count), "every datagram, once, in order (one flow on loopback)")
        #expect(arrived.map(\.length) == sizes)
        #expect(arrived.allSatisfy { $0.sender == sender.localAddress })
        let statistics = try awaitStatistics(sender)
        #expect(statistics.sent == sizes.count && statistics.failed == 0)
        if segmentation && pool.kernelFeatures.contains(.udpSegmentation) {
            #expect(statistics.segmentedSends >= 4, "runs of at most 64: \(statistics)")
            #expect(statistics.segmentedDatagrams > sizes.count / 2)
        } else {
            #expect(statistics.segmentedSends == 0)
        }
        sender.close()
        #expect(await eventually { buffersInUse(pool) == 0 })
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func datagramsToAlternatingPeersGoOutWithSendmmsgInOrderPerPeer(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let received = [Collector<UDPRecorder.Datagram>(), Collector<UDPRecorder.Datagram>()]
        let sinks = try received.map { collector in
            try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, receiveBufferSize: 1 << 20),
                               handler: UDPRecorder(received: collector))
        }
        let sender = try UDPSocket.bind(pool: pool, on: sinks[0].thread, configuration: .init(host: "127.0.0.1", port: 0),
                                        handler: UDPRecorder(received: Collector()))
        let sizes = [Int](repeating: 64, count: 300)
        #expect(await burst(sender, sizes: sizes, to: sinks.map(\.localAddress)) == sizes.count)
        for (index, collector) in received.enumerated() {
            let arrived = await collector.wait(for: sizes.count / 2)
            #expect(arrived.map(number) == Array(stride(from: index, to: sizes.count, by: 2)))
        }
        let statistics = try awaitStatistics(sender)
        #expect(statistics.sent == sizes.count && statistics.segmentedSends == 0, "no run to segment: \(statistics)")
        sender.close()
        #expect(await eventually { buffersInUse(pool) == 0 })
    }
}

/// Echoes runs whole (as keel-udp-echo does).
struct UDPRunEcho: UDPHandler {
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        socket.send(datagram, to: sender)
    }

    mutating func datagramRunReceived(_ run: consuming IOBuffer, segmentSize: Int, from sender: SocketAddress, on socket: UDPSocket) {
        socket.send(run: run, segmentSize: segmentSize, to: sender)
    }
}

/// Runs of datagrams received in one piece (UDP GRO) where the pool's buffers hold a whole run.
@Suite("UDP received runs", .serialized)
struct UDPReceivedRunTests {
    static let bigBuffers = BufferPoolConfiguration(bufferSize: 68 * 1024, buffersPerSlab: 16)

    func burst(_ socket: UDPSocket, count: Int, size: Int, to destination: SocketAddress) async {
        await onThread(socket.thread) { finish in
            for i in 0..<count {
                var buffer = try! socket.thread.bufferPool.acquire()
                var bytes = [UInt8](repeating: 0x3C, count: size)
                bytes[0] = UInt8(truncatingIfNeeded: i)
                bytes[1] = UInt8(truncatingIfNeeded: i >> 8)
                buffer.append(contentsOf: bytes)
                socket.send(buffer, to: destination)
            }
            finish(())
        }
    }

    func number(_ datagram: UDPRecorder.Datagram) -> Int { Int(datagram.bytes[0]) | Int(datagram.bytes[1]) << 8 }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aSegmentedBurstArrivesAsRunsAndTheDefaultHandlerSeesEachDatagramInOrder(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, bufferPool: Self.bigBuffers, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let received = Collector<UDPRecorder.Datagram>()
        let sink = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, receiveBufferSize: 4 << 20),
                                      handler: UDPRecorder(received: received))
        let sender = try UDPSocket.bind(pool: pool, on: sink.thread, configuration: .init(host: "127.0.0.1", port: 0),
                                        handler: UDPRecorder(received: Collector()))
        await burst(sender, count: 150, size: 200, to: sink.localAddress)
        let arrived = await received.wait(for: 150)
        #expect(arrived.map(number) == Array(0..<150))
        #expect(arrived.allSatisfy { $0.length == 200 && !$0.truncated && $0.sender == sender.localAddress })
        let statistics = try awaitStatistics(sink)
        #expect(statistics.received == 150 && statistics.receiveDrops == 0)
        if pool.kernelFeatures.isSuperset(of: [.udpSegmentation, .udpReceiveCoalescing]) {
            #expect(statistics.receivedRuns >= 3, "runs of at most 64: \(statistics)")
        } else {
            #expect(statistics.receivedRuns == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aSocketReceivesRunsOnlyWhereItsPoolBuffersHoldOne(backend: BackendKind) throws {
        let small = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { small.shutdown() }
        let big = try IOPool(configuration: .init(threadCount: 1, backend: backend, bufferPool: Self.bigBuffers, workPoolThreadCount: 1))
        defer { big.shutdown() }
        let bigWithoutRuns = try IOPool(configuration: .init(threadCount: 1, backend: backend, bufferPool: Self.bigBuffers, workPoolThreadCount: 1,
                                                             kernelFeatures: KernelFeatures.all.subtracting(.udpReceiveCoalescing)))
        defer { bigWithoutRuns.shutdown() }
        #expect(small.threads[0].bufferPool.bufferSize < UDPSocket.runBufferSize)
        func bind(_ pool: IOPool, asksForRuns: Bool = true) throws -> UDPSocket {
            try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, receivesDatagramRuns: asksForRuns),
                               handler: UDPRecorder(received: Collector()))
        }
        let kernelHasRuns = big.kernelFeatures.contains(.udpReceiveCoalescing)
        #expect(try bind(small).receivesDatagramRuns == false)
        #expect(try bind(big).receivesDatagramRuns == kernelHasRuns)
        #expect(try bind(big, asksForRuns: false).receivesDatagramRuns == false)
        #expect(try bind(bigWithoutRuns).receivesDatagramRuns == false)
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest, [true, false])
    func runsEchoedWholeComeBackWhole(backend: BackendKind, runs: Bool) async throws {
        let features = runs ? KernelFeatures.all : KernelFeatures.all.subtracting(.udpReceiveCoalescing)
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, bufferPool: Self.bigBuffers, workPoolThreadCount: 1,
                                                   kernelFeatures: features))
        defer { pool.shutdown() }
        let echo = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, receiveBufferSize: 4 << 20),
                                      handler: UDPRunEcho())
        let received = Collector<UDPRecorder.Datagram>()
        // The client takes datagrams one by one (no runs), so it sees every echo as a datagram.
        let client = try UDPSocket.bind(pool: pool, on: echo.thread,
                                        configuration: .init(host: "127.0.0.1", port: 0, receiveBufferSize: 4 << 20, receivesDatagramRuns: false),
                                        handler: UDPRecorder(received: received))
        await burst(client, count: 130, size: 64, to: echo.localAddress)
        let arrived = await received.wait(for: 130)
        #expect(arrived.map(number) == Array(0..<130))
        #expect(arrived.allSatisfy { $0.length == 64 && $0.sender == echo.localAddress })
        let statistics = try awaitStatistics(echo)
        #expect(statistics.sent == 130 && statistics.failed == 0, "\(statistics)")
        if runs && pool.kernelFeatures.contains(.udpReceiveCoalescing) {
            #expect(statistics.receivedRuns >= 3)
        } else {
            #expect(statistics.receivedRuns == 0)
        }
        #expect(await eventually { buffersInUse(pool) == 0 })
    }
}
