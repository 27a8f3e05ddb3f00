import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import KeelWebSocket
import Logging
import Synchronization

/// A pub/sub server's counters.
public struct PubSubStatistics: Sendable, Hashable {
    /// Messages published.
    public var published = 0
    /// Messages handed to subscribers' connections (one per subscriber reached).
    public var delivered = 0
    /// Messages dropped for subscribers by their topics' policies (or that their protocol cannot carry).
    public var dropped = 0
    /// Subscribers disconnected for falling behind a must-not-lose topic.
    public var slowSubscribersDisconnected = 0
    /// Command lines or frames refused with an error reply.
    public var protocolErrors = 0
    /// Connections open (of every protocol).
    public var connections = 0

    /// The counters by name, for `--stats-file` samples.
    public var counters: [(name: String, value: Int)] {
        [("published", published), ("delivered", delivered), ("dropped", dropped),
         ("slow_disconnected", slowSubscribersDisconnected), ("protocol_errors", protocolErrors), ("connections", connections)]
    }
}

/// One subscriber's figures, as ``PubSubServer/subscriberReport()`` gives them.
public struct PubSubSubscriberReport: Sendable, Hashable {
    /// The client's address.
    public var remoteAddress: SocketAddress?
    /// Its filters, as it wrote them.
    public var filters: [String]
    /// Messages handed to its connection.
    public var delivered: Int
    /// Messages dropped for it.
    public var dropped: Int
    /// Dropped messages by topic.
    public var droppedByTopic: [String: Int]
    /// Messages waiting in its queue.
    public var waiting: Int
}

/// The subscriptions and the fan-out: one ``TopicTable`` per I/O thread, holding that thread's
/// subscribers. A publication is framed once on the publisher's thread, delivered to that thread's
/// subscribers at once and to each other thread that has subscriptions by one hop.
final class PubSubHub: Sendable {
    /// One I/O thread's share.
    final class Local: @unchecked Sendable {
        // @unchecked Sendable: locals[i]'s `table` and `subscribers` are touched only on pool thread i
        // (its subscribers' own thread); the counters are atomics; `udpSocket` is set once, before use.
        var table = TopicTable<Subscriber>()
        var subscribers: Set<Subscriber> = []
        let udpSocket: UDPSocket?
        /// Filters subscribed on this thread (publishers elsewhere skip the hop when it is 0).
        let filters = Atomic<Int>(0)
        let published = Atomic<Int>(0)
        let delivered = Atomic<Int>(0)
        let dropped = Atomic<Int>(0)
        let slowDisconnected = Atomic<Int>(0)
        let protocolErrors = Atomic<Int>(0)

        init(udpSocket: UDPSocket?) { self.udpSocket = udpSocket }
    }

    private static let logger = Logger(label: "keel.pubsub")

    let configuration: PubSubServerConfiguration
    private let threads: [IOThread]
    private let locals: [Local]
    /// Connections of each protocol: a publication is framed only for the protocols in use.
    private let lineConnections = Atomic<Int>(0)
    private let binaryConnections = Atomic<Int>(0)
    private let webSocketConnections = Atomic<Int>(0)

    init(pool: IOPool, configuration: PubSubServerConfiguration) throws(SystemError) {
        self.configuration = configuration
        threads = pool.threads
        var locals: [Local] = []
        for thread in pool.threads {
            var socket: UDPSocket?
            if let destination = configuration.udpOut {
                let any = destination.family == .ipv6 ? "::" : "0.0.0.0"
                do {
                    socket = try UDPSocket.bind(pool: pool, on: thread, configuration: UDPSocketConfiguration(host: any), handler: DiscardingUDPHandler())
                } catch {
                    locals.forEach { $0.udpSocket?.close() }
                    throw error
                }
            }
            locals.append(Local(udpSocket: socket))
        }
        self.locals = locals
    }

    /// Closes the UDP sockets (the TCP connections are the servers').
    func stop() {
        for local in locals { local.udpSocket?.close() }
    }

    var statistics: PubSubStatistics {
        var statistics = PubSubStatistics()
        for local in locals {
            statistics.published += local.published.load(ordering: .relaxed)
            statistics.delivered += local.delivered.load(ordering: .relaxed)
            statistics.dropped += local.dropped.load(ordering: .relaxed)
            statistics.slowSubscribersDisconnected += local.slowDisconnected.load(ordering: .relaxed)
            statistics.protocolErrors += local.protocolErrors.load(ordering: .relaxed)
        }
        statistics.connections = lineConnections.load(ordering: .relaxed) + binaryConnections.load(ordering: .relaxed)
            + webSocketConnections.load(ordering: .relaxed)
        return statistics
    }

