import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// Records the normal stream and urgent bytes apart; answers "ping" with an urgent byte.
struct UrgentRecorder: TCPConnectionHandler {
    let normal: Collector<[UInt8]>
    let urgent: Collector<UInt8>

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let bytes = buffer.readableByteArray
        normal.add(bytes)
        if bytes.contains(UInt8(ascii: "?")) { connection.sendUrgent(UInt8(ascii: "U")) }
    }

    mutating func connectionReceivedUrgent(_ connection: TCPConnection, byte: UInt8) {
        urgent.add(byte)
    }
}

@Suite("TCP out-of-band data", .serialized)
struct TCPUrgentDataTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func urgentBytesTravelApartFromTheStreamBothWays(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let normal = Collector<[UInt8]>()
        let urgent = Collector<UInt8>()
        var configuration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.connection.receivesUrgentData = true
        let server = try TCPServer(pool: pool, configuration: configuration) { UrgentRecorder(normal: normal, urgent: urgent) }
        let address = server.localAddress
        let clientUrgent = await onPlainThread { () -> UInt8? in
            guard let client = try? RawClient(connectingTo: address) else { return nil }
            defer { client.close() }
            _ = client.send(Array("abc".utf8))
            usleep(50_000)
            var mark: UInt8 = 0x21
            _ = Glibc.send(client.fd, &mark, 1, Int32(MSG_OOB))
            usleep(50_000)
            _ = client.send(Array("def?".utf8))
            // The server answers "?" with an urgent "U": wait for POLLPRI, then read it out of band.
            var poller = pollfd(fd: client.fd, events: Int16(POLLPRI), revents: 0)
            guard poll(&poller, 1, 5_000) == 1 else { return nil }
            var byte: UInt8 = 0
            return recv(client.fd, &byte, 1, Int32(MSG_OOB)) == 1 ? byte : nil
        }
        #expect(await urgent.wait(for: 1) == [0x21])
        #expect(await eventually { normal.snapshot.flatMap { $0 } == Array("abcdef?".utf8) },
                "the normal stream excludes the urgent byte: \(normal.snapshot)")
        #expect(clientUrgent == UInt8(ascii: "U"))
        await server.stop()
        pool.shutdown()
        #expect(openSockets(ports: [address.port]).isEmpty, "every socket of this test is closed")
    }
}
