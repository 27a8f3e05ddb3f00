import DequeModule
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelWebSocket

/// One published message, framed once for each kind of subscriber present and shared by all of them
/// on every I/O thread: a subscriber's send holds a reference, never a copy.
struct Publication: Sendable {
    let topic: String
    let policy: PubSubOverflowPolicy
    /// `MESSAGE <topic> <payload>\n`; nil when no line subscriber exists, or the payload holds a
    /// newline (a line cannot carry it: line subscribers count it as dropped).
    let line: SharedBuffer?
    /// The binary protocol's `M` frame; nil when no binary subscriber exists.
    let binary: SharedBuffer?
    /// `MESSAGE <topic> <payload>` as one WebSocket message; nil when no WebSocket subscriber exists.
    let webSocket: WebSocketBroadcast?
}

/// A connection of any of the three protocols, as its messages and replies go out.
///
/// **Threading:** used only on its connection's I/O thread; everything here is confined to it.
final class Subscriber: Hashable {
    enum Sink {
        case line(TCPConnection)
        case binary(TCPConnection)
        case webSocket(WebSocket, TCPConnection)
    }

    /// What happened to one offered message.
    enum Outcome {
        case delivered
        case queued
        /// Dropped (this message, or older ones to make room): how many.
        case dropped(Int)
        /// The subscriber must be disconnected (a must-not-lose message did not fit).
        case disconnect
    }

    let sink: Sink
    let connection: TCPConnection
    let queueLimit: Int
    /// The pool's buffer size: what one waiting message pins.
    let chunkBytes: Int
    /// The subscriber's filters (bounded by the server's per-connection maximum).
    var filters: Set<TopicFilter> = []
    /// Messages waiting for the connection to drain below its high watermark.
    private var waiting = Deque<Publication>()
    private var waitingBytes = 0
    private(set) var delivered = 0
    private(set) var dropped = 0
    /// What was dropped, by topic (touched only when dropping).
    private(set) var droppedByTopic: [String: Int] = [:]
    var isClosed = false

    init(_ sink: Sink, queueLimit: Int) {
        self.sink = sink
        switch sink {
        case .line(let connection), .binary(let connection), .webSocket(_, let connection): self.connection = connection
        }
        self.queueLimit = queueLimit
        chunkBytes = connection.thread.bufferPool.bufferSize
    }

    static func == (lhs: Subscriber, rhs: Subscriber) -> Bool { lhs === rhs }
    func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    private var isWritable: Bool {
        switch sink {
        case .line(let connection), .binary(let connection): connection.isWritable
        case .webSocket(let socket, _): socket.isWritable
        }
    }

    /// The memory `publication` pins while it waits for this subscriber (whole pool buffers: a
    /// 20-byte message holds a buffer of its own), or nil when it has no form for this subscriber.
    private func size(of publication: Publication) -> Int? {
        switch sink {
        case .line: publication.line.map { _ in chunkBytes }
        case .binary: publication.binary.map { _ in chunkBytes }
        case .webSocket: publication.webSocket.map { ($0.payloadSize + 14 + chunkBytes - 1) / chunkBytes * chunkBytes }
        }
    }

    private func send(_ publication: Publication) {
        switch sink {
        case .line(let connection): connection.write(publication.line!)
        case .binary(let connection): connection.write(publication.binary!)
        case .webSocket(let socket, _): socket.send(publication.webSocket!)
        }
        delivered += 1
    }

    /// Sends `publication` now when the connection takes it, else queues it within ``queueLimit``
    /// by its topic's policy.
    func offer(_ publication: Publication) -> Outcome {
        guard !isClosed else { return .dropped(0) }
        guard let size = size(of: publication) else {
            noteDropped(publication.topic)
            return .dropped(1)
        }
        if waiting.isEmpty && isWritable {
            send(publication)
            return .delivered
        }
        if waitingBytes + size <= queueLimit {
            append(publication, size)
            return .queued
        }
        switch publication.policy {
        case .dropNewest:
            noteDropped(publication.topic)
            return .dropped(1)
        case .dropOldest, .disconnect:
            // Queued messages of lossy topics make room; must-not-lose ones are never dropped.
            var count = 0
            while waitingBytes + size > queueLimit, let index = waiting.firstIndex(where: { $0.policy != .disconnect }) {
                let old = waiting.remove(at: index)
                waitingBytes -= self.size(of: old) ?? 0
                noteDropped(old.topic)
                count += 1
            }
            if waitingBytes + size <= queueLimit {
                append(publication, size)
                return count == 0 ? .queued : .dropped(count)
            }
            if publication.policy == .disconnect { return .disconnect }
            noteDropped(publication.topic)
            return .dropped(count + 1)
        }
    }

    private func append(_ publication: Publication, _ size: Int) {
        waiting.append(publication)
        waitingBytes += size
    }

    private func noteDropped(_ topic: String) {
        dropped += 1
        droppedByTopic[topic, default: 0] += 1
    }

    /// Hands waiting messages to the connection while it takes them (it became writable).
    /// - Returns: how many were sent.
    func drain() -> Int {
        var sent = 0
        while !isClosed, isWritable, let next = waiting.popFirst() {
            waitingBytes -= size(of: next) ?? 0
            send(next)
            sent += 1
        }
        return sent
    }

    /// Forgets waiting messages (the connection closed).
    func discardWaiting() {
        isClosed = true
        waiting.removeAll()
        waitingBytes = 0
    }

    /// Messages waiting, for tests and reports.
    var waitingCount: Int { waiting.count }

    /// Closes a subscriber too slow for a must-not-lose topic.
    func disconnectSlow() {
        guard !isClosed else { return }
        connection.close(.abortive, reason: .slowConsumer)
    }

    /// Sends a reply (`OK`, `PONG`, `ERR`) in this subscriber's protocol, ahead of waiting messages.
    func reply(_ reply: PubSubReply) {
        guard !isClosed else { return }
        switch sink {
        case .line(let connection):
            guard var buffer = try? connection.thread.bufferPool.acquire() else { return }
            buffer.append(contentsOf: reply.lineText.utf8)
            buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: "\n")))
            connection.write(buffer)
        case .binary(let connection):
            guard var buffer = try? connection.thread.bufferPool.acquire() else { return }
            var (kind, topic, payload) = reply.binaryFields
            payload.withUTF8 { PubSubBinaryProtocol.write(kind, topic: topic.utf8, payload: UnsafeRawBufferPointer($0), into: &buffer) }
            connection.write(buffer)
        case .webSocket(let socket, _):
            socket.send(text: reply.lineText)
        }
    }
}

/// A reply to a command.
enum PubSubReply {
    case subscribed(TopicFilter)
    case unsubscribed(TopicFilter)
    case pong
    case error(PubSubProtocolError)

    /// The line protocol's (and WebSocket's) form, without the newline.
    var lineText: String {
        switch self {
        case .subscribed(let filter): "OK SUBSCRIBE \(filter)"
        case .unsubscribed(let filter): "OK UNSUBSCRIBE \(filter)"
        case .pong: "PONG"
        case .error(let error): error.description
        }
    }

    /// The binary protocol's frame kind, topic and payload.
    var binaryFields: (PubSubBinaryProtocol.Kind, String, String) {
        switch self {
        case .subscribed(let filter): (.ok, filter.description, "SUBSCRIBE")
        case .unsubscribed(let filter): (.ok, filter.description, "UNSUBSCRIBE")
        case .pong: (.pong, "", "")
        case .error(let error): (.error, "", error.reason)
        }
    }
}
