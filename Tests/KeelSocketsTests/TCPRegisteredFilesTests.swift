import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// Closes the connection as soon as anything arrives.
struct CloseOnFirstByte: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) { connection.close() }
}

/// What a connection's handler saw of its socket when it opened.
struct AcceptedSocket: Sendable {
    var isDirect: Bool
    var peerPort: UInt16?
    var socketType: Int32
    var isNonBlocking: Bool
}

/// Records each opening connection's socket: direct or not, the peer's port (which a direct descriptor
/// answers through an installed ordinary one), and SO_TYPE and the blocking mode through
/// ``TCPConnection/systemDescriptor`` (a blocking one would stall the calls Keel makes at once on it).
/// Then echoes.
struct AcceptedSocketRecorder: TCPConnectionHandler {
    let seen: Collector<AcceptedSocket>

    mutating func connectionEstablished(_ connection: TCPConnection) {
        var type: Int32 = -1
        var length = socklen_t(MemoryLayout<Int32>.size)
        var flags: Int32 = 0
        if let fd = connection.systemDescriptor {
            _ = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length)
            flags = fcntl(fd, F_GETFL)
        }
        seen.add(AcceptedSocket(isDirect: IOThread.isDirectDescriptor(connection.descriptor),
                                peerPort: connection.remoteAddress?.port, socketType: type,
                                isNonBlocking: flags >= 0 && flags & O_NONBLOCK != 0))
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) { connection.write(buffer) }
}

/// Connection sockets in the ring's registered file table (``KernelFeatures/registeredFiles``): every
/// operation on them names the table slot, so a socket that worked here went through the table; and a
/// socket must really close when its connection does, though the table held a reference to it.
@Suite("TCP sockets in the registered file table")
struct TCPRegisteredFilesTests {
    static let runs = backendsUnderTest.contains(.ioUring)

    func pool(tableOn: Bool) throws -> IOPool {
        let features = tableOn ? KernelFeatures.all : KernelFeatures.all.subtracting(.registeredFiles)
        return try IOPool(configuration: .init(threadCount: 1, backend: .ioUring, workPoolThreadCount: 1, kernelFeatures: features))
    }

    /// True once the peer's socket is gone: after its end of stream, bytes sent to it draw a reset,
    /// which fails a later send. (A socket still held open, say by a file-table slot, takes them in.)
    static func peerSocketIsGone(_ client: TestClient, within timeout: Duration = .seconds(5)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var byte: UInt8 = 0
        while ContinuousClock.now < deadline {
            if Glibc.send(client.fd, &byte, 1, Int32(MSG_NOSIGNAL)) < 0 { return errno == EPIPE || errno == ECONNRESET }
            usleep(1000)
        }
        return false
    }

    func registered(_ pool: IOPool) async -> Int {
        await onThread(pool.threads[0]) { finish in finish(pool.threads[0].registeredDescriptorCount) }
    }

    @Test(.enabled(if: runs), .timeLimit(.minutes(1)), arguments: [true, false])
    func acceptedAndConnectedSocketsEchoThroughTheTableAndLeaveItWhenTheyClose(tableOn: Bool) async throws {
        let pool = try pool(tableOn: tableOn)
        defer { pool.shutdown() }
        let usesTable = pool.kernelFeatures.contains(.registeredFiles)
        #expect(usesTable == (tableOn && !KernelFeatures.turnedOffByEnvironment.contains(.registeredFiles)))
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) { EchoHandler() }

        // Accepted sockets: held open by blocking clients while the table is counted.
        let clientCount = 12
        let clients = try (0..<clientCount).map { _ in try TestClient(server.localAddress) }
        let echoed = try await blocking { () -> Bool in
            clients.enumerated().allSatisfy { index, client in
                client.send("ping \(index)")
                return client.read(5 + String(index).count) == Array("ping \(index)".utf8)
            }
        }
        #expect(echoed)
        #expect(await registered(pool) == (usesTable ? clientCount : 0))
        for client in clients { client.close() }
        #expect(await eventually { server.statistics.active == 0 })
        #expect(await registered(pool) == 0, "every closed connection left the table")

