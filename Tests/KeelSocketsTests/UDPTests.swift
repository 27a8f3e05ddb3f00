import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

import KeelTestSupport

/// Sends every datagram back to its sender.
struct UDPEchoHandler: UDPHandler {
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        socket.send(datagram, to: sender)
    }
}

/// Records what arrives.
struct UDPRecorder: UDPHandler {
    struct Datagram: Sendable {
        var bytes: [UInt8]
        var sender: SocketAddress
        var truncated: Bool
        var length: Int
    }
    let received: Collector<Datagram>
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        received.add(Datagram(bytes: Array(datagram.readableByteArray.prefix(8)), sender: sender, truncated: truncated,
                              length: datagram.readableBytes))
    }
}

/// Sends `bytes` as one datagram from `socket` on its thread.
func sendDatagram(_ socket: UDPSocket, _ bytes: [UInt8], to address: SocketAddress) async -> UDPSendResult {
    await onThread(socket.thread) { finish in
        var buffer = try! socket.thread.bufferPool.acquire()
        buffer.append(contentsOf: bytes)
        finish(socket.send(buffer, to: address))
    }
}

@Suite("UDP", .serialized)
struct UDPTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func datagramsEchoBackWithTheirSenders(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        let server = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0), handler: UDPEchoHandler())
        let received = Collector<UDPRecorder.Datagram>()
        let client = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                        handler: UDPRecorder(received: received))
        for i in 0..<100 {
            _ = await sendDatagram(client, [UInt8(i), 1, 2, 3], to: server.localAddress)
        }
        let echoes = await received.wait(for: 100, timeout: .seconds(5))
        #expect(echoes.count == 100)
        #expect(Set(echoes.map { $0.bytes[0] }) == Set(0..<100))
        #expect(echoes.allSatisfy { $0.sender == server.localAddress && !$0.truncated && $0.length == 4 })
        pool.shutdown()
        #expect(openSockets(ports: [server.localAddress.port, client.localAddress.port], transport: .udp).isEmpty, "every socket of this test is closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func oversizedDatagramsAreReportedAsTruncated(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let received = Collector<UDPRecorder.Datagram>()
        let server = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                        handler: UDPRecorder(received: received))
        // A raw sender: 40,000 bytes do not fit in a 16 KiB buffer.
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        let big = [UInt8](repeating: 9, count: 40_000)
        _ = server.localAddress.withSockAddr { sa, length in big.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, length) } }
        _ = server.localAddress.withSockAddr { sa, length in [UInt8](repeating: 7, count: 10).withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, length) } }
        let got = await received.wait(for: 2)
        #expect(got.count == 2)
        #expect(got.first?.truncated == true, "the cut datagram says so")
        #expect((got.first?.length ?? 0) < 40_000)
        #expect(got.last?.truncated == false && got.last?.length == 10)
        let truncatedCount = await onThread(server.thread) { finish in finish(server.statistics.truncated) }
        #expect(truncatedCount == 1)
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func ipv6AndConnectedClients(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let server: UDPSocket
        do {
            server = try UDPSocket.bind(pool: pool, configuration: .init(host: "::1", port: 0), handler: UDPEchoHandler())
        } catch {
            withKnownIssue("IPv6 loopback unavailable: \(error)") { throw error }
            return
        }
        let received = Collector<UDPRecorder.Datagram>()
        let client = try UDPSocket.bind(pool: pool, configuration: .init(host: "::1", port: 0, coalescesSends: false),
                                        handler: UDPRecorder(received: received))
        let result: UDPSendResult = await onThread(client.thread) { finish in
            do {
                try client.connect(to: server.localAddress)
                var buffer = try! client.thread.bufferPool.acquire()
                buffer.append(contentsOf: Array("v6".utf8))
                finish(client.send(buffer))
            } catch {
                finish(.refused)
            }
        }
        #expect(result == .sent)
        let echoes = await received.wait(for: 1)
        #expect(echoes.first?.bytes == Array("v6".utf8))
        #expect(echoes.first?.sender == server.localAddress)
    }

    /// Sends `total` datagrams in one burst on the socket's thread (the queue cannot drain meanwhile).
    func burst(_ socket: UDPSocket, total: Int, to address: SocketAddress) async -> [UDPSendResult: Int] {
        await onThread(socket.thread) { finish in
            var results: [UDPSendResult: Int] = [:]
            for i in 0..<total {
                var buffer = try! socket.thread.bufferPool.acquire()
                buffer.append(contentsOf: [UInt8(truncatingIfNeeded: i), UInt8(truncatingIfNeeded: i >> 8)])
                results[socket.send(buffer, to: address), default: 0] += 1
            }
            finish(results)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func sendQueuesAreBoundedWithExactCountsUnderEveryPolicy(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let received = Collector<UDPRecorder.Datagram>()
        let sink = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, receiveBufferSize: 1 << 20),
                                      handler: UDPRecorder(received: received))
        let total = 5_000
        let limit = 100
        for policy in [SendQueuePolicy.dropNewest, .dropOldest, .refuse, .notify] {
            // Every send goes through the queue, and the whole burst is issued before the loop can send.
            let limits = UDPSendLimits(maximumDatagrams: limit, maximumBytes: 1 << 20, policy: policy, sendsInline: false)
            let sender = try UDPSocket.bind(pool: pool, on: sink.thread,
                                            configuration: .init(host: "127.0.0.1", port: 0, sendBufferSize: 4096, sendLimits: limits),
                                            handler: UDPRecorder(received: Collector()))
            let results = await burst(sender, total: total, to: sink.localAddress)
            #expect(await eventually {
                let queued = (try? awaitStatistics(sender))?.queued ?? 1
                return queued == 0
            })
            let stats = try awaitStatistics(sender)
            switch policy {
            case .dropNewest:
                #expect(results[.queued] == limit && results[.dropped] == total - limit)
                #expect(stats.sent == limit && stats.dropped == total - limit && stats.failed == 0)
            case .dropOldest:
                #expect(results[.queued] == total, "every send is accepted; older ones make room")
                #expect(stats.sent == limit && stats.dropped == total - limit)
            case .refuse:
                #expect(results[.queued] == limit && results[.refused] == total - limit)
                #expect(stats.sent == limit && stats.failed == total - limit && stats.dropped == 0)
            case .notify:
                #expect(results[.queued] == total, "every send is queued, past the limit too")
                #expect(stats.overLimit == total - limit && stats.dropped == 0 && stats.failed == 0)
                #expect(stats.sent + stats.failed == total)
            }
            if policy != .notify {
                #expect(stats.sent + stats.dropped + stats.failed == total, "every datagram is accounted for")
            }
            sender.close()
        }
        #expect(await eventually { buffersInUse(pool) == 0 })
    }

    @Test(.timeLimit(.minutes(1)))
    func multicastMembershipCanBeJoinedAndLeft() async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .epoll, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let socket = try UDPSocket.bind(pool: pool, configuration: .init(host: "0.0.0.0", port: 0),
                                        handler: UDPRecorder(received: Collector()))
        let group = try SocketAddress(host: "239.255.42.99", port: 0)
        let loopback = Int32(if_nametoindex("lo"))
        let outcome: String = await onThread(socket.thread) { finish in
            do {
                try socket.joinMulticastGroup(group, interfaceIndex: loopback)
                try socket.leaveMulticastGroup(group, interfaceIndex: loopback)
                finish("ok")
            } catch {
                finish("\(error)")
            }
        }
        #expect(outcome == "ok")
        let notJoined: String = await onThread(socket.thread) { finish in
            do {
                try socket.leaveMulticastGroup(group, interfaceIndex: loopback)
                finish("left a group never joined")
            } catch {
                finish("typed error")
            }
        }
        #expect(notJoined == "typed error")
    }

    /// Port 0 gets a port no other socket holds, with or without `SO_REUSEPORT` (set before the bind,
    /// Linux may pick a port another sharing socket holds, which then takes every datagram), and a
    /// later reuse-port socket still joins a reuse-port socket's port.
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func portZeroNeverLandsOnAPortAnotherSocketHolds(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        // 600 sockets: with a sharing option set before each bind, about six pairs would share a port.
        let sockets = try (0..<600).map { i in
            try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0, reusePort: i % 2 == 0),
                               handler: UDPRecorder(received: Collector()))
        }
        let ports = sockets.map(\.localAddress.port)
        #expect(Set(ports).count == ports.count, "\(ports.count - Set(ports).count) ports handed out twice")
        let joined = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: ports[0], reusePort: true),
                                        handler: UDPRecorder(received: Collector()))
        #expect(joined.localAddress.port == ports[0])
        #expect(throws: SystemError.self, "a socket that did not ask to share cannot take a port") {
            try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: ports[1]), handler: UDPRecorder(received: Collector()))
        }
    }
}

/// Reads a socket's counters on its thread (blocking the caller briefly).
func awaitStatistics(_ socket: UDPSocket) throws -> UDPSocketStatistics {
    let box = Mutex<UDPSocketStatistics?>(nil)
    let done = Semaphore()
    socket.thread.execute {
        box.withLock { $0 = socket.statistics }
        done.signal()
    }
    done.wait()
    return box.withLock { $0! }
}
