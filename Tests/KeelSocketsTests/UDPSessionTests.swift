import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport

/// Per-peer state: counts this peer's datagrams and answers each with "<session id>:<count>".
struct CountingSession: UDPSessionHandler {
    let events: Collector<String>
    var count = 0

    mutating func sessionStarted(_ session: UDPSession) { events.add("start \(session.id)") }

    mutating func datagramReceived(_ datagram: consuming IOBuffer, truncated: Bool, in session: UDPSession) {
        count += 1
        var reply = try! session.socket.thread.bufferPool.acquire()
        reply.append(contentsOf: Array("\(session.id):\(count)".utf8))
        session.send(reply)
    }

    mutating func sessionEnded(_ session: UDPSession, reason: UDPSessionEndReason) {
        events.add("end \(session.id) \(reason)")
    }
}

@Suite("UDP sessions", .serialized)
struct UDPSessionTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func eachPeerIsASessionWithItsOwnState(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let events = Collector<String>()
        // An idle timeout no loaded machine reaches between two datagrams of this test.
        let server = try UDPSessionServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                          idleTimeout: .seconds(60)) { _ in CountingSession(events: events) }
        let replies = Collector<UDPRecorder.Datagram>()
        let first = try UDPSocket.bind(pool: pool, configuration: .init(), handler: UDPRecorder(received: replies))
        let second = try UDPSocket.bind(pool: pool, configuration: .init(), handler: UDPRecorder(received: replies))
        for _ in 0..<3 { _ = await sendDatagram(first, [1], to: server.localAddress) }
        _ = await sendDatagram(second, [2], to: server.localAddress)
        let answers = await replies.wait(for: 4)
        let texts = answers.map { String(decoding: $0.bytes, as: UTF8.self) }
        #expect(Set(texts) == ["1:1", "1:2", "1:3", "2:1"], "each peer counts its own datagrams")
        #expect(server.sessionCount == 2)
        await server.stop()
        #expect(await events.wait(for: 4).filter { $0.hasPrefix("end") }.sorted() == ["end 1 serverStopped", "end 2 serverStopped"])
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func quietSessionsEndAfterTheIdleTimeoutAndAReturningPeerStartsAnew(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let events = Collector<String>()
        let server = try UDPSessionServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                          idleTimeout: .milliseconds(150)) { _ in CountingSession(events: events) }
        let replies = Collector<UDPRecorder.Datagram>()
        let peer = try UDPSocket.bind(pool: pool, configuration: .init(), handler: UDPRecorder(received: replies))
        _ = await sendDatagram(peer, [1], to: server.localAddress)
        #expect(await replies.wait(for: 1).first.map { String(decoding: $0.bytes, as: UTF8.self) } == "1:1")
        // It goes quiet: the session ends by its timeout (asserted as an outcome, not a duration).
        #expect(await eventually { server.sessionCount == 0 })
        #expect(await events.wait(for: 2).contains("end 1 idleTimeout"))
        // The peer returns: a new session, counting from 1 again.
        _ = await sendDatagram(peer, [1], to: server.localAddress)
        let again = await replies.wait(for: 2)
        #expect(again.last.map { String(decoding: $0.bytes, as: UTF8.self) } == "2:1")
    }

    @Test(.timeLimit(.minutes(1)))
    func sessionsBeyondTheLimitAreRefused() async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .epoll, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let server = try UDPSessionServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0),
                                          idleTimeout: .seconds(10), maximumSessions: 2) { _ in CountingSession(events: Collector()) }
        var clients: [UDPSocket] = []
        for _ in 0..<4 { clients.append(try UDPSocket.bind(pool: pool, configuration: .init(), handler: UDPRecorder(received: Collector()))) }
        for client in clients { _ = await sendDatagram(client, [0], to: server.localAddress) }
        #expect(await eventually { server.sessionCount == 2 && server.refusedDatagrams == 2 })
    }
}
