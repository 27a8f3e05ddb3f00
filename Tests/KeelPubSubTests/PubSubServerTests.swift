import Glibc
import KeelBuffers
import KeelEngine
import KeelPubSub
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

/// A pub/sub server on a pool of its own (two I/O threads: deliveries cross threads).
struct TestPubSub {
    let pool: IOPool
    let server: PubSubServer
    var address: SocketAddress { server.localAddress }

    init(_ backend: BackendKind, threads: Int = 2, configure: (inout PubSubServerConfiguration) -> Void = { _ in }) throws {
        pool = try IOPool(configuration: .init(threadCount: threads, backend: backend, workPoolThreadCount: 1))
        var configuration = PubSubServerConfiguration(line: .init(host: "127.0.0.1", port: 0))
        configure(&configuration)
        server = try PubSubServer(pool: pool, configuration: configuration)
    }

    /// Pooled buffers in use on the server's threads.
    var buffersInUse: Int { pool.threads.reduce(0) { $0 + $1.bufferPool.statistics.inUse } }

    /// Stops the server; true when every buffer came back.
    func finish() async -> Bool {
        await server.stop()
        let clean = await eventually { server.statistics.connections == 0 && buffersInUse == 0 }
        pool.shutdown()
        return clean
    }
}

/// Connects `count` clients and subscribes each to `filters` (waiting for every `OK`).
func subscribers(_ count: Int, to filters: [String], at address: SocketAddress, receiveBuffer: Int32? = nil) async throws -> [Reader] {
    try await blocking {
        try (0..<count).map { _ in
            let reader = try Reader(TestClient(address, receiveBuffer: receiveBuffer))
            for filter in filters { reader.client.sendLine("SUBSCRIBE \(filter)") }
            let replies = reader.lines(filters.count)
            guard replies == filters.map({ "OK SUBSCRIBE \($0)" }) else { throw SystemError(code: EPROTO, call: "subscribe: \(replies)") }
            return reader
        }
    }
}

extension Reader {
    func sendLine(_ line: String) { client.sendLine(line) }
    func close() { client.close() }
}