        // Connected sockets, on the same thread: both ends of each connection are in the table.
        #expect(await echoPatternStreams(from: pool, to: server.localAddress, connections: 8, perConnection: 64 * 1024))
        #expect(await eventually { server.statistics.active == 0 })
        #expect(await registered(pool) == 0)
        await server.stop()
        #expect(await eventually { buffersInUse(pool) == 0 })
    }

    /// The table's reference must go with the connection: a socket the server closes reaches its peer
    /// as end of stream and then is gone (more bytes draw a reset), and descriptor numbers (and so slots) freed by one connection serve the next.
    @Test(.enabled(if: runs), .timeLimit(.minutes(1)))
    func aClosedConnectionsSocketClosesAndItsSlotServesTheNextConnection() async throws {
        let pool = try pool(tableOn: true)
        defer { pool.shutdown() }
        let closer = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) { CloseOnFirstByte() }
        let echo = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) { EchoHandler() }
        let results = try await blocking { () -> (endsOfStream: Int, echoes: Int) in
            var endsOfStream = 0
            var echoes = 0
            for round in 0..<40 {
                let closing = try TestClient(closer.localAddress)
                closing.send("x")
                let closed = closing.closedByPeer(within: .seconds(5)) && Self.peerSocketIsGone(closing)
                closing.close()
                guard closed else { break }  // one is enough to fail; the rest would each wait out the timeout
                endsOfStream += 1
                let echoing = try TestClient(echo.localAddress)
                echoing.send("round \(round)")
                if echoing.read(6 + String(round).count) == Array("round \(round)".utf8) { echoes += 1 }
                echoing.close()
            }
            return (endsOfStream, echoes)
        }
        #expect(results.endsOfStream == 40, "connections whose socket closed")
        #expect(results.echoes == 40)
        #expect(await eventually { closer.statistics.active == 0 && echo.statistics.active == 0 })
        #expect(await registered(pool) == 0)
        await closer.stop()
        await echo.stop()
    }

    /// Direct descriptors (``KernelFeatures/directDescriptors``): an accepted socket lives only in the
    /// table, yet its handler can still ask for the peer's address and an ordinary descriptor, it
    /// echoes, and closing (by the peer or by the server, which shuts its side down through the
    /// installed descriptor) frees the slot. Turned off, sockets are ordinary descriptors.
    @Test(.enabled(if: runs), .timeLimit(.minutes(1)), arguments: [true, false])
    func acceptedSocketsAreDirectDescriptorsThatStillAnswerAddressesAndClose(directOn: Bool) async throws {
        let features = directOn ? KernelFeatures.all : KernelFeatures.all.subtracting(.directDescriptors)
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .ioUring, workPoolThreadCount: 1, kernelFeatures: features))
        defer { pool.shutdown() }
        let direct = pool.kernelFeatures.contains(.directDescriptors)
        #expect(direct == (directOn && !KernelFeatures.turnedOffByEnvironment.contains(.directDescriptors)
            && !KernelFeatures.turnedOffByEnvironment.contains(.registeredFiles)))
        let seen = Collector<AcceptedSocket>()
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) { AcceptedSocketRecorder(seen: seen) }
        let clients = try (0..<6).map { _ in try TestClient(server.localAddress) }
        let clientPorts = clients.map { client -> UInt16 in
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(client.fd, $0, &length) }
            }
            return UInt16(bigEndian: address.sin_port)
        }
        let echoed = try await blocking { () -> Bool in
            clients.enumerated().allSatisfy { index, client in
                client.send("hello \(index)")
                return client.read(6 + String(index).count) == Array("hello \(index)".utf8)
            }
        }
        #expect(echoed)
        let sockets = await seen.wait(for: clients.count)
        #expect(sockets.count == clients.count)
        #expect(sockets.allSatisfy { $0.isDirect == direct })
        #expect(sockets.allSatisfy { $0.socketType == SOCK_STREAM.rawValue && $0.isNonBlocking })
        #expect(Set(sockets.compactMap(\.peerPort)) == Set(clientPorts))
        #expect(await registered(pool) == (pool.kernelFeatures.contains(.registeredFiles) ? clients.count : 0))
        // Half close by the peers, half by the server (stop): each peer sees end of stream.
        for client in clients.prefix(3) { client.close() }
        #expect(await eventually { server.statistics.active == 3 })
        await server.stop()
        let endsOfStream = try await blocking { clients.suffix(3).filter { $0.closedByPeer(within: .seconds(5)) }.count }
        #expect(endsOfStream == 3)
        for client in clients.suffix(3) { client.close() }
        #expect(await eventually { server.statistics.active == 0 })
        #expect(await registered(pool) == 0, "every closed connection freed its slot")
        #expect(await eventually { buffersInUse(pool) == 0 })
    }
}
