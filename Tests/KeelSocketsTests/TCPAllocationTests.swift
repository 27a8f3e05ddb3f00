import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// Echoes, and measures its own I/O thread's allocations between two message counts.
struct MeasuringEchoHandler: TCPConnectionHandler {
    let warmup: Int
    let measured: Int
    let results: Collector<UInt64>
    var messages = 0
    var start: UInt64 = 0

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        messages += 1
        if messages == warmup { start = AllocationCounter.currentThread }
        connection.write(buffer)
        if messages == warmup + measured { results.add(AllocationCounter.currentThread - start) }
    }
}

/// Records its I/O thread's allocation counter when each connection opens, into preallocated storage.
struct AcceptCountingHandler: TCPConnectionHandler {
    let marks: UnsafeMutablePointer<UInt64>
    let index: UnsafeMutablePointer<Int>
    let capacity: Int

    mutating func connectionEstablished(_ connection: TCPConnection) {
        if index.pointee < capacity {
            marks[index.pointee] = AllocationCounter.currentThread
            index.pointee += 1
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

/// Preallocated storage shared with the server's single I/O thread.
final class AcceptMarks: @unchecked Sendable {
    // @unchecked Sendable: written only by the server's one I/O thread; read after the test waits.
    let marks: UnsafeMutablePointer<UInt64>
    let index: UnsafeMutablePointer<Int>
    let capacity: Int
    init(capacity: Int) {
        self.capacity = capacity
        marks = .allocate(capacity: capacity)
        marks.initialize(repeating: 0, count: capacity)
        index = .allocate(capacity: 1)
        index.initialize(to: 0)
    }
    deinit {
        marks.deallocate()
        index.deallocate()
    }
}

@Suite("TCP allocations", .serialized, .enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
struct TCPAllocationTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func steadyStateEchoAllocatesNothingPerMessage(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let results = Collector<UInt64>()
        let warmup = 2_000
        let measured = 10_000
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, idleTimeout: .seconds(30))) {
            MeasuringEchoHandler(warmup: warmup, measured: measured, results: results)
        }
        let address = server.localAddress
        let echoed = await onPlainThread { () -> Bool in
            guard let client = try? RawClient(connectingTo: address) else { return false }
            defer { client.close() }
            let message = [UInt8](repeating: 0x5A, count: 64)
            for _ in 0..<(warmup + measured) {
                guard client.send(message) == 64, client.receive(count: 64) == message else { return false }
            }
            return true
        }
        #expect(echoed)
        let allocations = await results.wait(for: 1)
        #expect(allocations == [0], "\(allocations.first ?? 0) allocations over \(measured) echoed messages")
        await server.stop()
        pool.shutdown()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func acceptingAfterWarmUpAllocatesNothing(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let total = 400
        let warmup = 100
        let storage = AcceptMarks(capacity: total)
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) {
            AcceptCountingHandler(marks: storage.marks, index: storage.index, capacity: storage.capacity)
        }
        let address = server.localAddress
        // One connection at a time: open, wait until the server has it, close.
        let ok = await onPlainThread { () -> Bool in
            for i in 0..<total {
                guard let client = try? RawClient(connectingTo: address) else { return false }
                var spins = 0
                while server.statistics.accepted <= i && spins < 10_000 {
                    usleep(100)
                    spins += 1
                }
                client.close()
                while server.statistics.active > 0 && spins < 20_000 {
                    usleep(100)
                    spins += 1
                }
            }
            return true
        }
        #expect(ok)
        #expect(await eventually { server.statistics.accepted == total && server.statistics.active == 0 })
        let established = try await pool.threads[0].submit { storage.index.pointee }
        #expect(established == total)
        let perAccept = Double(storage.marks[total - 1] - storage.marks[warmup]) / Double(total - 1 - warmup)
        #expect(storage.marks[total - 1] - storage.marks[warmup] == 0,
                "\(perAccept) allocations per accepted connection after warm-up")
        await server.stop()
        pool.shutdown()
    }
}
