import KeelBuffers
import KeelEngine
@testable import KeelPubSub
import KeelSockets
import Testing

/// A connection handler that does nothing (the subscriber under test drives the connection).
struct QuietHandler: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

/// In memory: a subscriber's queue under each topic policy, with the peer's window shut.
@Suite("keel-pubsub subscriber queue")
struct SubscriberQueueTests {
    /// A line-protocol publication of `text` (as its own payload) to `topic`.
    func publication(_ topic: String, _ text: String, _ policy: PubSubOverflowPolicy, pool: BufferPool) throws -> Publication {
        var buffer = try pool.acquire()
        Array(text.utf8).withUnsafeBytes { PubSubLineProtocol.writeMessage(topic: topic, payload: $0, into: &buffer) }
        return Publication(topic: topic, policy: policy, line: buffer.share(), binary: nil, webSocket: nil)
    }

    @Test func mustNotLoseMessagesDisplaceLossyOnesAndDisconnectOnlyWhenNothingIsLeftToDrop() throws {
        var options = TCPConnectionOptions()
        options.flowControl = PubSubServerConfiguration.subscriberFlowControl
        let test = EmbeddedConnection(handler: QuietHandler(), options: options)
        test.sendWindow = 0
        let pool = test.thread.bufferPool
        let padding = String(repeating: "x", count: 2000)
        let outcomes: [String] = try test.withConnection { connection in
            let subscriber = Subscriber(.line(connection), queueLimit: 4 * pool.bufferSize)  // 4 waiting messages
            var outcomes: [String] = []
            func offer(_ topic: String, _ text: String, _ policy: PubSubOverflowPolicy) throws {
                switch subscriber.offer(try publication(topic, text, policy, pool: pool)) {
                case .delivered: outcomes.append("delivered")
                case .queued: outcomes.append("queued")
                case .dropped(let count): outcomes.append("dropped \(count)")
                case .disconnect: outcomes.append("disconnect")
                }
            }
            var filled = 0
            while connection.isWritable {
                try offer("ticker", "fill \(filled) \(padding)", .dropOldest)
                filled += 1
            }
            outcomes = []
            for index in 1...4 { try offer("ticker", "lossy \(index)", .dropOldest) }
            for index in 1...4 { try offer("orders", "must \(index)", .disconnect) }
            try offer("ticker", "lossy 5", .dropOldest)
            try offer("news", "newest", .dropNewest)
            try offer("orders", "must 5", .disconnect)
            #expect(subscriber.dropped == 6 && subscriber.droppedByTopic == ["ticker": 5, "news": 1])
            return outcomes
        }
        #expect(outcomes == ["queued", "queued", "queued", "queued",
                             "dropped 1", "dropped 1", "dropped 1", "dropped 1",
                             "dropped 1", "dropped 1", "disconnect"])
        _ = test.takeWritten()
        #expect(test.finish().isClean)
    }

    @Test func waitingMessagesFollowInOrderOnceTheConnectionDrains() throws {
        var options = TCPConnectionOptions()
        options.flowControl = PubSubServerConfiguration.subscriberFlowControl
        let test = EmbeddedConnection(handler: QuietHandler(), options: options)
        test.sendWindow = 0
        let pool = test.thread.bufferPool
        let padding = String(repeating: "y", count: 3000)
        let subscriber = test.withConnection { Subscriber(.line($0), queueLimit: 64 * pool.bufferSize) }
        let sent = try test.withConnection { connection -> Int in
            var count = 0
            while subscriber.waitingCount < 10 {
                _ = subscriber.offer(try publication("t", "\(count) \(padding)", .disconnect, pool: pool))
                count += 1
            }
            return count
        }
        test.sendWindow = Int.max
        test.withConnection { _ in _ = subscriber.drain() }
        test.sendWindow = Int.max
        let lines = test.takeWrittenString().split(separator: "\n")
        #expect(lines.count == sent && subscriber.delivered == sent && subscriber.waitingCount == 0)
        #expect(lines.map { Int($0.split(separator: " ")[2])! } == Array(0..<sent), "in order, none lost")
        test.withConnection { _ in subscriber.discardWaiting() }
        #expect(test.finish().isClean)
    }
}
