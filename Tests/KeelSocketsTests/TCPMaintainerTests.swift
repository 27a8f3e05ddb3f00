import Glibc
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

@Suite("Connection maintaining", .serialized)
struct TCPMaintainerTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func reconnectsWithBackoffUntilTheServerIsBackAndAfterEveryLoss(backend: BackendKind) async throws {
        // A port with nobody listening on it yet, kept bound (not listening: connects are refused) until
        // the server takes it, so that no test running in parallel, and no connect's own ephemeral port,
        // can take it meanwhile. SO_REUSEADDR on both lets the server bind beside it.
        let probe = try Sockets.makeStreamSocket(family: AF_INET)
        try Sockets.setReuseAddress(probe)
        try Sockets.bind(probe, to: SocketAddress(host: "127.0.0.1", port: 0))
        let address = try Sockets.localAddress(probe)
        var probeOpen = true
        defer { if probeOpen { close(probe) } }

        let clientPool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let maintainer = TCPConnectionMaintainer(
            pool: clientPool, address: address, configuration: .init(connectTimeout: .seconds(1)),
            backoff: .init(initial: .milliseconds(10), maximum: .milliseconds(80))
        ) { EchoHandler() }
        maintainer.start()
        #expect(await eventually { maintainer.failedAttempts >= 3 }, "keeps trying while nobody listens")
        #expect(!maintainer.isConnected)

        // The server comes up: the maintainer connects.
        var server: ServerFixture? = try ServerFixture(backend, .hold) { $0.port = address.port }
        close(probe)
        probeOpen = false
        #expect(await eventually { maintainer.isConnected && maintainer.connectionCount == 1 })

        // The server goes away and comes back: the maintainer notices and reconnects.
        await server?.finish()
        server = nil
        #expect(await eventually { !maintainer.isConnected })
        server = try ServerFixture(backend, .hold) { $0.port = address.port }
        #expect(await eventually { maintainer.isConnected && maintainer.connectionCount == 2 })

        maintainer.stop()
        #expect(await eventually { !maintainer.isConnected })
        await server?.finish()
        clientPool.shutdown()
    }
}
