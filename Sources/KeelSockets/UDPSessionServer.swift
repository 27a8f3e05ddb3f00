import KeelBuffers
import KeelEngine
import KeelSystem
import Synchronization

/// Your per-peer logic for a ``UDPSessionServer``: a value per remote peer, holding that peer's state.
public protocol UDPSessionHandler: SendableMetatype {
    /// The first datagram from a new peer is about to be delivered.
    mutating func sessionStarted(_ session: UDPSession)
    /// A datagram from this session's peer.
    mutating func datagramReceived(_ datagram: consuming IOBuffer, truncated: Bool, in session: UDPSession)
    /// The session ended: its peer was silent for the idle timeout, or it was closed.
    mutating func sessionEnded(_ session: UDPSession, reason: UDPSessionEndReason)
}

extension UDPSessionHandler {
    public mutating func sessionStarted(_ session: UDPSession) {}
    public mutating func sessionEnded(_ session: UDPSession, reason: UDPSessionEndReason) {}
}

/// Why a UDP session ended.
public enum UDPSessionEndReason: Sendable, Hashable {
    /// No datagram from the peer within the idle timeout.
    case idleTimeout
    /// ``UDPSession/close()`` was called.
    case closed
    /// The server stopped (``UDPSessionServer/stop()``).
    case serverStopped
}

/// One remote peer of a ``UDPSessionServer``: a pseudo-connection over a shared UDP socket.
///
/// **Threading:** use it on the server socket's I/O thread.
public final class UDPSession: @unchecked Sendable {
    // @unchecked Sendable: confined to the server socket's I/O thread.

    /// The remote peer.
    public let peer: SocketAddress
    /// The shared socket the session sends through.
    public let socket: UDPSocket
    /// A number unique within its server.
    public let id: Int
    fileprivate var timer: TimerHandle?
    fileprivate weak var demux: SessionTable?

    fileprivate init(peer: SocketAddress, socket: UDPSocket, id: Int) {
        self.peer = peer
        self.socket = socket
        self.id = id
    }

    /// Sends a datagram to the peer (bounded like any send of the socket).
    @discardableResult
    public func send(_ datagram: consuming IOBuffer) -> UDPSendResult {
        socket.send(datagram, to: peer)
    }

    /// Ends the session now (the peer's next datagram starts a new one).
    public func close() {
        demux?.end(peer, reason: .closed)
    }
}

/// A UDP server that tracks each remote peer as a session with its own state, callbacks and idle
/// timeout, the UDP counterpart of a TCP server's connections.
public final class UDPSessionServer<Handler: UDPSessionHandler>: Sendable {
    /// The underlying socket.
    public let socket: UDPSocket
    private let table: SessionTable

    /// Binds and starts serving. Sessions beyond `maximumSessions` are not created: their datagrams
    /// are dropped and counted.
    public init(
        pool: IOPool, configuration: UDPSocketConfiguration, idleTimeout: Duration, maximumSessions: Int = 100_000,
        makeHandler: @escaping @Sendable (SocketAddress) -> Handler
    ) throws(SystemError) {
        let table = SessionTable(idleTimeout: idleTimeout, maximumSessions: maximumSessions)
        self.table = table
        socket = try UDPSocket.bind(pool: pool, configuration: configuration,
                                    handler: SessionDemux<Handler>(table: table, makeHandler: makeHandler))
    }

    /// The bound address.
    public var localAddress: SocketAddress { socket.localAddress }
    /// Sessions open now.
    public var sessionCount: Int { table.count.load(ordering: .relaxed) }
    /// Datagrams dropped because the session limit was reached.
    public var refusedDatagrams: Int { table.refused.load(ordering: .relaxed) }

    /// Ends every session (``UDPSessionEndReason/serverStopped``) and closes the socket. Once it has
    /// closed, its thread lets go of it: dropping the server then frees it while the pool runs on.
    public func stop() async {
        let socket = self.socket
        let table = self.table
        _ = try? await socket.thread.submit {
            for peer in Array(table.entries.keys) { table.end(peer, reason: .serverStopped) }
            socket.close()
        }
    }
}

/// Peer → session, with each session's handler; confined to the socket's thread.
final class SessionTable: @unchecked Sendable {
    // @unchecked Sendable: `entries` is touched only on the socket's I/O thread; counters are atomics.
    final class Entry {
        let session: UDPSession
        /// Calls into the type-erased handler (set by the generic demux).
        var deliver: (consuming IOBuffer, Bool) -> Void = { _, _ in }
        var end: (UDPSessionEndReason) -> Void = { _ in }
        init(session: UDPSession) { self.session = session }
    }

    let idleTimeout: Duration
    let maximumSessions: Int
    var entries: [SocketAddress: Entry] = [:]
    var nextID = 0
    let count = Atomic<Int>(0)
    let refused = Atomic<Int>(0)

    init(idleTimeout: Duration, maximumSessions: Int) {
        self.idleTimeout = idleTimeout
        self.maximumSessions = maximumSessions
    }

    func end(_ peer: SocketAddress, reason: UDPSessionEndReason) {
        guard let entry = entries.removeValue(forKey: peer) else { return }
        count.store(entries.count, ordering: .relaxed)
        if let timer = entry.session.timer { entry.session.socket.thread.cancelTimer(timer) }
        entry.end(reason)
    }
}

/// The socket's handler: finds or creates the sender's session and delivers to its handler.
struct SessionDemux<Handler: UDPSessionHandler>: UDPHandler {
    let table: SessionTable
    let makeHandler: @Sendable (SocketAddress) -> Handler

    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        let entry: SessionTable.Entry
        if let existing = table.entries[sender] {
            entry = existing
            if let timer = entry.session.timer { socket.thread.resetTimer(timer, after: table.idleTimeout) }
        } else {
            guard table.entries.count < table.maximumSessions else {
                table.refused.wrappingAdd(1, ordering: .relaxed)
                return
            }
            table.nextID += 1
            let session = UDPSession(peer: sender, socket: socket, id: table.nextID)
            session.demux = table
            entry = SessionTable.Entry(session: session)
            // The handler value lives in a box shared by the entry's two closures.
            let box = HandlerBox(makeHandler(sender))
            entry.deliver = { datagram, truncated in box.value.datagramReceived(datagram, truncated: truncated, in: session) }
            entry.end = { reason in box.value.sessionEnded(session, reason: reason) }
            table.entries[sender] = entry
            table.count.store(table.entries.count, ordering: .relaxed)
            let table = self.table
            session.timer = socket.thread.scheduleTimer(after: table.idleTimeout) { [weak session] in
                guard let session else { return }
                session.timer = nil
                table.end(session.peer, reason: .idleTimeout)
            }
            box.value.sessionStarted(session)
        }
        entry.deliver(datagram, truncated)
    }
}

/// Holds a session's handler value so closures can mutate it.
final class HandlerBox<Handler> {
    var value: Handler
    init(_ value: Handler) { self.value = value }
}
