import KeelEngine
import KeelServer
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

/// Echoes like the built-in echo plugin, and measures its I/O thread's allocations between two
/// message counts (the whole path: read, framing, plugin, write).
final class MeasuringEchoPlugin: ServerPlugin, PluginSession, @unchecked Sendable {
    // @unchecked Sendable: one test connection, so its counters are touched on one I/O thread only.
    let warmup: Int
    let measured: Int
    let results: Collector<UInt64>
    var messages = 0
    var start: UInt64 = 0

    init(warmup: Int, measured: Int, results: Collector<UInt64>) {
        self.warmup = warmup
        self.measured = measured
        self.results = results
    }

    func makeSession(for peer: PluginPeer) -> any PluginSession { self }

    func received(_ message: PluginMessage, from peer: PluginPeer) {
        messages += 1
        if messages == warmup { start = AllocationCounter.currentThread }
        peer.reply(with: message)
        if messages == warmup + measured { results.add(AllocationCounter.currentThread - start) }
    }
}

@Suite("keel-server allocations", .serialized, .enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
struct ServerAllocationTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest, ["raw", "line"])
    func theEchoPluginPathAllocatesNothingPerMessage(backend: BackendKind, framing: String) async throws {
        let (warmup, measured) = (1_000, 5_000)
        let results = Collector<UInt64>()
        var plugins = PluginRegistry.builtIn
        plugins.register(PluginDefinition(name: "measuring-echo", summary: "echo that counts allocations") { _, _ in
            { _ in MeasuringEchoPlugin(warmup: warmup, measured: measured, results: results) }
        })
        let yaml = "endpoints:\n  - { name: echo, listen: 127.0.0.1:0, framing: \(framing), plugin: measuring-echo }\n"
        let configuration = try ConfigurationLoader(plugins: plugins).parse(yaml, file: "test.yaml")
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let host = try await ServerHost(configuration: configuration, pool: pool, plugins: plugins)
        let address = try #require(host.listeners.first?.address)
        let echoedAll = try await blocking { () -> Bool in
            let client = try TestClient(address)
            defer { client.close() }
            // 63 bytes and a newline: one line, or one raw read, per message.
            let message = Array(repeating: UInt8(ascii: "k"), count: 63) + [UInt8(ascii: "\n")]
            for _ in 0..<(warmup + measured) {
                client.send(message)
                let echoed = client.read(64)
                guard echoed == message else { return false }
            }
            return true
        }
        #expect(echoedAll)
        let allocations = await results.wait(for: 1).first ?? .max
        #expect(allocations == 0, "\(allocations) allocations over \(measured) messages through the \(framing) echo plugin")
        await host.shutdown(deadline: .seconds(1))
    }
}
