import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// Pauses reading as soon as the connection opens and reports its handle; once resumed, copies what
/// arrives and lets each buffer go at once (so the pool lends its chunk to the ring again while the
/// rest of a bundle is still being handed out), and reports the bytes when `expected` have come.
struct PausedReader: TCPConnectionHandler {
    let expected: Int
    let opened: Collector<TCPConnectionHandle>
    let received: Collector<[UInt8]>
    var bytes: [UInt8] = []

    mutating func connectionEstablished(_ connection: TCPConnection) {
        connection.pauseReading()
        opened.add(connection.handle)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        bytes += buffer.readableByteArray
        if bytes.count >= expected { received.add(bytes) }
    }
}

/// Receive bundles (``KernelFeatures/receiveBundles``): data waiting for a paused connection comes back
/// in one completion carrying several pool buffers, handed to the handler in order.
@Suite("TCP receive bundles")
struct TCPReceiveBundleTests {
    static let runs = backendsUnderTest.contains(.ioUring)

    @Test(.enabled(if: runs), .timeLimit(.minutes(1)), arguments: [true, false])
    func dataWaitingForAPausedConnectionArrivesInOneBundleInOrder(bundlesOn: Bool) async throws {
        let features = bundlesOn ? KernelFeatures.all : KernelFeatures.all.subtracting(.receiveBundles)
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .ioUring, workPoolThreadCount: 1, kernelFeatures: features))
        defer { pool.shutdown() }
        let usesBundles = pool.kernelFeatures.contains(.receiveBundles)
        #expect(usesBundles == (bundlesOn && !KernelFeatures.turnedOffByEnvironment.contains(.receiveBundles)))
        let opened = Collector<TCPConnectionHandle>()
        let received = Collector<[UInt8]>()
        let bufferSize = pool.threads[0].bufferPool.bufferSize
        // Three and a half pool buffers: small enough to sit in the socket's receive queue at once.
        let payload = (0..<(bufferSize * 7 / 2)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) {
            PausedReader(expected: payload.count, opened: opened, received: received)
        }
        let client = try TestClient(server.localAddress)
        defer { client.close() }
        let handle = try #require(await opened.wait(for: 1).first)
        try await blocking { client.send(payload) }
        // Resume once the bytes are in the server socket's queue (loopback delivers during the send).
        handle.execute { $0.resumeReading() }
        let bytes = try #require(await received.wait(for: 1).first)
        #expect(bytes.count == payload.count)
        let intact = bytes == payload  // a Bool: a failed comparison of large arrays diffs for minutes
        #expect(intact, "the bundle's buffers reached the handler in order")
        let statistics = await onThread(pool.threads[0]) { finish in finish(pool.threads[0].receiveBundleStatistics) }
        if usesBundles {
            #expect(statistics.bundles >= 1 && statistics.buffers >= 2, "\(statistics)")
        } else {
            #expect(statistics.bundles == 0)
        }
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
    }
}