    private func countConnection(_ sink: Subscriber.Sink, _ delta: Int) {
        switch sink {
        case .line: lineConnections.wrappingAdd(delta, ordering: .relaxed)
        case .binary: binaryConnections.wrappingAdd(delta, ordering: .relaxed)
        case .webSocket: webSocketConnections.wrappingAdd(delta, ordering: .relaxed)
        }
    }

    // MARK: Connections (each call on the connection's I/O thread)

    /// A new connection of any protocol.
    func attach(_ sink: Subscriber.Sink) -> Subscriber {
        let subscriber = Subscriber(sink, queueLimit: configuration.subscriberQueueBytes)
        locals[subscriber.connection.thread.index].subscribers.insert(subscriber)
        countConnection(sink, 1)
        return subscriber
    }

    /// A connection closed: its subscriptions go, and what it lost is logged.
    func detach(_ subscriber: Subscriber, reason: TCPCloseReason) {
        guard !subscriber.isClosed else { return }
        let local = locals[subscriber.connection.thread.index]
        for filter in subscriber.filters { local.table.remove(filter, subscriber) }
        local.filters.wrappingSubtract(subscriber.filters.count, ordering: .releasing)
        local.subscribers.remove(subscriber)
        subscriber.discardWaiting()
        countConnection(subscriber.sink, -1)
        if reason == .slowConsumer { local.slowDisconnected.wrappingAdd(1, ordering: .relaxed) }
        if subscriber.dropped > 0 {
            let topics = subscriber.droppedByTopic.sorted { $0.value > $1.value }.prefix(8).map { "\($0.key) \($0.value)" }
            Self.logger.notice("subscriber dropped messages", metadata: [
                "peer": "\(subscriber.connection.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(reason)",
                "delivered": "\(subscriber.delivered)", "dropped": "\(subscriber.dropped)",
                "by_topic": "\(topics.joined(separator: ", "))",
            ])
        }
    }

    /// Carries out one parsed command (or answers its parse error).
    /// - Parameters:
    ///   - bytes: what the command was parsed from (a publication's payload is a range of it).
    ///   - payloadMayHoldNewlines: false for the line protocol, whose payloads cannot.
    func handle(_ parsed: Result<PubSubCommand, PubSubProtocolError>, in bytes: UnsafeRawBufferPointer,
                from subscriber: Subscriber, payloadMayHoldNewlines: Bool) {
        let local = locals[subscriber.connection.thread.index]
        let reply: PubSubReply?
        switch parsed {
        case .failure(let error):
            reply = .error(error)
        case .success(.ping):
            reply = .pong
        case .success(.subscribe(let filter)):
            if subscriber.filters.contains(filter) {
                reply = .subscribed(filter)
            } else if subscriber.filters.count >= configuration.maximumSubscriptionsPerConnection {
                reply = .error(PubSubProtocolError("at most \(configuration.maximumSubscriptionsPerConnection) subscriptions per connection"))
            } else {
                subscriber.filters.insert(filter)
                local.table.add(filter, subscriber)
                local.filters.wrappingAdd(1, ordering: .releasing)
                reply = .subscribed(filter)
            }
        case .success(.unsubscribe(let filter)):
            if subscriber.filters.remove(filter) != nil {
                local.table.remove(filter, subscriber)
                local.filters.wrappingSubtract(1, ordering: .releasing)
                reply = .unsubscribed(filter)
            } else {
                reply = .error(PubSubProtocolError("not subscribed to \(filter)"))
            }
        case .success(.publish(let topic, let payload)):
            let payloadBytes = UnsafeRawBufferPointer(rebasing: bytes[payload])
            do throws(PubSubProtocolError) {
                try publish(topic: topic, payload: payloadBytes, on: subscriber.connection.thread, local: local,
                            payloadMayHoldNewlines: payloadMayHoldNewlines)
                reply = nil
            } catch {
                reply = .error(error)
            }
        }
        if let reply {
            if case .error = reply { local.protocolErrors.wrappingAdd(1, ordering: .relaxed) }
            subscriber.reply(reply)
        }
    }

    // MARK: Publishing

