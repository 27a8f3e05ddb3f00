import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem

/// One peer of an endpoint as its plugin sees it: a TCP or TLS connection (messages framed by the
/// endpoint's framing), a WebSocket, or a UDP peer. Sends are framed for the transport; a send the
/// peer's flow control refuses is counted and dropped (or closes the peer, by the endpoint's policy).
///
/// **Threading:** use a peer on its I/O thread (``thread``) only: in its session's callbacks, in
/// timers it scheduled, or through ``handle`` from anywhere else.
public class PluginPeer: @unchecked Sendable {
    // @unchecked Sendable: mutable state is touched only on `thread`; other threads hold the peer only
    // inside a PluginPeerHandle, which hops to `thread` before using it.

    /// The peer's I/O thread.
    public let thread: IOThread
    /// A number unique within the endpoint's life.
    public let id: Int
    /// The endpoint's name.
    public let endpoint: String
    /// True once the peer is gone: sends are then ignored.
    public internal(set) var isClosed = false
    /// Anything the plugin wants to keep with the peer (a name, a user id) besides its session.
    public var tag: String = ""

    let counters: ThreadCounters
    /// Increments for every received message whose buffer the peer holds during delivery.
    var heldToken = 0
    var holdsReceived = false
    /// Groups this peer joined: it leaves them when it closes.
    var groups: [PluginGroup] = []
    /// The message being delivered to a C plugin (its `reply` answers with it).
    var delivering: PluginMessage?

    init(thread: IOThread, id: Int, endpoint: String, counters: ThreadCounters) {
        self.thread = thread
        self.id = id
        self.endpoint = endpoint
        self.counters = counters
    }

    /// The peer's address (behind a PROXY protocol balancer, the real client's).
    public var remoteAddress: SocketAddress? { nil }

    /// How the transport frames a broadcast for this peer.
    var broadcastKind: BroadcastKind { .unframed }

    // MARK: Sending

    /// Sends one message (framed for the endpoint: a line gets its `\n`, a length-prefixed message
    /// its length).
    public final func send(_ bytes: UnsafeRawBufferPointer) {
        guard !isClosed else { return }
        counters.count(transmit(bytes), bytes: bytes.count)
    }

    /// Sends one message.
    public final func send(_ text: String) {
        var text = text
        text.withUTF8 { send(UnsafeRawBufferPointer($0)) }
    }

    /// Sends one message.
    public final func send(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { send($0) }
    }

    /// Sends `message` back to this peer; when it is the message being delivered now, its received
    /// buffer goes back as it is (no copy).
    public final func reply(with message: PluginMessage) {
        guard !isClosed else { return }
        if holdsReceived && message.token == heldToken {
            holdsReceived = false
            counters.count(transmitHeld(), bytes: message.count)
        } else {
            send(message.bytes)
        }
    }

    /// Sends a message prepared once for many peers (see ``PluginGroup/broadcast(_:from:)``).
    public final func send(_ broadcast: PluginBroadcast) {
        guard !isClosed else { return }
        counters.count(transmit(broadcast), bytes: broadcast.count)
    }

    /// Closes the peer (a TCP connection gracefully, after what is queued; a WebSocket with the closing
    /// handshake; a UDP peer forgets its session).
    public func close() {}

    /// A handle for sending to this peer from other peers' threads.
    public final var handle: PluginPeerHandle { PluginPeerHandle(peer: self) }

    // MARK: Time and blocking work

    /// Runs `body` on this peer's thread after `delay` (and every `interval` after that, if given),
    /// until cancelled with ``cancelTimer(_:)``.
    @discardableResult
    public final func schedule(after delay: Duration, repeating interval: Duration? = nil, _ body: @escaping () -> Void) -> TimerHandle {
        thread.scheduleTimer(after: delay, repeating: interval, body)
    }

    /// Cancels a timer from ``schedule(after:repeating:_:)``.
    public final func cancelTimer(_ timer: TimerHandle) {
        thread.cancelTimer(timer)
    }

    /// Runs blocking `work` (a file, a database call) on the work pool, never on an I/O thread, and
    /// `then` on this peer's thread with its result.
    public final func runBlocking<Value: Sendable>(_ work: @escaping @Sendable () throws -> Value,
                                                   then: @escaping @Sendable (Result<Value, any Error>) -> Void) {
        thread.runBlocking(work, then: then)
    }

    // MARK: Transport (subclasses)

    /// Frames and queues `bytes`.
    func transmit(_ bytes: UnsafeRawBufferPointer) -> SendOutcome { .dropped }
    /// Queues the received buffer being delivered.
    func transmitHeld() -> SendOutcome { .dropped }
    /// Queues a prepared broadcast.
    func transmit(_ broadcast: PluginBroadcast) -> SendOutcome { .dropped }
    /// The endpoint drains: close once nothing is half-received (the default: at once).
    func drain() { close() }

    /// The transport closed: leave every group.
    final func markClosed() {
        guard !isClosed else { return }
        isClosed = true
        for group in groups { group.remove(self) }
        groups.removeAll()
    }
}

/// What became of one message a plugin sent.
enum SendOutcome {
    /// Queued for the peer.
    case sent
    /// Not sent: the peer's flow control refused it, or no buffer was free.
    case dropped
    /// Not sendable on this endpoint (the wrong size for fixed framing, too long for the length prefix
    /// or for one datagram): the plugin's error.
    case invalid
}

/// A peer reachable from any thread: sends hop to the peer's thread and are dropped if it has closed.
public struct PluginPeerHandle: Sendable, Hashable {
    let peer: PluginPeer

    /// The peer's id within its endpoint.
    public var id: Int { peer.id }

    /// Sends a copy of `bytes` to the peer.
    public func send(_ bytes: [UInt8]) {
        let peer = self.peer
        if peer.thread.isCurrent { return peer.send(bytes) }
        peer.thread.execute { peer.send(bytes) }
    }

    /// Sends `text` to the peer.
    public func send(_ text: String) { send(Array(text.utf8)) }

    /// Sends a prepared broadcast to the peer.
    public func send(_ broadcast: PluginBroadcast) {
        let peer = self.peer
        if peer.thread.isCurrent { return peer.send(broadcast) }
        peer.thread.execute { peer.send(broadcast) }
    }

    /// Closes the peer.
    public func close() {
        let peer = self.peer
        if peer.thread.isCurrent { return peer.close() }
        peer.thread.execute { peer.close() }
    }

    public static func == (lhs: PluginPeerHandle, rhs: PluginPeerHandle) -> Bool { lhs.peer === rhs.peer }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(peer)) }
}
