import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// Gathers a 12-byte message in one buffer with `continueReading(into:)` and reports the buffer's
/// chunk on each delivery (the same chunk each time means no copy).
struct GatheringHandler: TCPConnectionHandler {
    let deliveries: Collector<(chunk: UInt32, bytes: [UInt8])>

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        deliveries.add((buffer.chunk, buffer.readableByteArray))
        if buffer.readableBytes < 12 {
            connection.continueReading(into: buffer)
        } else {
            connection.write(buffer)
        }
    }
}

@Suite("TCP read accumulation", .serialized)
struct TCPReadAccumulationTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aMessageArrivingInPiecesIsGatheredInOneBuffer(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let deliveries = Collector<(chunk: UInt32, bytes: [UInt8])>()
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) {
            GatheringHandler(deliveries: deliveries)
        }
        let address = server.localAddress
        let echoed = await onPlainThread { () -> [UInt8] in
            guard let client = try? RawClient(connectingTo: address) else { return [] }
            defer { client.close() }
            for (index, piece) in ["hel", "lo", " wor", "ld!"].enumerated() {
                _ = client.send(Array(piece.utf8))
                // Separate reads on the server: the next piece goes only once this one was delivered
                // (a deadline, not a sleep, so a loaded machine cannot merge two pieces).
                var waited = 0
                while deliveries.snapshot.count <= index && waited < 10_000 {
                    usleep(1_000)
                    waited += 1
                }
            }
            return client.receive(count: 12)
        }
        #expect(String(decoding: echoed, as: UTF8.self) == "hello world!")
        let seen = deliveries.snapshot
        #expect(seen.count == 4, "one delivery per piece: \(seen.map { String(decoding: $0.bytes, as: UTF8.self) })")
        #expect(Set(seen.map(\.chunk)).count == 1, "every piece landed in the first buffer")
        #expect(seen.map { String(decoding: $0.bytes, as: UTF8.self) } == ["hel", "hello", "hello wor", "hello world!"])
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
        pool.shutdown()
    }
}