    /// Frames a publication once per protocol in use and delivers it everywhere.
    private func publish(topic: String, payload: UnsafeRawBufferPointer, on thread: IOThread, local: Local,
                         payloadMayHoldNewlines: Bool) throws(PubSubProtocolError) {
        let pool = thread.bufferPool
        let lineLength = PubSubLineProtocol.messageLength(topicBytes: topic.utf8.count, payloadBytes: payload.count)
        guard lineLength <= pool.bufferSize else {
            throw PubSubProtocolError("message of \(lineLength) bytes exceeds \(pool.bufferSize)")
        }
        do throws(BufferPoolError) {
            var line: SharedBuffer?
            let lineRepresentable = !payloadMayHoldNewlines || !payload.contains(UInt8(ascii: "\n"))
            if lineRepresentable && (lineConnections.load(ordering: .relaxed) > 0 || local.udpSocket != nil) {
                var buffer = try pool.acquire()
                PubSubLineProtocol.writeMessage(topic: topic, payload: payload, into: &buffer)
                line = buffer.share()
            }
            var binary: SharedBuffer?
            if binaryConnections.load(ordering: .relaxed) > 0 {
                var buffer = try pool.acquire()
                PubSubBinaryProtocol.write(.message, topic: topic.utf8, payload: payload, into: &buffer)
                binary = buffer.share()
            }
            var webSocket: WebSocketBroadcast?
            if webSocketConnections.load(ordering: .relaxed) > 0 {
                webSocket = try? Self.webSocketMessage(topic: topic, payload: payload, pool: pool)
            }
            if let line, let socket = local.udpSocket, let destination = configuration.udpOut {
                _ = socket.send(line, to: destination)
            }
            local.published.wrappingAdd(1, ordering: .relaxed)  // counted once accepted: framed, about to go out
            let publication = Publication(topic: topic, policy: configuration.policy(for: topic), line: line, binary: binary,
                                          webSocket: webSocket)
            deliver(publication, to: local)
            for index in locals.indices where index != thread.index && locals[index].filters.load(ordering: .acquiring) > 0 {
                threads[index].execute { [self] in deliver(publication, to: locals[index]) }
            }
        } catch {
            throw PubSubProtocolError("server out of buffers: message not published")
        }
    }

    /// `MESSAGE <topic> <payload>` as one WebSocket message: text when it is UTF-8, else binary.
    private static func webSocketMessage(topic: String, payload: UnsafeRawBufferPointer, pool: BufferPool) throws -> WebSocketBroadcast {
        var buffer = try pool.acquire()
        PubSubLineProtocol.writeMessage(topic: topic, payload: payload, into: &buffer, newline: false)
        var validator = UTF8Validator()
        let isText = buffer.withUnsafeReadableBytes { validator.validate($0) } && validator.isAtCharacterBoundary
        var chain = BufferChain()
        chain.append(buffer)
        return try WebSocketBroadcast(isText ? .text : .binary, payload: chain, pool: pool)
    }

    /// Offers `publication` to each of `local`'s subscribers that it reaches (on `local`'s thread).
    private func deliver(_ publication: Publication, to local: Local) {
        var delivered = 0, dropped = 0
        var slow: [Subscriber] = []
        // A copy of the table: a send that fails at once may close its connection, which removes the
        // subscriber from the table during this loop.
        let table = local.table
        table.forEachSubscriber(of: publication.topic) { subscriber in
            switch subscriber.offer(publication) {
            case .delivered: delivered += 1
            case .queued: break
            case .dropped(let count): dropped += count
            case .disconnect: slow.append(subscriber)
            }
        }
        for subscriber in slow { subscriber.disconnectSlow() }
        if delivered > 0 { local.delivered.wrappingAdd(delivered, ordering: .relaxed) }
        if dropped > 0 { local.dropped.wrappingAdd(dropped, ordering: .relaxed) }
    }

    /// A subscriber's connection drained below its low watermark: send what waits.
    func writable(_ subscriber: Subscriber) {
        let sent = subscriber.drain()
        if sent > 0 { locals[subscriber.connection.thread.index].delivered.wrappingAdd(sent, ordering: .relaxed) }
    }

    /// Every subscriber's figures (one hop to each I/O thread).
    func subscriberReport() async -> [PubSubSubscriberReport] {
        var reports: [PubSubSubscriberReport] = []
        for (index, thread) in threads.enumerated() {
            let local = locals[index]
            reports += await withCheckedContinuation { (continuation: CheckedContinuation<[PubSubSubscriberReport], Never>) in
                thread.execute {
                    continuation.resume(returning: local.subscribers.map { subscriber in
                        PubSubSubscriberReport(
                            remoteAddress: subscriber.connection.remoteAddress, filters: subscriber.filters.map(\.description).sorted(),
                            delivered: subscriber.delivered, dropped: subscriber.dropped, droppedByTopic: subscriber.droppedByTopic,
                            waiting: subscriber.waitingCount)
                    })
                }
            }
        }
        return reports
    }
}

/// The UDP-out sockets' handler: they only send.
private struct DiscardingUDPHandler: UDPHandler {
    func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {}
}