/// A binary-protocol frame.
func binaryFrame(_ kind: UInt8, topic: String, payload: [UInt8] = []) -> [UInt8] {
    let body = [kind, UInt8(topic.utf8.count >> 8), UInt8(topic.utf8.count & 0xFF)] + Array(topic.utf8) + payload
    let length = UInt32(body.count)
    return [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body
}

/// Reads exactly what is asked from a client, keeping what arrived beyond it for the next call.
/// **Threading:** one plain thread at a time.
final class Reader: @unchecked Sendable {
    // @unchecked Sendable: `pending` is touched by one plain thread at a time (each test hands the
    // reader to `onPlainThread` and awaits it before the next use).
    let client: TestClient
    private var pending: [UInt8] = []

    init(_ client: TestClient) { self.client = client }

    /// Exactly `count` bytes, or fewer when the peer closed or the 5-second receive timeout passed.
    func bytes(_ count: Int) -> [UInt8] {
        var scratch = [UInt8](repeating: 0, count: 65536)
        while pending.count < count {
            let n = recv(client.fd, &scratch, scratch.count, 0)
            if n <= 0 { break }
            pending += scratch[0..<n]
        }
        let taken = Array(pending.prefix(count))
        pending.removeFirst(taken.count)
        return taken
    }

    /// The next `count` lines (without their newlines), or fewer on close or timeout.
    func lines(_ count: Int) -> [String] {
        var lines: [String] = []
        var scratch = [UInt8](repeating: 0, count: 65536)
        var searched = 0
        while lines.count < count {
            if let newline = pending[searched...].firstIndex(of: UInt8(ascii: "\n")) {
                lines.append(String(decoding: pending[searched..<newline], as: UTF8.self))
                searched = newline + 1
                continue
            }
            pending.removeFirst(searched)
            searched = 0
            let n = recv(client.fd, &scratch, scratch.count, 0)
            if n <= 0 { break }
            pending += scratch[0..<n]
        }
        pending.removeFirst(searched)
        return lines
    }

    /// One binary frame: its kind, topic and payload.
    func binaryFrame() -> (kind: UInt8, topic: String, payload: [UInt8])? {
        let header = bytes(4)
        guard header.count == 4 else { return nil }
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        let body = bytes(length)
        guard body.count == length, length >= 3 else { return nil }
        let topicLength = Int(body[1]) << 8 | Int(body[2])
        return (body[0], String(decoding: body[3..<(3 + topicLength)], as: UTF8.self), Array(body[(3 + topicLength)...]))
    }
}

extension Reader {
    /// Opens a WebSocket by hand (the client side of the handshake). - Returns: the status line.
    func openWebSocket() -> String? {
        client.send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        var head: [String] = []
        while let line = lines(1).first, line != "\r" { head.append(line) }
        return head.first
    }

    /// Sends one masked (with a zero key) text message of under 126 bytes.
    func sendWebSocketText(_ text: String) {
        client.send([0x81, 0x80 | UInt8(text.utf8.count), 0, 0, 0, 0] + Array(text.utf8))
    }

    /// Reads one unfragmented server message: its opcode and payload.
    func webSocketMessage() -> (opcode: UInt8, payload: [UInt8])? {
        let header = bytes(2)
        guard header.count == 2 else { return nil }
        var length = Int(header[1] & 0x7F)
        if length == 126 {
            let extended = bytes(2)
            length = Int(extended[0]) << 8 | Int(extended[1])
        }
        return (header[0] & 0x0F, bytes(length))
    }
}

@Suite("keel-pubsub server")
struct PubSubServerTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func publicationsReachExactAndPatternSubscribersOnEveryThreadInOrder(backend: BackendKind) async throws {
        let server = try TestPubSub(backend)
        let address = server.address
        let exact = try await subscribers(3, to: ["prices.eur"], at: address)
        let pattern = try await subscribers(3, to: ["prices.*", "prices.eur"], at: address)
        let bystander = try await subscribers(1, to: ["news"], at: address)
        let lines = (0..<200).map { "PUBLISH prices.eur tick \($0)" } + ["PUBLISH prices.usd one", "PUBLISH weather rain"]
        let publisher = try await blocking { try TestClient(address) }
        publisher.send(lines.map { $0 + "\n" }.joined())
        let expected = (0..<200).map { "MESSAGE prices.eur tick \($0)" }
        for client in exact {
            let received = await onPlainThread { client.lines(200) }
            #expect(received == expected, "every message once, in order")
        }
        for client in pattern {
            let received = await onPlainThread { client.lines(201) }
            #expect(received == expected + ["MESSAGE prices.usd one"], "two matching filters still deliver once")
        }
        bystander[0].sendLine("PING")
        #expect(await onPlainThread { bystander[0].lines(1) } == ["PONG"], "nothing published to news arrived first")
        #expect(await eventually { server.server.statistics.delivered == 3 * 200 + 3 * 201 })
        #expect(server.server.statistics.published == 202)
        for client in exact + pattern + bystander { client.close() }
        publisher.close()
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func malformedCommandsGetAnErrorLineAndTheConnectionStaysUp(backend: BackendKind) async throws {
        let server = try TestPubSub(backend)
        let address = server.address
        let client = try await blocking { try Reader(TestClient(address)) }
        let commands = ["", "HELLO world", "SUBSCRIBE", "SUBSCRIBE a b", "SUBSCRIBE a*b", "PUBLISH", "PUBLISH a.* x",
                        "PING extra", "UNSUBSCRIBE never", "SUBSCRIBE " + String(repeating: "t", count: 300)]
        client.client.send(commands.map { $0 + "\n" }.joined() + "PING\n")
        let replies = await onPlainThread { client.lines(commands.count + 1) }
        #expect(replies.count == commands.count + 1)
        #expect(replies.dropLast().allSatisfy { $0.hasPrefix("ERR ") }, "\(replies)")
        #expect(replies.last == "PONG", "the connection is still up")
        #expect(replies[1] == "ERR unknown command HELLO; commands are SUBSCRIBE, UNSUBSCRIBE, PUBLISH and PING")
        #expect(server.server.statistics.protocolErrors == commands.count)
        client.close()
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func anOversizedLineIsRefusedWithAReasonAndTheConnectionClosed(backend: BackendKind) async throws {
        let server = try TestPubSub(backend)
        let address = server.address
        let subscriber = try await subscribers(1, to: ["big"], at: address)[0]
        let publisher = try await blocking { try Reader(TestClient(address)) }
        async let sent: Void = onPlainThread { publisher.client.send("PUBLISH big " + String(repeating: "x", count: 40_000) + "\n") }
        let reply = await onPlainThread { publisher.lines(1) }
        await sent
        #expect(reply.first?.hasPrefix("ERR line longer than") == true, "\(reply)")
        #expect(await onPlainThread { publisher.client.closedByPeer() })
        subscriber.sendLine("PING")
        #expect(await onPlainThread { subscriber.lines(1) } == ["PONG"], "nothing was delivered; the subscriber is unaffected")
        subscriber.close()
        publisher.close()
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func theBinaryProtocolCarriesAnyByteAndSharesTheTopicSpace(backend: BackendKind) async throws {
        let server = try TestPubSub(backend) { $0.binary = .init(host: "127.0.0.1", port: 0) }
        let lineAddress = server.address
        let binaryAddress = try #require(server.server.binaryAddress)
        let lineSubscriber = try await subscribers(1, to: ["t"], at: lineAddress)[0]
        let binaryClient = try await blocking { try TestClient(binaryAddress) }
        let binary = Reader(binaryClient)
        binaryClient.send(binaryFrame(0x53, topic: "t") + binaryFrame(0x49, topic: "") + binaryFrame(0x58, topic: "x"))
        let replies = await onPlainThread { (0..<3).compactMap { _ in binary.binaryFrame() } }
        #expect(replies.map(\.kind) == [0x4F, 0x47, 0x45], "ok, pong, error")
        #expect(replies.first?.topic == "t" && replies.first?.payload == Array("SUBSCRIBE".utf8))
        let payload: [UInt8] = Array("two\nlines\0and a zero".utf8)
        let publisher = try await blocking { try TestClient(binaryAddress) }
        publisher.send(binaryFrame(0x50, topic: "t", payload: payload) + binaryFrame(0x50, topic: "t", payload: Array("plain".utf8)))
        let first = await onPlainThread { binary.binaryFrame() }
        let second = await onPlainThread { binary.binaryFrame() }
        #expect(first?.kind == 0x4D && first?.topic == "t" && first?.payload == payload, "byte for byte, newline and zero included")
        #expect(second?.payload == Array("plain".utf8))
        #expect(await onPlainThread { lineSubscriber.lines(1) } == ["MESSAGE t plain"], "a payload with a newline cannot go on a line: dropped for line subscribers")
        let report = await server.server.subscriberReport()
        #expect(report.first { $0.filters == ["t"] && $0.dropped == 1 }?.droppedByTopic == ["t": 1])
        let linePublisher = try await blocking { try TestClient(lineAddress) }
        linePublisher.sendLine("PUBLISH t from a line")
        let third = await onPlainThread { binary.binaryFrame() }
        #expect(third?.payload == Array("from a line".utf8))
        // A frame announcing more than a pool buffer: refused with a reason, and the connection closed.
        let oversized = try await blocking { try Reader(TestClient(binaryAddress)) }
        oversized.client.send([0x00, 0x10, 0x00, 0x00, 0x50])
        let refusal = await onPlainThread { oversized.binaryFrame() }
        #expect(refusal?.kind == 0x45 && String(decoding: refusal?.payload ?? [], as: UTF8.self).hasPrefix("frame longer than"))
        #expect(await onPlainThread { oversized.client.closedByPeer() })
        oversized.close()
        lineSubscriber.close()
        for client in [binaryClient, publisher, linePublisher] { client.close() }
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func webSocketClientsSubscribeAndPublishInTheSameTopicSpace(backend: BackendKind) async throws {
        let server = try TestPubSub(backend) {
            $0.webSocket = .init(host: "127.0.0.1", port: 0)
            $0.binary = .init(host: "127.0.0.1", port: 0)
        }
        let webSocketAddress = try #require(server.server.webSocketAddress)
        let binaryAddress = try #require(server.server.binaryAddress)
        let web = try await blocking { try Reader(TestClient(webSocketAddress)) }
        #expect(await onPlainThread { web.openWebSocket() } == "HTTP/1.1 101 Switching Protocols\r")
        web.sendWebSocketText("SUBSCRIBE chat")
        web.sendWebSocketText("SUBSCRIBE")
        let replies = await onPlainThread { [web.webSocketMessage(), web.webSocketMessage()] }
        #expect(replies.map { $0.map { String(decoding: $0.payload, as: UTF8.self) } } == ["OK SUBSCRIBE chat", "ERR SUBSCRIBE needs a topic"])
        let line = try await subscribers(1, to: ["chat"], at: server.address)[0]
        line.sendLine("PUBLISH chat hello from a line")
        let first = await onPlainThread { web.webSocketMessage() }
        #expect(first?.opcode == 1 && first?.payload == Array("MESSAGE chat hello from a line".utf8), "a text message")
        let binary = try await blocking { try TestClient(binaryAddress) }
        binary.send(binaryFrame(0x50, topic: "chat", payload: [0xFF, 0x00, 0x0A]))
        let second = await onPlainThread { web.webSocketMessage() }
        #expect(second?.opcode == 2 && second?.payload == Array("MESSAGE chat ".utf8) + [0xFF, 0x00, 0x0A], "not UTF-8: a binary message")
        web.sendWebSocketText("PUBLISH chat from the browser")
        #expect(await onPlainThread { line.lines(2) } == ["MESSAGE chat hello from a line", "MESSAGE chat from the browser"],
                "its own publication too (the binary one has a newline: not for a line)")
        web.close()
        line.close()
        binary.close()
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(2)), arguments: backendsUnderTest)
    func aStalledSubscriberOfATickerLosesTheOldestMessagesOnlyAndOthersGetEverything(backend: BackendKind) async throws {
        let server = try TestPubSub(backend) {
            $0.topicPolicies = [PubSubTopicPolicy(TopicFilter(parsing: "ticker.*"), .dropOldest)]
        }
        let address = server.address
        let stalled = try await subscribers(1, to: ["ticker.*"], at: address, receiveBuffer: 4096)[0]
        let fast = try await subscribers(2, to: ["ticker.a"], at: address)
        let publisher = try await blocking { try TestClient(address) }
        let padding = String(repeating: "p", count: 2000)
        // 12 MB in lockstep with the fast subscribers: they never fall behind; the stalled one, whose
        // kernel buffers hold at most a few MB, does.
        var inOrder = true
        var highWater = 0
        for batch in 0..<60 {
            publisher.send((0..<100).map { "PUBLISH ticker.a \(batch * 100 + $0) \(padding)\n" }.joined())
            for client in fast {
                let received = await onPlainThread { client.lines(100) }
                inOrder = inOrder && received == (0..<100).map { "MESSAGE ticker.a \(batch * 100 + $0) \(padding)" }
            }
            highWater = max(highWater, server.buffersInUse)
        }
        #expect(inOrder, "the fast subscribers got all 6,000 messages in order")
        // The stalled subscriber pins 256 waiting buffers (4 MiB / 16 KiB) and 32 in its connection's
        // queue (64 KiB of 2 KB messages); the fast ones at most a batch each.
        #expect(highWater < 256 + 32 + 2 * 100 + 20, "memory stays bounded (\(highWater) buffers at most)")
        let report = await server.server.subscriberReport()
        let stalledReport = try #require(report.first { $0.filters == ["ticker.*"] })
        #expect(stalledReport.dropped > 1000 && stalledReport.droppedByTopic["ticker.a"] == stalledReport.dropped, "\(stalledReport)")
        #expect(server.server.statistics.slowSubscribersDisconnected == 0)
        // Now it reads: what it gets is in order, without duplicates, and ends with the newest message.
        let numbers = await onPlainThread { () -> [Int] in
            stalled.lines(stalledReport.delivered + stalledReport.waiting).compactMap { Int($0.split(separator: " ")[2]) }
        }
        #expect(numbers.count == stalledReport.delivered + stalledReport.waiting)
        #expect(zip(numbers, numbers.dropFirst()).allSatisfy { $0 < $1 }, "in order, no duplicates")
        #expect(numbers.last == 5999, "dropping the oldest keeps the newest")
        for client in fast + [stalled] { client.close() }
        publisher.close()
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(2)), arguments: backendsUnderTest)
    func aStalledSubscriberOfAMustNotLoseFeedIsDisconnectedAndOthersAreUnaffected(backend: BackendKind) async throws {
        let server = try TestPubSub(backend)
        let address = server.address
        let stalled = try await subscribers(1, to: ["orders"], at: address, receiveBuffer: 4096)[0]
        let fast = try await subscribers(1, to: ["orders"], at: address)[0]
        let publisher = try await blocking { try TestClient(address) }
        let padding = String(repeating: "o", count: 2000)
        var inOrder = true
        for batch in 0..<60 {
            publisher.send((0..<100).map { "PUBLISH orders \(batch * 100 + $0) \(padding)\n" }.joined())
            let received = await onPlainThread { fast.lines(100) }
            inOrder = inOrder && received == (0..<100).map { "MESSAGE orders \(batch * 100 + $0) \(padding)" }
        }
        #expect(inOrder, "the fast subscriber got every message in order")
        #expect(await eventually { server.server.statistics.slowSubscribersDisconnected == 1 })
        #expect(await onPlainThread { () -> Bool in
            // What it had received before the reset may still be readable; then the stream ends.
            var scratch = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = recv(stalled.client.fd, &scratch, scratch.count, 0)
                if n == 0 || (n < 0 && errno == ECONNRESET) { return true }
                if n < 0 { return false }
            }
        }, "the stalled subscriber was disconnected")
        #expect(server.server.statistics.dropped == 0, "a must-not-lose feed drops nothing: it disconnects")
        for client in [stalled, fast] { client.close() }
        publisher.close()
        #expect(await server.finish())
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func everyPublicationAlsoGoesOutAsAUDPDatagram(backend: BackendKind) async throws {
        let receiver = try await blocking { () -> (Int32, SocketAddress) in
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            return (fd, try SocketAddress(host: "127.0.0.1", port: UInt16(bigEndian: address.sin_port)))
        }
        defer { Glibc.close(receiver.0) }
        let server = try TestPubSub(backend) { $0.udpOut = receiver.1 }
        let publisher = try await blocking { [address = server.address] in try TestClient(address) }
        publisher.sendLine("PUBLISH lan.temp 21.5")
        let datagram = await onPlainThread { () -> String in
            var scratch = [UInt8](repeating: 0, count: 2048)
            let n = recv(receiver.0, &scratch, scratch.count, 0)
            return n > 0 ? String(decoding: scratch[0..<n], as: UTF8.self) : ""
        }
        #expect(datagram == "MESSAGE lan.temp 21.5\n", "nobody subscribes over TCP; the datagram goes out anyway")
        publisher.close()
        #expect(await server.finish())
    }
}

