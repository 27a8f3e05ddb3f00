import Glibc
import KeelBuffers
import KeelEngine
import KeelGateway
import KeelSockets
import KeelSystem
import KeelTestSupport
import Synchronization

/// What the test back-ends do with a connection.
enum BackendBehaviour: Sendable {
    /// Echo everything; at end of stream, close.
    case echo
    /// Count what arrives; at end of stream answer `got N` and close.
    case countThenAnswer
    /// Answer the first bytes with `partial`, then reset the connection.
    case resetAfterFirstBytes
    /// Send `total` bytes as fast as the connection takes them, then close.
    case flood(total: Int)
    /// Never read (a stalled back-end).
    case stall
}

/// What the test back-ends saw, across their connections.
final class BackendRecord: Sendable {
    let received = Collector<[UInt8]>()
    let closeReasons = Collector<TCPCloseReason>()
    let pushedBack = Atomic<Bool>(false)
    let floodedBytes = Atomic<Int>(0)
}

/// A back-end connection for the gateway tests.
struct TestBackendHandler: TCPConnectionHandler {
    let behaviour: BackendBehaviour
    let record: BackendRecord
    var count = 0
    var sent = 0

    mutating func connectionEstablished(_ connection: TCPConnection) {
        switch behaviour {
        case .stall: connection.pauseReading()
        case .flood: flood(connection)
        default: break
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        count += buffer.readableBytes
        record.received.add(buffer.readableByteArray)
        switch behaviour {
        case .echo:
            connection.write(buffer)
        case .resetAfterFirstBytes:
            connection.write(Array("partial".utf8))
            connection.close(.abortive)
        default:
            break
        }
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        if case .countThenAnswer = behaviour { connection.write(Array("got \(count)\n".utf8)) }
        connection.close()
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        if !isWritable { record.pushedBack.store(true, ordering: .relaxed) }
        if isWritable, case .flood = behaviour { flood(connection) }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        record.closeReasons.add(reason)
    }

    /// Writes 64 KiB chunks until the queue passes its high watermark or `total` went out.
    private mutating func flood(_ connection: TCPConnection) {
        guard case .flood(let total) = behaviour else { return }
        let chunk = [UInt8](repeating: 0x42, count: 65536)
        while sent < total && connection.queuedWriteBytes <= connection.flowControl.highWatermark {
            connection.write(chunk)
            sent += chunk.count
            record.floodedBytes.wrappingAdd(chunk.count, ordering: .relaxed)
        }
        if sent >= total { connection.close() }
    }
}

/// A back-end server on a pool of its own.
struct TestBackend {
    let pool: IOPool
    let server: TCPServer<TestBackendHandler>
    let record = BackendRecord()
    var address: SocketAddress { server.localAddress }

    init(_ backend: BackendKind, _ behaviour: BackendBehaviour) throws {
        pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let record = self.record
        server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) {
            TestBackendHandler(behaviour: behaviour, record: record)
        }
    }

    func finish() async {
        await server.stop(closing: .abortive)
        pool.shutdown()
    }
}

/// A gateway on a pool of its own, to `backends`.
struct TestGateway {
    let pool: IOPool
    let gateway: TCPGateway
    var address: SocketAddress { gateway.localAddress }

    init(_ backend: BackendKind, to backends: [SocketAddress], configure: (inout TCPGatewayConfiguration) -> Void = { _ in }) throws {
        pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        var configuration = TCPGatewayConfiguration(listener: .init(host: "127.0.0.1", port: 0), backends: backends,
                                                    connectTimeout: .milliseconds(500))
        configure(&configuration)
        gateway = try TCPGateway(pool: pool, configuration: configuration)
    }

    /// Pooled buffers in use on the gateway's threads.
    var buffersInUse: Int { pool.threads.reduce(0) { $0 + $1.bufferPool.statistics.inUse } }

    /// Stops the gateway and checks that nothing is left open or in use.
    func finish() async -> Bool {
        await gateway.stop(closing: .abortive)
        let clean = await eventually { gateway.statistics.active == 0 && gateway.statistics.backendConnections == 0 && buffersInUse == 0 }
        pool.shutdown()
        return clean
    }
}

/// An address nothing listens on (bound, then closed).
func closedPort() throws -> SocketAddress {
    let probe = try Sockets.makeStreamSocket(family: AF_INET)
    defer { Descriptors.close(probe) }
    try Sockets.bind(probe, to: SocketAddress(host: "127.0.0.1", port: 0))
    return try Sockets.localAddress(probe)
}

/// A listener that never accepts, its backlog full of other connections: a SYN to it goes unanswered.
final class SilentListener: Sendable {
    let address: SocketAddress
    private let descriptors: [Int32]

    init() throws {
        let listener = try Sockets.makeStreamSocket(family: AF_INET)
        try Sockets.bind(listener, to: SocketAddress(host: "127.0.0.1", port: 0))
        try Sockets.listen(listener, backlog: 0)
        address = try Sockets.localAddress(listener)
        var fillers: [Int32] = []
        // Fill the (tiny) backlog: later connects get no answer.
        for _ in 0..<4 {
            let fd = try Sockets.makeStreamSocket(family: AF_INET)
            _ = address.withSockAddr { Glibc.connect(fd, $0, $1) }
            fillers.append(fd)
        }
        usleep(100_000)
        descriptors = [listener] + fillers
    }

    func close() { for fd in descriptors { Descriptors.close(fd) } }
}

extension TCPConnection {
    /// Writes `bytes` in a pooled buffer (tests only; closes the connection if the pool is empty).
    func write(_ bytes: [UInt8]) {
        guard var buffer = try? thread.bufferPool.acquire() else { return close(.abortive) }
        var offset = 0
        while offset < bytes.count {
            if buffer.writableBytes == 0 {
                write(buffer)
                guard let next = try? thread.bufferPool.acquire() else { return close(.abortive) }
                buffer = next
            }
            let n = min(buffer.writableBytes, bytes.count - offset)
            _ = buffer.append(contentsOf: bytes[offset..<(offset + n)])
            offset += n
        }
        write(buffer)
    }
}
