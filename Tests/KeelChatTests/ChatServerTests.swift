import Glibc
import KeelChat
import KeelEngine
import KeelSockets
import KeelSystem
import Testing

import KeelTestSupport
import KeelWebSocket

@Suite("keel-chat", .serialized)
struct ChatServerTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func everyLineReachesEveryMember(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        let chat = try ChatServer(pool: pool, port: 0)
        let address = chat.localAddress
        let received = await onPlainThread { () -> [[String]] in
            let members = (0..<3).compactMap { _ in try? TestClient(address) }
            defer { members.forEach { $0.close() } }
            // All three joined before anyone speaks (a fixed pause was too short under AddressSanitizer).
            for _ in 0..<1000 where chat.statistics.active < 3 { usleep(10_000) }
            members[0].sendLine("hello")
            members[1].sendLine("hi there")
            return members.map { $0.lines(2) }
        }
        #expect(received.count == 3)
        for lines in received {
            #expect(lines.count == 2)
            #expect(lines.contains { $0.hasSuffix(": hello") })
            #expect(lines.contains { $0.hasSuffix(": hi there") })
        }
        await chat.stop()
        pool.shutdown()
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aStalledMemberIsDisconnectedInsteadOfGrowingTheServer(backend: BackendKind) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        let chat = try ChatServer(pool: pool, port: 0, perMemberLimit: 256 * 1024)
        let address = chat.localAddress
        let (talkerGotItsLines, stalledWasDropped) = await onPlainThread { () -> (Bool, Bool) in
            guard let stalled = try? TestClient(address, receiveBuffer: 4096), let talker = try? TestClient(address)
            else { return (false, false) }
            defer { stalled.close(); talker.close() }
            // Both are in the room before the talking starts (a fixed pause was too short under load).
            for _ in 0..<1000 where chat.statistics.active < 2 { usleep(10_000) }
            // The talker sends ~6 MiB of lines and reads its own echo; the stalled member reads nothing.
            let line = String(repeating: "x", count: 1000)
            var ok = true
            for _ in 0..<6000 {
                talker.sendLine(line)
                ok = ok && talker.lines(1).first?.hasSuffix(line) == true
            }
            // The stalled member was cut off: reading now ends (reset or end of stream) before 6 MiB.
            var total = 0
            var scratch = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = recv(stalled.fd, &scratch, scratch.count, 0)
                if n <= 0 { break }
                total += n
            }
            return (ok, total < 6000 * 1000)
        }
        #expect(talkerGotItsLines)
        #expect(stalledWasDropped)
        #expect(chat.slowConsumersDisconnected == 1)
        await chat.stop()
        pool.shutdown()
    }
}

@Suite("keel-chat over WebSockets")
struct ChatWebSocketTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func tcpAndWebSocketMembersShareOneRoom(backend: BackendKind) async throws {
        try await withPool(backend, threads: 2) { pool in
            let chat = try ChatServer(pool: pool, port: 0, webSocketPort: 0)
            let webAddress = try #require(chat.webSocketAddress)
            // Two WebSocket members (one compressing, one not) and one TCP member.
            var sockets: [AsyncWebSocket] = []
            for compressed in [true, false] {
                let connector = AsyncWebSocketConnector(
                    pool: pool, host: "localhost", path: "/chat",
                    configuration: WebSocketConfiguration(compression: compressed ? WebSocketCompression() : nil))
                sockets.append(try await connector.connect(to: webAddress))
            }
            #expect(sockets[0].compression?.serverNoContextTakeover == true, "the room compresses each line once for all")
            let tcpAddress = chat.localAddress
            let long = String(repeating: "long line ", count: 40)
            // The blocking TCP member runs on a plain thread of its own (never on an I/O thread).
            async let tcpLines = withCheckedContinuation { (continuation: CheckedContinuation<[String], Never>) in
                SystemThread.spawn(name: "chat-tcp-member") {
                    guard let member = try? TestClient(tcpAddress) else { return continuation.resume(returning: []) }
                    defer { member.close() }
                    for _ in 0..<1000 where chat.statistics.active < 1 { usleep(10_000) }
                    member.sendLine("hello from tcp")
                    member.sendLine(long)
                    continuation.resume(returning: member.lines(3))
                }.detach()
            }
            // Each WebSocket member hears the TCP member's lines, then speaks once.
            for socket in sockets {
                let first = try await socket.receive()
                #expect(first?.kind == .text && first?.text.hasSuffix(": hello from tcp") == true, "\(first?.text ?? "nothing")")
                #expect(try await socket.receive()?.text.hasSuffix(": \(long)") == true)
            }
            try await sockets[0].send(text: "hi from the web")
            let heard = await tcpLines
            #expect(heard.count == 3 && heard[2].hasSuffix(": hi from the web"), "\(heard.map { String($0.prefix(40)) })")
            for socket in sockets {
                #expect(try await socket.receive()?.text.hasSuffix(": hi from the web") == true)
                await socket.close()
                #expect(try await socket.receive() == nil)
            }
            #expect(chat.linesBroadcast == 3)
            await chat.stop()
        }
    }
}