@Suite("keel-pubsub allocations", .serialized, .enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
struct PubSubAllocationTests {
    /// The server's one I/O thread's allocations so far.
    func allocations(_ server: TestPubSub) async -> UInt64 {
        await onThread(server.pool.threads[0]) { finish in finish(AllocationCounter.currentThread) }
    }

    /// Publishes `batches` x 100 lines and has every subscriber read them all.
    func publish(_ batches: Range<Int>, from publisher: TestClient, to subscribers: [Reader]) async -> Bool {
        var complete = true
        for batch in batches {
            publisher.send((0..<100).map { "PUBLISH alloc \(batch * 100 + $0) 0123456789abcdef0123456789abcdef\n" }.joined())
            for subscriber in subscribers {
                complete = await onPlainThread { subscriber.lines(100).count == 100 } && complete
            }
        }
        return complete
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aPublicationAllocatesOnceWhateverTheNumberOfSubscribers(backend: BackendKind) async throws {
        let server = try TestPubSub(backend, threads: 1)
        let address = server.address
        let subscribers = try await subscribers(20, to: ["alloc"], at: address)
        let publisher = try await blocking { try TestClient(address) }
        #expect(await publish(0..<5, from: publisher, to: subscribers), "warm-up delivered")
        let before = await allocations(server)
        #expect(await publish(5..<25, from: publisher, to: subscribers), "2,000 publications delivered to 20 subscribers each")
        let allocated = await allocations(server) - before
        // One shared buffer object per publication (the line form); nothing per delivery: 40,000
        // deliveries. A little slack for the measuring hops themselves.
        #expect(allocated <= 2_000 + 20, "\(allocated) allocations for 2,000 publications and 40,000 deliveries")
        for subscriber in subscribers { subscriber.close() }
        publisher.close()
        #expect(await server.finish())
    }
}
