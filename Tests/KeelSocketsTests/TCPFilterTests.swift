import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

/// Upper-cases ASCII letters on the way up; passes writes through untouched.
final class UppercaseInbound: TCPConnectionFilter {
    let log: Collector<String>
    init(log: Collector<String>) { self.log = log }

    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        log.add("upper in")
        buffer.withUnsafeMutableReadableBytes { bytes in
            for i in bytes.indices where bytes[i] >= 0x61 && bytes[i] <= 0x7A { bytes[i] -= 0x20 }
        }
        context.passInbound(buffer)
    }

    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        log.add("upper out")
        context.passOutbound(buffer)
    }
}

/// Frames every write as `[...]` by sending a prefix and a suffix of its own around it.
final class BracketOutbound: TCPConnectionFilter {
    let log: Collector<String>
    init(log: Collector<String>) { self.log = log }

    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        log.add("bracket in")
        context.passInbound(buffer)
    }

    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        log.add("bracket out")
        let pool = context.connection.thread.bufferPool
        var open = try! pool.acquire()
        open.append(contentsOf: Array("[".utf8))
        var close = try! pool.acquire()
        close.append(contentsOf: Array("]".utf8))
        context.passOutbound(open)
        context.passOutbound(buffer)
        context.passOutbound(close)
    }
}

@Suite("TCP filters", .serialized)
struct TCPFilterTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func readsGoUpAndWritesGoDownThroughTheStackInOrder(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let log = Collector<String>()
        let setups = Collector<TCPFilterSetup>()
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.makeFilters = { setup in
            setups.add(setup)
            return [UppercaseInbound(log: log), BracketOutbound(log: log)]
        }
        let server = try TCPServer(pool: pool, configuration: configuration) { EchoHandler() }
        let address = server.localAddress
        let reply = await onPlainThread { () -> [UInt8] in
            guard let client = try? RawClient(connectingTo: address) else { return [] }
            defer { client.close() }
            _ = client.send(Array("keel".utf8))
            return client.receive(count: 6)
        }
        #expect(String(decoding: reply, as: UTF8.self) == "[KEEL]")
        // Up: filter 0 then 1; down: filter 1 then filter 0 (once per piece the bracket filter sends).
        #expect(log.snapshot == ["upper in", "bracket in", "bracket out", "upper out", "upper out", "upper out"])
        // The factory saw the listener and both addresses of the connection.
        let setup = try #require(setups.snapshot.first)
        #expect(setup.endpoint == .listener(address))
        #expect(setup.localAddress == address)
        #expect(setup.remoteAddress?.description.hasPrefix("127.0.0.1:") == true)
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }

    /// A connector's filters: the client writes "x" through a bracketing filter and reads the echo
    /// back through an upper-casing one.
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func connectorsRunFiltersToo(backend: BackendKind) async throws {
        struct Client: TCPConnectionHandler {
            let received: Collector<String>
            mutating func connectionEstablished(_ connection: TCPConnection) {
                var buffer = try! connection.thread.bufferPool.acquire()
                buffer.append(contentsOf: Array("x".utf8))
                connection.write(buffer)
            }
            mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
                received.add(String(decoding: buffer.readableByteArray, as: UTF8.self))
            }
        }
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let server = try TCPServer(pool: pool, configuration: .init()) { EchoHandler() }
        let log = Collector<String>()
        let received = Collector<String>()
        let targets = Collector<TCPFilterSetup.Endpoint>()
        let connector = TCPConnector<Client>(pool: pool, configuration: .init(connection: .init(makeFilters: { setup in
            targets.add(setup.endpoint)
            return [UppercaseInbound(log: log), BracketOutbound(log: log)]
        })))
        connector.connect(to: server.localAddress) { Client(received: received) }
        #expect(await eventually { received.snapshot.joined() == "[X]" })
        #expect(targets.snapshot == [.target("\(server.localAddress)")])
        await server.stop()
        pool.shutdown()
    }
}
